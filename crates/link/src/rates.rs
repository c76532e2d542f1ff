//! Requests per anonymous source, as Kamailio's pike does it: each source
//! address (an IPv6 /64, which one host can spread over at will) has a
//! token bucket; past it, its requests are dropped unanswered, so a flood
//! from one address costs no answer (nor an answer sent toward a spoofed
//! victim) and leaves every other source its share. Time is passed in.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::Instant;

/// What one source may send.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SourceRateLimits {
    /// Requests per second, sustained; 0 turns the limit off.
    pub per_sec: u32,
    /// Requests at once before the rate applies (a client starting up).
    pub burst: u32,
    /// Sources tracked at once. Past it, sources whose buckets have
    /// refilled are forgotten; if none has, a new source goes untracked
    /// (the node-wide overload shedding still holds it).
    pub max_sources: usize,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of the sources seen recently.
pub struct SourceRates {
    limits: SourceRateLimits,
    buckets: HashMap<IpAddr, Bucket>,
}

impl SourceRates {
    /// No source seen yet.
    pub fn new(limits: SourceRateLimits) -> SourceRates {
        SourceRates {
            limits,
            buckets: HashMap::new(),
        }
    }

    /// Whether a request from `source` at `now` is within its rate; counts it if so.
    pub fn admit(&mut self, source: IpAddr, now: Instant) -> bool {
        let SourceRateLimits {
            per_sec,
            burst,
            max_sources,
        } = self.limits;
        if per_sec == 0 {
            return true;
        }
        let key = source_key(source);
        let full = f64::from(burst.max(1));
        let refill = |b: &Bucket, now: Instant| {
            let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
            (b.tokens + elapsed * f64::from(per_sec)).min(full)
        };
        if !self.buckets.contains_key(&key) && self.buckets.len() >= max_sources {
            self.buckets.retain(|_, b| refill(b, now) < full);
            if self.buckets.len() >= max_sources {
                return true;
            }
        }
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            tokens: full,
            at: now,
        });
        bucket.tokens = refill(bucket, now);
        bucket.at = now;
        if bucket.tokens < 1.0 {
            return false;
        }
        bucket.tokens -= 1.0;
        true
    }

    /// Sources tracked now, for the bound's test.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

/// The address a source is counted under: itself, or its /64.
fn source_key(source: IpAddr) -> IpAddr {
    match source {
        IpAddr::V4(_) => source,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(per_sec: u32, burst: u32, max_sources: usize) -> SourceRateLimits {
        SourceRateLimits {
            per_sec,
            burst,
            max_sources,
        }
    }

    fn admitted(rates: &mut SourceRates, source: &str, n: u32, now: Instant) -> u32 {
        let ip: IpAddr = source.parse().unwrap();
        (0..n).filter(|_| rates.admit(ip, now)).count() as u32
    }

    #[test]
    fn a_burst_then_the_rate_per_source() {
        let mut rates = SourceRates::new(limits(100, 200, 1000));
        let start = Instant::now();
        assert_eq!(admitted(&mut rates, "198.51.100.7", 1000, start), 200);
        // Another source is not held back by the first.
        assert_eq!(admitted(&mut rates, "198.51.100.8", 10, start), 10);
        // A tenth of a second later: ten more.
        let later = start + Duration::from_millis(100);
        assert_eq!(admitted(&mut rates, "198.51.100.7", 1000, later), 10);
    }

    #[test]
    fn one_host_cannot_spread_over_its_ipv6_prefix() {
        let mut rates = SourceRates::new(limits(10, 10, 1000));
        let now = Instant::now();
        assert_eq!(admitted(&mut rates, "2001:db8:1:2::1", 10, now), 10);
        assert_eq!(admitted(&mut rates, "2001:db8:1:2::ffff", 10, now), 0);
        assert_eq!(admitted(&mut rates, "2001:db8:1:3::1", 10, now), 10);
        assert_eq!(admitted(&mut rates, "::ffff:198.51.100.7", 10, now), 10);
        assert_eq!(admitted(&mut rates, "198.51.100.7", 10, now), 0);
    }

    #[test]
    fn the_table_is_bounded_and_forgets_quiet_sources_first() {
        let mut rates = SourceRates::new(limits(10, 10, 100));
        let now = Instant::now();
        let flooder: IpAddr = "198.51.100.1".parse().unwrap();
        while rates.admit(flooder, now) {}
        for i in 0..10_000u32 {
            rates.admit(IpAddr::from((0x0a00_0000 + i).to_be_bytes()), now);
        }
        assert_eq!(rates.tracked(), 100, "the rest went untracked");
        // A second on, the flooder sends again and is held after its burst;
        // the quiet sources have refilled and make way for newcomers.
        let later = now + Duration::from_secs(1);
        while rates.admit(flooder, later) {}
        for i in 0..99u32 {
            rates.admit(IpAddr::from((0x0b00_0000 + i).to_be_bytes()), later);
        }
        assert_eq!(rates.tracked(), 100);
        assert!(!rates.admit(flooder, later), "the flooder is still held");
        let newcomer = IpAddr::from((0x0b00_0000u32 + 5).to_be_bytes());
        assert_eq!(admitted(&mut rates, &newcomer.to_string(), 20, later), 9);
    }

    #[test]
    fn zero_turns_it_off() {
        let mut rates = SourceRates::new(limits(0, 0, 10));
        assert_eq!(
            admitted(&mut rates, "198.51.100.7", 10_000, Instant::now()),
            10_000
        );
        assert_eq!(rates.tracked(), 0);
    }
}
