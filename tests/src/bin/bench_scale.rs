//! `resmon-bench-scale [--groups N] [--kills K]`: failover at scale, beside keepalived. Three
//! nodes in network namespaces and one etcd; N groups (default 300), each a VIP and a tcp check
//! of the service behind it, their preferred owners spread over the nodes; keepalived with N
//! VRRP instances over the same namespaces in the same run.
//!
//! It prints, for resmon: etcd requests a second and the agents' CPU at steady state with 3
//! groups and with N (the etcd load must not grow with the groups); then, K times, a node dies
//! (cable cut, every process killed, its addresses gone) and the time until each of the groups
//! it held answers from another node (p50, p99, max; target: within `lease_ttl` + 1 s). Then
//! the same kills with keepalived (`advert_int 1`, `nopreempt`), and the ratio at the max
//! (target: within 1.5x). A VRRP router id is one of 255 per interface, so keepalived's
//! adverts for instances past 150 go over a second link of each node (`eth1`, on the same
//! bridge); every VIP is on `eth0` for both. Needs root, etcd and keepalived, and a release
//! build: `cargo build --release --workspace --bins`.

use resmon_e2e::cluster::{ask, sh, spawn_keepalived, Cluster};
use resmon_e2e::{binary, in_netns, Agent};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The port every node's service answers on (its node name), on every address.
const PORT: u16 = 8080;
const TTL: &str = "2s";
const TTL_SECONDS: f64 = 2.0;
const TIMEOUT: Duration = Duration::from_secs(60);
/// How long steady state is measured.
const STEADY: Duration = Duration::from_secs(10);

fn vip(i: usize) -> String {
    format!("10.89.{}.{}", i / 200, 10 + i % 200)
}

fn address(i: usize) -> SocketAddr {
    format!("{}:{PORT}", vip(i)).parse().unwrap()
}

/// The nodes in group `i`'s order of preference: its owners are spread round the nodes.
fn preference(nodes: &[String], i: usize) -> Vec<String> {
    (0..nodes.len())
        .map(|k| nodes[(i + k) % nodes.len()].clone())
        .collect()
}

fn groups_toml(nodes: &[String], n: usize) -> String {
    let mut text = String::new();
    for i in 0..n {
        let owners: Vec<String> = preference(nodes, i)
            .iter()
            .map(|n| format!("{n:?}"))
            .collect();
        text.push_str(&format!(
            r#"
[[groups]]
name = "g{i}"
possible_owners = [{owners}]
preferred_owners = [{owners}]
failback = "never"
failover_threshold = 1000

[[groups.resources]]
name = "vip"
type = "ip"
address = "{vip}/16"
interface = "eth0"

[[groups.resources]]
name = "check"
type = "tcp"
address = "{vip}:{PORT}"
depends_on = ["vip"]
"#,
            owners = owners.join(", "),
            vip = vip(i),
        ));
    }
    text
}

/// Who answers on each of `vips`, asked from the hub by 32 threads at once.
fn answers(cluster: &Cluster, vips: &[usize]) -> BTreeMap<usize, Option<String>> {
    let found = Mutex::new(BTreeMap::new());
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..32 {
            scope.spawn(|| {
                in_netns(&cluster.hub, || loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&i) = vips.get(k) else { return };
                    let who = ask(address(i));
                    found.lock().unwrap().insert(i, who);
                })
            });
        }
    });
    found.into_inner().unwrap()
}

/// Waits until every one of `vips` answers; returns who answers each.
fn wait_all_answer(cluster: &Cluster, vips: &[usize], what: &str) -> BTreeMap<usize, String> {
    let started = Instant::now();
    loop {
        let seen = answers(cluster, vips);
        if seen.values().all(Option::is_some) {
            return seen.into_iter().map(|(i, w)| (i, w.unwrap())).collect();
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "{what}: {} of {} VIPs still silent after {TIMEOUT:?}",
            seen.values().filter(|w| w.is_none()).count(),
            vips.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Kills `victim` like a dead machine and times, for each of `held`, until another node
/// answers on it. Returns the seconds, one per VIP.
fn kill_and_time(cluster: &Cluster, victim: &str, held: &[usize]) -> Vec<f64> {
    let started = Instant::now();
    cut(cluster, victim);
    cluster.kill_all(victim);
    sh(&format!(
        "ip -n {} addr flush dev eth0 && ip -n {0} addr flush dev eth1",
        cluster.netns(victim)
    ));
    let back: Mutex<BTreeMap<usize, f64>> = Mutex::new(BTreeMap::new());
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..32 {
            scope.spawn(|| {
                in_netns(&cluster.hub, || {
                    // Each thread takes VIPs in turn and asks each until another node answers.
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&i) = held.get(k) else { return };
                        while started.elapsed() < TIMEOUT {
                            if ask(address(i)).is_some_and(|w| w != victim) {
                                back.lock()
                                    .unwrap()
                                    .insert(i, started.elapsed().as_secs_f64());
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                })
            });
        }
    });
    let back = back.into_inner().unwrap();
    assert_eq!(
        back.len(),
        held.len(),
        "{} of {victim}'s {} groups never answered elsewhere",
        held.len() - back.len(),
        held.len()
    );
    back.into_values().collect()
}

/// The node that answers for the most groups: the one whose death moves the most.
fn busiest(owners: &BTreeMap<usize, String>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for node in owners.values() {
        *counts.entry(node).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(node, _)| node.to_string())
        .expect("someone answers")
}

fn cut(cluster: &Cluster, node: &str) {
    cluster.cut(node);
    sh(&format!("ip -n {} link set q-{node} down", cluster.hub));
}

/// Plugs a dead node back, with its addresses, as a machine that boots again.
fn mend(cluster: &Cluster, node: &str) {
    let i: usize = node[1..].parse().unwrap();
    let ns = cluster.netns(node);
    sh(&format!(
        "ip -n {ns} addr add 10.88.0.{}/24 dev eth0; ip -n {ns} addr add 10.88.1.{0}/24 dev eth1; true",
        10 + i
    ));
    cluster.mend(node);
    sh(&format!("ip -n {} link set q-{node} up", cluster.hub));
}

/// The second link of each node (see the module's doc), and the hub's address for the VIPs.
fn plumb(cluster: &Cluster) {
    let hub = &cluster.hub;
    sh(&format!("ip -n {hub} addr add 10.89.255.254/16 dev br0"));
    for (k, node) in cluster.nodes.iter().enumerate() {
        let ns = cluster.netns(node);
        sh(&format!(
            "ip -n {hub} link add q-{node} type veth peer name eth1 netns {ns} && \
             ip -n {hub} link set q-{node} master br0 up && \
             ip -n {ns} addr add 10.88.1.{}/24 dev eth1 && ip -n {ns} link set eth1 up",
            11 + k
        ));
    }
}

fn start_service(cluster: &Cluster, node: &str) -> Child {
    Command::new("ip")
        .args(["netns", "exec", &cluster.netns(node)])
        .arg(binary("resmon-testd"))
        .args([
            "--listen",
            &format!("0.0.0.0:{PORT}"),
            "--http",
            "--banner",
            node,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// etcd's gRPC messages received so far (every request, each renewal on a stream included).
fn etcd_requests(cluster: &Cluster) -> f64 {
    let text = in_netns(&cluster.hub, || {
        resmon_e2e::http_get("10.88.0.1:2379", "/metrics").map(|(_, body)| body)
    })
    .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("grpc_server_msg_received_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// CPU seconds a process has used.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15, the 12th and 13th after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// etcd requests a second and the agents' CPU (% of a core, summed) over [`STEADY`].
fn steady(cluster: &Cluster, agents: &[(String, Agent)]) -> (f64, f64) {
    let (r0, c0): (f64, f64) = (
        etcd_requests(cluster),
        agents.iter().map(|(_, a)| cpu_seconds(a.pid())).sum(),
    );
    let started = Instant::now();
    std::thread::sleep(STEADY);
    let elapsed = started.elapsed().as_secs_f64();
    let (r1, c1): (f64, f64) = (
        etcd_requests(cluster),
        agents.iter().map(|(_, a)| cpu_seconds(a.pid())).sum(),
    );
    ((r1 - r0) / elapsed, 100.0 * (c1 - c0) / elapsed)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// p50, p99 and max of `times`, printed.
fn summary(name: &str, mut times: Vec<f64>) -> (f64, f64, f64) {
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (p50, p99, max) = (
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times[times.len() - 1],
    );
    println!(
        "{name:<11} {:>4} groups moved  p50 {p50:.3} s  p99 {p99:.3} s  max {max:.3} s",
        times.len()
    );
    (p50, p99, max)
}

fn resmon_runs(cluster: &Cluster, n: usize, kills: usize) -> Vec<f64> {
    let all: Vec<usize> = (0..n).collect();
    // The service behind every VIP runs on every node, started again with a node that comes
    // back.
    let mut services: Vec<Child> = cluster
        .nodes
        .iter()
        .map(|node| start_service(cluster, node))
        .collect();
    // (RESMON_SCALE_AGENT: extra [agent] keys, to see what a setting changes.)
    let extra = std::env::var("RESMON_SCALE_AGENT").unwrap_or_default();
    let config = |node: &str, groups: usize| {
        cluster
            .agent_config(node, TTL, &groups_toml(&cluster.nodes, groups))
            .replacen("[agent]\n", &format!("[agent]\n{extra}\n"), 1)
    };
    let mut agents: Vec<(String, Agent)> = cluster
        .nodes
        .iter()
        .map(|node| (node.clone(), cluster.start_agent(node, &config(node, 3))))
        .collect();
    wait_all_answer(cluster, &all[..3], "3 groups");
    let (requests, cpu) = steady(cluster, &agents);
    println!(
        "resmon steady,    3 groups: etcd {requests:.1} requests/s, agents {cpu:.1}% of a core"
    );
    for (node, agent) in &agents {
        agent.write_raw_config(&config(node, n));
        agent.signal(libc::SIGHUP);
    }
    let started = Instant::now();
    wait_all_answer(cluster, &all, "every group");
    println!(
        "resmon: {n} groups online {:.1} s after the reload",
        started.elapsed().as_secs_f64()
    );
    let (requests, cpu) = steady(cluster, &agents);
    println!(
        "resmon steady, {n:>4} groups: etcd {requests:.1} requests/s, agents {cpu:.1}% of a core"
    );
    let mut times = Vec::new();
    for kill in 0..kills {
        let owners = wait_all_answer(cluster, &all, "every group");
        // Settled: no group is half-way through a move.
        std::thread::sleep(Duration::from_secs(2));
        let victim = busiest(&owners);
        let held: Vec<usize> = owners
            .iter()
            .filter(|(_, w)| **w == victim)
            .map(|(i, _)| *i)
            .collect();
        let cut_at = resmon_e2e::unix_now();
        let moved = kill_and_time(cluster, &victim, &held);
        let max = moved.iter().copied().fold(0.0, f64::max);
        println!(
            "resmon     kill {kill}: {victim} held {} groups; all answered elsewhere within {max:.3} s",
            held.len()
        );
        where_the_time_went(&agents, &victim, cut_at);
        times.extend(moved);
        mend(cluster, &victim);
        services.push(start_service(cluster, &victim));
        let agent = &mut agents.iter_mut().find(|(n, _)| *n == victim).unwrap().1;
        agent.spawn();
        agent.wait_for("the node to rejoin", TIMEOUT, |a| {
            a.status()["cluster"]["connected"] == true
        });
    }
    for node in &cluster.nodes {
        cluster.kill_all(node);
        let _ = Command::new("ip")
            .args([
                "-n",
                &cluster.netns(node),
                "addr",
                "flush",
                "to",
                "10.89.0.0/16",
            ])
            .status();
    }
    times
}

/// When, after the cut, the survivors took the keys and brought the VIPs up (from their events).
fn where_the_time_went(agents: &[(String, Agent)], victim: &str, cut_at: f64) {
    let mut acquired = Vec::new();
    let mut starting = Vec::new();
    let mut up = Vec::new();
    for (node, agent) in agents {
        if node == victim {
            continue;
        }
        for e in agent.events() {
            let at = resmon_e2e::event_time(&e) - cut_at;
            if at < 0.0 {
                continue;
            }
            if e["event"] == "ownership_acquired" {
                acquired.push(at);
            }
            if e["event"] == "state_changed" && e["resource"] == "vip" && e["to"] == "online" {
                up.push(at);
            }
            if e["event"] == "state_changed"
                && e["resource"] == "vip"
                && e["to"] == "online_pending"
            {
                starting.push(at);
            }
        }
    }
    let span = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        match (v.first(), v.last()) {
            (Some(a), Some(b)) => format!("{a:.3} to {b:.3} s"),
            _ => "none".into(),
        }
    };
    println!(
        "           keys taken {}, VIPs starting {}, up {} after the cut",
        span(acquired),
        span(starting),
        span(up)
    );
}

fn keepalived_config(node: &str, nodes: &[String], n: usize) -> String {
    let mut text = format!("global_defs {{\n  router_id {node}\n  enable_script_security\n}}\n");
    for i in 0..n {
        let rank = preference(nodes, i).iter().position(|p| p == node).unwrap();
        let (interface, vrid) = if i < 150 {
            ("eth0", i + 1)
        } else {
            ("eth1", i - 149)
        };
        text.push_str(&format!(
            "vrrp_instance g{i} {{\n  state BACKUP\n  interface {interface}\n  virtual_router_id {vrid}\n  priority {}\n  nopreempt\n  advert_int 1\n  virtual_ipaddress {{\n    {}/16 dev eth0\n  }}\n}}\n",
            150 - 50 * rank,
            vip(i)
        ));
    }
    text
}

fn start_keepalived(cluster: &Cluster, node: &str, n: usize) -> Child {
    let dir = cluster.dir.path().join(node);
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("keepalived-scale.conf");
    std::fs::write(&conf, keepalived_config(node, &cluster.nodes, n)).unwrap();
    spawn_keepalived(cluster, node, &conf, &dir.join("keepalived-scale.log"))
}

fn keepalived_runs(cluster: &Cluster, n: usize, kills: usize) -> Vec<f64> {
    let all: Vec<usize> = (0..n).collect();
    let mut children = Vec::new();
    for node in &cluster.nodes {
        children.push(start_service(cluster, node));
        children.push(start_keepalived(cluster, node, n));
    }
    let mut times = Vec::new();
    for kill in 0..kills {
        let owners = wait_all_answer(cluster, &all, "every VRRP instance");
        // Settled: every backup has heard its master.
        std::thread::sleep(Duration::from_secs(4));
        let victim = busiest(&owners);
        let held: Vec<usize> = owners
            .iter()
            .filter(|(_, w)| **w == victim)
            .map(|(i, _)| *i)
            .collect();
        let moved = kill_and_time(cluster, &victim, &held);
        let max = moved.iter().copied().fold(0.0, f64::max);
        println!(
            "keepalived kill {kill}: {victim} held {} groups; all answered elsewhere within {max:.3} s",
            held.len()
        );
        times.extend(moved);
        mend(cluster, &victim);
        children.push(start_service(cluster, &victim));
        children.push(start_keepalived(cluster, &victim, n));
    }
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    times
}

/// Failover at scale, resmon beside keepalived. Needs root and a release build.
#[derive(clap::Parser)]
#[command(name = "resmon-bench-scale")]
struct Args {
    /// Groups (VRRP instances for keepalived).
    #[arg(long, default_value_t = 300, value_parser = resmon_e2e::at_least_one)]
    groups: usize,
    /// Nodes killed, one after another, for each of the two.
    #[arg(long, default_value_t = 3, value_parser = resmon_e2e::at_least_one)]
    kills: usize,
}

fn main() {
    let Args { groups, kills } = clap::Parser::parse();
    assert!((3..=300).contains(&groups), "--groups: 3 to 300");
    let cluster = Cluster::new(3);
    plumb(&cluster);
    println!(
        "scale benchmark: 3 nodes, {groups} groups (VIP + tcp check), lease_ttl {TTL}, {kills} kills each"
    );
    let resmon = resmon_runs(&cluster, groups, kills);
    let keepalived = keepalived_runs(&cluster, groups, kills);
    println!();
    let (_, _, resmon_max) = summary("resmon", resmon);
    let (_, _, keepalived_max) = summary("keepalived", keepalived);
    println!(
        "max: resmon {resmon_max:.3} s against lease_ttl + 1 s = {:.1} s; {:.2}x keepalived's (target: within 1.5x)",
        TTL_SECONDS + 1.0,
        resmon_max / keepalived_max
    );
}
