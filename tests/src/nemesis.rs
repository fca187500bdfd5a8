//! A fault-injection run, as Jepsen does for databases: 3 agents and 3 etcd members in network
//! namespaces, groups of a VIP, a service that takes seconds to stop and an HTTP check, and a
//! nemesis that picks faults at random from a seed. An observer in the hub samples every 20 ms
//! which nodes hold each VIP (on a link that is up) and who answers on it. Every node has a
//! watchdog, played by the harness ([`play_watchdog`]): without one, an agent killed alone
//! leaves its services running while another node takes over.
//!
//! What it reports: the seed (the same seed replays the same schedule), faults per kind, the
//! total and longest time two nodes held one VIP (must be 0), how long each fault left some
//! group unanswered (p50/p99/max per kind), and the groups that never came back (must be 0).

use crate::cluster::{play_watchdog, sh, Cluster, Reset};
use crate::{binary, Agent};
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a run does.
#[derive(Clone, Debug)]
pub struct Options {
    /// Seeds the schedule.
    pub seed: u64,
    /// Faults are injected until this much time has passed.
    pub duration: Duration,
    /// Groups, each with its own VIP.
    pub groups: usize,
}

/// What a run saw.
#[derive(Debug, Default)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// How long faults were injected.
    pub elapsed: Duration,
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, usize>,
    /// Total time some VIP had two holders.
    pub overlap_total: Duration,
    /// The longest such stretch.
    pub overlap_longest: Duration,
    /// Where the overlaps were: (time since the start, VIP, holders).
    pub overlaps: Vec<(Duration, String, Vec<String>)>,
    /// Per fault kind, the longest time a group went unanswered during each fault.
    pub unavailability: BTreeMap<&'static str, Vec<Duration>>,
    /// Groups that did not answer again once every fault was healed.
    pub never_back: Vec<String>,
    /// Observer samples.
    pub samples: usize,
    /// Each fault: when, what, where, and the longest gap it caused.
    pub schedule: Vec<String>,
}

const NODES: usize = 3;
const MEMBERS: usize = 3;
const TTL: &str = "3s";
/// Shorter than the TTL: a node that stops feeding it is reset before its lease can expire.
const WATCHDOG: Duration = Duration::from_millis(1500);
const SAMPLE: Duration = Duration::from_millis(20);
const PORT: u16 = 8080;

fn vip(group: usize) -> String {
    format!("10.88.0.{}", 101 + group)
}

fn group_name(group: usize) -> String {
    format!("g{}", group + 1)
}

/// SplitMix64: a seed is a schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.next() % (to - from))
    }
}

const KINDS: [&str; 9] = [
    "cable_cut",
    "etcd_partition",
    "agent_sigstop",
    "agent_sigkill",
    "etcd_leader_killed",
    "service_killed",
    "move",
    "agent_restart",
    "node_reset",
];

/// One node: its agent and its played watchdog.
struct Node {
    name: String,
    agent: Agent,
    watchdog: PathBuf,
    reset: Reset,
}

/// The nodes' config: every group, owners rotated so that each node prefers some.
fn config(cluster: &Cluster, node: &str, watchdog: &std::path::Path, groups: usize) -> String {
    let mut text = format!(
        "watchdog = {{ device = {:?}, mode = \"required\" }}\n",
        watchdog.display().to_string()
    );
    let testd = binary("resmon-testd").display().to_string();
    for g in 0..groups {
        let mut owners: Vec<String> = cluster.nodes.iter().map(|n| format!("{n:?}")).collect();
        owners.rotate_left(g % NODES);
        let vip = vip(g);
        text.push_str(&format!(
            r#"
[[groups]]
name = "{name}"
possible_owners = [{owners}]
preferred_owners = [{owners}]
failover_threshold = 1000
failover_period = "1h"
failback = "never"

[[groups.resources]]
name = "vip"
type = "ip"
address = "{vip}/24"
interface = "eth0"

[[groups.resources]]
name = "server"
type = "process"
command = ["{testd}", "--listen", "{vip}:{PORT}", "--http", "--banner", "{node}", "--stop-delay", "2000"]
ready_tcp = "{vip}:{PORT}"
depends_on = ["vip"]
terminate_timeout = "1s"
restart_threshold = 1000
restart_period = "1s"

[[groups.resources]]
name = "check"
type = "http"
url = "http://{vip}:{PORT}/"
depends_on = ["server"]
is_alive_interval = "1s"
pending_timeout = "5s"
"#,
            name = group_name(g),
            owners = owners.join(", "),
        ));
    }
    cluster.agent_config(node, TTL, &text)
}

/// What the observer saw, shared with the nemesis.
#[derive(Default)]
struct Seen {
    samples: usize,
    overlap_total: Duration,
    overlap_longest: Duration,
    overlaps: Vec<(Duration, String, Vec<String>)>,
    /// Per group, when it last answered.
    last_answer: Vec<Option<Instant>>,
    /// Per group, the longest time without an answer since the mark.
    longest_gap: Vec<Duration>,
}

/// Runs the nemesis; panics only when the harness itself cannot run.
pub fn run(options: &Options) -> Report {
    let cluster = Arc::new(Cluster::with_members(NODES, MEMBERS));
    let mut rng = Rng(options.seed);
    let mut nodes: Vec<Node> = Vec::new();
    for name in cluster.nodes.clone() {
        let (watchdog, reset) = play_watchdog(&cluster, &name, WATCHDOG);
        let agent = cluster.start_agent(&name, &config(&cluster, &name, &watchdog, options.groups));
        nodes.push(Node {
            name,
            agent,
            watchdog,
            reset,
        });
    }
    let seen = Arc::new(Mutex::new(Seen {
        last_answer: vec![None; options.groups],
        longest_gap: vec![Duration::ZERO; options.groups],
        ..Seen::default()
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let observer = observe(&cluster, options.groups, seen.clone(), stop.clone());
    wait_all_answer(&seen, options.groups, Duration::from_secs(60));

    let mut report = Report {
        seed: options.seed,
        ..Report::default()
    };
    let started = Instant::now();
    while started.elapsed() < options.duration {
        // Every draw made up front, whatever the fault and the cluster's state: the same seed
        // is the same schedule.
        let draw = Draw {
            kind: KINDS[rng.below(KINDS.len())],
            target: rng.below(NODES),
            hold: rng.millis(1000, 6000),
            group: rng.below(options.groups),
            to: rng.below(NODES),
            breath: rng.millis(500, 1500),
        };
        let (kind, target) = (draw.kind, draw.target);
        let fault_at = started.elapsed();
        // The longest gap during this fault, from its start until every group answers again.
        {
            let mut s = seen.lock().unwrap();
            let now = Instant::now();
            for g in 0..options.groups {
                s.longest_gap[g] = Duration::ZERO;
                s.last_answer[g] = s.last_answer[g].map(|_| now);
            }
        }
        inject(&draw, &cluster, &mut nodes, options.groups);
        if matches!(kind, "move" | "service_killed") {
            // What these start goes on after they return: an orderly offline of a service
            // that takes 2 s to stop, a restart.
            std::thread::sleep(Duration::from_secs(4));
        }
        reboot_reset_nodes(&cluster, &mut nodes, options.groups);
        wait_all_answer(&seen, options.groups, Duration::from_secs(45));
        let (worst, gap) = seen
            .lock()
            .unwrap()
            .longest_gap
            .iter()
            .copied()
            .enumerate()
            .max_by_key(|(_, gap)| *gap)
            .unwrap_or_default();
        report.schedule.push(format!(
            "{:6.1} s {kind} on {}: longest gap {} ms ({})",
            fault_at.as_secs_f64(),
            nodes[target].name,
            gap.as_millis(),
            group_name(worst)
        ));
        *report.faults.entry(kind).or_default() += 1;
        report.unavailability.entry(kind).or_default().push(gap);
        // A breath between faults, as a quiet minute between two failures.
        std::thread::sleep(draw.breath);
    }
    report.elapsed = started.elapsed();
    // Everything healed: every group must answer again.
    reboot_reset_nodes(&cluster, &mut nodes, options.groups);
    let back = wait_all_answer(&seen, options.groups, Duration::from_secs(60));
    report.never_back = (0..options.groups)
        .filter(|g| !back[*g])
        .map(group_name)
        .collect();
    stop.store(true, Ordering::SeqCst);
    let _ = observer.join();
    let s = seen.lock().unwrap();
    report.samples = s.samples;
    report.overlap_total = s.overlap_total;
    report.overlap_longest = s.overlap_longest;
    report.overlaps = s.overlaps.clone();
    drop(s);
    for node in &mut nodes {
        disarm(&node.watchdog);
    }
    // For a person looking into a run: every agent's event log and every member's log.
    if let Some(dir) = std::env::var_os("RESMON_NEMESIS_LOGS") {
        let dir = PathBuf::from(dir);
        let _ = std::fs::create_dir_all(&dir);
        for node in &nodes {
            for entry in std::fs::read_dir(node.agent.dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with("events-") {
                    let _ = std::fs::copy(entry.path(), dir.join(format!("{}-{name}", node.name)));
                }
            }
        }
        for entry in std::fs::read_dir(cluster.dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".log") {
                let _ = std::fs::copy(entry.path(), dir.join(name));
            }
        }
    }
    drop(nodes);
    report
}

/// One fault, drawn.
struct Draw {
    kind: &'static str,
    /// The node it hits.
    target: usize,
    /// How long it lasts, where it lasts.
    hold: Duration,
    /// The group a `move` or `service_killed` picks.
    group: usize,
    /// Where a `move` sends it.
    to: usize,
    /// The quiet time after it.
    breath: Duration,
}

/// Injects one fault on its node (or on etcd), and heals it.
fn inject(draw: &Draw, cluster: &Arc<Cluster>, nodes: &mut [Node], groups: usize) {
    let (kind, target) = (draw.kind, draw.target);
    let node = nodes[target].name.clone();
    let ns = cluster.netns(&node);
    match kind {
        "cable_cut" => {
            cluster.cut(&node);
            std::thread::sleep(draw.hold);
            cluster.mend(&node);
        }
        "etcd_partition" => {
            for k in 1..=MEMBERS {
                sh(&format!(
                    "ip -n {ns} route add blackhole 10.88.0.{}/32",
                    5 + k
                ));
            }
            std::thread::sleep(draw.hold);
            for k in 1..=MEMBERS {
                sh(&format!(
                    "ip -n {ns} route del blackhole 10.88.0.{}/32",
                    5 + k
                ));
            }
        }
        "agent_sigstop" => {
            let agent = &mut nodes[target].agent;
            if agent.is_running() {
                agent.signal(libc::SIGSTOP);
                std::thread::sleep(Duration::from_secs(6));
                agent.signal(libc::SIGCONT);
            }
        }
        "agent_sigkill" => {
            let agent = &mut nodes[target].agent;
            if agent.is_running() {
                agent.signal(libc::SIGKILL);
                agent.wait_exit(Duration::from_secs(5));
                std::thread::sleep(draw.hold / 2);
                if nodes[target].reset.lock().unwrap().is_none() {
                    nodes[target].agent.spawn();
                }
            }
        }
        "etcd_leader_killed" => {
            if let Some(leader) = cluster.leader() {
                cluster.kill_member(leader);
                std::thread::sleep(draw.hold);
                cluster.start_member(leader);
                cluster.wait_healthy();
            }
        }
        "service_killed" => {
            let g = group_name(draw.group);
            for n in nodes.iter() {
                let pid_file = cluster.state_dir(&n.name).join(&g).join("server.pid");
                let pid = std::fs::read_to_string(pid_file)
                    .ok()
                    .and_then(|t| t.split_whitespace().next()?.parse::<i32>().ok());
                if let Some(pid) = pid.filter(|p| crate::process_alive(*p)) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        "move" => {
            let g = group_name(draw.group);
            let to = &cluster.nodes[draw.to];
            if let Some(n) = nodes.iter().find(|n| n.reset.lock().unwrap().is_none()) {
                let _ = n.agent.cli(&["move", &g, "--to", to]);
            }
        }
        "agent_restart" => {
            let agent = &mut nodes[target].agent;
            if agent.is_running() {
                agent.signal(libc::SIGTERM);
                agent.wait_exit(Duration::from_secs(10));
                if nodes[target].reset.lock().unwrap().is_none() {
                    nodes[target].agent.spawn();
                }
            }
        }
        "node_reset" => {
            disarm(&nodes[target].watchdog);
            reset(cluster, &node, groups);
            *nodes[target].reset.lock().unwrap() = Some(Instant::now());
        }
        _ => unreachable!("{kind}"),
    }
}

/// A node that was reset (by its watchdog or by the nemesis) boots again: its addresses are gone
/// with the machine, its cable is back, its agent starts with a fresh watchdog.
fn reboot_reset_nodes(cluster: &Arc<Cluster>, nodes: &mut [Node], groups: usize) {
    for node in nodes.iter_mut() {
        if node.reset.lock().unwrap().is_none() {
            continue;
        }
        reset(cluster, &node.name, groups);
        std::thread::sleep(Duration::from_millis(500));
        cluster.mend(&node.name);
        let (watchdog, fired) = play_watchdog(cluster, &node.name, WATCHDOG);
        node.watchdog = watchdog;
        node.reset = fired;
        node.agent.spawn();
    }
}

/// Kills everything in the node's namespace and removes its addresses, as a machine that
/// resets.
fn reset(cluster: &Cluster, node: &str, groups: usize) {
    cluster.kill_all(node);
    for g in 0..groups {
        let _ = std::process::Command::new("ip")
            .args(["-n", &cluster.netns(node), "addr", "del"])
            .arg(format!("{}/24", vip(g)))
            .args(["dev", "eth0"])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Writes the magic close to a played watchdog, so that its reader stops watching.
fn disarm(fifo: &std::path::Path) {
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)
    {
        let _ = f.write_all(b"V");
    }
}

/// Waits until every group answered since now; returns which did.
fn wait_all_answer(seen: &Arc<Mutex<Seen>>, groups: usize, timeout: Duration) -> Vec<bool> {
    let since = Instant::now();
    let deadline = since + timeout;
    loop {
        let answered: Vec<bool> = {
            let s = seen.lock().unwrap();
            (0..groups)
                .map(|g| s.last_answer[g].is_some_and(|t| t > since))
                .collect()
        };
        if answered.iter().all(|a| *a) || Instant::now() > deadline {
            return answered;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The observer: one thread scanning every node's addresses (entering each namespace in turn,
/// forward then backward, so that a VIP moving between two reads is not taken for two
/// holders), and one thread per group asking its VIP who answers, from the hub.
fn observe(
    cluster: &Arc<Cluster>,
    groups: usize,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    for g in 0..groups {
        let (seen, stop, hub) = (seen.clone(), stop.clone(), cluster.hub.clone());
        std::thread::spawn(move || {
            enter(&hub);
            let address: SocketAddr = format!("{}:{PORT}", vip(g)).parse().unwrap();
            while !stop.load(Ordering::SeqCst) {
                let tick = Instant::now();
                let answered = crate::cluster::ask(address).is_some();
                let mut s = seen.lock().unwrap();
                if answered {
                    s.last_answer[g] = Some(tick);
                } else if let Some(last) = s.last_answer[g] {
                    let gap = tick.duration_since(last);
                    if gap > s.longest_gap[g] {
                        s.longest_gap[g] = gap;
                    }
                }
                drop(s);
                if let Some(rest) = SAMPLE.checked_sub(tick.elapsed()) {
                    std::thread::sleep(rest);
                }
            }
        });
    }
    let namespaces: Vec<(String, std::fs::File)> = cluster
        .nodes
        .iter()
        .map(|n| {
            let file = std::fs::File::open(format!("/run/netns/{}", cluster.netns(n))).unwrap();
            (n.clone(), file)
        })
        .collect();
    let vips: Vec<String> = (0..groups).map(vip).collect();
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut streak: Option<Instant> = None;
        while !stop.load(Ordering::SeqCst) {
            let tick = Instant::now();
            let forward = holders(namespaces.iter(), &vips);
            let backward = holders(namespaces.iter().rev(), &vips);
            let mut doubled = None;
            for (i, vip) in vips.iter().enumerate() {
                if forward[i].len() > 1 && backward[i].len() > 1 {
                    doubled = Some((vip.clone(), forward[i].clone()));
                }
            }
            let mut s = seen.lock().unwrap();
            s.samples += 1;
            match doubled {
                Some((vip, holders)) => {
                    let begun = *streak.get_or_insert(tick);
                    s.overlap_total += SAMPLE;
                    let length = tick.duration_since(begun) + SAMPLE;
                    if length > s.overlap_longest {
                        s.overlap_longest = length;
                    }
                    s.overlaps
                        .push((tick.duration_since(started), vip, holders));
                }
                None => streak = None,
            }
            drop(s);
            if let Some(rest) = SAMPLE.checked_sub(tick.elapsed()) {
                std::thread::sleep(rest);
            }
        }
    })
}

/// Enters a network namespace by name, for this thread.
fn enter(netns: &str) {
    let file = std::fs::File::open(format!("/run/netns/{netns}")).unwrap();
    enter_fd(&file);
}

fn enter_fd(file: &std::fs::File) {
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("enter a network namespace");
}

/// For each VIP, the nodes holding it on an `eth0` that is up with a carrier.
fn holders<'a>(
    namespaces: impl Iterator<Item = &'a (String, std::fs::File)>,
    vips: &[String],
) -> Vec<Vec<String>> {
    let mut out = vec![Vec::new(); vips.len()];
    for (node, file) in namespaces {
        enter_fd(file);
        let Ok(addresses) = nix::ifaddrs::getifaddrs() else {
            continue;
        };
        for a in addresses {
            if a.interface_name != "eth0" {
                continue;
            }
            let up = a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP)
                && a.flags.contains(nix::net::if_::InterfaceFlags::IFF_RUNNING);
            let Some(ip) = a
                .address
                .and_then(|s| s.as_sockaddr_in().map(|v4| v4.ip().to_string()))
            else {
                continue;
            };
            if let Some(i) = vips.iter().position(|v| *v == ip) {
                if up {
                    out[i].push(node.clone());
                }
            }
        }
    }
    out
}

impl Report {
    /// The figures, for a person.
    pub fn print(&self) {
        println!(
            "nemesis: seed {}, {:.0} s of faults, {NODES} nodes, {MEMBERS} etcd members, {} observer samples",
            self.seed,
            self.elapsed.as_secs_f64(),
            self.samples
        );
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        println!(
            "faults: {} ({} in all)",
            faults.join(", "),
            self.faults.values().sum::<usize>()
        );
        println!(
            "two holders of one VIP: {} ms in all, longest {} ms",
            self.overlap_total.as_millis(),
            self.overlap_longest.as_millis()
        );
        println!("unavailability per fault (longest gap of any group), p50 / p99 / max:");
        for (kind, gaps) in &self.unavailability {
            let mut gaps = gaps.clone();
            gaps.sort();
            let at = |q: f64| gaps[((gaps.len() - 1) as f64 * q).round() as usize];
            println!(
                "  {kind:<20} {:>6} / {:>6} / {:>6} ms",
                at(0.5).as_millis(),
                at(0.99).as_millis(),
                at(1.0).as_millis()
            );
        }
        println!("groups that never came back: {}", self.never_back.len());
        println!("schedule:");
        for line in &self.schedule {
            println!("  {line}");
        }
    }
}
