//! `resmon-bench-protocols`: three probers side by side in one run, against the same servers,
//! each in its own process with its CPU read from /proc:
//!
//! - the agent's `smtp` and `http` checks (`resmon run`, N resources);
//! - Prometheus' blackbox_exporter (Debian `prometheus-blackbox-exporter`): a `tcp` module with
//!   `query_response` expecting `^220`, and `http_2xx`, driven through `/probe`;
//! - the floor: a bare tokio loop doing the same connect, read, compare and close, nothing else,
//!   on as many single-threaded runtimes as the agent has check threads (`--check-threads`,
//!   default 1, the agent's default): the same shape of threads, so that the ratio is the cost
//!   of the agent's work and not of a different scheduler.
//!
//! Servers (a banner server and a minimal HTTP server) listen on 64 loopback addresses so that
//! probers that close with a FIN do not run out of ports to `TIME_WAIT`. The agent's and the
//! floor's are the same code on the same addresses and the same thread shape, each in a process
//! of its own: a stopped prober holds its checks' connections open (10,000 at saturation), and
//! one process holding both probers' ran out of descriptors where its limit cannot be raised
//! (20,000 on some VMs), which stalled its accepts in the other prober's window.
//! Two loads: paced at `--rate` checks per second (default 10,000: 10,000 resources at 1 s),
//! and saturation (as many as the prober completes: the agent's resources at 250 ms, the floor
//! with as many tasks, each looping with no pause, so that both hold as many checks in flight).
//! Prints CPU-ms per check and the ratios.
//!
//! The floor and the agent run in turn, both started once: while one is measured the other is
//! stopped (SIGSTOP), and each resumes two seconds before its window so that the checks it
//! missed are not measured. The speed of this VM drifts by 10-20% from minute to minute, so a
//! floor measured a minute before the agent made a noisy ratio; `--rounds N` (default 3)
//! measures N such pairs seconds apart and prints each pair's ratio and their median. User CPU
//! is shown apart from the total: it is the prober's own work, and steadier than the kernel's,
//! which is mostly the loopback network and waking the servers. blackbox_exporter, at more
//! than ten times the floor, is measured once (`--no-blackbox` skips it).
//!
//! `cargo build --release --workspace --bins && target/release/resmon-bench-protocols [--seconds S] [--rate R] [--proto smtp|http] [--load paced|saturation] [--check-threads N] [--rounds N] [--floor-tasks N] [--no-blackbox]`
//! (`--seconds`, default 10, is each window's length.)

use resmon_e2e::procfs::{
    cpu_times, listen_overflows, peak_rss_kib, raise_fd_limit, rss_kib, CpuTimes,
};
use resmon_e2e::servers::listen_for_many;
use resmon_e2e::{at_least_one, free_port, metric_sum, online_resources, process_alive, Agent};

const CHECKS: &str = "resmon_check_duration_seconds_count";
const FAILURES: &str = "resmon_check_failures_total";
const SKIPPED: &str = "resmon_checks_skipped_total";
/// The agent's `is_alive_interval` at saturation: four times the paced rate, more than one
/// check thread completes.
const SATURATION_INTERVAL: &str = "250ms";
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const ADDRESSES: usize = 64;
const BANNER: &[u8] = b"220 bench.test ESMTP ready\r\n";

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Proto {
    Smtp,
    Http,
}

impl Proto {
    /// The protocol a child process is started for (see [`Proto::name`]).
    fn from_arg(name: &str) -> Proto {
        if name == Proto::Smtp.name() {
            Proto::Smtp
        } else {
            Proto::Http
        }
    }

    fn name(self) -> &'static str {
        match self {
            Proto::Smtp => "smtp",
            Proto::Http => "http",
        }
    }
}

impl Load {
    /// Checks a second the prober is held to: `rate` when paced, none at saturation.
    fn target_rate(self, rate: usize) -> Option<usize> {
        (self == Load::Paced).then_some(rate)
    }
}

/// Its name, padded as asked (`{:<10}` lines up the tables).
impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Load::Paced => "paced",
            Load::Saturation => "saturation",
        })
    }
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Load {
    /// `--rate` checks a second: that many resources at a 1 s interval.
    Paced,
    /// As many checks as each prober completes.
    Saturation,
}

/// Three probers side by side against the same servers (the agent, blackbox_exporter, a bare
/// tokio loop: the floor), each one's CPU read from /proc; prints CPU-ms per check and the
/// ratios to the floor. Needs a release build: `cargo build --release --workspace --bins`.
#[derive(clap::Parser)]
#[command(name = "resmon-bench-protocols")]
struct Args {
    /// Each measurement window's length, in seconds.
    #[arg(long, default_value_t = 10, value_parser = at_least_one)]
    seconds: usize,
    /// Checks a second of the paced load.
    #[arg(long, default_value_t = 10_000, value_parser = at_least_one)]
    rate: usize,
    /// Only this protocol (both when not given).
    #[arg(long, value_enum)]
    proto: Option<Proto>,
    /// Only this load (both when not given).
    #[arg(long, value_enum)]
    load: Option<Load>,
    /// The agent's check threads, and the floor's runtimes.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    check_threads: usize,
    /// Floor and agent pairs measured in turn; their median ratio is printed.
    #[arg(long, default_value_t = 3, value_parser = at_least_one)]
    rounds: usize,
    /// Skips blackbox_exporter.
    #[arg(long)]
    no_blackbox: bool,
    /// The floor's tasks at saturation, each looping over checks with no pause. Default: as
    /// many as the agent has resources (`--rate`), so that both hold as many checks in flight.
    #[arg(long, value_parser = at_least_one)]
    floor_tasks: Option<usize>,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // The floor's own process, started by this one (and by scripts/bench-callgrind): not part
    // of the command line a user types.
    if args.get(1).map(String::as_str) == Some("--floor-child") {
        floor_child(&args[2..]);
        return;
    }
    if args.get(1).map(String::as_str) == Some("--servers-child") {
        servers_child(&args[2..]);
        return;
    }
    let Args {
        seconds,
        rate,
        proto,
        load,
        check_threads: threads,
        rounds,
        no_blackbox,
        floor_tasks,
    } = clap::Parser::parse();
    // Said at the start, not as a panic in the middle of a run: the comparison is the point.
    let installed = std::process::Command::new("prometheus-blackbox-exporter")
        .arg("--version")
        .output()
        .is_ok();
    if !no_blackbox && !installed {
        eprintln!(
            "resmon-bench-protocols: prometheus-blackbox-exporter is not installed, so the \
             comparison with it is skipped (scripts/bench installs it; --no-blackbox says it \
             on purpose)"
        );
    }
    let blackbox = !no_blackbox && installed;
    let protos = proto.map_or(vec![Proto::Smtp, Proto::Http], |p| vec![p]);
    let shape = Shape {
        threads,
        saturation_tasks: floor_tasks.unwrap_or(rate),
    };
    let loads = load.map_or(vec![Load::Paced, Load::Saturation], |l| vec![l]);
    raise_fd_limit();
    let measure = Duration::from_secs(seconds as u64);
    println!("resmon-bench-protocols: {seconds}s per measurement, paced at {rate} checks/s, at saturation {rate} resources at {SATURATION_INTERVAL} against {} floor tasks, servers on {ADDRESSES} loopback addresses, {threads} check thread(s)", shape.saturation_tasks);
    println!(
        "{:<6} {:<10} {:<11} {:>10} {:>12} {:>9} {:>13} {:>9}",
        "proto",
        "load",
        "prober",
        "checks/s",
        "cpu_ms/check",
        "vs_floor",
        "user_ms/check",
        "vs_floor"
    );
    for proto in protos {
        // The agent's servers also serve blackbox_exporter, measured while neither the agent
        // nor the floor runs.
        let agent_servers = ServersChild::start(proto);
        let floor_servers = ServersChild::start(proto);
        let port = agent_servers.port;
        for &load in &loads {
            let target_rate = load.target_rate(rate);
            let ports = (agent_servers.port, floor_servers.port);
            let (floors, agents) = run_pair(proto, ports, load, rate, shape, measure, rounds);
            if floors.is_empty() {
                continue;
            }
            let (mut ratios, mut user_ratios) = (Vec::new(), Vec::new());
            for (floor, agent) in floors.iter().zip(&agents) {
                for (name, r) in [("floor", floor), ("resmon", agent)] {
                    print_line(proto, load, name, r, floor);
                }
                if let Some(extra) = &agent.note {
                    println!("{:<6} {:<10} {:<11} {extra}", "", "", "");
                }
                ratios.push(agent.cpu_ms / floor.cpu_ms);
                user_ratios.push(agent.user_ms / floor.user_ms);
            }
            if blackbox {
                let r = run_blackbox(proto, port, target_rate, measure);
                print_line(proto, load, "blackbox", &r, &floors[floors.len() / 2]);
            }
            if rounds > 1 {
                println!(
                    "{:<6} {:<10} resmon vs floor over {rounds} rounds: CPU {}, user CPU {}",
                    proto.name(),
                    load,
                    spread(&mut ratios),
                    spread(&mut user_ratios),
                );
            }
        }
    }
}

/// How the floor runs: on `threads` single-threaded runtimes (the agent's check threads), and at
/// saturation with `saturation_tasks` tasks, each looping over checks with no pause (paced, one
/// task per check a second, as the agent has a resource per check a second).
#[derive(Clone, Copy)]
struct Shape {
    threads: usize,
    saturation_tasks: usize,
}

/// The floor and the agent, both started and warmed up, then measured in turn: `rounds`
/// times the floor while the agent is stopped (SIGSTOP), then the agent while the floor is.
/// Each resumes for two seconds before its window, so that the checks it missed while stopped
/// (one per resource, at once) are not measured. Pairs a minute apart on this VM differ by
/// 10-20% in speed; pairs seconds apart, much less.
fn run_pair(
    proto: Proto,
    (agent_port, floor_port): (u16, u16),
    load: Load,
    rate: usize,
    shape: Shape,
    measure: Duration,
    rounds: usize,
) -> (Vec<Measured>, Vec<Measured>) {
    let settle = Duration::from_secs(2);
    let target_rate = load.target_rate(rate);
    let threads = shape.threads;
    let floor = FloorChild::start(proto, floor_port, target_rate, shape);
    // Stopped while the agent starts: 10,000 adoptions and the floor's 10,000 checks a second
    // at once would overrun the servers.
    signal(floor.pid(), libc::SIGSTOP);
    let Some(agent) = start_agent(
        proto,
        agent_port,
        target_rate.unwrap_or(rate),
        target_rate.is_none(),
        threads,
    ) else {
        println!(
            "{:<6} {:<10} {:<11} resmon: its resources were not all online after 2 minutes: checks time out at this rate on {threads} check thread(s) on this machine (try --check-threads {} or a lower --rate); not measured",
            proto.name(),
            load,
            "",
            threads + 1
        );
        return (Vec::new(), Vec::new());
    };
    // Its peak before the first stop: resumed, it runs the checks it missed all at once.
    std::thread::sleep(settle);
    println!(
        "{:<6} {:<10} {:<11} resmon: peak RSS {:.1} MB before the rounds",
        proto.name(),
        load,
        "",
        peak_rss_kib(agent.pid()) / 1024.0
    );
    let (mut floors, mut agents) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        signal(agent.pid(), libc::SIGSTOP);
        signal(floor.pid(), libc::SIGCONT);
        std::thread::sleep(settle);
        let dropped = listen_overflows();
        floors.push(floor.measure(measure));
        warn_of_dropped(proto, load, "floor", listen_overflows() - dropped);
        signal(floor.pid(), libc::SIGSTOP);
        signal(agent.pid(), libc::SIGCONT);
        std::thread::sleep(settle);
        let dropped = listen_overflows();
        agents.push(measure_agent(&agent, measure));
        warn_of_dropped(proto, load, "resmon", listen_overflows() - dropped);
    }
    (floors, agents)
}

fn warn_of_dropped(proto: Proto, load: Load, prober: &str, dropped: u64) {
    if dropped > 0 {
        println!(
            "{:<6} {:<10} {:<11} warning: {dropped} connects found a listen queue full in this window (dropped SYNs, each a second's wait)",
            proto.name(),
            load,
            prober
        );
    }
}

/// "median M, LOW-HIGH" of some ratios.
fn spread(ratios: &mut [f64]) -> String {
    ratios.sort_by(f64::total_cmp);
    format!(
        "median {:.2}, {:.2}-{:.2}",
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    )
}

fn print_line(proto: Proto, load: Load, name: &str, r: &Measured, floor: &Measured) {
    println!(
        "{:<6} {:<10} {:<11} {:>10.0} {:>12.4} {:>9.2} {:>13.4} {:>9.2}",
        proto.name(),
        load,
        name,
        r.rate,
        r.cpu_ms,
        r.cpu_ms / floor.cpu_ms,
        r.user_ms,
        r.user_ms / floor.user_ms,
    );
}

struct Measured {
    rate: f64,
    cpu_ms: f64,
    /// The user-space part of `cpu_ms`.
    user_ms: f64,
    note: Option<String>,
}

impl Measured {
    /// `checks` done in `seconds`, costing `cpu`.
    fn per_check(checks: f64, seconds: f64, cpu: CpuTimes) -> Measured {
        Measured {
            rate: checks / seconds,
            cpu_ms: cpu.total() * 1000.0 / checks,
            user_ms: cpu.user * 1000.0 / checks,
            note: None,
        }
    }

    fn with_note(self, note: String) -> Measured {
        Measured {
            note: Some(note),
            ..self
        }
    }
}

fn address(i: usize) -> String {
    format!("127.0.0.{}", 1 + i % ADDRESSES)
}

/// A process serving `proto` on 64 loopback addresses (see the module's doc for why each
/// prober has its own).
struct ServersChild {
    child: std::process::Child,
    port: u16,
}

impl ServersChild {
    fn start(proto: Proto) -> ServersChild {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--servers-child", proto.name()])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("servers child");
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("the servers' process prints its port");
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("the servers' process printed {line:?}, not its port"));
        ServersChild { child, port }
    }
}

impl Drop for ServersChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The servers' process: one runtime thread, as the servers ran in the parent before, serving
/// until killed; prints its port when listening.
fn servers_child(args: &[String]) {
    let proto = Proto::from_arg(&args[0]);
    let limit = raise_fd_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let port = start_servers(proto).await;
        println!("{port}");
        if limit < 12_000 {
            eprintln!("resmon-bench-protocols: the servers may open only {limit} files");
        }
        std::future::pending::<()>().await
    });
}

/// Listeners on 127.0.0.1..64, all on one port.
async fn start_servers(proto: Proto) -> u16 {
    let port = free_port();
    for i in 0..ADDRESSES {
        // 156 checks of one prober to each address at once at saturation: tokio's backlog of
        // 128 overflowed.
        let listener =
            listen_for_many(format!("{}:{port}", address(i)).parse().unwrap()).expect("listen");
        tokio::spawn(async move {
            // An accept that fails (out of descriptors, a connection reset in the queue) must
            // not close the listener: every prober's later connect would be refused, and the
            // rest of the run would measure a restart storm instead of checks.
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        tokio::spawn(serve(proto, stream));
                    }
                    Err(e) => {
                        eprintln!("resmon-bench-protocols: server {i}: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
    }
    port
}

async fn serve(proto: Proto, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    match proto {
        Proto::Smtp => {
            if stream.write_all(BANNER).await.is_err() {
                return;
            }
            let mut buf = [0u8; 256];
            // Answer QUIT if it comes; end when the prober closes.
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                if buf[..n].windows(4).any(|w| w.eq_ignore_ascii_case(b"QUIT")) {
                    let _ = stream.write_all(b"221 bye\r\n").await;
                    return;
                }
            }
        }
        Proto::Http => {
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) if line == "\r\n" || line == "\n" => break,
                    Ok(_) => {}
                }
            }
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
                .await;
        }
    }
}

// --- the agent ------------------------------------------------------------------------------

/// The agent with its resources online, or `None` if they are not all online within two
/// minutes: on a machine too slow for this rate on this many check threads, checks time out and
/// their resources restart over and over.
fn start_agent(
    proto: Proto,
    port: u16,
    rate: usize,
    saturate: bool,
    threads: usize,
) -> Option<Agent> {
    // Paced: `rate` resources at 1 s. Saturation: the same resources at 250 ms (4x the rate).
    let interval = if saturate { SATURATION_INTERVAL } else { "1s" };
    let mut body = format!(
        "[resource_types.{t}]\nis_alive_interval = \"{interval}\"\ncheck_timeout = \"1s\"\npoll_looks_alive = false\nrestart_threshold = 1000000\nrestart_period = \"1s\"\n",
        t = proto.name()
    );
    for g in 0..rate.div_ceil(100) {
        body += &format!("\n[[groups]]\nname = \"g{g}\"\n");
        for r in 0..100.min(rate - g * 100) {
            let i = g * 100 + r;
            let target = match proto {
                Proto::Smtp => format!("address = \"{}:{port}\"", address(i)),
                Proto::Http => format!("url = \"http://{}:{port}/\"", address(i)),
            };
            body += &format!(
                "\n[[groups.resources]]\nname = \"r{i}\"\ntype = \"{}\"\n{target}\n",
                proto.name()
            );
        }
    }
    let agent = Agent::start_with(&body, &format!("check_threads = {threads}"));
    let online = agent.try_wait_for(Duration::from_secs(120), |a| {
        online_resources(&a.metrics()) >= if saturate { rate / 2 } else { rate * 99 / 100 }
    });
    online.then_some(agent)
}

fn measure_agent(agent: &Agent, measure: Duration) -> Measured {
    let pid = agent.pid();
    let m = agent.measure(measure);
    let n = metric_sum(&m.after, CHECKS) - metric_sum(&m.before, CHECKS);
    let failed = metric_sum(&m.after, FAILURES) - metric_sum(&m.before, FAILURES);
    let skipped = metric_sum(&m.after, SKIPPED) - metric_sum(&m.before, SKIPPED);
    let rss = rss_kib(pid) / 1024.0;
    let note = format!(
        "resmon: {:.0}% of one core, RSS {rss:.1} MB, {failed} failed checks, {skipped} skipped",
        m.cpu.total() / m.elapsed_seconds * 100.0,
    );
    Measured::per_check(n, m.elapsed_seconds, m.cpu).with_note(note)
}

// --- the floor ------------------------------------------------------------------------------

/// The floor's process, and the running total of checks it prints every 10 ms, as it came.
struct FloorChild {
    child: std::process::Child,
    samples: Arc<std::sync::Mutex<Vec<(Instant, f64)>>>,
}

impl FloorChild {
    fn start(proto: Proto, port: u16, rate: Option<usize>, shape: Shape) -> FloorChild {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--floor-child",
                proto.name(),
                &port.to_string(),
                &rate.map_or("0".to_string(), |r| r.to_string()),
                &shape.threads.to_string(),
                &shape.saturation_tasks.to_string(),
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("floor child");
        let stdout = child.stdout.take().unwrap();
        let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = samples.clone();
        // Read from the start, stamping each line as it comes: lines left in the pipe would
        // otherwise be stamped late, and checks counted in the wrong window.
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let total = line.parse::<f64>().unwrap_or(0.0);
                sink.lock().unwrap().push((Instant::now(), total));
            }
        });
        FloorChild { child, samples }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Checks done by `t`: interpolated between the samples either side.
    fn checks_at(&self, t: Instant) -> f64 {
        let samples = self.samples.lock().unwrap();
        let after = samples.partition_point(|(when, _)| *when <= t);
        match (after.checked_sub(1).map(|i| samples[i]), samples.get(after)) {
            (Some((t0, n0)), Some(&(t1, n1))) => {
                let span = (t1 - t0).as_secs_f64();
                n0 + (n1 - n0) * ((t - t0).as_secs_f64() / span.max(f64::EPSILON))
            }
            (Some((_, n0)), None) => n0,
            (None, _) => 0.0,
        }
    }

    /// Measures the floor over `measure`.
    fn measure(&self, measure: Duration) -> Measured {
        let pid = self.pid();
        let (cpu0, t0) = (cpu_times(pid), Instant::now());
        std::thread::sleep(measure);
        let (cpu1, t1) = (cpu_times(pid), Instant::now());
        // The sample after `t1`, to interpolate against.
        std::thread::sleep(Duration::from_millis(50));
        // A floor that died would be measured as no checks for no CPU: stop instead (a panic,
        // so that the agent and the servers are dropped, and killed, on the way out).
        assert!(process_alive(pid), "the floor's process ({pid}) has exited");
        let n = self.checks_at(t1) - self.checks_at(t0);
        Measured::per_check(n, (t1 - t0).as_secs_f64(), cpu1.since(cpu0))
    }
}

impl Drop for FloorChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill with a pid this process started and has not reaped.
    unsafe {
        libc::kill(pid, sig);
    }
}

fn floor_child(args: &[String]) {
    let proto = Proto::from_arg(&args[0]);
    let port: u16 = args[1].parse().unwrap();
    let rate: usize = args[2].parse().unwrap();
    let threads: usize = args[3].parse().unwrap();
    let done = Arc::new(AtomicU64::new(0));
    // Paced, a task per check a second; at saturation, the parent says how many (a paced floor,
    // as `scripts/bench-callgrind` starts it, needs no fifth argument).
    let tasks = if rate > 0 {
        rate
    } else {
        args[4].parse().unwrap()
    };
    // Tasks are dealt round the threads, as the agent deals its resources.
    for t in 0..threads {
        let done = done.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                for i in (t..tasks).step_by(threads) {
                    let done = done.clone();
                    tokio::spawn(async move {
                        let target = format!("{}:{port}", address(i));
                        let mut tick = (rate > 0).then(|| {
                            let phase = Duration::from_micros(
                                (i as u64 * 1_000_000 / rate as u64) % 1_000_000,
                            );
                            let mut tick = tokio::time::interval_at(
                                tokio::time::Instant::now() + phase,
                                Duration::from_secs(1),
                            );
                            // Stopped and resumed (see `run_pair`), it carries on at its
                            // pace instead of catching up on the checks it missed.
                            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                            tick
                        });
                        loop {
                            if let Some(t) = tick.as_mut() {
                                t.tick().await;
                            }
                            if floor_check(proto, &target).await {
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    });
                }
                std::future::pending::<()>().await
            });
        });
    }
    loop {
        std::thread::sleep(Duration::from_millis(10));
        println!("{}", done.load(Ordering::Relaxed));
    }
}

/// One check with nothing else: connect, (send), read, compare, close.
async fn floor_check(proto: Proto, target: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(target).await else {
        return false;
    };
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    let mut buf = [0u8; 512];
    match proto {
        Proto::Smtp => {
            let Ok(n) = s.read(&mut buf).await else {
                return false;
            };
            let ok = buf[..n].starts_with(b"220");
            let _ = s.write_all(b"QUIT\r\n").await;
            ok
        }
        Proto::Http => {
            if s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                .await
                .is_err()
            {
                return false;
            }
            let Ok(n) = s.read(&mut buf).await else {
                return false;
            };
            // `HTTP/1.x 200`: resmon-testd (bench-callgrind's server) answers in HTTP/1.0.
            n > 12 && buf.starts_with(b"HTTP/1.") && &buf[8..13] == b" 200 "
        }
    }
}

// --- blackbox_exporter ----------------------------------------------------------------------

fn run_blackbox(proto: Proto, port: u16, rate: Option<usize>, measure: Duration) -> Measured {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("blackbox.yml");
    std::fs::write(
        &config,
        "modules:\n  smtp_banner:\n    prober: tcp\n    timeout: 2s\n    tcp:\n      query_response:\n        - expect: \"^220\"\n        - send: \"QUIT\"\n  http_2xx:\n    prober: http\n    timeout: 2s\n    http:\n      preferred_ip_protocol: ip4\n",
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = std::process::Command::new("prometheus-blackbox-exporter")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--web.listen-address={listen}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus-blackbox-exporter (Debian package) is installed");
    let pid = child.id() as i32;
    resmon_e2e::servers::wait_port(
        listen.rsplit(':').next().unwrap().parse().unwrap(),
        Duration::from_secs(10),
    )
    .expect("blackbox_exporter listens");
    let (module, scheme) = match proto {
        Proto::Smtp => ("smtp_banner", ""),
        Proto::Http => ("http_2xx", "http://"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let ok = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (cpu0, t0) = (cpu_times(pid), Instant::now());
    let deadline = t0 + measure;
    rt.block_on(async {
        let drivers = 128;
        let mut handles = Vec::new();
        for d in 0..drivers {
            let (ok, stop, listen) = (ok.clone(), stop.clone(), listen.clone());
            handles.push(tokio::spawn(async move {
                let per_driver_interval =
                    rate.map(|r| Duration::from_secs_f64(drivers as f64 / r as f64));
                let mut tick = per_driver_interval.map(|p| {
                    tokio::time::interval_at(
                        tokio::time::Instant::now() + p.mul_f64(d as f64 / drivers as f64),
                        p,
                    )
                });
                if let Some(t) = tick.as_mut() {
                    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                }
                let mut i = d;
                while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                    if let Some(t) = tick.as_mut() {
                        t.tick().await;
                    }
                    i += drivers;
                    let target = format!("{scheme}{}:{port}", address(i));
                    if probe(&listen, module, &target).await == Some(true) {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for h in handles {
            let _ = h.await;
        }
    });
    stop.store(true, Ordering::Relaxed);
    let (cpu1, elapsed) = (cpu_times(pid), t0.elapsed().as_secs_f64());
    let _ = child.kill();
    let _ = child.wait();
    let n = ok.load(Ordering::Relaxed) as f64;
    Measured::per_check(n, elapsed, cpu1.since(cpu0))
}

/// One `/probe` over a connection of its own (HTTP/1.0: the exporter answers the bigger http
/// results chunked on a kept-alive connection); `Some(success)`, `None` on a broken connection.
async fn probe(listen: &str, module: &str, target: &str) -> Option<bool> {
    let mut conn = TcpStream::connect(listen).await.ok()?;
    let request =
        format!("GET /probe?module={module}&target={target} HTTP/1.0\r\nHost: {listen}\r\n\r\n");
    conn.write_all(request.as_bytes()).await.ok()?;
    let mut body = Vec::new();
    conn.read_to_end(&mut body).await.ok()?;
    Some(String::from_utf8_lossy(&body).contains("probe_success 1"))
}
