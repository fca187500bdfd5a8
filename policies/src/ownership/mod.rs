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
//!
//! Modules: `protocol` (the inputs, observations, actions and directives), this file (the
//! state, and what each input changes), `decide` (what this node does about each group),
//! `fence` (the deadline and what it stops), `asks` (failover, move and drain answers).

use crate::placement::{Neighbours, Placement};

mod asks;
mod decide;
mod fence;
mod protocol;
use crate::time::Time;
pub use protocol::{
    Action, Directive, FailoverWrite, Input, MoveTarget, Now, Observation, OwnerKey,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

/// How many groups a draining node moves at once: each is an orderly stop here and start there,
/// and a node of many groups would otherwise start them all on the others at the same moment.
pub const DRAIN_PARALLEL: usize = 2;

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
            nb.add_use(&at, &h.placement.uses);
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
}
