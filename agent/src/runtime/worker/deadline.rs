//! A call in flight (adoption, operation) and its deadline, the rule for a deadline the agent
//! itself reached late, and what a call that panicked means.

use super::Worker;
use resmon_policies::FailureReason;
use resmon_probes::Failure;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;
/// A call in flight.
pub(super) struct Running<T> {
    pub(super) handle: JoinHandle<T>,
    pub(super) started: Instant,
    pub(super) deadline: Option<Instant>,
    /// When the timer judges it: its deadline, or, once, later (see [`judge_late`]).
    pub(super) judged_at: Option<Instant>,
}

impl<T> Running<T> {
    /// The timeout it was given.
    pub(super) fn timeout(&self) -> Option<Duration> {
        self.deadline.map(|d| d - self.started)
    }

    /// Whether its deadline, passed, is put off rather than judged now (see [`judge_late`]):
    /// by its own timeout, or `check_timeout` if that is shorter. Its answer, taken in
    /// meanwhile, ends it as usual.
    pub(super) fn put_off(&mut self, now: Instant, check_timeout: Duration) -> bool {
        let (Some(deadline), Some(judged_at), Some(timeout)) =
            (self.deadline, self.judged_at, self.timeout())
        else {
            return false;
        };
        let later = judge_late(deadline, judged_at, now, timeout.min(check_timeout));
        self.judged_at = later.or(self.judged_at);
        later.is_some()
    }
}

/// How late the agent may reach a check's deadline and still judge it at once. Later than
/// this, the agent itself was not running (stopped, its machine suspended, its thread
/// starved), and the answers its sockets received meanwhile may not have reached their checks:
/// tokio takes in at most 1,024 socket events a turn but fires every expired timer in the
/// first, so that a worker its timer wakes before tokio has taken in its socket's answer sees
/// no answer (an end-to-end test stops an agent with 1,500 checks in flight: 76-78 of them
/// failed so, every answer in).
pub(super) const LATE_DEADLINE: Duration = Duration::from_millis(100);

/// When a call whose deadline passed is judged: `None` for now, or, when the agent reached the
/// deadline over [`LATE_DEADLINE`] late and has not put it off before, `grace` from now, so that
/// what came in while the agent was away is taken in first. Checks, adoptions and operations
/// all follow it: a stopped agent's lateness must not fail the call it was waiting on.
pub(super) fn judge_late(
    deadline: Instant,
    judged_at: Instant,
    now: Instant,
    grace: Duration,
) -> Option<Instant> {
    (judged_at == deadline && now.saturating_duration_since(deadline) > LATE_DEADLINE)
        .then(|| now + grace)
}

/// `call` under `timeout`, judged by [`judge_late`]: `None` when it timed out. For calls that
/// keep their own time inside a task (the attempts of a check-only online).
pub(super) async fn within<T>(timeout: Duration, call: impl Future<Output = T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let mut judged_at = deadline;
    tokio::pin!(call);
    loop {
        tokio::select! {
            // An answer in and the timer fired in the same turn: the answer counts.
            biased;
            out = &mut call => return Some(out),
            () = tokio::time::sleep_until(judged_at) => {
                match judge_late(deadline, judged_at, Instant::now(), timeout) {
                    Some(later) => judged_at = later,
                    None => return None,
                }
            }
        }
    }
}

/// Polls what `slot` holds, if anything.
pub(super) fn poll_some<F: Future + Unpin>(
    slot: Option<&mut F>,
    task: &mut Context<'_>,
) -> Poll<F::Output> {
    match slot {
        Some(future) => Pin::new(future).poll(task),
        None => Poll::Pending,
    }
}

/// What a task's failure to finish means: a panic is the resource type's fault.
pub(super) fn join_failure(e: JoinError) -> Option<Failure> {
    if e.is_panic() {
        Some(panic_failure(e.into_panic()))
    } else {
        None // cancelled by us
    }
}

pub(super) fn panic_failure(payload: Box<dyn std::any::Any + Send>) -> Failure {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into());
    Failure::new(
        FailureReason::Panic,
        format!("the resource type panicked: {message}"),
    )
}

impl Worker {
    pub(super) fn spawn_call<T, F>(&self, deadline: Option<Duration>, call: F) -> Box<Running<T>>
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        let started = Instant::now();
        let deadline = deadline.map(|d| started + d);
        Box::new(Running {
            handle: tokio::spawn(call),
            started,
            deadline,
            judged_at: deadline,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::judge_late;
    use std::time::Duration;
    use tokio::time::Instant;

    #[test]
    fn a_deadline_reached_late_is_judged_once_more_and_only_once() {
        let deadline = Instant::now();
        let grace = Duration::from_secs(5);
        let ms = Duration::from_millis;
        // On time, or late within LATE_DEADLINE: judged now.
        assert_eq!(judge_late(deadline, deadline, deadline, grace), None);
        assert_eq!(
            judge_late(deadline, deadline, deadline + ms(100), grace),
            None
        );
        // Later: judged `grace` after the agent came back.
        let now = deadline + ms(101);
        assert_eq!(
            judge_late(deadline, deadline, now, grace),
            Some(now + grace)
        );
        // Already put off once: judged now, however late the agent is again.
        let later = now + grace + Duration::from_secs(30);
        assert_eq!(judge_late(deadline, now + grace, later, grace), None);
    }
}
