//! What is asked of the ownership machine beside its inputs: where a failover goes, whether an
//! administrator's move may happen, and, while this node is paused, where its groups go.

use super::{Action, Directive, FailoverWrite, MoveTarget, Now, Ownership, DRAIN_PARALLEL};
use crate::placement::Neighbours;

impl Ownership {
    /// This node is paused and holds `name`: move it to the best other node, unless
    /// [`DRAIN_PARALLEL`] moves are under way already; say once why, when nobody may take it.
    pub(super) fn drain(
        &mut self,
        name: &str,
        candidates: &[String],
        nb: &Neighbours,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let under_way = self
            .groups
            .values()
            .filter(|g| self.owned(g) && (g.draining || g.releasing))
            .count();
        let Some(g) = self.groups.get(name) else {
            return;
        };
        if g.draining {
            return;
        }
        // It runs on until its move: a drain is orderly.
        self.direct(name, Directive::Run, now.at, out);
        if under_way >= DRAIN_PARALLEL {
            return;
        }
        let g = &self.groups[name];
        match g.placement.other_owner(&self.node, candidates, nb) {
            Ok(to) => {
                let target = MoveTarget {
                    to: to.to_string(),
                    from: Some(self.node.clone()),
                    reason: "drain".into(),
                };
                out.push(Action::RequestMove {
                    group: name.to_string(),
                    target,
                });
                if let Some(g) = self.groups.get_mut(name) {
                    g.draining = true;
                    g.drain_blocked = None;
                }
            }
            Err(why) => {
                let why = why.to_string();
                if g.drain_blocked.as_ref() != Some(&why) {
                    out.push(Action::DrainBlocked {
                        group: name.to_string(),
                        why: why.clone(),
                    });
                    if let Some(g) = self.groups.get_mut(name) {
                        g.drain_blocked = Some(why);
                    }
                }
            }
        }
    }

    /// A failover of `group` away from this node: where it goes and what to write, or why it
    /// does not happen.
    pub fn failover(&self, group: &str, now: Now) -> Result<FailoverWrite, String> {
        let Some(g) = self.groups.get(group) else {
            return Err("the group is not known to the coordinator".into());
        };
        if !self.owned(g) || self.fenced {
            return Err("this node does not hold the group".into());
        }
        let alive = self.candidates();
        let nb = self
            .neighbours(group)
            .ok_or("a group it is colocated with is not known yet")?;
        let to = g
            .placement
            .failover_target(&self.node, &alive, &g.failovers, now.unix, &nb)
            .map_err(|why| why.to_string())?;
        let period = g.placement.failover_period.as_secs_f64();
        let mut history: Vec<f64> = g
            .failovers
            .iter()
            .copied()
            .filter(|t| *t > now.unix - period)
            .collect();
        history.push(now.unix);
        Ok(FailoverWrite {
            history,
            revision: g.failovers_revision,
            target: MoveTarget {
                to: to.to_string(),
                from: Some(self.node.clone()),
                reason: "failover".into(),
            },
        })
    }

    /// An administrator's move of `group` (to `to`, or the best other possible owner): the
    /// request to write, or why not.
    pub fn move_request(&self, group: &str, to: Option<String>) -> Result<MoveTarget, String> {
        let Some(g) = self.groups.get(group) else {
            return Err(format!("no group {group:?}"));
        };
        let Some(owner) = g.owner.as_ref().map(|o| o.node.clone()) else {
            return Err(format!("nobody holds {group:?} right now"));
        };
        if g.frozen && owner == self.node {
            return Err(format!(
                "{group:?} is in maintenance here: take it out of maintenance first"
            ));
        }
        let alive = self.candidates();
        let nb = self
            .neighbours(group)
            .ok_or("a group it is colocated with is not known yet")?;
        let to = match to {
            Some(to) if to == owner => return Err(format!("{group:?} already runs on {to}")),
            Some(to) if !self.alive.contains(&to) => {
                return Err(format!("{to} is not alive in the cluster"))
            }
            Some(to) if self.paused.contains(&to) => {
                return Err(format!("{to} is paused: resume it first"))
            }
            Some(to) if !g.placement.may_own(&to) => {
                return Err(format!("{to} is not one of {group:?}'s possible owners"))
            }
            Some(to) => match g.placement.why_not(&to, &nb) {
                Some(why) => return Err(format!("{to} cannot take {group:?}: {why}")),
                None => to,
            },
            None => match g.placement.other_owner(&owner, &alive, &nb) {
                Ok(n) => n.to_string(),
                Err(why) => return Err(why.to_string()),
            },
        };
        Ok(MoveTarget {
            to,
            from: Some(owner),
            reason: "move".into(),
        })
    }
}
