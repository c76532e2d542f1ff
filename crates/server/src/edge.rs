//! Edge mode: which requests this node proxies rather than answers, and
//! where they go — as pure functions of the request, how it arrived and the
//! node's names.
//!
//! Requests for our domains that no endpoint serves are proxied statefully
//! to the internal next hop (RFC 3261 §16) with this node record-routed
//! twice, once facing each side, so the dialog's later requests pass here
//! too. Each Record-Route entry carries a token: the connection the dialog's
//! outside peer used (so requests from the inside reuse that mutual-TLS
//! connection) and a keyed hash of the Call-ID, so only dialogs this node
//! set up can be routed through it — nothing is relayed for strangers.

use std::net::{IpAddr, SocketAddr};

use porchlight_sip::{Answer, Message, NameAddr, Uri};
use porchlight_transport::{ConnectionId, Protocol, Target};
use sha2::{Digest, Sha256};

use crate::uas::LocalNames;

/// Where a request that this node will not answer itself goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Not proxied: the node's own services answer it.
    Local,
    /// Proxy it.
    Forward(Forward),
    /// Refuse it with this answer.
    Refuse(Answer),
}

/// A proxying decision.
#[derive(Debug, PartialEq, Eq)]
pub struct Forward {
    /// Where the forwarded request goes.
    pub target: Target,
    /// Our Route entries removed from the top (§16.4).
    pub consumed_routes: usize,
    /// True for a new request entering from outside: policy decides it,
    /// and the node record-routes and stamps the trust header.
    pub entering: bool,
}

/// Parses a SIP URI naming an address (the internal next hop, a Route
/// entry, a Contact): IP literal, port, `transport` parameter.
pub fn address_of(uri: &str) -> Option<(Protocol, SocketAddr)> {
    let Ok(Uri::Sip(sip, _)) = Uri::parse(uri) else {
        return None;
    };
    let ip: IpAddr = sip.host.ip()?;
    let protocol = match sip.param("transport").flatten() {
        Some(t) if t.eq_ignore_ascii_case("tcp") => Protocol::Tcp,
        Some(t) if t.eq_ignore_ascii_case("tls") => Protocol::Tls,
        _ if sip.secure => Protocol::Tls,
        _ => Protocol::Udp,
    };
    let default_port = if protocol == Protocol::Tls {
        5061
    } else {
        5060
    };
    Some((
        protocol,
        SocketAddr::new(ip, sip.port.unwrap_or(default_port)),
    ))
}

/// The keyed hash that binds a Record-Route token to one dialog.
fn mac(secret: &[u8; 32], call_id: &str, connection: u64) -> String {
    let mut h = Sha256::new();
    h.update(secret);
    h.update(call_id.as_bytes());
    h.update(connection.to_be_bytes());
    let digest = h.finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The user part of our Record-Route entries for a dialog whose outside
/// peer is on `connection` (0 for none).
pub fn route_token(secret: &[u8; 32], call_id: &str, connection: Option<ConnectionId>) -> String {
    let c = connection.map_or(0, |c| c.0);
    format!("pl-{c}-{}", mac(secret, call_id, c))
}

/// Checks a token from a Route entry; the connection it names, if valid.
fn check_token(secret: &[u8; 32], call_id: &str, token: &str) -> Option<Option<ConnectionId>> {
    let rest = token.strip_prefix("pl-")?;
    let (c, m) = rest.split_once('-')?;
    let c: u64 = c.parse().ok()?;
    (mac(secret, call_id, c) == m).then_some((c != 0).then_some(ConnectionId(c)))
}

/// Decides whether `request` is proxied and where to (the caller has
/// validated it). `trusted`: it came from a trusted network (the inside);
/// `is_endpoint`: its Request-URI is one of our endpoints.
pub fn route(
    request: &Message,
    local: &LocalNames,
    internal: Option<(Protocol, SocketAddr)>,
    trusted: bool,
    secret: &[u8; 32],
    is_endpoint: bool,
) -> Route {
    let method = request.method().unwrap_or_default();
    // Our own Route entries on top: a dialog this node record-routed.
    let mut consumed = 0;
    let mut token = None;
    for entry in request.routes() {
        let Ok(entry) = entry else { break };
        let Uri::Sip(sip, _) = &entry.uri else { break };
        if !local.is_local(sip) || sip.param("lr").is_none() {
            break;
        }
        consumed += 1;
        if token.is_none() {
            token = sip.user.filter(|u| u.starts_with("pl-")).map(str::to_owned);
        }
    }
    // Our entry without a token is a preloaded route (a client using this
    // node as its outbound proxy): consumed, then the request is judged as
    // if it named no route — relaying onward is for the inside only.
    if consumed > 0 && token.is_none() {
        if request.routes().nth(consumed).is_some() && !trusted {
            return Route::Refuse(Answer::new(403, "Forbidden (relaying is not permitted)"));
        }
    } else if consumed > 0 {
        let call_id = request.call_id().unwrap_or_default();
        let Some(flow) = token
            .as_deref()
            .and_then(|t| check_token(secret, call_id, t))
        else {
            return Route::Refuse(Answer::new(403, "Forbidden (not a dialog of this edge)"));
        };
        // The next hop: the next Route entry, else the Request-URI.
        let next = request
            .routes()
            .nth(consumed)
            .and_then(Result::ok)
            .map(|n: NameAddr<'_>| n.uri.as_str().to_owned())
            .or_else(|| request.request_uri().map(str::to_owned))
            .unwrap_or_default();
        // From the inside toward the outside peer: its own connection.
        if let (true, Some(connection)) = (trusted, flow) {
            return Route::Forward(Forward {
                target: Target::Connection(connection),
                consumed_routes: consumed,
                entering: false,
            });
        }
        return match address_of(&next) {
            Some((protocol, addr)) => Route::Forward(Forward {
                target: Target::Address {
                    protocol,
                    addr,
                    domain: None,
                },
                consumed_routes: consumed,
                entering: false,
            }),
            None => Route::Refuse(Answer::new(
                404,
                "Not Found (the dialog's next hop is not an address)",
            )),
        };
    }
    let Some((protocol, addr)) = internal else {
        return Route::Local;
    };
    let Ok(Uri::Sip(uri, _)) = Uri::parse(request.request_uri().unwrap_or_default()) else {
        return Route::Local;
    };
    // New requests for our domains that no endpoint serves go inside; the
    // node's own methods (presence, registration, OPTIONS to the node
    // itself) stay here. ACK and CANCEL follow their INVITE elsewhere.
    let stays = matches!(
        method,
        "REGISTER" | "PUBLISH" | "SERVICE" | "ACK" | "CANCEL"
    ) || (method == "OPTIONS" && uri.user.is_none());
    if !local.is_local(&uri)
        || is_endpoint
        || stays
        || request.to().is_ok_and(|to| to.tag().is_some())
    {
        return Route::Local;
    }
    Route::Forward(Forward {
        target: Target::Address {
            protocol,
            addr,
            domain: None,
        },
        consumed_routes: consumed,
        entering: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use porchlight_sip::{Framing, Limits};

    const SECRET: [u8; 32] = [7; 32];

    fn local() -> LocalNames {
        LocalNames {
            hosts: vec!["contoso.com".into()],
            addresses: vec!["10.0.0.2".parse().unwrap()],
        }
    }

    fn request(method: &str, uri: &str, extra: &str) -> Message {
        let text = format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/TLS edge.fabrikam.com;branch=z9hG4bK1\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@fabrikam.com>;tag=a\r\nTo: <{uri}>\r\n\
             Call-ID: dialog-1\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        Message::parse(Bytes::from(text), Framing::Stream, &Limits::default()).unwrap()
    }

    const INSIDE: Option<(Protocol, SocketAddr)> = Some((
        Protocol::Udp,
        SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 5)), 5060),
    ));

    #[test]
    fn new_requests_for_people_behind_the_edge_go_inside_and_endpoints_stay() {
        let invite = request("INVITE", "sip:bob@contoso.com", "");
        let Route::Forward(hop) = route(&invite, &local(), INSIDE, false, &SECRET, false) else {
            panic!("not forwarded");
        };
        assert!(hop.entering);
        assert_eq!(hop.consumed_routes, 0);
        assert_eq!(
            route(&invite, &local(), INSIDE, false, &SECRET, true),
            Route::Local
        );
        assert_eq!(
            route(&invite, &local(), None, false, &SECRET, false),
            Route::Local
        );
        let register = request("REGISTER", "sip:contoso.com", "");
        assert_eq!(
            route(&register, &local(), INSIDE, false, &SECRET, false),
            Route::Local
        );
        let foreign = request("INVITE", "sip:carol@fabrikam.com", "");
        assert_eq!(
            route(&foreign, &local(), INSIDE, true, &SECRET, false),
            Route::Local
        );
    }

    #[test]
    fn dialog_requests_need_a_token_this_node_issued() {
        let token = route_token(&SECRET, "dialog-1", Some(ConnectionId(42)));
        let routes = format!(
            "Route: <sip:{token}@10.0.0.2;transport=udp;lr>, <sip:{token}@10.0.0.2:5061;transport=tls;lr>\r\n"
        );
        // From the inside: over the outside peer's own connection.
        let bye = request("BYE", "sip:alice@192.0.2.9:5061;transport=tls", &routes);
        assert_eq!(
            route(&bye, &local(), INSIDE, true, &SECRET, false),
            Route::Forward(Forward {
                target: Target::Connection(ConnectionId(42)),
                consumed_routes: 2,
                entering: false,
            })
        );
        // From outside: to the Request-URI's address.
        let bye = request("BYE", "sip:bob@10.0.0.5:5070", &routes);
        let Route::Forward(hop) = route(&bye, &local(), INSIDE, false, &SECRET, false) else {
            panic!("not forwarded");
        };
        assert_eq!(
            hop.target,
            Target::Address {
                protocol: Protocol::Udp,
                addr: "10.0.0.5:5070".parse().unwrap(),
                domain: None
            }
        );
        // Another Call-ID, or a forged token: refused.
        let forged = routes.replace(&token[token.len() - 4..], "0000");
        let bye = request("BYE", "sip:bob@10.0.0.5:5070", &forged);
        assert!(matches!(
            route(&bye, &local(), INSIDE, false, &SECRET, false),
            Route::Refuse(a) if a.code == 403
        ));
        let other = route_token(&SECRET, "another-dialog", Some(ConnectionId(42)));
        let bye = request(
            "BYE",
            "sip:bob@10.0.0.5:5070",
            &format!("Route: <sip:{other}@10.0.0.2;lr>\r\n"),
        );
        assert!(matches!(
            route(&bye, &local(), INSIDE, false, &SECRET, false),
            Route::Refuse(_)
        ));
    }

    #[test]
    fn a_preloaded_route_to_this_node_is_consumed_and_relaying_on_stays_inside() {
        let register = request(
            "REGISTER",
            "sip:contoso.com",
            "Route: <sip:10.0.0.2;lr>\r\n",
        );
        assert_eq!(
            route(&register, &local(), INSIDE, false, &SECRET, false),
            Route::Local
        );
        let onward = request(
            "INVITE",
            "sip:bob@contoso.com",
            "Route: <sip:10.0.0.2;lr>, <sip:192.0.2.50;lr>\r\n",
        );
        assert!(matches!(
            route(&onward, &local(), INSIDE, false, &SECRET, false),
            Route::Refuse(a) if a.code == 403
        ));
    }
}
