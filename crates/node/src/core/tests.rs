//! The core in memory, in the style of quinn-proto's `Pair`: virtual time,
//! fake links, and every action drained and looked at. Each scenario is a
//! whole exchange a real peer would have with the node, run in
//! milliseconds with no socket, task or clock.

// Virtual time starts from a real instant, and the tests time themselves.
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use porchlight_link::{
    ConnectionId, IdentitySource, Origin, PeerIdentity, Protocol, Received, Target,
};
use porchlight_sip::{Framing, Limits, Message};

use super::*;
use crate::outbound::Reach;

/// The partner's mutual-TLS connection, proving fabrikam.com.
const PARTNER: ConnectionId = ConnectionId(7);

/// Connections as the tests set them up: UDP and connections are ready,
/// the partner's connection speaks for fabrikam.com.
struct FakeLinks;

impl Reach for FakeLinks {
    fn ready(&self, target: &Target) -> Option<Target> {
        match target {
            Target::Address {
                protocol: Protocol::Tcp | Protocol::Tls,
                ..
            } => None,
            _ => Some(target.clone()),
        }
    }

    fn verified(&self, domain: &str) -> Option<Target> {
        (domain == "fabrikam.com").then_some(Target::Connection(PARTNER))
    }
}

impl Links for FakeLinks {
    fn connection_protocol(&self, id: ConnectionId) -> Option<Protocol> {
        (id == PARTNER).then_some(Protocol::Tls)
    }
}

/// The embedded defaults for contoso.com, with `edits` as (old, new)
/// replacements and `extra` appended.
fn config(edits: &[(&str, &str)], extra: &str) -> Config {
    let mut text = crate::DEFAULT_CONFIG
        .replace(
            "domains = [\"porchlight.test\"]",
            "domains = [\"contoso.com\"]",
        )
        .replace(
            "uri = \"sip:helpdesk@porchlight.test\"",
            "uri = \"sip:helpdesk@contoso.com\"",
        )
        .replace(
            "allowed_domains = []",
            "allowed_domains = [{ domain = \"fabrikam.com\" }]",
        );
    for (old, new) in edits {
        assert!(text.contains(old), "default config has no {old:?}");
        text = text.replace(old, new);
    }
    text.push_str(extra);
    Config::parse(&text, "test", Path::new(".")).expect("a valid configuration")
}

/// A core and its world: virtual time, and what it sent.
struct Harness {
    core: Core,
    now: Now,
    /// Messages sent, with where, in order.
    sent: Vec<(Target, Message)>,
    /// Every other action, in order.
    actions: Vec<Action>,
}

impl Harness {
    fn new(config: &Config) -> Harness {
        // A fixed date: the wall clock is virtual too.
        let wall = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let now = Now::from_clocks(Instant::now(), wall);
        let presence = PresenceService::new(config, 0x5eed, now);
        let probes = presence
            .directory()
            .iter()
            .map(|(slot, e)| (slot, e.health.clone()))
            .collect();
        let local: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let core = Core::new(
            config,
            Started {
                links: Arc::new(FakeLinks),
                local_addrs: vec![(Protocol::Udp, local), (Protocol::Tls, tls_local())],
                local: LocalNames {
                    hosts: ["contoso.com", "127.0.0.1"].map(String::from).into(),
                    addresses: vec![local.ip()],
                    ports: vec![5060, 5061],
                },
                presence,
                timers: TimerConfig {
                    t1: Duration::from_millis(500),
                    t2: Duration::from_secs(4),
                    t4: Duration::from_secs(5),
                },
                tag_seed: 0x5eed,
                edge_secret: [7; 32],
                restored: 0,
                probes,
                now,
            },
        );
        let mut harness = Harness {
            core,
            now,
            sent: Vec::new(),
            actions: Vec::new(),
        };
        harness.drain();
        harness
    }

    /// Takes every action the core has, parsing what it sends.
    fn drain(&mut self) {
        while let Some(action) = self.core.poll_output(self.now) {
            match action {
                Action::Send { target, message } => {
                    let parsed =
                        Message::parse(message.bytes, Framing::Datagram, &Limits::default())
                            .expect("the node sends well-formed SIP");
                    self.sent.push((target, parsed));
                }
                other => self.actions.push(other),
            }
        }
    }

    /// A message arrives from `origin`.
    fn receive(&mut self, text: &str, origin: &Origin) {
        // Tests write bare line feeds; what the node sent keeps its CRLF.
        let text = if text.contains('\r') {
            text.to_owned()
        } else {
            text.replace('\n', "\r\n")
        };
        let message = Message::parse(Bytes::from(text), Framing::Datagram, &Limits::default())
            .expect("the test writes well-formed SIP");
        let input = Input::Received(Received::Message(message, origin.clone()));
        self.core.handle(self.now, input);
        self.drain();
    }

    /// Virtual time moves on by `by`, firing every timer due on the way.
    fn advance(&mut self, by: Duration) {
        let until = self.now.after(by);
        while let Some(at) = self
            .core
            .poll_timeout(self.now)
            .filter(|at| *at <= until.mono)
        {
            self.now = self.now.after(at.saturating_duration_since(self.now.mono));
            self.core.handle_timeout(self.now);
            self.drain();
        }
        self.now = until;
        self.core.handle_timeout(self.now);
        self.drain();
    }

    /// What was sent since the last call.
    fn take_sent(&mut self) -> Vec<(Target, Message)> {
        std::mem::take(&mut self.sent)
    }

    /// Answers every NOTIFY sent so far with 200, as a watcher that is there.
    fn answer_notifies(&mut self, sent: &[(Target, Message)], origin: &Origin) {
        for (_, m) in sent.iter().filter(|(_, m)| m.method() == Some("NOTIFY")) {
            let ok = porchlight_sip::response_to(m, 200, "OK", None, None).finish(b"");
            self.receive(&String::from_utf8_lossy(&ok), origin);
        }
    }
}

fn tls_local() -> SocketAddr {
    "127.0.0.1:5061".parse().unwrap()
}

/// A watcher or user inside the edge, on the trusted networks.
fn inside() -> Origin {
    Origin {
        protocol: Protocol::Udp,
        source: "127.0.0.1:5070".parse().unwrap(),
        local: "127.0.0.1:5060".parse().unwrap(),
        connection: None,
        peer: None,
    }
}

/// fabrikam.com's edge, on its mutual-TLS connection from outside.
fn partner() -> Origin {
    Origin {
        protocol: Protocol::Tls,
        source: "198.51.100.7:40000".parse().unwrap(),
        local: tls_local(),
        connection: Some(PARTNER),
        peer: Some(Arc::new(PeerIdentity {
            domains: vec!["fabrikam.com".into()],
            source: IdentitySource::SanUri,
            not_after: 4_102_444_800,
        })),
    }
}

fn text(m: &Message) -> String {
    String::from_utf8_lossy(m.as_bytes()).into_owned()
}

fn statuses(sent: &[(Target, Message)]) -> Vec<u16> {
    sent.iter().filter_map(|(_, m)| m.status()).collect()
}

fn requests<'a>(sent: &'a [(Target, Message)], method: &str) -> Vec<&'a (Target, Message)> {
    sent.iter()
        .filter(|(_, m)| m.method() == Some(method))
        .collect()
}

fn subscribe(call_id: &str, from: &str, via: &str, expires: u32) -> String {
    format!(
        "SUBSCRIBE sip:helpdesk@contoso.com SIP/2.0\n\
         Via: SIP/2.0/{via};branch=z9hG4bK{call_id}\n\
         Max-Forwards: 70\nFrom: <{from}>;tag=w1\nTo: <sip:helpdesk@contoso.com>\n\
         Call-ID: {call_id}\nCSeq: 1 SUBSCRIBE\nContact: <sip:watcher@192.0.2.10>\n\
         Event: presence\nAccept: application/pidf+xml\nExpires: {expires}\n\
         Content-Length: 0\n\n"
    )
}

#[test]
fn a_subscription_is_notified_and_ends_with_a_final_notify_at_expiry() {
    let started = Instant::now();
    let mut h = Harness::new(&config(&[], ""));
    let watcher = inside();
    h.receive(
        &subscribe("sub1", "sip:alice@contoso.com", "UDP 127.0.0.1:5070", 60),
        &watcher,
    );
    let sent = h.take_sent();
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
    h.answer_notifies(&sent, &watcher);

    // Nothing is said before the subscription runs out, then a final NOTIFY.
    h.advance(Duration::from_secs(59));
    assert!(requests(&h.take_sent(), "NOTIFY").is_empty());
    h.advance(Duration::from_secs(2));
    let sent = h.take_sent();
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
    h.answer_notifies(&sent, &watcher);
    h.advance(Duration::from_secs(40));
    assert!(
        requests(&h.take_sent(), "NOTIFY").is_empty(),
        "answered, it is not sent again"
    );
    assert_eq!(h.core.status(h.now.mono).subscriptions_active, 0);
    assert!(started.elapsed() < Duration::from_secs(1), "virtual time");
}

#[test]
fn a_policy_change_ends_a_partners_subscription_with_rejected() {
    let mut h = Harness::new(&config(&[], ""));
    let fabrikam = partner();
    h.receive(
        &subscribe("fed1", "sip:bob@fabrikam.com", "TLS edge.fabrikam.com", 600),
        &fabrikam,
    );
    let sent = h.take_sent();
    assert_eq!(statuses(&sent), [200]);
    let notifies = requests(&sent, "NOTIFY");
    assert_eq!(notifies.len(), 1);
    assert_eq!(
        notifies[0].0,
        Target::Connection(PARTNER),
        "to the partner by name: its verified connection"
    );
    h.answer_notifies(&sent, &fabrikam);

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
    let endpoints = porchlight_endpoints::EndpointSet::new(blocked.endpoints.clone()).unwrap();
    let (reply, applied) = std::sync::mpsc::channel();
    let reply = crate::status::Reply::new(move |answer| {
        let _ = reply.send(answer);
    });
    let query = Query::Apply(Box::new(blocked.policy.clone()), endpoints, reply);
    h.core.handle(h.now, Input::Query(query));
    h.drain();
    assert!(applied.try_recv().is_ok(), "the change is acknowledged");
    let sent = h.take_sent();
    let last = requests(&sent, "NOTIFY");
    assert_eq!(last.len(), 1, "{sent:?}");
    assert!(
        text(&last[0].1).contains("Subscription-State: terminated;reason=rejected"),
        "{}",
        text(&last[0].1)
    );
    // Its refresh now gets 481.
    let mut refresh = subscribe("fed1", "sip:bob@fabrikam.com", "TLS edge.fabrikam.com", 600)
        .replace("CSeq: 1", "CSeq: 2")
        .replace("branch=z9hG4bKfed1", "branch=z9hG4bKfed1r");
    let tag = sent
        .iter()
        .find_map(|(_, m)| m.from().ok()?.tag().map(str::to_owned))
        .unwrap();
    refresh = refresh.replace(
        "To: <sip:helpdesk@contoso.com>",
        &format!("To: <sip:helpdesk@contoso.com>;tag={tag}"),
    );
    h.receive(&refresh, &fabrikam);
    assert_eq!(statuses(&h.take_sent()), [481]);
}

#[test]
fn a_partners_call_to_the_inside_is_proxied_and_cancelled() {
    let inside_hop: SocketAddr = "10.0.0.5:5060".parse().unwrap();
    let mut h = Harness::new(&config(
        &[(
            "internal_next_hop = \"\"",
            "internal_next_hop = \"sip:10.0.0.5:5060\"",
        )],
        "",
    ));
    let fabrikam = partner();
    let invite = "INVITE sip:bob@contoso.com SIP/2.0\n\
         Via: SIP/2.0/TLS edge.fabrikam.com;branch=z9hG4bKcall1\n\
         Max-Forwards: 70\nFrom: <sip:alice@fabrikam.com>;tag=a1\nTo: <sip:bob@contoso.com>\n\
         Call-ID: call1\nCSeq: 1 INVITE\nContact: <sip:alice@edge.fabrikam.com;transport=tls>\n\
         Content-Length: 0\n\n";
    h.receive(invite, &fabrikam);
    let sent = h.take_sent();
    let forwarded = requests(&sent, "INVITE");
    assert_eq!(forwarded.len(), 1, "{sent:?}");
    let (to, copy) = forwarded[0];
    assert_eq!(
        *to,
        Target::Address {
            protocol: Protocol::Udp,
            addr: inside_hop,
            domain: None
        }
    );
    assert!(
        copy.items(porchlight_sip::HeaderName::RecordRoute).count() >= 1,
        "the edge stays in the dialog: {}",
        text(copy)
    );
    assert_eq!(copy.vias().count(), 2, "our Via on top of the partner's");
    // The inside rings.
    let ringing = porchlight_sip::response_to(copy, 180, "Ringing", None, Some("b1")).finish(b"");
    h.receive(&String::from_utf8_lossy(&ringing), &inside());
    let sent = h.take_sent();
    assert!(
        sent.iter()
            .any(|(to, m)| *to == Target::Connection(PARTNER) && m.status() == Some(180)),
        "the 180 goes back to the partner: {sent:?}"
    );

    // The caller gives up.
    let cancel = "CANCEL sip:bob@contoso.com SIP/2.0\n\
         Via: SIP/2.0/TLS edge.fabrikam.com;branch=z9hG4bKcall1\n\
         Max-Forwards: 70\nFrom: <sip:alice@fabrikam.com>;tag=a1\nTo: <sip:bob@contoso.com>\n\
         Call-ID: call1\nCSeq: 1 CANCEL\nContent-Length: 0\n\n";
    h.receive(cancel, &fabrikam);
    let sent = h.take_sent();
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
    let ok = porchlight_sip::response_to(&cancels[0].1, 200, "OK", None, Some("b1")).finish(b"");
    h.receive(&String::from_utf8_lossy(&ok), &inside());
    let terminated =
        porchlight_sip::response_to(copy, 487, "Request Terminated", None, Some("b1")).finish(b"");
    h.receive(&String::from_utf8_lossy(&terminated), &inside());
    let sent = h.take_sent();
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
    assert_eq!(h.core.status(h.now.mono).proxied_in_progress, 0);
}

#[test]
fn a_webhook_apps_reply_goes_back_to_the_sender() {
    let bot = "\n[[endpoint]]\nuri = \"sip:bot@contoso.com\"\ndisplay_name = \"Bot\"\n\
               [endpoint.webhook]\nurl = \"http://127.0.0.1:9/hook\"\nsecret = \"s\"\n";
    let mut h = Harness::new(&config(&[], bot));
    let message = "MESSAGE sip:bot@contoso.com SIP/2.0\n\
         Via: SIP/2.0/TLS edge.fabrikam.com;branch=z9hG4bKim1\n\
         Max-Forwards: 70\nFrom: <sip:bob@fabrikam.com>;tag=c1\nTo: <sip:bot@contoso.com>\n\
         Call-ID: im1\nCSeq: 1 MESSAGE\nContent-Type: text/plain\nContent-Length: 5\n\nhello";
    h.receive(message, &partner());
    assert!(
        statuses(&h.take_sent()).iter().all(|s| *s < 200),
        "no final answer before the app's"
    );
    let posted = h
        .actions
        .iter()
        .find_map(|a| match a {
            Action::Post {
                delivery, message, ..
            } => Some((*delivery, message.text.clone(), message.verified)),
            _ => None,
        })
        .expect("the text is posted to the app");
    assert_eq!(posted.1, "hello");
    assert!(posted.2, "fabrikam.com's edge vouches for its users");
    let outcome = crate::webhook::Outcome::Delivered {
        status: 200,
        reply: Some("hi, bob".into()),
    };
    h.core.handle(
        h.now,
        Input::Posted {
            delivery: posted.0,
            outcome,
        },
    );
    h.drain();
    let sent = h.take_sent();
    assert!(
        sent.iter()
            .any(|(to, m)| *to == Target::Connection(PARTNER) && m.status() == Some(200)),
        "the sender hears the app took it: {sent:?}"
    );
    let replies = requests(&sent, "MESSAGE");
    assert_eq!(replies.len(), 1, "{sent:?}");
    let (to, reply) = replies[0];
    assert_eq!(*to, Target::Connection(PARTNER), "out to the sender's edge");
    assert_eq!(reply.body(), b"hi, bob");
    assert_eq!(reply.request_uri(), Some("sip:bob@fabrikam.com"));
    assert!(
        text(reply).contains("From: <sip:bot@contoso.com>"),
        "{}",
        text(reply)
    );
}

#[test]
fn the_history_keeps_the_last_hour_of_samples_and_the_busiest_partners() {
    let mut h = Harness::new(&config(
        &[("history_interval_secs = 10", "history_interval_secs = 60")],
        "",
    ));
    h.receive(
        &subscribe("hist1", "sip:alice@contoso.com", "UDP 127.0.0.1:5070", 600),
        &inside(),
    );
    let mut status = h.core.status(h.now.mono);
    // More partners than a sample keeps: the busiest are kept.
    status.partners = (0..20u64)
        .map(|n| crate::status::PartnerTraffic {
            partner: format!("p{n:02}.example"),
            requests_in: n,
            requests_out: 1,
            requests_refused: 0,
            certificate_not_after: None,
        })
        .collect();
    // Two hours of samples a minute apart: only the last hour stays.
    for minute in 0..120 {
        h.core.record_history(1_800_000_000 + minute * 60, &status);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let reply = crate::status::Reply::new(move |answer| {
        let _ = tx.send(answer);
    });
    h.core.handle(h.now, Input::Query(Query::History(reply)));
    let view = rx.try_recv().expect("the core answers at once");
    assert_eq!(view.interval_secs, 60);
    assert_eq!(view.samples.len(), 60, "an hour at one a minute");
    assert_eq!(
        view.samples[0].at,
        1_800_000_000 + 60 * 60,
        "the oldest hour is gone"
    );
    let last = view.samples.last().unwrap();
    assert_eq!(last.subscriptions_active, 1);
    let kept: Vec<&str> = last.partners.iter().map(|p| p.partner.as_str()).collect();
    assert_eq!(kept.len(), crate::history::MAX_CHARTED_PARTNERS);
    assert_eq!(kept[0], "p19.example");
    assert_eq!(last.partners[0].requests, 20);
}

/// The final answers among what was sent (an INVITE's 100 Trying left out).
fn finals(sent: &[(Target, Message)]) -> Vec<u16> {
    statuses(sent).into_iter().filter(|c| *c >= 200).collect()
}

/// A request of `method` to `uri` from fabrikam.com's edge.
fn from_partner(method: &str, uri: &str, call_id: &str) -> String {
    format!(
        "{method} {uri} SIP/2.0\n\
         Via: SIP/2.0/TLS edge.fabrikam.com;branch=z9hG4bK{call_id}\n\
         Max-Forwards: 70\nFrom: <sip:bob@fabrikam.com>;tag=b1\nTo: <{uri}>\n\
         Call-ID: {call_id}\nCSeq: 1 {method}\nContact: <sip:bob@192.0.2.10>\n\
         Event: presence\nContent-Length: 0\n\n"
    )
}

#[test]
fn the_router_answers_what_the_node_answers_itself_through_a_transaction() {
    let mut h = Harness::new(&config(&[], ""));
    let fabrikam = partner();
    // (request, the answer, a header it must carry)
    let cases = [
        ("OPTIONS", "sip:contoso.com", 200, Some("Allow-Events")),
        ("FROB", "sip:contoso.com", 501, Some("Allow")),
        ("CANCEL", "sip:helpdesk@contoso.com", 481, None),
        ("BYE", "sip:helpdesk@contoso.com", 481, None),
        ("INVITE", "sip:nobody@contoso.com", 404, None),
        ("MESSAGE", "sip:carol@northwind.example", 403, None),
    ];
    for (i, (method, uri, code, header)) in cases.into_iter().enumerate() {
        h.receive(&from_partner(method, uri, &format!("r{i}")), &fabrikam);
        let sent = h.take_sent();
        assert_eq!(finals(&sent), [code], "{method} {uri}");
        if let Some(header) = header {
            let answer = sent
                .iter()
                .map(|(_, m)| m)
                .find(|m| m.status() == Some(code));
            assert!(
                text(answer.unwrap()).contains(&format!("\r\n{header}: ")),
                "{method}"
            );
        }
        // A retransmission gets the same answer, from the transaction.
        h.receive(&from_partner(method, uri, &format!("r{i}")), &fabrikam);
        assert_eq!(finals(&h.take_sent()), [code], "{method} again");
    }
}

#[test]
fn a_missing_endpoint_is_hidden_from_a_partner_and_not_from_the_inside() {
    let mut h = Harness::new(&config(
        &[(
            "hide_missing_endpoints = false",
            "hide_missing_endpoints = true",
        )],
        "",
    ));
    for method in ["SUBSCRIBE", "INVITE", "MESSAGE"] {
        h.receive(
            &from_partner(method, "sip:nobody@contoso.com", method),
            &partner(),
        );
        assert_eq!(finals(&h.take_sent()), [403], "{method}");
    }
    // The one that exists is served, so the 403 says nothing of it.
    h.receive(
        &subscribe("known", "sip:bob@fabrikam.com", "TLS edge.fabrikam.com", 60),
        &partner(),
    );
    assert_eq!(finals(&h.take_sent()), [200]);
    h.receive(
        &subscribe("inside", "sip:alice@contoso.com", "UDP 127.0.0.1:5070", 60)
            .replace("helpdesk@", "nobody@"),
        &inside(),
    );
    assert_eq!(finals(&h.take_sent()), [404], "the inside is told");
}

#[test]
fn a_fenced_node_asks_new_watchers_to_come_back_rather_than_refusing_them() {
    let mut h = Harness::new(&config(&[], ""));
    h.core.handle(h.now, Input::Fenced(true));
    h.drain();
    h.receive(
        &subscribe("fenced", "sip:alice@contoso.com", "UDP 127.0.0.1:5070", 60),
        &inside(),
    );
    let sent = h.take_sent();
    assert_eq!(finals(&sent), [503]);
    assert!(text(&sent[0].1).contains("\r\nRetry-After: 5\r\n"));
    assert!(requests(&sent, "NOTIFY").is_empty());
    h.core.handle(h.now, Input::Fenced(false));
    h.drain();
    h.receive(
        &subscribe("later", "sip:alice@contoso.com", "UDP 127.0.0.1:5070", 60),
        &inside(),
    );
    assert_eq!(finals(&h.take_sent()), [200]);
}
