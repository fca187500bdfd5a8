//! The composition root: what `resmon run` does, wiring the config, the coordinator, the check
//! threads, the HTTP endpoint, the control API and the groups. Its reload and shutdown
//! triggers are passed in (the command line turns signals into them; tests pass their own), as
//! mini-redis's `server::run` takes its shutdown as a future.

use crate::config::{self, ConfigErrors};
use crate::events::{AgentStarted, Event, EventSink};
use crate::metrics::Metrics;
use crate::output::{Output, Target};
use crate::runtime::threads::{CheckThreads, Scheduler};
use crate::runtime::{Agent, Shared};
use futures::{Stream, StreamExt};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

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
    /// The output thread could not be started.
    #[error("cannot start the output thread: {0}")]
    Output(std::io::Error),
    /// The maintenance settings in the state directory could not be read.
    #[error("{0}")]
    Maintenance(String),
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

/// `resmon run`: loads the config, serves HTTP and the control API, runs every group, reloads
/// at each item of `reloads` (SIGHUP) and exits when `shutdown` completes (SIGTERM, SIGINT).
pub async fn run(
    path: PathBuf,
    mut reloads: impl Stream<Item = ()> + Unpin,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    // First the output thread: from here on nothing writes to stderr itself, so a reader
    // that does not keep up (a full pipe) holds no part of the agent, its start included.
    let metrics = Arc::new(Metrics::new());
    let output =
        Output::start(Target::detect(), metrics.events_dropped()).map_err(RunError::Output)?;
    crate::output::install_logs(output.clone());
    let config::Loaded { config, warnings } = config::load(&path)?;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    // Said once; 10,000 resources may bring as many, kept for nothing.
    drop(warnings);
    let listener =
        crate::listen::bind_tcp(config.agent.listen).map_err(|source| RunError::Listen {
            address: config.agent.listen,
            config: path.clone(),
            source,
        })?;
    let listen = listener.local_addr().unwrap_or(config.agent.listen);
    let sink = Arc::new(EventSink::new(metrics, Some(output.clone())));
    let maintenance = Arc::new(
        crate::maintenance::Maintenance::load(&config.agent.state_dir)
            .map_err(RunError::Maintenance)?,
    );
    sink.metrics().node_maintenance(maintenance.node());
    let coordinator = match &config.cluster {
        Some(cluster) => crate::cluster::Coordinator::etcd(
            &cluster.node_name(&config.agent),
            cluster.clone(),
            &config.agent.state_dir,
            sink.clone(),
            maintenance.clone(),
            config.identity.clone(),
        ),
        None => crate::cluster::Coordinator::embedded(&config.agent.node, sink.clone()),
    };
    let count = config.agent.check_threads;
    let check_threads = CheckThreads::start(count).map_err(|source| RunError::CheckThreads {
        count: count.get(),
        config: path.clone(),
        source,
    })?;
    let shared = Shared::with_coordinator(
        sink,
        coordinator,
        config.agent.max_parallel_starts.get(),
        check_threads,
        maintenance,
    );
    if !config.notify.is_empty() {
        shared.sink.set_notifier(crate::notify::Notifier::start(
            &config.notify,
            shared.coordinator.node(),
            config.agent.children.resolve(),
            &config.agent.state_dir,
            shared.sink.metrics_handle(),
        ));
    }
    tokio::spawn(crate::http::serve(listener, shared.views()));
    match crate::control::bind(&config.agent.control_socket) {
        Ok(control) => {
            tokio::spawn(crate::control::serve(
                control,
                crate::control::ControlApi {
                    views: shared.views(),
                    admins: shared.admins(),
                },
            ));
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
        version: crate::VERSION,
        config: &path.display().to_string(),
        groups,
        resources,
        listen: listen.to_string(),
    }
    .emit(&shared.sink);
    crate::watchdog::ready(shared.heartbeats());
    tokio::spawn(crate::memory::give_back_freed_memory_periodically());

    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            Some(()) = reloads.next() => {
                crate::watchdog::reloading();
                if let Err(errors) = agent.reload(&path).await {
                    tracing::error!("the new config was rejected; the running one stays:\n{errors}");
                }
                crate::watchdog::reloaded();
            }
            () = &mut shutdown => break,
        }
    }
    crate::watchdog::stopping();
    let stop = agent.agent_config().stop_on_exit;
    agent.shutdown(stop).await;
    // The last events (the groups' stops) are written before the process exits.
    output.flush(std::time::Duration::from_secs(2));
    Ok(())
}
