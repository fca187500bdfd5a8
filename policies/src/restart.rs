//! The sliding restart counter behind `restart_threshold` within `restart_period`.

use crate::time::Time;
use std::collections::VecDeque;
use std::time::Duration;

/// The times of recent restarts of one resource, forgotten once older than the period.
///
/// A restart is allowed while fewer than `threshold` restarts happened in the last `period`;
/// checking that before every restart bounds the restarts in *any* window of that length.
#[derive(Clone, Debug, Default)]
pub struct RestartWindow {
    restarts: VecDeque<Time>,
}

impl RestartWindow {
    /// Restarts within `(now - period, now]`.
    pub fn count(&mut self, now: Time, period: Duration) -> u32 {
        self.forget_before(now, period);
        self.restarts.len() as u32
    }

    /// Whether one more restart is allowed now.
    pub fn allows(&mut self, now: Time, period: Duration, threshold: u32) -> bool {
        self.count(now, period) < threshold
    }

    /// When the oldest restart still counted leaves the window (one more restart is then
    /// allowed), if any is counted.
    pub fn frees_at(&mut self, now: Time, period: Duration) -> Option<Time> {
        self.forget_before(now, period);
        self.restarts.front().map(|t| t.after(period))
    }

    /// Records a restart made at `now`.
    pub fn record(&mut self, now: Time) {
        self.restarts.push_back(now);
    }

    /// Forgets every restart (an administrator cleared the resource).
    pub fn clear(&mut self) {
        self.restarts.clear();
    }

    fn forget_before(&mut self, now: Time, period: Duration) {
        while let Some(&oldest) = self.restarts.front() {
            if oldest.after(period) <= now {
                self.restarts.pop_front();
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> Time {
        Time::from_elapsed(Duration::from_secs(s))
    }

    #[test]
    fn restarts_older_than_the_period_are_forgotten() {
        let mut w = RestartWindow::default();
        let period = Duration::from_secs(10);
        w.record(t(0));
        w.record(t(5));
        assert_eq!(w.count(t(9), period), 2);
        assert_eq!(
            w.count(t(10), period),
            1,
            "a restart exactly one period old is out"
        );
        assert!(w.allows(t(10), period, 2));
        assert!(!w.allows(t(10), period, 1));
        assert_eq!(w.count(t(15), period), 0);
    }
}
