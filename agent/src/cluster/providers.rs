//! The state of resources that resources of other groups depend on (`depends_on =
//! ["group/resource"]`, `depends_on_anywhere`): what the group tasks of this node report, and,
//! under etcd, what every node publishes (`groups/<group>/online/<resource>`, held under the
//! publishing node's lease, so that a dead node's providers go with it). And the other way: which
//! of this node's resources that depend on a provider are up, and, under etcd, which other nodes
//! have such a resource up (`dependents/<group>/<resource>/<node>`, under that node's lease), so
//! that the provider's orderly offline waits for them, as it waits for the dependents of its
//! own group.

use crate::config::External;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use tokio::sync::watch;

/// Provider states, shared by the group tasks and the coordinator.
pub struct Providers {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct Inner {
    /// `group/resource` → online on this node, for the providers whose group task reported.
    here: BTreeMap<String, bool>,
    /// Under etcd: the providers online on any node, once a snapshot was read.
    cluster: Option<BTreeSet<String>>,
    /// Whether a cluster coordinator publishes states (etcd), or this node is the cluster.
    clustered: bool,
    /// `group/resource` of a provider → the resources of this node that depend on it and are
    /// up (not offline, failed or offline by an administrator).
    dependents: BTreeMap<String, BTreeSet<String>>,
    /// Under etcd: `group/resource` of a provider → the other nodes where a resource that
    /// depends on it is up, as they publish it; empty without a session (not known, so not
    /// waited for: a provider here never waits on what this node cannot see).
    remote: BTreeMap<String, BTreeSet<String>>,
}

impl Providers {
    /// A board; `clustered` when other nodes' states come from etcd.
    pub fn new(clustered: bool) -> Providers {
        Providers {
            inner: Mutex::new(Inner {
                clustered,
                ..Inner::default()
            }),
            changed: watch::channel(0).0,
        }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A provider's state on this node, from its group task.
    pub fn set_here(&self, name: &str, online: bool) {
        let old = self.inner().here.insert(name.to_string(), online);
        if old != Some(online) {
            self.bump();
        }
    }

    /// This node's reported states, for publishing them again in a new session.
    pub fn here(&self) -> BTreeMap<String, bool> {
        self.inner().here.clone()
    }

    /// Every provider online in the cluster, as a snapshot says.
    pub fn set_cluster(&self, online: BTreeSet<String>) {
        self.inner().cluster = Some(online);
        self.bump();
    }

    /// One provider's key changed in etcd.
    pub fn cluster_changed(&self, name: &str, online: bool) {
        {
            let mut inner = self.inner();
            let set = inner.cluster.get_or_insert_with(BTreeSet::new);
            if online {
                set.insert(name.to_string());
            } else {
                set.remove(name);
            }
        }
        self.bump();
    }

    /// Whether `external` is online where its dependency says; `None` while not known (its
    /// group has not reported, or etcd has not been read).
    pub fn state(&self, external: &External) -> Option<bool> {
        let inner = self.inner();
        let here = inner.here.get(&external.name).copied();
        if external.colocated || !inner.clustered || here == Some(true) {
            return here;
        }
        inner
            .cluster
            .as_ref()
            .map(|set| set.contains(&external.name))
    }

    /// Whether `dependent` (`group/resource`), which depends on `provider`, is up here.
    /// Returns whether any dependent of `provider` is up here, when that changed.
    pub fn set_dependent(&self, provider: &str, dependent: &str, up: bool) -> Option<bool> {
        let (changed, any) = {
            let mut inner = self.inner();
            let set = inner.dependents.entry(provider.to_string()).or_default();
            let before = !set.is_empty();
            let changed = if up {
                set.insert(dependent.to_string())
            } else {
                set.remove(dependent)
            };
            let now = !set.is_empty();
            (changed, (before != now).then_some(now))
        };
        if changed {
            self.bump();
        }
        any
    }

    /// `group`'s task is gone: its resources hold no provider up any more (what it left
    /// running is unmanaged now). Returns the providers with no dependent up here since.
    pub fn forget_dependents_in(&self, group: &str) -> Vec<String> {
        let prefix = format!("{group}/");
        let mut changed = false;
        let mut none_left = Vec::new();
        for (provider, set) in self.inner().dependents.iter_mut() {
            let before = set.len();
            set.retain(|d| !d.starts_with(&prefix));
            changed |= set.len() != before;
            if before > 0 && set.is_empty() {
                none_left.push(provider.clone());
            }
        }
        if changed {
            self.bump();
        }
        none_left
    }

    /// The providers with a dependent up here, for publishing them again in a new session.
    pub fn dependents_here(&self) -> Vec<String> {
        self.inner()
            .dependents
            .iter()
            .filter(|(_, set)| !set.is_empty())
            .map(|(provider, _)| provider.clone())
            .collect()
    }

    /// The other nodes' dependents that are up, as a snapshot says (`provider`, `node`).
    pub fn set_remote(&self, up: impl IntoIterator<Item = (String, String)>) {
        let mut remote: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (provider, node) in up {
            remote.entry(provider).or_default().insert(node);
        }
        self.inner().remote = remote;
        self.bump();
    }

    /// Whether `node` has a dependent of `provider` up changed in etcd.
    pub fn remote_changed(&self, provider: &str, node: &str, up: bool) {
        {
            let mut inner = self.inner();
            let set = inner.remote.entry(provider.to_string()).or_default();
            if up {
                set.insert(node.to_string());
            } else {
                set.remove(node);
            }
        }
        self.bump();
    }

    /// Whether a resource that depends on `provider` is up, on this node or, as etcd says,
    /// on another.
    pub fn dependents_up(&self, provider: &str) -> bool {
        let inner = self.inner();
        let up = |map: &BTreeMap<String, BTreeSet<String>>| {
            map.get(provider).is_some_and(|set| !set.is_empty())
        };
        up(&inner.dependents) || up(&inner.remote)
    }

    /// Told whenever a state changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(colocated: bool) -> External {
        External {
            name: "mta/mta".into(),
            colocated,
        }
    }

    #[test]
    fn colocated_needs_it_here_anywhere_takes_any_node() {
        let p = Providers::new(true);
        assert_eq!(p.state(&ext(true)), None, "its group has not reported");
        assert_eq!(p.state(&ext(false)), None, "etcd not read");
        p.set_here("mta/mta", false);
        p.set_cluster(BTreeSet::from(["mta/mta".to_string()]));
        assert_eq!(p.state(&ext(true)), Some(false), "not here");
        assert_eq!(p.state(&ext(false)), Some(true), "online on another node");
        p.cluster_changed("mta/mta", false);
        assert_eq!(p.state(&ext(false)), Some(false));
        p.set_here("mta/mta", true);
        assert_eq!(
            p.state(&ext(false)),
            Some(true),
            "here counts before etcd says"
        );

        let alone = Providers::new(false);
        alone.set_here("mta/mta", true);
        assert_eq!(alone.state(&ext(false)), Some(true));
    }

    #[test]
    fn dependents_are_counted_until_down_or_their_group_is_gone() {
        let p = Providers::new(true);
        let mut changes = p.subscribe();
        assert!(!p.dependents_up("mta/mta"));
        assert_eq!(p.set_dependent("mta/mta", "evs1/routing", true), Some(true));
        assert_eq!(p.set_dependent("mta/mta", "evs2/routing", true), None);
        assert!(p.dependents_up("mta/mta") && changes.has_changed().unwrap());
        assert_eq!(p.dependents_here(), ["mta/mta"]);
        changes.borrow_and_update();
        assert_eq!(p.set_dependent("mta/mta", "evs1/routing", false), None);
        assert!(p.dependents_up("mta/mta"), "evs2's is still up");
        assert_eq!(p.forget_dependents_in("evs2"), ["mta/mta"]);
        assert!(!p.dependents_up("mta/mta"));
        assert!(changes.has_changed().unwrap());
        assert!(p.dependents_here().is_empty());
    }

    #[test]
    fn dependents_on_other_nodes_count_while_etcd_says_so() {
        let p = Providers::new(true);
        p.set_remote([("mta/mta".to_string(), "n2".to_string())]);
        assert!(p.dependents_up("mta/mta"));
        assert!(!p.dependents_up("other/mta"));
        p.remote_changed("mta/mta", "n3", true);
        p.remote_changed("mta/mta", "n2", false);
        assert!(p.dependents_up("mta/mta"), "n3's is up");
        p.remote_changed("mta/mta", "n3", false);
        assert!(!p.dependents_up("mta/mta"));
        p.remote_changed("mta/mta", "n3", true);
        let mut changes = p.subscribe();
        changes.borrow_and_update();
        p.set_remote([]);
        assert!(
            !p.dependents_up("mta/mta"),
            "a session ended: not known, not waited for"
        );
        assert!(changes.has_changed().unwrap());
    }
}
