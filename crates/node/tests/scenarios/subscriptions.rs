//! Subscriptions from the first SUBSCRIBE to the final NOTIFY (RFC 6665).

use std::time::{Duration, Instant};

use porchlight_link::{Protocol, Target};
use porchlight_node::testkit::*;

/// A watcher inside the edge subscribing to the help desk.
fn alice(expires: u32) -> Req {
    Req::subscribe("sip:helpdesk@contoso.com", expires)
        .from("sip:alice@contoso.com")
        .via("UDP 127.0.0.1:5070")
        .call_id("sub1")
}

#[test]
fn a_subscription_is_notified_and_ends_with_a_final_notify_at_expiry() {
    let started = Instant::now();
    let mut node = TestNode::new(&config(&[], ""));
    let watcher = inside();
    node.receive(&alice(60).text(), &watcher);
    let sent = node.take_sent();
    assert_eq!(statuses(&sent), [200]);
    let notifies = requests(&sent, "NOTIFY");
    assert_eq!(notifies.len(), 1, "the initial NOTIFY follows the 200");
    let (to, notify) = notifies[0];
    assert_eq!(
        *to,
        Target::Address {
            protocol: Protocol::Udp,
            addr: watcher.source,
            domain: None
        },
        "back on the flow the SUBSCRIBE came on"
    );
    assert!(
        text(notify).contains("<basic>open</basic>"),
        "{}",
        text(notify)
    );
    assert!(text(notify).contains("Subscription-State: active;expires=60"));
    node.answer_notifies(&sent, &watcher, 200);

    // Nothing is said before the subscription runs out, then a final NOTIFY.
    node.advance(Duration::from_secs(59));
    assert!(requests(&node.take_sent(), "NOTIFY").is_empty());
    node.advance(Duration::from_secs(2));
    let sent = node.take_sent();
    let last = requests(&sent, "NOTIFY");
    assert!(!last.is_empty());
    for (_, notify) in &last {
        // The same final NOTIFY, retransmitted over UDP until answered.
        assert_eq!(notify.cseq().unwrap().seq, last[0].1.cseq().unwrap().seq);
        assert!(
            text(notify).contains("Subscription-State: terminated;reason=timeout"),
            "{}",
            text(notify)
        );
    }
    node.answer_notifies(&sent, &watcher, 200);
    node.advance(Duration::from_secs(40));
    assert!(
        requests(&node.take_sent(), "NOTIFY").is_empty(),
        "answered, it is not sent again"
    );
    assert_eq!(node.core.status(node.now.mono).subscriptions_active, 0);
    assert!(started.elapsed() < Duration::from_secs(1), "virtual time");
}

#[test]
fn a_policy_change_ends_a_partners_subscription_with_rejected() {
    let mut node = TestNode::new(&config(&[], ""));
    let fabrikam = partner();
    let watch = Req::subscribe("sip:helpdesk@contoso.com", 600)
        .from("sip:bob@fabrikam.com")
        .call_id("fed1");
    node.receive(&watch.text(), &fabrikam);
    let sent = node.take_sent();
    assert_eq!(statuses(&sent), [200]);
    let notifies = requests(&sent, "NOTIFY");
    assert_eq!(notifies.len(), 1);
    assert_eq!(
        notifies[0].0,
        Target::Connection(PARTNER),
        "to the partner by name: its verified connection"
    );
    let tag = notifies[0].1.from().unwrap().tag().unwrap().to_owned();
    node.answer_notifies(&sent, &fabrikam, 200);

    // The admin blocks fabrikam.com.
    let blocked = config(
        &[
            (
                "allowed_domains = [{ domain = \"fabrikam.com\" }]",
                "allowed_domains = []",
            ),
            (
                "blocked_domains = []",
                "blocked_domains = [\"fabrikam.com\"]",
            ),
        ],
        "",
    );
    apply(&mut node, &blocked);
    let sent = node.take_sent();
    let last = requests(&sent, "NOTIFY");
    assert_eq!(last.len(), 1, "{sent:?}");
    assert!(
        text(&last[0].1).contains("Subscription-State: terminated;reason=rejected"),
        "{}",
        text(&last[0].1)
    );
    // Its refresh now gets 481.
    node.receive(&watch.cseq(2).to_tag(&tag).text(), &fabrikam);
    assert_eq!(statuses(&node.take_sent()), [481]);
}

/// Puts `config`'s policy and endpoints in force, as the admin API does.
pub fn apply(node: &mut TestNode, config: &porchlight_node::Config) {
    let endpoints = porchlight_endpoints::EndpointSet::new(config.endpoints.clone()).unwrap();
    let policy = Box::new(config.policy.clone());
    node.ask(|reply| porchlight_node::status::Query::Apply(policy, endpoints, reply));
}

#[test]
fn a_fenced_node_asks_new_watchers_to_come_back_rather_than_refusing_them() {
    let mut node = TestNode::new(&config(&[], ""));
    node.input(porchlight_node::core::Input::Fenced(true));
    node.receive(&alice(60).call_id("fenced").text(), &inside());
    let sent = node.take_sent();
    assert_eq!(statuses(&sent), [503]);
    assert!(text(&sent[0].1).contains("\r\nRetry-After: 5\r\n"));
    assert!(requests(&sent, "NOTIFY").is_empty());
    node.input(porchlight_node::core::Input::Fenced(false));
    node.receive(&alice(60).call_id("later").text(), &inside());
    assert_eq!(statuses(&node.take_sent()), [200]);
}
