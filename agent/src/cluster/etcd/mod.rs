//! The etcd coordinator: the I/O side of group ownership. What to do is decided by the pure
//! state machine [`resmon_policies::ownership::Ownership`]; this module holds the session (a
//! lease, its renewals, a watch on the keys), feeds the machine what etcd says with the time
//! on CLOCK_BOOTTIME, and carries its actions out as transactions and directives.
//!
//! Keys, under `prefix` (default `/resmon`):
//!
//! - `schema`: the key schema the cluster's keys are written in ([`KEY_SCHEMA`]), put by the
//!   first node if absent. A node never acts under a newer schema than its own.
//! - `nodes/<node>`: present while the node's lease lives; the set of alive nodes. Its value
//!   ([`NodeRecord`]) says the node's version, key schema, capacities and config fingerprints.
//! - `groups/<group>/owner`: the owner's name, held under the owner's lease. Created only by a
//!   transaction that requires it absent (`create_revision == 0`), deleted only by a
//!   transaction that requires it to still be this node's (value, lease and revision), or by
//!   etcd when the lease expires.
//! - `groups/<group>/target`: a move request `{to, from, reason}` (failover, `resmon move`,
//!   failback). The owner takes the group offline and deletes its key; the named node takes it,
//!   deleting the request in the same transaction.
//! - `groups/<group>/failovers`: Unix times of recent failovers, changed by a transaction on its
//!   revision, for `failover_threshold` within `failover_period`.
//! - `groups/<group>/online/<resource>`: present while a resource that other groups depend on
//!   is online on the node that holds it, under that node's lease (`depends_on_anywhere`).
//! - `dependents/<group>/<resource>/<node>`: present while a resource of `<node>` that depends
//!   on that provider is up, under `<node>`'s lease, so that the provider's orderly offline
//!   waits for dependents on other nodes too.
//!
//! Self-fencing: a task apart from the session ticks the machine at least every 50 ms on
//! CLOCK_BOOTTIME (which counts a suspend), so the fence deadline (the sending of the last
//! renewal etcd acknowledged plus `lease_ttl - fence_margin`) is met even while the session
//! waits on etcd. An agent restart reuses its lease if it is still alive (its id is kept in the
//! state directory), so its groups do not move.
//!
//! Modules: `session` (a member, the lease, its renewals, the snapshot and the watch), `keys`
//! (the key layout and what each key says to the machine), `fence` (the fencing task and what it
//! shares with the session), `admin` (what is asked of the cluster from outside the machine:
//! failover, drain and resume, provider states), `survey` (the nodes' records, read once for
//! `resmon validate --cluster`); this file carries the machine's actions out.

use super::clock::BootInstant;
use super::watchdog::Watchdog;
use super::{ClusterView, Directive, FailoverAnswer, Request};
use crate::config::ClusterConfig;
use crate::events::{
    CoordinatorDisconnected, DrainBlocked, Event, EventSink, MoveStarted, OwnershipAcquired,
    OwnershipReleased, SchemaRefused, SelfFenced,
};
use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use resmon_policies::ownership::{Action, Input, MoveTarget, Ownership};
use resmon_policies::Time;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout, Instant};

mod admin;
mod fence;
mod keys;
mod session;
mod survey;

use fence::{fencing, Shared};
use keys::Keys;
pub use keys::{NodeRecord, KEY_SCHEMA};
pub use survey::{survey, Survey};

pub(super) fn spawn(
    node: String,
    config: ClusterConfig,
    state_dir: PathBuf,
    rx: mpsc::UnboundedReceiver<Request>,
    view: Arc<Mutex<ClusterView>>,
    sink: Arc<EventSink>,
    local: Local,
) {
    let Local {
        providers,
        maintenance,
        identity,
    } = local;
    let window = config.lease_ttl.0.saturating_sub(config.fence_margin());
    let shared = Arc::new(Shared {
        machine: Mutex::new(
            Ownership::new(node.clone(), window, Time::ZERO)
                .with_capacity(config.capacity.clone())
                .with_schema(KEY_SCHEMA),
        ),
        directives: Mutex::new(BTreeMap::new()),
        origin: BootInstant::now(),
    });
    tokio::spawn(fencing(shared.clone(), node.clone(), sink.clone()));
    let watchdog = Watchdog::new(config.watchdog.clone(), window);
    let coordinator = EtcdCoordinator {
        keys: Keys {
            prefix: config.prefix.trim_end_matches('/').to_string(),
        },
        node,
        config,
        lease_file: state_dir.join("cluster-lease"),
        rx,
        view,
        sink,
        shared,
        endpoint: 0,
        watchdog,
        providers,
        maintenance,
        identity,
        records: BTreeMap::new(),
        skew: Default::default(),
    };
    tokio::spawn(coordinator.run());
}

/// What this node's groups share with the coordinator.
pub(super) struct Local {
    /// Provider states: this node's, published; every node's, read back.
    pub(super) providers: Arc<super::providers::Providers>,
    /// What is in maintenance here.
    pub(super) maintenance: Arc<crate::maintenance::Maintenance>,
    /// The config's fingerprints, published in this node's record.
    pub(super) identity: crate::config::identity::Identity,
}

/// Why a session ended.
type Broken = String;

struct EtcdCoordinator {
    node: String,
    config: ClusterConfig,
    keys: Keys,
    lease_file: PathBuf,
    rx: mpsc::UnboundedReceiver<Request>,
    view: Arc<Mutex<ClusterView>>,
    sink: Arc<EventSink>,
    shared: Arc<Shared>,
    /// Armed before the node first runs a group, fed at each acknowledged renewal.
    watchdog: Watchdog,
    /// Which of `config.endpoints` the next session talks to: each session talks to one
    /// member, and one that fails passes to the next.
    endpoint: usize,
    /// Provider states: this node's, published; every node's, read back.
    providers: Arc<super::providers::Providers>,
    /// What is in maintenance here: those groups are not taken or moved.
    maintenance: Arc<crate::maintenance::Maintenance>,
    /// The config's fingerprints, published in this node's record.
    identity: crate::config::identity::Identity,
    /// What each alive node says of itself, for the skew shown in status.
    records: BTreeMap<String, NodeRecord>,
    /// What differs between those records: compared when one changes, not at each renewal.
    skew: super::skew::Skew,
}

fn etcd_error(what: &str, e: etcd_client::Error) -> Broken {
    format!("{what}: {e}")
}

/// Runs an etcd call under the session's deadline.
async fn bounded<T>(
    limit: Duration,
    what: &str,
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Broken> {
    match timeout(limit, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(etcd_error(what, e)),
        Err(_) => Err(format!("{what}: no answer within {limit:?}")),
    }
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn unix_now() -> f64 {
    crate::events::unix_now()
}

#[allow(unsafe_code)] // localtime_r: no safe wrapper in the dependencies.
fn local_hour() -> u8 {
    let now = libc::time_t::try_from(unix_now() as i64).unwrap_or_default();
    // SAFETY: `tm` is plain data (integers and a pointer left null), for which zero is valid.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: localtime_r reads `now` and writes only into the `tm` we own.
    unsafe { libc::localtime_r(&now, &mut tm) };
    tm.tm_hour.clamp(0, 23) as u8
}

impl EtcdCoordinator {
    fn op_timeout(&self) -> Duration {
        (self.config.lease_ttl.0 / 3).max(Duration::from_millis(300))
    }

    async fn run(mut self) {
        loop {
            let why = self.session().await;
            // The next session prefers the next member: this one may be cut off, dead, or
            // without quorum.
            self.endpoint = (self.endpoint + 1) % self.config.endpoints.len().max(1);
            let held = {
                let machine = self.shared.machine();
                machine.owners().keys().any(|g| machine.holds(g))
            };
            let was_connected = self.view().connected;
            // A broken connection is not a lost lease: the groups keep running until the
            // fence says the lease may be gone, and the next session reuses the lease if it
            // lives. Only a lease etcd declared expired stops them at once.
            let lease_gone = !self.lease_file.exists();
            // Other nodes' dependents are not known without a session: nothing here waits for
            // them (a fence, above all, must not).
            self.providers.set_remote([]);
            let actions = self.shared.step(Input::SessionEnded { lease_gone });
            self.act_offline(actions);
            self.records.clear();
            self.compare_records();
            {
                let mut view = self.view();
                view.connected = false;
                view.nodes.clear();
                for owner in view.owners.values_mut() {
                    *owner = None;
                }
            }
            if was_connected || self.shared.machine().lease() == 0 {
                CoordinatorDisconnected {
                    node: &self.node,
                    why: &why,
                }
                .emit(&self.sink);
            }
            tracing::warn!("cluster session ended: {why}");
            // Keep answering the groups while waiting to try again.
            let retry = Instant::now() + Duration::from_millis(100);
            while let Ok(Some(request)) = tokio::time::timeout_at(retry, self.rx.recv()).await {
                self.offline_request(request);
            }
            if self.rx.is_closed() {
                self.watchdog.close(!held);
                return;
            }
        }
    }

    fn view(&self) -> std::sync::MutexGuard<'_, ClusterView> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request while there is no session.
    fn offline_request(&mut self, request: Request) {
        match request {
            Request::Register {
                group,
                placement,
                directive,
            } => {
                let actions = self.register(group, placement, directive);
                self.act_offline(actions);
            }
            Request::Unregister { group } => {
                if let Some(actions) = self.unregister(&group) {
                    self.act_offline(actions);
                }
            }
            Request::Failover { reply, .. } => {
                let _ = reply.send(FailoverAnswer {
                    moved: false,
                    detail: "the coordinator is not in touch with etcd".into(),
                });
            }
            Request::Released { group } => {
                let actions = self.shared.step(Input::Released { group });
                self.act_offline(actions);
            }
            Request::Move { reply, .. }
            | Request::Drain { reply, .. }
            | Request::Resume { reply, .. } => {
                let _ = reply.send(Err("the coordinator is not in touch with etcd".into()));
            }
            // Published again when the next session starts.
            Request::Provider { .. } | Request::Dependents { .. } => {}
            Request::Identity(identity) => self.identity = identity,
            Request::Maintenance => {
                let actions = self.refreeze();
                self.act_offline(actions);
            }
        }
    }

    /// A group of the config: its directive channel, and the machine's first word for it
    /// (wait before etcd ever answered, stop after: this node cannot know that it holds it).
    fn register(
        &mut self,
        group: String,
        placement: resmon_policies::placement::Placement,
        directive: watch::Sender<Directive>,
    ) -> Vec<Action> {
        self.shared.directives().insert(group.clone(), directive);
        self.view().owners.entry(group.clone()).or_insert(None);
        let frozen = self.frozen(&group);
        let mut actions = self.shared.step(Input::Register {
            group: group.clone(),
            placement,
        });
        actions.extend(self.shared.step(Input::Frozen { group, frozen }));
        actions
    }

    /// Whether `group` is in maintenance here: its own, one of its resources', or the node's.
    fn frozen(&self, group: &str) -> bool {
        let prefix = format!("{group}/");
        self.maintenance.group(group)
            || self
                .maintenance
                .snapshot()
                .resources
                .iter()
                .any(|r| r.starts_with(&prefix))
    }

    /// Tells the machine what is in maintenance now, and has it look at every group again.
    fn refreeze(&mut self) -> Vec<Action> {
        let groups: Vec<String> = self.shared.machine().owners().into_keys().collect();
        let mut actions = Vec::new();
        for group in groups {
            let frozen = self.frozen(&group);
            actions.extend(self.shared.step(Input::Frozen { group, frozen }));
        }
        actions.extend(self.shared.step(Input::Evaluate));
        actions
    }

    /// Forgets a group whose runtime is gone (a reload registers the new group before the old
    /// link is dropped: a live channel means the group is still there).
    fn unregister(&mut self, group: &str) -> Option<Vec<Action>> {
        let closed = self
            .shared
            .directives()
            .get(group)
            .is_some_and(|d| d.is_closed());
        if !closed {
            return None;
        }
        self.shared.directives().remove(group);
        self.view().owners.remove(group);
        Some(self.shared.step(Input::Unregister {
            group: group.to_string(),
        }))
    }

    /// Carries out what needs no etcd; without a session nothing else can be asked.
    fn act_offline(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Direct { group, directive } => self.direct(&group, directive),
                Action::Fenced {
                    groups,
                    since_renewal,
                } => self.fenced(groups, since_renewal),
                Action::SchemaRefused { cluster, own } => self.schema_refused(cluster, own),
                other => tracing::warn!("without a session, cannot {other:?}"),
            }
        }
        self.publish();
    }

    fn schema_refused(&self, cluster: u32, own: u32) {
        SchemaRefused {
            node: &self.node,
            cluster_schema: cluster,
            own_schema: own,
            version: crate::VERSION,
        }
        .emit(&self.sink);
    }

    /// Compares the nodes' records again, after one changed.
    fn compare_records(&mut self) {
        self.skew = super::skew::Skew::of(&self.records);
    }

    /// Puts this node's record in `nodes/<node>` under the session's lease.
    async fn put_record(&self, client: &mut Client, lease: i64) -> Result<(), Broken> {
        let record = NodeRecord::of_this_build(&self.config.capacity, &self.identity);
        bounded(
            self.op_timeout(),
            "publish this node's record",
            client.put(
                self.keys.node(&self.node),
                serde_json::to_string(&record).unwrap_or_default(),
                Some(PutOptions::new().with_lease(lease)),
            ),
        )
        .await
        .map(drop)
    }

    fn fenced(&self, groups: Vec<String>, since_renewal: Duration) {
        SelfFenced {
            node: &self.node,
            groups,
            since_renewal_seconds: since_renewal.as_secs_f64(),
        }
        .emit(&self.sink);
    }

    /// Tells a group what to do; a group may run only once the watchdog counts (when it is
    /// required and does not open, the group is stopped and the machine told).
    fn direct(&mut self, group: &str, directive: Directive) {
        if directive == Directive::Run && !self.arm_watchdog() {
            self.shared.send(group, Directive::Stop);
            self.shared.step(Input::RunRefused {
                group: group.to_string(),
            });
            return;
        }
        self.shared.send(group, directive);
    }

    /// Arms the watchdog before a group runs here; `false` when it is required and did not
    /// open.
    fn arm_watchdog(&mut self) -> bool {
        let armed = self.watchdog.arm().is_ok();
        self.sink.metrics().watchdog_armed(self.watchdog.armed());
        armed
    }

    /// The machine's view of the cluster, for `resmon status` and the metrics.
    fn publish(&self) {
        let (owners, alive, paused) = {
            let machine = self.shared.machine();
            (machine.owners(), machine.alive(), machine.paused())
        };
        for (group, owner) in &owners {
            for node in &alive {
                self.sink
                    .metrics()
                    .group_owner(group, node, owner.as_deref() == Some(node));
            }
        }
        let skew = self.skew.clone();
        let refused = self.shared.machine().refused().map(|cluster| {
            format!(
                "the cluster's key schema {cluster} is newer than this agent's ({KEY_SCHEMA}): \
                 it takes no group until it is upgraded"
            )
        });
        self.sink.metrics().cluster_skew(
            skew.versions.len(),
            skew.differences.len(),
            refused.is_some(),
        );
        let mut view = self.view();
        view.nodes = alive;
        view.paused = paused;
        view.skew = skew;
        view.refused = refused;
        for (group, owner) in owners {
            if let Some(shown) = view.owners.get_mut(&group) {
                *shown = owner;
            }
        }
    }

    /// Carries out the machine's actions, and those its answers lead to, in order.
    async fn act(&mut self, client: &mut Client, actions: Vec<Action>) -> Result<(), Broken> {
        let limit = self.op_timeout();
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Direct { group, directive } => self.direct(&group, directive),
                Action::Fenced {
                    groups,
                    since_renewal,
                } => self.fenced(groups, since_renewal),
                Action::Take { group, .. } => {
                    // Every take waiting in the queue goes at once: after a node dies the
                    // others take its groups by the hundred, and etcd commits concurrent
                    // transactions together where one after another each waits its own
                    // commit. (Other actions are about other groups: their order to the takes
                    // does not matter.)
                    let mut groups = vec![group];
                    queue.retain(|a| match a {
                        Action::Take { group, .. } => {
                            groups.push(group.clone());
                            false
                        }
                        _ => true,
                    });
                    // The watchdog counts before a group can run here (required: or none
                    // does).
                    let revisions = if self.arm_watchdog() {
                        let takes = groups.iter().map(|g| {
                            let mut client = client.clone();
                            let coordinator = &*self;
                            async move { coordinator.take(&mut client, g).await }
                        });
                        futures::future::join_all(takes).await
                    } else {
                        groups.iter().map(|_| Ok(None)).collect()
                    };
                    for (group, revision) in groups.into_iter().zip(revisions) {
                        let revision = revision?;
                        queue.extend(self.shared.step(Input::Took { group, revision }));
                    }
                }
                Action::Acquired {
                    group,
                    reason,
                    revision,
                } => OwnershipAcquired {
                    group: &group,
                    node: &self.node,
                    reason: &reason,
                    revision,
                }
                .emit(&self.sink),
                Action::Release {
                    group,
                    revision,
                    to,
                } => {
                    if self.release(client, &group, revision).await? {
                        OwnershipReleased {
                            group: &group,
                            node: &self.node,
                            to: to.as_deref(),
                        }
                        .emit(&self.sink);
                        queue.extend(self.shared.step(Input::KeyReleased { group }));
                    }
                }
                Action::SchemaRefused { cluster, own } => self.schema_refused(cluster, own),
                Action::DrainBlocked { group, why } => DrainBlocked {
                    group: &group,
                    node: &self.node,
                    why: &why,
                }
                .emit(&self.sink),
                Action::DropTarget { group, revision } => {
                    let txn = Txn::new()
                        .when([Compare::mod_revision(
                            self.keys.target(&group),
                            CompareOp::Equal,
                            revision,
                        )])
                        .and_then([TxnOp::delete(self.keys.target(&group), None)]);
                    bounded(limit, "drop a stale move request", client.txn(txn)).await?;
                }
                Action::RequestMove { group, target } => {
                    self.request_move(client, &group, &target).await?;
                }
            }
        }
        self.publish();
        Ok(())
    }

    /// Creates the owner key under this node's lease if it is absent, deleting the move
    /// request in the same transaction: the key's revision, or `None` when another node was
    /// first (the watch tells who).
    async fn take(&self, client: &mut Client, group: &str) -> Result<Option<i64>, Broken> {
        let owner_key = self.keys.owner(group);
        let lease = self.shared.machine().lease();
        let txn = Txn::new()
            .when([Compare::create_revision(
                owner_key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then([
                TxnOp::put(
                    owner_key,
                    self.node.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                ),
                TxnOp::delete(self.keys.target(group), None),
            ]);
        let response = bounded(self.op_timeout(), "take a group", client.txn(txn)).await?;
        Ok(response
            .succeeded()
            .then(|| response.header().map(|h| h.revision()).unwrap_or(0)))
    }

    /// Deletes this node's owner key of `group` if it is still this node's: `true` when it was.
    async fn release(
        &mut self,
        client: &mut Client,
        group: &str,
        revision: i64,
    ) -> Result<bool, Broken> {
        let key = self.keys.owner(group);
        let lease = self.shared.machine().lease();
        // Only the key this node wrote, at the revision it wrote it: never another's.
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key.clone(), CompareOp::Equal, revision),
                Compare::value(key.clone(), CompareOp::Equal, self.node.clone()),
                Compare::lease(key.clone(), CompareOp::Equal, lease),
            ])
            .and_then([TxnOp::delete(key, None)]);
        let response = bounded(self.op_timeout(), "release a group", client.txn(txn)).await?;
        Ok(response.succeeded())
    }

    /// Writes a move request.
    async fn request_move(
        &mut self,
        client: &mut Client,
        group: &str,
        target: &MoveTarget,
    ) -> Result<(), Broken> {
        bounded(
            self.op_timeout(),
            "request a move",
            client.put(
                self.keys.target(group),
                serde_json::to_string(target).unwrap_or_default(),
                None,
            ),
        )
        .await?;
        MoveStarted {
            group,
            from: target.from.as_deref().unwrap_or(""),
            to: &target.to,
            reason: &target.reason,
        }
        .emit(&self.sink);
        Ok(())
    }

    /// A request from a group or the control API, in a session: the actions it leads to.
    async fn request(
        &mut self,
        client: &mut Client,
        request: Request,
    ) -> Result<Vec<Action>, Broken> {
        let limit = self.op_timeout();
        Ok(match request {
            Request::Register {
                group,
                placement,
                directive,
            } => {
                let mut actions = self.register(group.clone(), placement, directive);
                // What etcd holds for it: read once, then the watch keeps it current.
                let prefix = format!("{}/groups/{group}/", self.keys.prefix);
                let snapshot = bounded(
                    limit,
                    "read a group",
                    client.get(prefix, Some(GetOptions::new().with_prefix())),
                )
                .await?;
                for kv in snapshot.kvs() {
                    if let Some(change) = self.keys.observe(kv, false) {
                        actions.extend(self.shared.step(Input::Observed {
                            change,
                            live: false,
                        }));
                    }
                }
                actions.extend(self.shared.step(Input::Evaluate));
                actions
            }
            Request::Unregister { group } => self.unregister(&group).unwrap_or_default(),
            Request::Released { group } => self.shared.step(Input::Released { group }),
            Request::Failover { group, reply } => {
                let answer = self.failover(client, &group).await?;
                let _ = reply.send(answer);
                Vec::new()
            }
            Request::Move { group, to, reply } => {
                let answer = self.shared.machine().move_request(&group, to);
                let answer = match answer {
                    Ok(target) => {
                        self.request_move(client, &group, &target).await?;
                        Ok(target.to)
                    }
                    Err(why) => Err(why),
                };
                let _ = reply.send(answer);
                Vec::new()
            }
            Request::Provider { name, online } => {
                self.publish_provider(client, &name, online).await?;
                Vec::new()
            }
            Request::Dependents { provider, up } => {
                self.publish_dependents(client, &provider, up).await?;
                Vec::new()
            }
            Request::Identity(identity) => {
                self.identity = identity;
                let lease = self.shared.machine().lease();
                self.put_record(client, lease).await?;
                Vec::new()
            }
            Request::Maintenance => self.refreeze(),
            Request::Drain { node, reply } => {
                let answer = self.pause(client, node).await?;
                let _ = reply.send(answer);
                Vec::new()
            }
            Request::Resume {
                node,
                failback,
                reply,
            } => {
                let (answer, actions) = self.resume(client, node, failback).await?;
                let _ = reply.send(answer);
                actions
            }
        })
    }
}
