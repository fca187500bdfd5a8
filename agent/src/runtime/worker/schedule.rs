//! When checks run: a fixed-rate schedule per kind, its phase derived from the resource's name,
//! and what a check too late for its slot does.

use super::Worker;
use resmon_policies::CheckKind;
use std::hash::{Hash, Hasher};
use std::time::Duration;
use tokio::time::Instant;

/// A check this late is off its schedule, whatever its interval: the agent was stopped or
/// starved, not merely busy (its checks run a few milliseconds late at 10,000 a second). With
/// a 60 s interval, a 30 s stall would otherwise bring half the resources' checks at once.
const PUT_OFF_AFTER: Duration = Duration::from_secs(1);

pub(super) struct Monitoring {
    pub(super) looks_alive: bool,
    pub(super) next_looks_alive: Instant,
    pub(super) next_is_alive: Instant,
    /// Whether the last due check of each kind ([`CheckKind::ALL`] order) was put off to its
    /// next slot (see [`Worker::start_due_checks`]); a check is put off at most once in a row.
    pub(super) put_off: [bool; 2],
}

pub(super) fn kind_index(kind: CheckKind) -> usize {
    match kind {
        CheckKind::LooksAlive => 0,
        CheckKind::IsAlive => 1,
    }
}

/// Where in its interval a resource's checks fall: a hash of its identity, so schedules are
/// spread evenly and stay put across agent restarts.
pub(crate) fn phase(group: &str, resource: &str, kind: CheckKind, interval: Duration) -> Duration {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (group, resource, kind.as_str()).hash(&mut h);
    let micros = interval.as_micros().max(1) as u64;
    Duration::from_micros(h.finish() % micros)
}

/// Whether a check this `late` is off its schedule (see [`Worker::start_due_checks`]).
pub(super) fn off_schedule(late: Duration, interval: Duration) -> bool {
    late >= interval.min(PUT_OFF_AFTER)
}

/// The next slot of a fixed-rate schedule after `now`, and how many slots from `scheduled`
/// on it steps over (`scheduled` itself included): late checks are not bunched up.
pub(super) fn advance(scheduled: Instant, interval: Duration, now: Instant) -> (Instant, u64) {
    let mut next = scheduled + interval;
    let mut stepped = 1;
    if next <= now {
        let behind = now - next;
        let skipped = behind.as_nanos() / interval.as_nanos().max(1) + 1;
        next += interval * skipped as u32;
        stepped += skipped as u64;
    }
    (next, stepped)
}

impl Worker {
    pub(super) fn start_monitoring(&mut self, looks_alive: bool) {
        let now = Instant::now();
        self.monitoring = Some(Monitoring {
            looks_alive,
            next_looks_alive: now
                + self.phase(CheckKind::LooksAlive, self.cx.props.looks_alive_interval),
            next_is_alive: now + self.phase(CheckKind::IsAlive, self.cx.props.is_alive_interval),
            put_off: [false; 2],
        });
        if self.resource.provides_failure_signal() {
            let resource = self.resource.clone();
            self.signal = Some(tokio::spawn(async move { resource.failure().await }));
        }
        self.publish_schedule();
    }

    pub(super) fn stop_monitoring(&mut self) {
        self.monitoring = None;
        if let Some(signal) = self.signal.take() {
            signal.abort();
        }
        // Dropping a check cancels it.
        self.looks_alive_check = None;
        self.is_alive_check = None;
        self.publish_schedule();
    }

    pub(super) fn phase(&self, kind: CheckKind, interval: Duration) -> Duration {
        phase(self.cx.group(), self.cx.name(), kind, interval)
    }

    /// The next slot of a check that is not in flight. A kind whose check is in flight has no
    /// wake-up for its slots: they are skipped, and counted when the check ends
    /// ([`Worker::skip_slots_passed`]). A wake-up at each such slot polled the check in flight
    /// for nothing, its connection's state cold: at saturation, where HTTP checks outlast
    /// their interval, there were more of those wake-ups than checks.
    pub(super) fn next_check(&self) -> Option<Instant> {
        let m = self.monitoring.as_ref()?;
        let [looks_alive, is_alive] = self.waiting_for_slot();
        let looks_alive = looks_alive.then_some(m.next_looks_alive);
        let is_alive = is_alive.then_some(m.next_is_alive);
        looks_alive.into_iter().chain(is_alive).min()
    }

    /// Which kinds ([`CheckKind::ALL`] order) wait for their next slot: monitored, polled, and
    /// with no check in flight.
    pub(super) fn waiting_for_slot(&self) -> [bool; 2] {
        let Some(m) = &self.monitoring else {
            return [false, false];
        };
        [
            m.looks_alive && self.looks_alive_check.is_none(),
            self.is_alive_check.is_none(),
        ]
    }

    /// A check of `kind` has ended at `now`: the slots that came while it was in flight are
    /// skipped, and its next slot is the first after `now`.
    pub(super) fn skip_slots_passed(&mut self, kind: CheckKind, now: Instant) {
        let Some(m) = self.monitoring.as_mut() else {
            return;
        };
        let (next, interval) = match kind {
            CheckKind::LooksAlive => (&mut m.next_looks_alive, self.cx.props.looks_alive_interval),
            CheckKind::IsAlive => (&mut m.next_is_alive, self.cx.props.is_alive_interval),
        };
        if *next > now {
            return;
        }
        let (caught_up, skipped) = advance(*next, interval, now);
        *next = caught_up;
        self.cx.metrics.skipped(kind, skipped);
    }

    /// Starts the checks that are due. A check late by a whole interval, or by
    /// [`PUT_OFF_AFTER`] (the agent was stopped, its machine suspended, its thread starved), is
    /// not run at once but put off to its next slot: every resource missed its slot together,
    /// and run at once, 10,000 HTTP checks held 300 MB of connections in one burst; on their
    /// slots they stay spread over the interval, as before the stall. Put off once at most, so
    /// that an agent that cannot keep up still checks every resource; each put-off check
    /// counts as skipped.
    pub(super) fn start_due_checks(&mut self, now: Instant) {
        let waiting = self.waiting_for_slot();
        let Some(m) = self.monitoring.as_mut() else {
            return;
        };
        let props = &self.cx.props;
        let mut due = [None, None];
        let schedules = [
            (
                CheckKind::LooksAlive,
                &mut m.next_looks_alive,
                props.looks_alive_interval,
            ),
            (
                CheckKind::IsAlive,
                &mut m.next_is_alive,
                props.is_alive_interval,
            ),
        ];
        for (i, (kind, next, interval)) in schedules.into_iter().enumerate() {
            if !waiting[i] || *next > now {
                continue;
            }
            let scheduled = *next;
            (*next, _) = advance(scheduled, interval, now);
            m.put_off[i] = !m.put_off[i] && off_schedule(now - scheduled, interval);
            if m.put_off[i] {
                self.cx.metrics.skipped(kind, 1);
            } else {
                due[i] = Some((kind, scheduled));
            }
        }
        if due == [None, None] {
            // All put off: no check will record the new schedule, so publish it here.
            self.publish_schedule();
        }
        // The status shows the new schedule once the check is recorded: one lock per check.
        for (kind, scheduled) in due.into_iter().flatten() {
            self.start_check(kind, Some(scheduled), now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{advance, off_schedule, phase};
    use resmon_policies::CheckKind;
    use std::time::Duration;
    use tokio::time::Instant;

    #[test]
    fn ten_thousand_resources_do_not_fire_in_the_same_millisecond() {
        let interval = Duration::from_secs(1);
        let mut per_ms = vec![0u32; 1000];
        for i in 0..10_000 {
            let p = phase("g", &format!("r{i}"), CheckKind::IsAlive, interval);
            assert!(p < interval);
            per_ms[p.as_millis() as usize] += 1;
        }
        // 10 per millisecond on average; a uniform spread stays well under 30 in any one.
        let busiest = *per_ms.iter().max().unwrap();
        assert!(busiest < 30, "{busiest} checks share one millisecond");
        assert!(
            per_ms.iter().filter(|&&n| n == 0).count() < 5,
            "the spread leaves holes"
        );
    }

    #[test]
    fn a_check_a_whole_interval_or_a_second_late_is_off_its_schedule() {
        let ms = Duration::from_millis;
        // A busy agent's few milliseconds: on schedule.
        assert!(!off_schedule(ms(5), ms(1000)));
        assert!(!off_schedule(ms(99), ms(100)));
        // A whole interval missed.
        assert!(off_schedule(ms(100), ms(100)));
        assert!(off_schedule(ms(12_000), ms(1000)));
        // A long interval: a second late is a stall, not business.
        assert!(!off_schedule(ms(900), ms(60_000)));
        assert!(off_schedule(ms(1000), ms(60_000)));
        assert!(off_schedule(ms(30_000), ms(60_000)));
    }

    #[test]
    fn a_late_schedule_skips_to_the_next_future_slot() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        assert_eq!(advance(t0, s, t0), (t0 + s, 1));
        // Slots 0 to 3 s stepped over.
        assert_eq!(
            advance(t0, s, t0 + Duration::from_millis(3500)),
            (t0 + Duration::from_secs(4), 4)
        );
        assert_eq!(
            advance(t0, s, t0 + Duration::from_secs(2)),
            (t0 + Duration::from_secs(3), 3)
        );
    }
}
