//! The handles a resource's worker holds: its series and histograms resolved once, so that
//! recording a check is an atomic add, not a label lookup.

use super::labels::{ResourceLabels, TypeCheckLabels};
use super::series::ResourceSeries;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use resmon_policies::{CheckKind, State};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// One resource's metric handles.
#[derive(Clone)]
pub struct ResourceMetrics {
    /// Its labels.
    pub labels: ResourceLabels,
    pub(super) series: Arc<ResourceSeries>,
    pub(super) duration: [Histogram; 2],
    pub(super) stuck: [Gauge; 2],
    pub(super) seen_late: [Counter; 2],
    pub(super) skipped: [Counter; 2],
}

impl ResourceMetrics {
    /// Records a transition at `unix_seconds`.
    pub fn transition(&self, to: State, unix_seconds: f64) {
        self.series.state.store(state_index(to), Ordering::Relaxed);
        self.series
            .last_transition
            .store(unix_seconds.to_bits(), Ordering::Relaxed);
    }

    /// Records a check's duration.
    pub fn check_duration(&self, check: CheckKind, seconds: f64) {
        let i = check_index(check);
        self.series.last_duration[i].store(seconds.to_bits(), Ordering::Relaxed);
        self.duration[i].observe(seconds);
    }

    /// A check passed its timeout without returning (+1), or finally returned (-1).
    pub fn stuck(&self, check: CheckKind, delta: i64) {
        self.stuck[check_index(check)].inc_by(delta);
    }

    /// Counts a check whose answer the busy agent first looked at after its deadline.
    pub fn seen_late(&self, check: CheckKind) {
        self.seen_late[check_index(check)].inc();
    }

    /// Counts `slots` scheduled checks of this resource that were skipped.
    pub fn skipped(&self, check: CheckKind, slots: u64) {
        self.skipped[check_index(check)].inc_by(slots);
    }

    /// Counts a restart.
    pub fn restart(&self) {
        self.series.restarts.fetch_add(1, Ordering::Relaxed);
    }
}

/// The series of a type's two checks in `family`, resolved once per resource: the families'
/// lookups (a lock and a hash) stay off the path of every check.
pub(super) fn per_check<M, C>(
    family: &Family<TypeCheckLabels, M, C>,
    r#type: &'static str,
) -> [M; 2]
where
    M: Clone,
    C: prometheus_client::metrics::family::MetricConstructor<M>,
{
    CheckKind::ALL.map(|check| {
        family
            .get_or_create(&TypeCheckLabels {
                r#type,
                check: check.as_str(),
            })
            .clone()
    })
}

pub(super) fn state_index(s: State) -> usize {
    State::ALL
        .iter()
        .position(|x| *x == s)
        .expect("State::ALL lists every state")
}

pub(super) fn check_index(c: CheckKind) -> usize {
    match c {
        CheckKind::LooksAlive => 0,
        CheckKind::IsAlive => 1,
    }
}
