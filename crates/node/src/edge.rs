//! The edge's trust model and its dialog tokens: who speaks for the inside,
//! which partner a certificate proves, and the Record-Route tokens that
//! bind a dialog to its partner. The router ([`crate::router`]) decides
//! with these which requests this node proxies rather than answers, and
//! where they go.
//!
//! Calls and IM for an application endpoint are delivered to it (the node
//! picks the registered contact, static target or webhook); requests for
//! our domains that no endpoint serves are proxied statefully to the
//! internal next hop (RFC 3261 §16); requests from the trusted inside, or
//! from an endpoint's app, for other domains go out to that domain's edge
//! over mutual TLS. Either way this node record-routes twice, once facing
//! each side, so the dialog's later requests pass here too. Each
//! Record-Route entry carries a token naming the dialog's outside partner
//! (the name its certificate proves) and a keyed hash binding it to the
//! Call-ID: later requests from our side go to that partner, and only
//! dialogs this node set up can be routed through it — nothing is relayed
//! for strangers.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use porchlight_link::{Origin, Protocol};
use porchlight_policy::PolicyConfig;
use porchlight_sip::Uri;
use sha2::{Digest, Sha256};

use crate::outbound::NextHop;

/// A proxying decision.
#[derive(Debug, PartialEq, Eq)]
pub struct Forward {
    /// Where the forwarded request goes.
    pub next: NextHop,
    /// Our Route entries removed from the top (§16.4).
    pub consumed_routes: usize,
    /// Which way it crosses the edge.
    pub direction: Direction,
}

/// Which way a proxied request crosses the edge; it decides the policy
/// check, the Record-Route entries and the trust header.
#[derive(Debug, PartialEq, Eq)]
pub enum Direction {
    /// A new request from outside for someone behind the edge.
    Entering,
    /// A new request from the inside for another domain, whose edge
    /// certificate must prove `partner`.
    Leaving {
        /// The Request-URI's domain, for the policy.
        domain: String,
        /// The name the partner's edge proves.
        partner: Arc<str>,
        /// Sent by an endpoint's app rather than the trusted inside.
        from_endpoint: bool,
    },
    /// A new call or IM for our endpoint (this index in the directory),
    /// going to its app.
    ToEndpoint(usize),
    /// A later request of a dialog this node record-routed.
    InDialog,
}

/// Which of our parties a record-routed dialog joins, kept in its token:
/// it decides who on our side may send the dialog's later requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialogSide {
    /// People behind the edge (edge mode): only the trusted networks speak
    /// for them.
    Inside,
    /// An endpoint's app, wherever it runs.
    Endpoint,
}

impl DialogSide {
    fn prefix(self) -> &'static str {
        match self {
            DialogSide::Inside => "rr-",
            DialogSide::Endpoint => "ep-",
        }
    }
}

/// The partner name in tokens of dialogs whose outside party proved no
/// name (a caller from the trusted networks, or an unverified one).
pub const NO_PARTNER: &str = "-";

/// Parses a SIP URI naming an address (the internal next hop, a Route
/// entry, a Contact): IP literal, port, `transport` parameter.
pub fn address_of(uri: &str) -> Option<(Protocol, SocketAddr)> {
    let Ok(Uri::Sip(sip, _)) = Uri::parse(uri) else {
        return None;
    };
    sip_address(&sip)
}

fn sip_address(sip: &porchlight_sip::SipUri<'_>) -> Option<(Protocol, SocketAddr)> {
    let ip: IpAddr = sip.host.ip()?;
    let protocol = protocol_of(sip);
    Some((
        protocol,
        SocketAddr::new(ip, sip.port.unwrap_or(default_port(protocol))),
    ))
}

/// The transport a SIP URI asks for: its `transport` parameter, TLS for
/// `sips:`, else UDP (RFC 3263 §4.1 with the transport fixed).
fn protocol_of(sip: &porchlight_sip::SipUri<'_>) -> Protocol {
    match sip.param("transport").flatten() {
        Some(t) if t.eq_ignore_ascii_case("tcp") => Protocol::Tcp,
        Some(t) if t.eq_ignore_ascii_case("tls") => Protocol::Tls,
        _ if sip.secure => Protocol::Tls,
        _ => Protocol::Udp,
    }
}

fn default_port(protocol: Protocol) -> u16 {
    if protocol == Protocol::Tls {
        5061
    } else {
        5060
    }
}

/// The next hop a SIP URI names: its address when the host is an IP
/// literal, else the host name to resolve (RFC 3263).
pub(crate) fn hop_of(uri: &str) -> Option<NextHop> {
    let Ok(Uri::Sip(sip, _)) = Uri::parse(uri) else {
        return None;
    };
    if let Some((protocol, addr)) = sip_address(&sip) {
        return Some(NextHop::address(protocol, addr));
    }
    Some(NextHop::Host {
        protocol: protocol_of(&sip),
        uri: uri.into(),
    })
}

/// The edge's routing configuration.
pub struct Edge {
    /// Where requests for people behind the edge go; None: not in edge mode.
    pub internal: Option<(Protocol, SocketAddr)>,
    /// Keys the Record-Route tokens.
    pub secret: [u8; 32],
}

/// The keyed hash that binds a Record-Route token to one dialog.
fn mac(secret: &[u8; 32], call_id: &str, side: DialogSide, partner: &str) -> String {
    let mut h = Sha256::new();
    h.update(secret);
    h.update(call_id.as_bytes());
    h.update([0]);
    h.update(side.prefix().as_bytes());
    h.update(partner.as_bytes());
    let digest = h.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a request speaks for the inside of the edge. The trusted
/// networks vouch only for traffic no certificate speaks for: a connection
/// whose certificate proves a domain that is not ours is that domain's
/// federated peer wherever it comes from (a peer's identity outranks its
/// address, RFC 5922), so a partner's proxy on this host or on the inside
/// network is judged by the policy like any partner. A certificate naming
/// only our own domains, or hosts under them, is the inside's (an internal
/// pool talking mutual TLS).
pub fn speaks_for_inside(policy: &PolicyConfig, own_domains: &[String], origin: &Origin) -> bool {
    let ours = |name: &str| {
        own_domains.iter().any(|d| {
            name.eq_ignore_ascii_case(d)
                || name.len() > d.len()
                    && name.as_bytes()[name.len() - d.len() - 1] == b'.'
                    && name[name.len() - d.len()..].eq_ignore_ascii_case(d)
        })
    };
    policy.is_trusted(origin.source.ip())
        && origin
            .peer
            .as_ref()
            .is_none_or(|peer| peer.domains.iter().all(|d| ours(d)))
}

/// The name a request's outside peer is reached by: the domain (or, for a
/// public provider's users, the provider's edge) its certificate proves.
/// None when the certificate does not prove it.
pub fn partner_of(policy: &PolicyConfig, origin: &Origin, from_domain: &str) -> Option<Arc<str>> {
    let peer = origin.peer.as_ref()?;
    let route = policy.route_to(from_domain);
    peer.covers(&route.verify).then(|| route.verify.into())
}

/// The host part of a SIP URI's address of record (empty when it has none).
pub fn domain_of(uri: &str) -> String {
    porchlight_presence::aor(uri)
        .and_then(|a| a.rsplit('@').next().map(str::to_owned))
        .unwrap_or_default()
}

impl Edge {
    /// The user part of our Record-Route entries for a dialog joining
    /// `side` with the outside `partner`.
    pub fn route_token(&self, call_id: &str, side: DialogSide, partner: &str) -> String {
        let prefix = side.prefix();
        format!(
            "{prefix}{partner}-{}",
            mac(&self.secret, call_id, side, partner)
        )
    }

    /// Checks a token from a Route entry; its side and partner, if valid.
    pub(crate) fn check_token<'t>(
        &self,
        call_id: &str,
        token: &'t str,
    ) -> Option<(DialogSide, &'t str)> {
        let (side, rest) = [DialogSide::Inside, DialogSide::Endpoint]
            .into_iter()
            .find_map(|side| Some((side, token.strip_prefix(side.prefix())?)))?;
        let (partner, m) = rest.rsplit_once('-')?;
        (mac(&self.secret, call_id, side, partner) == m).then_some((side, partner))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use porchlight_link::{IdentitySource, PeerIdentity};

    fn policy() -> PolicyConfig {
        toml::from_str(r#"edge = { trusted_networks = ["10.0.0.0/8"] }"#).unwrap()
    }

    /// A request's origin at `source`, over mutual TLS with a certificate
    /// proving `peer` when there is one (for the router's tests too).
    pub(crate) fn origin_at(source: &str, peer: Option<&str>) -> Origin {
        Origin {
            protocol: if peer.is_some() {
                Protocol::Tls
            } else {
                Protocol::Udp
            },
            source: source.parse().unwrap(),
            local: "10.0.0.2:5061".parse().unwrap(),
            connection: None,
            peer: peer.map(|d| {
                Arc::new(PeerIdentity {
                    domains: vec![d.to_owned()],
                    source: IdentitySource::SanDns,
                    not_after: 4_102_444_800,
                })
            }),
        }
    }

    #[test]
    fn a_certificate_outranks_a_trusted_address() {
        let inside = |peer| origin_at("10.0.0.7:40000", peer);
        let own = ["contoso.com".to_owned()];
        assert!(speaks_for_inside(&policy(), &own, &inside(None)));
        assert!(
            !speaks_for_inside(&policy(), &own, &inside(Some("fabrikam.com"))),
            "a partner's proxy on the inside network is the partner"
        );
        assert!(!speaks_for_inside(
            &policy(),
            &own,
            &inside(Some("evilcontoso.com"))
        ));
        assert!(speaks_for_inside(
            &policy(),
            &own,
            &inside(Some("pool.contoso.com"))
        ));
        assert!(!speaks_for_inside(
            &policy(),
            &own,
            &origin_at("192.0.2.9:40000", None)
        ));
    }

    #[test]
    fn a_token_binds_its_side_partner_and_call_id() {
        let edge = Edge {
            internal: None,
            secret: [7; 32],
        };
        let token = edge.route_token("dialog-1", DialogSide::Inside, "fabrikam.com");
        assert_eq!(
            edge.check_token("dialog-1", &token),
            Some((DialogSide::Inside, "fabrikam.com"))
        );
        assert_eq!(edge.check_token("dialog-2", &token), None);
        assert_eq!(
            edge.check_token("dialog-1", &token.replace("rr-", "ep-")),
            None
        );
        let other = Edge {
            internal: None,
            secret: [8; 32],
        };
        assert_eq!(other.check_token("dialog-1", &token), None);
    }
}
