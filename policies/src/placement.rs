//! Where a group runs across nodes: possible and preferred owners, where a failover goes, the
//! failover threshold that stops ping-pong, failback to the most preferred node, and the rules
//! that weigh the other groups ([`Neighbours`]): anti-affinity, per-node capacity and
//! colocation with another group.
//!
//! Pure like the rest of this crate: the live nodes, the failover history and the time are
//! values the coordinator passes in; what comes out is a node name or a refusal. The
//! coordinator (in `agent`) does the I/O and enforces the decisions with etcd transactions.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
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
    /// What it takes of a node's capacities (`storage_groups = 1`), as Pacemaker's utilization.
    pub uses: BTreeMap<String, u64>,
    /// Groups it must share a node with: one of its resources depends on one of theirs.
    pub colocated_with: Vec<String>,
}

/// What the other groups leave for one group on each node, as the coordinator last saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Neighbours {
    /// Nodes that run, or are taking, a group of its anti-affinity class.
    pub crowded: Vec<String>,
    /// What each node declares it can hold; a node or a name absent has no limit.
    pub capacity: BTreeMap<String, BTreeMap<String, u64>>,
    /// What the groups each node runs, or is taking, use (this group left out).
    pub used: BTreeMap<String, BTreeMap<String, u64>>,
    /// Each group it is colocated with, and the node that holds or is taking it (`None`:
    /// nowhere right now).
    pub providers: Vec<(String, Option<String>)>,
}

impl Neighbours {
    /// Counts what a group `uses` on `node`.
    pub fn add_use(&mut self, node: &str, uses: &BTreeMap<String, u64>) {
        let used = self.used.entry(node.to_string()).or_default();
        for (k, v) in uses {
            *used.entry(k.clone()).or_default() += v;
        }
    }
}

/// Why a failover was not done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailoverRefusal {
    /// No other possible owner is alive.
    NoOtherOwner,
    /// Other possible owners are alive, but none may take it: why not, node by node.
    NoneFits {
        /// `node: why`, joined.
        why: String,
    },
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
            FailoverRefusal::NoneFits { why } => write!(f, "no other node can take it: {why}"),
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

    /// Why `node` may not take the group, by the rules that weigh the other groups: a
    /// colocated provider that runs elsewhere, a capacity it would exceed, a group of its hard
    /// anti-affinity class. `None`: it may (soft anti-affinity only ranks).
    pub fn why_not(&self, node: &str, nb: &Neighbours) -> Option<String> {
        for (group, at) in &nb.providers {
            match at {
                None => return Some(format!("{group} (colocated) runs nowhere")),
                Some(at) if at != node => return Some(format!("{group} (colocated) runs on {at}")),
                Some(_) => {}
            }
        }
        if let Some(capacity) = nb.capacity.get(node) {
            let used = nb.used.get(node);
            for (name, need) in &self.uses {
                let Some(limit) = capacity.get(name) else {
                    continue;
                };
                let in_use = used.and_then(|u| u.get(name)).copied().unwrap_or(0);
                if in_use.saturating_add(*need) > *limit {
                    return Some(format!(
                        "{name} {in_use} of {limit} in use, {need} more needed"
                    ));
                }
            }
        }
        if let Some(aa) = self.anti_affinity.as_ref().filter(|a| a.hard) {
            if nb.crowded.iter().any(|c| c == node) {
                return Some(format!(
                    "runs a group of anti-affinity class {} (hard)",
                    aa.class
                ));
            }
        }
        None
    }

    /// [`Placement::ranked`] with the other groups weighed: the nodes [`Placement::why_not`]
    /// names are left out, and the nodes in `crowded` come last when anti-affinity is soft.
    pub fn ranked_apart<'a>(&self, alive: &'a [String], nb: &Neighbours) -> Vec<&'a str> {
        let (free, full): (Vec<&str>, Vec<&str>) = self
            .ranked(alive)
            .into_iter()
            .filter(|n| self.why_not(n, nb).is_none())
            .partition(|n| self.anti_affinity.is_none() || !nb.crowded.iter().any(|c| c == n));
        free.into_iter().chain(full).collect()
    }

    /// Who takes the group while nobody owns it: the node a move or failover named, if it is
    /// alive and may own the group; otherwise the best alive node other than the one that
    /// failed it over (which takes it back only when nobody else can). The other groups
    /// first: see [`Placement::ranked_apart`].
    pub fn next_owner<'a>(
        &self,
        alive: &'a [String],
        target: Option<&str>,
        failed_from: Option<&str>,
        nb: &Neighbours,
    ) -> Option<&'a str> {
        let ranked = self.ranked_apart(alive, nb);
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
        nb: &Neighbours,
    ) -> Result<&'a str, FailoverRefusal> {
        let count = self.failovers_in_period(history, now);
        if count >= self.failover_threshold as usize {
            return Err(FailoverRefusal::ThresholdReached { count });
        }
        self.other_owner(from, alive, nb)
    }

    /// The best node other than `from` that may take the group, or why there is none.
    pub fn other_owner<'a>(
        &self,
        from: &str,
        alive: &'a [String],
        nb: &Neighbours,
    ) -> Result<&'a str, FailoverRefusal> {
        if let Some(n) = self
            .ranked_apart(alive, nb)
            .into_iter()
            .find(|n| *n != from)
        {
            return Ok(n);
        }
        let others: Vec<String> = self
            .ranked(alive)
            .into_iter()
            .filter(|n| *n != from)
            .filter_map(|n| self.why_not(n, nb).map(|why| format!("{n}: {why}")))
            .collect();
        if others.is_empty() {
            Err(FailoverRefusal::NoOtherOwner)
        } else {
            Err(FailoverRefusal::NoneFits {
                why: others.join("; "),
            })
        }
    }

    /// Where the group should fail back to from `owner`, if anywhere: the most preferred alive
    /// node, when it ranks above the owner and the hour allows it. `returned` holds the nodes
    /// that came back (joined) since the owner took the group: failback follows a node's
    /// return, never a failover away from a node that is still up; and only to a node
    /// [`Placement::why_not`] lets take it.
    pub fn failback_target<'a>(
        &self,
        owner: &str,
        alive: &'a [String],
        returned: &[String],
        hour: u8,
        nb: &Neighbours,
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
        let fits = self.why_not(best, nb).is_none();
        (preferred && better && fits && best != owner && returned.iter().any(|r| r == best))
            .then_some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn none() -> Neighbours {
        Neighbours::default()
    }

    fn placement() -> Placement {
        Placement {
            possible_owners: nodes(&["n1", "n2", "n3"]),
            preferred_owners: nodes(&["n2", "n1"]),
            failover_threshold: 2,
            failover_period: Duration::from_secs(6 * 3600),
            failback: Failback::Immediate,
            anti_affinity: None,
            uses: BTreeMap::new(),
            colocated_with: Vec::new(),
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
        assert_eq!(p.next_owner(&alive, None, None, &none()), Some("n2"));
        assert_eq!(p.next_owner(&alive, Some("n3"), None, &none()), Some("n3"));
        assert_eq!(
            p.next_owner(&alive, Some("n4"), None, &none()),
            Some("n2"),
            "a target that may not own it is ignored"
        );
        assert_eq!(p.next_owner(&alive, None, Some("n2"), &none()), Some("n1"));
        assert_eq!(
            p.next_owner(&nodes(&["n2"]), None, Some("n2"), &none()),
            Some("n2"),
            "the node it failed from takes it back when nobody else can"
        );
    }

    #[test]
    fn failover_goes_to_the_best_other_node_until_the_threshold() {
        let p = placement();
        let alive = nodes(&["n1", "n2", "n3"]);
        assert_eq!(
            p.failover_target("n2", &alive, &[], 100.0, &none()),
            Ok("n1")
        );
        assert_eq!(
            p.failover_target("n1", &alive, &[50.0], 100.0, &none()),
            Ok("n2")
        );
        assert_eq!(
            p.failover_target("n1", &alive, &[50.0, 90.0], 100.0, &none()),
            Err(FailoverRefusal::ThresholdReached { count: 2 })
        );
        assert_eq!(
            p.failover_target(
                "n1",
                &alive,
                &[50.0, 90.0],
                50.0 + 6.0 * 3600.0 + 1.0,
                &none()
            ),
            Ok("n2"),
            "old failovers leave the period"
        );
        assert_eq!(
            p.failover_target("n1", &nodes(&["n1"]), &[], 0.0, &none()),
            Err(FailoverRefusal::NoOtherOwner)
        );
    }

    #[test]
    fn failback_follows_the_preferred_nodes_return_and_the_window() {
        let mut p = placement();
        let alive = nodes(&["n1", "n2", "n3"]);
        assert_eq!(
            p.failback_target("n1", &alive, &nodes(&["n2"]), 3, &none()),
            Some("n2")
        );
        assert_eq!(
            p.failback_target("n1", &alive, &[], 3, &none()),
            None,
            "n2 did not come back: it failed the group over and stays up"
        );
        assert_eq!(
            p.failback_target("n2", &alive, &nodes(&["n2"]), 3, &none()),
            None
        );
        assert_eq!(
            p.failback_target("n3", &alive, &nodes(&["n1"]), 3, &none()),
            None,
            "n2 ranks first"
        );
        p.failback = Failback::Window { start: 22, end: 6 };
        assert_eq!(
            p.failback_target("n1", &alive, &nodes(&["n2"]), 12, &none()),
            None
        );
        assert_eq!(
            p.failback_target("n1", &alive, &nodes(&["n2"]), 23, &none()),
            Some("n2")
        );
        assert_eq!(
            p.failback_target("n1", &alive, &nodes(&["n2"]), 5, &none()),
            Some("n2")
        );
        p.failback = Failback::Never;
        assert_eq!(
            p.failback_target("n1", &alive, &nodes(&["n2"]), 3, &none()),
            None
        );
    }

    #[test]
    fn capacity_colocation_and_hard_anti_affinity_leave_nodes_out_with_the_reason() {
        let mut p = placement();
        p.uses = BTreeMap::from([("storage_groups".into(), 1)]);
        let alive = nodes(&["n1", "n2", "n3"]);
        let mut nb = none();
        nb.capacity
            .insert("n1".into(), BTreeMap::from([("storage_groups".into(), 4)]));
        nb.used
            .insert("n1".into(), BTreeMap::from([("storage_groups".into(), 4)]));
        assert_eq!(
            p.why_not("n1", &nb).as_deref(),
            Some("storage_groups 4 of 4 in use, 1 more needed")
        );
        assert_eq!(p.why_not("n3", &nb), None, "no capacity declared: no limit");
        assert_eq!(p.ranked_apart(&alive, &nb), vec!["n2", "n3"]);
        nb.used
            .insert("n1".into(), BTreeMap::from([("storage_groups".into(), 3)]));
        assert_eq!(p.why_not("n1", &nb), None, "3 + 1 fits in 4");

        nb.providers = vec![("mta".into(), Some("n3".into()))];
        assert_eq!(p.ranked_apart(&alive, &nb), vec!["n3"]);
        assert_eq!(
            p.failover_target("n3", &alive, &[], 0.0, &nb),
            Err(FailoverRefusal::NoneFits {
                why: "n2: mta (colocated) runs on n3; n1: mta (colocated) runs on n3".into()
            })
        );
        nb.providers = vec![("mta".into(), None)];
        assert_eq!(
            p.next_owner(&alive, None, None, &nb),
            None,
            "its provider runs nowhere"
        );

        nb.providers.clear();
        p.anti_affinity = Some(AntiAffinity {
            class: "vs".into(),
            hard: false,
        });
        nb.crowded = nodes(&["n2"]);
        assert_eq!(
            p.ranked_apart(&alive, &nb),
            vec!["n1", "n3", "n2"],
            "soft: last"
        );
        p.anti_affinity = Some(AntiAffinity {
            class: "vs".into(),
            hard: true,
        });
        assert_eq!(p.ranked_apart(&alive, &nb), vec!["n1", "n3"], "hard: out");
        assert_eq!(
            p.failback_target("n1", &alive, &nodes(&["n2"]), 3, &nb),
            None,
            "no failback onto a node it may not take"
        );
    }
}
