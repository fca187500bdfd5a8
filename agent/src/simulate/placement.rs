//! The cluster side of `resmon simulate`: nodes that come and go (`TIME node NAME up
//! [CAPACITY=N ...]`, `TIME node NAME down`), and where each group goes, decided by the same
//! [`Placement`] rules the coordinator uses (preferred and possible owners, capacities,
//! anti-affinity, colocation). Owner keys, leases and timing are not played: every decision
//! takes effect at once.

use resmon_policies::placement::{Neighbours, Placement};
use std::collections::BTreeMap;

/// The nodes and who owns each group.
#[derive(Default)]
pub(super) struct ClusterModel {
    /// Alive nodes and their capacities, in the order they came up.
    nodes: Vec<(String, BTreeMap<String, u64>)>,
    /// Each group's placement, in config order.
    groups: Vec<(String, Placement)>,
    /// Owner of each group.
    owners: BTreeMap<String, String>,
}

/// A change of owner the simulation plays on the group's controller.
pub(super) enum Decision {
    /// The group starts on `to` (it ran nowhere).
    Place { group: String, to: String },
    /// The group stops where it was and starts on `to`.
    Move { group: String, to: String },
    /// It runs nowhere: why not on each node.
    Wait { group: String, why: String },
}

impl ClusterModel {
    pub(super) fn new(groups: Vec<(String, Placement)>) -> Self {
        ClusterModel {
            groups,
            ..Default::default()
        }
    }

    fn alive(&self) -> Vec<String> {
        self.nodes.iter().map(|(n, _)| n.clone()).collect()
    }

    pub(super) fn owner(&self, group: &str) -> Option<&str> {
        self.owners.get(group).map(String::as_str)
    }

    fn placement(&self, group: &str) -> Option<&Placement> {
        self.groups.iter().find(|(g, _)| g == group).map(|(_, p)| p)
    }

    /// What the other groups leave for `group`.
    fn neighbours(&self, group: &str) -> Neighbours {
        let mut nb = Neighbours {
            capacity: self.nodes.iter().cloned().collect(),
            ..Neighbours::default()
        };
        let Some(me) = self.placement(group) else {
            return nb;
        };
        let class = me.anti_affinity.as_ref().map(|a| &a.class);
        for (name, p) in &self.groups {
            let Some(at) = self.owners.get(name).filter(|_| name != group) else {
                continue;
            };
            if class.is_some() && p.anti_affinity.as_ref().map(|a| &a.class) == class {
                nb.crowded.push(at.clone());
            }
            nb.add_use(at, &p.uses);
        }
        nb.providers = me
            .colocated_with
            .iter()
            .map(|p| (p.clone(), self.owners.get(p).cloned()))
            .collect();
        nb
    }

    /// A node comes up with its capacities.
    pub(super) fn up(&mut self, node: &str, capacity: BTreeMap<String, u64>) {
        self.nodes.retain(|(n, _)| n != node);
        self.nodes.push((node.to_string(), capacity));
    }

    /// A node goes down: the groups it owned run nowhere; returns them.
    pub(super) fn down(&mut self, node: &str) -> Vec<String> {
        self.nodes.retain(|(n, _)| n != node);
        let lost: Vec<String> = self
            .owners
            .iter()
            .filter(|(_, o)| *o == node)
            .map(|(g, _)| g.clone())
            .collect();
        for g in &lost {
            self.owners.remove(g);
        }
        lost
    }

    /// Where a failover of `group` goes, or why it does not.
    pub(super) fn failover(&mut self, group: &str) -> Result<String, String> {
        let from = self.owner(group).ok_or("it runs nowhere")?.to_string();
        let p = self.placement(group).ok_or("unknown group")?;
        let alive = self.alive();
        let to = p
            .other_owner(&from, &alive, &self.neighbours(group))
            .map_err(|why| why.to_string())?
            .to_string();
        self.owners.insert(group.to_string(), to.clone());
        Ok(to)
    }

    /// Places every group that runs nowhere, and moves colocated groups after their
    /// providers, until nothing changes (`failed_from`: where a group just failed from).
    pub(super) fn settle(&mut self, failed_from: &BTreeMap<String, String>) -> Vec<Decision> {
        let mut decisions = Vec::new();
        let alive = self.alive();
        for _ in 0..=self.groups.len() {
            let mut changed = false;
            for (group, p) in self.groups.clone() {
                let nb = self.neighbours(&group);
                match self.owners.get(&group).cloned() {
                    Some(owner) => {
                        // Colocated: it follows its providers.
                        let apart = nb
                            .providers
                            .iter()
                            .any(|(_, at)| at.as_ref() != Some(&owner));
                        if !apart {
                            continue;
                        }
                        self.owners.remove(&group);
                        let nb = self.neighbours(&group);
                        match p.next_owner(&alive, None, None, &nb) {
                            Some(to) => {
                                self.owners.insert(group.clone(), to.to_string());
                                decisions.push(Decision::Move {
                                    group,
                                    to: to.to_string(),
                                });
                            }
                            None => decisions.push(Decision::Wait {
                                why: why_nowhere(&p, &alive, &nb),
                                group,
                            }),
                        }
                        changed = true;
                    }
                    None => {
                        let from = failed_from.get(&group).map(String::as_str);
                        if let Some(to) = p.next_owner(&alive, None, from, &nb) {
                            self.owners.insert(group.clone(), to.to_string());
                            decisions.push(Decision::Place {
                                group,
                                to: to.to_string(),
                            });
                            changed = true;
                        }
                    }
                }
            }
            if !changed {
                break;
            }
        }
        for (group, p) in &self.groups {
            if !self.owners.contains_key(group)
                && !decisions
                    .iter()
                    .any(|d| matches!(d, Decision::Wait { group: g, .. } if g == group))
            {
                decisions.push(Decision::Wait {
                    group: group.clone(),
                    why: why_nowhere(p, &alive, &self.neighbours(group)),
                });
            }
        }
        decisions
    }
}

fn why_nowhere(p: &Placement, alive: &[String], nb: &Neighbours) -> String {
    let why: Vec<String> = p
        .ranked(alive)
        .into_iter()
        .filter_map(|n| p.why_not(n, nb).map(|w| format!("{n}: {w}")))
        .collect();
    if why.is_empty() {
        "no possible owner is alive".into()
    } else {
        why.join("; ")
    }
}
