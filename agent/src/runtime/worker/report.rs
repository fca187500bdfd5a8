//! What a worker tells others: inputs to its group's policy, metrics, and its status slot.

use super::schedule::kind_index;
use super::Worker;
use crate::runtime::group::GroupEvent;
use crate::status;
use resmon_policies::{CheckKind, Input};
use resmon_probes::{Failure, Progress};
use tokio::time::Instant;
impl Worker {
    pub(super) fn report(&self, input: Input) {
        let _ = self.group.send(GroupEvent::Input(input));
    }

    /// Exports the TLS certificate a check saw, also when the check failed because of it.
    pub(super) fn export_certificate(&self, kind: CheckKind) {
        self.export_from(&self.progress[kind_index(kind)]);
    }

    pub(super) fn export_from(&self, progress: &Progress) {
        if let Some((free, size)) = progress.space() {
            self.cx
                .sink
                .metrics()
                .disk_space(&self.cx.metrics.labels, free, size);
        }
        if let Some((usage, cores)) = progress.tree_usage() {
            self.cx
                .sink
                .metrics()
                .tree_usage(&self.cx.metrics.labels, &usage, cores);
        }
        if let Some(cert) = progress.certificate() {
            self.cx.sink.metrics().tls_certificate(
                &self.cx.metrics.labels,
                cert.not_before,
                cert.not_after,
            );
        }
    }

    /// Records a check's result, and the schedule as it stands.
    pub(super) fn record(
        &self,
        kind: CheckKind,
        failure: Option<&Failure>,
        elapsed: f64,
        now: Instant,
    ) {
        let unix = crate::events::unix_now();
        let mut s = status::lock(&self.cx.status);
        let c = match kind {
            CheckKind::LooksAlive => &mut s.looks_alive,
            CheckKind::IsAlive => &mut s.is_alive,
        };
        c.last_at = Some(unix);
        c.last_ok = Some(failure.is_none());
        c.last_reason = failure.map(|f| f.reason);
        c.last_detail = failure.map(|f| f.detail.clone());
        c.last_duration_seconds = Some(elapsed);
        self.write_schedule(&mut s, unix, now);
    }

    pub(super) fn publish_schedule(&self) {
        let unix = crate::events::unix_now();
        self.write_schedule(&mut status::lock(&self.cx.status), unix, Instant::now());
    }

    /// `unix` and `now` are the same moment on the two clocks.
    pub(super) fn write_schedule(&self, s: &mut status::ResourceStatus, unix: f64, now: Instant) {
        let at = |t: Instant| unix + t.saturating_duration_since(now).as_secs_f64();
        match &self.monitoring {
            Some(m) => {
                s.looks_alive.polled = m.looks_alive;
                s.looks_alive.next_at = m.looks_alive.then(|| at(m.next_looks_alive));
                s.is_alive.polled = true;
                s.is_alive.next_at = Some(at(m.next_is_alive));
            }
            None => {
                s.looks_alive.polled = false;
                s.looks_alive.next_at = None;
                s.is_alive.polled = false;
                s.is_alive.next_at = None;
            }
        }
    }
}
