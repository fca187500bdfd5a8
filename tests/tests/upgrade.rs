//! Rolling upgrades and version skew with real agents on two nodes (network namespaces, a
//! real etcd), and two builds side by side: the previous one (`RESMON_PREVIOUS_BIN`, this
//! source stamped with an older version by `scripts/test`) and this one. The procedure of the
//! docs, node by node: drain, upgrade the package (stop the agent, start the new binary on the
//! same config and state), resume. The group moves twice, between builds of both versions,
//! and never runs on two nodes; status, the metrics and `validate --cluster` show the skew
//! while it lasts, and a group defined differently is an error. A node under a newer key
//! schema than its own takes nothing.

use resmon_e2e::cluster::Cluster;
use resmon_e2e::{binary, process_alive, testd, Agent};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

/// The previous build; `scripts/test` builds it.
fn previous_build() -> PathBuf {
    let path = std::env::var_os("RESMON_PREVIOUS_BIN")
        .map(PathBuf::from)
        .expect("RESMON_PREVIOUS_BIN names the previous build: scripts/test builds it");
    assert!(path.exists(), "{} is not built", path.display());
    path
}

fn group(check_every: &str) -> String {
    format!(
        r#"
[[groups]]
name = "web"
preferred_owners = ["n1", "n2"]

[[groups.resources]]
name = "server"
type = "process"
command = ["{testd}", "--listen", "127.0.0.1:18200"]
ready_tcp = "127.0.0.1:18200"
is_alive_interval = "{check_every}"
"#,
        testd = testd()
    )
}

fn owner(agent: &Agent) -> Option<String> {
    agent.status()["cluster"]["owners"]["web"]
        .as_str()
        .map(String::from)
}

fn online_on(agent: &Agent, node: &str) {
    agent.wait_for(&format!("web online on {node}"), LONG, |a| {
        owner(a).as_deref() == Some(node) && a.state("web", "server") == "online"
    });
}

fn cli(agent: &Agent, args: &[&str]) -> (i32, String) {
    let (code, out, err) = agent.cli(args);
    (code, format!("{out}{err}"))
}

fn node(agent: &Agent, args: &[&str]) {
    let mut all = vec!["node"];
    all.extend_from_slice(args);
    let (code, out) = cli(agent, &all);
    assert_eq!(code, 0, "resmon {all:?}: {out}");
}

/// The groups this agent took from a draining node.
fn drained_to(agent: &Agent) -> Vec<String> {
    agent
        .events_of("ownership_acquired", "")
        .iter()
        .filter(|e| e["reason"] == "drain")
        .map(|e| e["group"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn versions(agent: &Agent) -> usize {
    agent.status()["cluster"]["skew"]["versions"]
        .as_object()
        .map_or(0, |v| v.len())
}

/// Counts, every 20 ms, the nodes where the group's server runs; keeps the largest count.
struct TwoNodesWatch {
    stop: Arc<AtomicBool>,
    most: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TwoNodesWatch {
    fn start(cluster: &Cluster) -> TwoNodesWatch {
        let files: Vec<PathBuf> = ["n1", "n2"]
            .iter()
            .map(|n| cluster.state_dir(n).join("web/server.pid"))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let most = Arc::new(AtomicUsize::new(0));
        let (s, m) = (stop.clone(), most.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let running = files
                    .iter()
                    .filter_map(|f| std::fs::read_to_string(f).ok())
                    .filter_map(|t| t.split_whitespace().next()?.parse::<i32>().ok())
                    .filter(|pid| process_alive(*pid))
                    .count();
                m.fetch_max(running, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        TwoNodesWatch {
            stop,
            most,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.most.load(Ordering::SeqCst)
    }
}

#[test]
fn a_rolling_upgrade_moves_the_group_between_versions_and_shows_the_skew() {
    let previous = previous_build();
    let current = binary("resmon");
    let cluster = Cluster::new(2);
    let start = |n: &str| {
        Agent::start_in_netns_with(
            &cluster.agent_config(n, "3s", &group("1s")),
            "127.0.0.1:9477",
            &cluster.netns(n),
            &previous,
        )
    };
    let mut n1 = start("n1");
    online_on(&n1, "n1");
    let mut n2 = start("n2");
    n2.wait_for("n2 sees n1 and the group", LONG, |a| {
        owner(a).as_deref() == Some("n1") && versions(a) == 1
    });
    let old = n1.status()["version"].as_str().unwrap().to_string();
    let watch = TwoNodesWatch::start(&cluster);

    // n1: drain, upgrade, resume. Meanwhile the cluster runs two versions.
    node(&n1, &["drain"]);
    online_on(&n2, "n2");
    assert_eq!(drained_to(&n2), ["web"], "taken by the old build on n2");
    n1.upgrade(&current);
    let new = n1.status()["version"].as_str().unwrap().to_string();
    assert_ne!(old, new, "the two builds have different versions");
    n1.wait_for("n1 sees two versions", LONG, |a| versions(a) == 2);
    let (_, status) = cli(&n1, &["status"]);
    assert!(
        status.contains(&format!(
            "versions differ: {old} on n2; {new} on n1 (finish the rolling upgrade)"
        )) || status.contains(&format!(
            "versions differ: {new} on n1; {old} on n2 (finish the rolling upgrade)"
        )),
        "{status}"
    );
    assert!(n1.metrics().contains("resmon_cluster_versions 2\n"));
    assert!(n2.metrics().contains("resmon_cluster_versions 2\n"));
    let (code, report) = cli(&n1, &["validate", "--cluster"]);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("warning: versions differ: "), "{report}");
    assert!(report.contains("cluster: 0 errors, 1 warning"), "{report}");
    node(&n1, &["resume"]);

    // n2: drain (the new build takes the group from the old), upgrade, resume.
    node(&n2, &["drain"]);
    online_on(&n1, "n1");
    n2.upgrade(&current);
    node(&n2, &["resume"]);
    for agent in [&n1, &n2] {
        agent.wait_for("one version again", LONG, |a| {
            versions(a) == 1 && a.metrics().contains("resmon_cluster_versions 1\n")
        });
    }
    let (code, report) = cli(&n1, &["validate", "--cluster"]);
    assert_eq!(code, 0, "{report}");
    assert!(report.contains("cluster: 0 errors, 0 warnings"), "{report}");
    assert_eq!(
        watch.finish(),
        1,
        "the server ran on one node at a time, and ran"
    );
    assert_eq!(drained_to(&n1), ["web"], "taken by the new build on n1");

    // A group defined differently on n2 (reloaded there): an error for validate, a line in
    // status and a metric.
    let text = std::fs::read_to_string(&n2.config).unwrap();
    std::fs::write(
        &n2.config,
        text.replace("is_alive_interval = \"1s\"", "is_alive_interval = \"2s\""),
    )
    .unwrap();
    n2.signal(libc::SIGHUP);
    n1.wait_for("n1 sees the difference", LONG, |a| {
        a.metrics()
            .contains("resmon_cluster_config_differences 1\n")
    });
    let (code, report) = cli(&n1, &["validate", "--cluster"]);
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains("error: group \"web\" is defined differently: ")
            && report.contains("n1, n1 (this file) have ")
            && report.contains("n2 has ")
            && report.contains(" (in resource \"server\")\n"),
        "{report}"
    );
    assert!(report.contains("cluster: 1 error, 0 warnings"), "{report}");
    let (_, status) = cli(&n1, &["status"]);
    assert!(
        status.contains("config differs: group \"web\" is defined differently"),
        "{status}"
    );
    assert_eq!(owner(&n1).as_deref(), Some("n1"), "nothing moved");
}

#[test]
fn a_node_under_a_newer_key_schema_takes_nothing_and_says_so() {
    let cluster = Cluster::new(1);
    // What a node of a later build, speaking schema 2, would have written.
    cluster.etcdctl(&["put", "/resmon/schema", "2"]);
    let n1 = cluster.start_agent("n1", &cluster.agent_config("n1", "3s", &group("1s")));
    n1.wait_for("the refusal", LONG, |a| {
        !a.events_of("schema_refused", "").is_empty()
    });
    let refusal = &n1.events_of("schema_refused", "")[0];
    assert_eq!(refusal["cluster_schema"], 2);
    assert_eq!(refusal["own_schema"], 1);
    assert!(n1.metrics().contains("resmon_cluster_schema_refused 1\n"));
    let (_, status) = cli(&n1, &["status"]);
    assert!(
        status.contains(
            "REFUSED: the cluster's key schema 2 is newer than this agent's (1): it takes no \
             group until it is upgraded"
        ),
        "{status}"
    );
    let (code, report) = cli(&n1, &["validate", "--cluster"]);
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains("error: n1 (this file) speaks key schema 1, older than the cluster's 2"),
        "{report}"
    );
    // Long enough for many evaluations (one a second, and one per change): nothing is taken.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(owner(&n1), None);
    assert_eq!(n1.state("web", "server"), "offline");

    // Back at schema 1, it acts again.
    cluster.etcdctl(&["put", "/resmon/schema", "1"]);
    online_on(&n1, "n1");
    assert!(n1.metrics().contains("resmon_cluster_schema_refused 0\n"));
}
