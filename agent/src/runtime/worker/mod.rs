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
//!
//! # Layout
//!
//! - this module: the [`Worker`] and its loop: what woke it, and the handler for each wake-up;
//! - [`mailbox`]: the group's commands to the worker;
//! - [`gate`]: the start gate, `max_parallel_starts`;
//! - [`operations`]: adoption, `online`, `offline`, `terminate`, under `pending_timeout`;
//! - [`schedule`]: when each kind of check is due;
//! - [`checks`]: a check started, polled, timed out or stuck, and the failure signal;
//! - [`deadline`]: a call in flight and the rule for a deadline reached late;
//! - [`report`]: inputs to the group's policy, metrics and status.

mod checks;
mod deadline;
mod gate;
mod mailbox;
mod operations;
mod report;
mod schedule;

use checks::{poll_check, Check, Stuck};
use deadline::{poll_some, Running};
use gate::{Queued, Start};
pub(crate) use mailbox::{Mailbox, WorkerCommand, WorkerHandle};
use schedule::kind_index;
use schedule::Monitoring;

use super::group::GroupEvent;
use super::threads::CheckThreads;
use super::ResourceContext;
use resmon_policies::{CheckKind, Operation};
use resmon_probes::{Failure, Progress, Resource};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{mpsc, AcquireError, OwnedSemaphorePermit};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;
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
            WorkerCommand::Reread => self.start(Start::Adopt),
        }
    }
}
