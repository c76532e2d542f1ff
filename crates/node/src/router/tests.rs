//! The router as a table: a request, who sent it and what the node's state
//! says of it, and where it must go. Each row names the rule it checks.

use super::*;
use crate::edge::tests::origin_at;
use bytes::Bytes;
use porchlight_sip::{Framing, Limits};

/// The node of these tests: contoso.com at 10.0.0.2, the inside on
/// 10.0.0.0/8, a public provider reached through its own edge.
struct Node {
    local: LocalNames,
    edge: Edge,
    policy: PolicyConfig,
    own_domains: Vec<String>,
    fenced: bool,
}

impl Node {
    /// In edge mode (people behind the edge at 10.0.0.5) or not; missing
    /// endpoints hidden or not.
    fn new(edge_mode: bool, hide_missing: bool) -> Node {
        let policy = format!(
            r#"
            edge = {{ trusted_networks = ["10.0.0.0/8"], hide_missing_endpoints = {hide_missing} }}
            [[provider]]
            name = "PublicIM"
            proxy_fqdn = "federation.publicim.example"
            domains = ["publicim.example"]
            "#
        );
        Node {
            local: LocalNames {
                hosts: vec!["contoso.com".into()],
                addresses: vec!["10.0.0.2".parse().unwrap()],
                ports: vec![5060, 5061],
            },
            edge: Edge {
                internal: edge_mode.then(|| (Protocol::Udp, "10.0.0.5:5060".parse().unwrap())),
                secret: [7; 32],
            },
            policy: toml::from_str(&policy).unwrap(),
            own_domains: vec!["contoso.com".into()],
            fenced: false,
        }
    }

    fn ctx(&self) -> RouteCtx<'_> {
        RouteCtx {
            local: &self.local,
            edge: &self.edge,
            policy: &self.policy,
            own_domains: &self.own_domains,
            fenced: self.fenced,
        }
    }

    /// Where `request` from `from` goes, with the node's state as `state`
    /// sets it on the facts.
    fn route(&self, request: &Message, from: &Origin, state: impl Fn(&mut Facts<'_>)) -> Dispatch {
        let ctx = self.ctx();
        let mut facts = Facts::read(request, Source::of(from, &ctx), &ctx);
        state(&mut facts);
        classify(&facts, &ctx)
    }

    fn token(&self, side: DialogSide, partner: &str) -> String {
        self.edge.route_token("dialog-1", side, partner)
    }
}

/// No state: no endpoint, session, proxied INVITE or holder.
fn nothing(_: &mut Facts<'_>) {}

/// The Request-URI is endpoint 3.
fn endpoint(facts: &mut Facts<'_>) {
    facts.endpoint = Some(3);
}

/// A new request; `extra` headers (a Max-Forwards there replaces 70).
fn request(method: &str, uri: &str, extra: &str) -> Message {
    let hops = if extra.contains("Max-Forwards") {
        ""
    } else {
        "Max-Forwards: 70\r\n"
    };
    let text = format!(
        "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/TLS edge.fabrikam.com;branch=z9hG4bK1\r\n\
         {hops}From: <sip:alice@fabrikam.com>;tag=a\r\nTo: <{uri}>\r\n\
         Call-ID: dialog-1\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n"
    );
    Message::parse(Bytes::from(text), Framing::Stream, &Limits::default()).unwrap()
}

/// A request in a dialog: its To has a tag.
fn in_dialog(method: &str, uri: &str) -> Message {
    let text = format!(
        "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/TLS edge.fabrikam.com;branch=z9hG4bK1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@fabrikam.com>;tag=a\r\nTo: <{uri}>;tag=t\r\n\
         Call-ID: dialog-1\r\nCSeq: 2 {method}\r\nContent-Length: 0\r\n\r\n"
    );
    Message::parse(Bytes::from(text), Framing::Stream, &Limits::default()).unwrap()
}

fn with_body(method: &str, uri: &str, content_type: &str, body: &str) -> Message {
    let text = format!(
        "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/TLS edge.fabrikam.com;branch=z9hG4bK1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@fabrikam.com>;tag=a\r\nTo: <{uri}>\r\n\
         Call-ID: dialog-1\r\nCSeq: 1 {method}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    Message::parse(Bytes::from(text), Framing::Stream, &Limits::default()).unwrap()
}

/// The inside: a trusted address, no certificate.
fn inside() -> Origin {
    origin_at("10.0.0.5:5060", None)
}

/// A partner's edge over mutual TLS.
fn partner(domain: &str) -> Origin {
    origin_at("192.0.2.9:40000", Some(domain))
}

/// Anyone on the internet, without a certificate.
fn stranger() -> Origin {
    origin_at("198.51.100.7:5060", None)
}

/// An endpoint's app, not on a trusted network.
fn app() -> Origin {
    origin_at("192.0.2.77:5070", None)
}

fn code(dispatch: &Dispatch) -> Option<u16> {
    match dispatch {
        Dispatch::Answer(answer) => Some(answer.code),
        _ => None,
    }
}

fn leaving(domain: &str, partner: &str, from_endpoint: bool) -> Dispatch {
    Dispatch::Proxy(Forward {
        next: NextHop::Partner(partner.into()),
        consumed_routes: 0,
        direction: Direction::Leaving {
            domain: domain.into(),
            partner: partner.into(),
            from_endpoint,
        },
    })
}

fn entering() -> Dispatch {
    Dispatch::Proxy(Forward {
        next: NextHop::address(Protocol::Udp, "10.0.0.5:5060".parse().unwrap()),
        consumed_routes: 0,
        direction: Direction::Entering,
    })
}

#[test]
fn the_answers_a_node_gives_as_a_user_agent_server_come_in_rfc_3261_order() {
    let node = Node::new(false, false);
    let from = partner("fabrikam.com");
    // (what, request, expected code or service)
    let cases: Vec<(&str, Message, Result<u16, Service>)> = vec![
        (
            "not a SIP URI: 416",
            request("OPTIONS", "tel:+15550100", ""),
            Ok(416),
        ),
        (
            "another domain, hops left: relaying refused",
            request("OPTIONS", "sip:carol@northwind.example", ""),
            Ok(403),
        ),
        (
            "another domain, no hops left: 483 first",
            request(
                "OPTIONS",
                "sip:carol@northwind.example",
                "Max-Forwards: 0\r\n",
            ),
            Ok(483),
        ),
        (
            "an OPTIONS to the node: 200",
            request("OPTIONS", "sip:contoso.com", ""),
            Ok(200),
        ),
        (
            "an unknown method: 501",
            request("FROB", "sip:contoso.com", ""),
            Ok(501),
        ),
        (
            "a call for nobody here: 404",
            request("INVITE", "sip:nobody@contoso.com", ""),
            Ok(404),
        ),
        (
            "a BYE no dialog here holds: 481",
            request("BYE", "sip:nobody@contoso.com", ""),
            Ok(481),
        ),
        (
            "a CANCEL for nothing proxied: 481",
            request("CANCEL", "sip:nobody@contoso.com", ""),
            Ok(481),
        ),
        (
            "an unsupported extension: 420",
            request("SUBSCRIBE", "sip:ivr@contoso.com", "Require: 100rel\r\n"),
            Ok(420),
        ),
        (
            "a supported extension: taken",
            request("SUBSCRIBE", "sip:ivr@contoso.com", "Require: eventlist\r\n"),
            Err(Service::Subscribe),
        ),
        (
            "a body of an unknown type: 415",
            with_body("PUBLISH", "sip:ivr@contoso.com", "text/html", "<p>"),
            Ok(415),
        ),
        (
            "PIDF: taken",
            with_body(
                "PUBLISH",
                "sip:ivr@contoso.com",
                "application/pidf+xml",
                "<presence/>",
            ),
            Err(Service::Publish),
        ),
        (
            "REGISTER",
            request("REGISTER", "sip:contoso.com", ""),
            Err(Service::Register),
        ),
        (
            "SERVICE",
            request("SERVICE", "sip:ivr@contoso.com", ""),
            Err(Service::Service),
        ),
        (
            "SUBSCRIBE",
            request("SUBSCRIBE", "sip:ivr@contoso.com", ""),
            Err(Service::Subscribe),
        ),
    ];
    for (what, request, expected) in cases {
        // ivr@contoso.com is an endpoint; nobody@ is not.
        let names_ivr = request.request_uri().is_some_and(|u| u.contains("ivr"));
        let got = node.route(&request, &from, if names_ivr { endpoint } else { nothing });
        match expected {
            Ok(c) => assert_eq!(code(&got), Some(c), "{what}: {got:?}"),
            Err(service) => assert_eq!(got, Dispatch::Service(service), "{what}"),
        }
    }
    let ack = request("ACK", "sip:contoso.com", "");
    assert_eq!(node.route(&ack, &from, nothing), Dispatch::Absorb);
}

#[test]
fn an_invalid_request_is_answered_before_anything_else_looks_at_it() {
    let node = Node::new(true, true);
    // No CSeq: invalid, whatever the node's state says of it.
    let text = "INVITE sip:ivr@contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK1\r\n\
                Max-Forwards: 70\r\nFrom: <sip:a@fabrikam.com>;tag=a\r\nTo: <sip:ivr@contoso.com>\r\n\
                Call-ID: x\r\nContent-Length: 0\r\n\r\n";
    let bad = Message::parse(Bytes::from(text), Framing::Stream, &Limits::default()).unwrap();
    let got = node.route(&bad, &partner("fabrikam.com"), |f| {
        endpoint(f);
        f.in_session = true;
    });
    assert_eq!(code(&got), Some(400), "{got:?}");
}

#[test]
fn a_cancel_or_a_session_s_request_goes_to_what_is_under_way() {
    let node = Node::new(true, false);
    let cancel = request("CANCEL", "sip:bob@contoso.com", "");
    assert_eq!(
        node.route(&cancel, &partner("fabrikam.com"), |f| f.cancels_proxied =
            true),
        Dispatch::Cancel
    );
    let message = request("MESSAGE", "sip:ivr@contoso.com", "");
    assert_eq!(
        node.route(&message, &partner("fabrikam.com"), |f| {
            endpoint(f);
            f.in_session = true;
        }),
        Dispatch::InSession,
        "a session's text goes to the session, not to a new delivery"
    );
}

#[test]
fn new_requests_for_people_behind_the_edge_go_inside_and_endpoints_are_served_here() {
    let edge_mode = Node::new(true, false);
    let alone = Node::new(false, false);
    let from = partner("fabrikam.com");
    let invite = request("INVITE", "sip:bob@contoso.com", "");
    assert_eq!(edge_mode.route(&invite, &from, nothing), entering());
    assert_eq!(
        edge_mode.route(&invite, &from, endpoint),
        Dispatch::Deliver {
            endpoint: 3,
            consumed_routes: 0
        }
    );
    assert_eq!(code(&alone.route(&invite, &from, nothing)), Some(404));
    // The node's own methods stay here, as does an OPTIONS to the node.
    let options = request("OPTIONS", "sip:bob@contoso.com", "");
    assert_eq!(code(&edge_mode.route(&options, &from, endpoint)), Some(200));
    let ping = request("OPTIONS", "sip:contoso.com", "");
    assert_eq!(code(&edge_mode.route(&ping, &from, nothing)), Some(200));
    assert_eq!(edge_mode.route(&options, &from, nothing), entering());
    let register = request("REGISTER", "sip:contoso.com", "");
    assert_eq!(
        edge_mode.route(&register, &from, nothing),
        Dispatch::Service(Service::Register)
    );
    // A subscription to someone behind the edge is theirs to answer.
    let subscribe = request("SUBSCRIBE", "sip:bob@contoso.com", "");
    assert_eq!(edge_mode.route(&subscribe, &from, nothing), entering());
}

#[test]
fn requests_from_the_inside_for_other_domains_leave_through_their_edge() {
    let node = Node::new(false, false);
    let invite = request("INVITE", "sip:carol@fabrikam.com", "");
    assert_eq!(
        node.route(&invite, &inside(), nothing),
        leaving("fabrikam.com", "fabrikam.com", false),
        "edge mode is not needed to send out"
    );
    let message = request("MESSAGE", "sip:dave@publicim.example", "");
    assert_eq!(
        Node::new(true, false).route(&message, &inside(), nothing),
        leaving("publicim.example", "federation.publicim.example", false),
        "a provider's users are reached through the provider's edge"
    );
    // Not for outsiders, and not the node's own services.
    for outsider in [partner("fabrikam.com"), stranger()] {
        assert_eq!(
            code(&node.route(&invite, &outsider, nothing)),
            Some(403),
            "{outsider:?}"
        );
    }
    let register = request("REGISTER", "sip:fabrikam.com", "");
    assert_eq!(code(&node.route(&register, &inside(), nothing)), Some(403));
}

#[test]
fn a_certificate_outranks_a_trusted_address() {
    let node = Node::new(false, false);
    let out = request("MESSAGE", "sip:carol@northwind.example", "");
    // A partner's proxy on the inside network is the partner: not relayed.
    let partner_inside = origin_at("10.0.0.7:40000", Some("fabrikam.com"));
    assert_eq!(code(&node.route(&out, &partner_inside, nothing)), Some(403));
    // A pool of our own over mutual TLS is the inside.
    let pool = origin_at("10.0.0.7:40000", Some("pool.contoso.com"));
    assert!(matches!(
        node.route(&out, &pool, nothing),
        Dispatch::Proxy(Forward {
            direction: Direction::Leaving { .. },
            ..
        })
    ));
}

#[test]
fn calls_and_im_for_endpoints_are_delivered_and_their_apps_may_send_out() {
    let from = partner("fabrikam.com");
    for method in ["INVITE", "MESSAGE"] {
        let request = request(method, "sip:ivr@contoso.com", "");
        for edge_mode in [true, false] {
            assert_eq!(
                Node::new(edge_mode, false).route(&request, &from, endpoint),
                Dispatch::Deliver {
                    endpoint: 3,
                    consumed_routes: 0
                },
                "{method}, edge mode {edge_mode}"
            );
        }
    }
    let node = Node::new(false, false);
    let subscribe = request("SUBSCRIBE", "sip:ivr@contoso.com", "");
    assert_eq!(
        Node::new(true, false).route(&subscribe, &from, endpoint),
        Dispatch::Service(Service::Subscribe)
    );
    // An app calling out: only when the node vouches that it is the
    // endpoint's (by where it sends from).
    let invite = request("INVITE", "sip:carol@fabrikam.com", "");
    assert_eq!(code(&node.route(&invite, &app(), nothing)), Some(403));
    assert_eq!(
        node.route(&invite, &app(), |f| f.from_endpoint = true),
        leaving("fabrikam.com", "fabrikam.com", true)
    );
}

#[test]
fn dialog_requests_need_a_token_this_node_issued_and_follow_its_partner() {
    let node = Node::new(true, false);
    let token = node.token(DialogSide::Inside, "fabrikam.com");
    let routes = format!(
        "Route: <sip:{token}@10.0.0.2;transport=udp;lr>, <sip:{token}@10.0.0.2:5061;transport=tls;lr>\r\n"
    );
    let in_dialog = |next| {
        Dispatch::Proxy(Forward {
            next,
            consumed_routes: 2,
            direction: Direction::InDialog,
        })
    };
    // From the inside: to the partner, by name.
    let bye = request("BYE", "sip:alice@192.0.2.9:5061;transport=tls", &routes);
    assert_eq!(
        node.route(&bye, &inside(), nothing),
        in_dialog(NextHop::Partner("fabrikam.com".into()))
    );
    // From the partner: to the Request-URI's address, or its host name.
    let from = partner("fabrikam.com");
    let bye = request("BYE", "sip:bob@10.0.0.5:5070", &routes);
    assert_eq!(
        node.route(&bye, &from, nothing),
        in_dialog(NextHop::address(
            Protocol::Udp,
            "10.0.0.5:5070".parse().unwrap()
        ))
    );
    let by_name = request("BYE", "sip:bob@pc7.corp.example;transport=tcp", &routes);
    assert_eq!(
        node.route(&by_name, &from, nothing),
        in_dialog(NextHop::Host {
            protocol: Protocol::Tcp,
            uri: "sip:bob@pc7.corp.example;transport=tcp".into()
        })
    );
    // Another peer, a stranger, a forged token, another Call-ID: refused.
    for other in [partner("other.example"), stranger()] {
        assert_eq!(code(&node.route(&bye, &other, nothing)), Some(403));
    }
    let forged = routes.replace(&token[token.len() - 4..], "0000");
    let bye = request("BYE", "sip:bob@10.0.0.5:5070", &forged);
    assert_eq!(code(&node.route(&bye, &from, nothing)), Some(403));
    let other = node
        .edge
        .route_token("another-dialog", DialogSide::Inside, "fabrikam.com");
    let bye = request(
        "BYE",
        "sip:bob@10.0.0.5:5070",
        &format!("Route: <sip:{other}@10.0.0.2;lr>\r\n"),
    );
    assert_eq!(code(&node.route(&bye, &from, nothing)), Some(403));
    // A valid token whose onward hop is no SIP URI.
    let tel = request("BYE", "tel:+15550100", &routes);
    assert_eq!(code(&node.route(&tel, &from, nothing)), Some(416));
}

#[test]
fn an_endpoint_dialog_goes_to_its_partner_from_the_app_and_to_the_app_from_the_partner() {
    let node = Node::new(false, false);
    let token = node.token(DialogSide::Endpoint, "fabrikam.com");
    let routes = format!("Route: <sip:{token}@10.0.0.2;lr>\r\n");
    let next_of = |dispatch: Dispatch| match dispatch {
        Dispatch::Proxy(forward) => (forward.next, forward.consumed_routes),
        other => panic!("not proxied: {other:?}"),
    };
    // From the app, wherever it runs: to the partner.
    let bye = request("BYE", "sip:alice@192.0.2.9:5061;transport=tls", &routes);
    assert_eq!(
        next_of(node.route(&bye, &app(), nothing)),
        (NextHop::Partner("fabrikam.com".into()), 1)
    );
    // Another proxy's entry on one of our addresses, at its own port, is
    // not ours to consume.
    let shared_host = routes.replace("lr>", "lr>, <sip:10.0.0.2:7000;lr>");
    let bye = request("BYE", "sip:alice@192.0.2.9:5061", &shared_host);
    assert_eq!(next_of(node.route(&bye, &app(), nothing)).1, 1);
    // From the partner: to the app's contact.
    let bye = request("BYE", "sip:ivr@192.0.2.77:5070", &routes);
    assert_eq!(
        next_of(node.route(&bye, &partner("fabrikam.com"), nothing)).0,
        NextHop::address(Protocol::Udp, "192.0.2.77:5070".parse().unwrap())
    );
    // The same token read as an inside dialog's is forged.
    let forged = request(
        "BYE",
        "sip:ivr@192.0.2.77:5070",
        &routes.replace("ep-", "rr-"),
    );
    assert_eq!(code(&node.route(&forged, &inside(), nothing)), Some(403));
    // A dialog whose caller proved no name: both ways by the URI.
    let token = node.token(DialogSide::Endpoint, NO_PARTNER);
    let routes = format!("Route: <sip:{token}@10.0.0.2;lr>\r\n");
    let bye = request("BYE", "sip:bob@10.0.0.5:5090", &routes);
    assert_eq!(
        next_of(node.route(&bye, &app(), nothing)).0,
        NextHop::address(Protocol::Udp, "10.0.0.5:5090".parse().unwrap())
    );
}

#[test]
fn a_preloaded_route_to_this_node_is_consumed_and_relaying_on_stays_inside() {
    let node = Node::new(true, false);
    let from = partner("fabrikam.com");
    let register = request(
        "REGISTER",
        "sip:contoso.com",
        "Route: <sip:10.0.0.2;lr>\r\n",
    );
    assert_eq!(
        node.route(&register, &from, nothing),
        Dispatch::Service(Service::Register)
    );
    let onward = request(
        "INVITE",
        "sip:bob@contoso.com",
        "Route: <sip:10.0.0.2;lr>, <sip:192.0.2.50;lr>\r\n",
    );
    assert_eq!(code(&node.route(&onward, &from, nothing)), Some(403));
    // The inside may use this node as its outbound proxy.
    assert!(matches!(
        node.route(&onward, &inside(), nothing),
        Dispatch::Proxy(_)
    ));
}

#[test]
fn a_missing_endpoint_looks_like_a_refused_one_to_outsiders_only() {
    let hidden = Node::new(false, true);
    let invite = request("INVITE", "sip:nobody@contoso.com", "");
    let subscribe = request("SUBSCRIBE", "sip:nobody@contoso.com", "");
    for request in [&invite, &subscribe] {
        for outsider in [partner("fabrikam.com"), stranger()] {
            assert_eq!(
                code(&hidden.route(request, &outsider, nothing)),
                Some(403),
                "{outsider:?}"
            );
        }
    }
    // The inside is told the truth; an existing endpoint is served.
    assert_eq!(code(&hidden.route(&invite, &inside(), nothing)), Some(404));
    assert_eq!(
        hidden.route(&subscribe, &inside(), nothing),
        Dispatch::Service(Service::Subscribe)
    );
    assert_eq!(
        hidden.route(&subscribe, &stranger(), endpoint),
        Dispatch::Service(Service::Subscribe)
    );
    // As an endpoint's own answer would, the hop count comes first.
    let looping = request("INVITE", "sip:nobody@contoso.com", "Max-Forwards: 0\r\n");
    assert_eq!(
        code(&hidden.route(&looping, &stranger(), nothing)),
        Some(483)
    );
    // A dialog's refresh and a batched subscription name no endpoint in
    // their Request-URI: not hidden.
    let refresh = in_dialog("SUBSCRIBE", "sip:nobody@contoso.com");
    assert_eq!(
        hidden.route(&refresh, &stranger(), nothing),
        Dispatch::Service(Service::Subscribe)
    );
    let batched = with_body(
        "SUBSCRIBE",
        "sip:alice@contoso.com",
        "application/msrtc-adrl-categorylist+xml",
        "<batchSub/>",
    );
    assert_eq!(
        hidden.route(&batched, &stranger(), nothing),
        Dispatch::Service(Service::Subscribe)
    );
    // Not hidden: 404.
    let open = Node::new(false, false);
    assert_eq!(code(&open.route(&invite, &stranger(), nothing)), Some(404));
}

#[test]
fn a_refresh_held_elsewhere_goes_to_its_live_holder_or_waits_for_a_takeover() {
    let node = Node::new(false, false);
    let refresh = in_dialog("SUBSCRIBE", "sip:ivr@contoso.com");
    let holder: SocketAddr = "10.0.0.3:5090".parse().unwrap();
    assert_eq!(
        node.route(&refresh, &partner("fabrikam.com"), |f| {
            endpoint(f);
            f.held_by = Some(Holder::Member(holder));
        }),
        Dispatch::Proxy(Forward {
            next: NextHop::address(Protocol::Tcp, holder),
            consumed_routes: 0,
            direction: Direction::InDialog,
        })
    );
    let away = node.route(&refresh, &partner("fabrikam.com"), |f| {
        endpoint(f);
        f.held_by = Some(Holder::Away);
    });
    let Dispatch::Answer(answer) = away else {
        panic!("not answered: {away:?}");
    };
    assert_eq!(answer.code, 503, "never 481 while the holder may live");
    assert!(answer.headers.contains(&("Retry-After", "5".into())));
    // A fenced node takes no subscription at all.
    let mut fenced = Node::new(false, false);
    fenced.fenced = true;
    assert_eq!(
        code(&fenced.route(&refresh, &partner("fabrikam.com"), endpoint)),
        Some(503)
    );
    // The checks every request gets still come first.
    let odd = request("SUBSCRIBE", "sip:ivr@contoso.com", "Require: 100rel\r\n");
    assert_eq!(
        code(&fenced.route(&odd, &partner("fabrikam.com"), endpoint)),
        Some(420)
    );
}
