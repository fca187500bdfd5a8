//! The four per-resource families (state, last check duration, restarts, last transition):
//! 10 of the ~12 series per resource, 120,000 at 10,000 resources. Kept as plain atomics with
//! each resource's label block rendered once, and written here by their own encoder, which
//! streams them in chunks: the generic label encoding of `prometheus-client` took ~45 ms for
//! them and would hold the whole text at once.

use super::{state_index, ResourceLabels};
use resmon_policies::{CheckKind, State};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

/// The per-resource families: name, kind, help. The only difference between the two formats
/// is how a counter family is named in its `# HELP`/`# TYPE` lines.
pub(super) const SERIES_FAMILIES: [(&str, &str, &str); 4] = [
    (
        "resmon_resource_state",
        "gauge",
        "Current state of each resource: 1 for the state it is in, 0 for the others.",
    ),
    (
        "resmon_check_last_duration_seconds",
        "gauge",
        "Duration of each resource's last check of each kind.",
    ),
    (
        "resmon_resource_restarts",
        "counter",
        "Restarts of each resource decided by the restart policy.",
    ),
    (
        "resmon_resource_last_transition_timestamp_seconds",
        "gauge",
        "Unix time of each resource's last state transition.",
    ),
];

/// Where the encoding of the per-resource families has got to.
#[derive(Default)]
pub(super) struct SeriesCursor {
    pub(super) family: usize,
    resource: usize,
}

impl SeriesCursor {
    /// Writes the next line or lines: a family's header, or one resource's samples of it.
    pub(super) fn write(
        &mut self,
        out: &mut String,
        series: &[Arc<ResourceSeries>],
        openmetrics: bool,
    ) {
        let (name, kind, help) = SERIES_FAMILIES[self.family];
        if self.resource == 0 {
            let suffix = if kind == "counter" && !openmetrics {
                "_total"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "# HELP {name}{suffix} {help}\n# TYPE {name}{suffix} {kind}"
            );
        }
        let Some(s) = series.get(self.resource) else {
            self.family += 1;
            self.resource = 0;
            return;
        };
        self.resource += 1;
        match self.family {
            0 => {
                let current = s.state.load(Ordering::Relaxed);
                for (i, state) in State::ALL.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "{name}{{state=\"{}\",{}}} {}",
                        state.as_str(),
                        s.labels,
                        u8::from(i == current)
                    );
                }
            }
            1 => {
                for (i, check) in CheckKind::ALL.iter().enumerate() {
                    let v = f64::from_bits(s.last_duration[i].load(Ordering::Relaxed));
                    let _ = writeln!(
                        out,
                        "{name}{{check=\"{}\",{}}} {v}",
                        check.as_str(),
                        s.labels
                    );
                }
            }
            2 => {
                let _ = writeln!(
                    out,
                    "{name}_total{{{}}} {}",
                    s.labels,
                    s.restarts.load(Ordering::Relaxed)
                );
            }
            _ => {
                let v = f64::from_bits(s.last_transition.load(Ordering::Relaxed));
                let _ = writeln!(out, "{name}{{{}}} {v}", s.labels);
            }
        }
    }
}

/// One resource's own series: atomics, and its label block rendered once.
pub struct ResourceSeries {
    /// `group="…",resource="…",type="…"`; names are validated to need no escaping.
    pub(super) labels: String,
    /// Index of the current state in [`State::ALL`].
    pub(super) state: AtomicUsize,
    /// Last check durations (f64 bits), by [`CheckKind::ALL`] order.
    pub(super) last_duration: [AtomicU64; 2],
    pub(super) restarts: AtomicU64,
    /// Unix seconds (f64 bits).
    pub(super) last_transition: AtomicU64,
}

impl ResourceSeries {
    pub(super) fn new(labels: &ResourceLabels) -> Self {
        ResourceSeries {
            labels: format!(
                "group=\"{}\",resource=\"{}\",type=\"{}\"",
                escape(&labels.group),
                escape(&labels.resource),
                labels.kind.r#type
            ),
            state: AtomicUsize::new(state_index(State::Offline)),
            last_duration: [
                AtomicU64::new(0f64.to_bits()),
                AtomicU64::new(0f64.to_bits()),
            ],
            restarts: AtomicU64::new(0),
            last_transition: AtomicU64::new(0f64.to_bits()),
        }
    }
}

/// Escapes a label value (config names never need it; this keeps the output valid regardless).
pub(super) fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
