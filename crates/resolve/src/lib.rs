//! Finding where SIP requests go. Federation between edges uses the SRV
//! record `_sipfederationtls._tcp.<domain>`; RFC 3263 adds the domain's
//! NAPTR records offering `SIPS+D2T`, then `_sips._tcp.<domain>` and
//! finally the domain's own addresses on 5061. An allowed-domain entry may
//! pin a proxy FQDN, which overrides DNS. The connection is always verified
//! against the partner's domain (RFC 5922), never against the host names
//! DNS returned. Next hops inside the edge named by host name are found by
//! the whole of RFC 3263 §4 (NAPTR, SRV, A/AAAA).
//!
//! [`order_srv`] and [`order_naptr`] are the selection rules, without I/O;
//! [`Resolver`] does the lookups through hickory-resolver, whose cache
//! honours the records' TTLs.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioAsyncResolver;

/// The SIP-over-TLS port (RFC 3261 §19.1.2).
pub const SIPS_PORT: u16 = 5061;
/// The SIP port for UDP and TCP.
pub const SIP_PORT: u16 = 5060;

/// A SIP transport, as DNS names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SipTransport {
    /// `SIP+D2U`, `_sip._udp`.
    Udp,
    /// `SIP+D2T`, `_sip._tcp`.
    Tcp,
    /// `SIPS+D2T`, `_sips._tcp`.
    Tls,
}

impl SipTransport {
    /// The NAPTR service field (RFC 3263 §4.1).
    fn naptr_service(self) -> &'static str {
        match self {
            SipTransport::Udp => "SIP+D2U",
            SipTransport::Tcp => "SIP+D2T",
            SipTransport::Tls => "SIPS+D2T",
        }
    }

    /// The SRV service prefix.
    fn srv_prefix(self) -> &'static str {
        match self {
            SipTransport::Udp => "_sip._udp",
            SipTransport::Tcp => "_sip._tcp",
            SipTransport::Tls => "_sips._tcp",
        }
    }

    fn default_port(self) -> u16 {
        if self == SipTransport::Tls {
            SIPS_PORT
        } else {
            SIP_PORT
        }
    }
}

/// One NAPTR record, as far as SIP uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NaptrRecord {
    /// Lower is tried first.
    pub order: u16,
    /// Lower is tried first within an order.
    pub preference: u16,
    /// `s` for SIP: the replacement is an SRV name.
    pub flags: String,
    /// `SIP+D2U`, `SIP+D2T`, `SIPS+D2T`.
    pub service: String,
    /// The SRV name, without the trailing dot.
    pub replacement: String,
}

/// The SRV names NAPTR records point to, best first, for the transports
/// in `acceptable` (RFC 3263 §4.1): only `s` records for a service we
/// speak, by order then preference.
pub fn order_naptr(
    mut records: Vec<NaptrRecord>,
    acceptable: &[SipTransport],
) -> Vec<(SipTransport, String)> {
    records.sort_by_key(|r| (r.order, r.preference));
    records
        .into_iter()
        .filter(|r| r.flags.eq_ignore_ascii_case("s"))
        .filter_map(|r| {
            let transport = acceptable
                .iter()
                .find(|t| r.service.eq_ignore_ascii_case(t.naptr_service()))?;
            Some((*transport, r.replacement))
        })
        .collect()
}

/// A SIP URI's next hop, as RFC 3263 §4 needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UriTarget<'a> {
    /// Host name or IP literal (without brackets).
    pub host: &'a str,
    /// The explicit port, if any.
    pub port: Option<u16>,
    /// The explicit `transport` parameter, if any.
    pub transport: Option<SipTransport>,
    /// A `sips:` URI: TLS only.
    pub secure: bool,
}

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
    /// The allowed-domain or provider entry's pinned proxy.
    PinnedProxy,
    /// `_sipfederationtls._tcp.<domain>`.
    FederationSrv,
    /// The domain's NAPTR record for `SIPS+D2T` (RFC 3263 §4.1).
    Naptr,
    /// `_sips._tcp.<domain>` (RFC 3263).
    SipsSrv,
    /// The domain's own A/AAAA records on 5061.
    DomainAddress,
}

impl std::fmt::Display for HopSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HopSource::PinnedProxy => "pinned proxy",
            HopSource::FederationSrv => "SRV _sipfederationtls._tcp",
            HopSource::Naptr => "NAPTR SIPS+D2T",
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
    /// The pinned proxy's name has no address.
    #[error("{domain} is pinned to the proxy {proxy}, which has no address in DNS (A/AAAA): correct the entry's proxy_fqdn, or the proxy's DNS records")]
    PinnedNotFound {
        /// The partner's domain.
        domain: String,
        /// The pinned proxy's host name.
        proxy: String,
    },
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

    async fn naptr(&self, domain: &str) -> Vec<NaptrRecord> {
        let Ok(lookup) = self.dns.lookup(fqdn(domain), RecordType::NAPTR).await else {
            return Vec::new();
        };
        lookup
            .iter()
            .filter_map(|data| match data {
                RData::NAPTR(n) => Some(NaptrRecord {
                    order: n.order(),
                    preference: n.preference(),
                    flags: String::from_utf8_lossy(n.flags()).into_owned(),
                    service: String::from_utf8_lossy(n.services()).into_owned(),
                    replacement: n.replacement().to_utf8().trim_end_matches('.').to_owned(),
                }),
                _ => None,
            })
            .collect()
    }

    /// The addresses an SRV name leads to, in RFC 2782 order.
    async fn srv_addresses(&self, name: &str) -> Vec<(String, SocketAddr)> {
        let mut out = Vec::new();
        for record in order_srv(self.srv(name).await, &mut random_below()) {
            for ip in self.addresses(&record.target).await {
                out.push((record.target.clone(), SocketAddr::new(ip, record.port)));
            }
        }
        out
    }

    /// Where to send a request for a SIP URI (RFC 3263 §4): an IP literal
    /// or explicit port goes straight to the address; otherwise NAPTR
    /// chooses the transport and SRV the hosts, falling back to SRV per
    /// transport and then the host's A/AAAA records.
    pub async fn uri_hops(
        &self,
        uri: &UriTarget<'_>,
    ) -> Result<Vec<(SipTransport, SocketAddr)>, ResolveError> {
        let acceptable: &[SipTransport] = match (uri.secure, uri.transport) {
            (true, _) => &[SipTransport::Tls],
            (false, Some(t)) => match t {
                SipTransport::Udp => &[SipTransport::Udp],
                SipTransport::Tcp => &[SipTransport::Tcp],
                SipTransport::Tls => &[SipTransport::Tls],
            },
            (false, None) => &[SipTransport::Tls, SipTransport::Tcp, SipTransport::Udp],
        };
        let default_transport = if uri.secure {
            SipTransport::Tls
        } else {
            uri.transport.unwrap_or(SipTransport::Udp)
        };
        if let Ok(ip) = uri.host.parse::<IpAddr>() {
            let port = uri.port.unwrap_or(default_transport.default_port());
            return Ok(vec![(default_transport, SocketAddr::new(ip, port))]);
        }
        let mut hops = Vec::new();
        if let Some(port) = uri.port {
            for ip in self.addresses(uri.host).await {
                hops.push((default_transport, SocketAddr::new(ip, port)));
            }
        } else {
            // NAPTR only when the transport is not already fixed (§4.1).
            if uri.transport.is_none() {
                for (transport, name) in order_naptr(self.naptr(uri.host).await, acceptable) {
                    for (_, addr) in self.srv_addresses(&name).await {
                        hops.push((transport, addr));
                    }
                    if !hops.is_empty() {
                        return Ok(hops);
                    }
                }
            }
            for transport in acceptable {
                let name = format!("{}.{}", transport.srv_prefix(), uri.host);
                for (_, addr) in self.srv_addresses(&name).await {
                    hops.push((*transport, addr));
                }
                if !hops.is_empty() {
                    return Ok(hops);
                }
            }
            for ip in self.addresses(uri.host).await {
                hops.push((
                    default_transport,
                    SocketAddr::new(ip, default_transport.default_port()),
                ));
            }
        }
        if hops.is_empty() {
            Err(ResolveError::NotFound(uri.host.to_owned()))
        } else {
            Ok(hops)
        }
    }

    /// The hops toward `domain`'s edge, in the order to try them.
    pub async fn federation_hops(
        &self,
        domain: &str,
        pinned_proxy: Option<(&str, u16)>,
    ) -> Result<Vec<Hop>, ResolveError> {
        if let Some((proxy, port)) = pinned_proxy {
            let hop = |ip| Hop {
                addr: SocketAddr::new(ip, port),
                host: proxy.to_owned(),
                source: HopSource::PinnedProxy,
            };
            if let Ok(ip) = proxy.parse::<IpAddr>() {
                return Ok(vec![hop(ip)]);
            }
            let hops: Vec<Hop> = self.addresses(proxy).await.into_iter().map(hop).collect();
            if hops.is_empty() {
                return Err(ResolveError::PinnedNotFound {
                    domain: domain.to_owned(),
                    proxy: proxy.to_owned(),
                });
            }
            return Ok(hops);
        }
        let federation = format!("_sipfederationtls._tcp.{domain}");
        let hops = self.srv_hops(&federation, HopSource::FederationSrv).await;
        if !hops.is_empty() {
            return Ok(hops);
        }
        for (_, name) in order_naptr(self.naptr(domain).await, &[SipTransport::Tls]) {
            let hops = self.srv_hops(&name, HopSource::Naptr).await;
            if !hops.is_empty() {
                return Ok(hops);
            }
        }
        let sips = format!("_sips._tcp.{domain}");
        let hops = self.srv_hops(&sips, HopSource::SipsSrv).await;
        if !hops.is_empty() {
            return Ok(hops);
        }
        found(
            self.address_hops(domain, HopSource::DomainAddress).await,
            domain,
        )
    }

    /// The hops an SRV name leads to, found by `source`.
    async fn srv_hops(&self, name: &str, source: HopSource) -> Vec<Hop> {
        self.srv_addresses(name)
            .await
            .into_iter()
            .map(|(host, addr)| Hop { addr, host, source })
            .collect()
    }

    /// A host's addresses on the SIP-over-TLS port, found by `source`.
    async fn address_hops(&self, host: &str, source: HopSource) -> Vec<Hop> {
        self.addresses(host)
            .await
            .into_iter()
            .map(|ip| Hop {
                addr: SocketAddr::new(ip, SIPS_PORT),
                host: host.to_owned(),
                source,
            })
            .collect()
    }
}

/// The hops, or that none was found for `domain`.
fn found(hops: Vec<Hop>, domain: &str) -> Result<Vec<Hop>, ResolveError> {
    if hops.is_empty() {
        Err(ResolveError::NotFound(domain.to_owned()))
    } else {
        Ok(hops)
    }
}

/// A cheap random source for SRV weights: spreading load needs no more.
fn random_below() -> impl FnMut(u32) -> u32 {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.subsec_nanos() | 1);
    move |n: u32| {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        if n == 0 {
            0
        } else {
            seed % (n + 1)
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
    fn naptr_by_order_then_preference_for_our_transports() {
        let naptr = |order, preference, flags: &str, service: &str, to: &str| NaptrRecord {
            order,
            preference,
            flags: flags.into(),
            service: service.into(),
            replacement: to.into(),
        };
        let records = vec![
            naptr(20, 10, "s", "SIP+D2U", "_sip._udp.example.com"),
            naptr(10, 20, "s", "SIP+D2T", "_sip._tcp.example.com"),
            naptr(10, 10, "S", "SIPS+D2T", "_sips._tcp.example.com"),
            naptr(5, 10, "s", "SIP+D2S", "_sip._sctp.example.com"),
            naptr(5, 10, "u", "SIPS+D2T", "!^.*$!sips:x@example.com!"),
        ];
        let all = [SipTransport::Tls, SipTransport::Tcp, SipTransport::Udp];
        assert_eq!(
            order_naptr(records.clone(), &all),
            [
                (SipTransport::Tls, "_sips._tcp.example.com".to_owned()),
                (SipTransport::Tcp, "_sip._tcp.example.com".to_owned()),
                (SipTransport::Udp, "_sip._udp.example.com".to_owned()),
            ],
            "SCTP is not ours and a `u` record is not an SRV pointer"
        );
        assert_eq!(
            order_naptr(records, &[SipTransport::Tls]),
            [(SipTransport::Tls, "_sips._tcp.example.com".to_owned())]
        );
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
