//! What this node does about one group, from what etcd said last: take it, run it, stop and
//! release it, move it away (a request, failback, a drain), or leave it where it is.

use super::{Action, Directive, MoveTarget, Now, OwnerKey, Ownership};
use crate::placement::Neighbours;

impl Ownership {
    /// Decides what this node does about one group, from what etcd said last.
    pub(super) fn evaluate(&mut self, name: &str, now: Now, out: &mut Vec<Action>) {
        if self.lease == 0 || self.fenced {
            return;
        }
        // Paused nodes are no place for a group: only the others are.
        let alive = self.candidates();
        let Some(nb) = self.neighbours(name) else {
            return;
        };
        let Some(g) = self.groups.get(name) else {
            return;
        };
        if self.refused().is_some() {
            // Keys in a schema this node cannot read: it changes none. What it holds (it held
            // it before the schema moved on) keeps running under its lease; nothing else runs.
            let directive = if self.owned(g) && !g.releasing {
                Directive::Run
            } else {
                Directive::Stop
            };
            self.direct(name, directive, now.at, out);
            return;
        }
        if self.owned(g) && g.frozen && !g.releasing {
            // In maintenance: it stays, whatever failback would want, and a move request
            // (from another node, which cannot know) is dropped rather than kept for later.
            if let Some((target, revision)) = &g.target {
                if target.to != self.node {
                    out.push(Action::DropTarget {
                        group: name.to_string(),
                        revision: *revision,
                    });
                }
            }
            self.direct(name, Directive::Run, now.at, out);
            return;
        }
        if !self.owned(g) && g.frozen && g.owner.is_none() && g.taking.is_none() {
            // Not taken here while in maintenance here.
            self.direct(name, Directive::Stop, now.at, out);
            return;
        }
        if self.owned(g) {
            // Colocated: it runs only where its providers run; it follows them, through a
            // release, and the node that holds them takes it. While a provider's take is out
            // here, nothing changes yet.
            let apart = nb
                .providers
                .iter()
                .any(|(_, at)| at.as_deref() != Some(&self.node));
            let coming = nb.providers.iter().any(|(p, _)| !self.holds(p));
            if coming && !apart {
                return;
            }
            if apart {
                if let Some(g) = self.groups.get_mut(name) {
                    g.releasing = true;
                }
                self.direct(name, Directive::Stop, now.at, out);
                return;
            }
            if let Some((target, revision)) = g.target.clone() {
                if target.to != self.node {
                    if alive.contains(&target.to) && g.placement.may_own(&target.to) {
                        if let Some(g) = self.groups.get_mut(name) {
                            g.releasing = true;
                        }
                        self.direct(name, Directive::Stop, now.at, out);
                        return;
                    }
                    // Nobody can answer that request any more.
                    out.push(Action::DropTarget {
                        group: name.to_string(),
                        revision,
                    });
                }
            }
            if self.paused.contains(&self.node) && !g.releasing {
                self.drain(name, &alive, &nb, now, out);
                return;
            }
            let g = &self.groups[name];
            let nb = self.with_waiting(name, &alive, nb);
            if let Some(to) =
                g.placement
                    .failback_target(&self.node, &alive, &g.returned, now.hour, &nb)
            {
                let target = MoveTarget {
                    to: to.to_string(),
                    from: Some(self.node.clone()),
                    reason: "failback".into(),
                };
                out.push(Action::RequestMove {
                    group: name.to_string(),
                    target,
                });
                if let Some(g) = self.groups.get_mut(name) {
                    g.returned.clear();
                }
                return;
            }
            if !g.releasing {
                self.direct(name, Directive::Run, now.at, out);
            }
            return;
        }
        if g.owner.is_some() || g.taking.is_some() {
            if g.taking.is_none() {
                self.direct(name, Directive::Stop, now.at, out);
            }
            return;
        }
        // Nobody holds it: the node the placement names takes it.
        let target = g.target.as_ref().map(|(t, _)| t.clone());
        let next = g.placement.next_owner(
            &alive,
            target.as_ref().map(|t| t.to.as_str()),
            target.as_ref().and_then(|t| t.from.as_deref()),
            &nb,
        );
        if next != Some(self.node.as_str()) || g.releasing || !self.may_run(now.at) {
            self.direct(name, Directive::Stop, now.at, out);
            return;
        }
        let preferred = g.placement.ranked(&alive).first() == Some(&self.node.as_str());
        let reason = match &target {
            Some(t) if t.to == self.node => t.reason.clone(),
            _ if preferred => "preferred".to_string(),
            _ => "takeover".to_string(),
        };
        if let Some(g) = self.groups.get_mut(name) {
            g.taking = Some(reason.clone());
        }
        out.push(Action::Take {
            group: name.to_string(),
            reason,
        });
    }

    pub(super) fn took(
        &mut self,
        name: &str,
        revision: Option<i64>,
        now: Now,
        out: &mut Vec<Action>,
    ) {
        let me = self.node.clone();
        let lease = self.lease;
        let Some(g) = self.groups.get_mut(name) else {
            return;
        };
        let Some(reason) = g.taking.take() else {
            return;
        };
        let Some(revision) = revision else {
            // Another node was first; the watch tells who.
            return;
        };
        g.owner = Some(OwnerKey {
            node: me,
            lease,
            revision,
        });
        g.target = None;
        g.returned.clear();
        out.push(Action::Acquired {
            group: name.to_string(),
            reason,
            revision,
        });
        // Run it, unless what changed while the take was out says otherwise (a colocated
        // provider that moved away).
        self.evaluate(name, now, out);
    }

    /// `nb`, with each group nobody holds counted on the node it would go to first: a failback
    /// never takes the room a group without an owner is waiting for there (a node that returns
    /// takes its own preferred groups, rather than lose its capacity to a group that runs).
    fn with_waiting(&self, group: &str, alive: &[String], mut nb: Neighbours) -> Neighbours {
        for (name, h) in &self.groups {
            if name == group || self.location(name).is_some() {
                continue;
            }
            if let Some(node) = h.placement.ranked(alive).first() {
                nb.add_use(node, &h.placement.uses);
            }
        }
        nb
    }
}
