//! The notifier driven with virtual time: SUBSCRIBE in, answers and
//! NOTIFYs out, responses fed back.

use std::time::{Duration, Instant};

use bytes::Bytes;
use porchlight_presence::{
    Authorization, Availability, Capabilities, FlowInfo, Identity, Notifier, NotifierConfig,
    NotifyRef, PresenceState,
};
use porchlight_sip::{Answer, Framing, Limits, Message};

const ENDPOINT: &str = "sip:helpdesk@contoso.com";

struct Harness {
    notifier: Notifier<u32>,
    now: Instant,
    helpdesk: u32,
    clock: jiff::Timestamp,
}

fn parse(bytes: Bytes) -> Message {
    Message::parse(bytes, Framing::Datagram, &Limits::default()).expect("valid SIP")
}

impl Harness {
    fn new(config: NotifierConfig) -> Harness {
        let now = Instant::now();
        let mut notifier = Notifier::new(config, now, 42);
        let clock = jiff::Timestamp::from_second(1_777_629_600).unwrap();
        let helpdesk = 0;
        notifier.put_presentity(
            helpdesk,
            &Identity {
                uri: ENDPOINT.into(),
                display_name: "Contoso Help Desk".into(),
                capabilities: Capabilities {
                    text: true,
                    voice: true,
                },
            },
            PresenceState::new(Availability::ONLINE),
            clock,
        );
        Harness {
            notifier,
            now,
            helpdesk,
            clock,
        }
    }

    fn subscribe_with(&mut self, watcher: u32, extra: &str, body: &str) -> Answer {
        let text = format!(
            "SUBSCRIBE {ENDPOINT} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.{watcher};branch=z9hG4bK{watcher}\r\n\
             From: <sip:w{watcher}@fabrikam.com>;tag=f{watcher}\r\nTo: <{ENDPOINT}>\r\n\
             Call-ID: call-{watcher}\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:w{watcher}@10.0.0.{watcher}>\r\n\
             Max-Forwards: 70\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.answer(&text, watcher)
    }

    fn answer(&mut self, text: &str, flow: u32) -> Answer {
        let request = parse(Bytes::from(text.to_owned()));
        let helpdesk = self.helpdesk;
        self.notifier.subscribe(
            &request,
            FlowInfo {
                flow,
                reliable: false,
                via: "SIP/2.0/UDP 192.0.2.1:5060".into(),
                contact: "<sip:192.0.2.1:5060>".into(),
            },
            &move |uri| porchlight_presence::same_aor(uri, ENDPOINT).then_some(helpdesk),
            &mut |_, watcher| {
                if watcher.contains("blocked") {
                    Authorization::Deny {
                        code: 403,
                        reason: "Forbidden".into(),
                    }
                } else {
                    Authorization::Allow
                }
            },
            self.now,
        )
    }

    /// A Microsoft batched subscription from `watcher` listing the help desk.
    fn subscribe_batch(&mut self, watcher: u32) -> Answer {
        let list = format!(
            r#"<batchSub xmlns="http://schemas.microsoft.com/2006/01/sip/batch-subscribe" uri="sip:w{watcher}@fabrikam.com" name=""><action name="subscribe" id="1"><adhocList><resource uri="{ENDPOINT}"/></adhocList><categoryList xmlns="http://schemas.microsoft.com/2006/09/sip/categorylist"><category name="state"/></categoryList></action></batchSub>"#
        );
        let batch = "Event: presence\r\nRequire: adhoclist, categoryList\r\nSupported: eventlist\r\n\
                     Accept: application/msrtc-event-categories+xml, application/rlmi+xml, multipart/related\r\n\
                     Content-Type: application/msrtc-adrl-categorylist+xml\r\n";
        self.subscribe_with(watcher, batch, &list)
    }

    fn subscribe(&mut self, watcher: u32) -> Answer {
        self.subscribe_with(watcher, "Event: presence\r\nExpires: 600\r\n", "")
    }

    /// Everything the notifier sends now.
    fn drain(&mut self) -> Vec<(u32, Message)> {
        let mut out = Vec::new();
        while let Some(o) = self.notifier.poll(self.now) {
            out.push((o.flow, parse(o.bytes)));
        }
        out
    }

    fn reply(&mut self, notify: &Message, code: u16) {
        let branch = notify.top_via().unwrap().branch().unwrap().to_owned();
        let r = NotifyRef::from_branch(&branch).expect("our branch");
        self.notifier.on_notify_response(r, code, None, self.now);
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
        self.notifier.handle_timeout(self.now);
    }

    fn set(&mut self, availability: Availability) {
        self.clock += jiff::SignedDuration::from_secs(1);
        self.notifier
            .set_state(self.helpdesk, PresenceState::new(availability), self.clock);
    }
}

fn header<'a>(m: &'a Message, name: &'a str) -> &'a str {
    std::str::from_utf8(m.values_named(name).next().unwrap_or_default()).unwrap()
}

fn body(m: &Message) -> &str {
    std::str::from_utf8(m.body()).unwrap()
}

fn has(answer: &Answer, name: &str) -> Option<String> {
    answer
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

#[test]
fn subscribe_notify_refresh_unsubscribe() {
    let mut h = Harness::new(NotifierConfig::default());
    let answer = h.subscribe(1);
    assert_eq!(answer.code, 200);
    assert_eq!(has(&answer, "Expires").as_deref(), Some("600"));
    let tag = answer.to_tag.clone().unwrap();
    let sent = h.drain();
    assert_eq!(sent.len(), 1, "one NOTIFY at once");
    let notify = &sent[0].1;
    assert_eq!(notify.method(), Some("NOTIFY"));
    assert_eq!(notify.request_uri(), Some("sip:w1@10.0.0.1"));
    assert_eq!(header(notify, "Subscription-State"), "active;expires=600");
    assert_eq!(header(notify, "Content-Type"), "application/pidf+xml");
    assert_eq!(notify.call_id().unwrap(), "call-1");
    assert_eq!(notify.from().unwrap().tag(), Some(tag.as_str()));
    assert_eq!(notify.to().unwrap().tag(), Some("f1"));
    assert!(body(notify).contains("<basic>open</basic>"));
    h.reply(&sent[0].1.clone(), 200);

    // Refresh in the dialog: 200 and the state again.
    let refresh = format!(
        "SUBSCRIBE sip:192.0.2.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKr\r\n\
         From: <sip:w1@fabrikam.com>;tag=f1\r\nTo: <{ENDPOINT}>;tag={tag}\r\nCall-ID: call-1\r\n\
         CSeq: 2 SUBSCRIBE\r\nContact: <sip:w1@10.0.0.1>\r\nEvent: presence\r\nExpires: 300\r\nContent-Length: 0\r\n\r\n"
    );
    h.advance(Duration::from_secs(10));
    assert_eq!(h.answer(&refresh, 1).code, 200);
    let sent = h.drain();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        header(&sent[0].1, "Subscription-State"),
        "active;expires=300"
    );
    assert_eq!(sent[0].1.cseq().unwrap().seq, 2);
    h.reply(&sent[0].1.clone(), 200);
    // The same CSeq again is out of order.
    assert_eq!(h.answer(&refresh, 1).code, 500);
    // A wrong tag is an unknown dialog.
    let stranger = refresh.replace(&tag, "0.0.0").replace("CSeq: 2", "CSeq: 3");
    assert_eq!(h.answer(&stranger, 1).code, 481);

    // Unsubscribe: 200, a final NOTIFY, then the dialog is gone.
    let bye = refresh
        .replace("CSeq: 2", "CSeq: 4")
        .replace("Expires: 300", "Expires: 0");
    let answer = h.answer(&bye, 1);
    assert_eq!(answer.code, 200);
    let sent = h.drain();
    assert_eq!(
        header(&sent[0].1, "Subscription-State"),
        "terminated;reason=timeout"
    );
    h.reply(&sent[0].1.clone(), 200);
    assert_eq!(h.notifier.stats().active, 0);
    assert_eq!(h.answer(&bye.replace("CSeq: 4", "CSeq: 5"), 1).code, 481);
}

#[test]
fn refusals() {
    let mut h = Harness::new(NotifierConfig::default());
    let a = h.subscribe_with(1, "Event: dialog\r\n", "");
    assert_eq!(
        (a.code, has(&a, "Allow-Events").as_deref()),
        (489, Some("presence, presence.winfo"))
    );
    assert_eq!(h.subscribe_with(1, "", "").code, 489);
    let a = h.subscribe_with(1, "Event: presence\r\nExpires: 5\r\n", "");
    assert_eq!(
        (a.code, has(&a, "Min-Expires").as_deref()),
        (423, Some("60"))
    );
    let a = h.subscribe_with(1, "Event: presence\r\nAccept: text/plain\r\n", "");
    assert_eq!(a.code, 406);
    let text = "SUBSCRIBE sip:nobody@contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP x;branch=z9hG4bKn\r\n\
        From: <sip:a@b>;tag=1\r\nTo: <sip:nobody@contoso.com>\r\nCall-ID: n\r\nCSeq: 1 SUBSCRIBE\r\n\
        Contact: <sip:a@x>\r\nEvent: presence\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(h.answer(text, 1).code, 404);
    let text = text
        .replace("sip:nobody@", "sip:helpdesk@")
        .replace("sip:a@b", "sip:blocked@b");
    assert_eq!(h.answer(&text, 1).code, 403);
    // Expiry beyond the maximum is shortened.
    let a = h.subscribe_with(2, "Event: presence\r\nExpires: 999999\r\n", "");
    assert_eq!(has(&a, "Expires").as_deref(), Some("3600"));
    assert!(h.drain().iter().all(|(_, m)| m.method() == Some("NOTIFY")));
}

#[test]
fn fetch_notifies_once_and_ends() {
    let mut h = Harness::new(NotifierConfig::default());
    let a = h.subscribe_with(1, "Event: presence\r\nExpires: 0\r\n", "");
    assert_eq!((a.code, has(&a, "Expires").as_deref()), (200, Some("0")));
    let sent = h.drain();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        header(&sent[0].1, "Subscription-State"),
        "terminated;reason=timeout"
    );
    assert!(body(&sent[0].1).contains("open"));
    h.reply(&sent[0].1.clone(), 200);
    assert_eq!(h.notifier.stats().active, 0);
}

#[test]
fn expiry_sends_a_final_notify() {
    let mut h = Harness::new(NotifierConfig::default());
    h.subscribe_with(1, "Event: presence\r\nExpires: 60\r\n", "");
    let first = h.drain();
    h.reply(&first[0].1, 200);
    h.advance(Duration::from_secs(59));
    assert!(h.drain().is_empty());
    h.advance(Duration::from_secs(2));
    let last = h.drain();
    assert_eq!(
        header(&last[0].1, "Subscription-State"),
        "terminated;reason=timeout"
    );
    assert_eq!(h.notifier.stats().expired, 1);
}

#[test]
fn fan_out_coalesces_and_respects_the_watcher_interval() {
    let config = NotifierConfig {
        min_notify_interval: Duration::from_secs(5),
        ..NotifierConfig::default()
    };
    let mut h = Harness::new(config);
    for w in 1..=50 {
        h.subscribe(w);
    }
    for (_, n) in h.drain() {
        h.reply(&n, 200);
    }
    // Two changes in a row: each watcher gets only the newest, after the interval.
    h.set(Availability::BUSY);
    h.set(Availability::AWAY);
    assert!(
        h.drain().is_empty(),
        "held back by the per-watcher interval"
    );
    h.advance(Duration::from_secs(5));
    let sent = h.drain();
    assert_eq!(sent.len(), 50);
    assert!(sent.iter().all(|(_, n)| body(n).contains("<rpid:away/>")));
    let mut flows: Vec<u32> = sent.iter().map(|(f, _)| *f).collect();
    flows.sort_unstable();
    flows.dedup();
    assert_eq!(flows.len(), 50, "every watcher once");
    // A change while NOTIFYs are unanswered: sent when each is answered.
    h.advance(Duration::from_secs(5));
    h.set(Availability::OFFLINE);
    assert!(h.drain().is_empty(), "previous NOTIFYs still in flight");
    for (_, n) in &sent {
        h.reply(n, 200);
    }
    let sent = h.drain();
    assert_eq!(sent.len(), 50);
    assert!(sent
        .iter()
        .all(|(_, n)| body(n).contains("<basic>closed</basic>")));
}

#[test]
fn global_pacing_spreads_a_fan_out() {
    let config = NotifierConfig {
        notify_rate: 100,
        min_notify_interval: Duration::ZERO,
        ..NotifierConfig::default()
    };
    let mut h = Harness::new(config);
    for w in 1..=60 {
        h.subscribe(w);
    }
    for (_, n) in h.drain() {
        h.reply(&n, 200);
    }
    h.advance(Duration::from_secs(1));
    h.set(Availability::BUSY);
    let burst = h.drain().len();
    assert_eq!(burst, 10, "a tenth of a second's worth of tokens");
    let mut total = burst;
    for _ in 0..10 {
        h.advance(Duration::from_millis(100));
        total += h.drain().len();
    }
    assert_eq!(total, 60);
}

#[test]
fn watchers_that_never_answer_cannot_take_the_window_from_those_that_do() {
    let config = NotifierConfig {
        max_in_flight: 10,
        min_notify_interval: Duration::ZERO,
        retry_base: Duration::from_secs(1),
        ..NotifierConfig::default()
    };
    let mut h = Harness::new(config);
    for w in 1..=5 {
        h.subscribe(w);
    }
    for (_, n) in h.drain() {
        h.reply(&n, 200);
    }
    // A flood of subscriptions whose NOTIFYs nobody answers: five times the window.
    for w in 100..150 {
        h.subscribe(w);
    }
    let unanswered = h.drain();
    assert_eq!(unanswered.len(), 50, "each is answered with its NOTIFY");
    assert_eq!(h.notifier.in_flight(), 50);
    h.set(Availability::BUSY);
    let mut flows: Vec<u32> = h.drain().into_iter().map(|(flow, _)| flow).collect();
    flows.sort_unstable();
    assert_eq!(
        flows,
        [1, 2, 3, 4, 5],
        "the watchers that answer still hear"
    );
    // One of the silent watchers fails once; its retry waits for room in
    // the window the other silent ones fill.
    h.reply(&unanswered[0].1, 503);
    h.advance(Duration::from_millis(1100));
    assert!(
        h.drain().is_empty(),
        "no room for a watcher that has not answered"
    );
    for (_, n) in &unanswered[1..] {
        h.reply(n, 408);
    }
    let retry = h.drain();
    assert_eq!(retry.len(), 1, "room again: the retry goes");
    assert_eq!(retry[0].0, 100);
}

#[test]
fn notify_failures_end_or_retry() {
    let config = NotifierConfig {
        min_notify_interval: Duration::ZERO,
        retry_base: Duration::from_secs(1),
        ..NotifierConfig::default()
    };
    let mut h = Harness::new(config);
    h.subscribe(1);
    h.subscribe(2);
    let sent = h.drain();
    h.reply(&sent[0].1, 481);
    h.reply(&sent[1].1, 503);
    assert_eq!(h.notifier.stats().active, 1, "481 ends the subscription");
    assert!(h.drain().is_empty());
    h.advance(Duration::from_millis(1100));
    let retry = h.drain();
    assert_eq!(retry.len(), 1, "503 is retried after the backoff");
    assert_eq!(retry[0].0, 2);
    h.reply(&retry[0].1, 408);
    assert_eq!(h.notifier.stats().active, 0);
    assert_eq!(h.notifier.stats().notifies_failed, 2);
}

#[test]
fn microsoft_dialect_benotify_and_piggyback() {
    let mut h = Harness::new(NotifierConfig {
        min_notify_interval: Duration::ZERO,
        ..NotifierConfig::default()
    });
    let extra = "Event: presence\r\nAccept: application/msrtc-event-categories+xml, application/rlmi+xml, multipart/related\r\n\
                 Supported: ms-benotify\r\nProxy-Require: ms-benotify\r\nSupported: ms-piggyback-first-notify\r\nExpires: 600\r\n";
    let a = h.subscribe_with(1, extra, "");
    assert_eq!(a.code, 200);
    let supported = has(&a, "Supported").unwrap();
    assert!(supported.contains("ms-benotify") && supported.contains("ms-piggyback-first-notify"));
    let (content_type, doc) = a.body.clone().expect("first document in the 200");
    assert_eq!(content_type, "application/msrtc-event-categories+xml");
    assert!(std::str::from_utf8(&doc)
        .unwrap()
        .contains("<availability>3500</availability>"));
    assert!(has(&a, "ms-piggyback-cseq").is_some());
    assert!(h.drain().is_empty(), "the first NOTIFY waits for a change");
    h.set(Availability::BUSY);
    let sent = h.drain();
    assert_eq!(sent[0].1.method(), Some("BENOTIFY"));
    assert!(body(&sent[0].1).contains("<availability>6500</availability>"));
    // BENOTIFY gets no response, so the next change goes straight out.
    h.set(Availability::ONLINE);
    assert_eq!(h.drain()[0].1.method(), Some("BENOTIFY"));
}

#[test]
fn batched_subscription_gets_rlmi() {
    let mut h = Harness::new(NotifierConfig::default());
    let list = r#"<batchSub xmlns="http://schemas.microsoft.com/2006/01/sip/batch-subscribe" uri="sip:w1@fabrikam.com" name=""><action name="subscribe" id="1"><adhocList><resource uri="sip:helpdesk@contoso.com"/><resource uri="sip:bob@elsewhere.com"/></adhocList><categoryList xmlns="http://schemas.microsoft.com/2006/09/sip/categorylist"><category name="state"/></categoryList></action></batchSub>"#;
    let extra = "Event: presence\r\nRequire: adhoclist, categoryList\r\nSupported: eventlist\r\n\
                 Accept: application/msrtc-event-categories+xml, application/rlmi+xml, multipart/related\r\n\
                 Content-Type: application/msrtc-adrl-categorylist+xml\r\n";
    let a = h.subscribe_with(1, extra, list);
    assert_eq!(a.code, 200);
    let sent = h.drain();
    let notify = &sent[0].1;
    assert!(header(notify, "Content-Type")
        .starts_with("multipart/related;type=\"application/rlmi+xml\""));
    let doc = body(notify);
    assert!(doc.contains(
        "<resource uri=\"sip:helpdesk@contoso.com\"><instance id=\"0\" state=\"active\""
    ));
    assert!(doc.contains(
        "<resource uri=\"sip:bob@elsewhere.com\"><instance id=\"1\" state=\"resubscribe\"/>"
    ));
    assert!(doc.contains("<availability>3500</availability>"));
    assert_eq!(h.notifier.watcher_count(h.helpdesk), 1);
    h.reply(&sent[0].1.clone(), 200);
    h.advance(Duration::from_secs(6));
    h.set(Availability::AWAY);
    let sent = h.drain();
    assert_eq!(sent.len(), 1);
    assert!(body(&sent[0].1).contains("<availability>15500</availability>"));
}

#[test]
fn a_removed_endpoint_ends_its_subscriptions_with_noresource_and_can_come_back() {
    let mut h = Harness::new(NotifierConfig {
        min_notify_interval: Duration::ZERO,
        ..NotifierConfig::default()
    });
    let tag = h.subscribe(1).to_tag.unwrap();
    assert_eq!(h.subscribe_batch(2).code, 200);
    for (_, notify) in h.drain() {
        h.reply(&notify, 200);
    }
    assert_eq!(h.notifier.stats().active, 2);

    h.clock += jiff::SignedDuration::from_secs(1);
    h.notifier.remove_presentity(h.helpdesk, h.clock);
    let sent = h.drain();
    assert_eq!(sent.len(), 2, "{sent:?}");
    let single = &sent.iter().find(|(flow, _)| *flow == 1).unwrap().1;
    assert_eq!(
        header(single, "Subscription-State"),
        "terminated;reason=noresource"
    );
    assert!(
        body(single).contains("<basic>closed</basic>"),
        "offline at the end"
    );
    let listed = &sent.iter().find(|(flow, _)| *flow == 2).unwrap().1;
    assert!(
        header(listed, "Subscription-State").starts_with("active"),
        "the list lives on"
    );
    assert!(body(listed).contains(
        "<resource uri=\"sip:helpdesk@contoso.com\"><instance id=\"0\" state=\"terminated\" reason=\"noresource\"/>"
    ));
    for (_, notify) in &sent {
        h.reply(notify, 200);
    }
    assert_eq!(h.notifier.stats().active, 1, "only the list is left");
    // A state change after removal reaches nobody.
    h.set(Availability::BUSY);
    assert!(h.drain().is_empty());
    let refresh = format!(
        "SUBSCRIBE sip:192.0.2.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKr\r\n\
         From: <sip:w1@fabrikam.com>;tag=f1\r\nTo: <{ENDPOINT}>;tag={tag}\r\nCall-ID: call-1\r\n\
         CSeq: 2 SUBSCRIBE\r\nContact: <sip:w1@10.0.0.1>\r\nEvent: presence\r\nContent-Length: 0\r\n\r\n"
    );
    assert_eq!(h.answer(&refresh, 1).code, 481);

    // Back, with a new name: new subscriptions see it.
    h.clock += jiff::SignedDuration::from_secs(1);
    h.notifier.put_presentity(
        h.helpdesk,
        &Identity {
            uri: ENDPOINT.into(),
            display_name: "Contoso Service Desk".into(),
            capabilities: Capabilities {
                text: true,
                voice: false,
            },
        },
        PresenceState::new(Availability::ONLINE),
        h.clock,
    );
    assert_eq!(h.subscribe(3).code, 200);
    let sent = h.drain();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        header(&sent[0].1, "Subscription-State"),
        "active;expires=600"
    );
    assert!(body(&sent[0].1).contains("<basic>open</basic>"));
}

#[test]
fn watcher_info_for_the_endpoint_itself() {
    let mut h = Harness::new(NotifierConfig {
        min_notify_interval: Duration::ZERO,
        ..NotifierConfig::default()
    });
    let owner = format!(
        "SUBSCRIBE {ENDPOINT} SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKo\r\n\
         From: <{ENDPOINT}>;tag=o\r\nTo: <{ENDPOINT}>\r\nCall-ID: winfo\r\nCSeq: 1 SUBSCRIBE\r\n\
         Contact: <sip:owner@10.0.0.9>\r\nEvent: presence.winfo\r\nAccept: application/watcherinfo+xml\r\nContent-Length: 0\r\n\r\n"
    );
    assert_eq!(h.answer(&owner, 9).code, 200);
    let first = h.drain();
    assert_eq!(header(&first[0].1, "Event"), "presence.winfo");
    assert!(!body(&first[0].1).contains("<watcher "));
    h.reply(&first[0].1, 200);
    h.subscribe(1);
    let sent = h.drain();
    let winfo = sent.iter().find(|(f, _)| *f == 9).expect("winfo NOTIFY");
    assert!(body(&winfo.1).contains("status=\"active\">sip:w1@fabrikam.com</watcher>"));
    // Somebody else may not watch the watchers.
    let stranger = owner
        .replace(
            &format!("From: <{ENDPOINT}>"),
            "From: <sip:eve@fabrikam.com>",
        )
        .replace("Call-ID: winfo", "Call-ID: w2");
    assert_eq!(h.answer(&stranger, 8).code, 403);
}

#[test]
fn unsubscribe_while_a_notify_is_unanswered_still_gets_the_final_notify() {
    let mut h = Harness::new(NotifierConfig::default());
    let tag = h.subscribe(1).to_tag.unwrap();
    let first = h.drain();
    let in_dialog = |cseq: u32, expires: u32| {
        format!(
            "SUBSCRIBE sip:192.0.2.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKu{cseq}\r\n\
             From: <sip:w1@fabrikam.com>;tag=f1\r\nTo: <{ENDPOINT}>;tag={tag}\r\nCall-ID: call-1\r\n\
             CSeq: {cseq} SUBSCRIBE\r\nContact: <sip:w1@10.0.0.1>\r\nEvent: presence\r\nExpires: {expires}\r\nContent-Length: 0\r\n\r\n"
        )
    };
    // The first NOTIFY is still unanswered when the watcher unsubscribes.
    assert_eq!(h.answer(&in_dialog(2, 0), 1).code, 200);
    assert!(h.drain().is_empty(), "one NOTIFY at a time");
    h.reply(&first[0].1, 200);
    let last = h.drain();
    assert_eq!(last.len(), 1, "the final NOTIFY follows");
    assert_eq!(
        header(&last[0].1, "Subscription-State"),
        "terminated;reason=timeout"
    );
    assert_eq!(h.notifier.stats().active, 1);
    h.reply(&last[0].1, 200);
    assert_eq!(h.notifier.stats().active, 0);
}

/// Watcher `w`'s SUBSCRIBE in its dialog (CSeq 2), as `Harness::subscribe_with` made it.
fn resubscribe(w: u32, to_tag: &str, expires: u32) -> String {
    format!(
        "SUBSCRIBE sip:192.0.2.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.{w};branch=z9hG4bKr{w}\r\n\
         From: <sip:w{w}@fabrikam.com>;tag=f{w}\r\nTo: <{ENDPOINT}>;tag={to_tag}\r\nCall-ID: call-{w}\r\n\
         CSeq: 2 SUBSCRIBE\r\nContact: <sip:w{w}@10.0.0.{w}>\r\nEvent: presence\r\nExpires: {expires}\r\nContent-Length: 0\r\n\r\n"
    )
}

#[test]
fn saved_subscriptions_come_back_with_their_dialogs_and_are_renotified_paced() {
    let mut h = Harness::new(NotifierConfig::default());
    h.notifier.record_changes();
    let mut tags = Vec::new();
    for w in 1..=40 {
        tags.push(h.subscribe(w).to_tag.unwrap());
    }
    for (_, n) in h.drain() {
        h.reply(&n, 200);
    }
    // One unsubscribes; its final NOTIFY is answered, so its slot is free.
    assert_eq!(h.answer(&resubscribe(3, &tags[2], 0), 3).code, 200);
    for (_, n) in h.drain() {
        h.reply(&n, 200);
    }
    let mut changed = Vec::new();
    h.notifier.take_changed(&mut changed);
    assert_eq!(
        changed.len(),
        40,
        "each slot once, however often it changed"
    );
    let unix_now = 1_800_000_000;
    let saved: Vec<_> = changed
        .iter()
        .filter_map(|&i| h.notifier.saved(i, h.now, unix_now))
        .collect();
    assert_eq!(saved.len(), 39, "the ended one is deleted, not saved");
    assert!(saved
        .iter()
        .all(|s| s.local_cseq == 1 && s.remote_cseq == 1));

    // A new notifier with the same salt, ten seconds later.
    let mut restarted = Harness::new(NotifierConfig::default());
    restarted.now += Duration::from_secs(10);
    let helpdesk = restarted.helpdesk;
    for s in saved.iter().cloned() {
        restarted
            .notifier
            .restore(
                s,
                &|uri| porchlight_presence::same_aor(uri, ENDPOINT).then_some(helpdesk),
                restarted.now,
                unix_now + 10,
            )
            .expect("restored");
    }
    let expired = saved[0].clone();
    assert_eq!(
        restarted
            .notifier
            .restore(expired, &|_| Some(0), restarted.now, unix_now + 601)
            .unwrap_err(),
        porchlight_presence::RestoreError::Expired
    );
    assert_eq!(restarted.notifier.stats().active, 39);
    restarted.notifier.pace_recovery(Duration::from_secs(2));
    // About 19.5 a second: one at once, the rest over the window.
    let first = restarted.drain();
    assert_eq!(first.len(), 1, "no storm");
    let mut notified = first;
    for _ in 0..25 {
        restarted.advance(Duration::from_millis(100));
        notified.extend(restarted.drain());
    }
    assert_eq!(notified.len(), 39, "everyone within the window and a bit");
    for (_, n) in &notified {
        assert_eq!(
            n.cseq().unwrap().seq,
            2,
            "CSeq carries on from the saved one"
        );
        let left: u32 = header(n, "Subscription-State")["active;expires=".len()..]
            .parse()
            .unwrap();
        assert!((587..=590).contains(&left), "the expiry carries on: {left}");
        let w: u32 = n.call_id().unwrap()["call-".len()..].parse().unwrap();
        assert_eq!(n.from().unwrap().tag(), Some(tags[w as usize - 1].as_str()));
    }
    // The watcher's refresh with its old To tag finds its dialog.
    assert_eq!(
        restarted.answer(&resubscribe(7, &tags[6], 600), 7).code,
        200
    );
    // The freed slot stays free for newcomers, and the next is not a clash.
    assert_eq!(restarted.subscribe(99).code, 200);
    assert_eq!(restarted.notifier.stats().active, 40);
}

#[test]
fn another_nodes_subscriptions_are_taken_over_with_the_tags_their_watchers_hold() {
    // Node 1 of a cluster holds ten watchers; node 2 already holds its own
    // in the same slots.
    let mut one = Harness::new(NotifierConfig::default());
    one.notifier.set_origin("1-0");
    one.notifier.record_changes();
    let tags: Vec<String> = (1..=10).map(|w| one.subscribe(w).to_tag.unwrap()).collect();
    assert!(tags.iter().all(|t| t.starts_with("1-0.")), "{tags:?}");
    for (_, n) in one.drain() {
        one.reply(&n, 200);
    }
    let mut changed = Vec::new();
    one.notifier.take_changed(&mut changed);
    let unix_now = 1_800_000_000;
    let saved: Vec<_> = changed
        .iter()
        .filter_map(|&i| one.notifier.saved(i, one.now, unix_now))
        .collect();

    let mut two = Harness::new(NotifierConfig::default());
    two.notifier.set_origin("2-0");
    two.notifier.record_changes();
    let own: Vec<String> = (101..=110)
        .map(|w| two.subscribe(w).to_tag.unwrap())
        .collect();
    for (_, n) in two.drain() {
        two.reply(&n, 200);
    }
    // Node 1's tags are not node 2's: a refresh reaching node 2 is told
    // apart from a dialog it never had.
    assert_eq!(two.notifier.foreign_origin(&tags[0]), Some("1-0"));
    assert_eq!(two.notifier.foreign_origin(&own[0]), None);
    // A made-up tag in node 1's form names no node: its check fails.
    let (prefix, check) = tags[0].rsplit_once('.').unwrap();
    let forged = format!("{prefix}.{:x}", u32::from_str_radix(check, 16).unwrap() ^ 1);
    assert_eq!(two.notifier.foreign_origin(&forged), None);
    assert_eq!(two.notifier.foreign_origin("1-0.1.0"), None);

    let helpdesk = two.helpdesk;
    for s in saved.iter().cloned() {
        assert!(!two.notifier.is_own(&s));
        let mut s = s;
        s.local_cseq += 1000;
        two.notifier
            .restore(
                s,
                &|uri| porchlight_presence::same_aor(uri, ENDPOINT).then_some(helpdesk),
                two.now,
                unix_now,
            )
            .expect("taken over");
    }
    assert_eq!(two.notifier.stats().active, 20);
    assert_eq!(two.notifier.foreign_origin(&tags[0]), None, "now node 2's");
    two.notifier.pace_recovery(Duration::from_millis(100));
    let mut notified = two.drain();
    for _ in 0..5 {
        two.advance(Duration::from_millis(50));
        notified.extend(two.drain());
    }
    assert_eq!(
        notified.len(),
        10,
        "each adopted watcher once, none of node 2's own"
    );
    for (_, n) in &notified {
        let w: usize = n.call_id().unwrap()["call-".len()..].parse().unwrap();
        assert_eq!(
            n.from().unwrap().tag(),
            Some(tags[w - 1].as_str()),
            "the tag it holds"
        );
        assert_eq!(
            n.cseq().unwrap().seq,
            1002,
            "past what node 1 may have sent"
        );
    }
    // Its refresh with the old tag finds the dialog on node 2, and node 2's
    // own dialogs are untouched.
    assert_eq!(two.answer(&resubscribe(4, &tags[3], 600), 4).code, 200);
    assert_eq!(two.answer(&resubscribe(104, &own[3], 600), 104).code, 200);
    // Saved again by node 2, an adopted dialog keeps its tag, and ending
    // it frees the tag.
    let mut changed = Vec::new();
    two.notifier.take_changed(&mut changed);
    let resaved: Vec<_> = changed
        .iter()
        .filter_map(|&i| two.notifier.saved(i, two.now, unix_now))
        .collect();
    assert!(tags
        .iter()
        .all(|t| resaved.iter().any(|s| s.tag.as_deref() == Some(t.as_str()))));
    assert_eq!(two.answer(&resubscribe(5, &tags[4], 0), 5).code, 200);
    for (_, n) in two.drain() {
        two.reply(&n, 200);
    }
    assert_eq!(two.answer(&resubscribe(5, &tags[4], 600), 5).code, 481);
}

#[test]
fn a_policy_change_ends_the_subscriptions_it_refuses_with_rejected() {
    let mut h = Harness::new(NotifierConfig {
        min_notify_interval: Duration::ZERO,
        ..NotifierConfig::default()
    });
    // Flows 1 and 3 are partners the new policy refuses; 2 stays allowed.
    let tag = h.subscribe(1).to_tag.unwrap();
    assert_eq!(h.subscribe(2).code, 200);
    assert_eq!(h.subscribe_batch(3).code, 200);
    for (_, notify) in h.drain() {
        h.reply(&notify, 200);
    }
    assert_eq!(h.notifier.stats().active, 3);

    let mut asked = Vec::new();
    let ended = h.notifier.revoke(&mut |slot, watcher, flow| {
        asked.push((slot, watcher.to_owned(), *flow));
        *flow != 2
    });
    assert_eq!(
        ended, 1,
        "one single subscription refused; the list lives on"
    );
    asked.sort();
    assert_eq!(
        asked,
        [
            (0, "sip:w1@fabrikam.com".to_owned(), 1),
            (0, "sip:w2@fabrikam.com".to_owned(), 2),
            (0, "sip:w3@fabrikam.com".to_owned(), 3),
        ]
    );
    let sent = h.drain();
    assert_eq!(sent.len(), 2, "{sent:?}");
    let single = &sent.iter().find(|(flow, _)| *flow == 1).unwrap().1;
    assert_eq!(
        header(single, "Subscription-State"),
        "terminated;reason=rejected"
    );
    let listed = &sent.iter().find(|(flow, _)| *flow == 3).unwrap().1;
    assert!(header(listed, "Subscription-State").starts_with("active"));
    assert!(
        body(listed).contains(
            "<resource uri=\"sip:helpdesk@contoso.com\"><instance id=\"0\" state=\"resubscribe\"/>"
        ),
        "{}",
        body(listed)
    );
    for (_, notify) in &sent {
        h.reply(notify, 200);
    }
    assert_eq!(h.notifier.stats().active, 2);
    // The refused watcher's refresh finds no dialog; the allowed one hears
    // the next change, the list no longer does.
    assert_eq!(h.answer(&resubscribe(1, &tag, 600), 1).code, 481);
    h.set(Availability::BUSY);
    let sent = h.drain();
    assert_eq!(
        sent.iter().map(|(flow, _)| *flow).collect::<Vec<_>>(),
        [2],
        "{sent:?}"
    );
    // Asking again changes nothing: what ended stays ended, once.
    assert_eq!(h.notifier.revoke(&mut |_, _, flow| *flow != 2), 0);
    assert!(h.drain().is_empty());
}
