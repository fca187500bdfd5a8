//! Where a group runs across nodes: possible and preferred owners, where a failover goes, the
//! failover threshold that stops ping-pong, and failback to the most preferred node.
//!
//! Pure like the rest of this crate: the live nodes, the failover history and the time are
//! values the coordinator passes in; what comes out is a node name or a refusal. The
//! coordinator (in `agent`) does the I/O and enforces the decisions with etcd transactions.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// When a group returns to its most preferred owner after that node comes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failback {
    /// Stay where it is (WSFC's default: prevent failback).
    Never,
    /// As soon as a more preferred owner is alive again.
    Immediate,
    /// Only while the local hour is in `[start, end)` (wrapping past midnight when
    /// `start > end`), WSFC's "allow failback between".
    Window {
        /// First hour of the window, 0 to 23.
        start: u8,
        /// Hour the window ends, 0 to 23.
        end: u8,
    },
}

impl Failback {
    /// Whether failback may happen at this hour of the day.
    pub fn allowed_at(self, hour: u8) -> bool {
        match self {
            Failback::Never => false,
            Failback::Immediate => true,
            Failback::Window { start, end } if start <= end => (start..end).contains(&hour),
            Failback::Window { start, end } => hour >= start || hour < end,
        }
    }
}

/// Groups of one anti-affinity class avoid sharing a node, as WSFC's `AntiAffinityClassNames`
/// (two Exchange virtual servers on one node halve what each gets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AntiAffinity {
    /// The class's name.
    pub class: String,
    /// Never share a node; otherwise (soft) share one only when no other possible owner is
    /// alive.
    pub hard: bool,
}

/// A group's placement settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Nodes that may own the group; empty means every node of the cluster.
    pub possible_owners: Vec<String>,
    /// Nodes in order of preference; the first alive one is where the group belongs.
    pub preferred_owners: Vec<String>,
    /// Failovers allowed within `failover_period`; one more is refused (the group stays
    /// failed where it is and waits for its retry period).
    pub failover_threshold: u32,
    /// The window `failover_threshold` counts in.
    pub failover_period: Duration,
    /// Failback to the most preferred owner.
    pub failback: Failback,
    /// Its anti-affinity class, if any.
    pub anti_affinity: Option<AntiAffinity>,
}

/// Why a failover was not done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailoverRefusal {
    /// No other possible owner is alive.
    NoOtherOwner,
    /// `failover_threshold` failovers already happened within `failover_period`.
    ThresholdReached {
        /// Failovers counted in the period.
        count: usize,
    },
}

impl fmt::Display for FailoverRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailoverRefusal::NoOtherOwner => f.write_str("no other possible owner is alive"),
            FailoverRefusal::ThresholdReached { count } => write!(
                f,
                "{count} failovers within the failover period: the threshold is reached"
            ),
        }
    }
}

impl Placement {
    /// Whether `node` may own the group.
    pub fn may_own(&self, node: &str) -> bool {
        self.possible_owners.is_empty() || self.possible_owners.iter().any(|n| n == node)
    }

    /// The alive nodes that may own the group, best first: the preferred owners in their order,
    /// then the others by name (every node ranks them the same way).
    pub fn ranked<'a>(&self, alive: &'a [String]) -> Vec<&'a str> {
        let mut ranked: Vec<&str> = Vec::new();
        for p in &self.preferred_owners {
            if let Some(n) = alive.iter().find(|n| *n == p) {
                if self.may_own(n) && !ranked.contains(&n.as_str()) {
                    ranked.push(n);
                }
            }
        }
        let mut rest: Vec<&str> = alive
            .iter()
            .map(String::as_str)
            .filter(|n| self.may_own(n) && !ranked.contains(n))
            .collect();
        rest.sort_unstable();
        rest.dedup();
        ranked.extend(rest);
        ranked
    }

    /// [`Placement::ranked`] with the anti-affinity class applied: the nodes in `crowded` (they
    /// run, or are taking, a group of this group's class) come last when it is soft and are
    /// left out when it is hard.
    pub fn ranked_apart<'a>(&self, alive: &'a [String], crowded: &[String]) -> Vec<&'a str> {
        let ranked = self.ranked(alive);
        let Some(aa) = &self.anti_affinity else {
            return ranked;
        };
        let (free, full): (Vec<&str>, Vec<&str>) = ranked
            .into_iter()
            .partition(|n| !crowded.iter().any(|c| c == n));
        if aa.hard {
            free
        } else {
            free.into_iter().chain(full).collect()
        }
    }

    /// Who takes the group while nobody owns it: the node a move or failover named, if it is
    /// alive and may own the group; otherwise the best alive node other than the one that
    /// failed it over (which takes it back only when nobody else can). Anti-affinity first:
    /// see [`Placement::ranked_apart`].
    pub fn next_owner<'a>(
        &self,
        alive: &'a [String],
        target: Option<&str>,
        failed_from: Option<&str>,
        crowded: &[String],
    ) -> Option<&'a str> {
        let ranked = self.ranked_apart(alive, crowded);
        if let Some(t) = target {
            if let Some(n) = ranked.iter().find(|n| **n == t) {
                return Some(n);
            }
        }
        ranked
            .iter()
            .find(|n| Some(**n) != failed_from)
            .or(ranked.first())
            .copied()
    }

    /// Failovers of `history` (Unix seconds) that count at `now`.
    pub fn failovers_in_period(&self, history: &[f64], now: f64) -> usize {
        let since = now - self.failover_period.as_secs_f64();
        history.iter().filter(|t| **t > since).count()
    }

    /// Where a failover from `from` goes, or why it does not happen.
    pub fn failover_target<'a>(
        &self,
        from: &str,
        alive: &'a [String],
        history: &[f64],
        now: f64,
        crowded: &[String],
    ) -> Result<&'a str, FailoverRefusal> {
        let count = self.failovers_in_period(history, now);
        if count >= self.failover_threshold as usize {
            return Err(FailoverRefusal::ThresholdReached { count });
        }
        self.ranked_apart(alive, crowded)
            .into_iter()
            .find(|n| *n != from)
            .ok_or(FailoverRefusal::NoOtherOwner)
    }

    /// Where the group should fail back to from `owner`, if anywhere: the most preferred alive
    /// node, when it ranks above the owner and the hour allows it. `returned` holds the nodes
    /// that came back (joined) since the owner took the group: failback follows a node's
    /// return, never a failover away from a node that is still up.
    pub fn failback_target<'a>(
        &self,
        owner: &str,
        alive: &'a [String],
        returned: &[String],
        hour: u8,
    ) -> Option<&'a str> {
        if !self.failback.allowed_at(hour) {
            return None;
        }
        let best = *self.ranked(alive).first()?;
        let preferred = self.preferred_owners.iter().any(|p| p == best);
        let owner_rank = self.preferred_owners.iter().position(|p| p == owner);
        let best_rank = self.preferred_owners.iter().position(|p| p == best);
        let better = match (best_rank, owner_rank) {
            (Some(b), Some(o)) => b < o,
            (Some(_), None) => true,
            _ => false,
        };
        (preferred && better && best != owner && returned.iter().any(|r| r == best)).then_some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn placement() -> Placement {
        Placement {
            possible_owners: nodes(&["n1", "n2", "n3"]),
            preferred_owners: nodes(&["n2", "n1"]),
            failover_threshold: 2,
            failover_period: Duration::from_secs(6 * 3600),
            failback: Failback::Immediate,
            anti_affinity: None,
        }
    }

    #[test]
    fn preferred_owners_rank_first_then_the_rest_by_name() {
        let p = placement();
        let alive = nodes(&["n4", "n3", "n1", "n2"]);
        assert_eq!(
            p.ranked(&alive),
            vec!["n2", "n1", "n3"],
            "n4 may not own it"
        );
        assert_eq!(p.next_owner(&alive, None, None, &[]), Some("n2"));
        assert_eq!(p.next_owner(&alive, Some("n3"), None, &[]), Some("n3"));
        assert_eq!(
            p.next_owner(&alive, Some("n4"), None, &[]),
            Some("n2"),
            "a target that may not own it is ignored"
        );
        assert_eq!(p.next_owner(&alive, None, Some("n2"), &[]), Some("n1"));
        assert_eq!(
            p.next_owner(&nodes(&["n2"]), None, Some("n2"), &[]),
            Some("n2"),
            "the node it failed from takes it back when nobody else can"
        );
    }

    #[test]
    fn failover_goes_to_the_best_other_node_until_the_threshold() {
        let p = placement();
        let alive = nodes(&["n1", "n2", "n3"]);
        assert_eq!(p.failover_target("n2", &alive, &[], 100.0, &[]), Ok("n1"));
        assert_eq!(
            p.failover_target("n1", &alive, &[50.0], 100.0, &[]),
            Ok("n2")
        );
        assert_eq!(
            p.failover_target("n1", &alive, &[50.0, 90.0], 100.0, &[]),
            Err(FailoverRefusal::ThresholdReached { count: 2 })
        );
        assert_eq!(
            p.failover_target("n1", &alive, &[50.0, 90.0], 50.0 + 6.0 * 3600.0 + 1.0, &[]),
            Ok("n2"),
            "old failovers leave the period"
        );
        assert_eq!(
            p.failover_target("n1", &nodes(&["n1"]), &[], 0.0, &[]),
            Err(FailoverRefusal::NoOtherOwner)
        );
    }

    #[test]
    fn failback_follows_the_preferred_nodes_return_and_the_window() {
        let mut p = placement();
        let alive = nodes(&["n1", "n2", "n3"]);
        assert_eq!(
            p.failback_target("n1", &alive, &nodes(&["n2"]), 3),
            Some("n2")
        );
        assert_eq!(
            p.failback_target("n1", &alive, &[], 3),
            None,
            "n2 did not come back: it failed the group over and stays up"
        );
        assert_eq!(p.failback_target("n2", &alive, &nodes(&["n2"]), 3), None);
        assert_eq!(
            p.failback_target("n3", &alive, &nodes(&["n1"]), 3),
            None,
            "n2 ranks first"
        );
        p.failback = Failback::Window { start: 22, end: 6 };
        assert_eq!(p.failback_target("n1", &alive, &nodes(&["n2"]), 12), None);
        assert_eq!(
            p.failback_target("n1", &alive, &nodes(&["n2"]), 23),
            Some("n2")
        );
        assert_eq!(
            p.failback_target("n1", &alive, &nodes(&["n2"]), 5),
            Some("n2")
        );
        p.failback = Failback::Never;
        assert_eq!(p.failback_target("n1", &alive, &nodes(&["n2"]), 3), None);
    }
}
