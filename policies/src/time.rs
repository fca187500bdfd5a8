//! Time as a value: the controller never reads a clock, the caller passes "now" in.

use std::fmt;
use std::time::Duration;

/// A point on the caller's monotonic clock, measured from an arbitrary origin (the runtime
/// uses its own start; tests use zero).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(Duration);

impl Time {
    /// The origin of the caller's clock.
    pub const ZERO: Time = Time(Duration::ZERO);

    /// The instant `elapsed` after the origin.
    pub const fn from_elapsed(elapsed: Duration) -> Self {
        Time(elapsed)
    }

    /// How long after the origin this instant is.
    pub const fn elapsed(self) -> Duration {
        self.0
    }

    /// `self + d`, saturating instead of overflowing.
    pub fn after(self, d: Duration) -> Time {
        Time(self.0.saturating_add(d))
    }

    /// `self - d`, or the origin when `d` reaches past it.
    pub fn before(self, d: Duration) -> Time {
        Time(self.0.saturating_sub(d))
    }
}

impl serde::Serialize for Time {
    /// Seconds since the caller's origin.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.0.as_secs_f64())
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::time::fmt_duration(self.0, f)
    }
}

/// Formats a duration the way transcripts and logs write it: `0s`, `250ms`, `1h3m`, `30m21s`.
pub fn fmt_duration(d: Duration, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    let ms = d.as_millis();
    if ms == 0 {
        return f.write_str("0s");
    }
    let parts = [(3_600_000, "h"), (60_000, "m"), (1000, "s"), (1, "ms")];
    let mut rest = ms;
    for (unit, suffix) in parts {
        if rest >= unit {
            write!(f, "{}{}", rest / unit, suffix)?;
            rest %= unit;
        }
    }
    Ok(())
}
