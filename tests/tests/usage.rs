//! Resource-usage conditions with the real agent: the threads, memory and descriptors of a
//! `process` resource's whole tree are exported at each is_alive, and a limit exceeded at
//! `for_checks` checks in a row fails it with the reason `resource_limit`.

use resmon_e2e::Agent;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(20);

fn tree(name: &str, limits: &str) -> String {
    format!(
        r#"
[[groups.resources]]
name = "{name}"
type = "process"
# Four processes of one thread each: the shell's three children, and the shell become a fourth.
command = ["sh", "-c", "sleep 600 & sleep 600 & sleep 600 & exec sleep 600"]
is_alive_interval = "300ms"
restart_action = "no_restart"
limits = {limits}
"#
    )
}

#[test]
fn a_tree_over_its_limit_for_enough_checks_fails_with_resource_limit() {
    let agent = Agent::start(&format!(
        "[[groups]]\nname = \"app\"\n{}\n[[groups]]\nname = \"calm\"\n{}",
        tree("busy", "{ max_threads = 3, for_checks = 3 }"),
        tree(
            "within",
            "{ max_threads = 100, max_memory = \"1GiB\", max_fds = 1000 }"
        ),
    ));
    agent.wait_state("app", "busy", "failed", LONG);
    let failed = agent
        .transitions("busy")
        .into_iter()
        .find(|t| t.starts_with("online->failed"))
        .unwrap();
    assert_eq!(failed, "online->failed(is_alive_failed:resource_limit)");
    // Each check over the limit says so; the controller fails it at the third in a row.
    let over: Vec<_> = agent
        .events_of("probe_failed", "busy")
        .into_iter()
        .filter(|e| e["reason"] == "resource_limit")
        .collect();
    assert_eq!(over.len(), 3, "a failure at the third check over: {over:?}");
    let detail = over[0]["detail"].as_str().unwrap();
    assert_eq!(detail, "threads 4 > 3 (4 processes)");

    agent.wait_for("the calm tree's usage exported", LONG, |a| {
        a.metrics().contains(
            "resmon_resource_threads{group=\"calm\",resource=\"within\",type=\"process\"} 4",
        )
    });
    let metrics = agent.metrics();
    assert!(
        metrics.contains("resmon_resource_open_fds{group=\"calm\""),
        "{metrics}"
    );
    assert!(metrics.contains("resmon_resource_memory_bytes{group=\"calm\""));
    assert!(metrics.contains("resmon_resource_cpu_cores{group=\"calm\""));
    assert_eq!(agent.state("calm", "within"), "online");
}
