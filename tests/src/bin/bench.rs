//! `resmon-bench`: the core benchmark. Runs the real agent (release build) with N `tcp`
//! resources against local listeners at a 1 s is_alive interval and prints what it cost:
//! CPU seconds per 1,000 checks (from /proc), peak RSS, check start lateness p50/p99 (from the
//! agent's own histogram), and the `/metrics` scrape time and size.
//!
//! `cargo build --release --workspace --bins && target/release/resmon-bench [--seconds S] [N...]`
//! (defaults: 60 s, N = 1000 and 10000).

use resmon_e2e::procfs::{cpu_seconds, peak_rss_kib, raise_fd_limit};
use resmon_e2e::{at_least_one, http_get, metric_sum, online_resources, Agent};

const CHECKS: &str = "resmon_check_duration_seconds_count";
use std::net::TcpListener;
use std::time::{Duration, Instant};

const LISTENERS: usize = 128;
const PER_GROUP: usize = 100;

/// The core benchmark: the agent on N `tcp` resources at a 1 s interval against local
/// listeners, beside a bare loop doing the same checks (the floor); prints CPU per 1,000 checks,
/// peak RSS, check lateness and the `/metrics` scrape. Needs a release build:
/// `cargo build --release --workspace --bins`.
#[derive(clap::Parser)]
#[command(name = "resmon-bench")]
struct Args {
    /// Each measurement's length, in seconds.
    #[arg(long, default_value_t = 60, value_parser = at_least_one)]
    seconds: usize,
    /// Resource counts to measure, one after the other.
    #[arg(value_parser = at_least_one, default_values_t = [1000, 10_000])]
    sizes: Vec<usize>,
}

fn main() {
    // The floor's own process, started by this one: not part of the command line a user types.
    if std::env::args().nth(1).as_deref() == Some("--floor-child") {
        floor_child();
        return;
    }
    let Args { seconds, sizes } = clap::Parser::parse();
    let seconds = seconds as u64;
    raise_fd_limit();
    let ports = start_listeners();
    println!("resmon-bench: tcp resources at is_alive_interval 1s, {seconds}s of measurement each");
    println!(
        "{:>13} {:>9} {:>13} {:>12} {:>9} {:>12} {:>12} {:>10} {:>11}",
        "prober N",
        "checks/s",
        "cpu_s/1000ch",
        "cpu%_1core",
        "rss_MB",
        "late_p50_ms",
        "late_p99_ms",
        "scrape_ms",
        "scrape_KiB"
    );
    for n in sizes {
        let f = floor(n, &ports, Duration::from_secs(seconds));
        print_row(&format!("floor {n}"), &f);
        let r = run(n, &ports, Duration::from_secs(seconds));
        print_row(&format!("resmon {n}"), &r);
        println!(
            "{:>13} cpu per check: resmon / floor = {:.2}",
            "",
            r.cpu_per_1000 / f.cpu_per_1000
        );
    }
}

fn print_row(label: &str, r: &Figures) {
    {
        println!(
            "{:>13} {:>9.0} {:>13.4} {:>12.1} {:>9.1} {:>12.2} {:>12.2} {:>10.1} {:>11.0}",
            label,
            r.checks_per_second,
            r.cpu_per_1000,
            r.cpu_percent,
            r.peak_rss_mb,
            r.lateness_p50 * 1000.0,
            r.lateness_p99 * 1000.0,
            r.scrape_ms,
            r.scrape_kib
        );
    }
}

struct Figures {
    checks_per_second: f64,
    cpu_per_1000: f64,
    cpu_percent: f64,
    peak_rss_mb: f64,
    lateness_p50: f64,
    lateness_p99: f64,
    scrape_ms: f64,
    scrape_kib: f64,
}

fn run(n: usize, ports: &[u16], measure: Duration) -> Figures {
    let mut body = String::from("[resource_types.tcp]\nis_alive_interval = \"1s\"\ncheck_timeout = \"1s\"\npoll_looks_alive = false\n");
    for g in 0..n.div_ceil(PER_GROUP) {
        body += &format!("\n[[groups]]\nname = \"g{g}\"\n");
        for r in 0..PER_GROUP.min(n - g * PER_GROUP) {
            let i = g * PER_GROUP + r;
            body += &format!(
                "\n[[groups.resources]]\nname = \"r{i}\"\ntype = \"tcp\"\naddress = \"127.0.0.1:{}\"\n",
                ports[i % ports.len()]
            );
        }
    }
    let agent = Agent::start(&body);
    let started = Instant::now();
    agent.wait_for("every resource online", Duration::from_secs(120), |a| {
        online_resources(&a.metrics()) == n
    });
    eprintln!(
        "  N={n}: all online after {:.1}s; warming up",
        started.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(3));

    let pid = agent.pid();
    let m = agent.measure(measure);
    let (checks0, late0) = (metric_sum(&m.before, CHECKS), lateness(&m.before));
    let (checks1, late1) = (metric_sum(&m.after, CHECKS), lateness(&m.after));
    let (cpu, elapsed) = (m.cpu.total(), m.elapsed_seconds);

    let mut scrapes = Vec::new();
    let mut size = 0;
    for _ in 0..5 {
        let t = Instant::now();
        let (_, text) = http_get(&agent.address, "/metrics").expect("scrape");
        scrapes.push(t.elapsed().as_secs_f64() * 1000.0);
        size = text.len();
    }
    scrapes.sort_by(f64::total_cmp);
    let checks = checks1 - checks0;
    let late: Vec<(f64, f64)> = late1
        .iter()
        .zip(&late0)
        .map(|((le, a), (_, b))| (*le, a - b))
        .collect();
    Figures {
        checks_per_second: checks / elapsed,
        cpu_per_1000: cpu / checks * 1000.0,
        cpu_percent: cpu / elapsed * 100.0,
        peak_rss_mb: peak_rss_kib(pid) / 1024.0,
        lateness_p50: quantile(&late, 0.50),
        lateness_p99: quantile(&late, 0.99),
        scrape_ms: scrapes[scrapes.len() / 2],
        scrape_kib: size as f64 / 1024.0,
    }
}

/// The floor: a bare tokio loop doing the same checks (connect, close with a reset) at the same
/// pace with nothing else, in a process of its own so that its CPU is measured the same way.
fn floor(n: usize, ports: &[u16], measure: Duration) -> Figures {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--floor-child")
        .arg(n.to_string())
        .args(ports.iter().map(|p| p.to_string()))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("floor child");
    let pid = child.id() as i32;
    std::thread::sleep(Duration::from_secs(3));
    let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
    std::thread::sleep(measure);
    let (cpu1, elapsed) = (cpu_seconds(pid), t0.elapsed().as_secs_f64());
    let rss = peak_rss_kib(pid) / 1024.0;
    let _ = child.kill();
    let _ = child.wait();
    let checks = n as f64 * elapsed;
    Figures {
        checks_per_second: n as f64,
        cpu_per_1000: (cpu1 - cpu0) / checks * 1000.0,
        cpu_percent: (cpu1 - cpu0) / elapsed * 100.0,
        peak_rss_mb: rss,
        lateness_p50: 0.0,
        lateness_p99: 0.0,
        scrape_ms: 0.0,
        scrape_kib: 0.0,
    }
}

fn floor_child() {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let n: usize = args[0].parse().unwrap();
    let ports: Vec<u16> = args[1..].iter().map(|p| p.parse().unwrap()).collect();
    // One thread, as the agent runs its checks by default (`[agent] check_threads = 1`).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        for i in 0..n {
            let port = ports[i % ports.len()];
            let phase = Duration::from_micros((i as u64 * 1_000_000 / n as u64) % 1_000_000);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(
                    tokio::time::Instant::now() + phase,
                    Duration::from_secs(1),
                );
                loop {
                    tick.tick().await;
                    if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                        let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                    }
                }
            });
        }
        std::future::pending::<()>().await;
    });
}

/// Listeners that accept and drop, each on its own thread.
fn start_listeners() -> Vec<u16> {
    (0..LISTENERS)
        .map(|_| {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind");
            let port = l.local_addr().unwrap().port();
            std::thread::spawn(move || {
                for conn in l.incoming() {
                    drop(conn);
                }
            });
            port
        })
        .collect()
}

/// The lateness histogram's cumulative buckets, `(le, count)`.
fn lateness(metrics: &str) -> Vec<(f64, f64)> {
    metrics
        .lines()
        .filter(|l| l.starts_with("resmon_check_start_lateness_seconds_bucket"))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// A quantile from cumulative buckets, interpolated linearly inside the bucket.
fn quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total == 0.0 {
        return 0.0;
    }
    let target = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= target {
            if le.is_infinite() {
                return prev.0;
            }
            let span = count - prev.1;
            let frac = if span > 0.0 {
                (target - prev.1) / span
            } else {
                1.0
            };
            return prev.0 + (le - prev.0) * frac;
        }
        prev = (le, count);
    }
    prev.0
}
