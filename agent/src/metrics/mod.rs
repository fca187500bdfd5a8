//! Every metric the agent exports, in one registry.
//!
//! Names carry the `resmon_` prefix and their unit; label values come from closed enums
//! ([`State`], [`CheckKind`], [`FailureReason`], [`Operation`]) or from names in the config, never
//! from error text. Per resource there are at most: 6 state series, 2 last-duration series, one
//! restart counter, one last-transition gauge, plus failure and timeout counters created on
//! first use, which keeps 10,000 resources scrapeable.
//!
//! Workers resolve their metric handles once ([`ResourceMetrics`]) so the hot path is an
//! atomic add, not a label lookup.
//!
//! # Layout
//!
//! - this module: the registry, every `prometheus-client` family (histograms per type, sparse
//!   failure and timeout counters, events, cluster); the exposition in chunks.
//! - [`labels`]: the label sets, each value from a closed set or a config name, and the buckets.
//! - [`handles`]: what a resource's worker holds ([`ResourceMetrics`]).
//! - [`series`]: the four per-resource families, their atomics and their streaming encoder.
//! - [`text`]: the Prometheus text format made from `prometheus-client`'s OpenMetrics, for
//!   scrapers that do not ask for OpenMetrics.

mod handles;
mod labels;
mod series;
#[cfg(test)]
mod tests;
mod text;

pub use handles::ResourceMetrics;
use handles::{per_check, state_index};
use labels::*;
pub use labels::{ResourceLabels, TypeLabel, TIMERS};
pub use series::ResourceSeries;
use series::{SeriesCursor, SERIES_FAMILIES};
use text::openmetrics_to_text;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use resmon_policies::{CheckKind, FailureReason, Operation};
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

/// The agent's metrics.
pub struct Metrics {
    registry: Registry,
    /// The per-resource series, by (group, resource).
    series: RwLock<BTreeMap<(String, String), Arc<ResourceSeries>>>,
    check_duration: Family<TypeCheckLabels, Histogram>,
    check_failures: Family<FailureLabels, Counter>,
    check_lateness: Histogram,
    checks_stuck: Family<TypeCheckLabels, Gauge>,
    checks_skipped: Family<TypeCheckLabels, Counter>,
    checks_seen_late: Family<TypeCheckLabels, Counter>,
    operation_timeouts: Family<OperationLabels, Counter>,
    operation_duration: Family<TypeOperationLabels, Histogram>,
    events: Family<EventLabels, Counter>,
    group_owner: Family<OwnerLabels, Gauge>,
    disk_free: Family<ResourceLabels, Gauge>,
    disk_size: Family<ResourceLabels, Gauge>,
    tls_not_after: Family<ResourceLabels, Gauge<f64, AtomicU64>>,
    tls_not_before: Family<ResourceLabels, Gauge<f64, AtomicU64>>,
    config_reloads: Family<ResultLabels, Counter>,
    group_failovers: Family<GroupLabels, Counter>,
    coordinator_up: Gauge,
    heartbeat_age: Gauge<f64, AtomicU64>,
    lease_renew: Histogram,
    resources: Gauge,
    events_dropped: Counter,
    watchdog_armed: Gauge,
    listener_connections: Family<ListenerLabels, Gauge>,
    listener_closed: Family<ListenerClosedLabels, Counter>,
    resource_unmanaged: Family<ResourceLabels, Gauge>,
    node_maintenance: Gauge,
    cluster_versions: Gauge,
    cluster_config_differences: Gauge,
    cluster_schema_refused: Gauge,
    resource_timer: Family<TimerLabels, Gauge<f64, AtomicU64>>,
    damping_penalty: Family<ResourceLabels, Gauge>,
    notify_runs: Family<NotifyLabels, Counter>,
    memory_bytes: Family<ResourceLabels, Gauge>,
    cpu_cores: Family<ResourceLabels, Gauge<f64, AtomicU64>>,
    threads: Family<ResourceLabels, Gauge>,
    open_fds: Family<ResourceLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let check_duration = Family::<TypeCheckLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(check_buckets())
        });
        registry.register(
            "resmon_check_duration_seconds",
            "Duration of looks_alive and is_alive checks, per resource type and check",
            check_duration.clone(),
        );
        let check_failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "resmon_check_failures",
            "Checks and failure signals that reported failure, by reason",
            check_failures.clone(),
        );
        let check_lateness = Histogram::new(lateness_buckets());
        registry.register(
            "resmon_check_start_lateness_seconds",
            "How late scheduled checks started compared with their scheduled time",
            check_lateness.clone(),
        );
        let checks_stuck = Family::<TypeCheckLabels, Gauge>::default();
        registry.register(
            "resmon_checks_stuck",
            "Checks past their timeout that have not returned yet",
            checks_stuck.clone(),
        );
        let checks_skipped = Family::<TypeCheckLabels, Counter>::default();
        registry.register(
            "resmon_checks_skipped",
            "Scheduled checks not started: the previous one of the same resource was still running, or the check was a whole interval or a second late (the agent was stopped or starved) and was put off to its next slot",
            checks_skipped.clone(),
        );
        let checks_seen_late = Family::<TypeCheckLabels, Counter>::default();
        registry.register(
            "resmon_checks_seen_late",
            "Checks whose answer was in when the agent, too busy to look before their deadline, first looked after it (the answer counts, not a timeout)",
            checks_seen_late.clone(),
        );
        let operation_timeouts = Family::<OperationLabels, Counter>::default();
        registry.register(
            "resmon_operation_timeouts",
            "Online, offline and terminate operations that outlived their pending timeout",
            operation_timeouts.clone(),
        );
        let operation_duration =
            Family::<TypeOperationLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(operation_buckets())
            });
        registry.register(
            "resmon_operation_duration_seconds",
            "Duration of online, offline and terminate operations that returned",
            operation_duration.clone(),
        );
        let events = Family::<EventLabels, Counter>::default();
        registry.register("resmon_events", "Events emitted, by kind", events.clone());
        let group_owner = Family::<OwnerLabels, Gauge>::default();
        registry.register(
            "resmon_group_owner",
            "1 for each group this node owns, labelled with the node",
            group_owner.clone(),
        );
        let disk_free = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "resmon_disk_free_bytes",
            "Bytes available to unprivileged users on each disk resource's filesystem",
            disk_free.clone(),
        );
        let disk_size = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "resmon_disk_size_bytes",
            "Size of each disk resource's filesystem",
            disk_size.clone(),
        );
        let tls_not_after = Family::<ResourceLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "resmon_tls_cert_not_after_timestamp_seconds",
            "NotAfter of the TLS peer certificate each resource saw last, as Unix time",
            tls_not_after.clone(),
        );
        let tls_not_before = Family::<ResourceLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "resmon_tls_cert_not_before_timestamp_seconds",
            "NotBefore of the TLS peer certificate each resource saw last, as Unix time",
            tls_not_before.clone(),
        );
        let config_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "resmon_config_reloads",
            "Config reloads on SIGHUP, applied or rejected",
            config_reloads.clone(),
        );
        let group_failovers = Family::<GroupLabels, Counter>::default();
        registry.register(
            "resmon_group_failovers",
            "Failovers this node started, by group",
            group_failovers.clone(),
        );
        let coordinator_up = Gauge::default();
        registry.register(
            "resmon_coordinator_up",
            "1 while the coordinator is in touch with the cluster and holds a lease",
            coordinator_up.clone(),
        );
        let cluster_versions = Gauge::default();
        registry.register(
            "resmon_cluster_versions",
            "Distinct agent versions among the alive nodes, as this node sees them; above 1 during a rolling upgrade",
            cluster_versions.clone(),
        );
        let cluster_config_differences = Gauge::default();
        registry.register(
            "resmon_cluster_config_differences",
            "Groups defined differently on two alive nodes (or on one and not another)",
            cluster_config_differences.clone(),
        );
        let cluster_schema_refused = Gauge::default();
        registry.register(
            "resmon_cluster_schema_refused",
            "1 while the cluster's key schema is newer than this agent's: it takes no group",
            cluster_schema_refused.clone(),
        );
        let heartbeat_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "resmon_heartbeat_age_seconds",
            "Since the least recent of the agent's schedulers (its main runtime, each check thread) last proved it runs, as of the scrape; above 1 one of them is stalled",
            heartbeat_age.clone(),
        );
        let lease_renew = Histogram::new([
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ]);
        registry.register(
            "resmon_coordinator_lease_renew_seconds",
            "Round trip of each lease renewal to etcd",
            lease_renew.clone(),
        );
        let resources = Gauge::default();
        registry.register(
            "resmon_resources",
            "Resources the agent keeps",
            resources.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: crate::VERSION,
            })
            .set(1);
        registry.register(
            "resmon_build_info",
            "The agent's version, as a label",
            build_info,
        );
        let events_dropped = Counter::default();
        registry.register(
            "resmon_events_dropped",
            "Event and log lines dropped because the output queue was full (stderr or the journal too slow)",
            events_dropped.clone(),
        );
        let watchdog_armed = Gauge::default();
        registry.register(
            "resmon_watchdog_armed",
            "1 while the cluster watchdog device is open and fed at each lease renewal",
            watchdog_armed.clone(),
        );
        let listener_connections = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "resmon_listener_connections",
            "Connections open on the HTTP endpoint and on the control socket",
            listener_connections.clone(),
        );
        let listener_closed = Family::<ListenerClosedLabels, Counter>::default();
        registry.register(
            "resmon_listener_closed",
            "Connections the listener closed: evicted at the cap, idle too long, or an exchange too long",
            listener_closed.clone(),
        );
        let resource_unmanaged = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "resmon_resource_unmanaged",
            "1 for each resource in maintenance (its own, its group's or the node's): checked, never acted on",
            resource_unmanaged.clone(),
        );
        let node_maintenance = Gauge::default();
        registry.register(
            "resmon_node_maintenance",
            "1 while this node is in maintenance: it acts on none of its groups and takes no group",
            node_maintenance.clone(),
        );
        let resource_timer = Family::<TimerLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "resmon_resource_timer_timestamp_seconds",
            "When a resource's timer fires (Unix seconds), while it runs: its restart after restart_delay, its final retry, the end of its flap damping, and when its restart window frees a restart",
            resource_timer.clone(),
        );
        let damping_penalty = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "resmon_resource_damping_penalty",
            "A resource's flap damping penalty as of its last failure (it halves every half_life)",
            damping_penalty.clone(),
        );
        let notify_runs = Family::<NotifyLabels, Counter>::default();
        registry.register(
            "resmon_notify_runs",
            "Notify hook runs by hook and result: ok, failed (non-zero exit or could not run), timeout (killed), dropped (its queue was full)",
            notify_runs.clone(),
        );
        let memory_bytes = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "resmon_resource_memory_bytes",
            "Resident memory of a process or service resource's process tree, at its last is_alive",
            memory_bytes.clone(),
        );
        let cpu_cores = Family::<ResourceLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "resmon_resource_cpu_cores",
            "CPU a process or service resource's process tree used between its last two is_alive checks, in cores",
            cpu_cores.clone(),
        );
        let threads = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "resmon_resource_threads",
            "Threads of a process or service resource's process tree, at its last is_alive",
            threads.clone(),
        );
        let open_fds = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "resmon_resource_open_fds",
            "Open file descriptors of a process or service resource's process tree, at its last is_alive",
            open_fds.clone(),
        );
        Metrics {
            registry,
            series: RwLock::new(BTreeMap::new()),
            check_duration,
            check_failures,
            check_lateness,
            checks_stuck,
            checks_skipped,
            checks_seen_late,
            operation_timeouts,
            operation_duration,
            events,
            group_owner,
            disk_free,
            disk_size,
            tls_not_after,
            tls_not_before,
            config_reloads,
            group_failovers,
            coordinator_up,
            heartbeat_age,
            lease_renew,
            resources,
            events_dropped,
            watchdog_armed,
            listener_connections,
            listener_closed,
            resource_unmanaged,
            node_maintenance,
            cluster_versions,
            cluster_config_differences,
            cluster_schema_refused,
            resource_timer,
            damping_penalty,
            notify_runs,
            memory_bytes,
            cpu_cores,
            threads,
            open_fds,
        }
    }

    /// What a resource's process tree used at its last is_alive.
    pub fn tree_usage(
        &self,
        labels: &ResourceLabels,
        usage: &resmon_probes::usage::Usage,
        cores: Option<f64>,
    ) {
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.memory_bytes
            .get_or_create(labels)
            .set(gauge(usage.memory_bytes));
        self.threads.get_or_create(labels).set(gauge(usage.threads));
        self.open_fds.get_or_create(labels).set(gauge(usage.fds));
        if let Some(cores) = cores {
            self.cpu_cores.get_or_create(labels).set(cores);
        }
    }

    /// A notify hook ran (`ok`, `failed`, `timeout`) or an event was dropped for it.
    pub fn notify_run(&self, hook: &str, result: &'static str) {
        self.notify_runs
            .get_or_create(&NotifyLabels {
                hook: hook.to_string(),
                result,
            })
            .inc();
    }

    /// One of a resource's timers ([`TIMERS`]): when it fires, or gone.
    pub fn resource_timer(&self, labels: &ResourceLabels, timer: &'static str, at: Option<f64>) {
        let key = TimerLabels {
            resource: labels.clone(),
            timer,
        };
        match at {
            Some(at) => {
                self.resource_timer.get_or_create(&key).set(at);
            }
            None => {
                self.resource_timer.remove(&key);
            }
        }
    }

    /// A resource's flap damping penalty as of its last failure.
    pub fn damping_penalty(&self, labels: &ResourceLabels, penalty: u32) {
        self.damping_penalty
            .get_or_create(labels)
            .set(i64::from(penalty));
    }

    /// A resource entered (`on`) or left maintenance.
    pub fn resource_unmanaged(&self, labels: &ResourceLabels, on: bool) {
        if on {
            self.resource_unmanaged.get_or_create(labels).set(1);
        } else {
            self.resource_unmanaged.remove(labels);
            self.damping_penalty.remove(labels);
            self.memory_bytes.remove(labels);
            self.cpu_cores.remove(labels);
            self.threads.remove(labels);
            self.open_fds.remove(labels);
            for timer in TIMERS {
                self.resource_timer.remove(&TimerLabels {
                    resource: labels.clone(),
                    timer,
                });
            }
        }
    }

    /// This node entered (`on`) or left maintenance.
    pub fn node_maintenance(&self, on: bool) {
        self.node_maintenance.set(i64::from(on));
    }

    /// What the nodes' records say: distinct versions, groups defined differently, and whether
    /// this node refuses a newer key schema.
    pub fn cluster_skew(&self, versions: usize, differences: usize, refused: bool) {
        self.cluster_versions
            .set(i64::try_from(versions).unwrap_or(i64::MAX));
        self.cluster_config_differences
            .set(i64::try_from(differences).unwrap_or(i64::MAX));
        self.cluster_schema_refused.set(i64::from(refused));
    }

    /// Connections open on a listener (`http` or `control`).
    pub fn listener_connections(&self, listener: &'static str, open: usize) {
        self.listener_connections
            .get_or_create(&ListenerLabels { listener })
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    /// A connection the listener closed, and why.
    pub fn listener_closed(&self, listener: &'static str, why: crate::listen::Closed) {
        self.listener_closed
            .get_or_create(&ListenerClosedLabels {
                listener,
                reason: why.as_str(),
            })
            .inc();
    }

    /// Whether the watchdog device is armed.
    pub fn watchdog_armed(&self, armed: bool) {
        self.watchdog_armed.set(i64::from(armed));
    }

    /// The counter of dropped output lines, for the output thread to hold.
    pub fn events_dropped(&self) -> Counter {
        self.events_dropped.clone()
    }

    /// Resolves the handles of one resource's series and creates them (state `offline`).
    pub fn resource(&self, labels: ResourceLabels) -> ResourceMetrics {
        let duration = per_check(&self.check_duration, labels.kind.r#type);
        let stuck = per_check(&self.checks_stuck, labels.kind.r#type);
        let seen_late = per_check(&self.checks_seen_late, labels.kind.r#type);
        let skipped = per_check(&self.checks_skipped, labels.kind.r#type);
        let series = Arc::new(ResourceSeries::new(&labels));
        let previous = self
            .series
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                (labels.group.clone(), labels.resource.clone()),
                series.clone(),
            );
        if previous.is_none() {
            self.resources.inc();
        }
        ResourceMetrics {
            labels,
            series,
            duration,
            stuck,
            seen_late,
            skipped,
        }
    }

    /// Removes one resource's series (it left the config).
    pub fn forget(&self, labels: &ResourceLabels) {
        let key = (labels.group.clone(), labels.resource.clone());
        if self
            .series
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key)
            .is_some()
        {
            self.resources.dec();
        }
        for check in ["looks_alive", "is_alive", "failure_signal"] {
            for reason in FailureReason::ALL {
                self.check_failures.remove(&FailureLabels {
                    resource: labels.clone(),
                    check,
                    reason: reason.as_str(),
                });
            }
        }
        self.tls_not_after.remove(labels);
        self.resource_unmanaged.remove(labels);
        self.disk_free.remove(labels);
        self.disk_size.remove(labels);
        self.tls_not_before.remove(labels);
        for op in Operation::ALL {
            self.operation_timeouts.remove(&OperationLabels {
                resource: labels.clone(),
                op: op.as_str(),
            });
        }
    }

    /// This node owns `group` (`owned`), or no longer does.
    pub fn group_owner(&self, group: &str, node: &str, owned: bool) {
        let labels = OwnerLabels {
            group: group.into(),
            node: node.into(),
        };
        if owned {
            self.group_owner.get_or_create(&labels).set(1);
        } else {
            self.group_owner.remove(&labels);
        }
    }

    /// Records a disk resource's free and total bytes.
    pub fn disk_space(&self, labels: &ResourceLabels, free: u64, size: u64) {
        self.disk_free
            .get_or_create(labels)
            .set(free.min(i64::MAX as u64) as i64);
        self.disk_size
            .get_or_create(labels)
            .set(size.min(i64::MAX as u64) as i64);
    }

    /// Records the validity of the TLS certificate a resource's check saw.
    pub fn tls_certificate(&self, labels: &ResourceLabels, not_before: f64, not_after: f64) {
        self.tls_not_before.get_or_create(labels).set(not_before);
        self.tls_not_after.get_or_create(labels).set(not_after);
    }

    /// Counts a failover this node started.
    pub fn group_failover(&self, group: &str) {
        self.group_failovers
            .get_or_create(&GroupLabels {
                group: group.into(),
            })
            .inc();
    }

    /// Whether the coordinator is in touch with the cluster.
    pub fn coordinator_up(&self, up: bool) {
        self.coordinator_up.set(i64::from(up));
    }

    /// How long ago the least recent scheduler proved it runs: set at each scrape, for a
    /// stalled check thread leaves the endpoint, on the main runtime, answering.
    pub fn heartbeat_age(&self, age: std::time::Duration) {
        self.heartbeat_age.set(age.as_secs_f64());
    }

    /// Records a lease renewal's round trip.
    pub fn lease_renewed(&self, seconds: f64) {
        self.lease_renew.observe(seconds);
    }

    /// Counts an event.
    pub fn event(&self, event: &'static str) {
        self.events.get_or_create(&EventLabels { event }).inc();
    }

    /// Counts a config reload.
    pub fn config_reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "rejected" };
        self.config_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Records how late a scheduled check started.
    pub fn check_lateness(&self, seconds: f64) {
        self.check_lateness.observe(seconds);
    }

    /// Counts a failed check or failure signal.
    pub fn check_failure(
        &self,
        labels: &ResourceLabels,
        check: &'static str,
        reason: FailureReason,
    ) {
        self.check_failures
            .get_or_create(&FailureLabels {
                resource: labels.clone(),
                check,
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Counts an operation that timed out.
    pub fn operation_timeout(&self, labels: &ResourceLabels, op: Operation) {
        self.operation_timeouts
            .get_or_create(&OperationLabels {
                resource: labels.clone(),
                op: op.as_str(),
            })
            .inc();
    }

    /// Records the duration of an operation that returned.
    pub fn operation_duration(&self, r#type: &'static str, op: Operation, seconds: f64) {
        self.operation_duration
            .get_or_create(&TypeOperationLabels {
                r#type,
                op: op.as_str(),
            })
            .observe(seconds);
    }

    /// Counts a skipped check.
    pub fn check_skipped(&self, r#type: &'static str, check: CheckKind) {
        self.checks_skipped
            .get_or_create(&TypeCheckLabels {
                r#type,
                check: check.as_str(),
            })
            .inc();
    }

    /// The Prometheus text exposition format (version 0.0.4), which `promtool check metrics`
    /// and every Prometheus version read.
    pub fn encode_text(&self) -> String {
        self.encode_chunks(false).collect()
    }

    /// The OpenMetrics text format, for scrapers that ask for it.
    pub fn encode_openmetrics(&self) -> String {
        self.encode_chunks(true).collect()
    }

    /// The exposition in pieces of about [`CHUNK_BYTES`], each encoded only when asked for:
    /// at 10,000 resources the whole text is over 10 MB, which a scrape would otherwise hold at
    /// once. The per-resource families first, then the registry's (small: their label values
    /// are fixed enums, and failure series exist only for resources that failed).
    pub fn encode_chunks(&self, openmetrics: bool) -> impl Iterator<Item = String> + '_ {
        let series: Vec<Arc<ResourceSeries>> = self
            .series
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut next = SeriesCursor::default();
        let mut registry_done = false;
        std::iter::from_fn(move || {
            if next.family < SERIES_FAMILIES.len() {
                let mut out = String::with_capacity(CHUNK_BYTES + 1024);
                while out.len() < CHUNK_BYTES && next.family < SERIES_FAMILIES.len() {
                    next.write(&mut out, &series, openmetrics);
                }
                return Some(out);
            }
            if registry_done {
                return None;
            }
            registry_done = true;
            let registry = self.encode_registry();
            Some(if openmetrics {
                registry
            } else {
                openmetrics_to_text(&registry)
            })
        })
    }

    fn encode_registry(&self) -> String {
        let mut out = String::with_capacity(1 << 16);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// How much of the exposition is encoded at a time.
pub const CHUNK_BYTES: usize = 64 * 1024;
