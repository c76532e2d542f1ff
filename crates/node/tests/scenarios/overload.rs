//! Holding at the edge: shedding new work under load, dropping one
//! anonymous flooder alone, and keeping no state for refusals.

use std::time::Duration;

use porchlight_node::core::Input;
use porchlight_node::overload::Load;
use porchlight_node::testkit::*;

fn busy() -> Input {
    Input::Load(Load {
        backlog: 10_000,
        ..Load::default()
    })
}

#[test]
fn under_load_new_work_gets_503_with_retry_after_and_dialogs_go_on() {
    let mut node = TestNode::new(&config(&[], ""));
    let watcher = inside();
    let watch = Req::subscribe("sip:helpdesk@contoso.com", 600)
        .from("sip:alice@contoso.com")
        .via("UDP 127.0.0.1:5070");
    node.receive(&watch.text(), &watcher);
    let sent = node.take_sent();
    let tag = requests(&sent, "NOTIFY")[0]
        .1
        .from()
        .unwrap()
        .tag()
        .unwrap()
        .to_owned();
    node.answer_notifies(&sent, &watcher, 200);

    // The accepted SUBSCRIBE's transaction waits out Timer J.
    let held = node.core.server_transactions();
    node.input(busy());
    for (i, method) in ["SUBSCRIBE", "REGISTER", "PUBLISH", "INVITE", "MESSAGE"]
        .iter()
        .enumerate()
    {
        let new = Req::new(method, "sip:helpdesk@contoso.com").call_id(&format!("shed{i}"));
        node.receive(&new.text(), &partner());
        let sent = node.take_sent();
        assert_eq!(statuses(&sent), [503], "{method}");
        let retry: u64 = sent[0]
            .1
            .first_value(porchlight_sip::HeaderName::RetryAfter)
            .map(|v| String::from_utf8_lossy(v).trim().parse().unwrap())
            .expect("Retry-After");
        assert!((5..10).contains(&retry), "{retry}");
    }
    assert_eq!(
        node.core.server_transactions(),
        held,
        "what is shed holds no transaction"
    );
    // The held watcher's refresh goes through.
    node.receive(&watch.cseq(2).to_tag(&tag).text(), &watcher);
    assert_eq!(statuses(&node.take_sent()), [200]);
    // Under half of every mark, new work is taken again.
    node.input(Input::Load(Load::default()));
    let new = Req::subscribe("sip:helpdesk@contoso.com", 600)
        .from("sip:bob@fabrikam.com")
        .call_id("after");
    node.receive(&new.text(), &partner());
    assert_eq!(statuses(&node.take_sent()), [200]);
}

#[test]
fn one_anonymous_flooder_is_dropped_alone_and_heard_again_later() {
    let mut node = TestNode::new(&config(
        &[
            ("source_request_rate = 100", "source_request_rate = 10"),
            ("source_request_burst = 400", "source_request_burst = 20"),
        ],
        "",
    ));
    let flooder = stranger("203.0.113.66:5060");
    let mut answered = 0;
    for i in 0..100 {
        let ping = Req::new("OPTIONS", "sip:contoso.com").call_id(&format!("f{i}"));
        node.receive(&ping.text(), &flooder);
        answered += node.take_sent().len();
    }
    assert!(
        (20..=25).contains(&answered),
        "the burst is answered, the rest dropped unanswered: {answered}"
    );
    // Another source is not held back by it.
    let other = stranger("203.0.113.67:5060");
    node.receive(
        &Req::new("OPTIONS", "sip:contoso.com")
            .call_id("other")
            .text(),
        &other,
    );
    assert_eq!(statuses(&node.take_sent()), [200]);
    // A partner never counts as anonymous.
    for i in 0..50 {
        let ping = Req::new("OPTIONS", "sip:contoso.com").call_id(&format!("p{i}"));
        node.receive(&ping.text(), &partner());
        assert_eq!(statuses(&node.take_sent()), [200]);
    }
    // The flooder's rate refills with time.
    node.advance(Duration::from_secs(2));
    node.receive(
        &Req::new("OPTIONS", "sip:contoso.com")
            .call_id("later")
            .text(),
        &flooder,
    );
    assert_eq!(statuses(&node.take_sent()), [200]);
}

#[test]
fn refusals_are_answered_without_keeping_a_transaction() {
    let mut node = TestNode::new(&config(&[], ""));
    let from = stranger("203.0.113.9:5060");
    for i in 0..10 {
        let scan =
            Req::new("INVITE", &format!("sip:user{i}@contoso.com")).call_id(&format!("scan{i}"));
        node.receive(&scan.text(), &from);
        assert_eq!(finals(&node.take_sent()), [404]);
    }
    assert_eq!(node.core.server_transactions(), 0);
    // A retransmission gets the same answer, with the same To tag.
    let scan = Req::new("INVITE", "sip:user0@contoso.com").call_id("scan0");
    node.receive(&scan.text(), &from);
    let again = node.take_sent();
    node.receive(&scan.text(), &from);
    let third = node.take_sent();
    let tag = |sent: &[(porchlight_link::Target, porchlight_sip::Message)]| {
        sent.iter()
            .find(|(_, m)| m.status() == Some(404))
            .and_then(|(_, m)| m.to().ok()?.tag().map(str::to_owned))
    };
    assert!(tag(&again).is_some());
    assert_eq!(tag(&again), tag(&third));
}
