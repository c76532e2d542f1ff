//! Password guessing slowed to a crawl, without I/O: wrong digest answers
//! are counted per source address and per endpoint name in a window; past
//! a threshold the source (or the name) is refused for a back-off that
//! doubles with each new lockout, and the right password works again once
//! it passes. A source that proved the password for a name keeps working
//! while strangers have that name locked, so guessing at an endpoint
//! cannot lock its own app out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Entries kept per table before expired ones are swept out.
const SWEEP_AT: usize = 65_536;

/// The thresholds and back-off.
#[derive(Clone, Copy, Debug)]
pub struct GuessLimits {
    /// Wrong answers from one address within `window` before it is refused.
    pub per_source: u32,
    /// Wrong answers for one endpoint name within `window`, from anyone.
    pub per_endpoint: u32,
    /// The counting window.
    pub window: Duration,
    /// The first lockout; each further one doubles it, up to `max_backoff`.
    pub backoff: Duration,
    /// The longest lockout.
    pub max_backoff: Duration,
}

impl Default for GuessLimits {
    fn default() -> Self {
        GuessLimits {
            per_source: 10,
            per_endpoint: 30,
            window: Duration::from_secs(60),
            backoff: Duration::from_secs(60),
            max_backoff: Duration::from_secs(3_600),
        }
    }
}

/// Whether an attempt may be checked at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Check the credentials.
    Open,
    /// Refuse without checking, until the lockout ends.
    Closed {
        /// How long until it ends.
        retry_after: Duration,
    },
}

/// A lockout that has just begun: worth one log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lockout {
    /// One address guessed too often.
    Source(IpAddr, Duration),
    /// One endpoint name was guessed at too often.
    Endpoint(String, Duration),
}

#[derive(Debug)]
struct Tally {
    window_opened: Instant,
    failures: u32,
    locked_until: Option<Instant>,
    /// Lockouts so far; forgotten after a quiet `max_backoff`.
    strikes: u32,
    last_failure: Instant,
}

impl Tally {
    fn new(now: Instant) -> Tally {
        Tally {
            window_opened: now,
            failures: 0,
            locked_until: None,
            strikes: 0,
            last_failure: now,
        }
    }

    fn locked(&self, now: Instant) -> Option<Duration> {
        self.locked_until
            .filter(|&until| now < until)
            .map(|until| until - now)
    }

    /// Counts a failure; the lockout length when one begins.
    fn fail(&mut self, now: Instant, threshold: u32, limits: &GuessLimits) -> Option<Duration> {
        if now.duration_since(self.last_failure) >= limits.max_backoff {
            self.strikes = 0;
        }
        self.last_failure = now;
        if now.duration_since(self.window_opened) >= limits.window {
            self.window_opened = now;
            self.failures = 0;
        }
        self.failures += 1;
        if self.failures < threshold || self.locked(now).is_some() {
            return None;
        }
        let length = limits
            .backoff
            .saturating_mul(1 << self.strikes.min(16))
            .min(limits.max_backoff);
        self.strikes += 1;
        self.failures = 0;
        self.locked_until = Some(now + length);
        Some(length)
    }

    fn expired(&self, now: Instant, limits: &GuessLimits) -> bool {
        self.locked(now).is_none() && now.duration_since(self.last_failure) >= limits.max_backoff
    }
}

/// The guard's memory.
#[derive(Debug, Default)]
pub struct GuessGuard {
    limits: GuessLimits,
    sources: HashMap<IpAddr, Tally>,
    endpoints: HashMap<String, Tally>,
    /// When each (source, name) last proved the password.
    proven: HashMap<(IpAddr, String), Instant>,
    /// Attempts refused unchecked, for metrics.
    refused: u64,
    /// Wrong answers counted, for metrics.
    failures: u64,
}

impl GuessGuard {
    /// A guard with these limits.
    pub fn new(limits: GuessLimits) -> GuessGuard {
        GuessGuard {
            limits,
            ..GuessGuard::default()
        }
    }

    /// Whether an attempt from `source` for `name` may be checked.
    pub fn gate(&mut self, now: Instant, source: IpAddr, name: &str) -> Gate {
        let by_source = self.sources.get(&source).and_then(|t| t.locked(now));
        let by_name = self
            .endpoints
            .get(name)
            .and_then(|t| t.locked(now))
            .filter(|_| !self.has_proven(now, source, name));
        match by_source.max(by_name) {
            Some(retry_after) => {
                self.refused += 1;
                Gate::Closed { retry_after }
            }
            None => Gate::Open,
        }
    }

    fn has_proven(&self, now: Instant, source: IpAddr, name: &str) -> bool {
        self.proven
            .get(&(source, name.to_owned()))
            .is_some_and(|&at| now.duration_since(at) < self.limits.max_backoff)
    }

    /// A wrong answer; the lockouts it starts.
    pub fn failed(&mut self, now: Instant, source: IpAddr, name: &str) -> Vec<Lockout> {
        self.failures += 1;
        self.sweep(now);
        let limits = self.limits;
        let mut started = Vec::new();
        if let Some(length) = self
            .sources
            .entry(source)
            .or_insert_with(|| Tally::new(now))
            .fail(now, limits.per_source, &limits)
        {
            started.push(Lockout::Source(source, length));
        }
        if let Some(length) = self
            .endpoints
            .entry(name.to_owned())
            .or_insert_with(|| Tally::new(now))
            .fail(now, limits.per_endpoint, &limits)
        {
            started.push(Lockout::Endpoint(name.to_owned(), length));
        }
        started
    }

    /// The right password: this source keeps access to this name.
    pub fn succeeded(&mut self, now: Instant, source: IpAddr, name: &str) {
        self.sweep(now);
        self.proven.insert((source, name.to_owned()), now);
    }

    /// Attempts refused unchecked and wrong answers, since start.
    pub fn counts(&self) -> (u64, u64) {
        (self.refused, self.failures)
    }

    /// Keeps the tables bounded: once large, what has expired goes.
    fn sweep(&mut self, now: Instant) {
        let limits = self.limits;
        if self.sources.len() >= SWEEP_AT {
            self.sources.retain(|_, t| !t.expired(now, &limits));
        }
        if self.endpoints.len() >= SWEEP_AT {
            self.endpoints.retain(|_, t| !t.expired(now, &limits));
        }
        if self.proven.len() >= SWEEP_AT {
            self.proven
                .retain(|_, &mut at| now.duration_since(at) < limits.max_backoff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn a_guessing_source_is_locked_out_then_let_back_with_growing_backoff() {
        let limits = GuessLimits::default();
        let mut guard = GuessGuard::new(limits);
        let t0 = Instant::now();
        for i in 0..9 {
            assert!(guard.failed(t0, ip(1), &format!("user{i}")).is_empty());
        }
        assert_eq!(
            guard.failed(t0, ip(1), "user9"),
            vec![Lockout::Source(ip(1), limits.backoff)]
        );
        assert!(matches!(guard.gate(t0, ip(1), "bot"), Gate::Closed { .. }));
        assert_eq!(
            guard.gate(t0, ip(2), "bot"),
            Gate::Open,
            "others unaffected"
        );
        let after = t0 + limits.backoff;
        assert_eq!(guard.gate(after, ip(1), "bot"), Gate::Open);
        for _ in 0..10 {
            guard.failed(after, ip(1), "x");
        }
        assert_eq!(
            guard.gate(after, ip(1), "bot"),
            Gate::Closed {
                retry_after: limits.backoff * 2
            },
            "the second lockout is twice as long"
        );
    }

    #[test]
    fn guessing_at_a_name_does_not_lock_out_its_own_app() {
        let limits = GuessLimits::default();
        let mut guard = GuessGuard::new(limits);
        let t0 = Instant::now();
        guard.succeeded(t0, ip(200), "bot");
        for i in 0..30 {
            guard.failed(t0, ip(i), "bot");
        }
        assert!(matches!(
            guard.gate(t0, ip(100), "bot"),
            Gate::Closed { .. }
        ));
        assert_eq!(guard.gate(t0, ip(200), "bot"), Gate::Open);
        assert_eq!(guard.counts(), (1, 30));
    }
}
