//! The runtime: groups and their workers on tokio, config reload, shutdown, and the liveness of
//! the agent itself (systemd readiness and watchdog).
//!
//! - [`group`]: one task per group, driving the policy's state machine;
//! - [`worker`]: one task per resource, running its calls under deadlines;
//! - [`threads`]: the check threads the workers run on, and every scheduler's heartbeat;
//! - this module: [`Agent`] (start, reload on SIGHUP with only the difference applied, exit
//!   without touching services unless `stop_on_exit`) and [`run`], what `resmon run` does.

pub mod group;
pub mod threads;
pub(crate) mod worker;

use crate::config::{self, Config, ConfigErrors, ResourceProps};
use crate::events::{
    AgentStarted, AgentStopping, ConfigRejected, ConfigReloaded, Event, EventSink,
};
use crate::metrics::{Metrics, ResourceMetrics};
use crate::status::{ResourceSlot, StatusBoard};
use group::GroupHandle;
use resmon_policies::ResourceId;
use resmon_probes::tls::TrustCache;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use threads::{CheckThreads, Heartbeats, Scheduler};
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

/// State shared by every task of the agent.
pub struct Shared {
    /// Events, and through them the metrics.
    pub sink: Arc<EventSink>,
    /// What the status API shows.
    pub status: Arc<StatusBoard>,
    /// The origin of the policy's clock.
    pub epoch: Instant,
    /// This node's name.
    pub node: String,
    /// Every running group's control handle, for the control API.
    pub admins: std::sync::RwLock<BTreeMap<String, group::GroupAdmin>>,
    /// Who owns each group: the embedded single-node coordinator, or etcd.
    pub coordinator: crate::cluster::Coordinator,
    /// Permits for starts (adoption, `online`): `[agent] max_parallel_starts`.
    pub start_gate: Arc<tokio::sync::Semaphore>,
    /// What every worker's progress slots hold until their first call: one for all, so that a
    /// resource costs a progress record only for the kinds of call it really makes (most never
    /// poll `looks_alive` or run an operation after adoption).
    pub unused_progress: Arc<resmon_probes::Progress>,
    /// Where the resources' workers run: `[agent] check_threads`.
    pub check_threads: CheckThreads,
    /// When the main runtime and each check thread last proved they run.
    pub heartbeats: Arc<Heartbeats>,
}

impl Shared {
    /// Fresh shared state, with the embedded single-node coordinator.
    pub fn new(metrics: Arc<Metrics>, log_events: bool, node: String) -> Arc<Self> {
        let sink = Arc::new(EventSink::new(metrics, log_events));
        let coordinator = crate::cluster::Coordinator::embedded(&node, sink.clone());
        let starts = config::default_max_parallel_starts().get();
        Self::with_coordinator(
            sink,
            node,
            coordinator,
            starts,
            CheckThreads::on_callers_runtime(),
        )
    }

    /// Fresh shared state around a coordinator of the caller's, letting `max_parallel_starts`
    /// starts run at once, with workers on `check_threads`.
    pub fn with_coordinator(
        sink: Arc<EventSink>,
        node: String,
        coordinator: crate::cluster::Coordinator,
        max_parallel_starts: usize,
        check_threads: CheckThreads,
    ) -> Arc<Self> {
        Arc::new(Shared {
            sink,
            coordinator,
            status: Arc::new(StatusBoard::default()),
            epoch: Instant::now(),
            node,
            admins: Default::default(),
            start_gate: Arc::new(tokio::sync::Semaphore::new(max_parallel_starts)),
            unused_progress: Default::default(),
            heartbeats: Arc::new(Heartbeats::new(check_threads.count())),
            check_threads,
        })
    }
}

/// What a worker knows about its resource. Its group's and its own name are those of its
/// metric labels: one copy per resource, 10,000 of them at a time.
pub(crate) struct ResourceContext {
    pub(crate) id: ResourceId,
    pub(crate) type_name: &'static str,
    pub(crate) props: ResourceProps,
    pub(crate) metrics: ResourceMetrics,
    pub(crate) status: ResourceSlot,
    pub(crate) sink: Arc<EventSink>,
    pub(crate) start_gate: Arc<tokio::sync::Semaphore>,
    /// The group's commands to the worker.
    pub(crate) commands: worker::Mailbox,
}

impl ResourceContext {
    pub(crate) fn group(&self) -> &str {
        &self.metrics.labels.group
    }

    pub(crate) fn name(&self) -> &str {
        &self.metrics.labels.resource
    }
}

/// The running groups of one config.
pub struct Agent {
    /// `[agent]` of the config running now; each group keeps its own part (the only copy:
    /// at 10,000 resources a second one costs megabytes).
    agent: config::AgentConfig,
    shared: Arc<Shared>,
    groups: BTreeMap<String, GroupHandle>,
}

impl Agent {
    /// Starts every group of `config`.
    pub fn start(config: Config, shared: Arc<Shared>) -> Agent {
        let mut groups = BTreeMap::new();
        let trust = TrustCache::default();
        for g in config.groups {
            groups.insert(
                g.name.to_string(),
                group::spawn(g, &config.agent, &shared, &trust),
            );
        }
        Agent {
            agent: config.agent,
            shared,
            groups,
        }
    }

    /// `[agent]` of the config running now.
    pub fn agent_config(&self) -> &config::AgentConfig {
        &self.agent
    }

    /// Re-reads the config file; applies only what changed, or keeps everything as it is when
    /// the new file is invalid.
    ///
    /// An unchanged group keeps running untouched. A changed group is let go of without
    /// stopping anything and started again from the new definition, which re-adopts whatever
    /// is still alive. A removed group is let go of: its services keep running, unmanaged.
    pub async fn reload(&mut self, path: &Path) -> Result<(), ConfigErrors> {
        let loaded = match config::load(path) {
            Ok(loaded) => loaded,
            Err(errors) => {
                ConfigRejected {
                    errors: errors.0.iter().map(|d| d.to_string()).collect(),
                }
                .emit(&self.shared.sink);
                return Err(errors);
            }
        };
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        let mut new = loaded.config;
        let at_next_start = self.agent.keep_start_only_keys(&mut new.agent);
        let mut event = ConfigReloaded {
            added: Vec::new(),
            changed: Vec::new(),
            removed: Vec::new(),
            unchanged: 0,
            at_next_start,
        };
        let mut old = std::mem::take(&mut self.groups);
        // A new one: the resources this reload builds read their CA files again.
        let trust = TrustCache::default();
        for g in new.groups {
            let name = g.name.to_string();
            match old.remove(&name) {
                Some(running)
                    if running.fingerprint == g.fingerprint()
                        && running.state_dir == new.agent.state_dir =>
                {
                    event.unchanged += 1;
                    self.groups.insert(name, running);
                }
                Some(running) => {
                    running.stop(false, &self.shared).await;
                    self.groups.insert(
                        name.clone(),
                        group::spawn(g, &new.agent, &self.shared, &trust),
                    );
                    event.changed.push(name);
                }
                None => {
                    self.groups.insert(
                        name.clone(),
                        group::spawn(g, &new.agent, &self.shared, &trust),
                    );
                    event.added.push(name);
                }
            }
        }
        for (name, running) in old {
            running.stop(false, &self.shared).await;
            event.removed.push(name);
        }
        event.emit(&self.shared.sink);
        self.agent = new.agent;
        Ok(())
    }

    /// Lets go of every group; with `stop_groups`, takes each offline first (dependents
    /// first, groups in parallel).
    pub async fn shutdown(self, stop_groups: bool) {
        AgentStopping { stop_groups }.emit(&self.shared.sink);
        let shared = self.shared.clone();
        let stops = self.groups.into_values().map(|g| {
            let shared = shared.clone();
            async move { g.stop(stop_groups, &shared).await }
        });
        futures::future::join_all(stops).await;
    }
}

/// Why `resmon run` could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The config file is invalid.
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    /// The HTTP endpoint could not be opened.
    #[error("cannot listen on {address} (agent.listen in {config}): {source}")]
    Listen {
        /// The address.
        address: std::net::SocketAddr,
        /// The config file.
        config: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A signal handler could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The check threads could not be started.
    #[error("cannot start {count} check threads (agent.check_threads in {config}): {source}")]
    CheckThreads {
        /// How many were asked for.
        count: usize,
        /// The config file.
        config: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// How often [`give_back_freed_memory`] runs while the agent does.
const GIVE_BACK_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Returns to the kernel the pages of the heap that hold no live allocation.
///
/// glibc gives back only the top of its heap by itself; the freed pages that sit between live
/// allocations it keeps for as long as the process runs, and bursts leave many of them.
/// Parsing 10,000 resources takes 20 MB for a moment (about 3 MB stayed). A restart storm after
/// a stall, every check timed out at once, took an HTTP agent at saturation from 125 MB to
/// 200-218 MB, and it stayed there. Walking the heap takes 1-5 ms at that size, on the calling
/// thread. Without glibc, nothing.
pub fn give_back_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks and releases glibc's own free lists; it has no
    // preconditions and may be called from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// [`give_back_freed_memory`] now (reading the config left its 20 MB) and every
/// [`GIVE_BACK_EVERY`], on a blocking thread: not the runtime's, which it would hold for
/// milliseconds. While it walks an allocator arena, a thread that allocates from that arena
/// waits, so a check may take up to that long more once in ten seconds. The check threads
/// first hand glibc the blocks they kept and did not use (see [`crate::alloc`]), so that
/// their pages go back in the same turn.
async fn give_back_freed_memory_periodically(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(GIVE_BACK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        shared.check_threads.give_back_idle_chunks().await;
        let _ = tokio::task::spawn_blocking(give_back_freed_memory).await;
    }
}

/// `resmon run`: loads the config, serves HTTP, runs every group, reloads on SIGHUP and exits
/// on SIGTERM or SIGINT.
pub async fn run(path: PathBuf) -> Result<(), RunError> {
    let config::Loaded { config, warnings } = config::load(&path)?;
    for w in &warnings {
        eprintln!("{w}");
    }
    // Said once; 10,000 resources may bring as many, kept for nothing.
    drop(warnings);
    let listener = tokio::net::TcpListener::bind(config.agent.listen)
        .await
        .map_err(|source| RunError::Listen {
            address: config.agent.listen,
            config: path.clone(),
            source,
        })?;
    let listen = listener.local_addr().unwrap_or(config.agent.listen);
    let mut hup = signal(SignalKind::hangup()).map_err(RunError::Signals)?;
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;

    let sink = Arc::new(EventSink::new(Arc::new(Metrics::new()), true));
    let (node, coordinator) = match &config.cluster {
        Some(cluster) => {
            let node = cluster.node_name(&config.agent);
            let coordinator = crate::cluster::Coordinator::etcd(
                &node,
                cluster.clone(),
                &config.agent.state_dir,
                sink.clone(),
            );
            (node, coordinator)
        }
        None => (
            config.agent.node.clone(),
            crate::cluster::Coordinator::embedded(&config.agent.node, sink.clone()),
        ),
    };
    let count = config.agent.check_threads;
    let check_threads = CheckThreads::start(count).map_err(|source| RunError::CheckThreads {
        count: count.get(),
        config: path.clone(),
        source,
    })?;
    let shared = Shared::with_coordinator(
        sink,
        node,
        coordinator,
        config.agent.max_parallel_starts.get(),
        check_threads,
    );
    tokio::spawn(crate::http::serve(listener, shared.clone()));
    match crate::control::bind(&config.agent.control_socket) {
        Ok(control) => {
            tokio::spawn(crate::control::serve(control, shared.clone()));
        }
        // The agent keeps services alive without it; say why it cannot be steered.
        Err(e) => tracing::error!(
            "no control API: cannot open {} (agent.control_socket): {e}",
            config.agent.control_socket.display()
        ),
    }
    tokio::spawn(shared.heartbeats.clone().beat(Scheduler::Main));
    shared.check_threads.beat(&shared.heartbeats);

    let resources = config.groups.iter().map(|g| g.resources.len()).sum();
    let groups = config.groups.len();
    let mut agent = Agent::start(config, shared.clone());
    AgentStarted {
        version: env!("CARGO_PKG_VERSION"),
        config: &path.display().to_string(),
        groups,
        resources,
        listen: listen.to_string(),
    }
    .emit(&shared.sink);
    crate::watchdog::ready(shared.clone());
    tokio::spawn(give_back_freed_memory_periodically(shared.clone()));

    loop {
        tokio::select! {
            _ = hup.recv() => {
                crate::watchdog::reloading();
                if let Err(errors) = agent.reload(&path).await {
                    tracing::error!("the new config was rejected; the running one stays:\n{errors}");
                }
                crate::watchdog::reloaded();
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    crate::watchdog::stopping();
    let stop = agent.agent_config().stop_on_exit;
    agent.shutdown(stop).await;
    Ok(())
}

#[cfg(test)]
mod tests;
