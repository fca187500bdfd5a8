//! The fence's clock: CLOCK_BOOTTIME, which goes on counting while the machine is suspended or
//! its VM frozen. tokio's `Instant` (CLOCK_MONOTONIC) stops then, so a node that resumes after a
//! suspend longer than its lease would believe the lease still fresh and keep running what
//! another node has taken by now.

use std::time::Duration;

/// A point on CLOCK_BOOTTIME.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct BootInstant(Duration);

impl BootInstant {
    /// Now. CLOCK_BOOTTIME cannot fail on Linux; were it to, CLOCK_MONOTONIC stands in.
    pub(crate) fn now() -> BootInstant {
        use nix::time::{clock_gettime, ClockId};
        let t = clock_gettime(ClockId::CLOCK_BOOTTIME)
            .or_else(|_| clock_gettime(ClockId::CLOCK_MONOTONIC))
            .unwrap_or_else(|_| nix::sys::time::TimeSpec::new(0, 0));
        BootInstant(Duration::from(t))
    }

    /// The time from `earlier` to `self`, zero if `earlier` is later.
    pub(crate) fn since(self, earlier: BootInstant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_time_counts_at_least_what_the_monotonic_clock_does() {
        let boot = BootInstant::now();
        let mono = std::time::Instant::now();
        std::thread::sleep(Duration::from_millis(20));
        let (b, m) = (BootInstant::now().since(boot), mono.elapsed());
        assert!(b >= Duration::from_millis(20), "{b:?}");
        // Both count a sleep; BOOTTIME would also count a suspend, which MONOTONIC would not.
        assert!(b + Duration::from_millis(5) >= m, "{b:?} against {m:?}");
        assert_eq!(boot.since(BootInstant::now()), Duration::ZERO);
    }
}
