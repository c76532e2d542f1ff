//! Finding a partner's edge. Federation between edges uses the SRV record
//! `_sipfederationtls._tcp.<domain>`; RFC 3263 adds `_sips._tcp.<domain>`
//! and finally the domain's own addresses on 5061. An allowed-domain entry
//! may pin a proxy FQDN, which overrides DNS. The connection is always
//! verified against the partner's domain (RFC 5922), never against the
//! host names DNS returned.
//!
//! [`order_srv`] is the RFC 2782 selection, without I/O; [`Resolver`] does
//! the lookups through hickory-resolver, whose cache honours the records'
//! TTLs.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::TokioAsyncResolver;

/// The SIP-over-TLS port (RFC 3261 §19.1.2).
pub const SIPS_PORT: u16 = 5061;

/// One SRV record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvRecord {
    /// Lower is tried first.
    pub priority: u16,
    /// Share within a priority.
    pub weight: u16,
    /// Port.
    pub port: u16,
    /// Target host, without the trailing dot.
    pub target: String,
}

/// Orders SRV records as RFC 2782 says: ascending priority, and within
/// one priority a weighted random order. `random(n)` returns a number in
/// `0..=n`. A lone `.` target means the service is not offered.
pub fn order_srv(
    mut records: Vec<SrvRecord>,
    random: &mut impl FnMut(u32) -> u32,
) -> Vec<SrvRecord> {
    records.retain(|r| !r.target.is_empty() && r.target != ".");
    records.sort_by_key(|r| r.priority);
    let mut ordered = Vec::with_capacity(records.len());
    let mut rest = records.as_slice();
    while let Some(first) = rest.first() {
        let same = rest
            .iter()
            .take_while(|r| r.priority == first.priority)
            .count();
        let mut group: Vec<SrvRecord> = rest[..same].to_vec();
        // Zero weights first, so they get a small chance (RFC 2782).
        group.sort_by_key(|r| r.weight != 0);
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let pick = random(total);
            let mut running = 0;
            let index = group
                .iter()
                .position(|r| {
                    running += u32::from(r.weight);
                    running >= pick
                })
                .unwrap_or(0);
            ordered.push(group.remove(index));
        }
        rest = &rest[same..];
    }
    ordered
}

/// Where to send, and how it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hop {
    /// Address to connect to over TLS.
    pub addr: SocketAddr,
    /// The host name DNS gave for it.
    pub host: String,
    /// Which rule found it, for logs and the admin.
    pub source: HopSource,
}

/// Which rule found a hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HopSource {
    /// The allowed-domain entry's pinned proxy FQDN.
    PinnedProxy,
    /// `_sipfederationtls._tcp.<domain>`.
    FederationSrv,
    /// `_sips._tcp.<domain>` (RFC 3263).
    SipsSrv,
    /// The domain's own A/AAAA records on 5061.
    DomainAddress,
}

impl std::fmt::Display for HopSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HopSource::PinnedProxy => "pinned proxy FQDN",
            HopSource::FederationSrv => "SRV _sipfederationtls._tcp",
            HopSource::SipsSrv => "SRV _sips._tcp",
            HopSource::DomainAddress => "A/AAAA of the domain",
        })
    }
}

/// Why a partner could not be located.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// No rule gave an address.
    #[error("no SIP federation edge found for {0} (no pinned proxy, no SRV, no address)")]
    NotFound(String),
}

/// Looks partners up in DNS.
pub struct Resolver {
    dns: TokioAsyncResolver,
}

impl Resolver {
    /// Uses the system's resolver configuration.
    pub fn system() -> std::io::Result<Resolver> {
        Ok(Resolver {
            dns: TokioAsyncResolver::tokio_from_system_conf()?,
        })
    }

    /// Asks these name servers (UDP, then TCP) only.
    pub fn with_nameservers(servers: &[SocketAddr]) -> Resolver {
        let mut group = NameServerConfigGroup::new();
        for server in servers {
            group.merge(NameServerConfigGroup::from_ips_clear(
                &[server.ip()],
                server.port(),
                true,
            ));
        }
        Resolver {
            dns: TokioAsyncResolver::tokio(
                ResolverConfig::from_parts(None, vec![], group),
                ResolverOpts::default(),
            ),
        }
    }

    async fn addresses(&self, host: &str) -> Vec<IpAddr> {
        match self.dns.lookup_ip(fqdn(host)).await {
            Ok(ips) => ips.iter().collect(),
            Err(_) => Vec::new(),
        }
    }

    async fn srv(&self, name: &str) -> Vec<SrvRecord> {
        match self.dns.srv_lookup(fqdn(name)).await {
            Ok(lookup) => lookup
                .iter()
                .map(|r| SrvRecord {
                    priority: r.priority(),
                    weight: r.weight(),
                    port: r.port(),
                    target: r.target().to_utf8().trim_end_matches('.').to_owned(),
                })
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The hops toward `domain`'s edge, in the order to try them.
    pub async fn federation_hops(
        &self,
        domain: &str,
        pinned_proxy: Option<&str>,
    ) -> Result<Vec<Hop>, ResolveError> {
        let mut hops = Vec::new();
        if let Some(proxy) = pinned_proxy {
            for ip in self.addresses(proxy).await {
                hops.push(Hop {
                    addr: SocketAddr::new(ip, SIPS_PORT),
                    host: proxy.to_owned(),
                    source: HopSource::PinnedProxy,
                });
            }
            return if hops.is_empty() {
                Err(ResolveError::NotFound(domain.to_owned()))
            } else {
                Ok(hops)
            };
        }
        let mut seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.subsec_nanos() | 1);
        let mut random = |n: u32| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            if n == 0 {
                0
            } else {
                seed % (n + 1)
            }
        };
        for (service, source) in [
            ("_sipfederationtls._tcp", HopSource::FederationSrv),
            ("_sips._tcp", HopSource::SipsSrv),
        ] {
            let records = order_srv(self.srv(&format!("{service}.{domain}")).await, &mut random);
            for record in records {
                for ip in self.addresses(&record.target).await {
                    hops.push(Hop {
                        addr: SocketAddr::new(ip, record.port),
                        host: record.target.clone(),
                        source,
                    });
                }
            }
            if !hops.is_empty() {
                return Ok(hops);
            }
        }
        for ip in self.addresses(domain).await {
            hops.push(Hop {
                addr: SocketAddr::new(ip, SIPS_PORT),
                host: domain.to_owned(),
                source: HopSource::DomainAddress,
            });
        }
        if hops.is_empty() {
            Err(ResolveError::NotFound(domain.to_owned()))
        } else {
            Ok(hops)
        }
    }
}

/// A name with its trailing dot, so no search domain is appended.
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srv(priority: u16, weight: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port: 5061,
            target: target.into(),
        }
    }

    #[test]
    fn priority_first_then_weight() {
        let records = vec![
            srv(20, 0, "backup"),
            srv(10, 10, "light"),
            srv(10, 90, "heavy"),
            srv(5, 0, "."),
        ];
        // Always pick the top of the range: the last record by running weight wins.
        let order = order_srv(records.clone(), &mut |n| n);
        let names: Vec<_> = order.iter().map(|r| r.target.as_str()).collect();
        assert_eq!(
            names,
            ["heavy", "light", "backup"],
            "a `.` target is dropped"
        );
        // A pick of 1 lands in the first record with weight.
        let order = order_srv(records, &mut |n| n.min(1));
        assert_eq!(order[0].target, "light");
        assert_eq!(order[2].target, "backup");
    }

    #[test]
    fn weights_share_the_first_place() {
        let mut seed = 7u32;
        let mut random = |n: u32| {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (seed >> 8) % (n + 1)
        };
        let mut heavy_first = 0;
        for _ in 0..1000 {
            let order = order_srv(vec![srv(1, 10, "light"), srv(1, 90, "heavy")], &mut random);
            heavy_first += usize::from(order[0].target == "heavy");
        }
        assert!((820..=980).contains(&heavy_first), "{heavy_first} of 1000");
    }
}
