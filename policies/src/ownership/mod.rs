//! Who runs a group across nodes: the ownership rules of the etcd coordinator as a pure state
//! machine. The coordinator (in `agent`) turns [`Action`]s into etcd transactions and directive
//! sends, and feeds back what etcd said ([`Input`]) with the time as a value ([`Now`]).
//!
//! The rules:
//!
//! - *Permission to run.* A group runs here only while this node holds its owner key under its
//!   lease, and only until the fence deadline: the sending of the last renewal etcd
//!   acknowledged plus `window` (`lease_ttl - fence_margin`). Every input first checks the
//!   deadline, so that after a freeze (SIGSTOP, a suspend, a stalled scheduler) the first thing
//!   the machine says is to fence, before anything else.
//! - *Fence.* At the deadline every group is told [`Directive::Fence`] (terminate at once), and
//!   the session is over ([`Ownership::fenced`]). Before the first session, the same deadline
//!   counts from the start: what an agent adopted may be owned elsewhere by now.
//! - *Take.* A group whose owner key is absent is taken by the node its placement names (the
//!   target of a move or failover, else the best alive node other than the one it failed over
//!   from), with a transaction that requires the key absent: never a key whose holder's lease
//!   may still be alive.
//! - *Release.* A move request to another alive possible owner stops the group here; once it is
//!   offline the key is deleted (only if it is still this node's, at the revision it wrote).
//!   A stale request (its node gone) is dropped.
//! - *Failover* writes the failover history and the request in one transaction on the history's
//!   revision; *failback* follows a preferred node's return, within its window.
//! - *Drain* ([`Observation::Paused`]): a paused node takes no group and no group is placed on
//!   it; a node that sees itself paused moves the groups it holds to other nodes, at most
//!   [`DRAIN_PARALLEL`] at a time, each an orderly move; a group that no other node may take
//!   stays, and the node says why ([`Action::DrainBlocked`]).
//! - *Maintenance* ([`Input::Frozen`]): a group in maintenance (its own, one of its
//!   resources', or the node's) is not taken here, and while this node holds it no move,
//!   failback or release is started: what an administrator works on stays where it is.
//! - *Key schema* ([`Observation::Schema`]): the layout of the keys is numbered; a node never
//!   acts on a schema newer than its own. It takes no group, moves none, says so once
//!   ([`Action::SchemaRefused`]), and no group is placed on it, nor on any node that publishes
//!   an older schema than the cluster's.
//! - *The other groups* ([`Neighbours`]): a node takes a group only where it fits the node's
//!   capacities, where no group of its hard anti-affinity class runs, and where the groups it
//!   is colocated with run (or are being taken). A group whose colocated provider is held by
//!   another node, or by none, is stopped and released: it follows its provider.

use crate::placement::{Neighbours, Placement};

mod asks;
use crate::time::Time;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

/// How many groups a draining node moves at once: each is an orderly stop here and start there,
/// and a node of many groups would otherwise start them all on the others at the same moment.
pub const DRAIN_PARALLEL: usize = 2;

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

/// What this node knows about one group.
#[derive(Clone, Debug)]
struct Group {
    placement: Placement,
    owner: Option<OwnerKey>,
    target: Option<(MoveTarget, i64)>,
    failovers: Vec<f64>,
    failovers_revision: i64,
    /// Nodes that joined since this node took the group: failback candidates.
    returned: Vec<String>,
    /// Told to stop so that another node can take it; waiting for the group to be offline.
    releasing: bool,
    /// A take transaction is out, with its reason.
    taking: Option<String>,
    /// What the group was told last.
    directive: Directive,
    /// In maintenance here: not taken, not moved.
    frozen: bool,
    /// This node asked to move it away (a drain); until it is released.
    draining: bool,
    /// Why a drain could not move it, as last said.
    drain_blocked: Option<String>,
}

/// The ownership state machine of one node.
#[derive(Clone, Debug)]
pub struct Ownership {
    node: String,
    window: Duration,
    started: Time,
    ever_connected: bool,
    /// Never connected, and what was adopted was stopped at the start-up deadline.
    startup_fenced: bool,
    /// The session's lease; 0 between sessions.
    lease: i64,
    /// The sending time of the newest renewal etcd acknowledged (or of the session's first).
    renewed: Option<Time>,
    /// Renewals sent and not yet answered, oldest first.
    unanswered: VecDeque<Time>,
    fenced: bool,
    alive: BTreeSet<String>,
    /// Paused (drained) nodes: they take no group.
    paused: BTreeSet<String>,
    /// What each node declares it can hold, this node's own from its config.
    capacity: BTreeMap<String, BTreeMap<String, u64>>,
    /// The key schema this node speaks.
    schema: u32,
    /// The cluster's key schema (0: not yet known).
    cluster_schema: u32,
    /// The key schema each alive node speaks.
    schemas: BTreeMap<String, u32>,
    /// [`Action::SchemaRefused`] was said for the present refusal.
    refusal_said: bool,
    groups: BTreeMap<String, Group>,
}

impl Ownership {
    /// The machine of `node`, whose groups may run for `window` (`lease_ttl - fence_margin`)
    /// after the sending of a renewal etcd acknowledged; `started` is the agent's start.
    pub fn new(node: impl Into<String>, window: Duration, started: Time) -> Self {
        Ownership {
            node: node.into(),
            window,
            started,
            ever_connected: false,
            startup_fenced: false,
            lease: 0,
            renewed: None,
            unanswered: VecDeque::new(),
            fenced: false,
            alive: BTreeSet::new(),
            paused: BTreeSet::new(),
            capacity: BTreeMap::new(),
            schema: 1,
            cluster_schema: 0,
            schemas: BTreeMap::new(),
            refusal_said: false,
            groups: BTreeMap::new(),
        }
    }

    /// The key schema this node speaks (1 unless said).
    pub fn with_schema(mut self, schema: u32) -> Self {
        self.schema = schema;
        self
    }

    /// The cluster's key schema while it is newer than this node's: it takes nothing.
    pub fn refused(&self) -> Option<u32> {
        (self.cluster_schema > self.schema).then_some(self.cluster_schema)
    }

    /// This node's capacities (`[cluster] capacity`): never above them, whatever the others
    /// publish.
    pub fn with_capacity(mut self, capacity: BTreeMap<String, u64>) -> Self {
        self.capacity.insert(self.node.clone(), capacity);
        self
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The session's lease (0 between sessions).
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// Whether etcd has answered a renewal since the agent started.
    pub fn ever_connected(&self) -> bool {
        self.ever_connected
    }

    /// The groups were fenced during this session: the coordinator ends it.
    pub fn fenced(&self) -> bool {
        self.fenced
    }

    /// The alive nodes, by name.
    pub fn alive(&self) -> Vec<String> {
        self.alive.iter().cloned().collect()
    }

    /// The paused (drained) nodes, by name.
    pub fn paused(&self) -> Vec<String> {
        self.paused.iter().cloned().collect()
    }

    /// The nodes a group may be placed on: alive, not paused, and speaking the cluster's key
    /// schema (a node behind it takes nothing: a group placed there would have no owner).
    fn candidates(&self) -> Vec<String> {
        self.alive
            .difference(&self.paused)
            .filter(|n| self.schemas.get(*n).copied().unwrap_or(1) >= self.cluster_schema)
            .filter(|n| *n != &self.node || self.refused().is_none())
            .cloned()
            .collect()
    }

    /// Each group's owner, as last seen.
    pub fn owners(&self) -> BTreeMap<String, Option<String>> {
        self.groups
            .iter()
            .map(|(name, g)| (name.clone(), g.owner.as_ref().map(|o| o.node.clone())))
            .collect()
    }

    /// What `group` was told last.
    pub fn directive(&self, group: &str) -> Option<Directive> {
        self.groups.get(group).map(|g| g.directive)
    }

    /// Whether this node holds `group`'s key under its current lease.
    pub fn holds(&self, group: &str) -> bool {
        self.groups.get(group).is_some_and(|g| self.owned(g))
    }

    /// The time until which groups may run here, if any.
    pub fn deadline(&self) -> Option<Time> {
        if !self.ever_connected {
            return (!self.startup_fenced).then(|| self.started.after(self.window));
        }
        self.renewed.map(|r| r.after(self.window))
    }

    /// The oldest renewal not yet answered, if any.
    pub fn oldest_unanswered(&self) -> Option<Time> {
        self.unanswered.front().copied()
    }

    fn owned(&self, g: &Group) -> bool {
        self.lease != 0
            && g.owner
                .as_ref()
                .is_some_and(|o| o.node == self.node && o.lease == self.lease)
    }

    /// Where `group` runs or is going: its owner, or this node while a take is out.
    fn location(&self, group: &str) -> Option<String> {
        let g = self.groups.get(group)?;
        match (&g.owner, &g.taking) {
            (Some(o), _) => Some(o.node.clone()),
            (None, Some(_)) => Some(self.node.clone()),
            (None, None) => None,
        }
    }

    /// What the other groups leave for `group`, as last seen; `None` while a group it is
    /// colocated with is not registered yet (its keys are not read: nothing is decided).
    pub fn neighbours(&self, group: &str) -> Option<Neighbours> {
        let g = self.groups.get(group)?;
        let class = g.placement.anti_affinity.as_ref().map(|a| &a.class);
        let mut nb = Neighbours {
            capacity: self.capacity.clone(),
            ..Neighbours::default()
        };
        for (name, h) in &self.groups {
            if name == group {
                continue;
            }
            let Some(at) = self.location(name) else {
                continue;
            };
            let same = h.placement.anti_affinity.as_ref().map(|a| &a.class);
            if class.is_some() && same == class {
                nb.crowded.push(at.clone());
            }
            let used = nb.used.entry(at).or_default();
            for (k, v) in &h.placement.uses {
                *used.entry(k.clone()).or_default() += v;
            }
        }
        for provider in &g.placement.colocated_with {
            if !self.groups.contains_key(provider) {
                return None;
            }
            nb.providers
                .push((provider.clone(), self.location(provider)));
        }
        Some(nb)
    }

    /// Whether a group may be told to run now: in a session, before the deadline of a renewal
    /// etcd answered (the start-up deadline only bounds what runs before any).
    fn may_run(&self, now: Time) -> bool {
        self.lease != 0 && !self.fenced && self.renewed.is_some_and(|r| now < r.after(self.window))
    }

    /// Feeds one input; returns what to do, in order.
    pub fn step(&mut self, input: Input, now: Now) -> Vec<Action> {
        let mut out = Vec::new();
        self.check_deadline(now.at, &mut out);
        match input {
            Input::Register { group, placement } => {
                let directive = if self.ever_connected {
                    Directive::Stop
                } else {
                    Directive::Wait
                };
                self.groups.insert(
                    group.clone(),
                    Group {
                        placement,
                        owner: None,
                        target: None,
                        failovers: Vec::new(),
                        failovers_revision: 0,
                        returned: Vec::new(),
                        releasing: false,
                        taking: None,
                        directive,
                        frozen: false,
                        draining: false,
                        drain_blocked: None,
                    },
                );
                out.push(Action::Direct { group, directive });
            }
            Input::Unregister { group } => {
                // The owner key stays. An agent that stops (an upgrade, a restart) leaves what
                // it runs running, and its successor adopts it under the same lease: releasing
                // the key here would let another node start a second copy.
                self.groups.remove(&group);
            }
            Input::SessionStarted { lease } => {
                self.lease = lease;
                self.fenced = false;
                self.unanswered.clear();
                self.alive.clear();
                self.paused.clear();
                self.schemas.clear();
                for g in self.groups.values_mut() {
                    g.owner = None;
                    g.target = None;
                    g.taking = None;
                    g.draining = false;
                }
            }
            Input::Observed { change, live } => self.observe(change, live),
            Input::RenewalSent => {
                if self.unanswered.len() >= 16 {
                    self.unanswered.pop_front();
                }
                self.unanswered.push_back(now.at);
            }
            Input::RenewalAnswered => {
                if let Some(sent) = self.unanswered.pop_front() {
                    if !self.fenced && self.lease != 0 && self.renewed.is_none_or(|r| sent > r) {
                        self.renewed = Some(sent);
                        // Connected: from now on the deadline counts from renewals, not from
                        // the start.
                        self.ever_connected = true;
                    }
                }
            }
            Input::SessionEnded { lease_gone } => {
                if self.ever_connected && lease_gone {
                    self.renewed = None;
                    self.fence_all(Duration::ZERO, &mut out);
                }
                self.lease = 0;
                self.fenced = false;
                self.unanswered.clear();
                self.alive.clear();
                for g in self.groups.values_mut() {
                    g.owner = None;
                    g.releasing = false;
                    g.taking = None;
                }
            }
            Input::Took { group, revision } => self.took(&group, revision, now, &mut out),
            Input::KeyReleased { group } => {
                if let Some(g) = self.groups.get_mut(&group) {
                    g.owner = None;
                    g.draining = false;
                }
            }
            Input::Released { group } => {
                let owned = self.holds(&group);
                if let Some(g) = self.groups.get_mut(&group) {
                    let stopping = matches!(g.directive, Directive::Stop | Directive::Fence);
                    if owned && stopping {
                        if let Some(o) = &g.owner {
                            out.push(Action::Release {
                                group: group.clone(),
                                revision: o.revision,
                                to: g.target.as_ref().map(|(t, _)| t.to.clone()),
                            });
                        }
                    }
                    g.releasing = false;
                }
            }
            Input::RunRefused { group } => {
                if let Some(g) = self.groups.get_mut(&group) {
                    g.directive = Directive::Stop;
                }
            }
            Input::Frozen { group, frozen } => {
                if let Some(g) = self.groups.get_mut(&group) {
                    g.frozen = frozen;
                }
            }
            Input::Evaluate => {
                match self.refused() {
                    Some(cluster) if !self.refusal_said && self.lease != 0 => {
                        self.refusal_said = true;
                        out.push(Action::SchemaRefused {
                            cluster,
                            own: self.schema,
                        });
                    }
                    None => self.refusal_said = false,
                    _ => {}
                }
                let names: Vec<String> = self.groups.keys().cloned().collect();
                for name in names {
                    self.evaluate(&name, now, &mut out);
                }
            }
            Input::Tick => {}
        }
        out
    }

    /// Fences every group once the deadline has passed.
    fn check_deadline(&mut self, now: Time, out: &mut Vec<Action>) {
        if self.fenced {
            return;
        }
        let Some(deadline) = self.deadline() else {
            return;
        };
        if now < deadline {
            return;
        }
        if !self.ever_connected {
            // Never reached etcd: what was adopted may be owned elsewhere by now; stopped once.
            self.startup_fenced = true;
            self.fence_all(Duration::ZERO, out);
            return;
        }
        let since = self
            .renewed
            .take()
            .map(|r| now.elapsed().saturating_sub(r.elapsed()))
            .unwrap_or_default();
        self.fenced = true;
        self.fence_all(since, out);
    }

    fn fence_all(&mut self, since_renewal: Duration, out: &mut Vec<Action>) {
        let mut running = Vec::new();
        for (name, g) in self.groups.iter_mut() {
            if g.directive == Directive::Run {
                running.push(name.clone());
            }
            if g.directive != Directive::Fence {
                g.directive = Directive::Fence;
                out.push(Action::Direct {
                    group: name.clone(),
                    directive: Directive::Fence,
                });
            }
        }
        out.push(Action::Fenced {
            groups: running,
            since_renewal,
        });
    }

    fn direct(&mut self, group: &str, directive: Directive, now: Time, out: &mut Vec<Action>) {
        let directive = if directive == Directive::Run && !self.may_run(now) {
            Directive::Stop
        } else {
            directive
        };
        if let Some(g) = self.groups.get_mut(group) {
            // A fenced group stays fenced until it runs again: its terminate is under way.
            if g.directive == Directive::Fence && directive == Directive::Stop {
                return;
            }
            if g.directive != directive {
                g.directive = directive;
                out.push(Action::Direct {
                    group: group.to_string(),
                    directive,
                });
            }
        }
    }

    fn observe(&mut self, change: Observation, live: bool) {
        match change {
            Observation::NodeUp {
                node,
                new,
                capacity,
                schema,
            } => {
                if node != self.node {
                    self.capacity.insert(node.clone(), capacity);
                }
                self.schemas.insert(node.clone(), schema);
                let joined = self.alive.insert(node.clone());
                if live && joined && new {
                    let me = self.node.clone();
                    for g in self.groups.values_mut() {
                        if g.owner.as_ref().is_some_and(|o| o.node == me) {
                            g.returned.push(node.clone());
                        }
                    }
                }
            }
            Observation::Schema { schema } => self.cluster_schema = schema,
            Observation::NodeDown { node } => {
                self.alive.remove(&node);
                self.schemas.remove(&node);
                if node != self.node {
                    self.capacity.remove(&node);
                }
            }
            Observation::Owner { group, key } => {
                if let Some(g) = self.groups.get_mut(&group) {
                    if key.as_ref().is_none_or(|k| k.node != self.node) {
                        g.draining = false;
                    }
                    g.owner = key;
                }
            }
            Observation::Paused { node, paused } => {
                if paused {
                    self.paused.insert(node);
                } else {
                    self.paused.remove(&node);
                    if node == self.node {
                        for g in self.groups.values_mut() {
                            g.drain_blocked = None;
                        }
                    }
                }
            }
            Observation::Target { group, target } => {
                if let Some(g) = self.groups.get_mut(&group) {
                    g.target = target;
                }
            }
            Observation::Failovers {
                group,
                history,
                revision,
            } => {
                if let Some(g) = self.groups.get_mut(&group) {
                    g.failovers = history;
                    g.failovers_revision = revision;
                }
            }
        }
    }

    /// Decides what this node does about one group, from what etcd said last.
    fn evaluate(&mut self, name: &str, now: Now, out: &mut Vec<Action>) {
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

    fn took(&mut self, name: &str, revision: Option<i64>, now: Now, out: &mut Vec<Action>) {
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
}
