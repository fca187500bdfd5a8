//! Maintenance (unmanaged) mode, as Pacemaker's `is-managed=false` and `maintenance-mode` and
//! WSFC's `Suspend-ClusterResource`: the node, groups and resources the agent keeps checking
//! and exporting but does not act on. Kept in `state_dir/maintenance.json`, written whole and
//! renamed into place, so that it holds across agent restarts and reloads; the group tasks are
//! told of every change. What maintenance means for one group is the controller's
//! ([`resmon_policies::Input::Maintenance`]); that the node takes no group while in it is the
//! ownership machine's.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tokio::sync::watch;

/// What is in maintenance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceSet {
    /// The whole node: every group, and no group taken.
    #[serde(default)]
    pub node: bool,
    /// Groups, by name.
    #[serde(default)]
    pub groups: BTreeSet<String>,
    /// Resources, as `group/resource`.
    #[serde(default)]
    pub resources: BTreeSet<String>,
}

/// What a maintenance command is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The node.
    Node,
    /// A group.
    Group(String),
    /// A resource of a group.
    Resource(String, String),
}

/// The maintenance settings of this agent, shared by the group tasks and the control API.
pub struct Maintenance {
    /// Where they are kept; `None` for an agent without a state directory (tests).
    path: Option<PathBuf>,
    set: Mutex<MaintenanceSet>,
    changed: watch::Sender<u64>,
}

impl Maintenance {
    /// Nothing in maintenance, kept nowhere.
    pub fn in_memory() -> Maintenance {
        Maintenance {
            path: None,
            set: Mutex::new(MaintenanceSet::default()),
            changed: watch::channel(0).0,
        }
    }

    /// What `state_dir/maintenance.json` says. A file that cannot be read or understood is
    /// an error: starting as if nothing were in maintenance would act on what an administrator
    /// is working on.
    pub fn load(state_dir: &Path) -> Result<Maintenance, String> {
        let path = state_dir.join("maintenance.json");
        let set = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: {e} (fix or remove it)", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => MaintenanceSet::default(),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        Ok(Maintenance {
            path: Some(path),
            set: Mutex::new(set),
            changed: watch::channel(0).0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MaintenanceSet> {
        self.set.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Everything in maintenance now.
    pub fn snapshot(&self) -> MaintenanceSet {
        self.lock().clone()
    }

    /// Whether the node is in maintenance.
    pub fn node(&self) -> bool {
        self.lock().node
    }

    /// Whether `group` as a whole is in maintenance (its own, or the node's).
    pub fn group(&self, group: &str) -> bool {
        let set = self.lock();
        set.node || set.groups.contains(group)
    }

    /// Whether `group/resource` is in maintenance of its own.
    pub fn resource(&self, group: &str, resource: &str) -> bool {
        self.lock()
            .resources
            .contains(&format!("{group}/{resource}"))
    }

    /// Puts `target` in maintenance (`on`) or takes it out, and keeps the result; `Ok(false)`
    /// when nothing changed. Written before anyone is told: an agent restarted a moment later
    /// finds it as it was.
    pub fn set(&self, target: &Target, on: bool) -> Result<bool, String> {
        let mut set = self.lock();
        let mut next = set.clone();
        match target {
            Target::Node => next.node = on,
            Target::Group(g) if on => {
                next.groups.insert(g.clone());
            }
            Target::Group(g) => {
                next.groups.remove(g);
            }
            Target::Resource(g, r) if on => {
                next.resources.insert(format!("{g}/{r}"));
            }
            Target::Resource(g, r) => {
                next.resources.remove(&format!("{g}/{r}"));
            }
        }
        if next == *set {
            return Ok(false);
        }
        if let Some(path) = &self.path {
            write_atomically(path, &next)?;
        }
        *set = next;
        drop(set);
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        Ok(true)
    }

    /// Told at every change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

fn write_atomically(path: &Path, set: &MaintenanceSet) -> Result<(), String> {
    let text = serde_json::to_vec_pretty(set).unwrap_or_default();
    let tmp = path.with_extension("json.tmp");
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&tmp, text))
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot keep maintenance in {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_survive_a_restart_and_a_garbled_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let m = Maintenance::load(dir.path()).unwrap();
        assert!(!m.group("vs1"));
        assert!(m.set(&Target::Group("vs1".into()), true).unwrap());
        assert!(
            !m.set(&Target::Group("vs1".into()), true).unwrap(),
            "no change"
        );
        m.set(&Target::Resource("vs2".into(), "smtp".into()), true)
            .unwrap();
        let again = Maintenance::load(dir.path()).unwrap();
        assert!(again.group("vs1") && !again.group("vs2"));
        assert!(again.resource("vs2", "smtp"));
        again.set(&Target::Node, true).unwrap();
        assert!(
            Maintenance::load(dir.path()).unwrap().group("vs2"),
            "the node's"
        );

        std::fs::write(dir.path().join("maintenance.json"), "{\"node\": tru").unwrap();
        let e = Maintenance::load(dir.path()).err().unwrap();
        assert!(
            e.contains("maintenance.json") && e.contains("fix or remove it"),
            "{e}"
        );
    }
}
