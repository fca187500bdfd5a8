//! Node drain and resume with real agents on two nodes (network namespaces, a real etcd): a
//! drained node moves its groups away two at a time, each an orderly move, takes none back
//! while paused, says why about a group nobody else may hold, and gets its groups back on
//! `resume --failback`. And the orderly moves beneath: one abandons an online under way, and a
//! provider goes offline only after its dependents on the other node.

use resmon_e2e::cluster::Cluster;
use resmon_e2e::{event_time, testd, Agent};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);
const MOVABLE: [&str; 3] = ["a", "b", "c"];

fn groups() -> String {
    let mut text = String::new();
    for (i, name) in MOVABLE.iter().chain(["pinned"].iter()).enumerate() {
        let owners = if *name == "pinned" {
            "possible_owners = [\"n1\"]"
        } else {
            "preferred_owners = [\"n1\", \"n2\"]\nfailback = \"immediate\""
        };
        text.push_str(&format!(
            r#"
[[groups]]
name = "{name}"
{owners}

[[groups.resources]]
name = "server"
type = "process"
command = ["{testd}", "--listen", "127.0.0.1:{port}"]
ready_tcp = "127.0.0.1:{port}"
"#,
            testd = testd(),
            port = 18000 + i
        ));
    }
    text
}

fn owner(agent: &Agent, group: &str) -> Option<String> {
    agent.status()["cluster"]["owners"][group]
        .as_str()
        .map(String::from)
}

fn node(agent: &Agent, args: &[&str]) -> String {
    let mut all = vec!["node"];
    all.extend_from_slice(args);
    let (code, out, err) = agent.cli(&all);
    assert_eq!(code, 0, "resmon {all:?}: {err}");
    out.trim().to_string()
}

#[test]
fn a_drained_node_moves_its_groups_away_in_order_and_gets_them_back_on_resume() {
    let cluster = Cluster::new(2);
    let start = |n: &str| cluster.start_agent(n, &cluster.agent_config(n, "3s", &groups()));
    let n1 = start("n1");
    for g in MOVABLE.iter().chain(["pinned"].iter()) {
        n1.wait_for(&format!("{g} online on n1"), LONG, |a| {
            owner(a, g).as_deref() == Some("n1") && a.state(g, "server") == "online"
        });
    }
    let n2 = start("n2");
    n2.wait_for("n2 sees n1's groups", LONG, |a| {
        owner(a, "pinned").as_deref() == Some("n1")
    });

    assert_eq!(
        node(&n1, &["drain"]),
        "n1 paused; it moves its 4 groups to other nodes"
    );
    for g in MOVABLE {
        n2.wait_for(&format!("{g} online on n2"), LONG, |a| {
            owner(a, g).as_deref() == Some("n2") && a.state(g, "server") == "online"
        });
    }
    // Two moves at a time: the third starts only after the first released its group.
    let started: Vec<f64> = n1
        .events_of("move_started", "")
        .iter()
        .filter(|e| e["reason"] == "drain")
        .map(event_time)
        .collect();
    let released: Vec<f64> = n1
        .events_of("ownership_released", "")
        .iter()
        .map(event_time)
        .collect();
    assert_eq!(started.len(), 3, "{started:?}");
    assert!(
        started[2] >= released[0],
        "a third move began before any group was released: {started:?} {released:?}"
    );
    // Orderly: each went offline on n1, none was terminated.
    for g in MOVABLE {
        assert!(n1
            .transitions("server")
            .iter()
            .all(|t| !t.contains("fenced") && !t.contains("terminated")));
        assert!(owner(&n1, g).as_deref() == Some("n2"));
    }
    // pinned may run nowhere else: it stays, and n1 says why.
    assert_eq!(owner(&n2, "pinned").as_deref(), Some("n1"));
    n1.wait_for("drain_blocked for pinned", LONG, |a| {
        !a.events_of("drain_blocked", "").is_empty()
    });
    let blocked = &n1.events_of("drain_blocked", "")[0];
    assert_eq!(blocked["group"], "pinned");
    assert_eq!(blocked["why"], "no other possible owner is alive");
    assert_eq!(n2.status()["cluster"]["paused"][0], "n1");

    // Paused, n1 takes nothing back, although it is preferred and failback is immediate.
    std::thread::sleep(Duration::from_secs(3));
    for g in MOVABLE {
        assert_eq!(
            owner(&n2, g).as_deref(),
            Some("n2"),
            "{g} came back to a paused node"
        );
    }
    let (code, _, err) = n1.cli(&["node", "drain"]);
    assert_ne!(code, 0, "a second drain is refused");
    assert!(err.contains("n1 is paused already"), "{err}");

    // Resumed from the other node, with failback: the groups n1 held come back.
    let resumed = node(&n2, &["resume", "n1", "--failback"]);
    assert!(
        resumed.starts_with("n1 resumed; moving back: a, b, c"),
        "{resumed}"
    );
    for g in MOVABLE {
        n1.wait_for(&format!("{g} back on n1"), LONG, |a| {
            owner(a, g).as_deref() == Some("n1") && a.state(g, "server") == "online"
        });
    }
    assert!(n2.status()["cluster"]["paused"]
        .as_array()
        .is_none_or(|p| p.is_empty()));
}

/// A group whose check is still coming online (its server never answers HTTP) is moved: the
/// online under way is abandoned rather than waited for until its pending timeout, so the move
/// completes in seconds.
#[test]
fn a_move_abandons_an_online_still_under_way() {
    let cluster = Cluster::new(2);
    let group = format!(
        r#"
[[groups]]
name = "slow"
preferred_owners = ["n1", "n2"]

[[groups.resources]]
name = "server"
type = "process"
command = ["{testd}", "--listen", "127.0.0.1:18300"]
ready_tcp = "127.0.0.1:18300"

[[groups.resources]]
name = "check"
type = "http"
url = "http://127.0.0.1:18301/"
depends_on = ["server"]
pending_timeout = "10m"
"#,
        testd = testd()
    );
    let start = |n: &str| cluster.start_agent(n, &cluster.agent_config(n, "3s", &group));
    let n1 = start("n1");
    n1.wait_for("slow's check coming online on n1", LONG, |a| {
        owner(a, "slow").as_deref() == Some("n1") && a.state("slow", "check") == "online_pending"
    });
    let n2 = start("n2");
    n2.wait_for("n2 sees n1 own slow", LONG, |a| {
        owner(a, "slow").as_deref() == Some("n1")
    });
    let asked = std::time::Instant::now();
    let (code, _, err) = n1.cli(&["move", "slow", "--to", "n2"]);
    assert_eq!(code, 0, "{err}");
    n2.wait_for("slow's server online on n2", LONG, |a| {
        owner(a, "slow").as_deref() == Some("n2") && a.state("slow", "server") == "online"
    });
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "the move took {:?}",
        asked.elapsed()
    );
    assert!(n1
        .transitions("check")
        .contains(&"online_pending->offline_pending(group_stopping)".to_string()));
}

/// The time of `resource`'s last transition to `to` on `agent`.
fn last_transition(agent: &Agent, resource: &str, to: &str) -> f64 {
    agent
        .events_of("state_changed", resource)
        .iter()
        .rev()
        .find(|e| e["to"] == to)
        .map(event_time)
        .unwrap_or_else(|| {
            panic!(
                "{resource} never went {to}: {:?}",
                agent.transitions(resource)
            )
        })
}

#[test]
fn a_provider_goes_offline_after_its_dependents_on_another_node() {
    let cluster = Cluster::new(2);
    let groups = format!(
        r#"
[[groups]]
name = "mta"
possible_owners = ["n1", "n2"]
preferred_owners = ["n1"]

[[groups.resources]]
name = "server"
type = "process"
command = ["{testd}", "--listen", "127.0.0.1:18400"]
ready_tcp = "127.0.0.1:18400"

[[groups]]
name = "vs"
possible_owners = ["n2"]

[[groups.resources]]
name = "routing"
type = "process"
command = ["{testd}", "--listen", "127.0.0.1:18401"]
ready_tcp = "127.0.0.1:18401"
depends_on_anywhere = ["mta/server"]
"#,
        testd = testd()
    );
    let start = |n: &str| cluster.start_agent(n, &cluster.agent_config(n, "3s", &groups));
    let n1 = start("n1");
    n1.wait_for("mta online on n1", LONG, |a| {
        owner(a, "mta").as_deref() == Some("n1") && a.state("mta", "server") == "online"
    });
    let n2 = start("n2");
    n2.wait_state("vs", "routing", "online", LONG);
    // n2 says in etcd that its dependent is up (what n1 waits on), before the move is asked.
    n2.wait_for("n2 to publish its dependent", LONG, |_| {
        cluster
            .etcdctl(&["get", "--keys-only", "/resmon/dependents/mta/server/n2"])
            .contains("n2")
    });

    let (code, _, err) = n1.cli(&["move", "mta", "--to", "n2"]);
    assert_eq!(code, 0, "{err}");
    n2.wait_for("mta and routing online on n2", LONG, |a| {
        owner(a, "mta").as_deref() == Some("n2")
            && a.state("mta", "server") == "online"
            && a.state("vs", "routing") == "online"
    });
    // The dependent on n2 stopped before the provider on n1 began to stop, as Pacemaker's
    // order constraint has it; it came back once the provider was online again, on n2.
    let routing_offline = last_transition(&n2, "routing", "offline");
    let server_stopping = last_transition(&n1, "server", "offline_pending");
    assert!(
        routing_offline <= server_stopping,
        "routing offline at {routing_offline}, the server began to stop at {server_stopping}: {:?}",
        n2.transitions("routing")
    );
    assert!(
        last_transition(&n2, "server", "online")
            <= last_transition(&n2, "routing", "online_pending")
    );
}
