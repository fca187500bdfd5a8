//! Notify hooks (`[[notify]]`), as Pacemaker's alert agents and keepalived's `notify_master`:
//! a command run on chosen events, for those without Alertmanager.
//!
//! The event sink offers every event to the [`Notifier`]; each hook that wants it gets a copy in
//! its own bounded queue, without waiting: a full queue drops the event and counts it, so a
//! slow hook never holds the agent. Each hook has a task that runs its command once per event,
//! one at a time and in event order, under the hook's timeout, with the event in its
//! environment (`RESMON_EVENT`, `RESMON_SEQUENCE`, one `RESMON_<FIELD>` per field, and the
//! whole line in `RESMON_EVENT_JSON`); values never reach a command line, so no name or reason
//! can inject an argument. Where it runs is where `exec`'s start and stop run: a transient
//! unit outside the agent's sandbox when the agent is a systemd service, forked otherwise.

use crate::config::notify::HookConfig;
use crate::metrics::Metrics;
use resmon_probes::command::RunAs;
use resmon_probes::launch::{Children, Launcher, Role};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Events a hook holds in its queue before newer ones are dropped.
const QUEUE: usize = 256;

/// The running hooks.
pub struct Notifier {
    hooks: Vec<Hook>,
    /// Numbers the events handed to hooks, in order, from 1.
    sequence: AtomicU64,
    node: String,
    metrics: Arc<Metrics>,
}

struct Hook {
    name: String,
    events: Vec<String>,
    queue: mpsc::Sender<BTreeMap<String, String>>,
}

impl Notifier {
    /// Starts a task per hook (on the caller's tokio runtime).
    pub fn start(
        hooks: &[HookConfig],
        node: &str,
        children: Children,
        state_dir: &Path,
        metrics: Arc<Metrics>,
    ) -> Arc<Notifier> {
        let hooks = hooks
            .iter()
            .map(|config| {
                let name = config.name.to_string();
                let (queue, jobs) = mpsc::channel(QUEUE);
                let stem = resmon_probes::launch::unit_stem(&state_dir.join("notify").join(&name));
                tokio::spawn(run(
                    config.clone(),
                    Launcher::new(children.clone(), stem),
                    jobs,
                    metrics.clone(),
                ));
                Hook {
                    name,
                    events: config.events.clone(),
                    queue,
                }
            })
            .collect();
        Arc::new(Notifier {
            hooks,
            sequence: AtomicU64::new(0),
            node: node.to_string(),
            metrics,
        })
    }

    /// An event, as the sink writes it: handed to every hook that runs on it.
    pub fn offer(&self, name: &str, line: &serde_json::Map<String, serde_json::Value>) {
        // A resource's failure is a state change to `failed`.
        let event = match name {
            "state_changed" if line.get("to").and_then(|t| t.as_str()) == Some("failed") => {
                "resource_failed"
            }
            other => other,
        };
        let wanted: Vec<&Hook> = self
            .hooks
            .iter()
            .filter(|h| h.events.iter().any(|e| e == event))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed) + 1;
        let mut env = BTreeMap::new();
        for (key, value) in line {
            let text = match value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            env.insert(format!("RESMON_{}", key.to_uppercase()), clean(&text));
        }
        env.insert("RESMON_EVENT".into(), event.into());
        env.insert("RESMON_SEQUENCE".into(), sequence.to_string());
        env.insert("RESMON_NODE".into(), clean(&self.node));
        env.insert(
            "RESMON_EVENT_JSON".into(),
            clean(&serde_json::Value::Object(line.clone()).to_string()),
        );
        for hook in wanted {
            if hook.queue.try_send(env.clone()).is_err() {
                self.metrics.notify_run(&hook.name, "dropped");
                tracing::warn!(hook = %hook.name, event, "notify hook queue full: event dropped");
            }
        }
    }
}

/// An environment value holds no NUL byte.
fn clean(text: &str) -> String {
    text.replace('\0', "")
}

/// One hook's task: its events, one run at a time, in order.
async fn run(
    config: HookConfig,
    launcher: Launcher,
    mut jobs: mpsc::Receiver<BTreeMap<String, String>>,
    metrics: Arc<Metrics>,
) {
    let run_as = RunAs::default();
    let name = config.name.as_str();
    while let Some(env) = jobs.recv().await {
        let ran = tokio::time::timeout(
            config.timeout.0,
            launcher.run(Role::Stop, &config.command, &env, None, &run_as),
        )
        .await;
        let event = env.get("RESMON_EVENT").map(String::as_str).unwrap_or("");
        let result = match ran {
            Ok(Ok(finished)) if finished.code == Some(0) => "ok",
            Ok(Ok(finished)) => {
                tracing::warn!(
                    hook = name,
                    event,
                    code = ?finished.code,
                    output = %finished.output,
                    "notify hook failed"
                );
                "failed"
            }
            Ok(Err(failure)) => {
                tracing::warn!(hook = name, event, %failure, "notify hook could not run");
                "failed"
            }
            Err(_) => {
                let _ = launcher.kill_stop().await;
                tracing::warn!(hook = name, event, timeout = ?config.timeout.0, "notify hook timed out and was killed");
                "timeout"
            }
        };
        metrics.notify_run(name, result);
    }
}
