//! `resmon simulate`: what the controller would do, step by step, for a scripted sequence of
//! failures, without touching anything: the same `policies` code the agent runs, fed by a
//! simulated world in which every operation succeeds at once unless the script says otherwise
//! (as `crm_simulate` replays Pacemaker's decisions).
//!
//! A script has one event per line, `TIME [GROUP/]RESOURCE EVENT [REASON]`:
//!
//! ```text
//! 0s    smtp fails                  # is_alive fails (reason unexpected_banner unless given)
//! 5s    smtp looks_alive_fails      # looks_alive fails: an is_alive follows
//! 10s   store signal exited         # the failure signal fires
//! 20s   store online_fails spawn    # from now on its online fails (online_ok undoes it)
//! 30s   smtp admin_offline          # also admin_online, admin_clear
//! 2h    tick                        # only let time pass
//! ```
//!
//! Timers (retry periods) fire at their own time between lines.

use crate::config::{Config, GroupConfig};
use resmon_policies::{
    AdminCommand, CheckKind, Effect, FailureReason, GroupController, Input, Operation, ResourceId,
    Time,
};
use std::collections::{HashSet, VecDeque};
use std::fmt::Write as _;
use std::time::Duration;

/// A script line that could not be understood.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ScriptError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

struct World {
    name: String,
    controller: GroupController,
    failing_online: HashSet<ResourceId>,
}

/// Runs `script` against every group of `config`; returns the report.
pub fn simulate(config: &Config, script: &str) -> Result<String, ScriptError> {
    let mut worlds: Vec<World> = config
        .groups
        .iter()
        .map(|g: &GroupConfig| World {
            name: g.name.to_string(),
            controller: GroupController::new(g.spec.clone()),
            failing_online: HashSet::new(),
        })
        .collect();
    let mut out = String::new();
    for w in &mut worlds {
        let _ = writeln!(
            out,
            "{:>8}  group {}: activate",
            Time::ZERO.to_string(),
            w.name
        );
        step(w, Time::ZERO, Input::Activate, &mut out);
    }
    let mut now = Time::ZERO;
    for (n, raw) in script.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let err = |message: String| ScriptError {
            line: n + 1,
            message,
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = Time::from_elapsed(
            humantime::parse_duration(words[0])
                .map_err(|e| err(format!("invalid time {:?}: {e}", words[0])))?,
        );
        if at < now {
            return Err(err(format!(
                "time {at} is before the previous line's {now}"
            )));
        }
        fire_timers(&mut worlds, at, &mut out);
        now = at;
        if words.get(1) == Some(&"tick") {
            continue;
        }
        let (target, event) = match (words.get(1), words.get(2)) {
            (Some(t), Some(e)) => (*t, *e),
            _ => return Err(err("expected: TIME [GROUP/]RESOURCE EVENT [REASON]".into())),
        };
        let reason = |default: FailureReason| -> Result<FailureReason, ScriptError> {
            match words.get(3) {
                Some(r) => FailureReason::parse(r).ok_or_else(|| {
                    err(format!(
                        "unknown reason {r:?}; reasons: {}",
                        FailureReason::ALL.map(|r| r.as_str()).join(", ")
                    ))
                }),
                None => Ok(default),
            }
        };
        let (wi, id) = find(&worlds, target)
            .ok_or_else(|| err(format!("no resource {target:?} in the config")))?;
        let input = match event {
            "fails" => Input::CheckCompleted {
                resource: id,
                check: CheckKind::IsAlive,
                outcome: Err(reason(FailureReason::UnexpectedBanner)?),
            },
            "looks_alive_fails" => Input::CheckCompleted {
                resource: id,
                check: CheckKind::LooksAlive,
                outcome: Err(reason(FailureReason::Refused)?),
            },
            "signal" => Input::FailureSignalled {
                resource: id,
                reason: reason(FailureReason::Exited)?,
            },
            "online_fails" => {
                worlds[wi].failing_online.insert(id);
                let _ = writeln!(out, "{:>8}  {target}: its online fails from now on", now.to_string());
                continue;
            }
            "online_ok" => {
                worlds[wi].failing_online.remove(&id);
                let _ = writeln!(out, "{:>8}  {target}: its online succeeds again", now.to_string());
                continue;
            }
            "admin_online" => Input::Admin(AdminCommand::Online(id)),
            "admin_offline" => Input::Admin(AdminCommand::Offline(id)),
            "admin_clear" => Input::Admin(AdminCommand::Clear(id)),
            other => {
                return Err(err(format!(
                    "unknown event {other:?}; events: fails, looks_alive_fails, signal, online_fails, online_ok, admin_online, admin_offline, admin_clear, tick"
                )))
            }
        };
        let _ = writeln!(
            out,
            "{:>8}  {target} {}",
            now.to_string(),
            words[2..].join(" ")
        );
        step(&mut worlds[wi], now, input, &mut out);
    }
    // Let the last retry timers fire, a day at most.
    fire_timers(
        &mut worlds,
        now.after(Duration::from_secs(86_400)),
        &mut out,
    );
    for w in &worlds {
        let _ = writeln!(out, "end: group {}", w.name);
        for (i, r) in w.controller.spec().resources().iter().enumerate() {
            let v = w.controller.view(ResourceId(i));
            let mut line = format!("  {}: {}", r.name, v.state);
            if v.needs_admin {
                line += " (needs an administrator)";
            }
            if let Some(at) = v.retry_at {
                line += &format!(" (retry at {at})");
            }
            let _ = writeln!(out, "{line}");
        }
    }
    Ok(out)
}

fn find(worlds: &[World], target: &str) -> Option<(usize, ResourceId)> {
    let (group, resource) = match target.split_once('/') {
        Some((g, r)) => (Some(g), r),
        None => (None, target),
    };
    worlds.iter().enumerate().find_map(|(i, w)| {
        if group.is_some_and(|g| g != w.name) {
            return None;
        }
        w.controller.spec().find(resource).map(|id| (i, id))
    })
}

fn fire_timers(worlds: &mut [World], until: Time, out: &mut String) {
    for w in worlds.iter_mut() {
        while let Some(at) = w.controller.next_timer().filter(|at| *at <= until) {
            let _ = writeln!(
                out,
                "{:>8}  group {}: a restart delay or retry period is over",
                at.to_string(),
                w.name
            );
            step(w, at, Input::Tick, out);
        }
    }
}

/// Applies an input and plays the world's answers (operations succeed at once unless scripted
/// to fail; a failover has nowhere to go) until nothing is left to answer.
fn step(w: &mut World, now: Time, input: Input, out: &mut String) {
    let mut inputs = VecDeque::from([input]);
    let mut guard = 0;
    while let Some(input) = inputs.pop_front() {
        guard += 1;
        if guard > 10_000 {
            let _ = writeln!(
                out,
                "          (stopped: more than 10,000 steps at one instant)"
            );
            return;
        }
        for effect in w.controller.step(now, input) {
            match &effect {
                Effect::Monitor { .. } | Effect::Unmonitor(_) => continue,
                _ => {}
            }
            let _ = writeln!(out, "          {}", w.controller.describe(&effect));
            match effect {
                Effect::Online(r) => inputs.push_back(Input::OperationCompleted {
                    resource: r,
                    operation: Operation::Online,
                    outcome: if w.failing_online.contains(&r) {
                        Err(FailureReason::Spawn)
                    } else {
                        Ok(())
                    },
                }),
                Effect::Offline(r) => inputs.push_back(Input::OperationCompleted {
                    resource: r,
                    operation: Operation::Offline,
                    outcome: Ok(()),
                }),
                Effect::Terminate(r) => inputs.push_back(Input::OperationCompleted {
                    resource: r,
                    operation: Operation::Terminate,
                    outcome: Ok(()),
                }),
                Effect::RunIsAlive(r) => inputs.push_back(Input::CheckCompleted {
                    resource: r,
                    check: CheckKind::IsAlive,
                    outcome: Ok(()),
                }),
                Effect::RequestFailover { .. } => {
                    inputs.push_back(Input::FailoverCompleted { moved: false })
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const CONFIG: &str = r#"
[[groups]]
name = "vs1"

[[groups.resources]]
name = "mta"
type = "tcp"
address = "127.0.0.1:25"

[[groups.resources]]
name = "smtp"
type = "tcp"
address = "127.0.0.1:25"
depends_on = ["mta"]
restart_threshold = 2
restart_period = "10m"
retry_period_on_failure = "1h"
"#;

    #[test]
    fn a_scripted_failure_series_plays_out_as_the_policy_decides() {
        let config = crate::config::parse(Path::new("sim.toml"), CONFIG)
            .unwrap()
            .config;
        let report = simulate(
            &config,
            "0s smtp fails\n5s smtp fails\n10s smtp fails\n2h mta signal exited\n",
        )
        .unwrap();
        // Two restarts, then the third failure exceeds the threshold: failover (nowhere), then
        // the retry an hour later succeeds here.
        assert_eq!(report.matches("restart smtp").count(), 2, "{report}");
        assert!(report.contains("request failover (smtp)"), "{report}");
        assert!(report.contains("retry smtp at 1h10s"), "{report}");
        assert!(
            report.contains("1h10s  group vs1: a restart delay or retry period is over"),
            "{report}"
        );
        // The provider's failure took smtp offline before restarting.
        assert!(
            report.contains("smtp: online -> offline_pending (provider_down)"),
            "{report}"
        );
        assert!(
            report.ends_with("end: group vs1\n  mta: online\n  smtp: online\n"),
            "{report}"
        );
    }

    #[test]
    fn script_errors_name_the_line() {
        let config = crate::config::parse(Path::new("sim.toml"), CONFIG)
            .unwrap()
            .config;
        let e = simulate(&config, "0s smtp fails\nlater smtp fails\n").unwrap_err();
        assert_eq!(e.line, 2);
        let e = simulate(&config, "0s nosuch fails\n").unwrap_err();
        assert!(e.message.contains("no resource \"nosuch\""), "{e}");
        let e = simulate(&config, "0s smtp explodes\n").unwrap_err();
        assert!(e.message.contains("unknown event"), "{e}");
    }
}
