//! The threads that run the resources' workers (`[agent] check_threads`): each one a
//! single-threaded tokio runtime of its own, its own event loop and timers, as Envoy's workers
//! and HAProxy's threads are. A resource stays on the thread it was given.
//!
//! Why not the agent's multi-threaded runtime: at ten thousand checks a second, its idle
//! thread is woken to steal work almost every time the other one finds sockets ready, and on
//! these machines those wake-ups cost about a quarter of the agent's CPU (docs/src/how-checks-run.md, How checks
//! run). Why not one runtime for everything: the control plane (the HTTP endpoint, the
//! control API, group tasks, etcd leases) must go on answering when checks are many or one of
//! them misbehaves, as Pacemaker keeps membership (corosync) apart from its resource monitor.

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Where workers are spawned.
pub struct CheckThreads {
    /// Empty: on the runtime of the caller (tests, where time is paused on that runtime).
    handles: Vec<tokio::runtime::Handle>,
    /// Who gets the next worker: resources are dealt round, so threads carry equal numbers.
    next: AtomicUsize,
}

impl CheckThreads {
    /// Starts `count` threads, each running a single-threaded runtime until the process exits.
    pub fn start(count: NonZeroUsize) -> std::io::Result<CheckThreads> {
        let mut handles = Vec::with_capacity(count.get());
        for i in 0..count.get() {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name(format!("resmon-checks-{i}"))
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => {
                            let _ = tx.send(Ok(runtime.handle().clone()));
                            runtime.block_on(std::future::pending::<()>());
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                })?;
            let started = rx
                .recv()
                .map_err(|_| std::io::Error::other("a check thread ended as it started"))?;
            handles.push(started?);
        }
        Ok(CheckThreads {
            handles,
            next: AtomicUsize::new(0),
        })
    }

    /// Workers run on the caller's runtime.
    pub fn on_callers_runtime() -> CheckThreads {
        CheckThreads {
            handles: Vec::new(),
            next: AtomicUsize::new(0),
        }
    }

    /// Runs a worker on the next thread.
    pub(crate) fn spawn<F>(&self, worker: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if self.handles.is_empty() {
            tokio::spawn(worker);
        } else {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
            self.handles[i].spawn(worker);
        }
    }

    /// Starts on every thread a task that proves, through `heartbeats`, that its thread runs.
    pub(crate) fn beat(&self, heartbeats: &Arc<Heartbeats>) {
        for (i, handle) in self.handles.iter().enumerate() {
            handle.spawn(heartbeats.clone().beat(Scheduler::CheckThread(i)));
        }
    }

    /// How many threads of their own the workers have (0: the caller's runtime).
    pub fn count(&self) -> usize {
        self.handles.len()
    }
}

/// A scheduler whose liveness the agent watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheduler {
    /// The multi-threaded runtime: groups, HTTP, control API, cluster.
    Main,
    /// A check thread, by its number in `resmon-checks-N`.
    CheckThread(usize),
}

impl std::fmt::Display for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scheduler::Main => f.write_str("the main runtime"),
            Scheduler::CheckThread(i) => write!(f, "check thread resmon-checks-{i}"),
        }
    }
}

/// When each scheduler last ran its heartbeat task; `/healthz`, the systemd watchdog and
/// `resmon_heartbeat_age_seconds` read the oldest, so a check thread that a blocking call holds
/// is seen as a stalled agent.
pub struct Heartbeats {
    epoch: std::time::Instant,
    /// Milliseconds since `epoch`: the main runtime's first, then each check thread's.
    last_ms: Vec<AtomicU64>,
}

/// How often each scheduler proves it runs.
const BEAT: Duration = Duration::from_millis(250);

impl Heartbeats {
    /// Heartbeats for the main runtime and `check_threads` threads, all fresh now.
    pub fn new(check_threads: usize) -> Heartbeats {
        Heartbeats::last_beaten_at(check_threads, std::time::Instant::now())
    }

    /// Heartbeats for the main runtime and `check_threads` threads, as if each had last
    /// proved it runs at `when`.
    pub fn last_beaten_at(check_threads: usize, when: std::time::Instant) -> Heartbeats {
        Heartbeats {
            epoch: when,
            last_ms: (0..=check_threads).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn slot(&self, scheduler: Scheduler) -> &AtomicU64 {
        match scheduler {
            Scheduler::Main => &self.last_ms[0],
            Scheduler::CheckThread(i) => &self.last_ms[i + 1],
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The scheduler that last proved it runs longest ago, and how long ago.
    pub fn oldest(&self) -> (Scheduler, Duration) {
        let now = self.now_ms();
        let age =
            |ms: &AtomicU64| Duration::from_millis(now.saturating_sub(ms.load(Ordering::Relaxed)));
        let mut oldest = (Scheduler::Main, age(&self.last_ms[0]));
        for (i, ms) in self.last_ms.iter().enumerate().skip(1) {
            if age(ms) > oldest.1 {
                oldest = (Scheduler::CheckThread(i - 1), age(ms));
            }
        }
        oldest
    }

    /// Proves every 250 ms that the scheduler it runs on runs.
    pub(crate) async fn beat(self: Arc<Self>, scheduler: Scheduler) {
        let mut tick = tokio::time::interval(BEAT);
        loop {
            tick.tick().await;
            self.slot(scheduler).store(self.now_ms(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_name() -> String {
        std::thread::current()
            .name()
            .unwrap_or_default()
            .to_string()
    }

    #[tokio::test]
    async fn workers_are_dealt_round_the_threads() {
        let threads = CheckThreads::start(NonZeroUsize::new(2).unwrap()).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..4 {
            let tx = tx.clone();
            threads.spawn(async move {
                let _ = tx.send(thread_name());
            });
        }
        let mut names = Vec::new();
        for _ in 0..4 {
            names.push(rx.recv().await.unwrap());
        }
        names.sort();
        assert_eq!(
            names,
            [
                "resmon-checks-0",
                "resmon-checks-0",
                "resmon-checks-1",
                "resmon-checks-1"
            ]
        );
    }

    /// A check that blocks its thread (a resource type's bug) must show as a stalled agent, so
    /// that `/healthz` fails and systemd's watchdog restarts it, while the other thread goes on.
    #[tokio::test]
    async fn a_check_thread_held_by_a_blocking_call_is_the_oldest_heartbeat() {
        let threads = CheckThreads::start(NonZeroUsize::new(2).unwrap()).unwrap();
        let heartbeats = Arc::new(Heartbeats::new(threads.count()));
        tokio::spawn(heartbeats.clone().beat(Scheduler::Main));
        threads.beat(&heartbeats);
        // The first worker goes to thread 0; it holds it as a blocking call would.
        let (held_tx, held_rx) = tokio::sync::oneshot::channel();
        threads.spawn(async move {
            let _ = held_tx.send(());
            std::thread::sleep(Duration::from_millis(1500));
        });
        held_rx.await.unwrap();
        let (still_runs_tx, still_runs_rx) = tokio::sync::oneshot::channel();
        threads.spawn(async move {
            let _ = still_runs_tx.send(thread_name());
        });
        assert_eq!(still_runs_rx.await.unwrap(), "resmon-checks-1");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let (scheduler, age) = heartbeats.oldest();
        assert_eq!(scheduler, Scheduler::CheckThread(0));
        assert!(age >= Duration::from_millis(700), "{age:?}");
        // Once the call returns, the thread beats again.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let (_, age) = heartbeats.oldest();
        assert!(age < Duration::from_millis(700), "{age:?}");
    }
}
