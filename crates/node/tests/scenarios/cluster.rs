//! A node's part in a cluster, as the core sees it: fenced while its lease
//! is in doubt, and retired when another node took its watchers over.

use std::time::Duration;

use porchlight_node::core::Input;
use porchlight_node::status::Query;
use porchlight_node::testkit::*;
use porchlight_presence::{Availability, PresenceState};

fn watch() -> Req {
    Req::subscribe("sip:helpdesk@contoso.com", 600)
        .from("sip:alice@contoso.com")
        .via("UDP 127.0.0.1:5070")
}

fn busy() -> Option<PresenceState> {
    Some(PresenceState {
        availability: Availability::BUSY,
        activity: None,
        note: None,
    })
}

#[test]
fn a_refresh_of_a_subscription_no_node_made_gets_481() {
    let mut node = TestNode::new(&config(&[], ""));
    node.receive(&watch().to_tag("never-issued").cseq(2).text(), &inside());
    assert_eq!(statuses(&node.take_sent()), [481]);
}

#[test]
fn a_fenced_node_holds_its_notifies_until_its_lease_is_back() {
    let mut node = TestNode::new(&config(&[], ""));
    node.receive(&watch().text(), &inside());
    let sent = node.take_sent();
    node.answer_notifies(&sent, &inside(), 200);
    node.input(Input::Fenced(true));
    node.ask(|reply| Query::SetPresence("sip:helpdesk@contoso.com".into(), busy(), reply));
    node.advance(Duration::from_secs(10));
    assert!(
        requests(&node.take_sent(), "NOTIFY").is_empty(),
        "another node may hold these watchers now"
    );
    // Unfenced, the held change goes at once (before any retransmission).
    node.input(Input::Fenced(false));
    node.advance(Duration::from_millis(100));
    let sent = node.take_sent();
    let notifies = requests(&sent, "NOTIFY");
    assert_eq!(notifies.len(), 1, "{sent:?}");
    assert!(
        text(&notifies[0].1).contains("<rpid:busy/>"),
        "{}",
        text(&notifies[0].1)
    );
}

#[test]
fn a_retired_node_drops_the_watchers_taken_over_without_a_word() {
    let mut node = TestNode::new(&config(&[], ""));
    node.receive(&watch().text(), &inside());
    let sent = node.take_sent();
    node.answer_notifies(&sent, &inside(), 200);
    assert_eq!(node.core.status(node.now).subscriptions_active, 1);
    node.input(Input::Retired { era: 2 });
    assert_eq!(node.core.status(node.now).subscriptions_active, 0);
    node.ask(|reply| Query::SetPresence("sip:helpdesk@contoso.com".into(), busy(), reply));
    node.advance(Duration::from_secs(700));
    assert!(
        requests(&node.take_sent(), "NOTIFY").is_empty(),
        "not even a final NOTIFY: the new holder speaks for them"
    );
}
