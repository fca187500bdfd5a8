//! The checks themselves: started, polled by the worker task, timed out, stuck in a blocking
//! thread, and the failure signal.

use super::deadline::{join_failure, judge_late, panic_failure};
use super::schedule::kind_index;
use super::Worker;
use crate::events::{CheckStuck, Event, FailureSignalled, ProbeFailed};
use resmon_policies::{CheckKind, FailureReason, Input};
use resmon_probes::{Failure, Progress};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::task::JoinError;
use tokio::time::Instant;
/// A check in flight, polled by the worker task. It started `check_timeout` before its
/// deadline, which is not kept twice.
pub(super) struct Check {
    pub(super) future: Pin<Box<dyn Future<Output = Result<(), Failure>> + Send>>,
    pub(super) deadline: Instant,
    /// When the timer judges it: its deadline, or, once, a `check_timeout` after the agent
    /// reached its deadline late (see [`LATE_DEADLINE`]).
    pub(super) judged_at: Instant,
    /// When the latest poll of `future` began: a check that returns after its deadline timed
    /// out only if that poll began before the deadline (it held the thread past it); one first
    /// looked at after its deadline was late because the agent was, and what it found stands.
    pub(super) polled_at: Instant,
}

impl Check {
    pub(super) fn started(&self, check_timeout: Duration) -> Instant {
        self.deadline - check_timeout
    }
}

/// A check stuck in a blocking thread.
pub(super) struct Stuck {
    /// When the check started.
    pub(super) since: Instant,
    /// Resolves when the thread returns. Boxed, and made only when a check gets stuck: inline,
    /// its waiter would grow every worker (ten thousand of them) for a rare event.
    pub(super) returned: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// Polls the check in `slot`, turning a panic into a failure.
pub(super) fn poll_check(
    slot: &mut Option<Check>,
    task: &mut Context<'_>,
) -> Poll<Result<(), Failure>> {
    let Some(check) = slot else {
        return Poll::Pending;
    };
    check.polled_at = Instant::now();
    match std::panic::catch_unwind(AssertUnwindSafe(|| check.future.as_mut().poll(task))) {
        Ok(poll) => poll,
        Err(payload) => Poll::Ready(Err(panic_failure(payload))),
    }
}

impl Worker {
    pub(super) fn slot(&mut self, kind: CheckKind) -> &mut Option<Check> {
        match kind {
            CheckKind::LooksAlive => &mut self.looks_alive_check,
            CheckKind::IsAlive => &mut self.is_alive_check,
        }
    }

    /// Starts a check of `kind` at `now`: the time of the wake-up that starts it, read once
    /// for all it does (a clock read per use cost a tenth of the worker's own time).
    pub(super) fn start_check(
        &mut self,
        kind: CheckKind,
        scheduled: Option<Instant>,
        now: Instant,
    ) {
        if let Some(stuck) = &self.stuck[kind_index(kind)] {
            if self.progress[kind_index(kind)].blocking_in_flight() > 0 {
                self.report_stuck(kind, now - stuck.since, now);
                return;
            }
            self.unstuck(kind);
        }
        if self.slot(kind).is_some() {
            // An is_alive asked for while one is in flight: that one answers for both.
            self.cx.metrics.skipped(kind, 1);
            return;
        }
        if let Some(scheduled) = scheduled {
            self.cx
                .sink
                .metrics()
                .check_lateness((now - scheduled).as_secs_f64());
        }
        let resource = self.resource.clone();
        let progress = self.fresh_progress(kind);
        let future = Box::pin(async move {
            match kind {
                CheckKind::LooksAlive => resource.looks_alive(&progress).await,
                CheckKind::IsAlive => resource.is_alive(&progress).await,
            }
        });
        let deadline = now + self.cx.props.check_timeout;
        *self.slot(kind) = Some(Check {
            future,
            deadline,
            judged_at: deadline,
            polled_at: now,
        });
    }

    /// The progress for a new check of `kind`: the last one's, reset, unless something else
    /// holds it (a blocking thread that outlived its check, or it is the shared unused one).
    pub(super) fn fresh_progress(&mut self, kind: CheckKind) -> Arc<Progress> {
        let progress = &mut self.progress[kind_index(kind)];
        match Arc::get_mut(progress) {
            Some(only) if only.blocking_in_flight() == 0 => only.reset(),
            _ => *progress = Arc::new(Progress::default()),
        }
        progress.clone()
    }

    /// A stuck check's thread returned: the next check of its kind may start.
    pub(super) fn unstuck(&mut self, kind: CheckKind) {
        if self.stuck[kind_index(kind)].take().is_some() {
            self.cx.metrics.stuck(kind, -1);
        }
    }

    /// The previous check of this kind is still stuck: count it, and fail this one.
    pub(super) fn report_stuck(&mut self, kind: CheckKind, running_for: Duration, now: Instant) {
        CheckStuck {
            group: self.cx.group(),
            resource: self.cx.name(),
            r#type: self.cx.type_name,
            check: kind,
            running_seconds: running_for.as_secs_f64(),
        }
        .emit(&self.cx.sink);
        let failure = Failure::new(
            FailureReason::Stuck,
            format!(
                "the previous {kind} has not returned for {:.1}s",
                running_for.as_secs_f64()
            ),
        );
        self.check_failed(kind, &failure, 0.0, now);
    }

    pub(super) fn check_returned(&mut self, kind: CheckKind, outcome: Result<(), Failure>) {
        let Some(check) = self.slot(kind).take() else {
            return;
        };
        let now = Instant::now();
        self.skip_slots_passed(kind, now);
        if now > check.deadline {
            if check.polled_at <= check.deadline {
                // It blocked the worker's thread past its deadline, so the timer could not
                // fire: too late is a timeout, whatever it found.
                self.report_timeout(kind, &check, now);
                return;
            }
            // Its answer was in when first looked at, after its deadline because the agent's
            // threads were busy: the answer stands, for the agent's own lateness must not
            // restart a healthy service; the count shows the agent's overload.
            self.cx.metrics.seen_late(kind);
        }
        let elapsed = (now - check.started(self.cx.props.check_timeout)).as_secs_f64();
        self.export_certificate(kind);
        self.cx.metrics.check_duration(kind, elapsed);
        match outcome {
            // A passing check changes nothing in the policy: it is recorded, not reported, which
            // spares the group task a wake-up per check.
            Ok(()) => self.record(kind, None, elapsed, now),
            Err(failure) => self.check_failed(kind, &failure, elapsed, now),
        }
    }

    /// The deadline passed: the check is cancelled (dropped) and reported, unless the agent
    /// reached the deadline late: then it is judged once more a `check_timeout` later.
    pub(super) fn check_timed_out(&mut self, kind: CheckKind, now: Instant) {
        let timeout = self.cx.props.check_timeout;
        if let Some(check) = self.slot(kind).as_mut() {
            // What came in while the agent was away is read as the agent takes it in; an
            // answer that is in by then stands (`check_returned`), a silent server still
            // fails, one `check_timeout` later.
            if let Some(later) = judge_late(check.deadline, check.judged_at, now, timeout) {
                check.judged_at = later;
                return;
            }
        }
        if let Some(check) = self.slot(kind).take() {
            self.skip_slots_passed(kind, now);
            self.report_timeout(kind, &check, now);
        }
    }

    pub(super) fn report_timeout(&mut self, kind: CheckKind, check: &Check, now: Instant) {
        let timeout = self.cx.props.check_timeout;
        let started = check.started(timeout);
        if self.progress[kind_index(kind)].blocking_in_flight() > 0 {
            // Its blocking thread cannot be cancelled: stuck until it returns.
            let progress = self.progress[kind_index(kind)].clone();
            self.stuck[kind_index(kind)] = Some(Box::new(Stuck {
                since: started,
                returned: Box::pin(async move { progress.blocking_returned().await }),
            }));
            self.cx.metrics.stuck(kind, 1);
        }
        self.export_certificate(kind);
        self.cx.metrics.check_duration(kind, timeout.as_secs_f64());
        // The stage the check was in names the reason: connect_timeout, banner_timeout...
        let limit = format!("check_timeout {}", resmon_probes::HumanDuration(timeout));
        let failure = self.progress[kind_index(kind)].timed_out(&limit);
        self.check_failed(kind, &failure, timeout.as_secs_f64(), now);
    }

    pub(super) fn check_failed(
        &mut self,
        kind: CheckKind,
        failure: &Failure,
        elapsed: f64,
        now: Instant,
    ) {
        ProbeFailed {
            group: self.cx.group(),
            resource: self.cx.name(),
            r#type: self.cx.type_name,
            check: kind,
            reason: failure.reason,
            detail: &failure.detail,
            duration_seconds: elapsed,
            metrics: &self.cx.metrics,
        }
        .emit(&self.cx.sink);
        self.record(kind, Some(failure), elapsed, now);
        if failure.reason == FailureReason::Panic {
            // A panicking resource type is failed outright, not merely re-checked.
            self.report(Input::FailureSignalled {
                resource: self.cx.id,
                reason: FailureReason::Panic,
            });
        }
        self.report(Input::CheckCompleted {
            resource: self.cx.id,
            check: kind,
            outcome: Err(failure.reason),
        });
    }

    pub(super) fn signalled(&mut self, result: Result<Failure, JoinError>) {
        self.signal = None;
        let failure = match result {
            Ok(failure) => failure,
            Err(e) => match join_failure(e) {
                Some(failure) => failure,
                None => return,
            },
        };
        FailureSignalled {
            group: self.cx.group(),
            resource: self.cx.name(),
            r#type: self.cx.type_name,
            reason: failure.reason,
            detail: &failure.detail,
            metrics: &self.cx.metrics,
        }
        .emit(&self.cx.sink);
        self.report(Input::FailureSignalled {
            resource: self.cx.id,
            reason: failure.reason,
        });
    }
}
