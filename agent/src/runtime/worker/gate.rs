//! The start gate: adoptions and `online` calls pass `[agent] max_parallel_starts` permits, so
//! that ten thousand resources started at once do not hold ten thousand connections.

use super::Worker;
use crate::runtime::group::GroupEvent;
use resmon_policies::Operation;
use std::future::Future;
use std::pin::Pin;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, TryAcquireError};
/// A start waiting for its turn at the start gate; its deadline starts with the call.
pub(super) struct Queued {
    pub(super) start: Start,
    pub(super) permit:
        Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>,
}

/// The calls that pass the start gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Start {
    Adopt,
    Online,
}

impl Worker {
    /// Starts `start` now if the gate has room, else queues it (a later start replaces it).
    pub(super) fn start(&mut self, start: Start) {
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
    pub(super) fn unqueue(&mut self) {
        if let Some(queued) = self.queued.take() {
            if queued.start == Start::Adopt {
                let _ = self.group.send(GroupEvent::Adopted {
                    resource: self.cx.id,
                    alive: false,
                });
            }
        }
    }

    pub(super) fn admitted(&mut self, permit: Result<OwnedSemaphorePermit, AcquireError>) {
        let Some(queued) = self.queued.take() else {
            return;
        };
        self.begin(queued.start, permit.ok());
    }

    /// Runs `start`, holding `permit` (none only if the gate were ever closed).
    pub(super) fn begin(&mut self, start: Start, permit: Option<OwnedSemaphorePermit>) {
        match start {
            Start::Adopt => self.start_adoption(permit),
            Start::Online => self.start_operation(Operation::Online, permit),
        }
    }
}
