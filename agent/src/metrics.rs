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

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use resmon_policies::{CheckKind, FailureReason, Operation, State};
use std::sync::atomic::AtomicU64;

/// `group`, `resource`, `type`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    /// The group's name.
    pub group: String,
    /// The resource's name.
    pub resource: String,
    /// The resource type.
    #[prometheus(flatten)]
    pub kind: TypeLabel,
}

/// The `type` label alone (a struct because `type` is a keyword).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    /// The resource type.
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
    #[prometheus(flatten)]
    resource: ResourceLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeCheckLabels {
    r#type: &'static str,
    check: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceCheckLabels {
    check: &'static str,
    #[prometheus(flatten)]
    resource: ResourceLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    check: &'static str,
    reason: &'static str,
    #[prometheus(flatten)]
    resource: ResourceLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    op: &'static str,
    #[prometheus(flatten)]
    resource: ResourceLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeOperationLabels {
    r#type: &'static str,
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SkipLabels {
    r#type: &'static str,
    check: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// A gauge holding seconds (or a timestamp) as a float.
type FloatGauge = Gauge<f64, AtomicU64>;

fn check_buckets() -> impl Iterator<Item = f64> {
    [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ]
    .into_iter()
}

fn lateness_buckets() -> impl Iterator<Item = f64> {
    [
        0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0,
    ]
    .into_iter()
}

fn operation_buckets() -> impl Iterator<Item = f64> {
    [
        0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 180.0, 600.0,
    ]
    .into_iter()
}

/// The agent's metrics.
pub struct Metrics {
    registry: Registry,
    resource_state: Family<StateLabels, Gauge>,
    check_duration: Family<TypeCheckLabels, Histogram>,
    check_last_duration: Family<ResourceCheckLabels, FloatGauge>,
    check_failures: Family<FailureLabels, Counter>,
    check_lateness: Histogram,
    checks_stuck: Family<TypeCheckLabels, Gauge>,
    checks_skipped: Family<SkipLabels, Counter>,
    restarts: Family<ResourceLabels, Counter>,
    operation_timeouts: Family<OperationLabels, Counter>,
    operation_duration: Family<TypeOperationLabels, Histogram>,
    last_transition: Family<ResourceLabels, FloatGauge>,
    events: Family<EventLabels, Counter>,
    config_reloads: Family<ResultLabels, Counter>,
    resources: Gauge,
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
        let resource_state = Family::<StateLabels, Gauge>::default();
        registry.register(
            "resmon_resource_state",
            "Current state of each resource: 1 for the state it is in, 0 for the others",
            resource_state.clone(),
        );
        let check_duration = Family::<TypeCheckLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(check_buckets())
        });
        registry.register(
            "resmon_check_duration_seconds",
            "Duration of looks_alive and is_alive checks, per resource type and check",
            check_duration.clone(),
        );
        let check_last_duration = Family::<ResourceCheckLabels, FloatGauge>::default();
        registry.register(
            "resmon_check_last_duration_seconds",
            "Duration of each resource's last check of each kind",
            check_last_duration.clone(),
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
        let checks_skipped = Family::<SkipLabels, Counter>::default();
        registry.register(
            "resmon_checks_skipped",
            "Scheduled checks not started because the previous one of the same resource was still running",
            checks_skipped.clone(),
        );
        let restarts = Family::<ResourceLabels, Counter>::default();
        registry.register(
            "resmon_resource_restarts",
            "Restarts of each resource decided by the restart policy",
            restarts.clone(),
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
        let last_transition = Family::<ResourceLabels, FloatGauge>::default();
        registry.register(
            "resmon_resource_last_transition_timestamp_seconds",
            "Unix time of each resource's last state transition",
            last_transition.clone(),
        );
        let events = Family::<EventLabels, Counter>::default();
        registry.register("resmon_events", "Events emitted, by kind", events.clone());
        let config_reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "resmon_config_reloads",
            "Config reloads on SIGHUP, applied or rejected",
            config_reloads.clone(),
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
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "resmon_build_info",
            "The agent's version, as a label",
            build_info,
        );
        Metrics {
            registry,
            resource_state,
            check_duration,
            check_last_duration,
            check_failures,
            check_lateness,
            checks_stuck,
            checks_skipped,
            restarts,
            operation_timeouts,
            operation_duration,
            last_transition,
            events,
            config_reloads,
            resources,
        }
    }

    /// Resolves the handles of one resource's series and creates them (state `offline`).
    pub fn resource(&self, labels: ResourceLabels) -> ResourceMetrics {
        let state = State::ALL.map(|state| {
            self.resource_state
                .get_or_create(&StateLabels {
                    resource: labels.clone(),
                    state: state.as_str(),
                })
                .clone()
        });
        state[0].set(1);
        let last_duration = CheckKind::ALL.map(|check| {
            self.check_last_duration
                .get_or_create(&ResourceCheckLabels {
                    resource: labels.clone(),
                    check: check.as_str(),
                })
                .clone()
        });
        let duration = CheckKind::ALL.map(|check| {
            self.check_duration
                .get_or_create(&TypeCheckLabels {
                    r#type: labels.kind.r#type,
                    check: check.as_str(),
                })
                .clone()
        });
        let stuck = CheckKind::ALL.map(|check| {
            self.checks_stuck
                .get_or_create(&TypeCheckLabels {
                    r#type: labels.kind.r#type,
                    check: check.as_str(),
                })
                .clone()
        });
        let restarts = self.restarts.get_or_create(&labels).clone();
        let last_transition = self.last_transition.get_or_create(&labels).clone();
        self.resources.inc();
        ResourceMetrics {
            labels,
            state,
            last_duration,
            duration,
            stuck,
            restarts,
            last_transition,
        }
    }

    /// Removes one resource's series (it left the config).
    pub fn forget(&self, labels: &ResourceLabels) {
        for state in State::ALL {
            self.resource_state.remove(&StateLabels {
                resource: labels.clone(),
                state: state.as_str(),
            });
        }
        for check in CheckKind::ALL {
            self.check_last_duration.remove(&ResourceCheckLabels {
                resource: labels.clone(),
                check: check.as_str(),
            });
            for reason in FailureReason::ALL {
                self.check_failures.remove(&FailureLabels {
                    resource: labels.clone(),
                    check: check.as_str(),
                    reason: reason.as_str(),
                });
            }
        }
        for op in Operation::ALL {
            self.operation_timeouts.remove(&OperationLabels {
                resource: labels.clone(),
                op: op.as_str(),
            });
        }
        self.restarts.remove(labels);
        self.last_transition.remove(labels);
        self.resources.dec();
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
            .get_or_create(&SkipLabels {
                r#type,
                check: check.as_str(),
            })
            .inc();
    }

    /// The Prometheus text exposition format (version 0.0.4), which `promtool check metrics`
    /// and every Prometheus version read.
    pub fn encode_text(&self) -> String {
        openmetrics_to_text(&self.encode_openmetrics())
    }

    /// The OpenMetrics text format, for scrapers that ask for it.
    pub fn encode_openmetrics(&self) -> String {
        let mut out = String::with_capacity(1 << 16);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Rewrites OpenMetrics text as Prometheus text: counter families are named with their
/// `_total` suffix in `# HELP`/`# TYPE` (OpenMetrics names the family without it), and the
/// OpenMetrics-only `# UNIT` and `# EOF` lines go.
fn openmetrics_to_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut help: Option<&str> = None;
    for line in om.lines() {
        if line.starts_with("# HELP ") {
            help = Some(line);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let suffix = if kind == "counter" { "_total" } else { "" };
            if let Some(h) = help.take() {
                let text = h
                    .strip_prefix("# HELP ")
                    .and_then(|h| h.split_once(' '))
                    .map_or("", |(_, t)| t);
                out.push_str(&format!("# HELP {name}{suffix} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name}{suffix} {kind}\n"));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// One resource's metric handles.
#[derive(Clone)]
pub struct ResourceMetrics {
    /// Its labels.
    pub labels: ResourceLabels,
    state: [Gauge; 6],
    last_duration: [FloatGauge; 2],
    duration: [Histogram; 2],
    stuck: [Gauge; 2],
    restarts: Counter,
    last_transition: FloatGauge,
}

impl ResourceMetrics {
    /// Records a transition at `unix_seconds`.
    pub fn transition(&self, from: State, to: State, unix_seconds: f64) {
        self.state[state_index(from)].set(0);
        self.state[state_index(to)].set(1);
        self.last_transition.set(unix_seconds);
    }

    /// Records a check's duration.
    pub fn check_duration(&self, check: CheckKind, seconds: f64) {
        let i = check_index(check);
        self.last_duration[i].set(seconds);
        self.duration[i].observe(seconds);
    }

    /// A check passed its timeout without returning (+1), or finally returned (-1).
    pub fn stuck(&self, check: CheckKind, delta: i64) {
        self.stuck[check_index(check)].inc_by(delta);
    }

    /// Counts a restart.
    pub fn restart(&self) {
        self.restarts.inc();
    }
}

fn state_index(s: State) -> usize {
    State::ALL
        .iter()
        .position(|x| *x == s)
        .expect("State::ALL lists every state")
}

fn check_index(c: CheckKind) -> usize {
    match c {
        CheckKind::LooksAlive => 0,
        CheckKind::IsAlive => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_with_total_in_text_format() {
        let m = Metrics::new();
        let r = m.resource(ResourceLabels {
            group: "g".into(),
            resource: "r".into(),
            kind: TypeLabel { r#type: "tcp" },
        });
        r.restart();
        r.transition(State::Offline, State::Online, 1.0);
        let text = m.encode_text();
        assert!(
            text.contains("# TYPE resmon_resource_restarts_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "resmon_resource_restarts_total{group=\"g\",resource=\"r\",type=\"tcp\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains(
            "resmon_resource_state{state=\"online\",group=\"g\",resource=\"r\",type=\"tcp\"} 1\n"
        ));
        assert!(!text.contains("# EOF"));
        m.forget(&r.labels);
        assert!(!m.encode_text().contains("resource=\"r\""));
    }
}
