//! The edge's routing: which requests this node proxies rather than
//! answers, and where they go — as pure functions of the request, how it
//! arrived and the node's configuration.
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
use porchlight_sip::status;
use porchlight_sip::{Answer, Message, Method, NameAddr, Uri};
use sha2::{Digest, Sha256};

use crate::outbound::NextHop;
use crate::uas::LocalNames;

/// Where a request that this node will not answer itself goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Not proxied: the node's own services answer it.
    Local,
    /// Proxy it.
    Forward(Forward),
    /// A call or IM for one of our endpoints: the node delivers it to the
    /// endpoint's app, after consuming this many Route entries of ours.
    Deliver {
        /// Our Route entries removed from the top.
        consumed_routes: usize,
    },
    /// Refuse it with this answer.
    Refuse(Answer),
}

/// What the node knows of a request's parties that routing depends on.
#[derive(Clone, Copy, Debug, Default)]
pub struct Parties {
    /// The Request-URI is one of our endpoints.
    pub to_endpoint: bool,
    /// The sender is one of our endpoints' apps, proven by where the
    /// request came from (the flow it registered over, or its static
    /// target's address): it may call and message out like the inside.
    pub from_endpoint: bool,
}

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
    fn check_token<'t>(&self, call_id: &str, token: &'t str) -> Option<(DialogSide, &'t str)> {
        let (side, rest) = [DialogSide::Inside, DialogSide::Endpoint]
            .into_iter()
            .find_map(|side| Some((side, token.strip_prefix(side.prefix())?)))?;
        let (partner, m) = rest.rsplit_once('-')?;
        (mac(&self.secret, call_id, side, partner) == m).then_some((side, partner))
    }

    /// Decides whether `request` is proxied and where to (the caller has
    /// validated it).
    pub fn route(
        &self,
        request: &Message,
        origin: &Origin,
        local: &LocalNames,
        policy: &PolicyConfig,
        parties: Parties,
    ) -> Route {
        let trusted = speaks_for_inside(policy, &local.hosts, origin);
        let method = request.method_kind().unwrap_or(Method::Other(""));
        // Our own Route entries on top: a dialog this node record-routed.
        let mut consumed = 0;
        let mut token = None;
        for entry in request.routes() {
            let Ok(entry) = entry else { break };
            let Uri::Sip(sip, _) = &entry.uri else { break };
            if !local.is_this_node(sip) || sip.param("lr").is_none() {
                break;
            }
            consumed += 1;
            if token.is_none() {
                token = sip
                    .user
                    .filter(|u| u.starts_with("rr-") || u.starts_with("ep-"))
                    .map(str::to_owned);
            }
        }
        let next_route = || request.routes().nth(consumed).and_then(Result::ok);
        if let Some(token) = token {
            let call_id = request.call_id().unwrap_or_default();
            let Some((side, partner)) = self.check_token(call_id, &token) else {
                return Route::Refuse(Answer::new(
                    status::FORBIDDEN,
                    "Forbidden (not a dialog of this edge)",
                ));
            };
            // Toward our side: the next Route entry, else the Request-URI.
            let onward = || {
                next_route()
                    .map(|n: NameAddr<'_>| n.uri.as_str().to_owned())
                    .or_else(|| request.request_uri().map(str::to_owned))
                    .and_then(|uri| hop_of(&uri))
            };
            let from_partner = origin.peer.as_ref().is_some_and(|p| p.covers(partner));
            let next = match side {
                _ if from_partner => onward(),
                // A partner that proved no name is reached like anyone else.
                _ if partner == NO_PARTNER => onward(),
                // From our side: to the dialog's partner, by name. An app
                // may be anywhere; knowing the token bound to this Call-ID
                // is what shows it is in the dialog.
                DialogSide::Endpoint => Some(NextHop::Partner(partner.into())),
                DialogSide::Inside if trusted => Some(NextHop::Partner(partner.into())),
                DialogSide::Inside => {
                    return Route::Refuse(Answer::new(
                        status::FORBIDDEN,
                        "Forbidden (not a dialog of this peer)",
                    ))
                }
            };
            return match next {
                Some(next) => Route::Forward(Forward {
                    next,
                    consumed_routes: consumed,
                    direction: Direction::InDialog,
                }),
                None => Route::Refuse(Answer::new(
                    status::UNSUPPORTED_URI_SCHEME,
                    "Unsupported URI Scheme",
                )),
            };
        }
        // Our entry without a token is a preloaded route (a client using
        // this node as its outbound proxy): consumed, then the request is
        // judged as if it named no route — relaying onward is for the
        // inside only.
        if consumed > 0 && next_route().is_some() && !trusted {
            return Route::Refuse(Answer::new(
                status::FORBIDDEN,
                "Forbidden (relaying is not permitted)",
            ));
        }
        let Ok(Uri::Sip(uri, _)) = Uri::parse(request.request_uri().unwrap_or_default()) else {
            return Route::Local;
        };
        let in_dialog = request.to().is_ok_and(|to| to.tag().is_some());
        // ACK and CANCEL follow their INVITE; a request with a To tag but
        // no token is not a dialog this node routes.
        if in_dialog || matches!(method, Method::Ack | Method::Cancel) {
            return Route::Local;
        }
        if parties.to_endpoint && matches!(method, Method::Invite | Method::Message) {
            return Route::Deliver {
                consumed_routes: consumed,
            };
        }
        if !local.is_local(&uri) {
            // Only the inside and our endpoints' apps may send out through
            // the edge; the node's own services are not federated.
            let from_endpoint = !trusted && parties.from_endpoint;
            if !(trusted || from_endpoint)
                || matches!(method, Method::Register | Method::Publish | Method::Service)
            {
                return Route::Local;
            }
            let domain = uri.host.to_string().to_ascii_lowercase();
            let partner: Arc<str> = policy.route_to(&domain).verify.into();
            return Route::Forward(Forward {
                next: NextHop::Partner(partner.clone()),
                consumed_routes: consumed,
                direction: Direction::Leaving {
                    domain,
                    partner,
                    from_endpoint,
                },
            });
        }
        let Some((protocol, addr)) = self.internal else {
            return Route::Local;
        };
        // New requests for our domains that no endpoint serves go inside;
        // the node's own methods (presence, registration, OPTIONS to the
        // node itself) stay here.
        let stays = matches!(method, Method::Register | Method::Publish | Method::Service)
            || (method == Method::Options && uri.user.is_none());
        if parties.to_endpoint || stays {
            return Route::Local;
        }
        Route::Forward(Forward {
            next: NextHop::address(protocol, addr),
            consumed_routes: consumed,
            direction: Direction::Entering,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use porchlight_link::{IdentitySource, PeerIdentity};
    use porchlight_sip::{Framing, Limits};

    fn edge(internal: bool) -> Edge {
        Edge {
            internal: internal.then(|| (Protocol::Udp, "10.0.0.5:5060".parse().unwrap())),
            secret: [7; 32],
        }
    }

    fn local() -> LocalNames {
        LocalNames {
            hosts: vec!["contoso.com".into()],
            addresses: vec!["10.0.0.2".parse().unwrap()],
            ports: vec![5060, 5061],
        }
    }

    fn policy() -> PolicyConfig {
        toml::from_str(
            r#"
            edge = { trusted_networks = ["10.0.0.0/8"] }
            [[provider]]
            name = "PublicIM"
            proxy_fqdn = "federation.publicim.example"
            domains = ["publicim.example"]
            "#,
        )
        .unwrap()
    }

    /// A request from the inside (10.0.0.5) or over mutual TLS from a
    /// peer whose certificate proves `peer`.
    fn origin(peer: Option<&str>) -> Origin {
        Origin {
            protocol: if peer.is_some() {
                Protocol::Tls
            } else {
                Protocol::Udp
            },
            source: if peer.is_some() {
                "192.0.2.9:40000"
            } else {
                "10.0.0.5:5060"
            }
            .parse()
            .unwrap(),
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
        let from_inside = |peer: Option<&str>| Origin {
            source: "10.0.0.7:40000".parse().unwrap(),
            ..origin(peer)
        };
        let own = ["contoso.com".to_owned()];
        assert!(speaks_for_inside(&policy(), &own, &from_inside(None)));
        assert!(
            !speaks_for_inside(&policy(), &own, &from_inside(Some("fabrikam.com"))),
            "a partner's proxy on the inside network is the partner"
        );
        assert!(!speaks_for_inside(
            &policy(),
            &own,
            &from_inside(Some("evilcontoso.com"))
        ));
        assert!(speaks_for_inside(
            &policy(),
            &own,
            &from_inside(Some("pool.contoso.com"))
        ));
        let outside = Origin {
            source: "192.0.2.9:40000".parse().unwrap(),
            ..origin(None)
        };
        assert!(!speaks_for_inside(&policy(), &own, &outside));
        // The router follows the same rule: the partner's request for
        // another domain is not relayed, though it came from the inside.
        let out = request("MESSAGE", "sip:carol@northwind.example", "");
        assert_eq!(
            route(
                &edge(false),
                &out,
                &from_inside(Some("fabrikam.com")),
                false
            ),
            Route::Local
        );
        assert!(matches!(
            route(&edge(false), &out, &from_inside(None), false),
            Route::Forward(_)
        ));
    }

    fn request(method: &str, uri: &str, extra: &str) -> Message {
        let text = format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/TLS edge.fabrikam.com;branch=z9hG4bK1\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@fabrikam.com>;tag=a\r\nTo: <{uri}>\r\n\
             Call-ID: dialog-1\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        Message::parse(Bytes::from(text), Framing::Stream, &Limits::default()).unwrap()
    }

    fn route(edge: &Edge, request: &Message, origin: &Origin, to_endpoint: bool) -> Route {
        let parties = Parties {
            to_endpoint,
            from_endpoint: false,
        };
        edge.route(request, origin, &local(), &policy(), parties)
    }

    #[test]
    fn new_requests_for_people_behind_the_edge_go_inside_and_endpoints_are_served_here() {
        let partner = origin(Some("fabrikam.com"));
        let invite = request("INVITE", "sip:bob@contoso.com", "");
        assert_eq!(
            route(&edge(true), &invite, &partner, false),
            Route::Forward(Forward {
                next: NextHop::address(Protocol::Udp, "10.0.0.5:5060".parse().unwrap()),
                consumed_routes: 0,
                direction: Direction::Entering,
            })
        );
        assert_eq!(
            route(&edge(true), &invite, &partner, true),
            Route::Deliver { consumed_routes: 0 }
        );
        let options = request("OPTIONS", "sip:bob@contoso.com", "");
        assert_eq!(route(&edge(true), &options, &partner, true), Route::Local);
        assert_eq!(route(&edge(false), &invite, &partner, false), Route::Local);
        let register = request("REGISTER", "sip:contoso.com", "");
        assert_eq!(route(&edge(true), &register, &partner, false), Route::Local);
    }

    #[test]
    fn requests_from_the_inside_for_other_domains_leave_through_their_edge() {
        let inside = origin(None);
        let leaving = |uri: &str, partner: &str| {
            let domain = uri.rsplit('@').next().unwrap().to_owned();
            Route::Forward(Forward {
                next: NextHop::Partner(partner.into()),
                consumed_routes: 0,
                direction: Direction::Leaving {
                    domain,
                    partner: partner.into(),
                    from_endpoint: false,
                },
            })
        };
        let invite = request("INVITE", "sip:carol@fabrikam.com", "");
        assert_eq!(
            route(&edge(false), &invite, &inside, false),
            leaving("sip:carol@fabrikam.com", "fabrikam.com"),
            "edge mode is not needed to send out"
        );
        let message = request("MESSAGE", "sip:dave@publicim.example", "");
        assert_eq!(
            route(&edge(true), &message, &inside, false),
            leaving("sip:dave@publicim.example", "federation.publicim.example"),
            "a provider's users are reached through the provider's edge"
        );
        // Not for outsiders, and not the node's own services.
        let outsider = origin(Some("fabrikam.com"));
        assert_eq!(route(&edge(true), &invite, &outsider, false), Route::Local);
        let register = request("REGISTER", "sip:fabrikam.com", "");
        assert_eq!(route(&edge(true), &register, &inside, false), Route::Local);
    }

    #[test]
    fn dialog_requests_need_a_token_this_node_issued_and_follow_its_partner() {
        let edge = edge(true);
        let token = edge.route_token("dialog-1", DialogSide::Inside, "fabrikam.com");
        let routes = format!(
            "Route: <sip:{token}@10.0.0.2;transport=udp;lr>, <sip:{token}@10.0.0.2:5061;transport=tls;lr>\r\n"
        );
        // From the inside: to the partner, by name.
        let bye = request("BYE", "sip:alice@192.0.2.9:5061;transport=tls", &routes);
        assert_eq!(
            route(&edge, &bye, &origin(None), false),
            Route::Forward(Forward {
                next: NextHop::Partner("fabrikam.com".into()),
                consumed_routes: 2,
                direction: Direction::InDialog,
            })
        );
        // From the partner: to the Request-URI's address, or its host name.
        let partner = origin(Some("fabrikam.com"));
        let bye = request("BYE", "sip:bob@10.0.0.5:5070", &routes);
        let Route::Forward(hop) = route(&edge, &bye, &partner, false) else {
            panic!("not forwarded");
        };
        assert_eq!(
            hop.next,
            NextHop::address(Protocol::Udp, "10.0.0.5:5070".parse().unwrap())
        );
        let bye = request("BYE", "sip:bob@pc7.corp.example;transport=tcp", &routes);
        let Route::Forward(hop) = route(&edge, &bye, &partner, false) else {
            panic!("not forwarded");
        };
        assert_eq!(
            hop.next,
            NextHop::Host {
                protocol: Protocol::Tcp,
                uri: "sip:bob@pc7.corp.example;transport=tcp".into()
            }
        );
        // Another peer, a forged token, another Call-ID: refused.
        let refused = |r: Route| matches!(r, Route::Refuse(a) if a.code == 403);
        let stranger = origin(Some("other.example"));
        assert!(refused(route(&edge, &bye, &stranger, false)));
        let forged = routes.replace(&token[token.len() - 4..], "0000");
        let bye = request("BYE", "sip:bob@10.0.0.5:5070", &forged);
        assert!(refused(route(&edge, &bye, &partner, false)));
        let other = edge.route_token("another-dialog", DialogSide::Inside, "fabrikam.com");
        let bye = request(
            "BYE",
            "sip:bob@10.0.0.5:5070",
            &format!("Route: <sip:{other}@10.0.0.2;lr>\r\n"),
        );
        assert!(refused(route(&edge, &bye, &partner, false)));
    }

    #[test]
    fn calls_and_im_for_endpoints_are_delivered_and_their_apps_may_send_out() {
        let partner = origin(Some("fabrikam.com"));
        for method in ["INVITE", "MESSAGE"] {
            let request = request(method, "sip:ivr@contoso.com", "");
            for internal in [true, false] {
                assert_eq!(
                    route(&edge(internal), &request, &partner, true),
                    Route::Deliver { consumed_routes: 0 },
                    "{method}, edge mode {internal}"
                );
            }
        }
        // The node's own services for endpoints stay here.
        let subscribe = request("SUBSCRIBE", "sip:ivr@contoso.com", "");
        assert_eq!(route(&edge(true), &subscribe, &partner, true), Route::Local);
        // An app (not on a trusted network) calling out: only when the
        // node vouches that the request comes from the endpoint.
        let app = Origin {
            source: "192.0.2.77:5070".parse().unwrap(),
            ..origin(None)
        };
        let invite = request("INVITE", "sip:carol@fabrikam.com", "");
        assert_eq!(route(&edge(false), &invite, &app, false), Route::Local);
        let parties = Parties {
            to_endpoint: false,
            from_endpoint: true,
        };
        let Route::Forward(out) = edge(false).route(&invite, &app, &local(), &policy(), parties)
        else {
            panic!("not forwarded");
        };
        assert_eq!(
            out.direction,
            Direction::Leaving {
                domain: "fabrikam.com".into(),
                partner: "fabrikam.com".into(),
                from_endpoint: true
            }
        );
    }

    #[test]
    fn an_endpoint_dialog_goes_to_its_partner_from_the_app_and_to_the_app_from_the_partner() {
        let edge = edge(false);
        let token = edge.route_token("dialog-1", DialogSide::Endpoint, "fabrikam.com");
        let routes = format!("Route: <sip:{token}@10.0.0.2;lr>\r\n");
        // From the app, wherever it runs: to the partner.
        let app = Origin {
            source: "192.0.2.77:5070".parse().unwrap(),
            ..origin(None)
        };
        let bye = request("BYE", "sip:alice@192.0.2.9:5061;transport=tls", &routes);
        let Route::Forward(hop) = route(&edge, &bye, &app, false) else {
            panic!("not forwarded");
        };
        assert_eq!(hop.next, NextHop::Partner("fabrikam.com".into()));
        // Another proxy's entry on one of our addresses, at its own port,
        // is not ours to consume.
        let shared_host = routes.replace("lr>", "lr>, <sip:10.0.0.2:7000;lr>");
        let bye = request("BYE", "sip:alice@192.0.2.9:5061", &shared_host);
        let Route::Forward(hop) = route(&edge, &bye, &app, false) else {
            panic!("not forwarded");
        };
        assert_eq!(hop.consumed_routes, 1);
        // From the partner: to the app's contact.
        let bye = request("BYE", "sip:ivr@192.0.2.77:5070", &routes);
        let Route::Forward(hop) = route(&edge, &bye, &origin(Some("fabrikam.com")), false) else {
            panic!("not forwarded");
        };
        assert_eq!(
            hop.next,
            NextHop::address(Protocol::Udp, "192.0.2.77:5070".parse().unwrap())
        );
        // The same token read as an inside dialog's is forged.
        let forged = routes.replace("ep-", "rr-");
        let bye = request("BYE", "sip:ivr@192.0.2.77:5070", &forged);
        assert!(matches!(
            route(&edge, &bye, &origin(None), false),
            Route::Refuse(a) if a.code == 403
        ));
        // A dialog whose caller proved no name: both ways by the URI.
        let token = edge.route_token("dialog-1", DialogSide::Endpoint, NO_PARTNER);
        let routes = format!("Route: <sip:{token}@10.0.0.2;lr>\r\n");
        let bye = request("BYE", "sip:bob@10.0.0.5:5090", &routes);
        let Route::Forward(hop) = route(&edge, &bye, &app, false) else {
            panic!("not forwarded");
        };
        assert_eq!(
            hop.next,
            NextHop::address(Protocol::Udp, "10.0.0.5:5090".parse().unwrap())
        );
    }

    #[test]
    fn a_preloaded_route_to_this_node_is_consumed_and_relaying_on_stays_inside() {
        let outsider = origin(Some("fabrikam.com"));
        let register = request(
            "REGISTER",
            "sip:contoso.com",
            "Route: <sip:10.0.0.2;lr>\r\n",
        );
        assert_eq!(
            route(&edge(true), &register, &outsider, false),
            Route::Local
        );
        let onward = request(
            "INVITE",
            "sip:bob@contoso.com",
            "Route: <sip:10.0.0.2;lr>, <sip:192.0.2.50;lr>\r\n",
        );
        assert!(matches!(
            route(&edge(true), &onward, &outsider, false),
            Route::Refuse(a) if a.code == 403
        ));
    }
}
