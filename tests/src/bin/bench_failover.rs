//! `resmon-bench-failover [RUNS]`: failover time, from a node's death to the VIP answering from
//! another node, for resmon (etcd, 2 s lease) and keepalived (VRRP, Debian's defaults:
//! `advert_int 1`) moving the same VIP in the same network namespaces in the same run.
//!
//! A node dies the way a machine does: its cable is cut (its bridge port goes down), every
//! process in its namespace is killed, and its addresses are gone. The clock starts at the
//! cut; it stops when a client in the hub namespace gets an answer from another node. The dead
//! node is then brought back (as a backup: resmon with `failback = "never"`, keepalived with
//! `nopreempt`) before the next run kills the new owner. Needs root, etcd and keepalived.

use resmon_e2e::cluster::{keepalived_config, spawn_keepalived, Cluster};
use resmon_e2e::{binary, Agent};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(30);

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(name: &str, mut times: Vec<f64>) -> (f64, f64) {
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (median, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
    println!(
        "{name:<11} runs {:>2}  median {median:.3} s  p99 {p99:.3} s  min {:.3} s  max {:.3} s",
        times.len(),
        times[0],
        times[times.len() - 1]
    );
    (median, p99)
}

/// Kills `node` like a dead machine and times until another node answers on the VIP.
fn kill_and_time(cluster: &Cluster, node: &str) -> (f64, String) {
    let started = Instant::now();
    cluster.cut(node);
    cluster.kill_all(node);
    cluster.drop_vip(node);
    while started.elapsed() < TIMEOUT {
        if let Some(answer) = cluster.answer() {
            if answer != node {
                return (started.elapsed().as_secs_f64(), answer);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for n in &cluster.nodes {
        let log = cluster.dir.path().join(n).join("keepalived.log");
        if let Ok(text) = std::fs::read_to_string(&log) {
            let tail: Vec<&str> = text.lines().rev().take(8).collect();
            eprintln!("{n} keepalived.log (last lines, newest first): {tail:#?}");
        }
    }
    panic!(
        "no other node answered within {TIMEOUT:?}; holders {:?}",
        cluster.holders()
    );
}

fn owner(cluster: &Cluster) -> String {
    let started = Instant::now();
    while started.elapsed() < TIMEOUT {
        if let Some(a) = cluster.answer() {
            return a;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nobody answers on the VIP");
}

fn resmon_runs(cluster: &Cluster, runs: usize) -> Vec<f64> {
    let config = |node: &str| {
        cluster.agent_config(
            node,
            "2s",
            &cluster.web_group(node, "failover_threshold = 1000\nfailback = \"never\""),
        )
    };
    let mut agents: Vec<(String, Agent)> = cluster
        .nodes
        .iter()
        .map(|n| (n.clone(), cluster.start_agent(n, &config(n))))
        .collect();
    let mut times = Vec::new();
    for run in 0..runs {
        let victim = owner(cluster);
        let (seconds, to) = kill_and_time(cluster, &victim);
        println!("resmon     run {run:>2}: {victim} died, {to} answered after {seconds:.3} s");
        times.push(seconds);
        // Back as a backup, with a new lease, before the next run.
        cluster.mend(&victim);
        let agent = &mut agents.iter_mut().find(|(n, _)| *n == victim).unwrap().1;
        agent.spawn();
        agent.wait_for("the node to rejoin", TIMEOUT, |a| {
            a.status()["cluster"]["connected"] == true
        });
        std::thread::sleep(Duration::from_millis(500));
    }
    for node in &cluster.nodes {
        cluster.kill_all(node);
        cluster.drop_vip(node);
    }
    times
}

fn start_keepalived(cluster: &Cluster, node: &str, priority: u8) -> Child {
    let dir = cluster.dir.path().join(node);
    std::fs::create_dir_all(&dir).unwrap();
    let conf = keepalived_config(&dir, node, priority);
    spawn_keepalived(cluster, node, &conf, &dir.join("keepalived.log"))
}

fn start_service(cluster: &Cluster, node: &str) -> Child {
    // Bound to every address: keepalived only moves the VIP, the service runs everywhere.
    Command::new("ip")
        .args(["netns", "exec", &cluster.netns(node)])
        .arg(binary("resmon-testd"))
        .args(["--listen", "0.0.0.0:8080", "--http", "--banner", node])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn keepalived_runs(cluster: &Cluster, runs: usize) -> Vec<f64> {
    let priority = |node: &str| 100 - 10 * (node[1..].parse::<u8>().unwrap_or(1) - 1);
    // Killed by the runs (a node's processes die with it) or at the end, and reaped.
    let mut children = Vec::new();
    for node in &cluster.nodes {
        children.push(start_service(cluster, node));
        children.push(start_keepalived(cluster, node, priority(node)));
    }
    let mut times = Vec::new();
    for run in 0..runs {
        let victim = owner(cluster);
        let (seconds, to) = kill_and_time(cluster, &victim);
        println!("keepalived run {run:>2}: {victim} died, {to} answered after {seconds:.3} s");
        times.push(seconds);
        cluster.mend(&victim);
        children.push(start_service(cluster, &victim));
        children.push(start_keepalived(cluster, &victim, priority(&victim)));
        // Let it settle as a backup (nopreempt) before the next run.
        std::thread::sleep(Duration::from_secs(4));
    }
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    times
}

/// Failover time of resmon against keepalived: three nodes in network namespaces, the active
/// one's cable cut and every process on it killed, RUNS times each. Needs root and a release
/// build: `cargo build --release --workspace --bins`.
#[derive(clap::Parser)]
#[command(name = "resmon-bench-failover")]
struct Args {
    /// Failovers measured for each of the two.
    #[arg(default_value_t = 20, value_parser = resmon_e2e::at_least_one)]
    runs: usize,
}

fn main() {
    let Args { runs } = clap::Parser::parse();
    let cluster = Cluster::new(3);
    println!(
        "failover benchmark: {runs} runs each, 3 nodes, kill = cable cut + every process killed"
    );
    let resmon = resmon_runs(&cluster, runs);
    let keepalived = keepalived_runs(&cluster, runs);
    println!();
    let (rm, rp) = summary("resmon", resmon);
    let (km, kp) = summary("keepalived", keepalived);
    println!(
        "ratio resmon/keepalived: median {:.2}x, p99 {:.2}x (target: within 1.5x)",
        rm / km,
        rp / kp
    );
}
