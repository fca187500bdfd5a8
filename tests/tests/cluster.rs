//! Groups across machines: three agents, each in its own network namespace joined to a bridge,
//! a real etcd, and a group made of an `ip` VIP, a `process` service bound to it and an `http`
//! check. An observer outside the agents records every 50 ms which namespace holds the VIP and
//! who answers on it, through every fault: never two at once.

use resmon_e2e::cluster::{Cluster, Observer, Reset, Sample};
use resmon_e2e::{event_time, unix_now, Agent};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(30);
const TTL: &str = "2s";

fn server_pid(cluster: &Cluster, node: &str) -> Option<i32> {
    std::fs::read_to_string(cluster.state_dir(node).join("web/server.pid"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn events_since(agent: &Agent, name: &str, since: f64) -> Vec<serde_json::Value> {
    agent
        .events_of(name, "")
        .into_iter()
        .filter(|e| event_time(e) >= since)
        .collect()
}

fn owner_seen_by(agent: &Agent) -> Option<String> {
    agent.status()["cluster"]["owners"]["web"]
        .as_str()
        .map(String::from)
}

/// An agent etcd refused: it says so, never connects, and runs nothing; returns why.
fn assert_kept_out(cluster: &Cluster, agent: &Agent) -> String {
    agent.wait_for("the refusal", LONG, |a| {
        !a.events_of("coordinator_disconnected", "").is_empty()
    });
    let why = agent.events_of("coordinator_disconnected", "")[0]["why"].to_string();
    std::thread::sleep(Duration::from_secs(3));
    assert!(agent.events_of("coordinator_connected", "").is_empty());
    assert_eq!(
        cluster.answer(),
        None,
        "a group it cannot hold must not run"
    );
    why
}

fn kill(pid: i32) {
    // SAFETY: a signal to a process of the test's own.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

fn start(cluster: &Cluster, node: &str) -> Agent {
    let extra = "failover_threshold = 100\nfailover_period = \"1h\"\nfailback = \"immediate\"";
    cluster.start_agent(
        node,
        &cluster.agent_config(node, TTL, &cluster.web_group(node, extra)),
    )
}

/// Checks the observer's record: never two holders, and prints what it saw.
fn check_samples(samples: &[Sample]) {
    let doubles: Vec<&Sample> = samples.iter().filter(|s| s.holders.len() > 1).collect();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for s in samples {
        *seen
            .entry(s.answer.clone().unwrap_or_else(|| "-".into()))
            .or_default() += 1;
    }
    println!(
        "observer: {} samples over {:.1}s, answers {seen:?}",
        samples.len(),
        samples.last().map(|s| s.at.as_secs_f64()).unwrap_or(0.0)
    );
    assert!(
        doubles.is_empty(),
        "two nodes held the VIP at once: {:?}",
        &doubles[..doubles.len().min(5)]
    );
    assert!(samples.len() > 100, "the observer must have watched");
}

#[test]
fn a_group_fails_over_moves_fails_back_and_never_runs_on_two_nodes_at_once() {
    let cluster = Arc::new(Cluster::new(3));
    let mut agents: BTreeMap<String, Agent> = BTreeMap::new();
    for node in cluster.nodes.clone() {
        agents.insert(node.clone(), start(&cluster, &node));
    }
    cluster.wait_answer("n1", LONG);
    let observer = Observer::start(&cluster);
    assert_eq!(owner_seen_by(&agents["n3"]).as_deref(), Some("n1"));

    // 1. The owner's service keeps failing: one restart, then a failover to the next
    //    preferred node; a client outside sees the VIP answered from there.
    let since = unix_now();
    let first = server_pid(&cluster, "n1").expect("the server runs on n1");
    kill(first);
    agents["n1"].wait_for("the server restarted on n1", LONG, |a| {
        server_pid(&cluster, "n1").is_some_and(|p| p != first)
            && a.state("web", "server") == "online"
    });
    kill(server_pid(&cluster, "n1").unwrap());
    cluster.wait_answer("n2", LONG);
    let moves = events_since(&agents["n1"], "move_started", since);
    assert!(
        moves
            .iter()
            .any(|e| e["reason"] == "failover" && e["to"] == "n2"),
        "{moves:?}"
    );
    assert!(!events_since(&agents["n1"], "ownership_released", since).is_empty());
    let taken = events_since(&agents["n2"], "ownership_acquired", since);
    assert_eq!(taken[0]["reason"], "failover", "{taken:?}");
    agents["n3"].wait_for("n3 to see n2 own the group", LONG, |a| {
        owner_seen_by(a).as_deref() == Some("n2")
    });
    assert!(agents["n1"]
        .metrics()
        .contains("resmon_group_failovers_total{group=\"web\"} 1"));
    let metrics = agents["n2"].metrics();
    assert!(metrics.contains("resmon_coordinator_up 1"), "{metrics}");
    assert!(
        metrics.contains("resmon_group_owner{group=\"web\",node=\"n2\"} 1"),
        "{metrics}"
    );
    assert!(
        resmon_e2e::metric_sum(&metrics, "resmon_coordinator_lease_renew_seconds_count") > 0.0,
        "{metrics}"
    );

    // 2. `resmon move` from any node.
    let (code, out, err) = agents["n1"].cli(&["move", "web", "--to", "n3"]);
    assert_eq!(code, 0, "{out}{err}");
    cluster.wait_answer("n3", LONG);
    let (code, _, err) = agents["n1"].cli(&["move", "web", "--to", "n9"]);
    assert_ne!(code, 0);
    assert!(err.contains("n9 is not alive"), "{err}");

    // 3. Failback: n1, the most preferred node, leaves for longer than its lease and comes
    //    back; the group returns to it.
    let mut n1 = agents.remove("n1").unwrap();
    n1.signal(libc::SIGTERM);
    n1.wait_exit(LONG);
    std::thread::sleep(Duration::from_secs(3));
    n1.spawn();
    cluster.wait_answer("n1", LONG);
    let back = events_since(&n1, "ownership_acquired", 0.0);
    assert_eq!(back.last().unwrap()["reason"], "failback", "{back:?}");
    agents.insert("n1".into(), n1);

    // 4. etcd restarted: nothing moves.
    let since = unix_now();
    cluster.stop_etcd();
    cluster.start_etcd();
    std::thread::sleep(Duration::from_secs(3));
    for (node, agent) in &agents {
        for name in ["ownership_acquired", "ownership_released", "self_fenced"] {
            let seen = events_since(agent, name, since);
            assert!(
                seen.is_empty(),
                "{node}: {name} after an etcd restart: {seen:?}"
            );
        }
    }
    assert_eq!(cluster.answer().as_deref(), Some("n1"));

    // 5. The owner is cut off from etcd (its cable): it fences itself, taking the group
    //    offline before its lease expires, and another node takes over.
    let since = unix_now();
    cluster.cut("n1");
    let took = cluster.wait_answer("n2", LONG);
    let fenced = events_since(&agents["n1"], "self_fenced", since);
    assert!(!fenced.is_empty(), "n1 did not fence itself");
    let fenced_after = event_time(&fenced[0]) - since;
    assert!(
        fenced_after < 2.0,
        "fenced {fenced_after:.2}s after the cut: after the lease"
    );
    // The VIP left n1 before its lease could expire and n2 take the group.
    let vip_down = agents["n1"]
        .events_of("state_changed", "vip")
        .into_iter()
        .find(|e| event_time(e) >= since && e["to"] == "offline")
        .expect("the VIP was taken offline on n1");
    let vip_down_after = event_time(&vip_down) - since;
    assert!(
        vip_down_after < 2.0,
        "the VIP left n1 {vip_down_after:.2}s after the cut"
    );
    println!(
        "cut: fenced after {fenced_after:.2}s, answered from n2 after {:.2}s",
        took.as_secs_f64()
    );
    cluster.mend("n1");
    // n1 comes back with a new lease: the group fails back to it.
    cluster.wait_answer("n1", LONG);

    // 6. The owner's machine dies: its agent SIGKILLed with everything it ran, its cable cut.
    let died = Instant::now();
    cluster.cut("n1");
    cluster.kill_all("n1");
    cluster.drop_vip("n1");
    let took = cluster.wait_answer("n2", LONG);
    println!(
        "node death: answered from n2 after {:.2}s",
        took.as_secs_f64()
    );
    assert!(
        died.elapsed() < Duration::from_secs(2) + Duration::from_secs(3),
        "not within the TTL plus online time"
    );
    agents.remove("n1");

    // 7. Twenty failovers between the two nodes left, by `resmon move`, under the observer.
    let mut to = "n3";
    for _ in 0..20 {
        let (code, out, err) = agents["n2"].cli(&["move", "web", "--to", to]);
        assert_eq!(code, 0, "{out}{err}");
        cluster.wait_answer(to, LONG);
        to = if to == "n3" { "n2" } else { "n3" };
    }

    check_samples(&observer.finish());
}

/// etcd on TLS that requires client certificates: the agent connects with the `[cluster]`
/// TLS keys and takes its group; without a client certificate it is refused, and it does not
/// run the group it cannot hold.
#[test]
fn the_coordinator_reaches_etcd_over_tls_with_a_client_certificate() {
    let cluster = Cluster::new_tls(1);
    let agent = start(&cluster, "n1");
    cluster.wait_answer("n1", LONG);
    let connected = agent.events_of("coordinator_connected", "");
    assert_eq!(connected.len(), 1, "{connected:?}");
    drop(agent);
    cluster.kill_all("n1");
    cluster.drop_vip("n1");

    // The same agent without its client certificate.
    let tls = cluster.tls().unwrap();
    let config = cluster
        .agent_config(
            "n1",
            TTL,
            &cluster.web_group("n1", "failover_threshold = 100"),
        )
        .replace(
            &format!("cert_file = {:?}\n", tls.client.0.display().to_string()),
            "",
        )
        .replace(
            &format!("key_file = {:?}\n", tls.client.1.display().to_string()),
            "",
        );
    assert!(!config.contains("cert_file"), "{config}");
    let agent = cluster.start_agent("n1", &config);
    assert_kept_out(&cluster, &agent);
    assert_eq!(agent.state("web", "vip"), "offline");
}

/// `failover_threshold` stops ping-pong: after one failover within the period, the next is
/// refused with the reason, and the group stays where it is, waiting for its retry.
#[test]
fn past_the_failover_threshold_a_group_stays_and_waits() {
    let cluster = Cluster::new(2);
    let extra = "failover_threshold = 1\nfailover_period = \"1h\"";
    let agents: BTreeMap<String, Agent> = cluster
        .nodes
        .iter()
        .map(|n| {
            let config = cluster.agent_config(n, TTL, &cluster.web_group(n, extra));
            (n.clone(), cluster.start_agent(n, &config))
        })
        .collect();
    cluster.wait_answer("n1", LONG);
    let fail_twice = |node: &str| {
        let first = server_pid(&cluster, node).expect("the server runs");
        kill(first);
        agents[node].wait_for("the server restarted", LONG, |a| {
            server_pid(&cluster, node).is_some_and(|p| p != first)
                && a.state("web", "server") == "online"
        });
        kill(server_pid(&cluster, node).unwrap());
    };
    fail_twice("n1");
    cluster.wait_answer("n2", LONG);
    agents["n2"].wait_state("web", "server", "online", LONG);
    let since = unix_now();
    fail_twice("n2");
    agents["n2"].wait_for("the refusal", LONG, |a| {
        !events_since(a, "failover_failed", since).is_empty()
    });
    let refused = events_since(&agents["n2"], "failover_failed", since);
    assert!(
        refused[0]["why"]
            .as_str()
            .unwrap_or("")
            .contains("threshold is reached"),
        "{refused:?}"
    );
    assert!(!events_since(&agents["n2"], "retry_scheduled", since).is_empty());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        owner_seen_by(&agents["n1"]).as_deref(),
        Some("n2"),
        "it stays on n2"
    );
    assert_eq!(agents["n2"].state("web", "vip"), "online");
    assert_eq!(agents["n2"].state("web", "server"), "failed");
}

/// etcd with authentication on: the agent logs in with `username` and `password_file`, and a
/// wrong password keeps it out, running nothing.
#[test]
fn the_coordinator_logs_in_to_etcd_with_a_user_and_password() {
    let cluster = Cluster::new(1);
    cluster.etcdctl(&["user", "add", "root:root-secret"]);
    cluster.etcdctl(&["user", "add", "resmon:resmon-secret"]);
    cluster.etcdctl(&["role", "add", "resmon"]);
    cluster.etcdctl(&[
        "role",
        "grant-permission",
        "resmon",
        "--prefix=true",
        "readwrite",
        "/resmon/",
    ]);
    cluster.etcdctl(&["user", "grant-role", "resmon", "resmon"]);
    cluster.etcdctl(&["auth", "enable"]);
    let with_password = |password: &str| {
        let file = cluster.dir.path().join(format!("password-{password}"));
        std::fs::write(&file, format!("{password}\n")).unwrap();
        cluster
            .agent_config("n1", TTL, &cluster.web_group("n1", ""))
            .replace(
                "fence_margin = \"500ms\"\n",
                &format!(
                    "fence_margin = \"500ms\"\nusername = \"resmon\"\npassword_file = {:?}\n",
                    file.display().to_string()
                ),
            )
    };
    let agent = cluster.start_agent("n1", &with_password("resmon-secret"));
    cluster.wait_answer("n1", LONG);
    assert_eq!(agent.events_of("coordinator_connected", "").len(), 1);
    drop(agent);
    cluster.kill_all("n1");
    cluster.drop_vip("n1");

    let agent = cluster.start_agent("n1", &with_password("wrong"));
    let why = assert_kept_out(&cluster, &agent);
    assert!(why.contains("connect to etcd"), "{why}");
}

/// The owner loses etcd alone (a blackhole route to it; its link stays up, so its VIP would
/// still answer neighbours), and its service ignores SIGTERM: an orderly stop would outlast
/// the lease. The fence terminates instead, the address first: the VIP is gone and the service
/// killed before the lease can expire, and the observer never sees two holders.
#[test]
fn a_fenced_owner_kills_a_service_that_ignores_sigterm_before_its_lease_expires() {
    let cluster = Arc::new(Cluster::new(2));
    let stubborn = |node: &str| {
        let group = cluster.web_group(node, "failover_threshold = 100\nfailover_period = \"1h\"");
        // `trap '' TERM` is inherited across exec: the server never sees SIGTERM.
        let (head, tail) = group.split_once("command = [").unwrap();
        let (_, rest) = tail.split_once("]\n").unwrap();
        let testd = resmon_e2e::binary("resmon-testd");
        format!(
            "{head}command = [\"sh\", \"-c\", \"trap '' TERM; exec {} --listen {}:{} --http --banner {node}\"]\n{rest}",
            testd.display(),
            resmon_e2e::cluster::VIP,
            resmon_e2e::cluster::SERVICE_PORT
        )
    };
    let mut agents = BTreeMap::new();
    for node in cluster.nodes.clone() {
        let config = cluster.agent_config(&node, TTL, &stubborn(&node));
        agents.insert(node.clone(), cluster.start_agent(&node, &config));
    }
    cluster.wait_answer("n1", LONG);
    let server = server_pid(&cluster, "n1").expect("the server runs on n1");
    let observer = Observer::start(&cluster);
    std::thread::sleep(Duration::from_secs(1));

    let cut = Instant::now();
    resmon_e2e::cluster::sh(&format!(
        "ip -n {} route add blackhole 10.88.0.1/32",
        cluster.netns("n1")
    ));
    // The fence: the VIP leaves n1 and its server is killed, within the lease.
    let mut gone = None;
    while cut.elapsed() < LONG {
        if !cluster.holders().contains(&"n1".to_string()) && !resmon_e2e::process_alive(server) {
            gone = Some(cut.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let gone = gone.expect("n1 still holds the VIP or runs its server");
    cluster.wait_answer("n2", LONG);
    let taken = cut.elapsed();
    println!(
        "etcd cut from the owner: its VIP and its server gone after {:.0} ms (lease 2 s, fence \
         margin 500 ms), the next node answering after {:.0} ms",
        gone.as_secs_f64() * 1000.0,
        taken.as_secs_f64() * 1000.0
    );
    assert!(
        gone < Duration::from_secs(2),
        "the fence took {gone:?}, longer than the lease"
    );
    let fenced = agents["n1"].events_of("state_changed", "server");
    assert!(
        fenced.iter().any(|e| e["cause"] == "fenced"),
        "the server was not fenced: {fenced:?}"
    );
    // The observer goes on watching n2 serve alone.
    std::thread::sleep(Duration::from_secs(4));
    check_samples(&observer.finish());
    resmon_e2e::cluster::sh(&format!(
        "ip -n {} route del blackhole 10.88.0.1/32",
        cluster.netns("n1")
    ));
}

/// The owner's agent is frozen (SIGSTOP) for three times its lease: meanwhile the lease expires
/// and the other node takes the group. The first thing the agent does when it runs again is
/// to fence: its copy of the service is killed and its VIP dropped at once. (What runs while it
/// is frozen is the watchdog's to stop, which these machines cannot host.)
#[test]
fn an_owner_frozen_past_its_lease_terminates_its_copy_as_soon_as_it_resumes() {
    let cluster = Arc::new(Cluster::new(2));
    let mut agents = BTreeMap::new();
    for node in cluster.nodes.clone() {
        // No failback: the group stays where it went while n1 was frozen.
        let group = cluster.web_group(&node, "failover_threshold = 100\nfailover_period = \"1h\"");
        let config = cluster.agent_config(&node, TTL, &group);
        agents.insert(node.clone(), cluster.start_agent(&node, &config));
    }
    cluster.wait_answer("n1", LONG);
    let server = server_pid(&cluster, "n1").expect("the server runs on n1");
    agents["n1"].signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        resmon_e2e::process_alive(server),
        "the frozen agent's service runs on until it resumes"
    );
    agents["n1"].signal(libc::SIGCONT);
    let resumed = Instant::now();
    let wait = |done: &dyn Fn() -> bool| {
        while resumed.elapsed() < LONG {
            if done() {
                return resumed.elapsed();
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("n1 still runs its copy after resuming");
    };
    let killed = wait(&|| !resmon_e2e::process_alive(server));
    let gone = wait(&|| !cluster.holders().contains(&"n1".to_string()));
    println!(
        "frozen for 6 s (lease 2 s): after the agent resumed, its service was killed in {:.0} ms \
         and its VIP seen gone in {:.0} ms (read through `ip`, which takes milliseconds itself)",
        killed.as_secs_f64() * 1000.0,
        gone.as_secs_f64() * 1000.0
    );
    assert!(gone < Duration::from_secs(1), "{gone:?} after resuming");
    cluster.wait_answer("n2", LONG);
}

/// A cluster whose nodes each have a watchdog (played by the harness: a FIFO whose reader
/// resets the node), the web group, and both agents running; n1 holds the group.
fn watched_cluster() -> (
    Arc<Cluster>,
    BTreeMap<String, Agent>,
    BTreeMap<String, Reset>,
) {
    let cluster = Arc::new(Cluster::new(2));
    let mut agents = BTreeMap::new();
    let mut resets = BTreeMap::new();
    for node in cluster.nodes.clone() {
        // lease_ttl 2 s - fence_margin 500 ms: the agent asks for a 1 s timeout.
        let (device, reset) =
            resmon_e2e::cluster::play_watchdog(&cluster, &node, Duration::from_secs(1));
        let watchdog = format!(
            "watchdog = {{ device = {:?}, mode = \"required\" }}\n",
            device.display().to_string()
        );
        let group = cluster.web_group(&node, "failover_threshold = 100\nfailover_period = \"1h\"");
        let config = cluster.agent_config(&node, TTL, &format!("{watchdog}{group}"));
        agents.insert(node.clone(), cluster.start_agent(&node, &config));
        resets.insert(node, reset);
    }
    cluster.wait_answer("n1", LONG);
    (cluster, agents, resets)
}

/// The owner's agent alone dies (SIGKILL: its service and VIP stay), or hangs (SIGSTOP): it
/// can no longer fence, and stops feeding its watchdog, which resets the node before the lease
/// can expire. The observer never sees two holders.
#[test]
fn the_watchdog_resets_a_node_whose_agent_died_or_hung_before_another_takes_over() {
    for (how, signal) in [("killed", libc::SIGKILL), ("stopped", libc::SIGSTOP)] {
        let (cluster, agents, resets) = watched_cluster();
        let server = server_pid(&cluster, "n1").expect("the server runs on n1");
        let observer = Observer::start(&cluster);
        std::thread::sleep(Duration::from_secs(1));
        assert!(
            resets["n1"].lock().unwrap().is_none(),
            "a fed watchdog fired"
        );
        let died = Instant::now();
        agents["n1"].signal(signal);
        cluster.wait_answer("n2", LONG);
        let answered = died.elapsed();
        let reset = resets["n1"]
            .lock()
            .unwrap()
            .expect("the watchdog did not reset n1")
            .duration_since(died);
        println!(
            "agent {how}: n1 reset by its watchdog after {:.0} ms, n2 answering after {:.0} ms",
            reset.as_secs_f64() * 1000.0,
            answered.as_secs_f64() * 1000.0
        );
        assert!(
            !resmon_e2e::process_alive(server),
            "the server outlived the reset"
        );
        assert!(reset < answered, "n2 answered before n1 was reset");
        std::thread::sleep(Duration::from_secs(3));
        check_samples(&observer.finish());
        assert!(
            resets["n2"].lock().unwrap().is_none(),
            "n2's watchdog fired though its agent runs"
        );
    }
}
