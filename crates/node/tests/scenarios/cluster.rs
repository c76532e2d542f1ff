//! A node's part in a cluster, as the core sees it: fenced while its lease
//! is in doubt, and retired when another node took its watchers over.

use std::time::Duration;

use porchlight_node::cluster::Lease;
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
fn a_node_whose_lease_runs_out_fences_itself_and_notifies_again_once_renewed() {
    let mut node = TestNode::new(&config(&[], ""));
    let lease = |node: &TestNode, secs| {
        Input::Lease(Lease::Until(node.now.mono + Duration::from_secs(secs)))
    };
    node.input(lease(&node, 8));
    node.receive(&watch().text(), &inside());
    let sent = node.take_sent();
    assert_eq!(notifies(&sent).len(), 1, "notifies while the lease holds");
    node.answer_notifies(&sent, &inside(), 200);
    // Nothing renews the lease: at 8 s the node fences itself, though no
    // input came to say so.
    node.advance(Duration::from_secs(9));
    node.ask(|reply| Query::SetPresence("sip:helpdesk@contoso.com".into(), busy(), reply));
    node.advance(Duration::from_secs(10));
    assert!(
        requests(&node.take_sent(), "NOTIFY").is_empty(),
        "another node may hold these watchers now"
    );
    let refused = watch().call_id("while-fenced");
    node.receive(&refused.text(), &inside());
    assert_eq!(statuses(&node.take_sent()), [503], "no new watcher either");
    // Renewed, the held change goes at once (before any retransmission).
    node.input(lease(&node, 8));
    node.advance(Duration::from_millis(100));
    let sent = node.take_sent();
    let fresh = notifies(&sent);
    assert_eq!(fresh.len(), 1, "{sent:?}");
    assert!(
        text(fresh[0]).contains("<rpid:busy/>"),
        "{}",
        text(fresh[0])
    );
}

#[test]
fn a_notify_under_way_is_not_retransmitted_once_the_lease_runs_out() {
    let mut node = TestNode::new(&config(&[], ""));
    node.input(Input::Lease(Lease::Until(
        node.now.mono + Duration::from_secs(2),
    )));
    node.receive(&watch().text(), &inside());
    assert_eq!(notifies(&node.take_sent()).len(), 1);
    // The watcher does not answer: UDP retransmits at 0.5, 1.5, 3.5 s...
    node.advance(Duration::from_millis(1_600));
    assert!(
        !requests(&node.take_sent(), "NOTIFY").is_empty(),
        "retransmitted while leased"
    );
    node.advance(Duration::from_secs(20));
    assert!(
        requests(&node.take_sent(), "NOTIFY").is_empty(),
        "fenced, not even a retransmission goes"
    );
}

#[test]
fn a_retired_node_drops_the_watchers_taken_over_without_a_word() {
    let mut node = TestNode::new(&config(&[], ""));
    node.watch(&watch(), &inside());
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
