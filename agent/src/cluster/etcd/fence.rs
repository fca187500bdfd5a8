//! The fencing task and what it shares with the session: the ownership machine, ticked at
//! least every 50 ms on CLOCK_BOOTTIME, and the groups' directives.

use super::{local_hour, unix_now};
use crate::cluster::clock::BootInstant;
use crate::cluster::Directive;
use crate::events::{Event, EventSink, SelfFenced};
use resmon_policies::ownership::{Action, Input, Now, Ownership};
use resmon_policies::Time;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// What the fencing task shares with the session: the machine, and the groups' directives.
pub(super) struct Shared {
    pub(super) machine: Mutex<Ownership>,
    pub(super) directives: Mutex<BTreeMap<String, watch::Sender<Directive>>>,
    /// The origin of the machine's [`Time`], on CLOCK_BOOTTIME.
    pub(super) origin: BootInstant,
}

impl Shared {
    pub(super) fn machine(&self) -> std::sync::MutexGuard<'_, Ownership> {
        self.machine.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn directives(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<String, watch::Sender<Directive>>> {
        self.directives.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn now(&self) -> Now {
        Now {
            at: Time::from_elapsed(BootInstant::now().since(self.origin)),
            unix: unix_now(),
            hour: local_hour(),
        }
    }

    /// Feeds the machine one input now.
    pub(super) fn step(&self, input: Input) -> Vec<Action> {
        let now = self.now();
        self.machine().step(input, now)
    }

    /// Tells a group; a closed channel (a group gone in a reload) is ignored.
    pub(super) fn send(&self, group: &str, directive: Directive) {
        if let Some(d) = self.directives().get(group) {
            d.send_if_modified(|d| std::mem::replace(d, directive) != directive);
        }
    }
}

/// How often the fencing task ticks the machine while a deadline is ahead. tokio's timers run
/// on CLOCK_MONOTONIC, which stops during a suspend: a task that slept until the deadline would
/// wake that much late. Waking this often, a resumed node fences within this time.
const FENCE_CHECK_EVERY: Duration = Duration::from_millis(50);

/// Ticks the machine so that its fence deadline is met whatever the session is doing; carries
/// out what a tick can say (directives and the fence's event).
pub(super) async fn fencing(shared: Arc<Shared>, node: String, sink: Arc<EventSink>) {
    loop {
        let actions = shared.step(Input::Tick);
        for action in actions {
            match action {
                Action::Direct { group, directive } => shared.send(&group, directive),
                Action::Fenced {
                    groups,
                    since_renewal,
                } => SelfFenced {
                    node: &node,
                    groups,
                    since_renewal_seconds: since_renewal.as_secs_f64(),
                }
                .emit(&sink),
                other => tracing::error!("a tick asked for {other:?}: ignored"),
            }
        }
        let wait = shared
            .machine()
            .deadline()
            .map(|d| d.elapsed().saturating_sub(shared.now().at.elapsed()))
            .unwrap_or(FENCE_CHECK_EVERY);
        tokio::time::sleep(wait.clamp(Duration::from_millis(1), FENCE_CHECK_EVERY)).await;
    }
}
