//! One task per group: feeds the group's [`GroupController`] with what its workers report,
//! timestamps each input, and carries out the returned effects. What it hears from outside the
//! group (providers in other groups, maintenance) is in `feeds`.

mod feeds;

use super::worker::{self, WorkerCommand, WorkerHandle};
use super::{ResourceContext, Shared};
use crate::cluster::{Directive, FailoverAnswer, GroupLink};
use crate::config::{AgentConfig, GroupConfig};
use crate::events::{
    AdminRefused, Event, FailoverFailed, FailoverRequested, GaveUp, RestartDamped,
    RestartRequested, RetryScheduled, StateChanged,
};
use crate::metrics::{ResourceLabels, TypeLabel};
use crate::status::{self, GroupSlots, ResourceStatus};
use resmon_policies::{
    AdminCommand, Effect, GroupController, GroupMode, Input, Operation, ResourceId, Time,
};
use resmon_probes::tls::TrustCache;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

/// What reaches a group task.
pub(crate) enum GroupEvent {
    /// An input for the controller, from a worker.
    Input(Input),
    /// A worker's adoption result at start-up.
    Adopted {
        /// Which resource.
        resource: ResourceId,
        /// Whether it was found alive.
        alive: bool,
    },
    /// An administrator's command; the reply says whether it was applied.
    Admin {
        /// The command.
        command: AdminCommand,
        /// `Err(why)` when refused.
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Let go of the group; with `stop_resources`, first take it offline (dependents first).
    Stop {
        /// Take the resources offline before letting go.
        stop_resources: bool,
        /// Told once the group task has ended.
        done: oneshot::Sender<()>,
    },
}

/// The agent's end of a running group.
pub(crate) struct GroupHandle {
    name: String,
    /// [`GroupConfig::fingerprint`] of the config it runs.
    pub(crate) fingerprint: u64,
    /// The state dir its resources were built with.
    pub(crate) state_dir: std::path::PathBuf,
    tx: mpsc::UnboundedSender<GroupEvent>,
    contexts: Vec<Arc<ResourceContext>>,
}

impl GroupHandle {
    /// Lets go of the group (stopping it first if asked) and waits until its task ended.
    pub(crate) async fn stop(self, stop_resources: bool, shared: &Shared) {
        let (done, wait) = oneshot::channel();
        if self
            .tx
            .send(GroupEvent::Stop {
                stop_resources,
                done,
            })
            .is_ok()
        {
            let _ = wait.await;
        }
        shared.status.remove(&self.name);
        shared
            .admins
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.name);
        for cx in &self.contexts {
            shared.sink.metrics().forget(&cx.metrics.labels);
        }
    }
}

/// What the control API needs to steer a group: its channel and its resources' names.
#[derive(Clone)]
pub struct GroupAdmin {
    tx: mpsc::UnboundedSender<GroupEvent>,
    spec: resmon_policies::GroupSpec,
}

impl GroupAdmin {
    /// A resource by name.
    pub fn find(&self, resource: &str) -> Option<ResourceId> {
        self.spec.find(resource)
    }

    /// Sends an administrator's command and waits for the answer: `Err(why)` when refused.
    pub async fn admin(&self, command: AdminCommand) -> Result<(), String> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(GroupEvent::Admin { command, reply })
            .map_err(|_| "the group is shutting down".to_string())?;
        answer
            .await
            .map_err(|_| "the group is shutting down".to_string())?
    }
}

struct GroupTask {
    name: String,
    controller: GroupController,
    workers: Vec<WorkerHandle>,
    contexts: Vec<Arc<ResourceContext>>,
    slots: Arc<GroupSlots>,
    shared: Arc<Shared>,
    rx: mpsc::UnboundedReceiver<GroupEvent>,
    /// Inputs the task gives itself (the embedded coordinator's answers), handled next.
    own_inputs: VecDeque<Input>,
    /// The reply owed for the admin command being applied.
    admin_reply: Option<Result<(), String>>,
    /// The coordinator's word on whether this node runs the group.
    link: GroupLink,
    /// The directive followed last.
    directive: Directive,
    /// The group went offline under [`Directive::Stop`] or [`Directive::Fence`] and the
    /// coordinator was told.
    released: bool,
    /// The coordinator's answer to a failover request, while it is awaited.
    failover: Option<oneshot::Receiver<FailoverAnswer>>,
    /// The resources other groups depend on, whose states are published (few or none: only
    /// these are looked at after each step).
    published: Vec<feeds::Published>,
    /// The resources of other groups this group's resources depend on, and what the
    /// controller was told of each.
    externals: Vec<(crate::config::External, Option<bool>)>,
    /// Told when a provider's state changes (only with externals).
    provider_changes: Option<tokio::sync::watch::Receiver<u64>>,
    /// Told when maintenance changes; what the controller was told of the group and of each
    /// resource.
    maintenance_changes: tokio::sync::watch::Receiver<u64>,
    told_maintenance: (bool, Vec<bool>),
}

/// Builds a group's resources (their TLS trust through `trust`) and workers and starts its task.
pub(crate) fn spawn(
    config: GroupConfig,
    agent: &AgentConfig,
    shared: &Arc<Shared>,
    trust: &TrustCache,
) -> GroupHandle {
    let build =
        |r: &crate::config::ResourceConfig| r.private.build(&config.build_context(agent, r, trust));
    let resources = config.resources.iter().map(build).collect();
    spawn_with(config, agent, shared, resources)
}

/// Starts a group whose resources are already built (tests bring their own resource types).
pub(crate) fn spawn_with(
    config: GroupConfig,
    agent: &AgentConfig,
    shared: &Arc<Shared>,
    resources: Vec<Arc<dyn resmon_probes::Resource>>,
) -> GroupHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut contexts = Vec::with_capacity(config.resources.len());
    let mut workers = Vec::with_capacity(config.resources.len());
    let mut slots = Vec::with_capacity(config.resources.len());
    for ((i, r), resource) in config.resources.iter().enumerate().zip(resources) {
        let l = ResourceLabels {
            group: config.name.to_string(),
            resource: r.name.to_string(),
            kind: TypeLabel {
                r#type: r.type_name(),
            },
        };
        let slot = Arc::new(Mutex::new(ResourceStatus::new(
            r.name.to_string(),
            r.type_name().into(),
            r.depends_on.clone(),
            r.props.restart_threshold,
            crate::events::unix_now(),
        )));
        slots.push(slot.clone());
        let cx = Arc::new(ResourceContext {
            id: ResourceId(i),
            type_name: r.type_name(),
            props: r.props.clone(),
            metrics: shared.sink.metrics().resource(l),
            status: slot,
            sink: shared.sink.clone(),
            start_gate: shared.start_gate.clone(),
            commands: Default::default(),
        });
        workers.push(worker::spawn(
            cx.clone(),
            resource,
            tx.clone(),
            &shared.unused_progress,
            &shared.check_threads,
        ));
        contexts.push(cx);
    }
    let slots = Arc::new(GroupSlots {
        mode: Mutex::new(GroupMode::Passive),
        resources: slots,
    });
    shared.status.insert(config.name.as_str(), slots.clone());
    let link = shared
        .coordinator
        .register(config.name.as_str(), config.placement.clone());
    shared
        .admins
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            config.name.to_string(),
            GroupAdmin {
                tx: tx.clone(),
                spec: config.spec.clone(),
            },
        );
    let handle_contexts = contexts.clone();
    let published = config
        .published
        .iter()
        .map(|&id| feeds::Published::new(id, format!("{}/{}", config.name, contexts[id.0].name())))
        .collect();
    // Dependents hear of their providers, providers of their dependents.
    let provider_changes = (!config.externals.is_empty() || !config.published.is_empty())
        .then(|| shared.coordinator.providers().subscribe());
    let task = GroupTask {
        name: config.name.to_string(),
        controller: GroupController::new(config.spec.clone()),
        workers,
        contexts,
        slots,
        shared: shared.clone(),
        rx,
        own_inputs: VecDeque::new(),
        admin_reply: None,
        link,
        directive: Directive::Wait,
        released: false,
        failover: None,
        published,
        externals: config.externals.iter().map(|e| (e.clone(), None)).collect(),
        provider_changes,
        maintenance_changes: shared.maintenance.subscribe(),
        told_maintenance: (false, vec![false; config.resources.len()]),
    };
    tokio::spawn(task.run());
    GroupHandle {
        name: config.name.to_string(),
        fingerprint: config.fingerprint(),
        state_dir: agent.state_dir.clone(),
        tx,
        contexts: handle_contexts,
    }
}

impl GroupTask {
    fn now(&self) -> Time {
        Time::from_elapsed(Instant::now() - self.shared.epoch)
    }

    async fn run(mut self) {
        // Start-up: adopt what survived an agent restart before deciding anything.
        let n = self.workers.len();
        let mut alive = vec![None; n];
        let mut early = Vec::new();
        while alive.iter().any(Option::is_none) {
            match self.rx.recv().await {
                Some(GroupEvent::Adopted { resource, alive: a }) => alive[resource.0] = Some(a),
                Some(GroupEvent::Stop { done, .. }) => {
                    let _ = done.send(());
                    return;
                }
                Some(other) => early.push(other),
                None => return,
            }
        }
        for (i, a) in alive.iter().enumerate() {
            if *a == Some(true) {
                self.step(Input::Adopted(ResourceId(i)));
            }
        }
        // Other groups wait for this word on what they depend on.
        for k in 0..self.published.len() {
            let alive = alive[self.published[k].id.0] == Some(true);
            self.publish(k, alive);
        }
        self.feed_externals();
        // Before the first directive: a group in maintenance starts nothing at all.
        self.feed_maintenance();
        let directive = *self.link.directive.borrow_and_update();
        self.follow(directive);
        for event in early {
            if let Some(done) = self.handle(event).await {
                let _ = done.send(());
                return;
            }
        }

        loop {
            let timer = self
                .controller
                .next_timer()
                .map(|t| self.shared.epoch + t.elapsed());
            tokio::select! {
                event = self.rx.recv() => {
                    let Some(event) = event else { return };
                    if let Some(done) = self.handle(event).await {
                        let _ = done.send(());
                        return;
                    }
                }
                changed = self.link.directive.changed() => {
                    if changed.is_err() {
                        // The coordinator is gone: nothing can tell this node it still owns it.
                        self.follow(Directive::Stop);
                        std::future::pending::<()>().await;
                    }
                    let directive = *self.link.directive.borrow_and_update();
                    self.follow(directive);
                }
                _ = feeds::provider_changed(&mut self.provider_changes) => self.feed_externals(),
                changed = self.maintenance_changes.changed() => {
                    if changed.is_ok() {
                        self.feed_maintenance();
                    }
                }
                answer = failover_answer(&mut self.failover) => {
                    self.failover = None;
                    let answer = answer.unwrap_or(FailoverAnswer {
                        moved: false,
                        detail: "the coordinator did not answer".into(),
                    });
                    if !answer.moved {
                        FailoverFailed {
                            group: &self.name,
                            why: &answer.detail,
                        }
                        .emit(&self.shared.sink);
                    }
                    self.step(Input::FailoverCompleted { moved: answer.moved });
                }
                _ = sleep_until(timer) => self.step(Input::Tick),
            }
            self.report_released();
        }
    }

    /// Follows the coordinator: keep the group online only while this node holds it.
    fn follow(&mut self, directive: Directive) {
        if directive == self.directive {
            return;
        }
        self.directive = directive;
        self.released = false;
        match directive {
            Directive::Run => self.step(Input::Activate),
            Directive::Stop => self.step(Input::Deactivate),
            Directive::Fence => self.step(Input::Fence),
            Directive::Wait => {}
        }
        self.report_released();
    }

    /// Tells the coordinator once the group is offline after a stop, so the key can go.
    fn report_released(&mut self) {
        // A resource whose terminate failed may still run: the key stays held until it is not.
        let letting_go = matches!(self.directive, Directive::Stop | Directive::Fence);
        if letting_go && !self.released && self.controller.is_let_go() {
            self.released = true;
            self.link.released();
        }
    }

    /// Handles one event; returns the `done` sender when the task must end.
    async fn handle(&mut self, event: GroupEvent) -> Option<oneshot::Sender<()>> {
        match event {
            GroupEvent::Input(input) => self.step(input),
            // After start-up, an adoption answers a look on leaving maintenance.
            GroupEvent::Adopted { resource, alive } => self.step(Input::Reread { resource, alive }),
            GroupEvent::Admin { command, reply } => {
                let starts = matches!(command, AdminCommand::Online(_) | AdminCommand::GroupOnline);
                if starts && self.directive != Directive::Run {
                    let why = "this node does not hold the group: move it here with `resmon move`";
                    AdminRefused {
                        group: &self.name,
                        command: self.controller.describe_command(&command),
                        why,
                    }
                    .emit(&self.shared.sink);
                    let _ = reply.send(Err(why.to_string()));
                    return None;
                }
                self.admin_reply = Some(Ok(()));
                self.step(Input::Admin(command));
                let _ = reply.send(self.admin_reply.take().unwrap_or(Ok(())));
            }
            GroupEvent::Stop {
                stop_resources,
                done,
            } => {
                if stop_resources {
                    self.stop_resources().await;
                }
                return Some(done);
            }
        }
        None
    }

    /// Takes the group offline, dependents first (those in other groups here too), and waits
    /// until nothing is in flight.
    async fn stop_resources(&mut self) {
        self.step(Input::Deactivate);
        while !self.controller.is_settled() {
            let event = tokio::select! {
                event = self.rx.recv() => event,
                _ = feeds::provider_changed(&mut self.provider_changes) => {
                    self.feed_externals();
                    continue;
                }
            };
            match event {
                Some(GroupEvent::Input(input)) => self.step(input),
                Some(GroupEvent::Admin { reply, .. }) => {
                    let _ = reply.send(Err("the group is being stopped".into()));
                }
                Some(GroupEvent::Stop { done, .. }) => {
                    let _ = done.send(());
                }
                Some(GroupEvent::Adopted { .. }) => {}
                None => return,
            }
        }
    }

    fn step(&mut self, input: Input) {
        self.own_inputs.push_back(input);
        while let Some(input) = self.own_inputs.pop_front() {
            let now = self.now();
            let finished = match input {
                Input::OperationCompleted { resource, .. }
                | Input::OperationTimedOut { resource, .. } => Some(resource),
                _ => None,
            };
            let effects = self.controller.step(now, input);
            for effect in effects {
                self.apply(now, effect);
            }
            // An operation can end without a transition (a terminate that keeps it failed).
            if let Some(resource) = finished {
                self.refresh(resource, now);
            }
        }
        self.publish_availability();
    }

    fn apply(&mut self, now: Time, effect: Effect) {
        match effect {
            Effect::Transition {
                resource,
                from,
                to,
                cause,
            } => {
                let cx = self.contexts[resource.0].clone();
                {
                    let mut s = status::lock(&cx.status);
                    s.state = to;
                    s.since = crate::events::unix_now();
                    s.cause = cause.to_string();
                }
                self.refresh(resource, now);
                StateChanged {
                    group: &self.name,
                    resource: cx.name(),
                    r#type: cx.type_name,
                    from,
                    to,
                    cause: cause.to_string(),
                    metrics: &cx.metrics,
                }
                .emit(&self.shared.sink);
                *self.slots.mode.lock().unwrap_or_else(|e| e.into_inner()) = self.controller.mode();
                if !self
                    .controller
                    .spec()
                    .resource(resource)
                    .external
                    .is_empty()
                {
                    self.report_dependent(resource, !to.is_down());
                }
            }
            Effect::Online(r) => self.run_operation(r, Operation::Online, now),
            Effect::Offline(r) => self.run_operation(r, Operation::Offline, now),
            Effect::Terminate(r) => self.run_operation(r, Operation::Terminate, now),
            Effect::Monitor {
                resource,
                looks_alive,
            } => self.workers[resource.0].send(WorkerCommand::Monitor { looks_alive }),
            Effect::Unmonitor(r) => self.workers[r.0].send(WorkerCommand::Unmonitor),
            Effect::RunIsAlive(r) => self.workers[r.0].send(WorkerCommand::RunIsAlive),
            Effect::Reread(r) => self.workers[r.0].send(WorkerCommand::Reread),
            Effect::Damped {
                resource,
                penalty,
                until,
            } => {
                RestartDamped {
                    group: &self.name,
                    resource: self.contexts[resource.0].name(),
                    penalty,
                    held_seconds: until.elapsed().saturating_sub(now.elapsed()).as_secs_f64(),
                }
                .emit(&self.shared.sink);
                self.refresh(resource, now);
            }
            // The failed check is already an event (`probe_failed`); it is not yet a failure.
            Effect::CheckFailureCounted { .. } => {}
            Effect::RestartScheduled {
                resource,
                restarts_in_period,
                delay,
            } => {
                let cx = self.contexts[resource.0].clone();
                status::lock(&cx.status).restarts_total += 1;
                RestartRequested {
                    group: &self.name,
                    resource: cx.name(),
                    restarts_in_period,
                    delay_seconds: delay.as_secs_f64(),
                    metrics: &cx.metrics,
                }
                .emit(&self.shared.sink);
                self.refresh(resource, now);
            }
            Effect::RequestFailover { resource } => {
                FailoverRequested {
                    group: &self.name,
                    resource: self.contexts[resource.0].name(),
                }
                .emit(&self.shared.sink);
                self.failover = Some(self.link.request_failover());
            }
            // Logged with the coordinator's reason when its answer came.
            Effect::FailoverFailed => {}
            Effect::RetryScheduled { resource, at } => {
                RetryScheduled {
                    group: &self.name,
                    resource: self.contexts[resource.0].name(),
                    in_seconds: at.elapsed().saturating_sub(now.elapsed()).as_secs_f64(),
                }
                .emit(&self.shared.sink);
                self.refresh(resource, now);
            }
            Effect::GaveUp { resource } => {
                GaveUp {
                    group: &self.name,
                    resource: self.contexts[resource.0].name(),
                }
                .emit(&self.shared.sink);
                self.refresh(resource, now);
            }
            Effect::Refused { command, why } => {
                AdminRefused {
                    group: &self.name,
                    command: self.controller.describe_command(&command),
                    why,
                }
                .emit(&self.shared.sink);
                self.admin_reply = Some(Err(why.to_string()));
            }
        }
    }

    fn run_operation(&mut self, resource: ResourceId, op: Operation, now: Time) {
        self.workers[resource.0].send(WorkerCommand::Run(op));
        self.refresh(resource, now);
    }

    /// Copies the policy's view of one resource into its status slot.
    fn refresh(&mut self, resource: ResourceId, now: Time) {
        let view = self.controller.view(resource);
        let in_period = self.controller.restarts_in_period(resource, now);
        let cx = &self.contexts[resource.0];
        let mut s = status::lock(&cx.status);
        s.pending = view.pending;
        s.needs_admin = view.needs_admin;
        if s.unmanaged != view.unmanaged {
            s.unmanaged = view.unmanaged;
            cx.sink
                .metrics()
                .resource_unmanaged(&cx.metrics.labels, view.unmanaged);
        }
        s.restarts_in_period = in_period;
        let wall = |at: Time| {
            crate::events::unix_now() + at.elapsed().saturating_sub(now.elapsed()).as_secs_f64()
        };
        let frees = self.controller.restart_window_frees_at(resource, now);
        let timers = [
            ("restart", view.restart_at.map(wall)),
            ("retry", view.retry_at.map(wall)),
            (
                "damped_until",
                view.damped_until.filter(|u| *u > now).map(wall),
            ),
            ("restart_window_frees", frees.map(wall)),
        ];
        let shown = [
            s.restart_at,
            s.retry_at,
            s.damped_until,
            s.restart_window_frees_at,
        ];
        for ((timer, at), was) in timers.iter().zip(shown) {
            // Compared by presence and to the second: recomputed wall times jitter.
            let moved = at.map(f64::round) != was.map(f64::round);
            if moved {
                cx.sink
                    .metrics()
                    .resource_timer(&cx.metrics.labels, timer, *at);
            }
        }
        [
            s.restart_at,
            s.retry_at,
            s.damped_until,
            s.restart_window_frees_at,
        ] = timers.map(|(_, at)| at);
        if s.damping_penalty != view.damping_penalty {
            s.damping_penalty = view.damping_penalty;
            cx.sink
                .metrics()
                .damping_penalty(&cx.metrics.labels, view.damping_penalty);
        }
    }
}

async fn failover_answer(
    pending: &mut Option<oneshot::Receiver<FailoverAnswer>>,
) -> Option<FailoverAnswer> {
    match pending {
        Some(answer) => answer.await.ok(),
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
