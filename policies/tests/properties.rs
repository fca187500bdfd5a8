//! Property tests of the controller's invariants over random groups and random input sequences:
//! - no resource is brought online while one of its providers is not online, and once nothing
//!   is in flight no online resource has a provider that is not online;
//! - the restarts of a resource within any window of `restart_period` never exceed
//!   `restart_threshold`;
//! - a resource an administrator took offline is never started or restarted until an
//!   administrator brings it online;
//! - at most one operation is in flight per resource, and every pending operation ends in a
//!   state once it completes or times out;
//! - nothing is started, stopped, restarted or failed over for a resource in maintenance (its
//!   own or its group's) but by a fence.

use proptest::prelude::*;
use resmon_policies::{
    AdminCommand, CheckKind, Effect, FailureReason, FlapDamping, GroupController, GroupSpec, Input,
    Operation, ResourceId, ResourceSpec, RestartAction, RestartPolicy, State, Time,
};
use std::collections::HashMap;
use std::time::Duration;

#[derive(Clone, Debug)]
enum Step {
    Complete {
        pick: usize,
        result: u8,
    },
    Check {
        resource: usize,
        looks: bool,
        ok: bool,
    },
    Signal {
        resource: usize,
    },
    AdminOnline {
        resource: usize,
    },
    AdminOffline {
        resource: usize,
    },
    Clear {
        resource: usize,
    },
    GroupOnline,
    GroupOffline,
    Failover {
        moved: bool,
    },
    Tick,
    Deactivate,
    /// The node's lease may expire: terminate everything now.
    Fence,
    /// The group is given (back) to this node, as the coordinator does after a move.
    Activate,
    /// Maintenance on or off, for one resource or the group.
    Maintenance {
        resource: Option<usize>,
        on: bool,
    },
    /// The answer to a look on leaving maintenance.
    Reread {
        pick: usize,
        alive: bool,
    },
    /// A dependent in another group on this node came up or went down.
    DependentsElsewhere {
        resource: usize,
        up: bool,
    },
}

fn step_strategy() -> impl Strategy<Value = (u64, Step)> {
    let step = prop_oneof![
        8 => (any::<usize>(), 0u8..4).prop_map(|(pick, result)| Step::Complete { pick, result }),
        4 => (any::<usize>(), any::<bool>(), any::<bool>()).prop_map(|(resource, looks, ok)| Step::Check { resource, looks, ok }),
        3 => any::<usize>().prop_map(|resource| Step::Signal { resource }),
        1 => any::<usize>().prop_map(|resource| Step::AdminOnline { resource }),
        1 => any::<usize>().prop_map(|resource| Step::AdminOffline { resource }),
        1 => any::<usize>().prop_map(|resource| Step::Clear { resource }),
        1 => Just(Step::GroupOnline),
        1 => Just(Step::GroupOffline),
        1 => any::<bool>().prop_map(|moved| Step::Failover { moved }),
        2 => Just(Step::Tick),
        1 => Just(Step::Deactivate),
        1 => Just(Step::Fence),
        1 => Just(Step::Activate),
        2 => (proptest::option::of(any::<usize>()), any::<bool>()).prop_map(|(resource, on)| Step::Maintenance { resource, on }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(pick, alive)| Step::Reread { pick, alive }),
        2 => (any::<usize>(), any::<bool>()).prop_map(|(resource, up)| Step::DependentsElsewhere { resource, up }),
    ];
    (0u64..4000, step)
}

fn group_strategy() -> impl Strategy<Value = Vec<ResourceSpec>> {
    (1usize..6).prop_flat_map(|n| {
        let resource = (
            proptest::collection::vec(any::<bool>(), n),
            0u32..4,
            1u64..20,
            1u64..30,
            0u8..3,
            any::<bool>(),
        );
        proptest::collection::vec(resource, n).prop_map(move |specs| {
            specs
                .into_iter()
                .enumerate()
                .map(
                    |(i, (deps, threshold, period, retry, action, signal))| ResourceSpec {
                        name: format!("r{i}"),
                        depends_on: (0..i).filter(|&j| deps[j]).map(ResourceId).collect(),
                        fence_first: i == 0,
                        external: Vec::new(),
                        policy: RestartPolicy {
                            restart_action: [
                                RestartAction::NoRestart,
                                RestartAction::RestartNoFailover,
                                RestartAction::RestartThenFailover,
                            ][action as usize],
                            restart_threshold: threshold,
                            restart_period: Duration::from_secs(period),
                            retry_period_on_failure: Duration::from_secs(retry),
                            // Half the specs wait before each restart, with backoff: the
                            // invariants must hold across the wait too.
                            restart_delay: Duration::from_millis(if threshold % 2 == 0 {
                                500
                            } else {
                                0
                            }),
                            restart_delay_max: Some(Duration::from_secs(4)),
                            failure_threshold: 1 + (period as u32 % 3),
                            limit_checks: 1 + (period as u32 % 2),
                            provides_failure_signal: signal,
                            poll_looks_alive: None,
                            // Half with flap damping: it only ever delays a restart.
                            flap_damping: (retry % 2 == 0).then_some(FlapDamping {
                                penalty: 1000,
                                suppress: 1500,
                                reuse: 750,
                                half_life: Duration::from_secs(5),
                            }),
                        },
                    },
                )
                .collect()
        })
    })
}

struct Checker {
    c: GroupController,
    n: usize,
    in_flight: HashMap<ResourceId, Operation>,
    admin_offline: Vec<bool>,
    restarts: Vec<Vec<Time>>,
    /// Fenced and not given the group again since: nothing may start.
    fenced: bool,
    /// Resources whose look (`Effect::Reread`) is out.
    rereads: Vec<ResourceId>,
    /// Resources with a dependent up in another group on this node, as last told.
    elsewhere_up: Vec<bool>,
}

impl Checker {
    fn feed(&mut self, now: Time, input: Input) -> Result<(), TestCaseError> {
        let cleared = match input {
            Input::Admin(AdminCommand::Clear(id)) => Some(id),
            _ => None,
        };
        let fencing = input == Input::Fence;
        let deactivating = matches!(
            input,
            Input::Deactivate | Input::FailoverCompleted { moved: true }
        );
        if let Input::DependentsElsewhere { resource, up } = input {
            self.elsewhere_up[resource.0] = up;
        }
        match input {
            Input::Fence => self.fenced = true,
            Input::Activate
            | Input::Admin(AdminCommand::Online(_))
            | Input::Admin(AdminCommand::GroupOnline) => self.fenced = false,
            _ => {}
        }
        let effects = self.c.step(now, input);
        let mut superseded = Vec::new();
        // An accepted clear forgets the restart history by design: the window starts over.
        if let Some(id) = cleared {
            if !effects.iter().any(|e| matches!(e, Effect::Refused { .. })) {
                self.restarts[id.0].clear();
            }
        }
        for e in &effects {
            match e {
                Effect::Reread(r) => self.rereads.push(*r),
                Effect::RestartScheduled { resource: r, .. }
                | Effect::RequestFailover { resource: r } => {
                    prop_assert!(!self.c.is_unmanaged(*r), "{e:?} for {r} in maintenance");
                }
                Effect::Online(r) | Effect::Offline(r) | Effect::Terminate(r) => {
                    prop_assert!(
                        fencing || !self.c.is_unmanaged(*r),
                        "{e:?} for {r} in maintenance"
                    );
                    prop_assert!(
                        !(matches!(e, Effect::Offline(_)) && self.elsewhere_up[r.0]),
                        "orderly offline of {r} while a dependent in another group is up"
                    );
                }
                _ => {}
            }
            let (id, op) = match e {
                Effect::Online(r) => (*r, Operation::Online),
                Effect::Offline(r) => (*r, Operation::Offline),
                Effect::Terminate(r) => (*r, Operation::Terminate),
                Effect::RestartScheduled { resource, .. } => {
                    prop_assert!(
                        !self.admin_offline[resource.0],
                        "restart of admin-offline {resource}"
                    );
                    self.restarts[resource.0].push(now);
                    continue;
                }
                _ => continue,
            };
            prop_assert!(
                !(self.fenced && op == Operation::Online),
                "online of {id} after the node fenced itself"
            );
            if fencing {
                prop_assert_eq!(op, Operation::Terminate, "a fence only terminates");
                // The operation in flight is superseded: its answer may still come.
                if let Some(old) = self.in_flight.remove(&id) {
                    superseded.push((id, old));
                }
            }
            if deactivating && op == Operation::Terminate {
                // Only an online under way is superseded by a stop.
                if let Some(old) = self.in_flight.remove(&id) {
                    prop_assert_eq!(old, Operation::Online, "a stop superseded {}", old);
                    superseded.push((id, old));
                }
            }
            prop_assert!(
                self.in_flight.insert(id, op).is_none(),
                "a second operation {op} for {id} while one is in flight"
            );
            if op == Operation::Online {
                prop_assert!(!self.admin_offline[id.0], "online of admin-offline {id}");
                for p in &self.c.spec().resource(id).depends_on {
                    prop_assert_eq!(
                        self.c.state(*p),
                        State::Online,
                        "{} started before provider {}",
                        id,
                        p
                    );
                }
            }
        }
        if fencing {
            for i in 0..self.n {
                let id = ResourceId(i);
                prop_assert!(
                    self.c.state(id).is_down()
                        || self.in_flight.get(&id) == Some(&Operation::Terminate),
                    "{id} is {} and not being terminated after a fence",
                    self.c.state(id)
                );
            }
            // A superseded operation's late answer changes nothing.
            for (id, operation) in superseded {
                let late = self.c.step(
                    now,
                    Input::OperationCompleted {
                        resource: id,
                        operation,
                        outcome: Ok(()),
                    },
                );
                prop_assert!(late.is_empty(), "the late {operation} of {id} did {late:?}");
            }
        }
        for i in 0..self.n {
            let id = ResourceId(i);
            let pending_state = matches!(
                self.c.state(id),
                State::OnlinePending | State::OfflinePending
            );
            if pending_state {
                prop_assert!(
                    self.in_flight.contains_key(&id),
                    "{id} pending without an operation"
                );
            }
        }
        Ok(())
    }

    fn admin_online(&mut self, id: ResourceId) {
        for p in self.c.spec().with_providers(id) {
            self.admin_offline[p.0] = false;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn invariants_hold(specs in group_strategy(), steps in proptest::collection::vec(step_strategy(), 0..80), adopt in any::<u8>()) {
        let n = specs.len();
        let spec = GroupSpec::new("g", specs).unwrap();
        let mut k = Checker {
            c: GroupController::new(spec),
            n,
            in_flight: HashMap::new(),
            admin_offline: vec![false; n],
            restarts: vec![Vec::new(); n],
            fenced: false,
            rereads: Vec::new(),
            elsewhere_up: vec![false; n],
        };
        let mut now = Time::ZERO;
        for i in 0..n {
            if adopt & (1 << i) != 0 {
                k.feed(now, Input::Adopted(ResourceId(i)))?;
            }
        }
        k.feed(now, Input::Activate)?;
        for (advance_ms, step) in steps {
            now = now.after(Duration::from_millis(advance_ms));
            let input = match step {
                Step::Complete { pick, result } => {
                    if k.in_flight.is_empty() { continue; }
                    let mut keys: Vec<_> = k.in_flight.keys().copied().collect();
                    keys.sort();
                    let id = keys[pick % keys.len()];
                    let operation = k.in_flight.remove(&id).unwrap();
                    match result {
                        0 => Input::OperationTimedOut { resource: id, operation },
                        1 => Input::OperationCompleted { resource: id, operation, outcome: Err(FailureReason::Io) },
                        _ => Input::OperationCompleted { resource: id, operation, outcome: Ok(()) },
                    }
                }
                Step::Check { resource, looks, ok } => Input::CheckCompleted {
                    resource: ResourceId(resource % n),
                    check: if looks { CheckKind::LooksAlive } else { CheckKind::IsAlive },
                    // Some checks find a usage limit exceeded: counted by another threshold.
                    outcome: match (ok, (resource / n) % 2) {
                        (true, _) => Ok(()),
                        (false, 0) => Err(FailureReason::Refused),
                        (false, _) => Err(FailureReason::ResourceLimit),
                    },
                },
                Step::Signal { resource } => Input::FailureSignalled { resource: ResourceId(resource % n), reason: FailureReason::Exited },
                // Refused in maintenance: nothing to follow.
                Step::AdminOnline { resource } | Step::AdminOffline { resource }
                    if (0..n).any(|i| k.c.is_unmanaged(ResourceId(i))) && { let _ = resource; true } => continue,
                Step::GroupOnline | Step::GroupOffline
                    if (0..n).any(|i| k.c.is_unmanaged(ResourceId(i))) => continue,
                Step::AdminOnline { resource } => {
                    k.admin_online(ResourceId(resource % n));
                    Input::Admin(AdminCommand::Online(ResourceId(resource % n)))
                }
                Step::AdminOffline { resource } => {
                    k.admin_offline[resource % n] = true;
                    Input::Admin(AdminCommand::Offline(ResourceId(resource % n)))
                }
                Step::Clear { resource } => Input::Admin(AdminCommand::Clear(ResourceId(resource % n))),
                Step::GroupOnline => {
                    k.admin_offline.iter_mut().for_each(|a| *a = false);
                    Input::Admin(AdminCommand::GroupOnline)
                }
                Step::GroupOffline => {
                    k.admin_offline.iter_mut().for_each(|a| *a = true);
                    Input::Admin(AdminCommand::GroupOffline)
                }
                Step::Failover { moved } => Input::FailoverCompleted { moved },
                Step::Tick => Input::Tick,
                Step::Deactivate => Input::Deactivate,
                Step::Fence => Input::Fence,
                Step::Activate => Input::Activate,
                Step::Maintenance { resource, on } => Input::Maintenance { resource: resource.map(|r| ResourceId(r % n)), on },
                Step::Reread { pick, alive } => {
                    if k.rereads.is_empty() { continue; }
                    let resource = k.rereads.remove(pick % k.rereads.len());
                    Input::Reread { resource, alive }
                }
                Step::DependentsElsewhere { resource, up } => Input::DependentsElsewhere {
                    resource: ResourceId(resource % n),
                    up,
                },
            };
            k.feed(now, input)?;
            for i in 0..n {
                let id = ResourceId(i);
                prop_assert!(
                    !k.c.available(id) || k.c.state(id) == State::Online,
                    "{id} available while {}", k.c.state(id)
                );
            }
        }

        // The dependents in other groups go down, as they do once their provider is not
        // available.
        for i in 0..n {
            k.feed(now, Input::DependentsElsewhere { resource: ResourceId(i), up: false })?;
        }
        // Every look still out is answered (not running), as the runtime always answers.
        while let Some(resource) = k.rereads.pop() {
            k.feed(now, Input::Reread { resource, alive: false })?;
        }
        // Every operation in flight ends: complete them all successfully until none is left.
        for _ in 0..(10 * n + 10) {
            let Some((&id, &operation)) = k.in_flight.iter().next() else { break };
            k.in_flight.remove(&id);
            now = now.after(Duration::from_millis(10));
            k.feed(now, Input::OperationCompleted { resource: id, operation, outcome: Ok(()) })?;
        }
        prop_assert!(k.in_flight.is_empty(), "operations still in flight after draining: {:?}", k.in_flight);
        prop_assert!(k.c.is_settled());
        for i in 0..n {
            let id = ResourceId(i);
            let s = k.c.state(id);
            prop_assert!(!matches!(s, State::OnlinePending | State::OfflinePending), "{id} stuck in {s}");
            // (A dependent in maintenance that runs holds its providers' own dependents up.)
            let any_unmanaged = (0..n).any(|j| k.c.is_unmanaged(ResourceId(j)));
            if s == State::Online && !any_unmanaged {
                for p in &k.c.spec().resource(id).depends_on {
                    prop_assert_eq!(k.c.state(*p), State::Online, "{} online while provider {} is not", id, p);
                }
            }
            // (In maintenance, what was in flight finished and nothing stops it; a provider
            // stays up under a dependent in maintenance that runs.)
            if k.admin_offline[i] && !any_unmanaged {
                prop_assert!(s.is_down(), "admin-offline {id} is {s}");
            }
        }

        // Restarts within any window of one restart_period never exceed the threshold.
        for i in 0..n {
            let policy = &k.c.spec().resource(ResourceId(i)).policy;
            let times = &k.restarts[i];
            for (j, start) in times.iter().enumerate() {
                let in_window = times[j..].iter().filter(|t| **t < start.after(policy.restart_period)).count();
                prop_assert!(in_window as u32 <= policy.restart_threshold,
                    "r{i}: {in_window} restarts within {:?} of {start} (threshold {})", policy.restart_period, policy.restart_threshold);
            }
        }
    }
}
