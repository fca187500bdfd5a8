//! How the group task talks to a worker: the commands, the handle that ends the worker when
//! dropped, and the mailbox the worker reads at every wake-up.

use crate::runtime::ResourceContext;
use resmon_policies::Operation;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
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
    /// Look whether it runs, as at start-up (it leaves maintenance); answered as an adoption.
    Reread,
}

/// The group task's end of a worker; dropping it ends the worker.
pub(crate) struct WorkerHandle {
    pub(super) cx: Arc<ResourceContext>,
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
    pub(super) fn queue(&self) -> MutexGuard<'_, VecDeque<WorkerCommand>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn send(&self, command: WorkerCommand) {
        let mut queue = self.queue();
        queue.push_back(command);
        self.pending.store(true, Ordering::Release);
        drop(queue);
        self.waker.wake();
    }

    /// Ends the worker once it has taken the commands already sent.
    pub(super) fn close(&self) {
        let queue = self.queue();
        self.closed.store(true, Ordering::Release);
        self.pending.store(true, Ordering::Release);
        drop(queue);
        self.waker.wake();
    }

    /// The next command; `None` once closed and drained.
    pub(super) fn poll_recv(&self, task: &mut Context<'_>) -> Poll<Option<WorkerCommand>> {
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

#[cfg(test)]
mod tests {
    use super::{Mailbox, WorkerCommand};

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
}
