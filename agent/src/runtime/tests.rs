//! The runtime's isolation guarantees, with resource types that misbehave on purpose: one that
//! panics, one whose blocking thread hangs, one that blocks the runtime's own thread, one whose
//! online takes longer than a timeout.
//! Real time, short durations; every wait is bounded.

use super::group::{self, GroupHandle};
use super::Shared;
use crate::config;
use crate::metrics::Metrics;
use async_trait::async_trait;
use resmon_probes::{Failure, Progress, Resource};
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A resource whose behaviour the test chooses.
#[derive(Default)]
struct Scripted {
    panic_in_is_alive: bool,
    /// Hangs this long in a blocking thread, as statvfs on a dead NFS mount does.
    hang_in_blocking_thread: Option<Duration>,
    /// Blocks the calling thread (a resource type doing blocking I/O on the runtime: a bug, but
    /// one the runtime must survive).
    block_in_is_alive: Option<Duration>,
    online_takes: Option<Duration>,
    /// Answers after this long, without holding the thread.
    is_alive_takes: Option<Duration>,
    /// Checks whose answer, ready after `is_alive_takes`, was taken more than twice that long
    /// after it was asked.
    late_answers: AtomicUsize,
    /// Times a check was polled while it waited `is_alive_takes`.
    is_alive_polls: AtomicUsize,
    is_alive_calls: AtomicUsize,
    running_now: Arc<AtomicUsize>,
    max_running: AtomicUsize,
    /// Starts (adoptions and onlines) of every resource sharing this counter, in flight.
    starts: Option<Arc<Concurrency>>,
    /// Checks of every resource sharing this counter, in flight; each takes 10 ms.
    checks: Option<Arc<Concurrency>>,
}

/// How many calls run at once, and the most seen.
#[derive(Default)]
struct Concurrency {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Concurrency {
    async fn during(&self, how_long: Duration) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(how_long).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Resource for Scripted {
    async fn adopt(&self) -> Result<bool, Failure> {
        if let Some(starts) = &self.starts {
            starts.during(Duration::from_millis(20)).await;
        }
        Ok(false)
    }
    async fn online(&self, _: &Progress) -> Result<(), Failure> {
        let takes = self.online_takes.unwrap_or_default();
        match &self.starts {
            Some(starts) => starts.during(takes).await,
            None => tokio::time::sleep(takes).await,
        }
        Ok(())
    }
    async fn offline(&self) -> Result<(), Failure> {
        Ok(())
    }
    async fn terminate(&self) -> Result<(), Failure> {
        Ok(())
    }
    async fn looks_alive(&self, _: &Progress) -> Result<(), Failure> {
        Ok(())
    }
    async fn is_alive(&self, progress: &Progress) -> Result<(), Failure> {
        self.is_alive_calls.fetch_add(1, Ordering::SeqCst);
        let now = self.running_now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        if self.panic_in_is_alive {
            self.running_now.fetch_sub(1, Ordering::SeqCst);
            panic!("scripted panic");
        }
        if let Some(checks) = &self.checks {
            checks.during(Duration::from_millis(10)).await;
        }
        if let Some(d) = self.block_in_is_alive {
            std::thread::sleep(d);
        }
        if let Some(d) = self.is_alive_takes {
            let asked = std::time::Instant::now();
            let mut answer = std::pin::pin!(tokio::time::sleep(d));
            std::future::poll_fn(|task| {
                self.is_alive_polls.fetch_add(1, Ordering::SeqCst);
                answer.as_mut().poll(task)
            })
            .await;
            if asked.elapsed() > d * 2 {
                self.late_answers.fetch_add(1, Ordering::SeqCst);
            }
        }
        if let Some(d) = self.hang_in_blocking_thread {
            // The call counts as running until its thread returns, cancelled or not.
            let guard = progress.blocking_guard();
            let running = self.running_now.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let _guard = guard;
                std::thread::sleep(d);
                running.fetch_sub(1, Ordering::SeqCst);
            })
            .await;
            return Ok(());
        }
        self.running_now.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

fn start(toml: &str, resources: Vec<Arc<Scripted>>) -> (Arc<Shared>, GroupHandle) {
    start_gated(toml, resources, 64)
}

fn start_gated(
    toml: &str,
    resources: Vec<Arc<Scripted>>,
    max_parallel_starts: usize,
) -> (Arc<Shared>, GroupHandle) {
    let loaded = config::parse(Path::new("test.toml"), toml).expect("valid test config");
    let sink = Arc::new(crate::events::EventSink::new(
        Arc::new(Metrics::new()),
        None,
    ));
    let coordinator = crate::cluster::Coordinator::embedded("test", sink.clone());
    let shared = Shared::with_coordinator(
        sink,
        coordinator,
        max_parallel_starts,
        super::threads::CheckThreads::on_callers_runtime(),
        Arc::new(crate::maintenance::Maintenance::in_memory()),
    );
    let group_config = loaded.config.groups[0].clone();
    let resources = resources
        .into_iter()
        .map(|r| r as Arc<dyn Resource>)
        .collect();
    let handle = group::spawn_with(group_config, &loaded.config.agent, &shared, resources);
    (shared, handle)
}

fn resources(names_and_props: &[(&str, &str)]) -> String {
    let mut s = String::from("[[groups]]\nname = \"g\"\n");
    for (name, props) in names_and_props {
        s += &format!("\n[[groups.resources]]\nname = \"{name}\"\ntype = \"tcp\"\naddress = \"127.0.0.1:9\"\n{props}\n");
    }
    s
}

/// `n` resources named `r0`, `r1`..., each made by `make`.
fn fleet(n: usize, make: impl Fn() -> Scripted) -> (Vec<String>, Vec<Arc<Scripted>>) {
    let names = (0..n).map(|i| format!("r{i}")).collect();
    let scripted = (0..n).map(|_| Arc::new(make())).collect();
    (names, scripted)
}

/// A group of `names`, each with the same `props`.
fn same_resources(names: &[String], props: &str) -> String {
    let spec: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), props)).collect();
    resources(&spec)
}

/// The value of a `tcp` resource type's is_alive series of the counter `family`.
fn is_alive_counter(shared: &Shared, family: &str) -> f64 {
    let text = shared.sink.metrics().encode_text();
    let series = format!("{family}{{type=\"tcp\",check=\"is_alive\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .parse()
        .unwrap()
}

fn state_of(shared: &Shared, resource: &str) -> String {
    let status = shared
        .status
        .snapshot(shared.coordinator.view(), shared.maintenance.snapshot());
    let r = status.groups[0]
        .resources
        .iter()
        .find(|r| r.name == resource)
        .unwrap();
    r.state.to_string()
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn events(shared: &Shared, name: &str, resource: &str) -> Vec<serde_json::Value> {
    shared
        .sink
        .recent()
        .into_iter()
        .filter(|e| e["event"] == name && e["resource"] == resource)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_resource_type_fails_only_its_own_resource() {
    let bad = Arc::new(Scripted {
        panic_in_is_alive: true,
        ..Default::default()
    });
    let good = Arc::new(Scripted::default());
    let props =
        "is_alive_interval = \"30ms\"\npoll_looks_alive = false\nrestart_action = \"no_restart\"";
    let (shared, _group) = start(
        &resources(&[("bad", props), ("good", props)]),
        vec![bad.clone(), good.clone()],
    );

    wait_until("bad to fail", || state_of(&shared, "bad") == "failed").await;
    let failed = events(&shared, "state_changed", "bad");
    assert!(
        failed
            .iter()
            .any(|e| e["to"] == "failed" && e["cause"] == "failure_signal:panic"),
        "{failed:?}"
    );
    let probe = &events(&shared, "probe_failed", "bad")[0];
    assert_eq!(probe["reason"], "panic");
    assert!(probe["detail"].as_str().unwrap().contains("scripted panic"));

    // The other resource, the group task and the agent go on.
    let before = good.is_alive_calls.load(Ordering::SeqCst);
    wait_until("good to keep being checked", || {
        good.is_alive_calls.load(Ordering::SeqCst) >= before + 3
    })
    .await;
    assert_eq!(state_of(&shared, "good"), "online");
    let text = shared.sink.metrics().encode_text();
    let line = text.lines().find(|l| l.starts_with(r#"resmon_check_failures_total{check="is_alive",reason="panic",group="g",resource="bad""#));
    // At least once: a second check may panic before the group has stopped polling.
    let count: f64 = line
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(count >= 1.0, "{line:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_check_times_out_is_counted_and_never_runs_twice() {
    let stuck = Arc::new(Scripted {
        hang_in_blocking_thread: Some(Duration::from_millis(800)),
        ..Default::default()
    });
    let other = Arc::new(Scripted::default());
    let props = "is_alive_interval = \"50ms\"\ncheck_timeout = \"100ms\"\npoll_looks_alive = false\nrestart_action = \"no_restart\"";
    let (shared, _group) = start(
        &resources(&[("stuck", props), ("other", props)]),
        vec![stuck.clone(), other.clone()],
    );

    wait_until("the timeout", || {
        !events(&shared, "probe_failed", "stuck").is_empty()
    })
    .await;
    let first = &events(&shared, "probe_failed", "stuck")[0];
    assert_eq!(first["reason"], "timeout", "{first}");
    wait_until("stuck to fail", || state_of(&shared, "stuck") == "failed").await;
    // While the blocked thread has not returned it counts as stuck.
    let metrics = shared.sink.metrics().encode_text();
    assert!(
        metrics.contains(r#"resmon_checks_stuck{type="tcp",check="is_alive"} 1"#),
        "{metrics}"
    );
    assert_eq!(
        stuck.max_running.load(Ordering::SeqCst),
        1,
        "a stuck check is never started again"
    );
    // Once it returns, the gauge comes back down.
    wait_until("the stuck check to return", || {
        shared
            .sink
            .metrics()
            .encode_text()
            .contains(r#"resmon_checks_stuck{type="tcp",check="is_alive"} 0"#)
    })
    .await;
    assert_eq!(stuck.max_running.load(Ordering::SeqCst), 1);
    assert_eq!(state_of(&shared, "other"), "online");
    assert!(
        other.is_alive_calls.load(Ordering::SeqCst) >= 3,
        "the other resource kept its schedule"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_that_blocks_the_runtime_thread_past_its_deadline_is_a_timeout() {
    let blocking = Arc::new(Scripted {
        block_in_is_alive: Some(Duration::from_millis(300)),
        ..Default::default()
    });
    let other = Arc::new(Scripted::default());
    let props = "is_alive_interval = \"50ms\"\ncheck_timeout = \"100ms\"\npoll_looks_alive = false\nrestart_action = \"no_restart\"";
    let (shared, _group) = start(
        &resources(&[("blocking", props), ("other", props)]),
        vec![blocking.clone(), other.clone()],
    );
    wait_until("blocking to fail", || {
        state_of(&shared, "blocking") == "failed"
    })
    .await;
    let first = &events(&shared, "probe_failed", "blocking")[0];
    assert_eq!(first["reason"], "timeout", "{first}");
    // The other thread kept the other resource's schedule.
    let before = other.is_alive_calls.load(Ordering::SeqCst);
    wait_until("other to keep being checked", || {
        other.is_alive_calls.load(Ordering::SeqCst) >= before + 3
    })
    .await;
    assert_eq!(state_of(&shared, "other"), "online");
}

#[tokio::test(flavor = "current_thread")]
async fn an_answer_the_busy_agent_looks_at_after_its_deadline_still_counts() {
    // One runtime thread, which this test holds for three check timeouts at a time: the check
    // in flight (answering after 40 ms of its 100) has its answer ready long before the agent
    // can look at it, after its deadline. The agent's lateness is not the resource's failure.
    let healthy = Arc::new(Scripted {
        is_alive_takes: Some(Duration::from_millis(40)),
        ..Default::default()
    });
    let props = "is_alive_interval = \"50ms\"\ncheck_timeout = \"100ms\"\npoll_looks_alive = false\nrestart_action = \"no_restart\"";
    let (shared, _group) = start(&resources(&[("healthy", props)]), vec![healthy.clone()]);
    wait_until("healthy to be online", || {
        state_of(&shared, "healthy") == "online"
    })
    .await;
    let mut calls = healthy.is_alive_calls.load(Ordering::SeqCst);
    for _ in 0..6 {
        // Once a new check waits for its answer, hold the thread.
        wait_until("a new check in flight", || {
            healthy.is_alive_calls.load(Ordering::SeqCst) > calls
                && healthy.running_now.load(Ordering::SeqCst) == 1
        })
        .await;
        calls = healthy.is_alive_calls.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(300));
        tokio::time::sleep(Duration::from_millis(5)).await;
        let failures = events(&shared, "probe_failed", "healthy");
        assert!(
            failures.is_empty(),
            "a late look failed a healthy check: {failures:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Proof that the case arose: checks answered in 40 ms were looked at after 300.
    assert!(
        healthy.late_answers.load(Ordering::SeqCst) >= 4,
        "checks in flight across the busy spells: {}",
        healthy.late_answers.load(Ordering::SeqCst)
    );
    let failures = events(&shared, "probe_failed", "healthy");
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(state_of(&shared, "healthy"), "online");
    // And the agent's lateness is counted where an operator sees it.
    let seen_late = is_alive_counter(&shared, "resmon_checks_seen_late_total");
    assert!(seen_late >= 4.0, "counted {seen_late}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_timeout_never_waits_while_a_finite_one_fails_the_resource() {
    let patient = Arc::new(Scripted {
        online_takes: Some(Duration::from_millis(600)),
        ..Default::default()
    });
    let hasty = Arc::new(Scripted {
        online_takes: Some(Duration::from_millis(600)),
        ..Default::default()
    });
    let toml = resources(&[
        ("store", "pending_timeout = \"never\""),
        (
            "hasty",
            "pending_timeout = \"100ms\"\nrestart_action = \"no_restart\"",
        ),
    ]);
    let (shared, _group) = start(&toml, vec![patient, hasty]);
    wait_until("hasty to fail", || state_of(&shared, "hasty") == "failed").await;
    assert_eq!(state_of(&shared, "store"), "online_pending");
    let timed_out = &events(&shared, "operation_timed_out", "hasty")[0];
    assert_eq!(timed_out["op"], "online");
    wait_until("store to come online", || {
        state_of(&shared, "store") == "online"
    })
    .await;
    assert!(events(&shared, "operation_timed_out", "store").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_wait_their_turn_at_the_start_gate() {
    let starts = Arc::new(Concurrency::default());
    let (names, scripted) = fleet(8, || Scripted {
        online_takes: Some(Duration::from_millis(60)),
        starts: Some(starts.clone()),
        ..Default::default()
    });
    let props = "pending_timeout = \"100ms\"\npoll_looks_alive = false";
    let (shared, _group) = start_gated(&same_resources(&names, props), scripted, 2);
    for name in &names {
        wait_until("every resource online", || {
            state_of(&shared, name) == "online"
        })
        .await;
    }
    // Eight onlines of 60 ms under a 100 ms pending timeout, two at a time: none timed out,
    // because each deadline starts when the call does, not while it waits at the gate.
    assert_eq!(starts.max.load(Ordering::SeqCst), 2);
    for name in &names {
        assert!(events(&shared, "operation_timed_out", name).is_empty());
    }
}

#[tokio::test(flavor = "current_thread")]
async fn checks_that_missed_their_slot_in_a_stall_resume_spread_not_in_one_burst() {
    // Twenty resources at 100 ms, spread over the interval. The agent's only thread is held
    // for half a second (a stopped process, a suspended machine): every resource misses its
    // slots together. Run at once on resuming, the twenty checks would all be in flight
    // together (10,000 HTTP checks held 300 MB so); put off to their next slots, they stay
    // spread as before.
    let checks = Arc::new(Concurrency::default());
    let (names, fleet) = fleet(20, || Scripted {
        checks: Some(checks.clone()),
        ..Default::default()
    });
    let props = "is_alive_interval = \"100ms\"\ncheck_timeout = \"50ms\"\npoll_looks_alive = false\nrestart_action = \"no_restart\"";
    let (shared, _group) = start(&same_resources(&names, props), fleet.clone());
    wait_until("every resource online", || {
        names.iter().all(|n| state_of(&shared, n) == "online")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let spread = checks.max.swap(0, Ordering::SeqCst);
    let calls_before: Vec<usize> = fleet
        .iter()
        .map(|r| r.is_alive_calls.load(Ordering::SeqCst))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    tokio::time::sleep(Duration::from_millis(250)).await;
    let after_stall = checks.max.load(Ordering::SeqCst);
    // Twenty is all of them at once; spread, it is what it was before the stall.
    assert!(
        after_stall < 20 && after_stall <= spread + 3,
        "{after_stall} checks at once after the stall, {spread} before it"
    );
    // Put off once, not skipped for good: every resource checked again within two intervals.
    for (i, r) in fleet.iter().enumerate() {
        assert!(
            r.is_alive_calls.load(Ordering::SeqCst) > calls_before[i],
            "r{i} was not checked after the stall"
        );
    }
    let skipped = is_alive_counter(&shared, "resmon_checks_skipped_total");
    assert!(skipped >= 20.0, "{skipped} checks counted as put off");
    let failures: Vec<_> = names
        .iter()
        .flat_map(|n| events(&shared, "probe_failed", n))
        .collect();
    assert!(failures.is_empty(), "{failures:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_check_that_outlasts_its_interval_skips_its_slots_without_being_polled_at_them() {
    // Checks of 250 ms at 100 ms: each spans two slots, which are skipped. Waking at those
    // slots polled the check in flight for nothing (at saturation, more wake-ups than checks,
    // each reading a cold connection); now only its answer wakes it.
    let slow = Arc::new(Scripted {
        is_alive_takes: Some(Duration::from_millis(250)),
        ..Default::default()
    });
    let props = "is_alive_interval = \"100ms\"\ncheck_timeout = \"2s\"\npoll_looks_alive = false\nrestart_action = \"no_restart\"";
    let (shared, _group) = start(&resources(&[("slow", props)]), vec![slow.clone()]);
    wait_until("six checks", || {
        slow.is_alive_calls.load(Ordering::SeqCst) >= 6
    })
    .await;
    let calls = slow.is_alive_calls.load(Ordering::SeqCst);
    let polls = slow.is_alive_polls.load(Ordering::SeqCst);
    // Two polls a check: the first, and the one its answer wakes.
    assert!(polls <= 2 * calls, "{polls} polls of {calls} checks");
    // The check in flight has not ended, so its slots are not counted yet.
    let ended = (calls - 1) as f64;
    let skipped = is_alive_counter(&shared, "resmon_checks_skipped_total");
    assert!(
        skipped >= 2.0 * ended && skipped <= 3.0 * ended,
        "{skipped} slots skipped by {ended} checks of 250 ms at 100 ms"
    );
    assert_eq!(state_of(&shared, "slow"), "online");
}
