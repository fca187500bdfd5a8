//! Maintenance mode with the real agent: a group in maintenance is checked and exported but the
//! agent starts, stops and restarts nothing of it, across an agent restart; a repair by hand
//! shows; leaving maintenance bounces nothing that runs and acts on what does not.

use resmon_e2e::{free_port, process_alive, testd, Agent};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(20);

fn config(port: u16) -> String {
    format!(
        r#"
[[groups]]
name = "app"

[[groups.resources]]
name = "daemon"
type = "process"
command = ["{testd}", "--listen", "127.0.0.1:{port}"]
ready_tcp = "127.0.0.1:{port}"

[[groups.resources]]
name = "port"
type = "tcp"
address = "127.0.0.1:{port}"
is_alive_interval = "300ms"
depends_on = ["daemon"]
"#,
        testd = testd()
    )
}

fn maintenance(agent: &Agent, args: &[&str]) -> String {
    let mut all = vec!["maintenance"];
    all.extend_from_slice(args);
    let (code, out, err) = agent.cli(&all);
    assert_eq!(code, 0, "resmon {all:?}: {err}");
    out
}

fn kill(pid: i32) {
    // SAFETY: SIGKILL to a process this test's agent started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

#[test]
fn a_group_in_maintenance_is_watched_not_touched_and_leaves_it_without_a_bounce() {
    let port = free_port();
    let mut agent = Agent::start(&config(port));
    agent.wait_state("app", "port", "online", LONG);
    let pid = agent.pid_of("app", "daemon").unwrap();

    // In and out with everything healthy: nothing moves.
    assert_eq!(
        maintenance(&agent, &["on", "app"]).trim(),
        "app: in maintenance"
    );
    assert_eq!(agent.resource("app", "daemon")["unmanaged"], true);
    assert!(agent
        .metrics()
        .contains("resmon_resource_unmanaged{group=\"app\",resource=\"daemon\""));
    maintenance(&agent, &["off", "app"]);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(agent.pid_of("app", "daemon"), Some(pid));
    assert_eq!(
        agent.events_of("state_changed", "daemon").len(),
        2,
        "offline->pending->online only"
    );
    assert!(!agent
        .metrics()
        .contains("resmon_resource_unmanaged{group=\"app\""));

    // In maintenance, through an agent restart: the daemon dies, the check sees it, nothing
    // restarts it.
    maintenance(&agent, &["on", "app"]);
    agent.signal(libc::SIGTERM);
    agent.wait_exit(LONG).expect("the agent exits");
    assert!(
        process_alive(pid),
        "an agent that stops leaves the daemon running"
    );
    agent.spawn();
    agent.wait_state("app", "daemon", "online", LONG);
    assert_eq!(
        agent.resource("app", "port")["unmanaged"],
        true,
        "kept across the restart"
    );
    kill(pid);
    agent.wait_state("app", "port", "failed", LONG);
    std::thread::sleep(Duration::from_secs(2));
    assert!(agent.events_of("restart_requested", "").is_empty());
    let started = agent
        .transitions("daemon")
        .into_iter()
        .filter(|t| t.contains("->online_pending"))
        .count();
    assert_eq!(started, 0, "{:?}", agent.transitions("daemon"));
    assert_eq!(agent.state("app", "port"), "failed");
    let (code, _, err) = agent.cli(&["online", "app/daemon"]);
    assert_ne!(code, 0);
    assert!(err.contains("in maintenance"), "{err}");

    // Out of maintenance: the failure it saw is acted on now, and the group comes back.
    maintenance(&agent, &["off", "app"]);
    agent.wait_state("app", "port", "online", LONG);
    let new_pid = agent.pid_of("app", "daemon").unwrap();
    assert_ne!(new_pid, pid);
    assert!(process_alive(new_pid));

    // The node: the same, for every group.
    assert_eq!(
        maintenance(&agent, &["on"]).trim(),
        "the node: in maintenance"
    );
    assert_eq!(agent.status()["maintenance"]["node"], true);
    assert!(agent.metrics().contains("resmon_node_maintenance 1"));
    kill(new_pid);
    agent.wait_state("app", "port", "failed", LONG);
    std::thread::sleep(Duration::from_secs(1));
    assert!(!process_alive(new_pid));
    assert_eq!(
        agent.pid_of("app", "daemon"),
        Some(new_pid),
        "not restarted"
    );
    maintenance(&agent, &["off"]);
    agent.wait_state("app", "port", "online", LONG);
    let changes = agent.events_of("maintenance_changed", "");
    assert_eq!(
        changes.len(),
        3,
        "off for the group, on and off for the node: {changes:?}"
    );
}
