//! The stateful proxy core (RFC 3261 §16) on concrete messages: how a
//! request is rewritten for its next hop, how responses go back, CANCEL,
//! and the answers owed when a branch fails.

use std::time::{Duration, Instant};

use bytes::Bytes;
use porchlight_sip::{Framing, HeaderName, Limits, Message};
use porchlight_transaction::proxy::{
    cancel_for, forward, relay_response, Forwarding, ProxyAction, ProxyError, ProxyTable,
};
use porchlight_transaction::{ClientKey, ServerKey};

fn parse(text: &str) -> Message {
    Message::parse(
        Bytes::from(text.replace('\n', "\r\n")),
        Framing::Stream,
        &Limits::default(),
    )
    .unwrap()
}

const INVITE: &str = "INVITE sip:bob@contoso.com SIP/2.0
Via: SIP/2.0/TLS edge.fabrikam.com;branch=z9hG4bKup1
Max-Forwards: 10
Route: <sip:contoso.com;transport=tls;lr>, <sip:10.0.0.1;lr>
Record-Route: <sip:edge.fabrikam.com;transport=tls;lr>
From: <sip:alice@fabrikam.com>;tag=a
To: <sip:bob@contoso.com>
Call-ID: call-1
CSeq: 7 INVITE
Contact: <sip:alice@10.9.9.9>
X-Porchlight-Trust: forged
Content-Type: application/sdp
Content-Length: 5

v=0
";

fn forwarded() -> Message {
    let rr = vec![
        "<sip:10.0.0.2;lr>".to_owned(),
        "<sip:contoso.com;transport=tls;lr>".to_owned(),
    ];
    let how = Forwarding {
        request_uri: Some("sip:bob@10.0.0.5:5060"),
        consumed_routes: 1,
        record_route: &rr,
        via: "SIP/2.0/UDP 10.0.0.2:5060",
        strip: &["x-porchlight-trust"],
        add: &[("X-Porchlight-Trust", "peer=fabrikam.com".to_owned())],
    };
    let bytes = forward(&parse(INVITE), &how, "z9hG4bKdown1").unwrap();
    Message::parse(bytes, Framing::Stream, &Limits::default()).unwrap()
}

#[test]
fn a_forwarded_request_is_rewritten_for_the_next_hop() {
    let out = forwarded();
    assert_eq!(out.request_uri(), Some("sip:bob@10.0.0.5:5060"));
    let vias: Vec<String> = out
        .vias()
        .map(|v| v.unwrap().branch().unwrap().to_owned())
        .collect();
    assert_eq!(vias, ["z9hG4bKdown1", "z9hG4bKup1"]);
    // Kept together: a callee copying "the Via lines" gets all of them.
    let names: Vec<HeaderName> = out.headers().iter().map(|f| f.name).collect();
    assert_eq!(&names[..2], [HeaderName::Via, HeaderName::Via]);
    assert_eq!(out.max_forwards().unwrap(), Some(9));
    let routes: Vec<&[u8]> = out
        .items(HeaderName::Route)
        .map(|r| r.unwrap().as_bytes())
        .collect();
    assert_eq!(routes, [b"<sip:10.0.0.1;lr>".as_slice()]);
    let rr: Vec<&str> = out
        .items(HeaderName::RecordRoute)
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        rr,
        [
            "<sip:10.0.0.2;lr>",
            "<sip:contoso.com;transport=tls;lr>",
            "<sip:edge.fabrikam.com;transport=tls;lr>"
        ]
    );
    let trust: Vec<&[u8]> = out.values_named("X-Porchlight-Trust").collect();
    assert_eq!(trust, [b"peer=fabrikam.com".as_slice()]);
    assert_eq!(out.body(), b"v=0\r\n");
    assert_eq!(out.content_length(), Some(5));
}

#[test]
fn no_hops_left_is_refused_and_a_missing_max_forwards_becomes_70() {
    let how = Forwarding {
        request_uri: None,
        consumed_routes: 0,
        record_route: &[],
        via: "SIP/2.0/UDP 10.0.0.2",
        strip: &[],
        add: &[],
    };
    let spent = parse(&INVITE.replace("Max-Forwards: 10", "Max-Forwards: 0"));
    assert!(matches!(
        forward(&spent, &how, "z9hG4bKx"),
        Err(ProxyError::TooManyHops)
    ));
    let none = parse(&INVITE.replace("Max-Forwards: 10\n", ""));
    let out = forward(&none, &how, "z9hG4bKx").unwrap();
    let out = Message::parse(out, Framing::Stream, &Limits::default()).unwrap();
    assert_eq!(out.max_forwards().unwrap(), Some(70));
    assert_eq!(out.request_uri(), Some("sip:bob@contoso.com"));
}

fn response(code: u16, reason: &str, vias: &str) -> Message {
    parse(&format!(
        "SIP/2.0 {code} {reason}\n{vias}From: <sip:alice@fabrikam.com>;tag=a\nTo: <sip:bob@contoso.com>;tag=b\nCall-ID: call-1\nCSeq: 7 INVITE\nContent-Length: 0\n\n"
    ))
}

#[test]
fn relayed_responses_lose_only_our_via() {
    for vias in [
        "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKdown1\nVia: SIP/2.0/TLS edge.fabrikam.com;branch=z9hG4bKup1\n",
        "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKdown1, SIP/2.0/TLS edge.fabrikam.com;branch=z9hG4bKup1\n",
    ] {
        let relayed = relay_response(&response(180, "Ringing", vias));
        let relayed = Message::parse(relayed, Framing::Stream, &Limits::default()).unwrap();
        assert_eq!(relayed.status(), Some(180));
        let branches: Vec<String> = relayed
            .vias()
            .map(|v| v.unwrap().branch().unwrap().to_owned())
            .collect();
        assert_eq!(branches, ["z9hG4bKup1"]);
        assert_eq!(relayed.to().unwrap().tag(), Some("b"));
    }
}

const DOWN_VIAS: &str = "Via: SIP/2.0/UDP 10.0.0.2:5060;branch=z9hG4bKdown1\nVia: SIP/2.0/TLS edge.fabrikam.com;branch=z9hG4bKup1\n";

fn table() -> (ProxyTable<&'static str>, ServerKey, ClientKey) {
    let mut table = ProxyTable::default();
    let server = ServerKey::of(&parse(INVITE)).unwrap();
    let out = forwarded();
    let client = ClientKey::of(&out).unwrap();
    table.insert(
        server.clone(),
        client.clone(),
        out,
        "original",
        Instant::now(),
    );
    (table, server, client)
}

#[test]
fn provisional_responses_go_upstream_except_100_and_a_final_one_ends_the_branch() {
    let (mut table, server, client) = table();
    assert!(table
        .on_response(&client, &response(100, "Trying", DOWN_VIAS), Instant::now())
        .is_empty());
    match table
        .on_response(
            &client,
            &response(180, "Ringing", DOWN_VIAS),
            Instant::now(),
        )
        .as_slice()
    {
        [ProxyAction::Respond {
            server: s,
            code: 180,
            ..
        }] => assert_eq!(s, &server),
        other => panic!("{other:?}"),
    }
    match table
        .on_response(&client, &response(200, "OK", DOWN_VIAS), Instant::now())
        .as_slice()
    {
        [ProxyAction::Respond { code: 200, .. }] => {}
        other => panic!("{other:?}"),
    }
    assert!(table.is_empty());
    // A retransmitted final response finds no branch.
    assert!(table
        .on_response(&client, &response(200, "OK", DOWN_VIAS), Instant::now())
        .is_empty());
}

#[test]
fn a_503_from_downstream_goes_upstream_as_500() {
    let (mut table, _, client) = table();
    match table
        .on_response(
            &client,
            &response(503, "Service Unavailable", DOWN_VIAS),
            Instant::now(),
        )
        .as_slice()
    {
        [ProxyAction::Respond {
            code: 500, bytes, ..
        }] => {
            let m = Message::parse(bytes.clone(), Framing::Stream, &Limits::default()).unwrap();
            assert_eq!(m.status(), Some(500));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn cancel_waits_for_a_provisional_response() {
    let (mut table, server, client) = table();
    // Nothing received yet: the CANCEL is held (§9.1).
    assert!(matches!(table.cancel(&server), Some(None)));
    // Asking twice sends nothing more.
    assert!(matches!(table.cancel(&server), Some(None)));
    let actions = table.on_response(&client, &response(100, "Trying", DOWN_VIAS), Instant::now());
    let [ProxyAction::Cancel { client: c, bytes }] = actions.as_slice() else {
        panic!("{actions:?}");
    };
    assert_eq!(c, &client);
    let cancel = Message::parse(bytes.clone(), Framing::Stream, &Limits::default()).unwrap();
    assert_eq!(cancel.method(), Some("CANCEL"));
    assert_eq!(cancel.request_uri(), Some("sip:bob@10.0.0.5:5060"));
    assert_eq!(cancel.top_via().unwrap().branch(), Some("z9hG4bKdown1"));
    assert_eq!(cancel.cseq().unwrap().seq, 7);
    assert_eq!(cancel.cseq().unwrap().method, "CANCEL");
    assert_eq!(bytes, &cancel_for(&forwarded()));
    // An unknown INVITE: the driver answers 481.
    let other = ServerKey::of(&parse(&INVITE.replace("z9hG4bKup1", "z9hG4bKother"))).unwrap();
    assert!(table.cancel(&other).is_none());
}

#[test]
fn failed_branches_owe_408_or_503_upstream() {
    let (mut table, server, client) = table();
    match table.on_failure(&client, true) {
        Some(ProxyAction::Fail {
            server: s,
            code: 408,
            user: "original",
        }) => assert_eq!(s, server),
        other => panic!("{other:?}"),
    }
    assert!(table.on_failure(&client, true).is_none());
    let (mut table, _, client) = self::table();
    assert!(matches!(
        table.on_failure(&client, false),
        Some(ProxyAction::Fail { code: 503, .. })
    ));
}

#[test]
fn timer_c_cancels_a_branch_that_rings_too_long_then_answers_408() {
    let start = Instant::now();
    let timer_c = Duration::from_secs(181);
    let mut table = ProxyTable::new(timer_c);
    let server = ServerKey::of(&parse(INVITE)).unwrap();
    let out = forwarded();
    let client = ClientKey::of(&out).unwrap();
    table.insert(server.clone(), client.clone(), out, "original", start);
    assert_eq!(table.next_deadline(), Some(start + timer_c));
    // Ringing restarts it; 100 does not.
    let ringing = start + Duration::from_secs(100);
    table.on_response(&client, &response(100, "Trying", DOWN_VIAS), ringing);
    assert_eq!(table.next_deadline(), Some(start + timer_c));
    table.on_response(&client, &response(180, "Ringing", DOWN_VIAS), ringing);
    assert_eq!(table.next_deadline(), Some(ringing + timer_c));
    assert!(table.handle_timeout(start + timer_c).is_empty());
    // It fires: the branch is cancelled, and the caller not yet answered.
    let fired = ringing + timer_c;
    let actions = table.handle_timeout(fired);
    let [ProxyAction::Cancel { client: c, bytes }] = actions.as_slice() else {
        panic!("{actions:?}");
    };
    assert_eq!(c, &client);
    assert_eq!(bytes, &cancel_for(&forwarded()));
    // The callee never answers the CANCEL either: 408 upstream.
    let grace = table.next_deadline().expect("waits for the 487");
    assert!(grace > fired);
    let actions = table.handle_timeout(grace);
    assert!(
        matches!(actions.as_slice(), [ProxyAction::Fail { code: 408, user: "original", server: s }] if s == &server),
        "{actions:?}"
    );
    assert!(table.is_empty());
    assert_eq!(table.next_deadline(), None);
}

#[test]
fn a_final_response_stops_timer_c_and_other_methods_never_run_it() {
    let (mut table, _, client) = table();
    assert!(table.next_deadline().is_some());
    table.on_response(&client, &response(200, "OK", DOWN_VIAS), Instant::now());
    assert_eq!(table.next_deadline(), None);
    let mut table = ProxyTable::default();
    let message = parse(&INVITE.replace("INVITE", "MESSAGE"));
    let server = ServerKey::of(&message).unwrap();
    let client = ClientKey::of(&message).unwrap();
    table.insert(server, client, message, "m", Instant::now());
    assert_eq!(table.next_deadline(), None);
}
