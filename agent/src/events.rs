//! One struct per event; [`Event::emit`] queues it as one JSON line for the output thread
//! ([`crate::output`]), counts it, and keeps it in a bounded in-memory log, in one place. Tests assert which events fired by reading that log.
//!
//! An event line looks like
//! `{"ts":"2026-11-22T02:40:00.123Z","event":"state_changed","group":"web","resource":"site",
//! "type":"process","from":"online","to":"failed","cause":"failure_signal:killed"}`.

use crate::metrics::{Metrics, ResourceMetrics};
use crate::output::{Output, Priority};
use resmon_policies::{CheckKind, FailureReason, Operation, State};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// How many recent events the in-memory log keeps.
const RECENT_EVENTS: usize = 2000;

/// Where events go: the output queue (or nowhere), the metrics, and the recent-events log.
pub struct EventSink {
    metrics: Arc<Metrics>,
    /// The notify hooks, once started.
    notifier: std::sync::OnceLock<Arc<crate::notify::Notifier>>,
    /// As JSON text: a parsed tree is five times the size, for 2,000 lines mostly never read.
    recent: Mutex<VecDeque<Box<str>>>,
    output: Option<Output>,
}

impl EventSink {
    /// A sink that writes each event through `output`, when there is one.
    pub fn new(metrics: Arc<Metrics>, output: Option<Output>) -> Self {
        EventSink {
            metrics,
            notifier: std::sync::OnceLock::new(),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_EVENTS)),
            output,
        }
    }

    /// Hands every event from now on to the notify hooks too.
    pub fn set_notifier(&self, notifier: Arc<crate::notify::Notifier>) {
        let _ = self.notifier.set(notifier);
    }

    /// The metrics events are counted in.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The metrics, to hold beyond a borrow (a streamed scrape).
    pub fn metrics_handle(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The most recent events, oldest first.
    pub fn recent(&self) -> Vec<serde_json::Value> {
        let lines: Vec<Box<str>> = self
            .recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        lines
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    fn record(&self, name: &'static str, body: serde_json::Value) {
        let mut line = serde_json::Map::new();
        line.insert("ts".into(), serde_json::Value::String(rfc3339_now()));
        line.insert("event".into(), serde_json::Value::String(name.into()));
        if let serde_json::Value::Object(fields) = body {
            line.extend(fields);
        }
        if let Some(notifier) = self.notifier.get() {
            notifier.offer(name, &line);
        }
        let text = serde_json::Value::Object(line).to_string().into_boxed_str();
        if let Some(output) = &self.output {
            output.send(Priority::Info, text.clone());
        }
        self.metrics.event(name);
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() == RECENT_EVENTS {
            recent.pop_front();
        }
        recent.push_back(text);
    }
}

/// Something worth a line in the event log.
pub trait Event: Serialize {
    /// The `event` field.
    const NAME: &'static str;

    /// Updates the metrics this event moves, besides `resmon_events_total`.
    fn count(&self, _metrics: &Metrics) {}

    /// Logs, counts and remembers the event.
    fn emit(&self, sink: &EventSink) {
        self.count(sink.metrics());
        sink.record(Self::NAME, serde_json::to_value(self).unwrap_or_default());
    }
}

/// A resource's state changed.
#[derive(Serialize)]
pub struct StateChanged<'a> {
    /// Group.
    pub group: &'a str,
    /// Resource.
    pub resource: &'a str,
    /// Resource type.
    pub r#type: &'static str,
    /// Old state.
    pub from: State,
    /// New state.
    pub to: State,
    /// Why (see `resmon_policies::Cause`).
    pub cause: String,
    /// The resource's metric handles (not logged).
    #[serde(skip)]
    pub metrics: &'a ResourceMetrics,
}

impl Event for StateChanged<'_> {
    const NAME: &'static str = "state_changed";
    fn count(&self, _: &Metrics) {
        self.metrics.transition(self.to, unix_now());
    }
}

/// A check reported failure (or timed out, or was skipped because the last one is stuck).
#[derive(Serialize)]
pub struct ProbeFailed<'a> {
    /// Group.
    pub group: &'a str,
    /// Resource.
    pub resource: &'a str,
    /// Resource type.
    pub r#type: &'static str,
    /// Which check.
    pub check: CheckKind,
    /// Why, from the fixed enum.
    pub reason: FailureReason,
    /// What exactly happened.
    pub detail: &'a str,
    /// How long the check ran.
    pub duration_seconds: f64,
    /// The resource's metric handles (not logged).
    #[serde(skip)]
    pub metrics: &'a ResourceMetrics,
}

impl Event for ProbeFailed<'_> {
    const NAME: &'static str = "probe_failed";
    fn count(&self, m: &Metrics) {
        m.check_failure(&self.metrics.labels, self.check.as_str(), self.reason);
    }
}

/// An attempt of a check-only resource's online failed; the next comes unless
/// `pending_timeout` has passed.
#[derive(Serialize)]
pub struct OnlineAttemptFailed<'a> {
    /// Group.
    pub group: &'a str,
    /// Resource.
    pub resource: &'a str,
    /// Resource type.
    pub r#type: &'static str,
    /// Which attempt, from 1.
    pub attempt: u32,
    /// Why, from the fixed enum.
    pub reason: FailureReason,
    /// What exactly happened.
    pub detail: &'a str,
}

impl Event for OnlineAttemptFailed<'_> {
    const NAME: &'static str = "online_attempt_failed";
}

/// A resource reported its own failure between polls.
#[derive(Serialize)]
pub struct FailureSignalled<'a> {
    /// Group.
    pub group: &'a str,
    /// Resource.
    pub resource: &'a str,
    /// Resource type.
    pub r#type: &'static str,
    /// Why.
    pub reason: FailureReason,
    /// What exactly happened.
    pub detail: &'a str,
    /// The resource's metric handles (not logged).
    #[serde(skip)]
    pub metrics: &'a ResourceMetrics,
}

impl Event for FailureSignalled<'_> {
    const NAME: &'static str = "failure_signalled";
    fn count(&self, m: &Metrics) {
        m.check_failure(&self.metrics.labels, "failure_signal", self.reason);
    }
}

/// An online, offline or terminate returned an error.
#[derive(Serialize)]
pub struct OperationFailed<'a> {
    /// Group.
    pub group: &'a str,
    /// Resource.
    pub resource: &'a str,
    /// Which operation.
    pub op: Operation,
    /// Why.
    pub reason: FailureReason,
    /// What exactly happened.
    pub detail: &'a str,
}

impl Event for OperationFailed<'_> {
    const NAME: &'static str = "operation_failed";
}

/// An operation outlived its pending timeout.
#[derive(Serialize)]
pub struct OperationTimedOut<'a> {
    /// Group.
    pub group: &'a str,
    /// Resource.
    pub resource: &'a str,
    /// Which operation.
    pub op: Operation,
    /// The pending timeout that elapsed.
    pub timeout_seconds: f64,
    /// What the operation was doing (the stage, the bytes received).
    pub detail: &'a str,
    /// The resource's metric handles (not logged).
    #[serde(skip)]
    pub metrics: &'a ResourceMetrics,
}

impl Event for OperationTimedOut<'_> {
    const NAME: &'static str = "operation_timed_out";
    fn count(&self, m: &Metrics) {
        m.operation_timeout(&self.metrics.labels, self.op);
    }
}

/// A scheduled check was not started: the previous one is still running past its timeout.
#[derive(Serialize)]
pub struct CheckStuck<'a> {
    /// Group.
    pub group: &'a str,
    /// Resource.
    pub resource: &'a str,
    /// Resource type.
    pub r#type: &'static str,
    /// Which check.
    pub check: CheckKind,
    /// How long the stuck check has been running.
    pub running_seconds: f64,
}

impl Event for CheckStuck<'_> {
    const NAME: &'static str = "check_stuck";
    fn count(&self, m: &Metrics) {
        m.check_skipped(self.r#type, self.check);
    }
}

/// The policy decided to restart a resource.
#[derive(Serialize)]
pub struct RestartRequested<'a> {
    /// Group.
    pub group: &'a str,
    /// Resource.
    pub resource: &'a str,
    /// Restarts within `restart_period`, this one included.
    pub restarts_in_period: u32,
    /// Waited between its terminate and its online (`restart_delay`).
    pub delay_seconds: f64,
    /// The resource's metric handles (not logged).
    #[serde(skip)]
    pub metrics: &'a ResourceMetrics,
}

impl Event for RestartRequested<'_> {
    const NAME: &'static str = "restart_requested";
    fn count(&self, _: &Metrics) {
        self.metrics.restart();
    }
}

/// The restart threshold was exceeded and the group is to fail over.
#[derive(Serialize)]
pub struct FailoverRequested<'a> {
    /// Group.
    pub group: &'a str,
    /// The resource whose failures exceeded the threshold.
    pub resource: &'a str,
}

impl Event for FailoverRequested<'_> {
    const NAME: &'static str = "failover_requested";
}

/// The group could not fail over.
#[derive(Serialize)]
pub struct FailoverFailed<'a> {
    /// Group.
    pub group: &'a str,
    /// Why.
    pub why: &'a str,
}

impl Event for FailoverFailed<'_> {
    const NAME: &'static str = "failover_failed";
}

/// A failed resource will get its final attempt later.
#[derive(Serialize)]
pub struct RetryScheduled<'a> {
    /// Group.
    pub group: &'a str,
    /// Resource.
    pub resource: &'a str,
    /// Seconds until the attempt.
    pub in_seconds: f64,
}

impl Event for RetryScheduled<'_> {
    const NAME: &'static str = "retry_scheduled";
}

/// No more automatic attempts: an administrator must act.
#[derive(Serialize)]
pub struct GaveUp<'a> {
    /// Group.
    pub group: &'a str,
    /// Resource.
    pub resource: &'a str,
}

impl Event for GaveUp<'_> {
    const NAME: &'static str = "gave_up";
}

/// An administrator's command was refused; nothing changed.
#[derive(Serialize)]
pub struct AdminRefused<'a> {
    /// Group.
    pub group: &'a str,
    /// The command.
    pub command: String,
    /// Why.
    pub why: &'a str,
}

impl Event for AdminRefused<'_> {
    const NAME: &'static str = "admin_refused";
}

/// A resource that keeps going up and down is held back: its flap damping penalty is above
/// `suppress`, and its restart waits until the penalty has decayed below `reuse`.
#[derive(Serialize)]
pub struct RestartDamped<'a> {
    /// Group.
    pub group: &'a str,
    /// Resource.
    pub resource: &'a str,
    /// The penalty now.
    pub penalty: u32,
    /// How long the restart waits.
    pub held_seconds: f64,
}

impl Event for RestartDamped<'_> {
    const NAME: &'static str = "restart_damped";
}

/// A node was paused (`resmon node drain`): it takes no group and moves its groups away.
#[derive(Serialize)]
pub struct NodePaused<'a> {
    /// The paused node.
    pub node: &'a str,
    /// The node whose agent was asked.
    pub by: &'a str,
    /// The groups it held.
    pub groups: &'a [String],
}

impl Event for NodePaused<'_> {
    const NAME: &'static str = "node_paused";
}

/// A node was resumed (`resmon node resume`).
#[derive(Serialize)]
pub struct NodeResumed<'a> {
    /// The node.
    pub node: &'a str,
    /// Groups asked to move back to it.
    pub failback: &'a [String],
}

impl Event for NodeResumed<'_> {
    const NAME: &'static str = "node_resumed";
}

/// A draining node could not move a group: no other node may take it; it stays.
#[derive(Serialize)]
pub struct DrainBlocked<'a> {
    /// The group.
    pub group: &'a str,
    /// The draining node.
    pub node: &'a str,
    /// Why, node by node.
    pub why: &'a str,
}

impl Event for DrainBlocked<'_> {
    const NAME: &'static str = "drain_blocked";
}

/// The cluster's keys are in a key schema newer than this agent's: it takes no group until it
/// is upgraded.
#[derive(Serialize)]
pub struct SchemaRefused<'a> {
    /// This node.
    pub node: &'a str,
    /// The schema the cluster's keys are in.
    pub cluster_schema: u32,
    /// The newest schema this agent speaks.
    pub own_schema: u32,
    /// This agent's version.
    pub version: &'a str,
}

impl Event for SchemaRefused<'_> {
    const NAME: &'static str = "schema_refused";
}

/// The node, a group or a resource entered or left maintenance.
#[derive(Serialize)]
pub struct MaintenanceChanged<'a> {
    /// `node`, a group, or `group/resource`.
    pub target: &'a str,
    /// In maintenance now.
    pub on: bool,
}

impl Event for MaintenanceChanged<'_> {
    const NAME: &'static str = "maintenance_changed";
}

/// A new config was applied on SIGHUP.
#[derive(Serialize)]
pub struct ConfigReloaded {
    /// Groups started, restarted with a new definition, or let go.
    pub added: Vec<String>,
    /// Groups whose definition changed.
    pub changed: Vec<String>,
    /// Groups no longer in the config (left running, no longer kept).
    pub removed: Vec<String>,
    /// Groups left as they were.
    pub unchanged: usize,
    /// `[agent]` keys whose new value takes effect at the next agent start; until then the
    /// running agent keeps its own.
    pub at_next_start: Vec<&'static str>,
}

impl Event for ConfigReloaded {
    const NAME: &'static str = "config_reloaded";
    fn count(&self, m: &Metrics) {
        m.config_reload(true);
    }
}

/// A config read on SIGHUP was invalid; the running one stays.
#[derive(Serialize)]
pub struct ConfigRejected {
    /// Every problem found.
    pub errors: Vec<String>,
}

impl Event for ConfigRejected {
    const NAME: &'static str = "config_rejected";
    fn count(&self, m: &Metrics) {
        m.config_reload(false);
    }
}

/// The agent started and every group is running.
#[derive(Serialize)]
pub struct AgentStarted<'a> {
    /// The version.
    pub version: &'static str,
    /// The config file.
    pub config: &'a str,
    /// Number of groups.
    pub groups: usize,
    /// Number of resources.
    pub resources: usize,
    /// The HTTP endpoint.
    pub listen: String,
}

impl Event for AgentStarted<'_> {
    const NAME: &'static str = "agent_started";
}

/// The agent is exiting.
#[derive(Serialize)]
pub struct AgentStopping {
    /// Whether groups were stopped first (`stop_on_exit`).
    pub stop_groups: bool,
}

impl Event for AgentStopping {
    const NAME: &'static str = "agent_stopping";
}

/// Unix time now, in seconds.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Now as RFC 3339 UTC with milliseconds.
pub(crate) fn rfc3339_now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// The coordinator reached the cluster and holds a lease.
#[derive(Serialize)]
pub struct CoordinatorConnected<'a> {
    /// This node.
    pub node: &'a str,
    /// The lease its ownership keys are held under.
    pub lease: i64,
    /// Whether it is the lease a previous run of this agent left, still alive.
    pub reused: bool,
}

impl Event for CoordinatorConnected<'_> {
    const NAME: &'static str = "coordinator_connected";
    fn count(&self, metrics: &Metrics) {
        metrics.coordinator_up(true);
    }
}

/// The coordinator lost the cluster (etcd unreachable, lease gone).
#[derive(Serialize)]
pub struct CoordinatorDisconnected<'a> {
    /// This node.
    pub node: &'a str,
    /// What happened.
    pub why: &'a str,
}

impl Event for CoordinatorDisconnected<'_> {
    const NAME: &'static str = "coordinator_disconnected";
    fn count(&self, metrics: &Metrics) {
        metrics.coordinator_up(false);
    }
}

/// This node took a group's ownership key.
#[derive(Serialize)]
pub struct OwnershipAcquired<'a> {
    /// Group.
    pub group: &'a str,
    /// This node.
    pub node: &'a str,
    /// Why it was this node: `preferred`, `failover`, `move`, `failback`, `takeover` (the
    /// owner's lease expired).
    pub reason: &'a str,
    /// The etcd revision of the key.
    pub revision: i64,
}

impl Event for OwnershipAcquired<'_> {
    const NAME: &'static str = "ownership_acquired";
}

/// This node deleted its ownership key after taking the group offline.
#[derive(Serialize)]
pub struct OwnershipReleased<'a> {
    /// Group.
    pub group: &'a str,
    /// This node.
    pub node: &'a str,
    /// The node asked to take it, if any.
    pub to: Option<&'a str>,
}

impl Event for OwnershipReleased<'_> {
    const NAME: &'static str = "ownership_released";
}

/// This node could not renew its lease in time and took its groups offline before the lease
/// could expire, so that no other node runs them at the same time.
#[derive(Serialize)]
pub struct SelfFenced<'a> {
    /// This node.
    pub node: &'a str,
    /// Groups it was running.
    pub groups: Vec<String>,
    /// Seconds since the last renewal that etcd acknowledged was sent.
    pub since_renewal_seconds: f64,
}

impl Event for SelfFenced<'_> {
    const NAME: &'static str = "self_fenced";
}

/// A group is being moved to another node: a failover, a `resmon move`, or a failback.
#[derive(Serialize)]
pub struct MoveStarted<'a> {
    /// Group.
    pub group: &'a str,
    /// Its owner.
    pub from: &'a str,
    /// Where it goes.
    pub to: &'a str,
    /// `failover`, `move` or `failback`.
    pub reason: &'a str,
}

impl Event for MoveStarted<'_> {
    const NAME: &'static str = "move_started";
    fn count(&self, metrics: &Metrics) {
        if self.reason == "failover" {
            metrics.group_failover(self.group);
        }
    }
}
