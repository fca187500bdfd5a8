//! One session with etcd: a member that answers, a lease (reused after an agent restart), its
//! renewals, a snapshot and a watch of the keys, each fed to the ownership machine.

use super::keys::Keys;
use super::{bounded, etcd_error, Broken, EtcdCoordinator};
use crate::config::ClusterConfig;
use crate::events::{CoordinatorConnected, Event};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOp, WatchOptions,
};
use resmon_policies::ownership::{Input, Observation};
use std::time::Duration;

/// How soon a member that refused a session is asked again.
const RETRY_MEMBER: Duration = Duration::from_millis(100);

/// How to reach etcd: timeouts, the user, TLS, as `[cluster]` says.
pub(super) fn connect_options(
    config: &ClusterConfig,
    op_timeout: Duration,
) -> Result<ConnectOptions, Broken> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(op_timeout)
        .with_timeout(config.lease_ttl.0)
        .with_keep_alive(op_timeout, op_timeout);
    if let (Some(user), Some(file)) = (&config.username, &config.password_file) {
        let password =
            std::fs::read_to_string(file).map_err(|e| format!("read {}: {e}", file.display()))?;
        options = options.with_user(user, password.trim_end_matches(['\r', '\n']));
    }
    if config.ca_file.is_some() || config.cert_file.is_some() {
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &config.ca_file {
            let pem = std::fs::read(ca).map_err(|e| format!("read {}: {e}", ca.display()))?;
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&config.cert_file, &config.key_file) {
            let cert_pem =
                std::fs::read(cert).map_err(|e| format!("read {}: {e}", cert.display()))?;
            let key_pem = std::fs::read(key).map_err(|e| format!("read {}: {e}", key.display()))?;
            tls = tls.identity(etcd_client::Identity::from_pem(cert_pem, key_pem));
        }
        options = options.with_tls(tls);
    }
    Ok(options)
}

impl EtcdCoordinator {
    pub(super) fn read_lease_file(&self) -> Option<i64> {
        std::fs::read_to_string(&self.lease_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    async fn connect(&self) -> Result<Client, Broken> {
        let options = connect_options(&self.config, self.op_timeout())?;
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

    /// A node's key, read or changed: its record, parsed once, kept for the skew and told to
    /// the machine.
    fn node_seen(&mut self, node: &str, kv: &etcd_client::KeyValue, deleted: bool) -> Observation {
        if deleted {
            self.records.remove(node);
            return Keys::node_observation(node, kv, None);
        }
        let record = super::NodeRecord::parse(kv.value());
        let change = Keys::node_observation(node, kv, Some(&record));
        self.records.insert(node.to_string(), record);
        change
    }

    /// One session: connect, hold a lease, follow the keys, until something breaks.
    pub(super) async fn session(&mut self) -> Broken {
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
        let mut lease = 0;
        let mut reused = false;
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
                lease = id;
                reused = true;
            }
        }
        if lease == 0 {
            lease = bounded(
                limit,
                "grant a lease",
                client.lease_grant(ttl_seconds, None),
            )
            .await?
            .id();
            if let Some(dir) = self.lease_file.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            if let Err(e) = std::fs::write(&self.lease_file, lease.to_string()) {
                tracing::warn!(
                    "cannot keep the lease id in {}: {e}",
                    self.lease_file.display()
                );
            }
        }
        let (mut keeper, mut renewals) = bounded(
            limit,
            "keep the lease alive",
            client.lease_keep_alive(lease),
        )
        .await?;
        let actions = self.shared.step(Input::SessionStarted { lease });
        self.act(&mut client, actions).await?;
        self.shared.step(Input::RenewalSent);
        bounded(limit, "renew the lease", keeper.keep_alive()).await?;
        match bounded(limit, "renew the lease", renewals.message()).await? {
            Some(r) if r.ttl() > 0 => {
                let actions = self.shared.step(Input::RenewalAnswered);
                self.watchdog.feed();
                self.act(&mut client, actions).await?;
            }
            _ => {
                let _ = std::fs::remove_file(&self.lease_file);
                return Err("the lease expired".into());
            }
        }

        // The first node of a cluster writes the key schema; later ones read it with the rest.
        let schema = self.keys.schema();
        bounded(
            limit,
            "write the key schema",
            client.txn(
                Txn::new()
                    .when([Compare::create_revision(
                        schema.clone(),
                        CompareOp::Equal,
                        0,
                    )])
                    .and_then([TxnOp::put(schema, super::KEY_SCHEMA.to_string(), None)]),
            ),
        )
        .await?;
        self.put_record(&mut client, lease).await?;
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
        let mut actions = Vec::new();
        let online = snapshot
            .kvs()
            .iter()
            .filter_map(|kv| self.keys.provider(kv))
            .collect();
        self.providers.set_cluster(online);
        let (mine, remote): (Vec<_>, Vec<_>) = snapshot
            .kvs()
            .iter()
            .filter_map(|kv| self.keys.dependent_of(kv))
            .partition(|(_, node)| *node == self.node);
        self.providers.set_remote(remote);
        // What changed here while there was no session (or under another lease).
        for (name, online) in self.providers.here() {
            self.publish_provider(&mut client, &name, online).await?;
        }
        let up_here = self.providers.dependents_here();
        for (provider, _) in mine.iter().filter(|(p, _)| !up_here.contains(p)) {
            self.publish_dependents(&mut client, provider, false)
                .await?;
        }
        for provider in up_here {
            self.publish_dependents(&mut client, &provider, true)
                .await?;
        }
        self.records.clear();
        for kv in snapshot.kvs() {
            let change = match self.keys.node_of(kv) {
                Some(node) => Some(self.node_seen(node, kv, false)),
                None => self.keys.observe(kv, false),
            };
            if let Some(change) = change {
                actions.extend(self.shared.step(Input::Observed {
                    change,
                    live: false,
                }));
            }
        }
        self.compare_records();
        self.act(&mut client, actions).await?;
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
        CoordinatorConnected {
            node: &self.node,
            lease,
            reused,
        }
        .emit(&self.sink);
        let actions = self.shared.step(Input::Evaluate);
        self.act(&mut client, actions).await?;

        let renew_every = (self.config.lease_ttl.0 / 6).max(Duration::from_millis(100));
        let mut renew = tokio::time::interval(renew_every);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.shared.machine().fenced() {
                return Err("the lease was not renewed in time: this node fenced itself".into());
            }
            let actions = tokio::select! {
                _ = renew.tick() => {
                    // A renewal unanswered for a period and a half (a quarter of the TTL;
                    // a member answers in milliseconds): this member is cut off, dead or
                    // without quorum. Another may answer before the fence; during an election
                    // none can, and asking them again costs nothing.
                    let now = self.shared.now().at;
                    if let Some(oldest) = self.shared.machine().oldest_unanswered() {
                        let waited = now.elapsed().saturating_sub(oldest.elapsed());
                        if waited > renew_every * 3 / 2 {
                            return Err(format!("a lease renewal went unanswered for {waited:?}"));
                        }
                    }
                    let actions = self.shared.step(Input::RenewalSent);
                    bounded(limit, "renew the lease", keeper.keep_alive()).await?;
                    actions
                }
                answer = renewals.message() => {
                    match answer {
                        Ok(Some(r)) if r.ttl() > 0 => {
                            let now = self.shared.now().at;
                            if let Some(sent) = self.shared.machine().oldest_unanswered() {
                                let took = now.elapsed().saturating_sub(sent.elapsed());
                                self.sink.metrics().lease_renewed(took.as_secs_f64());
                            }
                            let actions = self.shared.step(Input::RenewalAnswered);
                            if !self.shared.machine().fenced() {
                                self.watchdog.feed();
                            }
                            actions
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
                    let mut actions = Vec::new();
                    for event in response.events() {
                        let Some(kv) = event.kv() else { continue };
                        let deleted = event.event_type() == EventType::Delete;
                        if let Some(name) = self.keys.provider(kv) {
                            self.providers.cluster_changed(&name, !deleted);
                            continue;
                        }
                        if let Some((provider, node)) = self.keys.dependent_of(kv) {
                            if node != self.node {
                                self.providers.remote_changed(&provider, &node, !deleted);
                            }
                            continue;
                        }
                        let change = match self.keys.node_of(kv) {
                            Some(node) => {
                                let change = self.node_seen(node, kv, deleted);
                                self.compare_records();
                                Some(change)
                            }
                            None => self.keys.observe(kv, deleted),
                        };
                        if let Some(change) = change {
                            actions.extend(self.shared.step(Input::Observed { change, live: true }));
                        }
                    }
                    actions.extend(self.shared.step(Input::Evaluate));
                    actions
                }
                request = self.rx.recv() => {
                    let Some(request) = request else {
                        return Err("the agent is stopping".into());
                    };
                    self.request(&mut client, request).await?
                }
                _ = tick.tick() => self.shared.step(Input::Evaluate),
            };
            self.act(&mut client, actions).await?;
        }
    }
}
