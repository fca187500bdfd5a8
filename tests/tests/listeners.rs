//! A local user cannot exhaust the agent through its listeners: 20,000 idle connections and 100
//! slowloris clients on the HTTP endpoint, and a thousand on the control socket, while 1,000
//! resources are checked. The scraper and the administrator still get their answers, no check
//! fails, and the agent's descriptors stay bounded by the caps.

use resmon_e2e::procfs::raise_fd_limit;
use resmon_e2e::{metric_sum, Agent};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RESOURCES: usize = 1000;
const IDLE: usize = 20_000;
const SLOWLORIS: usize = 100;
const CONTROL_IDLE: usize = 1000;
/// The caps in `agent/src/listen.rs`.
const HTTP_CAP: usize = 256;
const CONTROL_CAP: usize = 64;

fn descriptors(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A GET on a fresh connection, timed; `None` if it got no complete answer within 5 s.
fn timed_get(address: &str, path: &str) -> Option<(Duration, String)> {
    let started = Instant::now();
    let mut s = TcpStream::connect(address).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: t\r\n\r\n").ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    answer
        .starts_with("HTTP/1.0 200")
        .then(|| (started.elapsed(), answer))
}

#[test]
fn idle_and_slowloris_clients_lock_out_neither_the_scraper_nor_the_checks() {
    let limit = raise_fd_limit() as usize;
    let idle = IDLE.min(limit.saturating_sub(2000));
    let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = live.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in live.incoming() {
            drop(stream);
        }
    });
    let mut body = String::from("[[groups]]\nname = \"g\"\n");
    for i in 0..RESOURCES {
        writeln!(
            body,
            "[[groups.resources]]\nname = \"r{i}\"\ntype = \"tcp\"\naddress = \"{target}\"\n\
             is_alive_interval = \"1s\"\n"
        )
        .unwrap();
    }
    let agent = Agent::start(&body);
    agent.wait_for("every resource online", Duration::from_secs(60), |a| {
        resmon_e2e::online_resources(&a.metrics()) == RESOURCES
    });
    let pid = agent.pid();
    let baseline = descriptors(pid);
    let before = agent.metrics();

    let stop = Arc::new(AtomicBool::new(false));
    let address = agent.address.clone();
    // 20,000 connections that send nothing, held open by this process, opened over about
    // ten seconds (a local user holding connections; a SYN flood faster than any accept loop
    // is the kernel's to absorb).
    let opener = {
        let address = address.clone();
        std::thread::spawn(move || {
            let mut held = Vec::with_capacity(idle);
            let mut failed = 0;
            for batch in 0..idle.div_ceil(200) {
                let started = Instant::now();
                for _ in 0..200.min(idle - batch * 200) {
                    match TcpStream::connect(&address) {
                        Ok(s) => held.push(s),
                        Err(_) => failed += 1,
                    }
                }
                std::thread::sleep(Duration::from_millis(100).saturating_sub(started.elapsed()));
            }
            (held, failed)
        })
    };
    // 100 clients sending a header line every 500 ms and never finishing; each reconnects when
    // closed, until the run ends.
    let slow_closed = Arc::new(AtomicUsize::new(0));
    let slowloris: Vec<_> = (0..SLOWLORIS)
        .map(|_| {
            let (address, stop, closed) = (address.clone(), stop.clone(), slow_closed.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = TcpStream::connect(&address) else {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    };
                    let mut line = b"GET /metrics HTTP/1.1\r\n".to_vec();
                    while !stop.load(Ordering::Relaxed) && s.write_all(&line).is_ok() {
                        line = b"X-Slow: y\r\n".to_vec();
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    closed.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // A thousand idle connections on the control socket.
    let socket = agent.dir.path().join("control.sock");
    let control_held: Vec<UnixStream> = (0..CONTROL_IDLE)
        .filter_map(|_| UnixStream::connect(&socket).ok())
        .collect();

    // Scrape every 250 ms for 20 s while the flood goes on.
    let mut slowest = Duration::ZERO;
    let mut most_descriptors = 0;
    let mut scrapes = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        let (took, answer) = timed_get(&address, "/metrics")
            .unwrap_or_else(|| panic!("no answer to /metrics at {:?}", started.elapsed()));
        assert!(answer.contains("resmon_resource_state"), "{answer}");
        slowest = slowest.max(took);
        scrapes += 1;
        most_descriptors = most_descriptors.max(descriptors(pid));
        std::thread::sleep(Duration::from_millis(250));
    }
    let (held, failed) = opener.join().unwrap();
    // The administrator: a status request over the control socket, past 1,000 idle ones.
    let admin_started = Instant::now();
    let mut admin = UnixStream::connect(&socket).unwrap();
    admin
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    admin
        .write_all(b"GET /api/v1/status HTTP/1.0\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut status = String::new();
    admin.read_to_string(&mut status).unwrap();
    let admin_took = admin_started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in slowloris {
        t.join().unwrap();
    }
    let after = agent.metrics();
    let failures = metric_sum(&after, "resmon_check_failures_total")
        - metric_sum(&before, "resmon_check_failures_total");
    let checks = metric_sum(&after, "resmon_check_duration_seconds_count")
        - metric_sum(&before, "resmon_check_duration_seconds_count");
    let evicted = metric_sum(
        &after,
        "resmon_listener_closed_total{listener=\"http\",reason=\"evicted\"}",
    );
    eprintln!(
        "{} idle connections opened ({failed} refused), {SLOWLORIS} slowloris closed and back \
         {} times, {CONTROL_IDLE} idle on the control socket ({} opened); {scrapes} scrapes, \
         slowest {slowest:?}; control status in {admin_took:?}; agent descriptors {baseline} at \
         rest, at most {most_descriptors}; {evicted} connections evicted; {checks} checks, \
         {failures} failed",
        held.len(),
        slow_closed.load(Ordering::Relaxed),
        control_held.len(),
    );
    assert!(status.starts_with("HTTP/1.0 200"), "{status}");
    assert!(status.contains("\"r999\""), "{status}");
    assert!(
        slowest < Duration::from_secs(1),
        "a scrape took {slowest:?}"
    );
    assert!(
        admin_took < Duration::from_secs(1),
        "status over the control socket took {admin_took:?}"
    );
    assert_eq!(failures, 0.0, "checks failed during the flood");
    assert!(
        checks > 0.8 * (RESOURCES * 20) as f64,
        "only {checks} checks in 20 s"
    );
    // Each listener holds at most its cap (a few more while evictions complete), and each
    // resource at most one socket for its check in flight: bounded by the caps and the
    // resources, not by the 20,000 connections.
    assert!(
        most_descriptors <= baseline + HTTP_CAP + CONTROL_CAP + RESOURCES,
        "{most_descriptors} descriptors, {baseline} at rest"
    );
    assert!(
        evicted >= (held.len() - HTTP_CAP) as f64,
        "{evicted} evicted for {} opened",
        held.len()
    );
}
