//! The runtime: groups and their workers on tokio, config reload, shutdown, and the liveness of
//! the agent itself (systemd readiness and watchdog).
//!
//! - [`group`]: one task per group, driving the policy's state machine;
//! - [`worker`]: one task per resource, running its calls under deadlines;
//! - [`threads`]: the check threads the workers run on, and every scheduler's heartbeat;
//! - this module: [`Agent`] (start, reload with only the difference applied, exit without
//!   touching services unless `stop_on_exit`). [`crate::server::run`] wires it to the rest.

pub mod group;
pub mod threads;
pub(crate) mod worker;

use crate::config::{self, Config, ConfigErrors, ResourceProps};
use crate::events::{AgentStopping, ConfigRejected, ConfigReloaded, Event, EventSink};
use crate::metrics::{Metrics, ResourceMetrics};
use crate::status::{ResourceSlot, StatusBoard};
use group::GroupHandle;
use resmon_policies::ResourceId;
use resmon_probes::tls::TrustCache;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use threads::{CheckThreads, Heartbeats};
use tokio::time::Instant;

/// What the read-only endpoint and the control API show: every group's status, recent
/// events, who owns what, and whether the schedulers run. Cheap to clone.
#[derive(Clone)]
pub struct Views {
    /// Recent events, and through the sink the metrics.
    pub sink: Arc<EventSink>,
    /// What the status API shows.
    pub status: Arc<StatusBoard>,
    /// Who owns each group.
    pub coordinator: crate::cluster::Coordinator,
    /// When the main runtime and each check thread last proved they run.
    pub heartbeats: Arc<Heartbeats>,
    /// What is in maintenance.
    pub maintenance: Arc<crate::maintenance::Maintenance>,
}

/// Each running group's control handle, by name: what the control API steers.
pub type Admins = Arc<std::sync::RwLock<BTreeMap<String, group::GroupAdmin>>>;

/// What groups and their workers are started with. The endpoints get narrower handles
/// ([`Shared::views`], [`Shared::admins`]).
pub struct Shared {
    /// Events, and through them the metrics.
    pub(crate) sink: Arc<EventSink>,
    /// What the status API shows.
    pub(crate) status: Arc<StatusBoard>,
    /// The origin of the policy's clock.
    pub(crate) epoch: Instant,
    /// Every running group's control handle, for the control API.
    pub(crate) admins: Admins,
    /// Who owns each group: the embedded single-node coordinator, or etcd.
    pub(crate) coordinator: crate::cluster::Coordinator,
    /// Permits for starts (adoption, `online`): `[agent] max_parallel_starts`.
    pub(crate) start_gate: Arc<tokio::sync::Semaphore>,
    /// What every worker's progress slots hold until their first call: one for all, so that a
    /// resource costs a progress record only for the kinds of call it really makes (most never
    /// poll `looks_alive` or run an operation after adoption).
    pub(crate) unused_progress: Arc<resmon_probes::Progress>,
    /// Where the resources' workers run: `[agent] check_threads`.
    pub(crate) check_threads: CheckThreads,
    /// When the main runtime and each check thread last proved they run.
    pub(crate) heartbeats: Arc<Heartbeats>,
    /// What is in maintenance: checked, not acted on.
    pub(crate) maintenance: Arc<crate::maintenance::Maintenance>,
}

impl Shared {
    /// Fresh shared state, with the embedded single-node coordinator; events go nowhere but
    /// the metrics and the recent-events log.
    pub fn new(metrics: Arc<Metrics>, node: String) -> Arc<Self> {
        let sink = Arc::new(EventSink::new(metrics, None));
        let coordinator = crate::cluster::Coordinator::embedded(&node, sink.clone());
        let starts = config::default_max_parallel_starts().get();
        Self::with_coordinator(
            sink,
            coordinator,
            starts,
            CheckThreads::on_callers_runtime(),
            Arc::new(crate::maintenance::Maintenance::in_memory()),
        )
    }

    /// Fresh shared state around a coordinator of the caller's, letting `max_parallel_starts`
    /// starts run at once, with workers on `check_threads`.
    pub fn with_coordinator(
        sink: Arc<EventSink>,
        coordinator: crate::cluster::Coordinator,
        max_parallel_starts: usize,
        check_threads: CheckThreads,
        maintenance: Arc<crate::maintenance::Maintenance>,
    ) -> Arc<Self> {
        Arc::new(Shared {
            sink,
            coordinator,
            status: Arc::new(StatusBoard::default()),
            epoch: Instant::now(),
            admins: Default::default(),
            start_gate: Arc::new(tokio::sync::Semaphore::new(max_parallel_starts)),
            unused_progress: Default::default(),
            heartbeats: Arc::new(Heartbeats::new(check_threads.count())),
            check_threads,
            maintenance,
        })
    }

    /// What the endpoints show.
    pub fn views(&self) -> Views {
        Views {
            sink: self.sink.clone(),
            status: self.status.clone(),
            coordinator: self.coordinator.clone(),
            heartbeats: self.heartbeats.clone(),
            maintenance: self.maintenance.clone(),
        }
    }

    /// What the control API steers.
    pub fn admins(&self) -> Admins {
        self.admins.clone()
    }

    /// When the schedulers last proved they run, for the watchdog.
    pub fn heartbeats(&self) -> Arc<Heartbeats> {
        self.heartbeats.clone()
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
        self.shared.coordinator.config_changed(new.identity);
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

#[cfg(test)]
mod tests;
