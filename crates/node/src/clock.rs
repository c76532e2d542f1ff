//! The time as the driver tells it. The core reads no clock: each input
//! comes with a [`Now`], monotonic for timers and wall-clock for what is
//! shown, saved, signed or scheduled, so a test can run the node in
//! virtual time.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One moment, on both clocks.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// For timers and intervals: never jumps.
    pub mono: Instant,
    /// For dates: Date headers, saved expiries, nonces, business hours.
    pub wall: SystemTime,
}

impl Now {
    /// The moment both clocks show now; only the driver calls this.
    pub fn from_clocks(mono: Instant, wall: SystemTime) -> Now {
        Now { mono, wall }
    }

    /// This moment moved on by `by` on both clocks (virtual time).
    pub fn after(self, by: Duration) -> Now {
        Now {
            mono: self.mono + by,
            wall: self.wall + by,
        }
    }

    /// Whole seconds since the Unix epoch.
    pub fn unix(self) -> u64 {
        self.since_epoch().as_secs()
    }

    /// Microseconds since the Unix epoch: orders events across nodes whose
    /// clocks agree to within what NTP keeps.
    pub fn unix_micros(self) -> i64 {
        self.since_epoch().as_micros() as i64
    }

    /// Seconds since the Unix epoch, with their fraction.
    pub fn unix_f64(self) -> f64 {
        self.since_epoch().as_secs_f64()
    }

    /// The wall-clock moment for calendar arithmetic.
    pub fn timestamp(self) -> jiff::Timestamp {
        jiff::Timestamp::try_from(self.wall).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
    }

    fn since_epoch(self) -> Duration {
        self.wall.duration_since(UNIX_EPOCH).unwrap_or_default()
    }
}
