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
    assert_eq!(node.core.status(node.now).subscriptions_active, 0);
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
    let blocked = config(&BLOCK_FABRIKAM, "");
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
    use porchlight_node::cluster::Lease;
    use porchlight_node::core::Input;
    node.input(Input::Lease(Lease::GivenUp));
    node.receive(&alice(60).call_id("fenced").text(), &inside());
    let sent = node.take_sent();
    assert_eq!(statuses(&sent), [503]);
    assert!(text(&sent[0].1).contains("\r\nRetry-After: 5\r\n"));
    assert!(requests(&sent, "NOTIFY").is_empty());
    let renewed = Lease::Until(node.now.mono + Duration::from_secs(8));
    node.input(Input::Lease(renewed));
    node.receive(&alice(60).call_id("later").text(), &inside());
    assert_eq!(statuses(&node.take_sent()), [200]);
}

/// The first NOTIFY among `sent`, with the To tag the watcher holds (the
/// NOTIFY's From tag).
fn first_notify(sent: &[(Target, porchlight_sip::Message)]) -> (porchlight_sip::Message, String) {
    let (_, notify) = requests(sent, "NOTIFY")
        .into_iter()
        .next()
        .expect("a NOTIFY");
    let tag = notify.from().unwrap().tag().unwrap().to_owned();
    (notify.clone(), tag)
}

#[test]
fn an_event_package_the_node_does_not_serve_gets_489_with_allow_events() {
    let mut node = TestNode::new(&config(&[], ""));
    let dialog = alice(60).header("Event", "dialog");
    // The builder's own Event comes first; a second names another package.
    let text = dialog.text().replace("Event: presence\r\n", "");
    node.receive(&text, &inside());
    let sent = node.take_sent();
    assert_eq!(statuses(&sent), [489]);
    assert!(
        text_of(&sent).contains("Allow-Events: presence"),
        "{}",
        text_of(&sent)
    );
}

fn text_of(sent: &[(Target, porchlight_sip::Message)]) -> String {
    sent.iter().map(|(_, m)| text(m)).collect()
}

#[test]
fn an_expiry_shorter_than_the_minimum_gets_423_with_min_expires() {
    let mut node = TestNode::new(&config(&[], ""));
    node.receive(&alice(5).text(), &inside());
    let sent = node.take_sent();
    assert_eq!(statuses(&sent), [423]);
    assert!(
        text_of(&sent).contains("\r\nMin-Expires: 60\r\n"),
        "{}",
        text_of(&sent)
    );
    assert_eq!(node.core.status(node.now).subscriptions_active, 0);
}

#[test]
fn a_longer_expiry_than_the_maximum_is_cut_to_it() {
    let mut node = TestNode::new(&config(&[], ""));
    node.receive(&alice(86_400).text(), &inside());
    let sent = node.take_sent();
    assert_eq!(statuses(&sent), [200]);
    assert!(
        text_of(&sent).contains("\r\nExpires: 3600\r\n"),
        "{}",
        text_of(&sent)
    );
}

#[test]
fn a_fetch_gets_one_notify_and_holds_nothing() {
    let mut node = TestNode::new(&config(&[], ""));
    node.receive(&alice(0).text(), &inside());
    let sent = node.take_sent();
    assert_eq!(statuses(&sent), [200]);
    let (notify, _) = first_notify(&sent);
    assert!(
        text(&notify).contains("Subscription-State: terminated"),
        "{}",
        text(&notify)
    );
    assert!(
        text(&notify).contains("<basic>open</basic>"),
        "the state, once"
    );
    node.answer_notifies(&sent, &inside(), 200);
    assert_eq!(node.core.status(node.now).subscriptions_active, 0);
}

#[test]
fn a_refresh_keeps_the_subscription_past_its_first_expiry_and_an_unsubscribe_ends_it() {
    let mut node = TestNode::new(&config(&[], ""));
    let watcher = inside();
    node.receive(&alice(60).text(), &watcher);
    let sent = node.take_sent();
    let (_, tag) = first_notify(&sent);
    node.answer_notifies(&sent, &watcher, 200);
    node.advance(Duration::from_secs(50));
    node.receive(&alice(60).cseq(2).to_tag(&tag).text(), &watcher);
    let sent = node.take_sent();
    assert_eq!(statuses(&sent), [200], "the refresh is taken");
    node.answer_notifies(&sent, &watcher, 200);
    node.advance(Duration::from_secs(50));
    assert!(
        requests(&node.take_sent(), "NOTIFY").is_empty(),
        "100 s in, no final NOTIFY: the refresh moved the expiry"
    );
    assert_eq!(node.core.status(node.now).subscriptions_active, 1);
    node.receive(&alice(0).cseq(3).to_tag(&tag).text(), &watcher);
    let sent = node.take_sent();
    assert_eq!(statuses(&sent), [200]);
    let (last, _) = first_notify(&sent);
    assert!(
        text(&last).contains("Subscription-State: terminated"),
        "{}",
        text(&last)
    );
    node.answer_notifies(&sent, &watcher, 200);
    assert_eq!(node.core.status(node.now).subscriptions_active, 0);
}

#[test]
fn a_watcher_that_answers_481_is_gone() {
    let mut node = TestNode::new(&config(&[], ""));
    node.receive(&alice(600).text(), &inside());
    let sent = node.take_sent();
    node.answer_notifies(&sent, &inside(), 481);
    assert_eq!(node.core.status(node.now).subscriptions_active, 0);
}

#[test]
fn an_admins_presence_reaches_every_watcher_and_clearing_it_goes_back() {
    use porchlight_node::status::Query;
    use porchlight_presence::{Availability, PresenceState};
    let mut node = TestNode::new(&config(&[], ""));
    for (i, watcher) in ["127.0.0.1:5071", "127.0.0.1:5072", "127.0.0.1:5073"]
        .into_iter()
        .enumerate()
    {
        let from = stranger(watcher);
        let watch = alice(600)
            .via(&format!("UDP {watcher}"))
            .call_id(&format!("w{i}"));
        node.watch(&watch, &from);
    }
    let busy = PresenceState {
        availability: Availability::BUSY,
        activity: None,
        note: Some("in a meeting".into()),
    };
    let view =
        node.ask(|reply| Query::SetPresence("sip:helpdesk@contoso.com".into(), Some(busy), reply));
    assert!(view.is_some(), "the endpoint exists");
    // At most one NOTIFY per watcher every 5 s (RFC 3856 §6.4): the change
    // waits out the interval since the first NOTIFY, then goes to all.
    node.advance(Duration::from_millis(4_000));
    assert!(requests(&node.take_sent(), "NOTIFY").is_empty());
    node.advance(Duration::from_millis(1_100));
    let sent = node.take_sent();
    let notifies = requests(&sent, "NOTIFY");
    assert_eq!(notifies.len(), 3, "one each: {sent:?}");
    for (_, notify) in &notifies {
        assert!(text(notify).contains("in a meeting"), "{}", text(notify));
    }
    node.answer_notifies(&sent, &inside(), 200);
    node.ask(|reply| Query::SetPresence("sip:helpdesk@contoso.com".into(), None, reply));
    node.advance(Duration::from_millis(5_100));
    let sent = node.take_sent();
    let notifies = requests(&sent, "NOTIFY");
    assert_eq!(notifies.len(), 3);
    assert!(notifies
        .iter()
        .all(|(_, n)| !text(n).contains("in a meeting")));
}

#[test]
fn an_endpoint_removed_ends_its_subscriptions_with_noresource() {
    let ivr = "\n[[endpoint]]\nuri = \"sip:ivr@contoso.com\"\ndisplay_name = \"IVR\"\n";
    let mut node = TestNode::new(&config(&[], ivr));
    let watch = Req::subscribe("sip:ivr@contoso.com", 600)
        .from("sip:alice@contoso.com")
        .via("UDP 127.0.0.1:5070");
    node.watch(&watch, &inside());
    // The admin puts in force a configuration without the IVR.
    apply(&mut node, &config(&[], ""));
    let sent = node.take_sent();
    let last = notifies(&sent);
    assert_eq!(last.len(), 1, "{sent:?}");
    assert!(
        text(last[0]).contains("Subscription-State: terminated;reason=noresource"),
        "{}",
        text(last[0])
    );
    // A new subscription to it finds nothing.
    node.receive(&watch.call_id("again").text(), &inside());
    assert_eq!(statuses(&node.take_sent()), [404]);
}
