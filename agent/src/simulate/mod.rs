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
//!
//! With `node` lines the script plays a cluster (see [`placement`]): groups start only once a
//! node may take them, a failover goes where the placement rules say (or waits, saying why),
//! a node that goes down loses its groups to the others, colocated groups follow their
//! providers:
//!
//! ```text
//! 0s    node n1 up storage_groups=1 # a node and its capacities
//! 0s    node n2 up
//! 10s   node n1 down
//! ```

mod placement;

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
    /// Its providers in other groups, and what the controller was told of each.
    externals: Vec<(crate::config::External, Option<bool>)>,
}

/// The cluster, when the script has `node` lines.
struct Cluster {
    model: placement::ClusterModel,
    /// The reason each group last waited for, printed once.
    waiting: std::collections::BTreeMap<String, String>,
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
            externals: g.externals.iter().map(|e| (e.clone(), None)).collect(),
        })
        .collect();
    let mut out = String::new();
    let clustered = script
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("node"));
    let mut cluster = clustered.then(|| Cluster {
        model: placement::ClusterModel::new(
            config
                .groups
                .iter()
                .map(|g| (g.name.to_string(), g.placement.clone()))
                .collect(),
        ),
        waiting: Default::default(),
    });
    if cluster.is_none() {
        for w in &mut worlds {
            let _ = writeln!(
                out,
                "{:>8}  group {}: activate",
                Time::ZERO.to_string(),
                w.name
            );
            step(w, Time::ZERO, Input::Activate, None, &mut out);
        }
    }
    let mut now = Time::ZERO;
    for (n, raw) in script.lines().enumerate() {
        // What the previous line changed about providers, at its time.
        feed_externals(&mut worlds, cluster.as_ref(), now, &mut out);
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
        fire_timers(&mut worlds, at, cluster.as_mut(), &mut out);
        now = at;
        if words.get(1) == Some(&"tick") {
            continue;
        }
        if words.get(1) == Some(&"node") {
            let Some(c) = cluster.as_mut() else {
                unreachable!("a node line makes the script a cluster's");
            };
            let _ = writeln!(out, "{:>8}  {}", now.to_string(), words[1..].join(" "));
            match (words.get(2), words.get(3)) {
                (Some(node), Some(&"up")) => {
                    let mut capacity = std::collections::BTreeMap::new();
                    for w in &words[4..] {
                        let amount = w
                            .split_once('=')
                            .and_then(|(k, v)| Some((k.to_string(), v.parse::<u64>().ok()?)));
                        let Some((k, v)) = amount else {
                            return Err(err(format!("{w:?}: a capacity is NAME=N")));
                        };
                        capacity.insert(k, v);
                    }
                    c.model.up(node, capacity);
                }
                (Some(node), Some(&"down")) => {
                    for group in c.model.down(node) {
                        if let Some(w) = worlds.iter_mut().find(|w| w.name == group) {
                            let _ = writeln!(out, "          group {group}: lost with {node}");
                            w.controller = GroupController::new(w.controller.spec().clone());
                            for e in &mut w.externals {
                                e.1 = None;
                            }
                        }
                    }
                }
                _ => {
                    return Err(err(
                        "expected: TIME node NAME up [CAPACITY=N ...] | down".into()
                    ))
                }
            }
            settle(&mut worlds, c, now, &Default::default(), &mut out);
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
        let failed_from = step(&mut worlds[wi], now, input, cluster.as_mut(), &mut out);
        if let (Some(c), Some(from)) = (cluster.as_mut(), failed_from) {
            settle(&mut worlds, c, now, &from, &mut out);
        }
    }
    feed_externals(&mut worlds, cluster.as_ref(), now, &mut out);
    // Let the last retry timers fire, a day at most.
    fire_timers(
        &mut worlds,
        now.after(Duration::from_secs(86_400)),
        cluster.as_mut(),
        &mut out,
    );
    for w in &worlds {
        match cluster.as_ref() {
            Some(c) => {
                let owner = c.model.owner(&w.name).unwrap_or("nowhere");
                let _ = writeln!(out, "end: group {} on {owner}", w.name);
            }
            None => {
                let _ = writeln!(out, "end: group {}", w.name);
            }
        }
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

fn fire_timers(
    worlds: &mut [World],
    until: Time,
    mut cluster: Option<&mut Cluster>,
    out: &mut String,
) {
    for i in 0..worlds.len() {
        while let Some(at) = worlds[i].controller.next_timer().filter(|at| *at <= until) {
            let _ = writeln!(
                out,
                "{:>8}  group {}: a restart delay or retry period is over",
                at.to_string(),
                worlds[i].name
            );
            let failed_from = step(&mut worlds[i], at, Input::Tick, cluster.as_deref_mut(), out);
            if let (Some(c), Some(from)) = (cluster.as_deref_mut(), failed_from) {
                settle(worlds, c, at, &from, out);
            }
        }
    }
}

/// Plays the placement's decisions on the groups' controllers until none is left: a group
/// placed is activated, one that moves is deactivated and activated again, one that waits says
/// why (once per reason).
fn settle(
    worlds: &mut [World],
    c: &mut Cluster,
    now: Time,
    failed_from: &std::collections::BTreeMap<String, String>,
    out: &mut String,
) {
    for decision in c.model.settle(failed_from) {
        match decision {
            placement::Decision::Place { group, to } => {
                c.waiting.remove(&group);
                let _ = writeln!(out, "          placement: {group} -> {to}");
                if let Some(w) = worlds.iter_mut().find(|w| w.name == group) {
                    step(w, now, Input::Activate, None, out);
                }
            }
            placement::Decision::Move { group, to } => {
                c.waiting.remove(&group);
                let _ = writeln!(
                    out,
                    "          placement: {group} follows its provider to {to}"
                );
                if let Some(w) = worlds.iter_mut().find(|w| w.name == group) {
                    step(w, now, Input::Deactivate, None, out);
                    step(w, now, Input::Activate, None, out);
                }
            }
            placement::Decision::Wait { group, why } => {
                if c.waiting.get(&group) != Some(&why) {
                    let _ = writeln!(out, "          placement: {group} waits: {why}");
                    c.waiting.insert(group, why);
                }
            }
        }
    }
}

/// Applies an input and plays the world's answers (operations succeed at once unless scripted
/// to fail; a failover goes where the cluster's placement says, or nowhere without one) until
/// nothing is left to answer. Returns the node a failover left, for the placement.
fn step(
    w: &mut World,
    now: Time,
    input: Input,
    mut cluster: Option<&mut Cluster>,
    out: &mut String,
) -> Option<std::collections::BTreeMap<String, String>> {
    let mut moved_from = None;
    // Offline here first, then online on the node a failover went to.
    let mut reactivate = false;
    let mut inputs = VecDeque::from([input]);
    let mut guard = 0;
    while let Some(input) = inputs.pop_front() {
        guard += 1;
        if guard > 10_000 {
            let _ = writeln!(
                out,
                "          (stopped: more than 10,000 steps at one instant)"
            );
            return moved_from;
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
                    let from = cluster
                        .as_deref()
                        .and_then(|c| c.model.owner(&w.name))
                        .map(str::to_string);
                    match cluster.as_deref_mut().map(|c| c.model.failover(&w.name)) {
                        Some(Ok(to)) => {
                            let _ =
                                writeln!(out, "          placement: {} fails over to {to}", w.name);
                            inputs.push_back(Input::FailoverCompleted { moved: true });
                            reactivate = true;
                            moved_from = from.map(|f| [(w.name.clone(), f)].into());
                        }
                        Some(Err(why)) => {
                            let _ = writeln!(
                                out,
                                "          placement: {} cannot fail over: {why}",
                                w.name
                            );
                            inputs.push_back(Input::FailoverCompleted { moved: false });
                        }
                        None => inputs.push_back(Input::FailoverCompleted { moved: false }),
                    }
                }
                _ => {}
            }
        }
    }
    if reactivate {
        step(w, now, Input::Activate, None, out);
    }
    moved_from
}

/// Tells each group what changed about its providers in other groups: online anywhere, or
/// (colocated) online on its own node.
fn feed_externals(worlds: &mut [World], cluster: Option<&Cluster>, now: Time, out: &mut String) {
    for _ in 0..=worlds.len() {
        let mut changed = false;
        for i in 0..worlds.len() {
            for e in 0..worlds[i].externals.len() {
                let (external, told) = worlds[i].externals[e].clone();
                let Some((group, resource)) = external.name.split_once('/') else {
                    continue;
                };
                let Some(p) = worlds.iter().find(|w| w.name == group) else {
                    continue;
                };
                let online = p
                    .controller
                    .spec()
                    .find(resource)
                    .is_some_and(|id| p.controller.state(id) == resmon_policies::State::Online);
                let together = cluster.is_none_or(|c| {
                    c.model.owner(group).is_some()
                        && c.model.owner(group) == c.model.owner(&worlds[i].name)
                });
                let online = online && (!external.colocated || together);
                if told != Some(online) {
                    worlds[i].externals[e].1 = Some(online);
                    // Not yet known to offline: nothing changes, nothing to say.
                    if told.is_some() || online {
                        let _ = writeln!(
                            out,
                            "          group {}: {} is {}",
                            worlds[i].name,
                            external.name,
                            if online { "online" } else { "offline" }
                        );
                    }
                    step(
                        &mut worlds[i],
                        now,
                        Input::External {
                            provider: e,
                            online,
                        },
                        None,
                        out,
                    );
                    changed = true;
                }
            }
        }
        if !changed {
            break;
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
    fn flap_damping_is_replayed() {
        let config = crate::config::parse(
            Path::new("sim.toml"),
            "[[groups]]\nname = \"vs1\"\n\n[[groups.resources]]\nname = \"web\"\ntype = \"tcp\"\n\
             address = \"127.0.0.1:80\"\nrestart_threshold = 100\n\
             flap_damping = { suppress = 2500, reuse = 1000, half_life = \"1m\" }\n",
        )
        .unwrap()
        .config;
        let report = simulate(&config, "0s web fails\n10s web fails\n20s web fails\n").unwrap();
        // Three failures in 20 s: 1000 each, less what decayed; above 2500, the restart waits
        // until the penalty is back under 1000.
        assert!(
            report.contains("damp web (penalty 2685) until 1m45s482ms"),
            "{report}"
        );
        assert!(
            report.ends_with("end: group vs1\n  web: online\n"),
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

    const CLUSTER: &str = r#"
[cluster]
endpoints = ["http://127.0.0.1:2379"]

[[groups]]
name = "mta"
preferred_owners = ["n1", "n2", "n3"]

[[groups.resources]]
name = "mta"
type = "tcp"
address = "127.0.0.1:25"

[[groups]]
name = "evs1"
preferred_owners = ["n1", "n2", "n3"]
uses = { storage_groups = 1 }
anti_affinity_class = "exchange"

[[groups.resources]]
name = "routing"
type = "tcp"
address = "127.0.0.1:26"
depends_on_anywhere = ["mta/mta"]

[[groups]]
name = "evs2"
preferred_owners = ["n2", "n1", "n3"]
uses = { storage_groups = 1 }
anti_affinity_class = "exchange"

[[groups.resources]]
name = "routing"
type = "tcp"
address = "127.0.0.1:27"
depends_on_anywhere = ["mta/mta"]

[[groups]]
name = "mta-queue"
preferred_owners = ["n3"]

[[groups.resources]]
name = "queue"
type = "tcp"
address = "127.0.0.1:28"
depends_on = ["mta/mta"]
"#;

    #[test]
    fn placement_decisions_follow_capacity_anti_affinity_and_colocation() {
        let config = crate::config::parse(Path::new("sim.toml"), CLUSTER)
            .unwrap()
            .config;
        let report = simulate(
            &config,
            "0s node n1 up storage_groups=1\n\
             0s node n2 up storage_groups=1\n\
             0s node n3 up storage_groups=1\n\
             10s node n1 down\n\
             20s node n2 down\n\
             30s node n1 up storage_groups=1\n",
        )
        .unwrap();
        // Everything on its preferred node; the queue follows the MTA, not its preference.
        assert!(report.contains("placement: mta -> n1"), "{report}");
        assert!(report.contains("placement: evs1 -> n1"), "{report}");
        assert!(report.contains("placement: evs2 -> n2"), "{report}");
        assert!(report.contains("placement: mta-queue -> n1"), "{report}");
        // Routing starts once the MTA is online, wherever it runs.
        assert!(report.contains("group evs2: mta/mta is online"), "{report}");
        // n1 goes: the MTA and its queue go to n2 together; evs1 goes to n3 (n2 is full).
        assert!(report.contains("placement: mta -> n2"), "{report}");
        assert!(report.contains("placement: mta-queue -> n2"), "{report}");
        assert!(report.contains("placement: evs1 -> n3"), "{report}");
        // n2 goes too: n3 holds one storage group; evs2 waits and says why.
        assert!(
            report
                .contains("placement: evs2 waits: n3: storage_groups 1 of 1 in use, 1 more needed"),
            "{report}"
        );
        // n1 returns: evs2 gets a node again.
        assert!(report.contains("end: group evs2 on n1"), "{report}");
        assert!(report.contains("end: group mta on n3"), "{report}");
    }
}
