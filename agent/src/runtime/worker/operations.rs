//! Adoption and the operations (`online`, `offline`, `terminate`), each on a task of its own
//! under `pending_timeout`.

use super::deadline::join_failure;
use super::Worker;
use crate::events::{Event, OperationFailed, OperationTimedOut};
use crate::runtime::group::GroupEvent;
use resmon_policies::{Input, Operation};
use resmon_probes::{Failure, Progress};
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinError;
impl Worker {
    /// The permit is held by the call and given back when it ends or is abandoned.
    pub(super) fn start_adoption(&mut self, permit: Option<OwnedSemaphorePermit>) {
        let resource = self.resource.clone();
        self.adoption = Some(
            self.spawn_call(Some(self.cx.props.check_timeout), async move {
                let _permit = permit;
                resource.adopt().await
            }),
        );
    }

    pub(super) fn adoption_returned(&mut self, result: Result<Result<bool, Failure>, JoinError>) {
        if self.adoption.take().is_none() {
            return;
        }
        let alive = matches!(result, Ok(Ok(true)));
        let _ = self.group.send(GroupEvent::Adopted {
            resource: self.cx.id,
            alive,
        });
    }

    pub(super) fn adoption_timed_out(&mut self) {
        if let Some(running) = self.adoption.take() {
            running.handle.abort();
        }
        let _ = self.group.send(GroupEvent::Adopted {
            resource: self.cx.id,
            alive: false,
        });
    }

    pub(super) fn start_operation(&mut self, op: Operation, permit: Option<OwnedSemaphorePermit>) {
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
        let timeout = match op {
            Operation::Terminate => self.cx.props.terminate_timeout,
            Operation::Online | Operation::Offline => self.cx.props.pending_timeout,
        };
        self.operation = Some(self.spawn_call(timeout.duration(), call));
        self.operation_kind = op;
    }

    pub(super) fn operation_returned(&mut self, result: Result<Result<(), Failure>, JoinError>) {
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

    pub(super) fn operation_timed_out(&mut self) {
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
}
