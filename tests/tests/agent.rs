//! End-to-end tests of the core agent: the real `resmon` binary, real processes, real sockets on
//! loopback. Durations in these configs are short so that the restart policy plays out in
//! seconds; every wait is bounded.

use resmon_e2e::{event_time, free_port, process_alive, testd, unix_now, Agent};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(20);

fn server(name: &str, port: u16, extra: &str) -> String {
    format!(
        r#"
[[groups.resources]]
name = "{name}"
type = "process"
command = ["{testd}", "--listen", "127.0.0.1:{port}"]
ready_tcp = "127.0.0.1:{port}"
is_alive_interval = "1m"
{extra}
"#,
        testd = testd()
    )
}

#[test]
fn a_killed_process_is_restarted_through_its_failure_signal_within_100ms() {
    let port = free_port();
    let agent = Agent::start(&format!(
        "[[groups]]\nname = \"app\"\n{}",
        server("daemon", port, "")
    ));
    agent.wait_state("app", "daemon", "online", LONG);
    let pid = agent.pid_of("app", "daemon").expect("pid file");

    let killed_at = unix_now();
    // SAFETY: SIGKILL to the daemon this test's agent started.
    unsafe { libc::kill(pid, libc::SIGKILL) };

    agent.wait_for("the restart", LONG, |a| {
        !a.events_of("restart_requested", "daemon").is_empty()
    });
    agent.wait_state("app", "daemon", "online", LONG);
    let signalled = &agent.events_of("failure_signalled", "daemon")[0];
    assert_eq!(signalled["reason"], "killed", "{signalled}");
    let restart = &agent.events_of("restart_requested", "daemon")[0];
    let delay = event_time(restart) - killed_at;
    assert!(
        delay < 0.100,
        "restart began {:.0} ms after the kill",
        delay * 1000.0
    );
    // Nothing polled it: is_alive runs once a minute and looks_alive is off for a process.
    assert!(agent.events_of("probe_failed", "daemon").is_empty());
    let new_pid = agent.pid_of("app", "daemon").unwrap();
    assert_ne!(new_pid, pid);
    assert!(process_alive(new_pid));

    let transitions = agent.transitions("daemon");
    assert_eq!(
        transitions,
        [
            "offline->online_pending(dependencies_online)",
            "online_pending->online(online_completed)",
            "online->failed(failure_signal:killed)",
            "failed->offline(restart)",
            "offline->online_pending(restart)",
            "online_pending->online(online_completed)",
        ]
    );
    let metrics = agent.metrics();
    assert!(
        metrics.contains(
            r#"resmon_resource_restarts_total{group="app",resource="daemon",type="process"} 1"#
        ),
        "{metrics}"
    );
    assert!(metrics.contains(
        r#"resmon_check_failures_total{check="failure_signal",reason="killed",group="app",resource="daemon",type="process"} 1"#
    ));
    assert!(metrics.contains(
        r#"resmon_resource_state{state="online",group="app",resource="daemon",type="process"} 1"#
    ));
}

#[test]
fn a_process_that_ignores_sigterm_is_terminated_after_pending_timeout() {
    let port = free_port();
    // `stubborn` depends on `base`; when `base` dies, `stubborn` must go offline, ignores
    // SIGTERM, and is killed once pending_timeout has passed.
    let body = format!(
        r#"[[groups]]
name = "app"
{base}
[[groups.resources]]
name = "stubborn"
type = "process"
command = ["{testd}", "--ignore-term"]
depends_on = ["base"]
pending_timeout = "1s"
"#,
        base = server("base", port, "restart_action = \"no_restart\""),
        testd = testd()
    );
    let agent = Agent::start(&body);
    agent.wait_state("app", "stubborn", "online", LONG);
    let stubborn = agent.pid_of("app", "stubborn").unwrap();
    let base = agent.pid_of("app", "base").unwrap();
    unsafe { libc::kill(base, libc::SIGKILL) };

    agent.wait_for("the offline timeout", LONG, |a| {
        !a.events_of("operation_timed_out", "stubborn").is_empty()
    });
    agent.wait_state("app", "stubborn", "offline", LONG);
    let timed_out = &agent.events_of("operation_timed_out", "stubborn")[0];
    assert_eq!(timed_out["op"], "offline");
    let offline_at = event_time(
        agent
            .events_of("state_changed", "stubborn")
            .iter()
            .find(|e| e["to"] == "offline_pending")
            .unwrap(),
    );
    let waited = event_time(timed_out) - offline_at;
    assert!(
        (0.9..2.0).contains(&waited),
        "offline timed out after {waited:.2}s, pending_timeout is 1s"
    );
    assert!(!process_alive(stubborn), "terminate must have killed it");
    assert_eq!(
        agent.transitions("stubborn")[2..],
        [
            "online->offline_pending(provider_down)",
            "offline_pending->failed(offline_timeout)",
            "failed->offline(terminated)",
        ]
    );
    assert!(agent
        .metrics()
        .contains(r#"resmon_operation_timeouts_total{op="offline",group="app",resource="stubborn",type="process"} 1"#));
    // base does not restart (no_restart): it stays failed, so stubborn stays offline.
    assert_eq!(agent.state("app", "base"), "failed");
    assert!(agent.resource("app", "base")["needs_admin"]
        .as_bool()
        .unwrap());
}

#[test]
fn past_the_restart_threshold_the_resource_waits_for_its_retry() {
    let body = format!(
        r#"[[groups]]
name = "app"

[[groups.resources]]
name = "flaky"
type = "process"
command = ["{testd}", "--exit-after", "300"]
restart_action = "restart_no_failover"
restart_threshold = 2
restart_period = "1m"
retry_period_on_failure = "2s"
"#,
        testd = testd()
    );
    let agent = Agent::start(&body);
    agent.wait_for("the final attempt to fail", LONG, |a| {
        !a.events_of("gave_up", "flaky").is_empty()
    });
    agent.wait_state("app", "flaky", "failed", LONG);

    let restarts = agent.events_of("restart_requested", "flaky");
    assert_eq!(restarts.len(), 2, "exactly restart_threshold restarts");
    assert_eq!(restarts[1]["restarts_in_period"], 2);
    let retry = &agent.events_of("retry_scheduled", "flaky")[0];
    assert_eq!(retry["in_seconds"], 2.0);
    let final_attempt = agent
        .events_of("state_changed", "flaky")
        .into_iter()
        .find(|e| e["cause"] == "retry")
        .expect("a final attempt");
    let waited = event_time(&final_attempt) - event_time(retry);
    assert!(
        (1.9..3.0).contains(&waited),
        "retried after {waited:.2}s, retry_period_on_failure is 2s"
    );
    // The final attempt failed too: no further restart, and the status says an admin must act.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(agent.events_of("restart_requested", "flaky").len(), 2);
    let status = agent.resource("app", "flaky");
    assert_eq!(status["needs_admin"], true);
    assert_eq!(status["restarts_total"], 2);
    assert!(agent.metrics().contains(
        r#"resmon_resource_restarts_total{group="app",resource="flaky",type="process"} 2"#
    ));
}

/// `resource:state` of every state change after the first `before` events.
fn changes_since(agent: &Agent, before: usize) -> Vec<String> {
    agent.events()[before..]
        .iter()
        .filter(|e| e["event"] == "state_changed")
        .map(|e| {
            format!(
                "{}:{}",
                e["resource"].as_str().unwrap(),
                e["to"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn a_dependency_chain_comes_up_in_order_goes_down_in_reverse_and_follows_its_provider() {
    let port = free_port();
    let body = format!(
        r#"[[groups]]
name = "vs1"
{web}
[[groups.resources]]
name = "port"
type = "tcp"
address = "127.0.0.1:{port}"
depends_on = ["web"]
is_alive_interval = "1m"

[[groups.resources]]
name = "worker"
type = "process"
command = ["sleep", "600"]
depends_on = ["port"]
"#,
        web = server("web", port, ""),
    );
    // Three check threads: the chain's three resources each on a thread of its own, so the
    // order below also holds across threads.
    let agent = Agent::start_with(&body, "check_threads = 3");
    agent.wait_state("vs1", "worker", "online", LONG);
    assert_eq!(agent.check_threads(), 3);
    let order: Vec<String> = agent
        .events_of("state_changed", "")
        .iter()
        .map(|e| {
            format!(
                "{}:{}",
                e["resource"].as_str().unwrap(),
                e["to"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            "web:online_pending",
            "web:online",
            "port:online_pending",
            "port:online",
            "worker:online_pending",
            "worker:online",
        ]
    );

    let before = agent.events().len();
    unsafe { libc::kill(agent.pid_of("vs1", "web").unwrap(), libc::SIGKILL) };
    agent.wait_for("the chain to come back", LONG, |a| {
        a.events()[before..]
            .iter()
            .filter(|e| e["event"] == "state_changed" && e["to"] == "online")
            .count()
            == 3
    });
    let after = changes_since(&agent, before);
    let pos = |s: &str| {
        after
            .iter()
            .position(|x| x == s)
            .unwrap_or_else(|| panic!("no {s} in {after:?}"))
    };
    // Dependents go offline in reverse order, then everything comes back in order.
    assert!(
        pos("worker:offline") < pos("port:offline_pending"),
        "{after:?}"
    );
    assert!(
        pos("port:offline") < pos("port:online_pending"),
        "{after:?}"
    );
    assert!(pos("web:online") < pos("port:online_pending"), "{after:?}");
    assert!(
        pos("port:online") < pos("worker:online_pending"),
        "{after:?}"
    );
    assert_eq!(agent.state("vs1", "worker"), "online");
}

#[test]
fn a_provider_in_another_group_goes_offline_after_its_dependents_and_back_before_them() {
    let (mta, routing) = (free_port(), free_port());
    let body = format!(
        "[[groups]]\nname = \"mta\"\n{}\n[[groups]]\nname = \"vs1\"\n{}",
        server("server", mta, ""),
        server("routing", routing, "depends_on = [\"mta/server\"]"),
    );
    let agent = Agent::start(&body);
    agent.wait_state("vs1", "routing", "online", LONG);
    let before = agent.events().len();
    let (code, _, err) = agent.cli(&["offline", "mta"]);
    assert_eq!(code, 0, "{err}");
    agent.wait_state("mta", "server", "offline_by_admin", LONG);
    let (code, _, err) = agent.cli(&["online", "mta"]);
    assert_eq!(code, 0, "{err}");
    agent.wait_state("vs1", "routing", "online", LONG);
    let after = changes_since(&agent, before);
    let pos = |s: &str| {
        after
            .iter()
            .position(|x| x == s)
            .unwrap_or_else(|| panic!("no {s} in {after:?}"))
    };
    // The other group's dependent is offline before the provider's offline starts, as a
    // dependent of its own group would be; it comes back once the provider is online.
    assert!(
        pos("routing:offline") < pos("server:offline_pending"),
        "{after:?}"
    );
    assert!(
        pos("server:online") < pos("routing:online_pending"),
        "{after:?}"
    );
}

#[test]
fn sighup_with_a_bad_config_keeps_the_running_one_and_a_good_one_applies_only_the_difference() {
    let port = free_port();
    let body = format!("[[groups]]\nname = \"app\"\n{}", server("daemon", port, ""));
    let mut agent = Agent::start(&body);
    agent.wait_state("app", "daemon", "online", LONG);
    let pid = agent.pid_of("app", "daemon").unwrap();

    agent.rewrite_config(&format!("{body}\nbogus_key = 1\n"));
    agent.signal(libc::SIGHUP);
    agent.wait_for("the rejection", LONG, |a| {
        !a.events_of("config_rejected", "").is_empty()
    });
    let rejected = &agent.events_of("config_rejected", "")[0];
    let message = rejected["errors"][0].as_str().unwrap();
    assert!(
        message.contains("resmon.toml:") && message.contains("bogus_key"),
        "{message}"
    );
    assert!(agent.is_running());
    assert_eq!(agent.state("app", "daemon"), "online");
    assert_eq!(
        agent.pid_of("app", "daemon"),
        Some(pid),
        "nothing was restarted"
    );
    assert!(agent
        .metrics()
        .contains(r#"resmon_config_reloads_total{result="rejected"} 1"#));

    // A valid change that adds a group leaves the unchanged one alone.
    agent.rewrite_config(&format!(
        "{body}\n[[groups]]\nname = \"extra\"\n\n[[groups.resources]]\nname = \"nap\"\ntype = \"process\"\ncommand = [\"sleep\", \"600\"]\n"
    ));
    agent.signal(libc::SIGHUP);
    agent.wait_state("extra", "nap", "online", LONG);
    let reloaded = &agent.events_of("config_reloaded", "")[0];
    assert_eq!(reloaded["added"], serde_json::json!(["extra"]));
    assert_eq!(reloaded["unchanged"], 1);
    assert_eq!(agent.pid_of("app", "daemon"), Some(pid));
    assert_eq!(
        agent.transitions("daemon").len(),
        2,
        "the daemon saw no transition since start"
    );
    assert_eq!(reloaded["at_next_start"], serde_json::json!([]));

    // A key read only at start is reported and left for the next start: the running agent
    // keeps its one check thread, and nothing is restarted.
    agent.add_agent_key("check_threads = 2");
    agent.signal(libc::SIGHUP);
    agent.wait_for("the second reload", LONG, |a| {
        a.events_of("config_reloaded", "").len() == 2
    });
    let reloads = agent.events_of("config_reloaded", "");
    let reloaded = reloads
        .iter()
        .find(|e| e["at_next_start"] != serde_json::json!([]))
        .unwrap_or_else(|| panic!("no reload reported a key for the next start: {reloads:?}"));
    assert_eq!(
        reloaded["at_next_start"],
        serde_json::json!(["check_threads"])
    );
    assert_eq!(reloaded["unchanged"], 2);
    assert_eq!(agent.check_threads(), 1);
    assert_eq!(agent.pid_of("app", "daemon"), Some(pid));
}

#[test]
fn sigterm_leaves_services_running_and_the_next_agent_adopts_them() {
    let port = free_port();
    let body = format!("[[groups]]\nname = \"app\"\n{}", server("daemon", port, ""));
    let mut agent = Agent::start(&body);
    agent.wait_state("app", "daemon", "online", LONG);
    let pid = agent.pid_of("app", "daemon").unwrap();

    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(LONG), Some(0));
    assert!(
        process_alive(pid),
        "the agent's exit must not stop the service"
    );

    agent.spawn();
    agent.wait_state("app", "daemon", "online", LONG);
    assert_eq!(agent.transitions("daemon"), ["offline->online(adopted)"]);
    assert_eq!(agent.pid_of("app", "daemon"), Some(pid));

    // The adopted process is watched too: its death is seen through its pidfd.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    agent.wait_for("the restart", LONG, |a| {
        !a.events_of("restart_requested", "daemon").is_empty()
    });
    agent.wait_state("app", "daemon", "online", LONG);
    assert_ne!(agent.pid_of("app", "daemon"), Some(pid));
}

#[test]
fn stop_on_exit_stops_groups_in_reverse_dependency_order() {
    let port = free_port();
    let body = format!(
        r#"[[groups]]
name = "app"
{web}
[[groups.resources]]
name = "worker"
type = "process"
command = ["sleep", "600"]
depends_on = ["web"]
"#,
        web = server("web", port, "")
    );
    let mut agent = Agent::start_with(&body, "stop_on_exit = true");
    agent.wait_state("app", "worker", "online", LONG);
    let (web, worker) = (
        agent.pid_of("app", "web").unwrap(),
        agent.pid_of("app", "worker").unwrap(),
    );
    agent.signal(libc::SIGTERM);
    assert_eq!(agent.wait_exit(LONG), Some(0));
    assert!(!process_alive(web) && !process_alive(worker));
    let stops: Vec<String> = agent
        .events_of("state_changed", "")
        .iter()
        .filter(|e| e["cause"] == "group_stopping")
        .map(|e| e["resource"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(stops, ["worker", "web"]);
}

#[test]
fn metrics_pass_promtool() {
    let port = free_port();
    let agent = Agent::start(&format!(
        "[[groups]]\nname = \"app\"\n{}",
        server("daemon", port, "")
    ));
    agent.wait_state("app", "daemon", "online", LONG);
    unsafe { libc::kill(agent.pid_of("app", "daemon").unwrap(), libc::SIGKILL) };
    agent.wait_for("the restart", LONG, |a| {
        !a.events_of("restart_requested", "daemon").is_empty()
    });
    let metrics = agent.metrics();
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed by the test script");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn validate_reports_errors_with_file_line_and_key_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let bad = resmon_e2e::write_file(
        dir.path(),
        "bad.toml",
        "[[groups]]\nname = \"g\"\n\n[[groups.resources]]\nname = \"a\"\ntype = \"tcp\"\naddress = \"127.0.0.1:1\"\ndepends_on = [\"b\"]\n",
    );
    let out = std::process::Command::new(resmon_e2e::binary("resmon"))
        .args(["validate", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "error: {}:8:15: groups[0].resources[0].depends_on[0]: unknown resource \"b\": group \"g\" has a",
            bad.display()
        )),
        "{stderr}"
    );
    // `run` refuses the same file and starts nothing.
    let out = std::process::Command::new(resmon_e2e::binary("resmon"))
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn under_systemd_the_agent_reports_ready_and_pets_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let port = free_port();
    let _agent = Agent::start_env(
        &format!("[[groups]]\nname = \"app\"\n{}", server("daemon", port, "")),
        "",
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while seen
        .iter()
        .filter(|m: &&String| m.contains("WATCHDOG=1"))
        .count()
        < 3
    {
        let n = socket.recv(&mut buf).expect("a notification within 5 s");
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(seen.iter().any(|m| m.contains("READY=1")), "{seen:?}");
}

/// Under systemd, with its notify socket and watchdog in the agent's environment: a `process`
/// with `user` runs as that user with its groups, and its environment is the clean one.
#[test]
fn a_process_runs_as_its_user_and_never_sees_the_agents_variables() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("skipped: changing user needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let _socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    let agent = Agent::start_env(
        "[[groups]]\nname = \"app\"\n\n[[groups.resources]]\nname = \"worker\"\ntype = \"process\"\n\
         command = [\"sleep\", \"600\"]\nuser = \"nobody\"\nsupplementary_groups = [\"adm\"]\n\
         env = { MINE = \"1\" }\n",
        "",
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
            ("RESMON_CALLERS_SECRET", "s3cret"),
        ],
    );
    agent.wait_state("app", "worker", "online", LONG);
    let pid = agent.pid_of("app", "worker").expect("a pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {status}"))
            .split_whitespace()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let adm = nix::unistd::Group::from_name("adm").unwrap().unwrap();
    assert_eq!(field("Uid:"), vec![nobody.uid.to_string(); 4]);
    assert_eq!(field("Gid:"), vec![nobody.gid.to_string(); 4]);
    let groups = field("Groups:");
    assert!(groups.contains(&adm.gid.to_string()), "{groups:?}");
    assert!(
        !groups.contains(&"0".to_string()),
        "root's group kept: {groups:?}"
    );
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let mut keys: Vec<String> = environ
        .split(|b| *b == 0)
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            String::from_utf8_lossy(kv)
                .split('=')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    keys.sort();
    assert_eq!(keys, ["HOME", "LANG", "LOGNAME", "MINE", "PATH", "USER"]);
}

#[test]
fn resmon_status_prints_a_table_and_json() {
    let port = free_port();
    let agent = Agent::start(&format!(
        "[[groups]]\nname = \"app\"\n{}",
        server("daemon", port, "")
    ));
    agent.wait_state("app", "daemon", "online", LONG);
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(resmon_e2e::binary("resmon"))
            .args(["status", "--config"])
            .arg(&agent.config)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let table = run(&[]);
    let header = table.lines().nth(1).unwrap();
    assert!(
        header.starts_with("GROUP") && header.contains("STATE") && header.contains("NEXT CHECK"),
        "{table}"
    );
    let row = table.lines().find(|l| l.starts_with("app")).expect(&table);
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cells[..4],
        ["app", "daemon", "process", "online"],
        "{table}"
    );
    let json: serde_json::Value = serde_json::from_str(&run(&["--output", "json"])).unwrap();
    assert_eq!(json["groups"][0]["resources"][0]["state"], "online");
}

#[test]
fn the_control_api_takes_resources_offline_and_online_and_refuses_what_it_cannot_do() {
    let port = free_port();
    let body = format!(
        r#"[[groups]]
name = "app"
{sa}
[[groups.resources]]
name = "store"
type = "process"
command = ["sleep", "600"]
depends_on = ["sa"]
"#,
        sa = server("sa", port, "")
    );
    let agent = Agent::start(&body);
    agent.wait_state("app", "store", "online", LONG);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(agent.dir.path().join("control.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o660,
        "the control socket is for root and the resmon group only"
    );

    let (code, out, err) = agent.cli(&["offline", "app/sa"]);
    assert_eq!(code, 0, "{out}{err}");
    agent.wait_state("app", "sa", "offline_by_admin", LONG);
    assert_eq!(
        agent.state("app", "store"),
        "offline",
        "the dependent went offline first"
    );
    let offline_order: Vec<String> = agent
        .events_of("state_changed", "")
        .iter()
        .filter(|e| e["to"] == "offline_pending")
        .map(|e| e["resource"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(offline_order, ["store", "sa"]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        agent.state("app", "sa"),
        "offline_by_admin",
        "never restarted"
    );
    assert!(agent.pid_of("app", "sa").is_none());

    // Refusals change nothing and say why.
    let (code, _, err) = agent.cli(&["clear", "app/sa"]);
    assert_eq!(code, 1);
    assert!(err.contains("app/sa: the resource is not failed"), "{err}");
    let (code, _, err) = agent.cli(&["online", "nosuch/sa"]);
    assert_eq!(code, 1);
    assert!(err.contains("no group \"nosuch\""), "{err}");
    let (code, _, err) = agent.cli(&["offline", "app/nosuch"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no resource \"nosuch\" in group \"app\""),
        "{err}"
    );
    assert_eq!(agent.state("app", "sa"), "offline_by_admin");

    // Bringing the dependent online brings its provider too.
    let (code, out, err) = agent.cli(&["online", "app/store"]);
    assert_eq!(code, 0, "{out}{err}");
    agent.wait_state("app", "store", "online", LONG);
    assert_eq!(agent.state("app", "sa"), "online");

    // A failed resource is cleared by an administrator.
    let (code, _, _) = agent.cli(&["offline", "app"]);
    assert_eq!(code, 0);
    agent.wait_state("app", "sa", "offline_by_admin", LONG);
    assert_eq!(agent.state("app", "store"), "offline_by_admin");
    let (code, _, _) = agent.cli(&["online", "app"]);
    assert_eq!(code, 0);
    agent.wait_state("app", "store", "online", LONG);

    let (code, out, _) = agent.cli(&["events", "--output", "json"]);
    assert_eq!(code, 0);
    let events: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert!(events.iter().any(|e| e["event"] == "admin_refused"));
    assert!(events.iter().any(|e| e["cause"] == "admin"));
}

#[test]
fn an_ocf_agent_from_resource_agents_is_kept_online() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("dummy.state");
    let agent = Agent::start(&format!(
        "[[groups]]\nname = \"app\"\n\n[[groups.resources]]\nname = \"dummy\"\ntype = \"ocf\"\nagent = \"heartbeat/Dummy\"\nparams = {{ state = {:?} }}\nis_alive_interval = \"300ms\"\ncheck_timeout = \"5s\"\n",
        state.display().to_string()
    ));
    agent.wait_state("app", "dummy", "online", LONG);
    assert!(state.exists(), "Dummy's start wrote its state file");
    // The service vanishes behind the agent's back: monitor says OCF_NOT_RUNNING, and the
    // agent starts it again.
    std::fs::remove_file(&state).unwrap();
    agent.wait_for("the restart", LONG, |a| {
        !a.events_of("restart_requested", "dummy").is_empty()
    });
    agent.wait_state("app", "dummy", "online", LONG);
    let failed = &agent.events_of("probe_failed", "dummy")[0];
    assert_eq!(failed["reason"], "not_running", "{failed}");
    assert!(
        failed["detail"]
            .as_str()
            .unwrap()
            .contains("OCF_NOT_RUNNING (7)"),
        "{failed}"
    );
    assert!(state.exists());
}

/// A banner server whose answers the test holds back and lets go: accepted connections wait
/// for `release` while `hold` is set, then get their greeting; each stays open until the agent
/// closes it.
struct HeldBanners {
    addr: std::net::SocketAddr,
    hold: std::sync::Arc<std::sync::atomic::AtomicBool>,
    release: tokio::sync::watch::Sender<bool>,
    /// Connections accepted so far.
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

impl HeldBanners {
    fn start() -> HeldBanners {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        // 1,510 connects at once.
        let listener = {
            let _on_runtime = runtime.enter();
            resmon_e2e::servers::listen_for_many("127.0.0.1:0".parse().unwrap()).unwrap()
        };
        let addr = listener.local_addr().unwrap();
        let hold = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (release, released) = tokio::sync::watch::channel(false);
        let held = hold.clone();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = accepted.clone();
        runtime.spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let (held, mut released) = (held.clone(), released.clone());
                tokio::spawn(async move {
                    if held.load(std::sync::atomic::Ordering::SeqCst) {
                        let _ = released.wait_for(|&go| go).await;
                    }
                    let _ = conn.write_all(b"220 held ESMTP\r\n").await;
                    let mut buf = [0u8; 64];
                    while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        });
        HeldBanners {
            addr,
            hold,
            release,
            accepted,
            _runtime: runtime,
        }
    }
}

/// `smtp` resources `r0`, `r1`...: `answering` of them on `server`, then `silent` more on
/// `silent_server`, a hundred to a group.
fn held_resources(
    answering: usize,
    server: &HeldBanners,
    silent: usize,
    silent_server: &HeldBanners,
) -> String {
    let mut body = String::new();
    for i in 0..answering + silent {
        if i % 100 == 0 {
            body += &format!("\n[[groups]]\nname = \"g{}\"\n", i / 100);
        }
        let addr = if i < answering {
            server.addr
        } else {
            silent_server.addr
        };
        body += &format!(
            "\n[[groups.resources]]\nname = \"r{i}\"\ntype = \"smtp\"\naddress = \"{addr}\"\n"
        );
    }
    body
}

/// Asserts that no event is about one of the first `answering` resources of
/// [`held_resources`], those whose server answered.
fn assert_none_answering(events: &[serde_json::Value], answering: usize, what: &str) {
    let wrongly: Vec<_> = events
        .iter()
        .filter(|e| {
            e["resource"].as_str().unwrap()[1..]
                .parse::<usize>()
                .unwrap()
                < answering
        })
        .collect();
    assert!(
        wrongly.is_empty(),
        "{} {what} whose answer was in, the first: {}",
        wrongly.len(),
        wrongly[0]
    );
}

#[test]
fn answers_that_came_in_while_the_agent_was_stopped_are_not_timeouts() {
    // More checks in flight than the agent's event loop takes in one turn (tokio: 1,024), so
    // that after the stop most sockets' answers are still unread when every deadline's timer
    // fires at once. Each answer was in long before the agent could look: none is a failure.
    // A few more resources on a server that stops answering for good: those still fail.
    const RESOURCES: usize = 1500;
    const SILENT: usize = 10;
    resmon_e2e::procfs::raise_fd_limit();
    let server = HeldBanners::start();
    let silent = HeldBanners::start();
    let body = held_resources(RESOURCES, &server, SILENT, &silent);
    let agent = Agent::start(&format!(
        "[resource_types.smtp]\nis_alive_interval = \"1s\"\ncheck_timeout = \"2s\"\npoll_looks_alive = false\nrestart_threshold = 1000000\nrestart_period = \"1s\"\n{body}"
    ));
    agent.wait_for("every resource online", Duration::from_secs(60), |a| {
        resmon_e2e::online_resources(&a.metrics()) == RESOURCES + SILENT
    });
    // Every resource's next check starts within its 1 s interval and waits for its answer.
    server.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    silent.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1300));
    agent.signal(libc::SIGSTOP);
    server.release.send(true).unwrap();
    // Past every deadline (2 s from each check's start) while the agent cannot look.
    std::thread::sleep(Duration::from_secs(3));
    agent.signal(libc::SIGCONT);
    // The silent server's checks are judged a check_timeout after the agent came back.
    agent.wait_for("the silent server's checks to fail", LONG, |a| {
        let failed = a.events_of("probe_failed", "");
        (RESOURCES..RESOURCES + SILENT)
            .all(|i| failed.iter().any(|e| e["resource"] == format!("r{i}")))
    });
    let failed = agent.events_of("probe_failed", "");
    assert_none_answering(&failed, RESOURCES, "checks failed");
    assert!(
        failed.iter().all(|e| e["reason"] == "banner_timeout"),
        "{failed:?}"
    );
    let seen_late = resmon_e2e::metric_sum(
        &agent.metrics(),
        r#"resmon_checks_seen_late_total{type="smtp",check="is_alive"}"#,
    );
    assert!(
        seen_late >= RESOURCES as f64 / 2.0,
        "only {seen_late} answers were seen late: the stop did not catch the checks in flight"
    );
}

#[test]
fn onlines_that_answered_while_the_agent_was_stopped_are_not_timed_out() {
    // The checks' rule (above) for the `online` operations: a stop that outlasts their
    // `pending_timeout` must not fail an online whose answer came in meanwhile.
    const RESOURCES: usize = 1500;
    const SILENT: usize = 10;
    resmon_e2e::procfs::raise_fd_limit();
    let server = HeldBanners::start();
    let silent = HeldBanners::start();
    // Held from the start: each adoption times out (the resource is not found running), then
    // each resource's online waits for its greeting.
    server.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    silent.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    let body = held_resources(RESOURCES, &server, SILENT, &silent);
    let agent = Agent::start_with(
        &format!(
            "[resource_types.smtp]\nis_alive_interval = \"1s\"\ncheck_timeout = \"1s\"\npending_timeout = \"3s\"\npoll_looks_alive = false\nrestart_threshold = 1000000\nrestart_period = \"1s\"\n{body}"
        ),
        "max_parallel_starts = 2000",
    );
    // Every online has connected once every resource's adoption and online have: in flight,
    // waiting for its greeting.
    let accepted = |held: &HeldBanners| held.accepted.load(std::sync::atomic::Ordering::SeqCst);
    agent.wait_for("every resource's online in flight", LONG, |_| {
        accepted(&server) >= 2 * RESOURCES && accepted(&silent) >= 2 * SILENT
    });
    assert!(
        agent.events_of("operation_timed_out", "").is_empty(),
        "an online timed out before the stop: this machine is too slow for the test's timing"
    );
    agent.signal(libc::SIGSTOP);
    server.release.send(true).unwrap();
    // Past every online's pending_timeout (3 s from its start) while the agent cannot look.
    std::thread::sleep(Duration::from_secs(4));
    agent.signal(libc::SIGCONT);
    agent.wait_for("the answering resources online", LONG, |a| {
        resmon_e2e::online_resources(&a.metrics()) >= RESOURCES
    });
    // The silent server's onlines: their attempt in flight is judged a check_timeout after
    // the agent came back, and, pending_timeout past, fails with the attempt's own reason.
    agent.wait_for("the silent server's onlines to fail", LONG, |a| {
        let failed = a.events_of("operation_failed", "");
        (RESOURCES..RESOURCES + SILENT)
            .all(|i| failed.iter().any(|e| e["resource"] == format!("r{i}")))
    });
    let failed = agent.events_of("operation_failed", "");
    assert_none_answering(&failed, RESOURCES, "onlines failed");
    assert!(
        failed.iter().all(|e| e["reason"] == "banner_timeout"
            && e["detail"]
                .as_str()
                .unwrap()
                .contains("attempts in pending_timeout 3s, the last:")),
        "{failed:?}"
    );
    assert!(
        agent.events_of("operation_timed_out", "").is_empty(),
        "{:?}",
        agent.events_of("operation_timed_out", "")
    );
}

/// A check-only resource whose server accepts and stays silent comes online by checking:
/// attempts under check_timeout until one passes, the last one's reason in the status and the
/// events meanwhile, and, when pending_timeout passes, that reason as the failure's.
#[test]
fn a_silent_server_is_tried_until_it_answers_with_the_reason_shown_meanwhile() {
    let late = HeldBanners::start();
    let never = HeldBanners::start();
    late.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    never.hold.store(true, std::sync::atomic::Ordering::SeqCst);
    let agent = Agent::start(&format!(
        "[resource_types.smtp]\ncheck_timeout = \"1s\"\n\n[[groups]]\nname = \"mail\"\n\n\
         [[groups.resources]]\nname = \"late\"\ntype = \"smtp\"\naddress = \"{}\"\npending_timeout = \"60s\"\n\n\
         [[groups]]\nname = \"other\"\n\n\
         [[groups.resources]]\nname = \"never\"\ntype = \"smtp\"\naddress = \"{}\"\npending_timeout = \"4s\"\n",
        late.addr, never.addr
    ));
    agent.wait_for("a second failed attempt in the status", LONG, |a| {
        let r = a.resource("mail", "late");
        r["state"] == "online_pending" && r["online_attempt"]["attempt"].as_u64() >= Some(2)
    });
    let r = agent.resource("mail", "late");
    assert_eq!(r["online_attempt"]["reason"], "banner_timeout", "{r}");
    let attempts = agent.events_of("online_attempt_failed", "late");
    assert!(attempts.len() >= 2, "{attempts:?}");
    assert!(
        attempts.iter().all(|e| e["reason"] == "banner_timeout"),
        "{attempts:?}"
    );
    let released = std::time::Instant::now();
    late.release.send(true).unwrap();
    agent.wait_state("mail", "late", "online", LONG);
    eprintln!("online {:?} after the server answered", released.elapsed());
    assert!(released.elapsed() < Duration::from_secs(5));
    assert!(agent.resource("mail", "late")["online_attempt"].is_null());

    agent.wait_for("the never-answering online to fail", LONG, |a| {
        !a.events_of("operation_failed", "never").is_empty()
    });
    let failed = &agent.events_of("operation_failed", "never")[0];
    assert_eq!(failed["reason"], "banner_timeout", "{failed}");
    assert!(
        failed["detail"]
            .as_str()
            .unwrap()
            .contains("attempts in pending_timeout 4s, the last:"),
        "{failed}"
    );
    assert!(agent.events_of("operation_timed_out", "").is_empty());
}

/// `success_threshold` (HAProxy's rise): a check-only resource comes online after that many
/// passing attempts in a row, a pause apart; `failure_threshold` (fall): a failed is_alive is
/// a failure only as the Nth in a row.
#[test]
fn rise_and_fall_thresholds_count_results_in_a_row() {
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let agent = Agent::start(&format!(
        "[[groups]]\nname = \"g\"\n\n[[groups.resources]]\nname = \"web\"\ntype = \"tcp\"\n\
         address = \"{address}\"\nsuccess_threshold = 3\nfailure_threshold = 3\n\
         looks_alive_interval = \"500ms\"\nis_alive_interval = \"1s\"\ncheck_timeout = \"400ms\"\n"
    ));
    // Nothing listens yet: the online's attempts are refused.
    agent.wait_for("a refused attempt", LONG, |a| {
        !a.events_of("online_attempt_failed", "web").is_empty()
    });
    let listener = std::net::TcpListener::bind(&address).unwrap();
    let up = std::time::Instant::now();
    let accepting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let open = accepting.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            if !open.load(std::sync::atomic::Ordering::SeqCst) {
                return; // the listener closes: connections are refused from now on
            }
            drop(stream);
        }
    });
    agent.wait_state("g", "web", "online", LONG);
    let rise = up.elapsed();
    // Three passes, a pause apart: the pause is 1 s or check_timeout (400 ms), the shorter.
    eprintln!("online {rise:?} after the server came up (3 passes 400 ms apart)");
    assert!(rise >= Duration::from_millis(800), "{rise:?}");

    accepting.store(false, std::sync::atomic::Ordering::SeqCst);
    // One more connection makes the accept loop see the flag and close the listener.
    let _ = std::net::TcpStream::connect(&address);
    agent.wait_state("g", "web", "failed", LONG);
    let failed_is_alive = agent
        .events_of("probe_failed", "web")
        .iter()
        .filter(|e| e["check"] == "is_alive")
        .count();
    assert!(
        failed_is_alive >= 3,
        "{failed_is_alive} failed is_alive before the failure"
    );
}
