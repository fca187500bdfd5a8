//! What `/api/v1/status` and `resmon status` show: per resource, its state, the last result of
//! each check, restart counts and the next check time. Workers and group tasks write their own
//! slots; the API reads them all.

use resmon_policies::{FailureReason, GroupMode, Operation, State};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// The last result of one kind of check.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CheckStatus {
    /// Whether this check is polled now.
    pub polled: bool,
    /// When the last one finished (Unix seconds).
    pub last_at: Option<f64>,
    /// Whether it passed.
    pub last_ok: Option<bool>,
    /// Why it failed.
    pub last_reason: Option<FailureReason>,
    /// The failure's detail.
    pub last_detail: Option<String>,
    /// How long it ran.
    pub last_duration_seconds: Option<f64>,
    /// When the next one is due (Unix seconds).
    pub next_at: Option<f64>,
}

/// The last failed attempt of a check-only resource's online in flight.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttemptStatus {
    /// Which attempt, from 1.
    pub attempt: u32,
    /// When it failed (Unix seconds).
    pub at: f64,
    /// Why.
    pub reason: FailureReason,
    /// The failure's detail.
    pub detail: String,
}

/// One resource's status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResourceStatus {
    /// Name.
    pub name: String,
    /// Type (borrowed: 10,000 resources need not allocate it each).
    pub r#type: Cow<'static, str>,
    /// State.
    pub state: State,
    /// Since when (Unix seconds).
    pub since: f64,
    /// Why it entered that state.
    pub cause: String,
    /// Operation in flight.
    pub pending: Option<Operation>,
    /// Names of the resources it depends on.
    pub depends_on: Vec<String>,
    /// Restarts since the agent started.
    pub restarts_total: u64,
    /// Restarts counted within `restart_period` now.
    pub restarts_in_period: u32,
    /// The restart threshold.
    pub restart_threshold: u32,
    /// When the final attempt is due (Unix seconds).
    pub retry_at: Option<f64>,
    /// When it is restarted, while it waits its `restart_delay` (Unix seconds).
    #[serde(default)]
    pub restart_at: Option<f64>,
    /// Stays failed until an administrator acts.
    pub needs_admin: bool,
    /// The cheap check.
    pub looks_alive: CheckStatus,
    /// The thorough check.
    pub is_alive: CheckStatus,
    /// While a check-only resource comes online: its last failed attempt.
    #[serde(default)]
    pub online_attempt: Option<AttemptStatus>,
    /// In maintenance (its own, its group's or the node's): checked, never acted on.
    #[serde(default)]
    pub unmanaged: bool,
    /// Its flap damping penalty as of its last failure.
    #[serde(default)]
    pub damping_penalty: u32,
    /// Held back by flap damping until then (Unix seconds).
    #[serde(default)]
    pub damped_until: Option<f64>,
    /// When the oldest restart counted in its restart window leaves it (Unix seconds).
    #[serde(default)]
    pub restart_window_frees_at: Option<f64>,
}

impl ResourceStatus {
    /// A resource the agent has not acted on yet: offline since `since`, nothing counted.
    pub fn new(
        name: String,
        r#type: Cow<'static, str>,
        depends_on: Vec<String>,
        restart_threshold: u32,
        since: f64,
    ) -> ResourceStatus {
        ResourceStatus {
            name,
            r#type,
            state: State::Offline,
            since,
            cause: "agent_started".into(),
            pending: None,
            depends_on,
            restarts_total: 0,
            restarts_in_period: 0,
            restart_threshold,
            retry_at: None,
            restart_at: None,
            needs_admin: false,
            looks_alive: CheckStatus::default(),
            is_alive: CheckStatus::default(),
            online_attempt: None,
            unmanaged: false,
            damping_penalty: 0,
            damped_until: None,
            restart_window_frees_at: None,
        }
    }
}

/// A shared, lockable resource status.
pub type ResourceSlot = Arc<Mutex<ResourceStatus>>;

/// Locks a slot; a panic elsewhere leaves plain data behind, so poisoning is ignored.
pub fn lock(slot: &ResourceSlot) -> MutexGuard<'_, ResourceStatus> {
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

/// One group's status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupStatus {
    /// Name.
    pub name: String,
    /// What the group is asked to do on this node.
    pub mode: GroupMode,
    /// The node that owns it, as the coordinator knows; `None` while nobody holds it.
    pub owner: Option<String>,
    /// Resources in config order.
    pub resources: Vec<ResourceStatus>,
}

/// The whole agent's status, as served.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentStatus {
    /// This node.
    pub node: String,
    /// Agent version.
    pub version: String,
    /// Groups by name.
    pub groups: Vec<GroupStatus>,
    /// The cluster as this node sees it.
    pub cluster: crate::cluster::ClusterView,
    /// What is in maintenance on this node.
    #[serde(default)]
    pub maintenance: crate::maintenance::MaintenanceSet,
}

/// A group's live slots.
pub struct GroupSlots {
    /// Mode, written by the group task.
    pub mode: Mutex<GroupMode>,
    /// Resource slots, in config order.
    pub resources: Vec<ResourceSlot>,
}

/// Every group's live slots.
#[derive(Default)]
pub struct StatusBoard {
    groups: RwLock<BTreeMap<String, Arc<GroupSlots>>>,
}

impl StatusBoard {
    /// Publishes (or replaces) a group's slots.
    pub fn insert(&self, name: &str, slots: Arc<GroupSlots>) {
        self.groups
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.into(), slots);
    }

    /// Forgets a group.
    pub fn remove(&self, name: &str) {
        self.groups
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// A snapshot of everything.
    pub fn snapshot(
        &self,
        cluster: crate::cluster::ClusterView,
        maintenance: crate::maintenance::MaintenanceSet,
    ) -> AgentStatus {
        let groups = self.groups.read().unwrap_or_else(|e| e.into_inner());
        let node = cluster.node.clone();
        AgentStatus {
            node: node.clone(),
            version: crate::VERSION.into(),
            groups: groups
                .iter()
                .map(|(name, slots)| GroupStatus {
                    name: name.clone(),
                    mode: *slots.mode.lock().unwrap_or_else(|e| e.into_inner()),
                    owner: cluster.owners.get(name).cloned().flatten(),
                    resources: slots.resources.iter().map(|r| lock(r).clone()).collect(),
                })
                .collect(),
            cluster,
            maintenance,
        }
    }
}
