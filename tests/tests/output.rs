//! Events and logs leave the check threads through a bounded queue and a writer thread of their
//! own: with the agent's stderr a pipe nobody reads, 1,000 resources are still checked on time,
//! and the lines that did not fit are counted in `resmon_events_dropped_total`.

use resmon_e2e::{binary, free_port, http_get, metric_sum};
use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

const STEADY: usize = 800;
const FLAPPING: usize = 200;
const WINDOW: Duration = Duration::from_secs(15);

/// 800 resources against a live listener, and 200 against a closed port that fail and are
/// restarted at every check: a steady flow of several hundred event lines a second.
fn config(dir: &std::path::Path, port: u16, live: u16, closed: u16) -> String {
    let mut c = format!(
        "[agent]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"{d}/state\"\ncontrol_socket = \"{d}/control.sock\"\n\n",
        d = dir.display()
    );
    for (group, count, target) in [("steady", STEADY, live), ("flapping", FLAPPING, closed)] {
        writeln!(c, "[[groups]]\nname = \"{group}\"\n").unwrap();
        for i in 0..count {
            writeln!(
                c,
                "[[groups.resources]]\nname = \"r{i}\"\ntype = \"tcp\"\naddress = \"127.0.0.1:{target}\"\n\
                 is_alive_interval = \"1s\"\nrestart_action = \"restart_no_failover\"\n\
                 restart_threshold = 1000000\nrestart_period = \"1s\"\npending_timeout = \"1s\"\n"
            )
            .unwrap();
        }
    }
    c
}

struct Run {
    /// Share of the steady resources' checks that started over 100 ms after their slot.
    late: f64,
    /// Checks (of both groups: the duration histogram is per type) in the window.
    checks: f64,
    /// Failed checks of the steady group.
    failures: f64,
    dropped: f64,
}

fn run(stderr_blocked: bool) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let live = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    let port = free_port();
    let path = dir.path().join("resmon.toml");
    std::fs::write(&path, config(dir.path(), port, live, free_port())).unwrap();
    let mut child = Command::new(binary("resmon"))
        .args(["run", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if stderr_blocked {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .spawn()
        .unwrap();
    // Held and never read: once its 64 KB are full, every write to it blocks.
    let _pipe = child.stderr.take();
    let address = format!("127.0.0.1:{port}");
    let scrape = || loop {
        if let Ok((200, text)) = http_get(&address, "/metrics") {
            return text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Past the start: every steady resource online.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = scrape();
        let online = m
            .lines()
            .filter(|l| {
                l.starts_with("resmon_resource_state{state=\"online\",group=\"steady\"")
                    && l.ends_with(" 1")
            })
            .count();
        if online == STEADY {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{online} of {STEADY} online"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    let before = scrape();
    std::thread::sleep(WINDOW);
    let after = scrape();
    let _ = child.kill();
    let _ = child.wait();
    let delta = |prefix: &str| metric_sum(&after, prefix) - metric_sum(&before, prefix);
    let all = delta("resmon_check_start_lateness_seconds_count");
    let on_time = delta("resmon_check_start_lateness_seconds_bucket{le=\"0.1\"}");
    let steady_checks =
        delta("resmon_check_duration_seconds_count{type=\"tcp\",check=\"is_alive\"}");
    Run {
        late: if all > 0.0 { 1.0 - on_time / all } else { 1.0 },
        checks: steady_checks,
        failures: after
            .lines()
            .filter(|l| {
                l.starts_with("resmon_check_failures_total") && l.contains("group=\"steady\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
        dropped: metric_sum(&after, "resmon_events_dropped_total"),
    }
}

#[test]
fn a_blocked_stderr_delays_no_check_and_the_dropped_lines_are_counted() {
    let usual = run(false);
    let blocked = run(true);
    eprintln!(
        "stderr drained: {:.4} of checks over 100 ms late, {} checks, {} dropped; \
         stderr blocked: {:.4} late, {} checks, {} dropped",
        usual.late, usual.checks, usual.dropped, blocked.late, blocked.checks, blocked.dropped
    );
    assert_eq!(usual.dropped, 0.0, "lines dropped while stderr was drained");
    assert!(
        blocked.dropped > 0.0,
        "stderr blocked, yet no line was dropped: the flood did not fill the queue"
    );
    // Checks go on at their rate: the whole schedule, not a queue stalled behind stderr.
    let scheduled = (STEADY + FLAPPING) as f64 * WINDOW.as_secs_f64();
    assert!(
        blocked.checks > 0.8 * scheduled.min(usual.checks),
        "{} checks in the window with stderr blocked, {} with it drained",
        blocked.checks,
        usual.checks
    );
    assert!(
        blocked.late <= (usual.late * 2.0).max(0.01),
        "{:.4} of checks late with stderr blocked, {:.4} usually",
        blocked.late,
        usual.late
    );
    assert_eq!(blocked.failures, 0.0, "a steady resource's check failed");
    assert_eq!(usual.failures, 0.0, "a steady resource's check failed");
}
