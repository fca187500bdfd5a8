//! The shipped `examples/exchange-cluster.toml` on three nodes (network namespaces on a bridge,
//! a real etcd): two Exchange virtual servers of real dovecot and nginx, the cluster's one
//! postfix as the MTA, a capacity of one storage group per node. Nodes are taken away one after
//! the other: the virtual servers go only where there is room (one waits when there is none),
//! the MTA runs on exactly one node throughout and routing follows it, and every protocol
//! check reaches its server from its virtual server's own address (the servers' logs say).

use resmon_e2e::cluster::Cluster;
use resmon_e2e::servers::{exchange_cluster, TestPki, EXCHANGE_CLUSTER};
use resmon_e2e::Agent;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(60);
const EXAMPLE_DIR: &str = "/tmp/resmon-exchange-cluster";

fn address_of(group: &str) -> &'static str {
    EXCHANGE_CLUSTER
        .iter()
        .find(|(g, _)| *g == group)
        .map(|(_, a)| *a)
        .unwrap()
}

/// The example, as node `node` runs it with its files under `dir`.
fn config_for(cluster: &Cluster, dir: &Path, node: &str) -> String {
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/exchange-cluster.toml"),
    )
    .unwrap();
    assert_eq!(
        cluster.endpoints(),
        vec!["http://10.88.0.1:2379".to_string()],
        "the example names the test cluster's etcd"
    );
    let dir = dir.display().to_string();
    example
        .replace("node = \"n1\"", &format!("node = \"{node}\""))
        .replace(&format!("{EXAMPLE_DIR}/n1/"), &format!("{dir}/{node}/"))
        .replace(EXAMPLE_DIR, &dir)
}

/// Who owns each group, as `agent` sees it.
fn owner(agent: &Agent, group: &str) -> Option<String> {
    agent.status()["cluster"]["owners"][group]
        .as_str()
        .map(String::from)
}

fn all_online(agent: &Agent, group: &str) -> bool {
    agent.status()["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| g["name"] == group)
        .flat_map(|g| g["resources"].as_array().cloned().unwrap_or_default())
        .all(|r| r["state"] == "online")
        && agent.find_resource(group, "vip").is_some()
}

/// The nodes on which a postfix master runs.
fn postfix_masters(cluster: &Cluster, nodes: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for node in nodes {
        let out = std::process::Command::new("ip")
            .args(["netns", "pids", &cluster.netns(node)])
            .output()
            .unwrap();
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "master" {
                found.push(node.to_string());
            }
        }
    }
    found
}

/// Waits until `cond` holds, checking `always` at every look; panics after `timeout`.
fn wait(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool, mut always: impl FnMut()) {
    let deadline = Instant::now() + timeout;
    loop {
        always();
        if cond() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The client addresses in a server's log: what follows `marker` up to `end`, where it is an
/// address (postfix writes `unknown[unknown]` for a client gone before it asked who it was).
fn clients(log: &str, marker: &str, end: char) -> BTreeSet<String> {
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find(marker)? + marker.len()..];
            let client = &rest[..rest.find(end).unwrap_or(rest.len())];
            client.parse::<std::net::IpAddr>().ok()?;
            Some(client.to_string())
        })
        .collect()
}

#[test]
fn node_losses_keep_capacity_one_mta_and_checks_from_each_virtual_server() {
    let cluster = Cluster::new(3);
    let dir = tempfile::Builder::new()
        .prefix("resmon-exc")
        .tempdir()
        .unwrap();
    let pki = TestPki::new(dir.path());
    exchange_cluster(dir.path(), &pki);
    // The nodes come up one after the other, the MTA's preferred node first: each takes what
    // it may, and failback (immediate in the example) brings each virtual server home.
    let start = |node: &str| cluster.start_agent(node, &config_for(&cluster, dir.path(), node));
    let n3 = start("n3");
    n3.wait_for("mta online on n3", LONG, |a| {
        owner(a, "mta").as_deref() == Some("n3") && all_online(a, "mta")
    });
    let n2 = start("n2");
    n2.wait_for("evs2 online on n2", LONG, |a| {
        owner(a, "evs2").as_deref() == Some("n2") && all_online(a, "evs2")
    });
    let n1 = start("n1");
    n1.wait_for("evs1 online on n1", LONG, |a| {
        owner(a, "evs1").as_deref() == Some("n1") && all_online(a, "evs1")
    });
    let (n2, n3) = (&n2, &n3);
    let all = ["n1", "n2", "n3"];
    assert_eq!(postfix_masters(&cluster, &all), vec!["n3"]);

    // n1 dies. n2 holds a storage group already: evs1 goes to n3, beside the MTA.
    let lost_at = Instant::now();
    cluster.cut("n1");
    cluster.kill_all("n1");
    let single_mta = || {
        let masters = postfix_masters(&cluster, &all);
        assert!(masters.len() <= 1, "two MTAs: {masters:?}");
    };
    wait(
        "evs1 online on n3",
        LONG,
        || owner(n3, "evs1").as_deref() == Some("n3") && all_online(n3, "evs1"),
        single_mta,
    );
    eprintln!(
        "evs1 online on n3 {:?} after n1 was lost",
        lost_at.elapsed()
    );
    assert_eq!(owner(n2, "evs2").as_deref(), Some("n2"), "evs2 never moved");
    assert!(n2.events_of("ownership_released", "").is_empty());
    assert_eq!(postfix_masters(&cluster, &all), vec!["n3"]);

    // n3 dies too: the MTA goes to n2 and evs2's routing follows it there; evs1 has nowhere
    // to go (n2's one storage group is evs2's) and waits.
    cluster.cut("n3");
    cluster.kill_all("n3");
    wait(
        "the MTA online on n2",
        LONG,
        || owner(n2, "mta").as_deref() == Some("n2") && all_online(n2, "mta"),
        single_mta,
    );
    n2.wait_for("evs2's routing online again", LONG, |a| {
        a.state("evs2", "routing") == "online"
    });
    let routing = n2.transitions("routing");
    assert!(
        routing.iter().any(|t| t.ends_with("(provider_down)")),
        "routing went offline with the MTA: {routing:?}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        owner(n2, "evs1"),
        None,
        "evs1 must not exceed n2's capacity"
    );
    assert_eq!(n2.state("evs1", "store"), "offline");
    assert_eq!(postfix_masters(&cluster, &all), vec!["n2"]);

    // Every check reached its server from its virtual server's address.
    for vs in ["evs1", "evs2"] {
        let vip = address_of(vs);
        let dovecot =
            std::fs::read_to_string(dir.path().join(vs).join("dovecot/dovecot.log")).unwrap();
        let seen = clients(&dovecot, "rip=", ',');
        assert_eq!(seen, BTreeSet::from([vip.to_string()]), "{vs}'s dovecot");
        let nginx = std::fs::read_to_string(dir.path().join(vs).join("nginx/access.log")).unwrap();
        let seen = clients(&nginx, "", ' ');
        assert_eq!(seen, BTreeSet::from([vip.to_string()]), "{vs}'s nginx");
    }
    let mut postfix = String::new();
    for node in all {
        let log = dir.path().join(node).join("state/mta/postfix.log");
        postfix += &std::fs::read_to_string(log).unwrap_or_default();
    }
    let seen = clients(&postfix, "connect from unknown[", ']');
    let vips: BTreeSet<String> = EXCHANGE_CLUSTER
        .iter()
        .map(|(_, a)| a.to_string())
        .collect();
    assert!(
        seen.contains(address_of("evs1")) && seen.contains(address_of("evs2")),
        "both virtual servers' routing reached the MTA: {seen:?}"
    );
    assert!(seen.is_subset(&vips), "the MTA saw {seen:?}");
}
