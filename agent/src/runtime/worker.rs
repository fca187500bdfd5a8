//! One task per resource: the resource monitor's wrapper threads in tokio form.
//!
//! Every call into the resource type is raced against its deadline (`check_timeout`,
//! `pending_timeout`); an elapsed deadline cancels the call and is reported as
//! [`FailureReason::Timeout`] (or the stage's own reason, such as `banner_timeout`), and a panic
//! fails only this resource (reason `panic`). Operations and adoption run on a task of their
//! own. Checks, ten thousand a second at scale, are polled by the worker task itself: a task per
//! check costs a spawn, an allocation and a wake-up across tasks each time. A check whose
//! blocking thread (statvfs on a dead NFS mount) is still in the kernel after its deadline is
//! *stuck*: it is counted, the next check of that kind is not started while it lasts, and each
//! skipped check reports [`FailureReason::Stuck`], as Exres.dll's wrapper threads report a hung
//! IsAlive. A resource type that blocks the runtime's
//! own thread is a bug the runtime cannot preempt: its check is reported `timeout` when it
//! returns.
//!
//! Checks run on a fixed-rate schedule whose phase is derived from the resource's name, so
//! 10,000 resources with the same interval are spread over the whole interval instead of
//! firing in the same millisecond. Starts (adoption and `online`) have no schedule to spread
//! them: they pass the agent's start gate (`max_parallel_starts`), so that 10,000 resources
//! adopted at once do not hold 10,000 connections and their buffers at the same moment.

use super::group::GroupEvent;
use super::threads::CheckThreads;
use super::ResourceContext;
use crate::events::{
    CheckStuck, Event, FailureSignalled, OperationFailed, OperationTimedOut, ProbeFailed,
};
use crate::status;
use resmon_policies::{CheckKind, FailureReason, Input, Operation};
use resmon_probes::{Failure, Progress, Resource};
use std::collections::VecDeque;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{mpsc, AcquireError, OwnedSemaphorePermit, TryAcquireError};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;

/// A check this late is off its schedule, whatever its interval: the agent was stopped or
/// starved, not merely busy (its checks run a few milliseconds late at 10,000 a second). With
/// a 60 s interval, a 30 s stall would otherwise bring half the resources' checks at once.
const PUT_OFF_AFTER: Duration = Duration::from_secs(1);

/// What the group task asks of a worker.
#[derive(Debug)]
pub(crate) enum WorkerCommand {
    /// Run an operation under `pending_timeout`.
    Run(Operation),
    /// Start polling; `looks_alive` says whether the cheap check is polled too.
    Monitor { looks_alive: bool },
    /// Stop polling.
    Unmonitor,
    /// Run `is_alive` now.
    RunIsAlive,
}

/// The group task's end of a worker; dropping it ends the worker.
pub(crate) struct WorkerHandle {
    cx: Arc<ResourceContext>,
}

impl WorkerHandle {
    pub(crate) fn send(&self, command: WorkerCommand) {
        self.cx.commands.send(command);
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.cx.commands.close();
    }
}

/// The group's commands to one worker, kept in the resource's context rather than in a channel
/// of its own. The worker looks for commands at every wake-up, several per check and ten
/// thousand checks a second, and a channel's shared state and queue node were two more cache
/// lines to fetch each time, from cold memory (a tokio channel would add a block of 32 slots,
/// half a kilobyte per resource). Commands are rare; the flag is what the worker reads.
#[derive(Default)]
pub(crate) struct Mailbox {
    /// Whether the queue holds a command or the mailbox is closed; written under the queue's
    /// lock, so that it never says "empty" of a queue that is not.
    pending: AtomicBool,
    closed: AtomicBool,
    queue: Mutex<VecDeque<WorkerCommand>>,
    waker: futures::task::AtomicWaker,
}

impl Mailbox {
    fn queue(&self) -> MutexGuard<'_, VecDeque<WorkerCommand>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, command: WorkerCommand) {
        let mut queue = self.queue();
        queue.push_back(command);
        self.pending.store(true, Ordering::Release);
        drop(queue);
        self.waker.wake();
    }

    /// Ends the worker once it has taken the commands already sent.
    fn close(&self) {
        let queue = self.queue();
        self.closed.store(true, Ordering::Release);
        self.pending.store(true, Ordering::Release);
        drop(queue);
        self.waker.wake();
    }

    /// The next command; `None` once closed and drained.
    fn poll_recv(&self, task: &mut Context<'_>) -> Poll<Option<WorkerCommand>> {
        if !self.pending.load(Ordering::Acquire) {
            self.waker.register(task.waker());
            // A command sent before the registration is seen here; one after, wakes.
            if !self.pending.load(Ordering::Acquire) {
                return Poll::Pending;
            }
        }
        let mut queue = self.queue();
        let command = queue.pop_front();
        if queue.is_empty() && !self.closed.load(Ordering::Acquire) {
            self.pending.store(false, Ordering::Release);
        }
        Poll::Ready(command)
    }
}

/// A call in flight.
struct Running<T> {
    handle: JoinHandle<T>,
    started: Instant,
    deadline: Option<Instant>,
    /// When the timer judges it: its deadline, or, once, later (see [`judge_late`]).
    judged_at: Option<Instant>,
}

impl<T> Running<T> {
    /// The timeout it was given.
    fn timeout(&self) -> Option<Duration> {
        self.deadline.map(|d| d - self.started)
    }

    /// Whether its deadline, passed, is put off rather than judged now (see [`judge_late`]):
    /// by its own timeout, or `check_timeout` if that is shorter. Its answer, taken in
    /// meanwhile, ends it as usual.
    fn put_off(&mut self, now: Instant, check_timeout: Duration) -> bool {
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

/// A start waiting for its turn at the start gate; its deadline starts with the call.
struct Queued {
    start: Start,
    permit: Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>,
}

/// The calls that pass the start gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    Adopt,
    Online,
}

/// How late the agent may reach a check's deadline and still judge it at once. Later than
/// this, the agent itself was not running (stopped, its machine suspended, its thread
/// starved), and the answers its sockets received meanwhile may not have reached their checks:
/// tokio takes in at most 1,024 socket events a turn but fires every expired timer in the
/// first, so that a worker its timer wakes before tokio has taken in its socket's answer sees
/// no answer (an end-to-end test stops an agent with 1,500 checks in flight: 76-78 of them
/// failed so, every answer in).
const LATE_DEADLINE: Duration = Duration::from_millis(100);

/// When a call whose deadline passed is judged: `None` for now, or, when the agent reached the
/// deadline over [`LATE_DEADLINE`] late and has not put it off before, `grace` from now, so that
/// what came in while the agent was away is taken in first. Checks, adoptions and operations
/// all follow it: a stopped agent's lateness must not fail the call it was waiting on.
fn judge_late(
    deadline: Instant,
    judged_at: Instant,
    now: Instant,
    grace: Duration,
) -> Option<Instant> {
    (judged_at == deadline && now.saturating_duration_since(deadline) > LATE_DEADLINE)
        .then(|| now + grace)
}

/// A check in flight, polled by the worker task. It started `check_timeout` before its
/// deadline, which is not kept twice.
struct Check {
    future: Pin<Box<dyn Future<Output = Result<(), Failure>> + Send>>,
    deadline: Instant,
    /// When the timer judges it: its deadline, or, once, a `check_timeout` after the agent
    /// reached its deadline late (see [`LATE_DEADLINE`]).
    judged_at: Instant,
    /// When the latest poll of `future` began: a check that returns after its deadline timed
    /// out only if that poll began before the deadline (it held the thread past it); one first
    /// looked at after its deadline was late because the agent was, and what it found stands.
    polled_at: Instant,
}

impl Check {
    fn started(&self, check_timeout: Duration) -> Instant {
        self.deadline - check_timeout
    }
}

struct Monitoring {
    looks_alive: bool,
    next_looks_alive: Instant,
    next_is_alive: Instant,
    /// Whether the last due check of each kind ([`CheckKind::ALL`] order) was put off to its
    /// next slot (see [`Worker::start_due_checks`]); a check is put off at most once in a row.
    put_off: [bool; 2],
}

/// Every field is read at each of the worker's wake-ups, several per check, ten thousand
/// checks a second, and each from cold memory: what only operations, starts and hung
/// filesystems use is boxed, so that its absence costs a word and the whole worker a few cache
/// lines instead of nine.
struct Worker {
    cx: Arc<ResourceContext>,
    resource: Arc<dyn Resource>,
    group: mpsc::UnboundedSender<GroupEvent>,
    monitoring: Option<Monitoring>,
    looks_alive_check: Option<Check>,
    is_alive_check: Option<Check>,
    /// What the check in flight of each kind has got to, by [`CheckKind::ALL`] order. Until
    /// the first check of a kind, the agent's shared unused record.
    progress: [Arc<Progress>; 2],
    /// A timed-out check whose blocking thread is still in the kernel (a hung filesystem),
    /// by [`CheckKind::ALL`] order. Stuck until the thread returns.
    stuck: [Option<Box<Stuck>>; 2],
    operation: Option<Box<Running<Result<(), Failure>>>>,
    /// Which operation `operation` runs.
    operation_kind: Operation,
    /// What the operation in flight has got to (the shared unused record before the first).
    operation_progress: Arc<Progress>,
    adoption: Option<Box<Running<Result<bool, Failure>>>>,
    /// A start waiting at the gate.
    queued: Option<Box<Queued>>,
    signal: Option<JoinHandle<Failure>>,
}

/// Starts a resource's worker; it first tries to adopt a surviving instance and reports
/// [`GroupEvent::Adopted`].
pub(crate) fn spawn(
    cx: Arc<ResourceContext>,
    resource: Arc<dyn Resource>,
    group: mpsc::UnboundedSender<GroupEvent>,
    unused_progress: &Arc<Progress>,
    check_threads: &CheckThreads,
) -> WorkerHandle {
    let handle = WorkerHandle { cx: cx.clone() };
    let mut worker = Worker {
        cx,
        resource,
        group,
        monitoring: None,
        looks_alive_check: None,
        is_alive_check: None,
        progress: [unused_progress.clone(), unused_progress.clone()],
        stuck: [None, None],
        operation: None,
        operation_kind: Operation::Online,
        operation_progress: unused_progress.clone(),
        adoption: None,
        queued: None,
        signal: None,
    };
    check_threads.spawn(async move {
        worker.start(Start::Adopt);
        worker.run().await;
    });
    handle
}

/// What woke the worker: one event, handled with the worker to itself.
enum Wake {
    CheckReturned(CheckKind, Result<(), Failure>),
    Timer,
    Command(Option<WorkerCommand>),
    OperationReturned(Result<Result<(), Failure>, JoinError>),
    AdoptionReturned(Result<Result<bool, Failure>, JoinError>),
    Admitted(Result<OwnedSemaphorePermit, AcquireError>),
    Unstuck(CheckKind),
    Signalled(Result<Failure, JoinError>),
}

/// Polls what `slot` holds, if anything.
fn poll_some<F: Future + Unpin>(slot: Option<&mut F>, task: &mut Context<'_>) -> Poll<F::Output> {
    match slot {
        Some(future) => Pin::new(future).poll(task),
        None => Poll::Pending,
    }
}

/// Polls the check in `slot`, turning a panic into a failure.
fn poll_check(slot: &mut Option<Check>, task: &mut Context<'_>) -> Poll<Result<(), Failure>> {
    let Some(check) = slot else {
        return Poll::Pending;
    };
    check.polled_at = Instant::now();
    match std::panic::catch_unwind(AssertUnwindSafe(|| check.future.as_mut().poll(task))) {
        Ok(poll) => poll,
        Err(payload) => Poll::Ready(Err(panic_failure(payload))),
    }
}

/// A check stuck in a blocking thread.
struct Stuck {
    /// When the check started.
    since: Instant,
    /// Resolves when the thread returns. Boxed, and made only when a check gets stuck: inline,
    /// its waiter would grow every worker (ten thousand of them) for a rare event.
    returned: Pin<Box<dyn Future<Output = ()> + Send>>,
}

/// What a task's failure to finish means: a panic is the resource type's fault.
fn join_failure(e: JoinError) -> Option<Failure> {
    if e.is_panic() {
        Some(panic_failure(e.into_panic()))
    } else {
        None // cancelled by us
    }
}

fn panic_failure(payload: Box<dyn std::any::Any + Send>) -> Failure {
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
    async fn run(&mut self) {
        // One timer for every deadline and schedule of this resource, reset rather than
        // re-created: a timer registration per loop turn costs more than the check itself.
        let timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(timer);
        loop {
            let wake = self.next_wake();
            if let Some(at) = wake {
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
            }
            let woken =
                std::future::poll_fn(|task| self.poll_wake(timer.as_mut(), wake.is_some(), task))
                    .await;
            match woken {
                Wake::CheckReturned(kind, result) => self.check_returned(kind, result),
                Wake::Timer => self.on_timer(Instant::now()),
                Wake::Command(Some(command)) => self.command(command),
                Wake::Command(None) => break,
                Wake::OperationReturned(result) => self.operation_returned(result),
                Wake::AdoptionReturned(result) => self.adoption_returned(result),
                Wake::Admitted(permit) => self.admitted(permit),
                Wake::Unstuck(kind) => self.unstuck(kind),
                Wake::Signalled(result) => self.signalled(result),
            }
        }
        // The group let go of this resource (agent exit, reload): stop watching, touch nothing.
        // (Checks in flight are dropped with the worker.)
        if let Some(running) = self.operation.take() {
            running.handle.abort();
        }
        if let Some(running) = self.adoption.take() {
            running.handle.abort();
        }
        if let Some(signal) = self.signal.take() {
            signal.abort();
        }
    }

    /// The first thing that is ready, in a fixed order, polled in place. Not `select!`: that
    /// builds a future per branch at every turn, ten of them, and writes them to the worker's
    /// task, which at ten thousand checks a second is cold memory each time. The fixed order
    /// also spares drawing a random start at every wake-up; none can starve the others, as
    /// each is a single event that changes the worker's state. Checks come before the timer
    /// so that a check whose answer is in is looked at before its deadline's timer, late in
    /// the same wake-up, can fail it.
    fn poll_wake(
        &mut self,
        timer: Pin<&mut tokio::time::Sleep>,
        timer_set: bool,
        task: &mut Context<'_>,
    ) -> Poll<Wake> {
        if let Poll::Ready(result) = poll_check(&mut self.looks_alive_check, task) {
            return Poll::Ready(Wake::CheckReturned(CheckKind::LooksAlive, result));
        }
        if let Poll::Ready(result) = poll_check(&mut self.is_alive_check, task) {
            return Poll::Ready(Wake::CheckReturned(CheckKind::IsAlive, result));
        }
        if timer_set && timer.poll(task).is_ready() {
            return Poll::Ready(Wake::Timer);
        }
        if let Poll::Ready(command) = self.cx.commands.poll_recv(task) {
            return Poll::Ready(Wake::Command(command));
        }
        if let Poll::Ready(result) = poll_some(self.operation.as_mut().map(|r| &mut r.handle), task)
        {
            return Poll::Ready(Wake::OperationReturned(result));
        }
        if let Poll::Ready(result) = poll_some(self.adoption.as_mut().map(|r| &mut r.handle), task)
        {
            return Poll::Ready(Wake::AdoptionReturned(result));
        }
        if let Poll::Ready(permit) = poll_some(self.queued.as_mut().map(|q| &mut q.permit), task) {
            return Poll::Ready(Wake::Admitted(permit));
        }
        for kind in CheckKind::ALL {
            let stuck = self.stuck[kind_index(kind)].as_mut();
            if poll_some(stuck.map(|s| &mut s.returned), task).is_ready() {
                return Poll::Ready(Wake::Unstuck(kind));
            }
        }
        if let Poll::Ready(result) = poll_some(self.signal.as_mut(), task) {
            return Poll::Ready(Wake::Signalled(result));
        }
        Poll::Pending
    }

    /// The earliest deadline or scheduled check, if any.
    fn next_wake(&self) -> Option<Instant> {
        [
            self.looks_alive_check.as_ref().map(|c| c.judged_at),
            self.is_alive_check.as_ref().map(|c| c.judged_at),
            self.operation.as_ref().and_then(|r| r.judged_at),
            self.adoption.as_ref().and_then(|r| r.judged_at),
            self.next_check(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Handles every deadline that has passed and starts the checks that are due.
    fn on_timer(&mut self, now: Instant) {
        let passed = |d: Option<Instant>| d.is_some_and(|d| d <= now);
        if passed(self.adoption.as_ref().and_then(|r| r.judged_at)) {
            let check_timeout = self.cx.props.check_timeout;
            if !self
                .adoption
                .as_mut()
                .is_some_and(|r| r.put_off(now, check_timeout))
            {
                self.adoption_timed_out();
            }
        }
        if passed(self.operation.as_ref().and_then(|r| r.judged_at)) {
            let check_timeout = self.cx.props.check_timeout;
            if !self
                .operation
                .as_mut()
                .is_some_and(|r| r.put_off(now, check_timeout))
            {
                self.operation_timed_out();
            }
        }
        if passed(self.looks_alive_check.as_ref().map(|c| c.judged_at)) {
            self.check_timed_out(CheckKind::LooksAlive, now);
        }
        if passed(self.is_alive_check.as_ref().map(|c| c.judged_at)) {
            self.check_timed_out(CheckKind::IsAlive, now);
        }
        if passed(self.next_check()) {
            self.start_due_checks(now);
        }
    }

    fn report(&self, input: Input) {
        let _ = self.group.send(GroupEvent::Input(input));
    }

    fn spawn_call<T, F>(&self, deadline: Option<Duration>, call: F) -> Box<Running<T>>
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

    fn command(&mut self, command: WorkerCommand) {
        match command {
            WorkerCommand::Run(Operation::Online) => self.start(Start::Online),
            WorkerCommand::Run(op) => self.start_operation(op, None),
            WorkerCommand::Monitor { looks_alive } => self.start_monitoring(looks_alive),
            WorkerCommand::Unmonitor => self.stop_monitoring(),
            WorkerCommand::RunIsAlive => {
                if self.monitoring.is_some() {
                    self.start_check(CheckKind::IsAlive, None, Instant::now());
                }
            }
        }
    }

    // --- the start gate -------------------------------------------------------------------

    /// Starts `start` now if the gate has room, else queues it (a later start replaces it).
    fn start(&mut self, start: Start) {
        self.unqueue();
        match self.cx.start_gate.clone().try_acquire_owned() {
            Ok(permit) => self.begin(start, Some(permit)),
            Err(TryAcquireError::NoPermits) => {
                self.queued = Some(Box::new(Queued {
                    start,
                    permit: Box::pin(self.cx.start_gate.clone().acquire_owned()),
                }))
            }
            // The gate is never closed; were it, starting ungated beats never starting.
            Err(TryAcquireError::Closed) => self.begin(start, None),
        }
    }

    /// A start still waiting at the gate never began: whatever comes next replaces it. The
    /// group waits for every adoption's answer, so a replaced one answers "not found".
    fn unqueue(&mut self) {
        if let Some(queued) = self.queued.take() {
            if queued.start == Start::Adopt {
                let _ = self.group.send(GroupEvent::Adopted {
                    resource: self.cx.id,
                    alive: false,
                });
            }
        }
    }

    fn admitted(&mut self, permit: Result<OwnedSemaphorePermit, AcquireError>) {
        let Some(queued) = self.queued.take() else {
            return;
        };
        self.begin(queued.start, permit.ok());
    }

    /// Runs `start`, holding `permit` (none only if the gate were ever closed).
    fn begin(&mut self, start: Start, permit: Option<OwnedSemaphorePermit>) {
        match start {
            Start::Adopt => self.start_adoption(permit),
            Start::Online => self.start_operation(Operation::Online, permit),
        }
    }

    // --- adoption -------------------------------------------------------------------------

    /// The permit is held by the call and given back when it ends or is abandoned.
    fn start_adoption(&mut self, permit: Option<OwnedSemaphorePermit>) {
        let resource = self.resource.clone();
        self.adoption = Some(
            self.spawn_call(Some(self.cx.props.check_timeout), async move {
                let _permit = permit;
                resource.adopt().await
            }),
        );
    }

    fn adoption_returned(&mut self, result: Result<Result<bool, Failure>, JoinError>) {
        if self.adoption.take().is_none() {
            return;
        }
        let alive = matches!(result, Ok(Ok(true)));
        let _ = self.group.send(GroupEvent::Adopted {
            resource: self.cx.id,
            alive,
        });
    }

    fn adoption_timed_out(&mut self) {
        if let Some(running) = self.adoption.take() {
            running.handle.abort();
        }
        let _ = self.group.send(GroupEvent::Adopted {
            resource: self.cx.id,
            alive: false,
        });
    }

    // --- operations -----------------------------------------------------------------------

    fn start_operation(&mut self, op: Operation, permit: Option<OwnedSemaphorePermit>) {
        self.unqueue();
        if let Some(running) = self.operation.take() {
            // The policy never overlaps operations; a stray one is stopped rather than raced.
            let previous = self.operation_kind;
            tracing::warn!(group = %self.cx.group(), resource = %self.cx.name(), %previous, next = %op, "operation replaced");
            running.handle.abort();
        }
        let resource = self.resource.clone();
        let progress = Arc::new(Progress::default());
        self.operation_progress = progress.clone();
        let call = async move {
            let _permit = permit;
            match op {
                Operation::Online => resource.online(&progress).await,
                Operation::Offline => resource.offline().await,
                Operation::Terminate => resource.terminate().await,
            }
        };
        self.operation = Some(self.spawn_call(self.cx.props.pending_timeout.duration(), call));
        self.operation_kind = op;
    }

    fn operation_returned(&mut self, result: Result<Result<(), Failure>, JoinError>) {
        let Some(running) = self.operation.take() else {
            return;
        };
        let op = self.operation_kind;
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(e) => match join_failure(e) {
                Some(failure) => Err(failure),
                None => return,
            },
        };
        self.export_from(&self.operation_progress);
        let elapsed = running.started.elapsed().as_secs_f64();
        self.cx
            .sink
            .metrics()
            .operation_duration(self.cx.type_name, op, elapsed);
        if let Err(failure) = &outcome {
            OperationFailed {
                group: self.cx.group(),
                resource: self.cx.name(),
                op,
                reason: failure.reason,
                detail: &failure.detail,
            }
            .emit(&self.cx.sink);
        }
        self.report(Input::OperationCompleted {
            resource: self.cx.id,
            operation: op,
            outcome: outcome.map_err(|f| f.reason),
        });
    }

    fn operation_timed_out(&mut self) {
        let Some(running) = self.operation.take() else {
            return;
        };
        let op = self.operation_kind;
        running.handle.abort();
        self.export_from(&self.operation_progress);
        // The configured timeout, not the time it ran: that is longer when the agent was late.
        let timeout = running
            .timeout()
            .unwrap_or_else(|| running.started.elapsed());
        let limit = format!("pending_timeout {}", resmon_probes::HumanDuration(timeout));
        OperationTimedOut {
            group: self.cx.group(),
            resource: self.cx.name(),
            op,
            timeout_seconds: timeout.as_secs_f64(),
            detail: &self.operation_progress.timed_out(&limit).detail,
            metrics: &self.cx.metrics,
        }
        .emit(&self.cx.sink);
        self.report(Input::OperationTimedOut {
            resource: self.cx.id,
            operation: op,
        });
    }

    // --- monitoring -----------------------------------------------------------------------

    fn start_monitoring(&mut self, looks_alive: bool) {
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

    fn stop_monitoring(&mut self) {
        self.monitoring = None;
        if let Some(signal) = self.signal.take() {
            signal.abort();
        }
        // Dropping a check cancels it.
        self.looks_alive_check = None;
        self.is_alive_check = None;
        self.publish_schedule();
    }

    fn phase(&self, kind: CheckKind, interval: Duration) -> Duration {
        phase(self.cx.group(), self.cx.name(), kind, interval)
    }

    /// The next slot of a check that is not in flight. A kind whose check is in flight has no
    /// wake-up for its slots: they are skipped, and counted when the check ends
    /// ([`Worker::skip_slots_passed`]). A wake-up at each such slot polled the check in flight
    /// for nothing, its connection's state cold: at saturation, where HTTP checks outlast
    /// their interval, there were more of those wake-ups than checks.
    fn next_check(&self) -> Option<Instant> {
        let m = self.monitoring.as_ref()?;
        let [looks_alive, is_alive] = self.waiting_for_slot();
        let looks_alive = looks_alive.then_some(m.next_looks_alive);
        let is_alive = is_alive.then_some(m.next_is_alive);
        looks_alive.into_iter().chain(is_alive).min()
    }

    /// Which kinds ([`CheckKind::ALL`] order) wait for their next slot: monitored, polled, and
    /// with no check in flight.
    fn waiting_for_slot(&self) -> [bool; 2] {
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
    fn skip_slots_passed(&mut self, kind: CheckKind, now: Instant) {
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
    fn start_due_checks(&mut self, now: Instant) {
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

    fn slot(&mut self, kind: CheckKind) -> &mut Option<Check> {
        match kind {
            CheckKind::LooksAlive => &mut self.looks_alive_check,
            CheckKind::IsAlive => &mut self.is_alive_check,
        }
    }

    /// Starts a check of `kind` at `now`: the time of the wake-up that starts it, read once
    /// for all it does (a clock read per use cost a tenth of the worker's own time).
    fn start_check(&mut self, kind: CheckKind, scheduled: Option<Instant>, now: Instant) {
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
    fn fresh_progress(&mut self, kind: CheckKind) -> Arc<Progress> {
        let progress = &mut self.progress[kind_index(kind)];
        match Arc::get_mut(progress) {
            Some(only) if only.blocking_in_flight() == 0 => only.reset(),
            _ => *progress = Arc::new(Progress::default()),
        }
        progress.clone()
    }

    /// A stuck check's thread returned: the next check of its kind may start.
    fn unstuck(&mut self, kind: CheckKind) {
        if self.stuck[kind_index(kind)].take().is_some() {
            self.cx.metrics.stuck(kind, -1);
        }
    }

    /// The previous check of this kind is still stuck: count it, and fail this one.
    fn report_stuck(&mut self, kind: CheckKind, running_for: Duration, now: Instant) {
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

    fn check_returned(&mut self, kind: CheckKind, outcome: Result<(), Failure>) {
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
    fn check_timed_out(&mut self, kind: CheckKind, now: Instant) {
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

    fn report_timeout(&mut self, kind: CheckKind, check: &Check, now: Instant) {
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

    fn check_failed(&mut self, kind: CheckKind, failure: &Failure, elapsed: f64, now: Instant) {
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

    fn signalled(&mut self, result: Result<Failure, JoinError>) {
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

    /// Exports the TLS certificate a check saw, also when the check failed because of it.
    fn export_certificate(&self, kind: CheckKind) {
        self.export_from(&self.progress[kind_index(kind)]);
    }

    fn export_from(&self, progress: &Progress) {
        if let Some((free, size)) = progress.space() {
            self.cx
                .sink
                .metrics()
                .disk_space(&self.cx.metrics.labels, free, size);
        }
        if let Some(cert) = progress.certificate() {
            self.cx.sink.metrics().tls_certificate(
                &self.cx.metrics.labels,
                cert.not_before,
                cert.not_after,
            );
        }
    }

    // --- status ---------------------------------------------------------------------------

    /// Records a check's result, and the schedule as it stands.
    fn record(&self, kind: CheckKind, failure: Option<&Failure>, elapsed: f64, now: Instant) {
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

    fn publish_schedule(&self) {
        let unix = crate::events::unix_now();
        self.write_schedule(&mut status::lock(&self.cx.status), unix, Instant::now());
    }

    /// `unix` and `now` are the same moment on the two clocks.
    fn write_schedule(&self, s: &mut status::ResourceStatus, unix: f64, now: Instant) {
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

fn kind_index(kind: CheckKind) -> usize {
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
fn off_schedule(late: Duration, interval: Duration) -> bool {
    late >= interval.min(PUT_OFF_AFTER)
}

/// The next slot of a fixed-rate schedule after `now`, and how many slots from `scheduled`
/// on it steps over (`scheduled` itself included): late checks are not bunched up.
fn advance(scheduled: Instant, interval: Duration, now: Instant) -> (Instant, u64) {
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

#[cfg(test)]
mod tests {
    use super::{advance, judge_late, off_schedule, phase, Mailbox, WorkerCommand};
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

    #[tokio::test]
    async fn a_mailbox_wakes_its_worker_and_delivers_what_was_sent_before_it_closed() {
        let mailbox = std::sync::Arc::new(Mailbox::default());
        let worker = tokio::spawn({
            let mailbox = mailbox.clone();
            async move {
                let mut got = Vec::new();
                while let Some(command) = std::future::poll_fn(|task| mailbox.poll_recv(task)).await
                {
                    got.push(format!("{command:?}"));
                }
                got
            }
        });
        // The worker is waiting on an empty mailbox: each send must wake it.
        tokio::task::yield_now().await;
        mailbox.send(WorkerCommand::RunIsAlive);
        tokio::task::yield_now().await;
        mailbox.send(WorkerCommand::Monitor { looks_alive: true });
        mailbox.send(WorkerCommand::Unmonitor);
        mailbox.close();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), worker)
            .await
            .expect("the worker saw the close")
            .unwrap();
        assert_eq!(
            got,
            ["RunIsAlive", "Monitor { looks_alive: true }", "Unmonitor"]
        );
    }

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
