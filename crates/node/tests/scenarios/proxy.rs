//! The edge as a stateful proxy (RFC 3261 §16): calls between partners and
//! the people behind the edge.

use std::net::SocketAddr;
use std::time::Duration;

use porchlight_link::{Protocol, Target};
use porchlight_node::testkit::*;
use porchlight_sip::HeaderName;

/// A node in edge mode: the people behind it are at 10.0.0.5.
fn edge_node() -> TestNode {
    TestNode::new(&config(
        &[(
            "internal_next_hop = \"\"",
            "internal_next_hop = \"sip:10.0.0.5:5060\"",
        )],
        "",
    ))
}

fn inside_hop() -> SocketAddr {
    "10.0.0.5:5060".parse().unwrap()
}

/// alice@fabrikam.com calls bob behind the edge.
fn call() -> Req {
    Req::new("INVITE", "sip:bob@contoso.com")
        .call_id("call1")
        .header("Contact", "<sip:alice@edge.fabrikam.com;transport=tls>")
}

#[test]
fn a_partners_call_to_the_inside_is_proxied_and_cancelled() {
    let mut node = edge_node();
    let fabrikam = partner();
    node.receive(&call().text(), &fabrikam);
    let sent = node.take_sent();
    let forwarded = requests(&sent, "INVITE");
    assert_eq!(forwarded.len(), 1, "{sent:?}");
    let (to, copy) = forwarded[0];
    assert_eq!(
        *to,
        Target::Address {
            protocol: Protocol::Udp,
            addr: inside_hop(),
            domain: None
        }
    );
    assert!(
        copy.items(HeaderName::RecordRoute).count() >= 1,
        "the edge stays in the dialog: {}",
        text(copy)
    );
    assert_eq!(copy.vias().count(), 2, "our Via on top of the partner's");
    let copy = copy.clone();
    // The inside rings.
    node.answer(&copy.clone(), 180, &inside());
    let sent = node.take_sent();
    assert!(
        sent.iter()
            .any(|(to, m)| *to == Target::Connection(PARTNER) && m.status() == Some(180)),
        "the 180 goes back to the partner: {sent:?}"
    );

    // The caller gives up.
    node.receive(
        &Req::new("CANCEL", "sip:bob@contoso.com")
            .call_id("call1")
            .text(),
        &fabrikam,
    );
    let sent = node.take_sent();
    assert!(
        sent.iter()
            .any(|(to, m)| *to == Target::Connection(PARTNER) && m.status() == Some(200)),
        "the CANCEL is answered at once: {sent:?}"
    );
    let cancels = requests(&sent, "CANCEL");
    assert_eq!(cancels.len(), 1, "and goes on to the inside");
    assert_eq!(
        cancels[0].1.top_via().unwrap().branch(),
        copy.top_via().unwrap().branch()
    );

    // The inside ends the INVITE with 487: it is acknowledged there and
    // relayed to the caller.
    let cancel = cancels[0].1.clone();
    node.answer(&cancel, 200, &inside());
    node.answer(&copy, 487, &inside());
    let sent = node.take_sent();
    assert!(
        sent.iter()
            .any(|(to, m)| *to == Target::Connection(PARTNER) && m.status() == Some(487)),
        "{sent:?}"
    );
    assert_eq!(
        requests(&sent, "ACK").len(),
        1,
        "the 487 is acknowledged hop by hop"
    );
    assert_eq!(node.core.status(node.now).proxied_in_progress, 0);
}

/// The Route set a caller's later requests carry: the Record-Route of a
/// 2xx, in order.
fn route_set(answer: &porchlight_sip::Message) -> String {
    answer
        .items(HeaderName::RecordRoute)
        .filter_map(Result::ok)
        .map(|item| item.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn a_partners_call_is_answered_from_inside_and_its_bye_follows_the_dialog() {
    let mut node = edge_node();
    let fabrikam = partner();
    node.receive(&call().text(), &fabrikam);
    let sent = node.take_sent();
    let copy = requests(&sent, "INVITE")[0].1.clone();
    assert!(
        text(&copy).contains("X-Porchlight-Trust: "),
        "the inside is told who calls: {}",
        text(&copy)
    );
    node.answer(&copy, 200, &inside());
    let sent = node.take_sent();
    let (to, ok) = sent
        .iter()
        .find(|(_, m)| m.status() == Some(200))
        .expect("the 200 goes back");
    assert_eq!(*to, Target::Connection(PARTNER));
    let routes = route_set(ok);
    assert!(!routes.is_empty(), "{}", text(ok));
    let tag = ok.to().unwrap().tag().unwrap().to_owned();
    // The partner hangs up along the route the dialog set.
    let bye = Req::new("BYE", "sip:bob@10.0.0.5:5060")
        .call_id("call1")
        .cseq(2)
        .to_tag(&tag)
        .header("Route", &routes);
    node.receive(&bye.text(), &fabrikam);
    let sent = node.take_sent();
    let byes = requests(&sent, "BYE");
    assert_eq!(byes.len(), 1, "{sent:?}");
    assert_eq!(
        byes[0].0,
        Target::Address {
            protocol: Protocol::Udp,
            addr: inside_hop(),
            domain: None
        }
    );
}

#[test]
fn a_dialog_request_with_a_forged_token_is_refused() {
    let mut node = edge_node();
    let bye = Req::new("BYE", "sip:bob@10.0.0.5:5060").to_tag("x").header(
        "Route",
        "<sip:rr-fabrikam.com-0123456789abcdef@127.0.0.1;lr>",
    );
    node.receive(&bye.text(), &partner());
    let sent = node.take_sent();
    assert_eq!(finals(&sent), [403]);
    assert!(requests(&sent, "BYE").is_empty(), "nothing is relayed");
}

#[test]
fn a_call_the_inside_never_answers_gets_408_upstream() {
    let mut node = edge_node();
    node.receive(&call().text(), &partner());
    let sent = node.take_sent();
    assert_eq!(statuses(&sent), [100], "Trying at once, then silence");
    // Timer B: 64 T1 (32 s) of retransmissions to the inside.
    node.advance(Duration::from_secs(33));
    let sent = node.take_sent();
    assert!(
        requests(&sent, "INVITE").len() >= 5,
        "retransmitted over UDP"
    );
    assert!(
        sent.iter()
            .any(|(to, m)| *to == Target::Connection(PARTNER) && m.status() == Some(408)),
        "{sent:?}"
    );
    assert_eq!(node.core.status(node.now).proxied_in_progress, 0);
}

#[test]
fn a_looping_call_gets_483_before_the_policy_looks_at_it() {
    let mut node = edge_node();
    node.receive(
        &call().max_forwards(Some(0)).text(),
        &stranger("203.0.113.9:5060"),
    );
    let sent = node.take_sent();
    assert_eq!(finals(&sent), [483]);
    assert!(requests(&sent, "INVITE").is_empty());
}

#[test]
fn a_stranger_cannot_call_the_inside() {
    let mut node = edge_node();
    node.receive(&call().text(), &stranger("203.0.113.9:5060"));
    let sent = node.take_sent();
    assert_eq!(finals(&sent), [403]);
    assert!(requests(&sent, "INVITE").is_empty());
}

#[test]
fn the_inside_calls_a_partner_through_its_edge_and_the_partners_bye_comes_back() {
    let mut node = edge_node();
    let out = Req::new("INVITE", "sip:carol@fabrikam.com")
        .from("sip:bob@contoso.com")
        .via("UDP 10.0.0.5:5060")
        .call_id("out1")
        .header("Contact", "<sip:bob@10.0.0.5:5060>");
    node.receive(&out.text(), &stranger("10.0.0.5:5060"));
    let sent = node.take_sent();
    // 10.0.0.5 is not on the default trusted networks (loopback only).
    assert_eq!(finals(&sent), [403], "{sent:?}");
    node.receive(
        &out.clone().via("UDP 127.0.0.1:5070").call_id("out2").text(),
        &inside(),
    );
    let sent = node.take_sent();
    let invites = requests(&sent, "INVITE");
    assert_eq!(invites.len(), 1, "{sent:?}");
    assert_eq!(invites[0].0, Target::Connection(PARTNER));
    assert!(
        invites[0].1.items(HeaderName::RecordRoute).count() >= 1,
        "{}",
        text(&invites[0].1)
    );
}
