//! What the ownership machine and its coordinator say to each other: the inputs (what etcd
//! said, and when), the observations of keys, the actions to carry out, and the directives a
//! group is given.

use crate::placement::Placement;
use crate::time::Time;
use std::collections::BTreeMap;
use std::time::Duration;

/// What a group is told to do on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Directive {
    /// Not known yet (the coordinator has not reached the cluster): change nothing.
    Wait,
    /// This node holds the group: keep it online.
    Run,
    /// This node does not hold it (or is letting it go): take it offline in order and report
    /// [`Input::Released`] once it is.
    Stop,
    /// This node may no longer hold it (its lease may expire): terminate what runs at once,
    /// addresses first, and report [`Input::Released`] once everything is down.
    Fence,
}

/// A group's owner key, as etcd holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerKey {
    /// The owner's node name (the key's value).
    pub node: String,
    /// The lease it is held under.
    pub lease: i64,
    /// Its modification revision.
    pub revision: i64,
}

/// A move request, as stored in `groups/<group>/target`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MoveTarget {
    /// The node that is to take the group.
    pub to: String,
    /// The node it moves from.
    #[serde(default)]
    pub from: Option<String>,
    /// Why: `failover`, `move`, `failback`.
    pub reason: String,
}

/// One key of the cluster, as a snapshot or the watch reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// `nodes/<node>` exists; `new` when the key was just created (a node that comes back,
    /// not a renewal).
    NodeUp {
        /// The node.
        node: String,
        /// A new key (version 1).
        new: bool,
        /// What the node declares it can hold (`storage_groups = 4`).
        capacity: BTreeMap<String, u64>,
        /// The key schema the node speaks (1 for nodes that do not say).
        schema: u32,
    },
    /// `schema`: the key schema the cluster's keys are written in; 0 when absent.
    Schema {
        /// The schema number.
        schema: u32,
    },
    /// `nodes/<node>` is gone: its lease expired or it left.
    NodeDown {
        /// The node.
        node: String,
    },
    /// `groups/<group>/owner`, or its deletion.
    Owner {
        /// The group.
        group: String,
        /// The key, `None` when deleted.
        key: Option<OwnerKey>,
    },
    /// `groups/<group>/target` and its revision, or its deletion.
    Target {
        /// The group.
        group: String,
        /// The request and its revision.
        target: Option<(MoveTarget, i64)>,
    },
    /// `paused/<node>`: the node is paused (drained) until resumed, or no longer.
    Paused {
        /// The node.
        node: String,
        /// Paused.
        paused: bool,
    },
    /// `groups/<group>/failovers`: Unix times of recent failovers and the key's revision (0:
    /// absent).
    Failovers {
        /// The group.
        group: String,
        /// Unix seconds.
        history: Vec<f64>,
        /// Modification revision, 0 when the key is absent.
        revision: i64,
    },
}

/// The time of an input: the boot clock (which counts a suspend) for deadlines, wall time for
/// the failover history, the local hour for failback windows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Now {
    /// CLOCK_BOOTTIME, as a [`Time`].
    pub at: Time,
    /// Unix seconds.
    pub unix: f64,
    /// The local hour, 0 to 23.
    pub hour: u8,
}

/// What the coordinator tells the machine.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// A group of this node's config; it is told [`Directive::Wait`] before the first session
    /// and [`Directive::Stop`] after (this node cannot know that it holds it).
    Register {
        /// The group.
        group: String,
        /// Its placement.
        placement: Placement,
    },
    /// The group's runtime is gone (the group left the config, or the agent is stopping). Its
    /// owner key is not released: what it ran may still run.
    Unregister {
        /// The group.
        group: String,
    },
    /// A session holds `lease` (granted, or reused after an agent restart): what etcd held is
    /// forgotten until the snapshot's observations come.
    SessionStarted {
        /// The lease id.
        lease: i64,
    },
    /// What etcd holds; `live` for the watch, not for a snapshot.
    Observed {
        /// The key.
        change: Observation,
        /// From the watch (a node that comes back is a failback candidate).
        live: bool,
    },
    /// A lease renewal was sent now.
    RenewalSent,
    /// etcd acknowledged the oldest renewal not yet answered: the lease lives until at least
    /// that renewal's sending plus the TTL.
    RenewalAnswered,
    /// The session ended: the connection broke, or (`lease_gone`) etcd said the lease expired.
    /// What runs keeps running until the fence deadline, unless the lease is gone.
    SessionEnded {
        /// etcd declared the lease expired.
        lease_gone: bool,
    },
    /// The take transaction's result: the revision of this node's new owner key, or `None`
    /// when another node was first.
    Took {
        /// The group.
        group: String,
        /// The owner key's revision.
        revision: Option<i64>,
    },
    /// The release transaction deleted this node's key.
    KeyReleased {
        /// The group.
        group: String,
    },
    /// The group is offline here after a Stop or Fence.
    Released {
        /// The group.
        group: String,
    },
    /// The coordinator could not run the group (a required watchdog did not open): it was told
    /// Stop instead.
    RunRefused {
        /// The group.
        group: String,
    },
    /// A group entered or left maintenance on this node (its own, one of its resources', or
    /// the node's).
    Frozen {
        /// The group.
        group: String,
        /// In maintenance.
        frozen: bool,
    },
    /// Look at every group again (after changes, and every second for failback windows).
    Evaluate,
    /// Only the time passed: the fence deadline is checked.
    Tick,
}

/// What the coordinator is to do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Tell the group's runtime.
    Direct {
        /// The group.
        group: String,
        /// What to do.
        directive: Directive,
    },
    /// Create the owner key under this node's lease if it is absent, and delete the move
    /// request, in one transaction; answer with [`Input::Took`].
    Take {
        /// The group.
        group: String,
        /// Why this node: a move's reason, `preferred` or `takeover`.
        reason: String,
    },
    /// The group is this node's now.
    Acquired {
        /// The group.
        group: String,
        /// Why this node.
        reason: String,
        /// The owner key's revision.
        revision: i64,
    },
    /// Delete this node's owner key if it is still this node's, at this revision, under this
    /// node's lease; answer with [`Input::KeyReleased`] when it was deleted.
    Release {
        /// The group.
        group: String,
        /// The revision this node wrote.
        revision: i64,
        /// Where the group goes, if a request says.
        to: Option<String>,
    },
    /// Delete a move request nobody can answer, if it is still at this revision.
    DropTarget {
        /// The group.
        group: String,
        /// Its revision.
        revision: i64,
    },
    /// Write a move request.
    RequestMove {
        /// The group.
        group: String,
        /// The request.
        target: MoveTarget,
    },
    /// This node is paused and no other node may take the group: it stays here.
    DrainBlocked {
        /// The group.
        group: String,
        /// Why, node by node.
        why: String,
    },
    /// The cluster's keys are in a schema newer than this node's: it takes nothing until it is
    /// upgraded (said once each time it starts refusing).
    SchemaRefused {
        /// The cluster's schema.
        cluster: u32,
        /// This node's.
        own: u32,
    },
    /// Every group this node ran was fenced: the session is over.
    Fenced {
        /// Groups that were running.
        groups: Vec<String>,
        /// Since the sending of the last acknowledged renewal (zero before any).
        since_renewal: Duration,
    },
}

/// A failover to record: the new history and the request, in one transaction on the history's
/// revision.
#[derive(Clone, Debug, PartialEq)]
pub struct FailoverWrite {
    /// The history with this failover, older ones past the period dropped.
    pub history: Vec<f64>,
    /// The revision the history must still have (0: absent).
    pub revision: i64,
    /// The move request.
    pub target: MoveTarget,
}
