//! Adoption and the operations (`online`, `offline`, `terminate`), each on a task of its own
//! under `pending_timeout`.

use super::deadline::{join_failure, within};
use super::Worker;
use crate::events::{Event, OnlineAttemptFailed, OperationFailed, OperationTimedOut};
use crate::runtime::group::GroupEvent;
use crate::runtime::ResourceContext;
use crate::status::AttemptStatus;
use resmon_policies::{Input, Operation};
use resmon_probes::{Failure, HumanDuration, Progress, Resource};
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
            // A terminate supersedes what runs (a fence, or a stop that abandons an online);
            // any other overlap is a stray one, stopped rather than raced.
            let previous = self.operation_kind;
            if op == Operation::Terminate {
                tracing::debug!(group = %self.cx.group(), resource = %self.cx.name(), %previous, "abandoned for terminate");
            } else {
                tracing::warn!(group = %self.cx.group(), resource = %self.cx.name(), %previous, next = %op, "operation replaced");
            }
            running.handle.abort();
        }
        let resource = self.resource.clone();
        let progress = Arc::new(Progress::default());
        self.operation_progress = progress.clone();
        let by_checking = op == Operation::Online && resource.online_is_a_check();
        let cx = self.cx.clone();
        let call = async move {
            let _permit = permit;
            match op {
                Operation::Online if by_checking => {
                    online_by_checking(&cx, &*resource, &progress).await
                }
                Operation::Online => resource.online(&progress).await,
                Operation::Offline => resource.offline().await,
                Operation::Terminate => resource.terminate().await,
            }
        };
        let timeout = match op {
            // Its attempts keep their own time, `pending_timeout` included (see
            // `online_by_checking`): a second timer would race the last attempt's.
            Operation::Online if by_checking => None,
            Operation::Terminate => self.cx.props.terminate_timeout.duration(),
            Operation::Online | Operation::Offline => self.cx.props.pending_timeout.duration(),
        };
        self.operation = Some(self.spawn_call(timeout, call));
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

/// The pause between two attempts of a check-only online (shorter when `check_timeout` is).
const RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// A check-only resource comes online by checking: attempts of its online, each under
/// `check_timeout` (judged by the rule for deadlines reached late, as every check is), one
/// [`RETRY`] apart, until one passes or `pending_timeout` has passed. Meanwhile each failed
/// attempt is an event and the status shows the last; the operation's failure is the last
/// attempt's, with its reason (`banner_timeout`, `refused`...), not a bare `timeout`.
async fn online_by_checking(
    cx: &ResourceContext,
    resource: &dyn Resource,
    progress: &Progress,
) -> Result<(), Failure> {
    let started = tokio::time::Instant::now();
    let end = cx.props.pending_timeout.duration().map(|p| started + p);
    let check_timeout = cx.props.check_timeout;
    let mut attempt = 0;
    let mut passed = 0;
    let outcome = loop {
        let now = tokio::time::Instant::now();
        let budget = end.map_or(check_timeout, |end| {
            end.saturating_duration_since(now).min(check_timeout)
        });
        attempt += 1;
        progress.reset();
        let failure = match within(budget, resource.online(progress)).await {
            // `success_threshold` passes in a row (HAProxy's rise), the next one a pause later.
            Some(Ok(())) => {
                passed += 1;
                if passed >= cx.props.success_threshold {
                    break Ok(());
                }
                let next = tokio::time::Instant::now() + RETRY.min(check_timeout);
                if end.is_some_and(|end| next >= end) {
                    break Err(Failure::new(
                        resmon_policies::FailureReason::NotReady,
                        format!(
                            "{passed} of success_threshold {} attempts passed in a row before pending_timeout",
                            cx.props.success_threshold
                        ),
                    ));
                }
                tokio::time::sleep_until(next).await;
                continue;
            }
            Some(Err(failure)) => failure,
            None => progress.timed_out(&format!("check_timeout {}", HumanDuration(budget))),
        };
        passed = 0;
        OnlineAttemptFailed {
            group: cx.group(),
            resource: cx.name(),
            r#type: cx.type_name,
            attempt,
            reason: failure.reason,
            detail: &failure.detail,
        }
        .emit(&cx.sink);
        crate::status::lock(&cx.status).online_attempt = Some(AttemptStatus {
            attempt,
            at: crate::events::unix_now(),
            reason: failure.reason,
            detail: failure.detail.clone(),
        });
        let next = tokio::time::Instant::now() + RETRY.min(check_timeout);
        let out_of_time = |at: tokio::time::Instant| end.is_some_and(|end| at >= end);
        // No attempt starts past `pending_timeout`: not after the pause, nor after a pause
        // that an agent stopped meanwhile made end too late to give the attempt any time.
        let last = out_of_time(next) || {
            tokio::time::sleep_until(next).await;
            out_of_time(tokio::time::Instant::now())
        };
        if last {
            let total = end.map_or(Default::default(), |end| end - started);
            break Err(Failure::new(
                failure.reason,
                format!(
                    "{attempt} attempts in pending_timeout {}, the last: {}",
                    HumanDuration(total),
                    failure.detail
                ),
            ));
        }
    };
    crate::status::lock(&cx.status).online_attempt = None;
    outcome
}
