//! Refusals logged without letting a flood fill a disk: the first refusal
//! of a kind from a peer is logged at once, the rest of that interval are
//! counted and summed up in one line when it ends. Totals stay exact for
//! metrics.

use std::collections::HashMap;
use std::fmt::Display;
use std::hash::Hash;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Distinct (reason, peer) pairs tracked at once; past it, peers are
/// summed up under one entry per reason.
const MAX_TRACKED: usize = 4_096;

/// Where the aggregated lines and counts live; time is passed in. Peers
/// are addresses for the transport, sending domains for the policy.
pub struct RefusalLog<P = IpAddr> {
    interval: Duration,
    windows: HashMap<(&'static str, Option<P>), Window>,
    totals: HashMap<&'static str, u64>,
    last_sweep: Option<Instant>,
}

struct Window {
    opened: Instant,
    suppressed: u64,
}

impl<P: Clone + Eq + Hash + Display> RefusalLog<P> {
    /// One line per reason and peer per `interval` at most.
    pub fn new(interval: Duration) -> RefusalLog<P> {
        RefusalLog {
            interval,
            windows: HashMap::new(),
            totals: HashMap::new(),
            last_sweep: None,
        }
    }

    /// Counts one refusal; logs it unless one like it was logged within
    /// the interval.
    pub fn note(&mut self, now: Instant, peer: P, reason: &'static str, detail: &str) {
        *self.totals.entry(reason).or_default() += 1;
        if self.last_sweep.is_none_or(|at| now >= at + self.interval) {
            self.sweep(now);
        }
        let key = (reason, Some(peer));
        let key = if self.windows.len() < MAX_TRACKED || self.windows.contains_key(&key) {
            key
        } else {
            (reason, None)
        };
        match self.windows.get_mut(&key) {
            Some(window) if now < window.opened + self.interval => window.suppressed += 1,
            _ => {
                let detail = if detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({detail})")
                };
                match &key.1 {
                    Some(peer) => tracing::info!(%peer, "refused: {reason}{detail}"),
                    None => tracing::info!(peer = "many", "refused: {reason}{detail}"),
                }
                let window = Window {
                    opened: now,
                    suppressed: 0,
                };
                if let Some(ended) = self.windows.insert(key.clone(), window) {
                    summarize(&key, &ended, self.interval);
                }
            }
        }
    }

    /// Refusals counted since start, by reason.
    pub fn totals(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.totals.iter().map(|(r, n)| (*r, *n))
    }

    /// Sums up and forgets the windows that have ended.
    fn sweep(&mut self, now: Instant) {
        self.last_sweep = Some(now);
        let interval = self.interval;
        self.windows.retain(|key, window| {
            let open = now < window.opened + interval;
            if !open {
                summarize(key, window, interval);
            }
            open
        });
    }
}

fn summarize<P: Display>(key: &(&'static str, Option<P>), window: &Window, interval: Duration) {
    if window.suppressed == 0 {
        return;
    }
    let (reason, n) = (key.0, window.suppressed);
    let secs = interval.as_secs();
    match &key.1 {
        Some(peer) => tracing::info!(%peer, "refused: {reason}, {n} more within {secs} s"),
        None => tracing::info!(peer = "many", "refused: {reason}, {n} more within {secs} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_are_exact_and_windows_bounded() {
        let mut log = RefusalLog::<IpAddr>::new(Duration::from_secs(10));
        let start = Instant::now();
        for i in 0..20_000u32 {
            let peer = IpAddr::from(i.to_be_bytes());
            log.note(
                start + Duration::from_millis(u64::from(i)),
                peer,
                "policy",
                "",
            );
        }
        assert_eq!(log.totals().collect::<Vec<_>>(), vec![("policy", 20_000)]);
        assert!(
            log.windows.len() <= MAX_TRACKED + 1,
            "{}",
            log.windows.len()
        );
    }

    #[test]
    fn a_window_reopens_after_the_interval() {
        let mut log = RefusalLog::<IpAddr>::new(Duration::from_secs(10));
        let peer = IpAddr::from([192, 0, 2, 1]);
        let start = Instant::now();
        for i in 0..5 {
            log.note(start + Duration::from_secs(i), peer, "policy", "");
        }
        assert_eq!(log.windows[&("policy", Some(peer))].suppressed, 4);
        log.note(start + Duration::from_secs(11), peer, "policy", "");
        assert_eq!(log.windows[&("policy", Some(peer))].suppressed, 0);
    }
}
