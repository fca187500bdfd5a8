//! Transcript tests: every file in `testdata/` is a sequence of commands, each followed by
//! `----` and the effects the controller must return, one per line (the format of raft-rs's
//! datadriven tests). Run with `REWRITE=1` to regenerate the expected blocks after a deliberate
//! change, then read the diff.
//!
//! Commands:
//! - `resource NAME [after=A,B] [action=..] [threshold=N] [period=D] [retry=D] [delay=D]
//!   [delay_max=D] [fall=N] [signal]
//!   [poll_looks_alive=true|false] [fence_first] [external=N,M]
//!   [damping=PENALTY/SUPPRESS/REUSE/HALF_LIFE]` declares a resource (no
//!   output; `external` lists the group's external providers it depends on, by index);
//! - `start [adopt=A,B]` builds the controller, adopts the named resources and activates it;
//! - `at T INPUT` feeds an input at time T: `op NAME online|offline|terminate ok|timeout|REASON`,
//!   `check NAME looks_alive|is_alive ok|REASON`, `signal NAME REASON`,
//!   `admin online|offline|clear NAME`, `admin group-online|group-offline`,
//!   `failover moved|nowhere`, `external N online|offline`, `maintenance on|off [NAME]`,
//!   `dependents-elsewhere NAME up|down`,
//!   `reread NAME alive|dead`, `tick`, `deactivate`, `fence`, `activate`;
//! - `states` prints every resource's state; `available` which ones other groups may use.

mod datadriven;

use resmon_policies::{
    AdminCommand, CheckKind, Effect, FailureReason, GroupController, GroupSpec, Input, Operation,
    ResourceId, ResourceSpec, RestartAction, RestartPolicy, Time,
};
use std::time::Duration;

/// A declared resource: name, dependencies by name, policy, fence first, external providers.
type Declared = (String, Vec<String>, RestartPolicy, bool, Vec<usize>);

fn parse_duration(s: &str) -> Duration {
    // Compound durations such as `1h3m` or `30m21s`.
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: u64 = rest[..digits]
            .parse()
            .unwrap_or_else(|_| panic!("bad duration {s}"));
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        total += match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" | "" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            "h" => Duration::from_secs(n * 3600),
            _ => panic!("bad duration unit in {s}"),
        };
        rest = &rest[unit_len..];
    }
    total
}

struct Harness {
    declared: Vec<Declared>,
    controller: Option<GroupController>,
}

impl Harness {
    fn id(&self, name: &str) -> ResourceId {
        self.controller
            .as_ref()
            .expect("start first")
            .spec()
            .find(name)
            .unwrap_or_else(|| panic!("unknown resource {name}"))
    }

    fn name(&self, id: ResourceId) -> &str {
        &self.controller.as_ref().unwrap().spec().resource(id).name
    }

    fn render(&self, effects: &[Effect]) -> Vec<String> {
        let c = self.controller.as_ref().unwrap();
        effects.iter().map(|e| c.describe(e)).collect()
    }

    fn run(&mut self, line: &str) -> Vec<String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["resource", name, opts @ ..] => {
                let mut deps = Vec::new();
                let mut policy = RestartPolicy::default();
                let mut fence_first = false;
                let mut external = Vec::new();
                for opt in opts {
                    let (k, v) = opt.split_once('=').unwrap_or((opt, ""));
                    match k {
                        "after" => deps = v.split(',').map(String::from).collect(),
                        "action" => {
                            policy.restart_action = match v {
                                "no_restart" => RestartAction::NoRestart,
                                "restart_no_failover" => RestartAction::RestartNoFailover,
                                "restart_then_failover" => RestartAction::RestartThenFailover,
                                _ => panic!("bad action {v}"),
                            }
                        }
                        "threshold" => policy.restart_threshold = v.parse().unwrap(),
                        "period" => policy.restart_period = parse_duration(v),
                        "retry" => policy.retry_period_on_failure = parse_duration(v),
                        "delay" => policy.restart_delay = parse_duration(v),
                        "delay_max" => policy.restart_delay_max = Some(parse_duration(v)),
                        "fall" => policy.failure_threshold = v.parse().unwrap(),
                        "for_checks" => policy.limit_checks = v.parse().unwrap(),
                        "signal" => policy.provides_failure_signal = true,
                        "poll_looks_alive" => policy.poll_looks_alive = Some(v == "true"),
                        "fence_first" => fence_first = true,
                        "damping" => {
                            let f: Vec<&str> = v.split('/').collect();
                            policy.flap_damping = Some(resmon_policies::FlapDamping {
                                penalty: f[0].parse().unwrap(),
                                suppress: f[1].parse().unwrap(),
                                reuse: f[2].parse().unwrap(),
                                half_life: parse_duration(f[3]),
                            });
                        }
                        "external" => external = v.split(',').map(|e| e.parse().unwrap()).collect(),
                        _ => panic!("bad option {opt}"),
                    }
                }
                self.declared
                    .push((name.to_string(), deps, policy, fence_first, external));
                vec![]
            }
            ["start", opts @ ..] => {
                let names: Vec<String> = self.declared.iter().map(|d| d.0.clone()).collect();
                let specs = self
                    .declared
                    .iter()
                    .map(|(name, deps, policy, fence_first, external)| ResourceSpec {
                        name: name.clone(),
                        depends_on: deps
                            .iter()
                            .map(|d| {
                                ResourceId(
                                    names
                                        .iter()
                                        .position(|n| n == d)
                                        .expect("unknown dependency"),
                                )
                            })
                            .collect(),
                        policy: policy.clone(),
                        fence_first: *fence_first,
                        external: external.clone(),
                    })
                    .collect();
                self.controller = Some(GroupController::new(
                    GroupSpec::new("g", specs).expect("valid group"),
                ));
                let mut effects = Vec::new();
                for opt in opts {
                    if let Some(list) = opt.strip_prefix("adopt=") {
                        for name in list.split(',') {
                            let id = self.id(name);
                            effects.extend(
                                self.controller
                                    .as_mut()
                                    .unwrap()
                                    .step(Time::ZERO, Input::Adopted(id)),
                            );
                        }
                    }
                }
                effects.extend(
                    self.controller
                        .as_mut()
                        .unwrap()
                        .step(Time::ZERO, Input::Activate),
                );
                self.render(&effects)
            }
            ["available"] => {
                let c = self.controller.as_ref().unwrap();
                (0..c.spec().resources().len())
                    .map(|i| {
                        let yes = c.available(ResourceId(i));
                        format!(
                            "{}: {}",
                            self.name(ResourceId(i)),
                            if yes { "yes" } else { "no" }
                        )
                    })
                    .collect()
            }
            ["states"] => {
                let c = self.controller.as_ref().unwrap();
                (0..c.spec().resources().len())
                    .map(|i| {
                        let v = c.view(ResourceId(i));
                        let mut s = format!("{}: {}", self.name(ResourceId(i)), v.state);
                        if let Some(p) = v.pending {
                            s += &format!(" pending={p}");
                        }
                        if let Some(at) = v.retry_at {
                            s += &format!(" retry_at={at}");
                        }
                        if v.needs_admin {
                            s += " needs_admin";
                        }
                        if v.unmanaged {
                            s += " unmanaged";
                        }
                        s
                    })
                    .collect()
            }
            ["at", t, rest @ ..] => {
                let now = Time::from_elapsed(parse_duration(t));
                let input = self.input(rest);
                let effects = self.controller.as_mut().unwrap().step(now, input);
                self.render(&effects)
            }
            _ => panic!("unknown command: {line}"),
        }
    }

    fn input(&self, words: &[&str]) -> Input {
        let outcome = |w: &str| -> Result<(), FailureReason> {
            if w == "ok" {
                Ok(())
            } else {
                Err(FailureReason::parse(w).unwrap_or_else(|| panic!("bad reason {w}")))
            }
        };
        let operation = |w: &str| match w {
            "online" => Operation::Online,
            "offline" => Operation::Offline,
            "terminate" => Operation::Terminate,
            _ => panic!("bad operation {w}"),
        };
        match words {
            ["op", name, op, "timeout"] => Input::OperationTimedOut {
                resource: self.id(name),
                operation: operation(op),
            },
            ["op", name, op, result] => Input::OperationCompleted {
                resource: self.id(name),
                operation: operation(op),
                outcome: outcome(result),
            },
            ["check", name, kind, result] => Input::CheckCompleted {
                resource: self.id(name),
                check: match *kind {
                    "looks_alive" => CheckKind::LooksAlive,
                    "is_alive" => CheckKind::IsAlive,
                    _ => panic!("bad check {kind}"),
                },
                outcome: outcome(result),
            },
            ["signal", name, reason] => Input::FailureSignalled {
                resource: self.id(name),
                reason: FailureReason::parse(reason).expect("reason"),
            },
            ["admin", "online", name] => Input::Admin(AdminCommand::Online(self.id(name))),
            ["admin", "offline", name] => Input::Admin(AdminCommand::Offline(self.id(name))),
            ["admin", "clear", name] => Input::Admin(AdminCommand::Clear(self.id(name))),
            ["admin", "group-online"] => Input::Admin(AdminCommand::GroupOnline),
            ["admin", "group-offline"] => Input::Admin(AdminCommand::GroupOffline),
            ["failover", "moved"] => Input::FailoverCompleted { moved: true },
            ["failover", "nowhere"] => Input::FailoverCompleted { moved: false },
            ["maintenance", on, rest @ ..] => Input::Maintenance {
                resource: rest.first().map(|n| self.id(n)),
                on: *on == "on",
            },
            ["reread", name, alive] => Input::Reread {
                resource: self.id(name),
                alive: *alive == "alive",
            },
            ["dependents-elsewhere", name, up] => Input::DependentsElsewhere {
                resource: self.id(name),
                up: *up == "up",
            },
            ["external", n, state] => Input::External {
                provider: n.parse().unwrap(),
                online: *state == "online",
            },
            ["tick"] => Input::Tick,
            ["deactivate"] => Input::Deactivate,
            ["fence"] => Input::Fence,
            ["activate"] => Input::Activate,
            _ => panic!("bad input {words:?}"),
        }
    }
}

/// Runs one transcript with a fresh harness; returns the file with the actual output.
fn run_file(text: &str) -> String {
    let mut h = Harness {
        declared: Vec::new(),
        controller: None,
    };
    datadriven::run_file(text, |line| h.run(line))
}

#[test]
fn transcripts() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    datadriven::check_dir(&dir, run_file);
}
