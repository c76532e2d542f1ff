//! The dial task: finds and opens the way to a next hop the core asked
//! for (a partner's edge by its pinned proxy or DNS, a host name by RFC
//! 3263, a stream address by connecting), and reports what it found.

use porchlight_node::outbound::NextHop;
use porchlight_resolve::{Resolver, SipTransport, UriTarget, SIPS_PORT};
use porchlight_sip::Uri;
use porchlight_transport::{Protocol, Target, Transport};

/// Why a next hop could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// DNS gave nothing.
    #[error(transparent)]
    Resolve(#[from] porchlight_resolve::ResolveError),
    /// Every address failed; the last reason.
    #[error("{name}: no address answered ({last})")]
    Unreachable {
        /// What was dialled.
        name: String,
        /// The last address's failure.
        last: porchlight_transport::SendError,
    },
    /// Not a SIP URI.
    #[error("{0} is not a SIP URI")]
    NotSip(String),
}

/// Finds and opens the way to `hop`. A partner is found through `pinned`
/// or DNS and must prove its name in the TLS handshake; each address is
/// tried in order. A host name is resolved for the URI's transport, and a
/// stream is opened to the first address that accepts.
pub async fn dial(
    hop: &NextHop,
    pinned: Option<&porchlight_policy::ProxyAddress>,
    resolver: &Resolver,
    transport: &Transport,
) -> Result<Target, DialError> {
    match hop {
        NextHop::Direct(Target::Address {
            protocol: protocol @ (Protocol::Tcp | Protocol::Tls),
            addr,
            domain,
        }) => transport
            .connect(*protocol, *addr, domain.as_deref())
            .await
            .map(Target::Connection)
            .map_err(|last| DialError::Unreachable {
                name: addr.to_string(),
                last,
            }),
        NextHop::Direct(target) => Ok(target.clone()),
        NextHop::Partner(name) => {
            let pinned = pinned.map(|p| (p.host_text(), p.port.unwrap_or(SIPS_PORT)));
            let pinned = pinned.as_ref().map(|(host, port)| (host.as_str(), *port));
            let hops = resolver.federation_hops(name, pinned).await?;
            let mut last = None;
            for h in hops {
                match transport.connect(Protocol::Tls, h.addr, Some(name)).await {
                    Ok(id) => {
                        tracing::info!(partner = %name, addr = %h.addr, rule = %h.source, "connected to partner edge");
                        return Ok(Target::Connection(id));
                    }
                    Err(e) => {
                        tracing::info!(partner = %name, addr = %h.addr, "partner edge address failed: {e}");
                        last = Some(e);
                    }
                }
            }
            Err(DialError::Unreachable {
                name: name.to_string(),
                last: last.expect("federation_hops returns at least one hop"),
            })
        }
        NextHop::Host { protocol, uri } => {
            let Ok(Uri::Sip(sip, _)) = Uri::parse(uri) else {
                return Err(DialError::NotSip(uri.to_string()));
            };
            let host = sip.host.to_string();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let transport_of = |p: Protocol| match p {
                Protocol::Udp => SipTransport::Udp,
                Protocol::Tcp => SipTransport::Tcp,
                Protocol::Tls => SipTransport::Tls,
            };
            let target = UriTarget {
                host,
                port: sip.port,
                transport: Some(transport_of(*protocol)),
                secure: sip.secure,
            };
            let addrs = resolver.uri_hops(&target).await?;
            let domain = (*protocol == Protocol::Tls).then(|| host.to_owned());
            let mut last = None;
            for (_, addr) in addrs {
                let target = Target::Address {
                    protocol: *protocol,
                    addr,
                    domain: domain.clone(),
                };
                if *protocol == Protocol::Udp {
                    return Ok(target);
                }
                match transport.connect(*protocol, addr, domain.as_deref()).await {
                    Ok(_) => return Ok(target),
                    Err(e) => last = Some(e),
                }
            }
            Err(DialError::Unreachable {
                name: uri.to_string(),
                last: last.expect("uri_hops returns at least one address"),
            })
        }
    }
}
