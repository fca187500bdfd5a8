//! The etcd coordinator: group ownership as keys under this node's lease.
//!
//! Keys, under `prefix` (default `/resmon`):
//!
//! - `nodes/<node>`: present while the node's lease lives; the set of alive nodes.
//! - `groups/<group>/owner`: the owner's name, held under the owner's lease. Created only by a
//!   transaction that requires it absent (`create_revision == 0`), deleted only by a
//!   transaction that requires it to still be this node's (value and lease), or by etcd when
//!   the lease expires.
//! - `groups/<group>/target`: a move request `{to, from, reason}` (failover, `resmon move`,
//!   failback). The owner takes the group offline and deletes its key; the named node takes it,
//!   deleting the request in the same transaction.
//! - `groups/<group>/failovers`: Unix times of recent failovers, changed by a transaction on its
//!   revision, for `failover_threshold` within `failover_period`.
//!
//! Self-fencing: a task apart from the session measures the time since the last renewal that
//! etcd acknowledged (counted from when it was *sent*, so the lease cannot have been renewed
//! later than that), on CLOCK_BOOTTIME so that a suspend counts. When `lease_ttl -
//! fence_margin` passes without one, every group this node runs is fenced: terminated at once,
//! addresses first, before the lease can expire and another node take it; the session then
//! starts over with a new lease. An agent restart reuses its lease if it is still
//! alive (its id is kept in the state directory), so its groups do not move.

use super::clock::BootInstant;
use super::watchdog::Watchdog;
use super::{ClusterView, Directive, FailoverAnswer, Request};
use crate::config::ClusterConfig;
use crate::events::{
    CoordinatorConnected, CoordinatorDisconnected, Event, EventSink, MoveStarted,
    OwnershipAcquired, OwnershipReleased, SelfFenced,
};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, PutOptions, Txn,
    TxnOp, WatchOptions,
};
use resmon_policies::placement::Placement;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout, Instant};

/// A move request, as stored in `groups/<group>/target`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Target {
    to: String,
    #[serde(default)]
    from: Option<String>,
    reason: String,
}

#[derive(Clone, Debug)]
struct Owner {
    node: String,
    lease: i64,
    revision: i64,
}

/// What this node knows about one group of its config.
struct Group {
    placement: Placement,
    owner: Option<Owner>,
    target: Option<(Target, i64)>,
    failovers: Vec<f64>,
    failovers_revision: i64,
    /// Nodes that joined since this node took the group: failback candidates.
    returned: Vec<String>,
    /// Told to stop so that another node can take it; waiting for the group to be offline.
    releasing: bool,
}

/// What the fencing task shares with the session.
struct Fence {
    window: Duration,
    /// When the last acknowledged renewal was sent, on CLOCK_BOOTTIME (see [`BootInstant`]).
    renewed: Mutex<Option<BootInstant>>,
    fenced: AtomicBool,
    directives: Mutex<BTreeMap<String, watch::Sender<Directive>>>,
}

impl Fence {
    fn directives(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, watch::Sender<Directive>>> {
        self.directives.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn renewed(&self, sent: BootInstant) {
        let mut r = self.renewed.lock().unwrap_or_else(|e| e.into_inner());
        if r.is_none_or(|prev| sent > prev) {
            *r = Some(sent);
        }
    }

    fn deadline(&self) -> Option<BootInstant> {
        self.renewed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|r| r.after(self.window))
    }

    /// Fences every group: what runs is terminated at once, not stopped in order, for the
    /// lease may expire before an orderly stop ends. Returns the groups that were running.
    fn fence_all(&self) -> Vec<String> {
        let mut running = Vec::new();
        for (group, d) in self.directives().iter() {
            if *d.borrow() == Directive::Run {
                running.push(group.clone());
            }
            d.send_if_modified(|d| std::mem::replace(d, Directive::Fence) != Directive::Fence);
        }
        running
    }
}

/// How often the fencing task reads CLOCK_BOOTTIME while a deadline is ahead. tokio's timers
/// run on CLOCK_MONOTONIC, which stops during a suspend: a task that slept until the deadline
/// would wake that much late. Waking this often, a resumed node fences within this time.
const FENCE_CHECK_EVERY: Duration = Duration::from_millis(50);

/// Fences the groups the moment the lease could no longer be trusted: the last acknowledged
/// renewal's sending plus `lease_ttl - fence_margin`, on CLOCK_BOOTTIME.
async fn fencing(fence: Arc<Fence>, node: String, sink: Arc<EventSink>) {
    loop {
        let Some(deadline) = fence.deadline() else {
            tokio::time::sleep(FENCE_CHECK_EVERY).await;
            continue;
        };
        let now = BootInstant::now();
        if deadline > now {
            tokio::time::sleep(deadline.since(now).min(FENCE_CHECK_EVERY)).await;
            continue;
        }
        let since = fence
            .renewed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .map(|r| r.elapsed().as_secs_f64())
            .unwrap_or_default();
        fence.fenced.store(true, Ordering::SeqCst);
        let groups = fence.fence_all();
        SelfFenced {
            node: &node,
            groups,
            since_renewal_seconds: since,
        }
        .emit(&sink);
    }
}

pub(super) fn spawn(
    node: String,
    config: ClusterConfig,
    state_dir: PathBuf,
    rx: mpsc::UnboundedReceiver<Request>,
    view: Arc<Mutex<ClusterView>>,
    sink: Arc<EventSink>,
) {
    let fence = Arc::new(Fence {
        window: config.lease_ttl.0.saturating_sub(config.fence_margin()),
        renewed: Mutex::new(None),
        fenced: AtomicBool::new(false),
        directives: Mutex::new(BTreeMap::new()),
    });
    tokio::spawn(fencing(fence.clone(), node.clone(), sink.clone()));
    let watchdog = Watchdog::new(config.watchdog.clone(), fence.window);
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
        fence,
        groups: BTreeMap::new(),
        alive: BTreeSet::new(),
        lease: 0,
        ever_connected: false,
        endpoint: 0,
        watchdog,
    };
    tokio::spawn(coordinator.run());
}

struct Keys {
    prefix: String,
}

impl Keys {
    fn node(&self, node: &str) -> String {
        format!("{}/nodes/{node}", self.prefix)
    }
    fn owner(&self, group: &str) -> String {
        format!("{}/groups/{group}/owner", self.prefix)
    }
    fn target(&self, group: &str) -> String {
        format!("{}/groups/{group}/target", self.prefix)
    }
    fn failovers(&self, group: &str) -> String {
        format!("{}/groups/{group}/failovers", self.prefix)
    }
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
    fence: Arc<Fence>,
    groups: BTreeMap<String, Group>,
    alive: BTreeSet<String>,
    lease: i64,
    /// A session has been up since the agent started.
    ever_connected: bool,
    /// Armed before the node first runs a group, fed at each acknowledged renewal.
    watchdog: Watchdog,
    /// Which of `config.endpoints` the next session talks to: each session talks to one
    /// member, and one that fails passes to the next.
    endpoint: usize,
}

/// How soon a member that refused a session is asked again.
const RETRY_MEMBER: Duration = Duration::from_millis(100);

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

fn unix_now() -> f64 {
    crate::events::unix_now()
}

#[allow(unsafe_code)] // localtime_r: no safe wrapper in the dependencies.
fn local_hour() -> u8 {
    let now = libc::time_t::try_from(unix_now() as i64).unwrap_or_default();
    // SAFETY: localtime_r writes only into the tm we own.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    unsafe { libc::localtime_r(&now, &mut tm) };
    tm.tm_hour.clamp(0, 23) as u8
}

impl EtcdCoordinator {
    fn op_timeout(&self) -> Duration {
        (self.config.lease_ttl.0 / 3).max(Duration::from_millis(300))
    }

    async fn run(mut self) {
        let started = Instant::now();
        loop {
            let why = self.session().await;
            // The next session prefers the next member: this one may be cut off, dead, or
            // without quorum.
            self.endpoint = (self.endpoint + 1) % self.config.endpoints.len().max(1);
            let held = self.groups.values().any(|g| self.owned(g));
            let was_connected = self.view().connected;
            self.ever_connected |= was_connected;
            // Never reached etcd since the start: what this node adopted may be owned elsewhere
            // by now; the same deadline as the fence applies.
            if !self.ever_connected && started.elapsed() >= self.fence.window {
                self.fence.fence_all();
            }
            self.fence.fenced.store(false, Ordering::SeqCst);
            // A broken connection is not a lost lease: the groups keep running until the fence
            // says the lease may be gone, and the next session reuses the lease if it lives.
            // Only a lease etcd declared expired stops them at once.
            if self.ever_connected && !self.lease_file.exists() {
                *self.fence.renewed.lock().unwrap_or_else(|e| e.into_inner()) = None;
                self.fence.fence_all();
            }
            for g in self.groups.values_mut() {
                g.owner = None;
                g.releasing = false;
            }
            self.alive.clear();
            {
                let mut view = self.view();
                view.connected = false;
                view.nodes.clear();
                for owner in view.owners.values_mut() {
                    *owner = None;
                }
            }
            if was_connected || self.lease == 0 {
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
            if !self.ever_connected && started.elapsed() >= self.fence.window {
                self.fence.fence_all();
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
                // Before the first session nothing is known yet: the start-up deadline stops it
                // in time if etcd stays out of reach. After one, this node cannot know that it
                // holds the group.
                let initial = if self.ever_connected {
                    Directive::Stop
                } else {
                    Directive::Wait
                };
                self.register(group, placement, directive, initial)
            }
            Request::Unregister { group } => self.unregister(&group),
            Request::Failover { reply, .. } => {
                let _ = reply.send(FailoverAnswer {
                    moved: false,
                    detail: "the coordinator is not in touch with etcd".into(),
                });
            }
            Request::Released { .. } => {}
            Request::Move { reply, .. } => {
                let _ = reply.send(Err("the coordinator is not in touch with etcd".into()));
            }
        }
    }

    fn register(
        &mut self,
        group: String,
        placement: Placement,
        directive: watch::Sender<Directive>,
        initial: Directive,
    ) {
        directive.send_replace(initial);
        self.fence.directives().insert(group.clone(), directive);
        self.view().owners.entry(group.clone()).or_insert(None);
        self.groups.insert(
            group,
            Group {
                placement,
                owner: None,
                target: None,
                failovers: Vec::new(),
                failovers_revision: 0,
                returned: Vec::new(),
                releasing: false,
            },
        );
    }

    fn unregister(&mut self, group: &str) {
        let closed = self
            .fence
            .directives()
            .get(group)
            .is_some_and(|d| d.is_closed());
        if closed {
            self.fence.directives().remove(group);
            self.groups.remove(group);
            self.view().owners.remove(group);
        }
    }

    fn direct(&mut self, group: &str, mut directive: Directive) {
        if directive == Directive::Run && !self.arm_watchdog() {
            directive = Directive::Stop;
        }
        if let Some(d) = self.fence.directives().get(group) {
            d.send_if_modified(|d| std::mem::replace(d, directive) != directive);
        }
    }

    /// Arms the watchdog before a group runs here; `false` when it is required and did not
    /// open.
    fn arm_watchdog(&mut self) -> bool {
        let armed = self.watchdog.arm().is_ok();
        self.sink.metrics().watchdog_armed(self.watchdog.armed());
        armed
    }

    fn read_lease_file(&self) -> Option<i64> {
        std::fs::read_to_string(&self.lease_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    async fn connect(&self) -> Result<Client, Broken> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.op_timeout())
            .with_timeout(self.config.lease_ttl.0)
            .with_keep_alive(self.op_timeout(), self.op_timeout());
        if let (Some(user), Some(file)) = (&self.config.username, &self.config.password_file) {
            let password = std::fs::read_to_string(file)
                .map_err(|e| format!("read {}: {e}", file.display()))?;
            options = options.with_user(user, password.trim_end_matches(['\r', '\n']));
        }
        if self.config.ca_file.is_some() || self.config.cert_file.is_some() {
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &self.config.ca_file {
                let pem = std::fs::read(ca).map_err(|e| format!("read {}: {e}", ca.display()))?;
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(pem));
            }
            if let (Some(cert), Some(key)) = (&self.config.cert_file, &self.config.key_file) {
                let cert_pem =
                    std::fs::read(cert).map_err(|e| format!("read {}: {e}", cert.display()))?;
                let key_pem =
                    std::fs::read(key).map_err(|e| format!("read {}: {e}", key.display()))?;
                tls = tls.identity(etcd_client::Identity::from_pem(cert_pem, key_pem));
            }
            options = options.with_tls(tls);
        }
        // One member per session, not a balanced channel over all: a balanced channel keeps
        // sending a share of the calls to a member that is cut off, each waiting out its
        // timeout, while the fence's clock runs. Every member is tried at once and the first
        // that answers a read needing quorum wins: a member cut off never answers, one
        // without quorum cannot.
        let n = self.config.endpoints.len();
        let deadline = tokio::time::Instant::now() + self.config.lease_ttl.0;
        let probe = |endpoint: String, options: ConnectOptions| {
            let key = self.keys.node(&self.node);
            Box::pin(async move {
                // A member that refuses now may answer in a moment (an election, a restart):
                // each is asked again until one answers or the deadline passes.
                let mut last = None;
                loop {
                    let attempt = async {
                        let mut client =
                            Client::connect([endpoint.as_str()], Some(options.clone()))
                                .await
                                .map_err(|e| {
                                    etcd_error(&format!("connect to etcd at {endpoint}"), e)
                                })?;
                        client
                            .get(key.clone(), Some(GetOptions::new().with_count_only()))
                            .await
                            .map_err(|e| etcd_error(&format!("read from {endpoint}"), e))?;
                        Ok::<_, Broken>(client)
                    };
                    match tokio::time::timeout_at(deadline, attempt).await {
                        Ok(Ok(client)) => return Ok(client),
                        Ok(Err(why)) if tokio::time::Instant::now() + RETRY_MEMBER >= deadline => {
                            return Err(why)
                        }
                        Ok(Err(why)) => {
                            last = Some(why);
                            tokio::time::sleep(RETRY_MEMBER).await;
                        }
                        // What it said last says more than the deadline.
                        Err(_) => {
                            return Err(
                                last.unwrap_or_else(|| format!("{endpoint}: no answer in time"))
                            )
                        }
                    }
                }
            })
        };
        // The member after the last one that failed comes first, should two answer together.
        let tries: Vec<_> = (0..n)
            .map(|i| {
                let endpoint = self.config.endpoints[(self.endpoint + i) % n].clone();
                probe(endpoint, options.clone())
            })
            .collect();
        futures::future::select_ok(tries)
            .await
            .map(|(client, _)| client)
    }

    /// One session: connect, hold a lease, follow the keys, until something breaks.
    async fn session(&mut self) -> Broken {
        match self.session_inner().await {
            Ok(never) => match never {},
            Err(why) => why,
        }
    }

    async fn session_inner(&mut self) -> Result<std::convert::Infallible, Broken> {
        let limit = self.op_timeout();
        let ttl_seconds = self.config.lease_ttl.0.as_secs() as i64;
        let mut client = self.connect().await?;

        // The lease a previous run of this agent left, if it still lives: its groups stay put.
        let mut reused = false;
        self.lease = 0;
        if let Some(id) = self.read_lease_file() {
            let alive = bounded(
                limit,
                "look up the lease",
                client.lease_time_to_live(id, None),
            )
            .await
            .map(|r| r.ttl() > 0)
            .unwrap_or(false);
            if alive {
                self.lease = id;
                reused = true;
            }
        }
        if self.lease == 0 {
            self.lease = bounded(
                limit,
                "grant a lease",
                client.lease_grant(ttl_seconds, None),
            )
            .await?
            .id();
            if let Some(dir) = self.lease_file.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            if let Err(e) = std::fs::write(&self.lease_file, self.lease.to_string()) {
                tracing::warn!(
                    "cannot keep the lease id in {}: {e}",
                    self.lease_file.display()
                );
            }
        }
        let (mut keeper, mut renewals) = bounded(
            limit,
            "keep the lease alive",
            client.lease_keep_alive(self.lease),
        )
        .await?;
        let mut sent: VecDeque<BootInstant> = VecDeque::new();
        sent.push_back(BootInstant::now());
        bounded(limit, "renew the lease", keeper.keep_alive()).await?;
        match bounded(limit, "renew the lease", renewals.message()).await? {
            Some(r) if r.ttl() > 0 => {
                let at = sent.pop_front().unwrap_or_else(BootInstant::now);
                self.fence.renewed(at);
                self.watchdog.feed();
            }
            _ => {
                let _ = std::fs::remove_file(&self.lease_file);
                return Err("the lease expired".into());
            }
        }

        bounded(
            limit,
            "register this node",
            client.put(
                self.keys.node(&self.node),
                self.node.clone(),
                Some(PutOptions::new().with_lease(self.lease)),
            ),
        )
        .await?;
        let snapshot = bounded(
            limit,
            "read the cluster",
            client.get(
                format!("{}/", self.keys.prefix),
                Some(GetOptions::new().with_prefix()),
            ),
        )
        .await?;
        let revision = snapshot.header().map(|h| h.revision()).unwrap_or(0);
        self.alive.clear();
        for g in self.groups.values_mut() {
            g.owner = None;
            g.target = None;
        }
        for kv in snapshot.kvs() {
            self.apply_put(kv, false);
        }
        let mut watch = bounded(
            limit,
            "watch the cluster",
            client.watch(
                format!("{}/", self.keys.prefix),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            ),
        )
        .await?;
        self.view().connected = true;
        self.publish_nodes();
        CoordinatorConnected {
            node: &self.node,
            lease: self.lease,
            reused,
        }
        .emit(&self.sink);
        self.evaluate_all(&mut client).await?;

        let renew_every = (self.config.lease_ttl.0 / 6).max(Duration::from_millis(100));
        let mut renew = tokio::time::interval(renew_every);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.fence.fenced.load(Ordering::SeqCst) {
                return Err("the lease was not renewed in time: this node fenced itself".into());
            }
            tokio::select! {
                _ = renew.tick() => {
                    // A renewal unanswered for a period and a half (a quarter of the TTL;
                    // a member answers in milliseconds): this member is cut off, dead or
                    // without quorum. Another may answer before the fence; during an election
                    // none can, and asking them again costs nothing.
                    if let Some(oldest) = sent.front() {
                        if oldest.elapsed() > renew_every * 3 / 2 {
                            return Err(format!(
                                "a lease renewal went unanswered for {:?}",
                                oldest.elapsed()
                            ));
                        }
                    }
                    if sent.len() > 16 {
                        sent.pop_front();
                    }
                    sent.push_back(BootInstant::now());
                    bounded(limit, "renew the lease", keeper.keep_alive()).await?;
                }
                answer = renewals.message() => {
                    match answer {
                        Ok(Some(r)) if r.ttl() > 0 => {
                            if let Some(at) = sent.pop_front() {
                                self.sink.metrics().lease_renewed(at.elapsed().as_secs_f64());
                                self.fence.renewed(at);
                                self.watchdog.feed();
                            }
                        }
                        Ok(Some(_)) => {
                            let _ = std::fs::remove_file(&self.lease_file);
                            return Err("the lease expired".into());
                        }
                        Ok(None) => return Err("the lease renewal stream ended".into()),
                        Err(e) => return Err(etcd_error("renew the lease", e)),
                    }
                }
                changes = watch.message() => {
                    let response = match changes {
                        Ok(Some(r)) => r,
                        Ok(None) => return Err("the watch ended".into()),
                        Err(e) => return Err(etcd_error("watch the cluster", e)),
                    };
                    if response.canceled() {
                        return Err(format!("the watch was cancelled: {}", response.cancel_reason()));
                    }
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        match event.event_type() {
                            EventType::Put => self.apply_put(kv, true),
                            EventType::Delete => self.apply_delete(kv),
                        }
                    }
                    self.publish_nodes();
                    self.evaluate_all(&mut client).await?;
                }
                request = self.rx.recv() => {
                    let Some(request) = request else {
                        return Err("the agent is stopping".into());
                    };
                    self.request(&mut client, request).await?;
                }
                _ = tick.tick() => self.evaluate_all(&mut client).await?,
            }
        }
    }

    /// Splits a key into (kind, name): `("nodes", "n1")`, `("owner", "web")`...
    fn parse_key<'k>(&self, key: &'k str) -> Option<(&'k str, &'k str)> {
        let rest = key.strip_prefix(&self.keys.prefix)?.strip_prefix('/')?;
        if let Some(node) = rest.strip_prefix("nodes/") {
            return Some(("nodes", node));
        }
        let rest = rest.strip_prefix("groups/")?;
        let (group, kind) = rest.rsplit_once('/')?;
        Some((kind, group))
    }

    fn apply_put(&mut self, kv: &KeyValue, live: bool) {
        let Ok(key) = kv.key_str() else { return };
        let Some((kind, name)) = self.parse_key(key) else {
            return;
        };
        let value = kv.value_str().unwrap_or_default().to_string();
        if kind == "nodes" {
            let joined = self.alive.insert(name.to_string());
            // A node that comes back (a new key, not a renewal) is a failback candidate.
            if live && joined && kv.version() == 1 {
                for g in self.groups.values_mut() {
                    if g.owner.as_ref().is_some_and(|o| o.node == self.node) {
                        g.returned.push(name.to_string());
                    }
                }
            }
            return;
        }
        let Some(g) = self.groups.get_mut(name) else {
            return;
        };
        match kind {
            "owner" => {
                g.owner = Some(Owner {
                    node: value,
                    lease: kv.lease(),
                    revision: kv.mod_revision(),
                })
            }
            "target" => {
                g.target = serde_json::from_str::<Target>(&value)
                    .ok()
                    .map(|t| (t, kv.mod_revision()))
            }
            "failovers" => {
                g.failovers = serde_json::from_str(&value).unwrap_or_default();
                g.failovers_revision = kv.mod_revision();
            }
            _ => {}
        }
    }

    fn apply_delete(&mut self, kv: &KeyValue) {
        let Ok(key) = kv.key_str() else { return };
        let Some((kind, name)) = self.parse_key(key) else {
            return;
        };
        if kind == "nodes" {
            self.alive.remove(name);
            return;
        }
        let Some(g) = self.groups.get_mut(name) else {
            return;
        };
        match kind {
            "owner" => g.owner = None,
            "target" => g.target = None,
            "failovers" => {
                g.failovers.clear();
                g.failovers_revision = 0;
            }
            _ => {}
        }
    }

    fn publish_nodes(&self) {
        self.view().nodes = self.alive.iter().cloned().collect();
    }

    fn owned(&self, g: &Group) -> bool {
        g.owner
            .as_ref()
            .is_some_and(|o| o.node == self.node && o.lease == self.lease)
    }

    async fn evaluate_all(&mut self, client: &mut Client) -> Result<(), Broken> {
        let names: Vec<String> = self.groups.keys().cloned().collect();
        for name in names {
            self.evaluate(client, &name).await?;
        }
        Ok(())
    }

    /// Decides what this node does about one group, from what etcd said last.
    async fn evaluate(&mut self, client: &mut Client, name: &str) -> Result<(), Broken> {
        let limit = self.op_timeout();
        let alive: Vec<String> = self.alive.iter().cloned().collect();
        let Some(g) = self.groups.get(name) else {
            return Ok(());
        };
        let owner = g.owner.as_ref().map(|o| o.node.clone());
        {
            let mut view = self.view();
            view.owners.insert(name.to_string(), owner.clone());
        }
        for node in &alive {
            self.sink
                .metrics()
                .group_owner(name, node, owner.as_deref() == Some(node));
        }
        if self.owned(g) {
            if let Some((target, revision)) = g.target.clone() {
                if target.to != self.node {
                    if self.alive.contains(&target.to) && g.placement.may_own(&target.to) {
                        self.direct(name, Directive::Stop);
                        if let Some(g) = self.groups.get_mut(name) {
                            g.releasing = true;
                        }
                        return Ok(());
                    }
                    // Nobody can answer that request any more.
                    let txn = Txn::new()
                        .when([Compare::mod_revision(
                            self.keys.target(name),
                            CompareOp::Equal,
                            revision,
                        )])
                        .and_then([TxnOp::delete(self.keys.target(name), None)]);
                    bounded(limit, "drop a stale move request", client.txn(txn)).await?;
                }
            }
            if let Some(to) =
                g.placement
                    .failback_target(&self.node, &alive, &g.returned, local_hour())
            {
                let to = to.to_string();
                self.request_move(client, name, &to, "failback").await?;
                if let Some(g) = self.groups.get_mut(name) {
                    g.returned.clear();
                }
                return Ok(());
            }
            if !g.releasing {
                self.direct(name, Directive::Run);
            }
            return Ok(());
        }
        if owner.is_some() {
            self.direct(name, Directive::Stop);
            return Ok(());
        }
        // Nobody holds it: the node the placement names takes it.
        let target = g.target.as_ref().map(|(t, _)| t.clone());
        let next = g.placement.next_owner(
            &alive,
            target.as_ref().map(|t| t.to.as_str()),
            target.as_ref().and_then(|t| t.from.as_deref()),
        );
        if next != Some(self.node.as_str()) || g.releasing {
            self.direct(name, Directive::Stop);
            return Ok(());
        }
        let preferred = g.placement.ranked(&alive).first() == Some(&self.node.as_str());
        // The watchdog counts before the group can run here (required: or it does not).
        if !self.arm_watchdog() {
            self.direct(name, Directive::Stop);
            return Ok(());
        }
        let owner_key = self.keys.owner(name);
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
                    Some(PutOptions::new().with_lease(self.lease)),
                ),
                TxnOp::delete(self.keys.target(name), None),
            ]);
        let response = bounded(limit, "take a group", client.txn(txn)).await?;
        if !response.succeeded() {
            // Another node was first; the watch tells who.
            return Ok(());
        }
        let revision = response.header().map(|h| h.revision()).unwrap_or(0);
        let reason = match &target {
            Some(t) if t.to == self.node => t.reason.clone(),
            _ if preferred => "preferred".to_string(),
            _ => "takeover".to_string(),
        };
        if let Some(g) = self.groups.get_mut(name) {
            g.owner = Some(Owner {
                node: self.node.clone(),
                lease: self.lease,
                revision,
            });
            g.target = None;
            g.returned.clear();
        }
        self.view()
            .owners
            .insert(name.to_string(), Some(self.node.clone()));
        for node in &alive {
            self.sink
                .metrics()
                .group_owner(name, node, *node == self.node);
        }
        OwnershipAcquired {
            group: name,
            node: &self.node,
            reason: &reason,
            revision,
        }
        .emit(&self.sink);
        self.direct(name, Directive::Run);
        Ok(())
    }

    /// Writes a move request for `group` to `to`.
    async fn request_move(
        &mut self,
        client: &mut Client,
        group: &str,
        to: &str,
        reason: &str,
    ) -> Result<(), Broken> {
        let from = self
            .groups
            .get(group)
            .and_then(|g| g.owner.as_ref())
            .map(|o| o.node.clone());
        let target = Target {
            to: to.to_string(),
            from: from.clone(),
            reason: reason.to_string(),
        };
        bounded(
            self.op_timeout(),
            "request a move",
            client.put(
                self.keys.target(group),
                serde_json::to_string(&target).unwrap_or_default(),
                None,
            ),
        )
        .await?;
        MoveStarted {
            group,
            from: from.as_deref().unwrap_or(""),
            to,
            reason,
        }
        .emit(&self.sink);
        Ok(())
    }

    async fn request(&mut self, client: &mut Client, request: Request) -> Result<(), Broken> {
        let limit = self.op_timeout();
        match request {
            Request::Register {
                group,
                placement,
                directive,
            } => {
                self.register(group.clone(), placement, directive, Directive::Stop);
                // What etcd holds for it: read once, then the watch keeps it current.
                let prefix = format!("{}/groups/{group}/", self.keys.prefix);
                let snapshot = bounded(
                    limit,
                    "read a group",
                    client.get(prefix, Some(GetOptions::new().with_prefix())),
                )
                .await?;
                for kv in snapshot.kvs() {
                    self.apply_put(kv, false);
                }
                self.evaluate(client, &group).await?;
            }
            Request::Unregister { group } => {
                let owned = self.groups.get(&group).is_some_and(|g| self.owned(g));
                self.unregister(&group);
                if owned && !self.groups.contains_key(&group) {
                    self.release(client, &group).await?;
                }
            }
            Request::Released { group } => {
                let Some(g) = self.groups.get(&group) else {
                    return Ok(());
                };
                let stopping = self
                    .fence
                    .directives()
                    .get(&group)
                    .is_some_and(|d| matches!(*d.borrow(), Directive::Stop | Directive::Fence));
                if self.owned(g) && stopping {
                    self.release(client, &group).await?;
                }
                if let Some(g) = self.groups.get_mut(&group) {
                    g.releasing = false;
                }
            }
            Request::Failover { group, reply } => {
                let answer = self.failover(client, &group).await?;
                let _ = reply.send(answer);
            }
            Request::Move { group, to, reply } => {
                let answer = self.move_group(client, &group, to).await?;
                let _ = reply.send(answer);
            }
        }
        Ok(())
    }

    /// Deletes this node's ownership key of `group`, if it still is this node's.
    async fn release(&mut self, client: &mut Client, group: &str) -> Result<(), Broken> {
        let key = self.keys.owner(group);
        let Some(revision) = self
            .groups
            .get(group)
            .and_then(|g| g.owner.as_ref())
            .map(|o| o.revision)
        else {
            return Ok(());
        };
        // Only the key this node wrote, at the revision it wrote it: never another's.
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key.clone(), CompareOp::Equal, revision),
                Compare::value(key.clone(), CompareOp::Equal, self.node.clone()),
                Compare::lease(key.clone(), CompareOp::Equal, self.lease),
            ])
            .and_then([TxnOp::delete(key, None)]);
        let response = bounded(self.op_timeout(), "release a group", client.txn(txn)).await?;
        if response.succeeded() {
            let to = self
                .groups
                .get(group)
                .and_then(|g| g.target.as_ref())
                .map(|(t, _)| t.to.clone());
            if let Some(g) = self.groups.get_mut(group) {
                g.owner = None;
            }
            OwnershipReleased {
                group,
                node: &self.node,
                to: to.as_deref(),
            }
            .emit(&self.sink);
        }
        Ok(())
    }

    async fn failover(
        &mut self,
        client: &mut Client,
        group: &str,
    ) -> Result<FailoverAnswer, Broken> {
        let refuse = |detail: String| {
            Ok(FailoverAnswer {
                moved: false,
                detail,
            })
        };
        let Some(g) = self.groups.get(group) else {
            return refuse("the group is not known to the coordinator".into());
        };
        if !self.owned(g) {
            return refuse("this node does not hold the group".into());
        }
        let alive: Vec<String> = self.alive.iter().cloned().collect();
        let now = unix_now();
        let to = match g
            .placement
            .failover_target(&self.node, &alive, &g.failovers, now)
        {
            Ok(to) => to.to_string(),
            Err(why) => return refuse(why.to_string()),
        };
        let period = g.placement.failover_period.as_secs_f64();
        let mut history: Vec<f64> = g
            .failovers
            .iter()
            .copied()
            .filter(|t| *t > now - period)
            .collect();
        history.push(now);
        let target = Target {
            to: to.clone(),
            from: Some(self.node.clone()),
            reason: "failover".into(),
        };
        let key = self.keys.failovers(group);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                g.failovers_revision,
            )])
            .and_then([
                TxnOp::put(
                    key,
                    serde_json::to_string(&history).unwrap_or_default(),
                    None,
                ),
                TxnOp::put(
                    self.keys.target(group),
                    serde_json::to_string(&target).unwrap_or_default(),
                    None,
                ),
            ]);
        let response = bounded(self.op_timeout(), "record a failover", client.txn(txn)).await?;
        if !response.succeeded() {
            return refuse("the failover history changed meanwhile".into());
        }
        MoveStarted {
            group,
            from: &self.node,
            to: &to,
            reason: "failover",
        }
        .emit(&self.sink);
        Ok(FailoverAnswer {
            moved: true,
            detail: format!("to {to}"),
        })
    }

    async fn move_group(
        &mut self,
        client: &mut Client,
        group: &str,
        to: Option<String>,
    ) -> Result<Result<String, String>, Broken> {
        let Some(g) = self.groups.get(group) else {
            return Ok(Err(format!("no group {group:?}")));
        };
        let Some(owner) = g.owner.as_ref().map(|o| o.node.clone()) else {
            return Ok(Err(format!("nobody holds {group:?} right now")));
        };
        let alive: Vec<String> = self.alive.iter().cloned().collect();
        let to = match to {
            Some(to) if to == owner => return Ok(Err(format!("{group:?} already runs on {to}"))),
            Some(to) if !self.alive.contains(&to) => {
                return Ok(Err(format!("{to} is not alive in the cluster")))
            }
            Some(to) if !g.placement.may_own(&to) => {
                return Ok(Err(format!(
                    "{to} is not one of {group:?}'s possible owners"
                )))
            }
            Some(to) => to,
            None => match g.placement.ranked(&alive).into_iter().find(|n| *n != owner) {
                Some(n) => n.to_string(),
                None => return Ok(Err("no other possible owner is alive".into())),
            },
        };
        self.request_move(client, group, &to, "move").await?;
        Ok(Ok(to))
    }
}
