//! The federation policy on the request path: who may watch, message and
//! call whom, and what a refusal tells the refused.

use porchlight_link::{ConnectionId, Target};
use porchlight_node::status::Query;
use porchlight_node::testkit::*;

/// A node that blocks evil.example, and knows fabrikam.com and
/// evil.example's edges by their verified connections.
fn node() -> TestNode {
    let mut links = ScriptedLinks::default();
    links.verified.insert("evil.example".into(), EVIL);
    TestNode::with_links(
        &config(
            &[(
                "blocked_domains = []",
                "blocked_domains = [\"evil.example\"]",
            )],
            "",
        ),
        links,
    )
}

const EVIL: ConnectionId = ConnectionId(9);

fn evil() -> porchlight_link::Origin {
    certified("evil.example", EVIL, "192.0.2.66:40000")
}

fn watch_from(from: &str) -> Req {
    Req::subscribe("sip:helpdesk@contoso.com", 600).from(from)
}

#[test]
fn a_blocked_domain_is_refused_with_a_plain_403_and_the_admin_sees_why() {
    let mut node = node();
    node.receive(&watch_from("sip:mallory@evil.example").text(), &evil());
    let sent = node.take_sent();
    assert_eq!(statuses(&sent), [403]);
    assert!(text(&sent[0].1).starts_with("SIP/2.0 403 Forbidden\r\n"));
    let refusals = node.ask(Query::Refusals);
    let refusal = refusals
        .iter()
        .find(|r| r.from == "sip:mallory@evil.example")
        .expect("the refusal is recorded");
    assert!(!refusal.allowed);
    assert!(
        refusal
            .steps
            .iter()
            .any(|s| s.contains("blocked domain evil.example")),
        "{:?}",
        refusal.steps
    );
}

#[test]
fn an_allowed_partner_watches_and_is_notified_over_its_connection() {
    let mut node = node();
    node.receive(&watch_from("sip:bob@fabrikam.com").text(), &partner());
    let sent = node.take_sent();
    assert_eq!(statuses(&sent), [200]);
    assert_eq!(requests(&sent, "NOTIFY")[0].0, Target::Connection(PARTNER));
}

#[test]
fn a_from_domain_the_certificate_does_not_prove_is_refused() {
    let mut node = node();
    node.receive(&watch_from("sip:ceo@northwind.example").text(), &partner());
    assert_eq!(statuses(&node.take_sent()), [403]);
    // Nor may a partner speak for our own domain.
    node.receive(
        &watch_from("sip:alice@contoso.com").call_id("spoof").text(),
        &partner(),
    );
    assert_eq!(statuses(&node.take_sent()), [403]);
}

#[test]
fn a_stranger_without_a_certificate_cannot_watch_from_outside() {
    let mut node = node();
    let from = stranger("203.0.113.9:5060");
    node.receive(&watch_from("sip:bob@fabrikam.com").text(), &from);
    assert_eq!(statuses(&node.take_sent()), [403]);
    assert_eq!(node.core.status(node.now).subscriptions_active, 0);
}

#[test]
fn an_unknown_partner_is_refused_while_discovery_is_off() {
    let mut node = node();
    let other = certified("northwind.example", ConnectionId(11), "192.0.2.80:40000");
    node.receive(&watch_from("sip:carol@northwind.example").text(), &other);
    assert_eq!(statuses(&node.take_sent()), [403]);
}

#[test]
fn the_inside_messages_a_partner_over_its_verified_connection() {
    let mut node = node();
    let message = Req::new("MESSAGE", "sip:bob@fabrikam.com")
        .from("sip:alice@contoso.com")
        .via("UDP 127.0.0.1:5070")
        .body("text/plain", "hello");
    node.receive(&message.text(), &inside());
    let sent = node.take_sent();
    let out = requests(&sent, "MESSAGE");
    assert_eq!(out.len(), 1, "{sent:?}");
    let (to, copy) = out[0];
    assert_eq!(*to, Target::Connection(PARTNER));
    assert_eq!(copy.vias().count(), 2, "our Via on top");
    assert!(
        !text(copy).contains("X-Porchlight-Trust"),
        "the trust header never leaves"
    );
    // The partner's answer comes back to the sender.
    let copy = copy.clone();
    node.answer(&copy, 200, &partner());
    assert_eq!(finals(&node.take_sent()), [200]);
}

#[test]
fn the_inside_cannot_reach_a_blocked_domain() {
    let mut node = node();
    let message = Req::new("MESSAGE", "sip:mallory@evil.example")
        .from("sip:alice@contoso.com")
        .via("UDP 127.0.0.1:5070")
        .body("text/plain", "hello");
    node.receive(&message.text(), &inside());
    let sent = node.take_sent();
    assert_eq!(finals(&sent), [403]);
    assert!(requests(&sent, "MESSAGE").is_empty(), "nothing leaves");
}

#[test]
fn blocking_a_partner_takes_effect_on_its_next_request() {
    let mut node = node();
    node.receive(&watch_from("sip:bob@fabrikam.com").text(), &partner());
    assert_eq!(statuses(&node.take_sent()), [200]);
    let blocked = config(&BLOCK_FABRIKAM, "");
    super::subscriptions::apply(&mut node, &blocked);
    node.take_sent();
    node.receive(
        &watch_from("sip:bob@fabrikam.com").call_id("after").text(),
        &partner(),
    );
    assert_eq!(statuses(&node.take_sent()), [403]);
}
