//! The state machine of one group: WSFC's resource failure rules in sans-I/O form.
//!
//! The runtime feeds [`Input`]s with the current [`Time`] into [`GroupController::step`] and
//! carries out the returned [`Effect`]s. After every input the controller *reconciles*: it walks
//! the dependency DAG and starts whatever may come online (providers first) and stops whatever
//! must go offline (dependents first), so ordering is a property of one function rather than of
//! every rule.
//!
//! The rules, as the seeds give them:
//! - a failed `looks_alive` asks for an immediate `is_alive`; a failed `is_alive`, a failure
//!   signal, or an `online` that fails or times out makes the resource `failed`;
//! - a failed resource is terminated, then restarted on this node while fewer than
//!   `restart_threshold` restarts happened within `restart_period`;
//! - past that, `restart_action` decides: `no_restart` leaves it failed, `restart_no_failover`
//!   waits `retry_period_on_failure`, `restart_then_failover` asks for the group to fail over
//!   and waits the retry period if that does not succeed;
//! - after the retry period it gets one final attempt; if that fails it stays failed until an
//!   administrator acts;
//! - an `offline` that fails or times out makes the resource failed and is followed by
//!   `terminate`;
//! - a provider that is not online takes its dependents offline; they come back when it is
//!   online again; a provider in another group ([`Input::External`]) counts the same way;
//! - a resource goes offline only after its dependents: those of its group, and those of other
//!   groups on this node ([`Input::DependentsElsewhere`]); while it waits it is no longer
//!   [`available`](GroupController::available), which is what takes those dependents offline;
//! - an administrator's offline (`offline_by_admin`) is never restarted;
//! - a group told to stop abandons the onlines under way: each is terminated at once;
//! - with flap damping, every failure adds to a penalty that halves every half-life; while it
//!   is above its threshold a restart waits until it has decayed below the reuse level;
//! - a resource in maintenance (unmanaged, as Pacemaker's `is-managed=false`) is still checked
//!   and its state follows what the checks see, but nothing is started, stopped, restarted or
//!   failed over for it; leaving maintenance looks again first (an `is_alive` of what runs, an
//!   adoption of what seemed down) and only then acts, so nothing that runs is bounced. A
//!   fence still terminates it: the lease may be gone and another node will start the group.

use crate::reason::{CheckKind, FailureReason, Operation};
use crate::spec::{GroupSpec, ResourceId, RestartAction};
use crate::time::Time;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// The externally visible state of a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Not running, and may be brought online when its providers are.
    Offline,
    /// `online` is running.
    OnlinePending,
    /// Running and monitored.
    Online,
    /// `offline` is running.
    OfflinePending,
    /// Failed; being terminated, restarted, waiting for a retry or for an administrator.
    Failed,
    /// Taken offline by an administrator: never restarted, never failed over.
    OfflineByAdmin,
}

impl State {
    /// Every state, in the order metrics list them.
    pub const ALL: [State; 6] = [
        State::Offline,
        State::OnlinePending,
        State::Online,
        State::OfflinePending,
        State::Failed,
        State::OfflineByAdmin,
    ];

    /// The label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Offline => "offline",
            State::OnlinePending => "online_pending",
            State::Online => "online",
            State::OfflinePending => "offline_pending",
            State::Failed => "failed",
            State::OfflineByAdmin => "offline_by_admin",
        }
    }

    /// Offline in any way (nothing of it should be running).
    pub const fn is_down(self) -> bool {
        matches!(self, State::Offline | State::Failed | State::OfflineByAdmin)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the group as a whole is asked to do on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupMode {
    /// Do nothing yet (the runtime is re-adopting resources that survived a restart).
    Passive,
    /// Keep the group online here.
    Active,
    /// Take every resource offline, dependents first, and restart nothing.
    Stopping,
}

/// An administrator's command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminCommand {
    /// Bring a resource (and the providers it needs) online; clears a failure.
    Online(ResourceId),
    /// Take a resource offline (its dependents first): `offline_by_admin`.
    Offline(ResourceId),
    /// Forget a failure and the restart history, and let the resource come online again.
    Clear(ResourceId),
    /// Bring every resource of the group online.
    GroupOnline,
    /// Take every resource of the group offline.
    GroupOffline,
}

/// An input to the controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// The resource survived an agent restart and is alive: it is online without being started.
    Adopted(ResourceId),
    /// Start keeping the group online.
    Activate,
    /// Take the group offline (agent stopping with `stop_on_exit`, or ownership lost).
    Deactivate,
    /// This node may no longer run the group (its lease may expire before an orderly stop
    /// ends): terminate every resource that may run, at once, addresses first, replacing any
    /// operation in flight. Nothing starts again until [`Input::Activate`].
    Fence,
    /// A health check returned.
    CheckCompleted {
        /// Which resource.
        resource: ResourceId,
        /// Which check.
        check: CheckKind,
        /// Success, or why it failed (a runtime timeout is [`FailureReason::Timeout`]).
        outcome: Result<(), FailureReason>,
    },
    /// The resource reported a failure between polls.
    FailureSignalled {
        /// Which resource.
        resource: ResourceId,
        /// What it saw.
        reason: FailureReason,
    },
    /// An operation returned within its pending timeout.
    OperationCompleted {
        /// Which resource.
        resource: ResourceId,
        /// Which operation.
        operation: Operation,
        /// Success, or why it failed.
        outcome: Result<(), FailureReason>,
    },
    /// An operation did not return within its pending timeout.
    OperationTimedOut {
        /// Which resource.
        resource: ResourceId,
        /// Which operation.
        operation: Operation,
    },
    /// An administrator's command.
    Admin(AdminCommand),
    /// The answer to [`Effect::RequestFailover`].
    FailoverCompleted {
        /// `true` if another node took the group; `false` if there was nowhere to go.
        moved: bool,
    },
    /// A provider in another group (a resource's `external`) came online or went offline,
    /// where the dependency says: on this node, or anywhere in the cluster.
    External {
        /// Its index among the group's external providers.
        provider: usize,
        /// Whether it is online.
        online: bool,
    },
    /// Whether a resource of another group on this node that depends on this one is up (not
    /// offline, failed or offline by an administrator): an orderly offline waits for it.
    DependentsElsewhere {
        /// The provider, in this group.
        resource: ResourceId,
        /// One of its dependents elsewhere is up.
        up: bool,
    },
    /// Maintenance on or off for one resource, or for the whole group (`None`).
    Maintenance {
        /// The resource, or the group.
        resource: Option<ResourceId>,
        /// On (unmanaged) or off.
        on: bool,
    },
    /// The answer to [`Effect::Reread`]: whether the resource was found running.
    Reread {
        /// Which resource.
        resource: ResourceId,
        /// Found running.
        alive: bool,
    },
    /// Time passed (the runtime calls this at [`GroupController::next_timer`]).
    Tick,
}

/// Why a transition happened; logged with every transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Cause {
    /// Found alive when the agent started.
    Adopted,
    /// All providers are online and the group should be online.
    DependenciesOnline,
    /// `online` returned success.
    OnlineCompleted,
    /// `offline` returned success.
    OfflineCompleted,
    /// `terminate` returned (or timed out: there is nothing more forceful).
    Terminated,
    /// A check failed.
    CheckFailed {
        /// Which check.
        check: CheckKind,
        /// Why.
        reason: FailureReason,
    },
    /// The resource's failure signal fired.
    FailureSignalled {
        /// Why.
        reason: FailureReason,
    },
    /// An operation returned an error.
    OperationFailed {
        /// Which operation.
        operation: Operation,
        /// Why.
        reason: FailureReason,
    },
    /// An operation outlived its pending timeout.
    OperationTimedOut {
        /// Which operation.
        operation: Operation,
    },
    /// A provider is not online (or about to stop), so this resource goes offline.
    ProviderDown,
    /// The group is being taken offline on this node.
    GroupStopping,
    /// This node fenced itself: terminated, not stopped.
    Fenced,
    /// A restart within the threshold.
    Restart,
    /// The final attempt after `retry_period_on_failure`.
    Retry,
    /// An administrator's command.
    Admin,
    /// The group was given to this node (a failover, move or failback arrived): what failed
    /// here before gets a fresh start.
    Activated,
    /// In maintenance, a check found it running again (someone saw to it by hand).
    Observed,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Adopted => f.write_str("adopted"),
            Cause::DependenciesOnline => f.write_str("dependencies_online"),
            Cause::OnlineCompleted => f.write_str("online_completed"),
            Cause::OfflineCompleted => f.write_str("offline_completed"),
            Cause::Terminated => f.write_str("terminated"),
            Cause::CheckFailed { check, reason } => write!(f, "{check}_failed:{reason}"),
            Cause::FailureSignalled { reason } => write!(f, "failure_signal:{reason}"),
            Cause::OperationFailed { operation, reason } => {
                write!(f, "{operation}_failed:{reason}")
            }
            Cause::OperationTimedOut { operation } => write!(f, "{operation}_timeout"),
            Cause::ProviderDown => f.write_str("provider_down"),
            Cause::GroupStopping => f.write_str("group_stopping"),
            Cause::Fenced => f.write_str("fenced"),
            Cause::Restart => f.write_str("restart"),
            Cause::Retry => f.write_str("retry"),
            Cause::Admin => f.write_str("admin"),
            Cause::Activated => f.write_str("activated"),
            Cause::Observed => f.write_str("observed"),
        }
    }
}

/// What the controller asks of the runtime, in the order it decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// A state transition to record (metrics, event log, status).
    Transition {
        /// Which resource.
        resource: ResourceId,
        /// Old state.
        from: State,
        /// New state.
        to: State,
        /// Why.
        cause: Cause,
    },
    /// Run `online()` under the pending timeout.
    Online(ResourceId),
    /// Run `offline()` under the pending timeout.
    Offline(ResourceId),
    /// Run `terminate()`.
    Terminate(ResourceId),
    /// Start polling the resource's checks (it just came online).
    Monitor {
        /// Which resource.
        resource: ResourceId,
        /// Whether `looks_alive` is polled (not when a failure signal replaces it).
        looks_alive: bool,
    },
    /// Stop polling (it left `online`).
    Unmonitor(ResourceId),
    /// Run `is_alive()` now (a `looks_alive` failed).
    RunIsAlive(ResourceId),
    /// A failed `is_alive` below `failure_threshold` (or, over a usage limit, below
    /// `limit_checks`): counted, not yet a failure.
    CheckFailureCounted {
        /// Which resource.
        resource: ResourceId,
        /// Failed checks in a row, this one included.
        in_a_row: u32,
    },
    /// A restart was decided; `restarts_in_period` counts it.
    RestartScheduled {
        /// Which resource.
        resource: ResourceId,
        /// Restarts within the period, this one included.
        restarts_in_period: u32,
        /// Waited between its terminate and its online (`restart_delay`).
        delay: Duration,
    },
    /// Fail the group over to another node; answer with [`Input::FailoverCompleted`].
    RequestFailover {
        /// The resource whose failures exceeded the threshold.
        resource: ResourceId,
    },
    /// The failover did not happen; the resource waits for its retry.
    FailoverFailed,
    /// The final attempt is due at `at`.
    RetryScheduled {
        /// Which resource.
        resource: ResourceId,
        /// When.
        at: Time,
    },
    /// No more automatic attempts: the resource stays failed until an administrator acts.
    GaveUp {
        /// Which resource.
        resource: ResourceId,
    },
    /// Look whether the resource runs, as at start-up (it leaves maintenance and seemed
    /// down); answer with [`Input::Reread`].
    Reread(ResourceId),
    /// Its flap damping penalty is above the threshold: its restart waits until `until`.
    Damped {
        /// Which resource.
        resource: ResourceId,
        /// The penalty now.
        penalty: u32,
        /// When the penalty falls below the reuse level and the restart may happen.
        until: Time,
    },
    /// An administrator's command was not applied; nothing changed.
    Refused {
        /// The command.
        command: AdminCommand,
        /// Why, for the operator.
        why: &'static str,
    },
}

/// Where a failed resource is on the road from restart to "an administrator must act".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Escalation {
    /// Normal operation: failures are restarted within the threshold.
    None,
    /// Asked the coordinator to fail the group over.
    AwaitingFailover,
    /// Waiting for `retry_period_on_failure` to pass.
    WaitingRetry(Time),
    /// The final attempt is running, or came online less than `restart_period` ago: a failure
    /// now is final. Staying online for a whole `restart_period` ends the escalation.
    FinalAttempt,
    /// Stays failed until an administrator acts.
    NeedsAdmin,
}

/// What follows the `terminate` in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterTerminate {
    /// Go to `offline` so that reconcile brings it online again.
    Restart,
    /// Stay `failed`.
    StayFailed,
    /// Go to `offline` (or `offline_by_admin`): the terminate finished a stop.
    Offline,
}

#[derive(Clone, Debug)]
struct ResourceRuntime {
    state: State,
    pending: Option<Operation>,
    after_terminate: AfterTerminate,
    admin_offline: bool,
    escalation: Escalation,
    restarts: crate::restart::RestartWindow,
    /// The `online` now running is a restart or a retry, for the transition's cause.
    next_online_cause: Option<Cause>,
    /// When it last came online, to tell a final attempt that held from one that did not.
    online_since: Option<Time>,
    /// Decided to go offline (a provider left online): stays decided until it is down, so a
    /// provider that comes back quickly does not leave half of the subtree running.
    stopping: bool,
    /// Its last terminate failed or timed out: it is `failed`, but may still run, until an
    /// operation succeeds on it or an administrator clears it.
    may_still_run: bool,
    /// The restart decided at its failure waits this long once it is terminated.
    restart_delay: Duration,
    /// Terminated and waiting `restart_delay`: restarted at this time.
    restart_at: Option<Time>,
    /// Failed `is_alive` checks in a row, below `failure_threshold`.
    failed_checks: u32,
    /// `is_alive` checks in a row that found a usage limit exceeded, below `limit_checks`.
    over_limit: u32,
    /// In maintenance of its own (the group's is [`GroupController`]'s).
    unmanaged: bool,
    /// Seen failing while unmanaged: nothing was done about it yet.
    failure_unhandled: bool,
    /// Left maintenance seeming down: an [`Effect::Reread`] is out, nothing starts it meanwhile.
    rereading: bool,
    /// Flap damping: the penalty as of `penalty_at`.
    penalty: f64,
    penalty_at: Time,
    /// Held back by flap damping until then.
    damped_until: Option<Time>,
}

impl ResourceRuntime {
    fn new() -> Self {
        ResourceRuntime {
            state: State::Offline,
            pending: None,
            after_terminate: AfterTerminate::Offline,
            admin_offline: false,
            escalation: Escalation::None,
            restarts: Default::default(),
            next_online_cause: None,
            online_since: None,
            may_still_run: false,
            stopping: false,
            restart_delay: Duration::ZERO,
            restart_at: None,
            failed_checks: 0,
            over_limit: 0,
            unmanaged: false,
            failure_unhandled: false,
            rereading: false,
            penalty: 0.0,
            penalty_at: Time::ZERO,
            damped_until: None,
        }
    }
}

/// A read-only view of one resource's policy state, for status pages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResourceView {
    /// Current state.
    pub state: State,
    /// The operation in flight, if any.
    pub pending: Option<Operation>,
    /// An administrator took it offline.
    pub admin_offline: bool,
    /// When the final attempt is due, if the resource waits for one.
    pub retry_at: Option<Time>,
    /// When it is restarted, if it waits its `restart_delay`.
    pub restart_at: Option<Time>,
    /// Stays failed until an administrator acts.
    pub needs_admin: bool,
    /// In maintenance (its own or its group's): checked, never acted on.
    pub unmanaged: bool,
    /// Its flap damping penalty as of its last failure.
    pub damping_penalty: u32,
    /// Held back by flap damping until then (its restart waits).
    pub damped_until: Option<Time>,
}

/// The lifecycle state machine of one group.
#[derive(Clone, Debug)]
pub struct GroupController {
    spec: GroupSpec,
    mode: GroupMode,
    resources: Vec<ResourceRuntime>,
    failover_requested: bool,
    /// The whole group is in maintenance.
    unmanaged: bool,
    /// Whether each external provider is online; `None` until told: a resource that runs is
    /// left running and one that does not is not started (an agent restart adopts a dependent
    /// before its provider's state is known).
    externals: Vec<Option<bool>>,
    /// Whether each resource has a dependent up in another group on this node.
    dependents_elsewhere: Vec<bool>,
    /// Something reconcile looks at changed since it last ran; a passing check changes nothing,
    /// so 10,000 of them a second cost no walk over the group.
    dirty: bool,
}

impl GroupController {
    /// A controller for `spec` with every resource `offline`, in [`GroupMode::Passive`]: feed
    /// [`Input::Adopted`] for resources found alive, then [`Input::Activate`].
    pub fn new(spec: GroupSpec) -> Self {
        let resources = spec
            .resources()
            .iter()
            .map(|_| ResourceRuntime::new())
            .collect();
        GroupController {
            externals: vec![None; spec.externals()],
            dependents_elsewhere: vec![false; spec.resources().len()],
            spec,
            mode: GroupMode::Passive,
            resources,
            failover_requested: false,
            unmanaged: false,
            dirty: true,
        }
    }

    /// The group's spec.
    pub fn spec(&self) -> &GroupSpec {
        &self.spec
    }

    /// What the group is asked to do.
    pub fn mode(&self) -> GroupMode {
        self.mode
    }

    /// The state of one resource.
    pub fn state(&self, id: ResourceId) -> State {
        self.resources[id.0].state
    }

    /// Whether resources of other groups may use this one: online, and not decided to go
    /// offline. A provider that waits for its dependents elsewhere before its own offline is
    /// not available, so that they go first.
    pub fn available(&self, id: ResourceId) -> bool {
        let r = &self.resources[id.0];
        r.state == State::Online && !r.stopping
    }

    /// A view of one resource for status pages.
    pub fn view(&self, id: ResourceId) -> ResourceView {
        let r = &self.resources[id.0];
        ResourceView {
            state: r.state,
            pending: r.pending,
            admin_offline: r.admin_offline,
            retry_at: match r.escalation {
                Escalation::WaitingRetry(at) => Some(at),
                _ => None,
            },
            restart_at: r.restart_at,
            needs_admin: r.escalation == Escalation::NeedsAdmin,
            unmanaged: self.is_unmanaged(id),
            damping_penalty: r.penalty.round() as u32,
            damped_until: r.damped_until,
        }
    }

    /// Whether the resource is in maintenance, its own or its group's.
    pub fn is_unmanaged(&self, id: ResourceId) -> bool {
        self.unmanaged || self.resources[id.0].unmanaged
    }

    /// Whether the whole group is in maintenance.
    pub fn group_unmanaged(&self) -> bool {
        self.unmanaged
    }

    /// The operation in flight for a resource.
    pub fn pending(&self, id: ResourceId) -> Option<Operation> {
        self.resources[id.0].pending
    }

    /// Restarts of `id` counted within its period at `now`.
    pub fn restarts_in_period(&mut self, id: ResourceId, now: Time) -> u32 {
        let period = self.spec.resource(id).policy.restart_period;
        self.resources[id.0].restarts.count(now, period)
    }

    /// When the oldest restart counted in the restart window leaves it, if any is counted.
    pub fn restart_window_frees_at(&mut self, id: ResourceId, now: Time) -> Option<Time> {
        let period = self.spec.resource(id).policy.restart_period;
        self.resources[id.0].restarts.frees_at(now, period)
    }

    /// When the runtime must send [`Input::Tick`] next, if ever.
    pub fn next_timer(&self) -> Option<Time> {
        self.resources
            .iter()
            .flat_map(|r| {
                let retry = match r.escalation {
                    Escalation::WaitingRetry(at) => Some(at),
                    _ => None,
                };
                [retry, r.restart_at]
            })
            .flatten()
            .min()
    }

    /// Nothing is in flight and, when stopping, everything is down.
    /// (A resource in maintenance is left as it is: it counts as settled.)
    pub fn is_settled(&self) -> bool {
        let unmanaged = |i: usize| self.is_unmanaged(ResourceId(i));
        // A resource in maintenance that runs holds its providers up: nothing more will stop.
        let held_up =
            (0..self.resources.len()).any(|i| unmanaged(i) && !self.resources[i].state.is_down());
        self.resources.iter().all(|r| r.pending.is_none())
            && (self.mode != GroupMode::Stopping
                || held_up
                || (0..self.resources.len())
                    .all(|i| self.resources[i].state.is_down() || unmanaged(i)))
    }

    /// Taken offline on this node and known to be down: nothing in flight, and no resource whose
    /// terminate failed (it may still run). Only then may another node take the group.
    pub fn is_let_go(&self) -> bool {
        self.mode == GroupMode::Stopping
            && self.is_settled()
            && self
                .resources
                .iter()
                .all(|r| r.state.is_down() && !r.may_still_run)
    }

    /// One effect as a line for people: transcripts, `resmon simulate`.
    pub fn describe(&self, effect: &Effect) -> String {
        let name = |r: &ResourceId| self.spec.resource(*r).name.as_str();
        match effect {
            Effect::Transition {
                resource,
                from,
                to,
                cause,
            } => {
                format!("{}: {from} -> {to} ({cause})", name(resource))
            }
            Effect::Online(r) => format!("online {}", name(r)),
            Effect::Offline(r) => format!("offline {}", name(r)),
            Effect::Terminate(r) => format!("terminate {}", name(r)),
            Effect::Monitor {
                resource,
                looks_alive,
            } => format!(
                "monitor {} looks_alive={}",
                name(resource),
                if *looks_alive { "on" } else { "off" }
            ),
            Effect::Unmonitor(r) => format!("unmonitor {}", name(r)),
            Effect::RunIsAlive(r) => format!("run is_alive {}", name(r)),
            Effect::Reread(r) => format!("look whether {} runs", name(r)),
            Effect::Damped {
                resource,
                penalty,
                until,
            } => format!("damp {} (penalty {penalty}) until {until}", name(resource)),
            Effect::CheckFailureCounted { resource, in_a_row } => {
                format!("is_alive of {} failed {in_a_row} in a row", name(resource))
            }
            Effect::RestartScheduled {
                resource,
                restarts_in_period,
                delay,
            } => {
                let mut text = format!(
                    "restart {} ({restarts_in_period} in period)",
                    name(resource)
                );
                if !delay.is_zero() {
                    text.push_str(&format!(" after {}", Time::from_elapsed(*delay)));
                }
                text
            }
            Effect::RequestFailover { resource } => {
                format!("request failover ({})", name(resource))
            }
            Effect::FailoverFailed => "failover failed".to_string(),
            Effect::RetryScheduled { resource, at } => format!("retry {} at {at}", name(resource)),
            Effect::GaveUp { resource } => format!("gave up {}", name(resource)),
            Effect::Refused { command, why } => {
                format!("refused {}: {why}", self.describe_command(command))
            }
        }
    }

    /// An administrator's command as words.
    pub fn describe_command(&self, command: &AdminCommand) -> String {
        let name = |r: &ResourceId| self.spec.resource(*r).name.as_str();
        match command {
            AdminCommand::Online(r) => format!("online {}", name(r)),
            AdminCommand::Offline(r) => format!("offline {}", name(r)),
            AdminCommand::Clear(r) => format!("clear {}", name(r)),
            AdminCommand::GroupOnline => "online the group".into(),
            AdminCommand::GroupOffline => "offline the group".into(),
        }
    }

    /// Applies one input at `now` and returns what to do.
    pub fn step(&mut self, now: Time, input: Input) -> Vec<Effect> {
        let mut out = Vec::new();
        if !matches!(
            input,
            Input::CheckCompleted {
                outcome: Ok(()),
                ..
            }
        ) {
            self.dirty = true;
        }
        self.apply(now, input, &mut out);
        if std::mem::take(&mut self.dirty) {
            self.reconcile(&mut out);
        }
        out
    }

    fn apply(&mut self, now: Time, input: Input, out: &mut Vec<Effect>) {
        match input {
            Input::Adopted(id) => {
                if self.mode == GroupMode::Passive && self.resources[id.0].state == State::Offline {
                    self.resources[id.0].online_since = Some(now);
                    self.transition(id, State::Online, Cause::Adopted, out);
                    out.push(Effect::Monitor {
                        resource: id,
                        looks_alive: self.spec.resource(id).policy.polls_looks_alive(),
                    });
                }
            }
            Input::Activate => {
                let was = std::mem::replace(&mut self.mode, GroupMode::Active);
                if was == GroupMode::Stopping {
                    // The group comes (back) to this node: a failure left from before it went
                    // away does not keep it from coming online, as a group brought online on a
                    // node in a cluster starts every resource.
                    for i in 0..self.resources.len() {
                        let r = &mut self.resources[i];
                        if r.state == State::Failed && r.pending.is_none() && !r.admin_offline {
                            r.escalation = Escalation::None;
                            self.transition(ResourceId(i), State::Offline, Cause::Activated, out);
                        }
                    }
                }
            }
            Input::Deactivate => {
                self.mode = GroupMode::Stopping;
                self.failover_requested = false;
                for r in &mut self.resources {
                    r.escalation = Escalation::None;
                }
                // An online still under way is abandoned: the group is leaving, and waiting for
                // it (a check-only online retrying against a server that is gone, up to its
                // pending timeout) would hold a move or failover up for minutes. Nothing
                // depends on it yet: what is not online has no dependent online.
                for i in 0..self.resources.len() {
                    let id = ResourceId(i);
                    if self.resources[i].pending == Some(Operation::Online)
                        && !self.is_unmanaged(id)
                    {
                        self.transition(id, State::OfflinePending, Cause::GroupStopping, out);
                        self.start_terminate(id, AfterTerminate::Offline, out);
                    }
                }
            }
            Input::Fence => self.fence(out),
            Input::CheckCompleted {
                resource,
                check,
                outcome,
            } => {
                let Err(reason) = outcome else {
                    if check == CheckKind::IsAlive {
                        self.resources[resource.0].failed_checks = 0;
                        self.resources[resource.0].over_limit = 0;
                        let r = &self.resources[resource.0];
                        if r.failure_unhandled && r.state == State::Failed && r.pending.is_none() {
                            // Seen to by hand while in maintenance: running again.
                            self.resources[resource.0].failure_unhandled = false;
                            self.transition(resource, State::Online, Cause::Observed, out);
                        }
                    }
                    return;
                };
                if self.resources[resource.0].state != State::Online {
                    return; // a late answer from before the resource left online
                }
                match check {
                    CheckKind::LooksAlive => out.push(Effect::RunIsAlive(resource)),
                    CheckKind::IsAlive => {
                        let policy = &self.spec.resource(resource).policy;
                        let r = &mut self.resources[resource.0];
                        // A tree over a usage limit still answers: its count is its own, and
                        // either kind of check breaks the other's row.
                        let (count, threshold) = if reason == FailureReason::ResourceLimit {
                            r.failed_checks = 0;
                            (&mut r.over_limit, policy.limit_checks)
                        } else {
                            r.over_limit = 0;
                            (&mut r.failed_checks, policy.failure_threshold)
                        };
                        *count += 1;
                        if *count < threshold {
                            // Below the threshold: the next scheduled is_alive decides.
                            out.push(Effect::CheckFailureCounted {
                                resource,
                                in_a_row: *count,
                            });
                            return;
                        }
                        self.fail(now, resource, Cause::CheckFailed { check, reason }, out)
                    }
                }
            }
            Input::FailureSignalled { resource, reason } => {
                if self.resources[resource.0].state == State::Online {
                    self.fail(now, resource, Cause::FailureSignalled { reason }, out);
                }
            }
            Input::OperationCompleted {
                resource,
                operation,
                outcome,
            } => {
                if self.resources[resource.0].pending != Some(operation) {
                    return;
                }
                self.resources[resource.0].pending = None;
                self.resources[resource.0].may_still_run =
                    operation == Operation::Terminate && outcome.is_err();
                match (operation, outcome) {
                    (Operation::Online, Ok(())) => {
                        self.resources[resource.0].online_since = Some(now);
                        self.transition(resource, State::Online, Cause::OnlineCompleted, out);
                        out.push(Effect::Monitor {
                            resource,
                            looks_alive: self.spec.resource(resource).policy.polls_looks_alive(),
                        });
                    }
                    (Operation::Online, Err(reason)) => self.fail(
                        now,
                        resource,
                        Cause::OperationFailed { operation, reason },
                        out,
                    ),
                    (Operation::Offline, Ok(())) => {
                        let to = self.down_state(resource);
                        self.transition(resource, to, Cause::OfflineCompleted, out);
                    }
                    (Operation::Offline, Err(reason)) => self.offline_failed(
                        resource,
                        Cause::OperationFailed { operation, reason },
                        out,
                    ),
                    (Operation::Terminate, _) => self.terminated(now, resource, out),
                }
            }
            Input::OperationTimedOut {
                resource,
                operation,
            } => {
                if self.resources[resource.0].pending != Some(operation) {
                    return;
                }
                self.resources[resource.0].pending = None;
                if operation == Operation::Terminate {
                    self.resources[resource.0].may_still_run = true;
                }
                let cause = Cause::OperationTimedOut { operation };
                match operation {
                    Operation::Online => self.fail(now, resource, cause, out),
                    Operation::Offline => self.offline_failed(resource, cause, out),
                    Operation::Terminate => self.terminated(now, resource, out),
                }
            }
            Input::Admin(command) => self.admin(command, out),
            Input::FailoverCompleted { moved } => {
                if !std::mem::take(&mut self.failover_requested) {
                    return;
                }
                if moved {
                    self.apply(now, Input::Deactivate, out);
                    return;
                }
                out.push(Effect::FailoverFailed);
                for i in 0..self.resources.len() {
                    if self.resources[i].escalation == Escalation::AwaitingFailover {
                        self.wait_for_retry(now, ResourceId(i), out);
                    }
                }
            }
            Input::Maintenance { resource, on } => self.maintenance(now, resource, on, out),
            Input::Reread { resource, alive } => {
                let r = &mut self.resources[resource.0];
                if !std::mem::take(&mut r.rereading) {
                    return;
                }
                if alive && r.state == State::Offline && r.pending.is_none() {
                    r.online_since = Some(now);
                    self.transition(resource, State::Online, Cause::Adopted, out);
                    out.push(Effect::Monitor {
                        resource,
                        looks_alive: self.spec.resource(resource).policy.polls_looks_alive(),
                    });
                }
            }
            Input::External { provider, online } => {
                if let Some(e) = self.externals.get_mut(provider) {
                    *e = Some(online);
                }
            }
            Input::DependentsElsewhere { resource, up } => {
                if let Some(d) = self.dependents_elsewhere.get_mut(resource.0) {
                    *d = up;
                }
            }
            Input::Tick => {
                for i in 0..self.resources.len() {
                    if self.is_unmanaged(ResourceId(i)) {
                        continue;
                    }
                    let r = &mut self.resources[i];
                    let restart = r.restart_at.is_some_and(|at| at <= now)
                        && r.state == State::Failed
                        && r.pending.is_none();
                    if restart {
                        r.restart_at = None;
                        if self.mode == GroupMode::Active && !r.admin_offline {
                            self.transition(ResourceId(i), State::Offline, Cause::Restart, out);
                        }
                    }
                }
                for i in 0..self.resources.len() {
                    if self.is_unmanaged(ResourceId(i)) {
                        continue;
                    }
                    let r = &mut self.resources[i];
                    let due = matches!(r.escalation, Escalation::WaitingRetry(at) if at <= now);
                    if due && r.state == State::Failed && r.pending.is_none() {
                        r.escalation = Escalation::FinalAttempt;
                        r.next_online_cause = Some(Cause::Retry);
                        self.transition(ResourceId(i), State::Offline, Cause::Retry, out);
                    }
                }
            }
        }
    }

    /// The resource failed: decide between restart, failover, waiting and giving up.
    fn fail(&mut self, now: Time, id: ResourceId, cause: Cause, out: &mut Vec<Effect>) {
        if self.is_unmanaged(id) {
            // Seen, shown, not acted on: still checked, so that a repair by hand shows too.
            self.resources[id.0].failure_unhandled = true;
            self.transition(id, State::Failed, cause, out);
            return;
        }
        let was_online = self.resources[id.0].state == State::Online;
        self.transition(id, State::Failed, cause, out);
        if was_online {
            out.push(Effect::Unmonitor(id));
        }
        self.decide_failure(now, id, was_online, out);
    }

    /// What follows a failure: restart, failover, waiting or giving up, then the terminate.
    fn decide_failure(
        &mut self,
        now: Time,
        id: ResourceId,
        was_online: bool,
        out: &mut Vec<Effect>,
    ) {
        let damped_until = self.add_penalty(now, id);
        let policy = &self.spec.resource(id).policy;
        let r = &mut self.resources[id.0];
        let held = r
            .online_since
            .is_some_and(|t| t.after(policy.restart_period) <= now);
        if was_online && held && r.escalation == Escalation::FinalAttempt {
            r.escalation = Escalation::None; // the final attempt held for a whole period
        }
        let after = if r.admin_offline || self.mode != GroupMode::Active {
            AfterTerminate::Offline
        } else if r.escalation == Escalation::FinalAttempt
            || policy.restart_action == RestartAction::NoRestart
        {
            r.escalation = Escalation::NeedsAdmin;
            out.push(Effect::GaveUp { resource: id });
            AfterTerminate::StayFailed
        } else if r
            .restarts
            .allows(now, policy.restart_period, policy.restart_threshold)
        {
            r.restarts.record(now);
            r.next_online_cause = Some(Cause::Restart);
            let nth = r.restarts.count(now, policy.restart_period);
            r.restart_delay = policy.restart_delay_for(nth);
            if let Some(until) = damped_until {
                r.restart_delay = r
                    .restart_delay
                    .max(until.elapsed().saturating_sub(now.elapsed()));
                out.push(Effect::Damped {
                    resource: id,
                    penalty: r.penalty.round() as u32,
                    until,
                });
            }
            out.push(Effect::RestartScheduled {
                resource: id,
                restarts_in_period: nth,
                delay: r.restart_delay,
            });
            AfterTerminate::Restart
        } else if policy.restart_action == RestartAction::RestartThenFailover {
            r.escalation = Escalation::AwaitingFailover;
            if !self.failover_requested {
                self.failover_requested = true;
                out.push(Effect::RequestFailover { resource: id });
            }
            AfterTerminate::StayFailed
        } else {
            self.wait_for_retry(now, id, out);
            AfterTerminate::StayFailed
        };
        self.start_terminate(id, after, out);
    }

    /// Flap damping: adds a failure's penalty; returns until when a restart is held back, if it
    /// is (the penalty is above `suppress`, or it was held back already and has not yet decayed
    /// below `reuse`).
    fn add_penalty(&mut self, now: Time, id: ResourceId) -> Option<Time> {
        let damping = self.spec.resource(id).policy.flap_damping?;
        let r = &mut self.resources[id.0];
        let elapsed = now.elapsed().saturating_sub(r.penalty_at.elapsed());
        let penalty = damping.decayed(r.penalty, elapsed) + f64::from(damping.penalty);
        r.penalty = penalty.min(damping.ceiling());
        r.penalty_at = now;
        let still = r.damped_until.is_some_and(|u| u > now);
        if r.penalty > f64::from(damping.suppress) || still {
            let until = now.after(damping.until_reuse(r.penalty));
            r.damped_until = Some(until);
            Some(until)
        } else {
            r.damped_until = None;
            None
        }
    }

    /// [`Input::Fence`]: every resource that may run is terminated now, the addresses
    /// ([`ResourceSpec::fence_first`]) first so that clients stop arriving; an operation in
    /// flight is superseded (its late answer is ignored, as `pending` no longer names it).
    fn fence(&mut self, out: &mut Vec<Effect>) {
        self.mode = GroupMode::Stopping;
        self.failover_requested = false;
        let ids = (0..self.resources.len()).map(ResourceId);
        let (first, rest): (Vec<_>, Vec<_>) =
            ids.partition(|&id| self.spec.resource(id).fence_first);
        for id in first.into_iter().chain(rest) {
            let r = &mut self.resources[id.0];
            r.escalation = Escalation::None;
            if r.pending == Some(Operation::Terminate) || (r.state.is_down() && !r.may_still_run) {
                continue;
            }
            if r.state == State::Online {
                out.push(Effect::Unmonitor(id));
            }
            if !r.state.is_down() {
                self.transition(id, State::OfflinePending, Cause::Fenced, out);
            }
            self.start_terminate(id, AfterTerminate::Offline, out);
        }
    }

    /// [`Input::Maintenance`]: on, nothing more is done for the resources (what is in flight
    /// finishes); off, each resource that leaves it is looked at again before anything is
    /// done: what runs gets an `is_alive`, what seemed down an adoption, and a failure seen
    /// meanwhile is handled now as the failure it was.
    fn maintenance(
        &mut self,
        now: Time,
        resource: Option<ResourceId>,
        on: bool,
        out: &mut Vec<Effect>,
    ) {
        let before: Vec<bool> = (0..self.resources.len())
            .map(|i| self.is_unmanaged(ResourceId(i)))
            .collect();
        match resource {
            Some(id) => self.resources[id.0].unmanaged = on,
            None => self.unmanaged = on,
        }
        for (i, was) in before.into_iter().enumerate() {
            let id = ResourceId(i);
            if !was || self.is_unmanaged(id) {
                continue;
            }
            let r = &mut self.resources[i];
            if r.pending.is_some() {
                continue;
            }
            match r.state {
                State::Online => out.push(Effect::RunIsAlive(id)),
                State::Failed if std::mem::take(&mut r.failure_unhandled) => {
                    // Still checked while unmanaged: stop that before the terminate.
                    out.push(Effect::Unmonitor(id));
                    // Already `failed`: only the decision follows.
                    self.decide_failure(now, id, true, out);
                }
                State::Offline => {
                    r.rereading = true;
                    out.push(Effect::Reread(id));
                }
                _ => {}
            }
        }
    }

    fn wait_for_retry(&mut self, now: Time, id: ResourceId, out: &mut Vec<Effect>) {
        let at = now.after(self.spec.resource(id).policy.retry_period_on_failure);
        self.resources[id.0].escalation = Escalation::WaitingRetry(at);
        out.push(Effect::RetryScheduled { resource: id, at });
    }

    /// An `offline` failed or timed out: the resource is failed, and terminated.
    fn offline_failed(&mut self, id: ResourceId, cause: Cause, out: &mut Vec<Effect>) {
        self.transition(id, State::Failed, cause, out);
        if self.is_unmanaged(id) {
            self.resources[id.0].failure_unhandled = true;
            return;
        }
        self.start_terminate(id, AfterTerminate::Offline, out);
    }

    fn start_terminate(&mut self, id: ResourceId, after: AfterTerminate, out: &mut Vec<Effect>) {
        let r = &mut self.resources[id.0];
        r.pending = Some(Operation::Terminate);
        r.after_terminate = after;
        out.push(Effect::Terminate(id));
    }

    fn terminated(&mut self, now: Time, id: ResourceId, out: &mut Vec<Effect>) {
        match self.resources[id.0].after_terminate {
            AfterTerminate::StayFailed => {}
            AfterTerminate::Restart
                if self.mode == GroupMode::Active && !self.resources[id.0].admin_offline =>
            {
                let r = &mut self.resources[id.0];
                if r.restart_delay.is_zero() {
                    self.transition(id, State::Offline, Cause::Restart, out);
                } else {
                    // Stays `failed` meanwhile; the runtime's Tick at `next_timer` restarts it.
                    r.restart_at = Some(now.after(r.restart_delay));
                }
            }
            AfterTerminate::Restart | AfterTerminate::Offline => {
                let to = self.down_state(id);
                self.transition(id, to, Cause::Terminated, out);
            }
        }
    }

    fn down_state(&self, id: ResourceId) -> State {
        if self.resources[id.0].admin_offline {
            State::OfflineByAdmin
        } else {
            State::Offline
        }
    }

    fn admin(&mut self, command: AdminCommand, out: &mut Vec<Effect>) {
        let touched = match command {
            AdminCommand::Online(id) | AdminCommand::Offline(id) => self.is_unmanaged(id),
            AdminCommand::GroupOnline | AdminCommand::GroupOffline => {
                (0..self.resources.len()).any(|i| self.is_unmanaged(ResourceId(i)))
            }
            AdminCommand::Clear(_) => false,
        };
        if touched {
            out.push(Effect::Refused {
                command,
                why: "in maintenance: the agent starts and stops nothing of it until it leaves maintenance",
            });
            return;
        }
        match command {
            AdminCommand::Online(id) => {
                for p in self.spec.with_providers(id) {
                    self.admin_online(p, out);
                }
                self.mode = GroupMode::Active;
            }
            AdminCommand::GroupOnline => {
                for i in 0..self.resources.len() {
                    self.admin_online(ResourceId(i), out);
                }
                self.mode = GroupMode::Active;
            }
            AdminCommand::Offline(id) => self.admin_offline(id, out),
            AdminCommand::GroupOffline => {
                for i in 0..self.resources.len() {
                    self.admin_offline(ResourceId(i), out);
                }
            }
            AdminCommand::Clear(id) => {
                let r = &mut self.resources[id.0];
                if r.state != State::Failed {
                    out.push(Effect::Refused {
                        command,
                        why: "the resource is not failed",
                    });
                } else if r.pending.is_some() {
                    out.push(Effect::Refused {
                        command,
                        why: "the resource is still being terminated",
                    });
                } else {
                    r.escalation = Escalation::None;
                    r.restarts.clear();
                    // The administrator has seen to it.
                    r.may_still_run = false;
                    let to = self.down_state(id);
                    self.transition(id, to, Cause::Admin, out);
                }
            }
        }
    }

    fn admin_online(&mut self, id: ResourceId, out: &mut Vec<Effect>) {
        let r = &mut self.resources[id.0];
        r.admin_offline = false;
        if r.pending.is_some() {
            return; // a terminate in flight ends in `offline`, then reconcile starts it
        }
        match r.state {
            State::OfflineByAdmin => self.transition(id, State::Offline, Cause::Admin, out),
            State::Failed => {
                r.escalation = Escalation::None;
                self.transition(id, State::Offline, Cause::Admin, out);
            }
            _ => {}
        }
    }

    fn admin_offline(&mut self, id: ResourceId, out: &mut Vec<Effect>) {
        let r = &mut self.resources[id.0];
        r.admin_offline = true;
        r.escalation = Escalation::None;
        r.next_online_cause = None;
        if r.pending.is_none() && matches!(r.state, State::Offline | State::Failed) {
            self.transition(id, State::OfflineByAdmin, Cause::Admin, out);
        }
        // Online resources are stopped by reconcile, once their dependents are down.
    }

    /// Whether each resource should be kept online, providers before dependents.
    fn wanted_online(&self) -> Vec<bool> {
        let mut keep = vec![false; self.resources.len()];
        for &id in self.spec.online_order() {
            let r = &self.resources[id.0];
            if self.is_unmanaged(id) {
                // Left as it is: its dependents follow what it really is.
                keep[id.0] = r.state == State::Online;
                continue;
            }
            keep[id.0] = self.mode == GroupMode::Active
                && !r.admin_offline
                && !r.stopping
                && r.state != State::Failed
                && self.spec.resource(id).depends_on.iter().all(|p| keep[p.0])
                && match self.externals_online(id) {
                    Some(online) => online,
                    None => matches!(r.state, State::Online | State::OnlinePending),
                };
        }
        keep
    }

    /// Whether the resource's external providers are online: `Some(false)` when one is known
    /// offline, `None` when one is not known yet.
    fn externals_online(&self, id: ResourceId) -> Option<bool> {
        let mut known = true;
        for e in &self.spec.resource(id).external {
            match self.externals.get(*e).copied().flatten() {
                Some(false) => return Some(false),
                Some(true) => {}
                None => known = false,
            }
        }
        known.then_some(true)
    }

    /// Starts what may come online and stops what must go offline, until nothing changes.
    fn reconcile(&mut self, out: &mut Vec<Effect>) {
        if self.mode == GroupMode::Passive {
            return;
        }
        loop {
            let keep = self.wanted_online();
            let unmanaged = self.unmanaged;
            for (r, keep) in self.resources.iter_mut().zip(&keep) {
                let left_alone = unmanaged || r.unmanaged;
                if !keep && !left_alone && matches!(r.state, State::Online | State::OnlinePending) {
                    r.stopping = true;
                }
            }
            let order = self.spec.online_order().to_vec();
            let mut changed = false;
            for &id in &order {
                let r = &self.resources[id.0];
                let providers_online = self
                    .spec
                    .resource(id)
                    .depends_on
                    .iter()
                    .all(|p| self.resources[p.0].state == State::Online);
                if r.pending.is_none()
                    && r.state == State::Offline
                    && keep[id.0]
                    && providers_online
                    && !r.rereading
                    && !self.is_unmanaged(id)
                {
                    let cause = self.resources[id.0]
                        .next_online_cause
                        .take()
                        .unwrap_or(Cause::DependenciesOnline);
                    self.resources[id.0].pending = Some(Operation::Online);
                    self.transition(id, State::OnlinePending, cause, out);
                    out.push(Effect::Online(id));
                    changed = true;
                }
            }
            for &id in order.iter().rev() {
                let r = &self.resources[id.0];
                if r.pending.is_some()
                    || r.state != State::Online
                    || keep[id.0]
                    || self.is_unmanaged(id)
                {
                    continue;
                }
                let dependents_down = !self.dependents_elsewhere[id.0]
                    && self.spec.dependents(id).iter().all(|d| {
                        let d = &self.resources[d.0];
                        d.pending.is_none() && d.state.is_down()
                    });
                if dependents_down {
                    let cause = if self.mode == GroupMode::Stopping {
                        Cause::GroupStopping
                    } else if r.admin_offline {
                        Cause::Admin
                    } else {
                        Cause::ProviderDown
                    };
                    self.resources[id.0].pending = Some(Operation::Offline);
                    self.transition(id, State::OfflinePending, cause, out);
                    out.push(Effect::Unmonitor(id));
                    out.push(Effect::Offline(id));
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
    }

    fn transition(&mut self, id: ResourceId, to: State, cause: Cause, out: &mut Vec<Effect>) {
        if to.is_down() {
            self.resources[id.0].stopping = false;
        }
        // Whatever takes it out of `failed` (an administrator, an activation) ends the wait.
        if to != State::Failed {
            self.resources[id.0].restart_at = None;
        }
        if to != State::Online {
            self.resources[id.0].failed_checks = 0;
            self.resources[id.0].over_limit = 0;
        }
        let from = std::mem::replace(&mut self.resources[id.0].state, to);
        if from != to {
            out.push(Effect::Transition {
                resource: id,
                from,
                to,
                cause,
            });
        }
    }
}
