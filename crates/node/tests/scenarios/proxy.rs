//! The edge as a stateful proxy (RFC 3261 §16): calls between partners and
//! the people behind the edge.

use std::net::SocketAddr;

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
    assert_eq!(node.core.status(node.now.mono).proxied_in_progress, 0);
}
