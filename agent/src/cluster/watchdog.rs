//! A watchdog device, as Patroni and Pacemaker's sbd use one: the answer to an agent that dies
//! or hangs and so cannot fence itself. Armed (opened) before the node first runs a group; fed
//! only by the session when etcd acknowledges a lease renewal, so a lost lease, a stalled
//! scheduler or a dead agent all stop the feeding and the device resets the machine before its
//! lease can expire; disarmed with the magic close (`V`) only when the agent exits holding no
//! group. The device's timeout is `lease_ttl - fence_margin`, whole seconds, at least one.

use crate::config::{WatchdogConfig, WatchdogMode};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

/// The watchdog of this node: not opened until the node first runs a group.
pub(crate) struct Watchdog {
    config: Option<WatchdogConfig>,
    timeout: Duration,
    device: Option<File>,
}

/// The node may not run a group: the watchdog is required and did not open.
pub(crate) struct Unarmed;

impl Watchdog {
    /// A watchdog for `config` (none: off) with the timeout the lease allows.
    pub(crate) fn new(config: Option<WatchdogConfig>, window: Duration) -> Watchdog {
        Watchdog {
            config: config.filter(|c| c.mode != WatchdogMode::Off),
            timeout: Duration::from_secs(window.as_secs().max(1)),
            device: None,
        }
    }

    /// Whether the device is open and counting.
    pub(crate) fn armed(&self) -> bool {
        self.device.is_some()
    }

    /// Opens the device before the node runs a group. In `required` mode a device that cannot
    /// be opened keeps the node from running any; in `automatic` mode it is said and the node
    /// goes on without.
    pub(crate) fn arm(&mut self) -> Result<(), Unarmed> {
        let Some(config) = &self.config else {
            return Ok(());
        };
        if self.device.is_some() {
            return Ok(());
        }
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&config.device);
        match opened {
            Ok(mut device) => {
                set_timeout(&device, self.timeout);
                // The first keep-alive starts the count from now.
                let _ = device.write_all(b"k");
                tracing::info!(
                    device = %config.device.display(),
                    timeout_seconds = self.timeout.as_secs(),
                    "watchdog armed"
                );
                self.device = Some(device);
                Ok(())
            }
            Err(e) => {
                let why = format!(
                    "cannot open the watchdog {} (cluster.watchdog.device): {e}",
                    config.device.display()
                );
                if config.mode == WatchdogMode::Required {
                    tracing::error!("{why}; watchdog mode is required: this node runs no group");
                    Err(Unarmed)
                } else {
                    tracing::warn!("{why}; mode automatic: going on without one");
                    Ok(())
                }
            }
        }
    }

    /// A keep-alive: etcd has just acknowledged a lease renewal.
    pub(crate) fn feed(&mut self) {
        if let Some(device) = &mut self.device {
            if let Err(e) = device.write_all(b"k") {
                tracing::warn!("cannot feed the watchdog: {e}");
            }
        }
    }

    /// The magic close: the device stops counting. Only for an agent that exits holding no
    /// group; otherwise the device is closed without it and goes on counting.
    pub(crate) fn close(&mut self, holds_nothing: bool) {
        let Some(mut device) = self.device.take() else {
            return;
        };
        if holds_nothing {
            let _ = device.write_all(b"V");
            tracing::info!("watchdog disarmed: this node holds no group");
        } else {
            tracing::warn!(
                "exiting while holding groups: the watchdog stays armed and resets this node \
                 unless the agent is back within {} s",
                self.timeout.as_secs()
            );
        }
    }
}

nix::ioctl_readwrite!(wdioc_settimeout, b'W', 6, libc::c_int);

/// Sets the device's timeout (WDIOC_SETTIMEOUT). A file that is not a watchdog device (the
/// tests' FIFO) refuses it: said, and tolerated.
#[allow(unsafe_code)] // an ioctl: nix generates it, and no safe crate wraps the watchdog API.
fn set_timeout(device: &File, timeout: Duration) {
    use std::os::fd::AsRawFd;
    let mut seconds = libc::c_int::try_from(timeout.as_secs()).unwrap_or(libc::c_int::MAX);
    // SAFETY: the fd is open for the call's duration and `seconds` is a valid c_int to write.
    if let Err(e) = unsafe { wdioc_settimeout(device.as_raw_fd(), &mut seconds) } {
        tracing::warn!("the watchdog refused its timeout ({e}): tolerated, as for a test device");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn config(device: &std::path::Path, mode: WatchdogMode) -> Option<WatchdogConfig> {
        Some(WatchdogConfig {
            device: device.to_path_buf(),
            mode,
        })
    }

    #[test]
    fn required_refuses_without_a_device_and_automatic_goes_on() {
        let missing = std::path::Path::new("/nonexistent/watchdog");
        let window = Duration::from_millis(1500);
        let mut required = Watchdog::new(config(missing, WatchdogMode::Required), window);
        assert!(required.arm().is_err());
        assert!(!required.armed());
        let mut automatic = Watchdog::new(config(missing, WatchdogMode::Automatic), window);
        assert!(automatic.arm().is_ok());
        assert!(!automatic.armed());
        let mut off = Watchdog::new(config(missing, WatchdogMode::Off), window);
        assert!(off.arm().is_ok() && !off.armed());
    }

    #[test]
    fn an_armed_device_is_fed_and_closed_with_the_magic_character_only_when_nothing_is_held() {
        let dir = tempfile::tempdir().unwrap();
        for (holds_nothing, written) in [(true, &b"kkV"[..]), (false, &b"kk"[..])] {
            let path = dir.path().join(format!("wd-{holds_nothing}"));
            nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
            let mut reader = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path)
                .unwrap();
            let mut w = Watchdog::new(
                config(&path, WatchdogMode::Required),
                Duration::from_millis(1500),
            );
            assert!(w.arm().is_ok() && w.armed());
            w.feed();
            w.close(holds_nothing);
            let mut got = Vec::new();
            reader.read_to_end(&mut got).unwrap();
            // Armed (a first keep-alive), fed once, then closed with `V` or without it.
            assert_eq!(got, written, "holds nothing: {holds_nothing}");
        }
    }
}
