//! systemd integration: `READY=1` once the groups run, `RELOADING=1`/`STOPPING=1` around reloads
//! and exit, and `WATCHDOG=1` pets from a plain thread that stops petting as soon as the tokio
//! scheduler stops proving it runs (its heartbeat task falls behind), so systemd restarts an
//! agent whose runtime hangs. Without `NOTIFY_SOCKET` every call does nothing.

use crate::runtime::Shared;
use sd_notify::NotifyState;
use std::sync::Arc;
use std::time::Duration;

/// Tells systemd the agent is ready and starts petting the watchdog if one is configured.
pub fn ready(shared: Arc<Shared>) {
    let _ = sd_notify::notify(false, &[NotifyState::Ready]);
    let mut usec = 0;
    if sd_notify::watchdog_enabled(false, &mut usec) && usec > 0 {
        let period = Duration::from_micros(usec);
        let spawned = std::thread::Builder::new()
            .name("resmon-watchdog".into())
            .spawn(move || loop {
                std::thread::sleep(period / 4);
                // A heartbeat older than half the watchdog period means the scheduler stalls.
                if shared.heartbeat_age() < period / 2 {
                    let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the watchdog thread: {e}");
        }
    }
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
