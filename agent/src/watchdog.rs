//! systemd integration: `READY=1` once the groups run, `RELOADING=1`/`STOPPING=1` around reloads
//! and exit, and `WATCHDOG=1` pets from a plain thread that stops petting as soon as the tokio
//! scheduler stops proving it runs (its heartbeat task falls behind), so systemd restarts an
//! agent whose runtime hangs. Without `NOTIFY_SOCKET` every call does nothing.

use crate::runtime::threads::Heartbeats;
use sd_notify::NotifyState;
use std::sync::Arc;
use std::time::Duration;

/// Tells systemd the agent is ready and starts petting the watchdog if one is configured.
pub fn ready(heartbeats: Arc<Heartbeats>) {
    let _ = sd_notify::notify(false, &[NotifyState::Ready]);
    if let Some(period) = watchdog_period() {
        let spawned = std::thread::Builder::new()
            .name("resmon-watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(period / 4);
                // A heartbeat older than half the watchdog period means the scheduler stalls.
                if heartbeats.oldest().1 < period / 2 {
                    let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the watchdog thread: {e}");
        }
    }
}

/// `WATCHDOG_USEC`, when the watchdog is meant for this process. As sd_watchdog_enabled(3)
/// says, a missing `WATCHDOG_PID` means it is (the `sd-notify` crate insists on one).
fn watchdog_period() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// A reload begins.
pub fn reloading() {
    let _ = sd_notify::notify(false, &[NotifyState::Reloading]);
}

/// A reload ended.
pub fn reloaded() {
    let _ = sd_notify::notify(false, &[NotifyState::Ready]);
}

/// The agent is exiting.
pub fn stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}
