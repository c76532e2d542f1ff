//! Micro-benchmarks of the presence hot paths: rendering a document,
//! accepting a subscription, and building the NOTIFYs of a fan-out.

// `criterion_group!` writes an undocumented public function.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use porchlight_presence::document::{render, Snapshot};
use porchlight_presence::{
    Authorization, Availability, Capabilities, FlowInfo, Format, Identity, Notifier,
    NotifierConfig, NotifyRef, PresenceState,
};
use porchlight_sip::{Framing, Limits, Message};

fn identity() -> Identity {
    Identity {
        uri: "sip:helpdesk@contoso.com".into(),
        display_name: "Contoso Help Desk".into(),
        capabilities: Capabilities {
            text: true,
            voice: true,
        },
    }
}

fn subscribe(n: u32) -> Message {
    let text = format!(
        "SUBSCRIBE sip:helpdesk@contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.1.2.3:5060;branch=z9hG4bK{n}\r\n\
         From: <sip:w{n}@fabrikam.com>;tag=f{n}\r\nTo: <sip:helpdesk@contoso.com>\r\nCall-ID: {n}@10.1.2.3\r\n\
         CSeq: 1 SUBSCRIBE\r\nContact: <sip:w{n}@10.1.2.3:5060>\r\nMax-Forwards: 70\r\nEvent: presence\r\n\
         Accept: application/pidf+xml\r\nExpires: 3600\r\nContent-Length: 0\r\n\r\n"
    );
    Message::parse(Bytes::from(text), Framing::Datagram, &Limits::default()).unwrap()
}

fn flow() -> FlowInfo<u32> {
    FlowInfo {
        flow: 1,
        reliable: false,
        via: "SIP/2.0/UDP 192.0.2.1:5060".into(),
        contact: "<sip:192.0.2.1:5060>".into(),
    }
}

fn notifier(watchers: u32) -> (Notifier<u32>, Instant) {
    let now = Instant::now();
    let config = NotifierConfig {
        min_notify_interval: Duration::ZERO,
        notify_rate: u32::MAX / 4,
        max_in_flight: u32::MAX,
        max_in_flight_per_flow: u32::MAX,
        max_subscriptions_per_watcher: u32::MAX,
        ..NotifierConfig::default()
    };
    let mut n = Notifier::new(config, now, 1);
    let p = 0;
    n.put_presentity(
        p,
        &identity(),
        PresenceState::new(Availability::ONLINE),
        jiff::Timestamp::now(),
    );
    for i in 0..watchers {
        n.subscribe(
            &subscribe(i),
            flow(),
            &|_| Some(p),
            &mut |_, _| Authorization::Allow,
            now,
        );
    }
    // Answer the first NOTIFYs, as watchers do, so none is left in flight.
    while let Some(out) = n.poll(now) {
        let sent = Message::parse(out.bytes, Framing::Datagram, &Limits::default()).unwrap();
        let branch = sent.top_via().unwrap().branch().unwrap().to_owned();
        n.on_notify_response(NotifyRef::from_branch(&branch).unwrap(), 200, None, now);
    }
    (n, now)
}

fn benches(c: &mut Criterion) {
    let id = identity();
    let state = PresenceState::new(Availability::ONLINE);
    let snapshot = Snapshot {
        identity: &id,
        state: &state,
        publish_time: "2026-05-01T10:00:00.000",
    };
    c.bench_function("render/pidf", |b| {
        b.iter(|| render(Format::Pidf, &snapshot))
    });
    c.bench_function("render/ms-categories", |b| {
        b.iter(|| render(Format::MsCategories, &snapshot))
    });

    let requests: Vec<Message> = (0..100_000).map(subscribe).collect();
    c.bench_function("notifier/subscribe+first-notify", |b| {
        b.iter_batched(
            || notifier(0),
            |(mut n, now)| {
                for r in requests.iter().take(1000) {
                    n.subscribe(
                        r,
                        flow(),
                        &|_| Some(0),
                        &mut |_, _| Authorization::Allow,
                        now,
                    );
                    n.poll(now);
                }
                n
            },
            BatchSize::LargeInput,
        )
    });

    let mut group = c.benchmark_group("notifier");
    group.sample_size(10);
    group.bench_function("fan-out-10k", |b| {
        b.iter_batched(
            || notifier(10_000),
            |(mut n, now)| {
                n.set_state(
                    0,
                    PresenceState::new(Availability::BUSY),
                    jiff::Timestamp::now(),
                );
                let mut sent = 0;
                while n.poll(now).is_some() {
                    sent += 1;
                }
                assert_eq!(sent, 10_000);
                n
            },
            BatchSize::LargeInput,
        )
    });
    // A policy change asks of every held subscription whether the new
    // policy still allows it, as the node does: one decision per watcher
    // domain, looked up for each subscription.
    for (name, refused) in [
        ("revoke-100k-none-refused", false),
        ("revoke-100k-all-refused", true),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || notifier(100_000),
                |(mut n, _)| {
                    let mut decided = std::collections::HashMap::new();
                    let ended = n.revoke(&mut |slot, watcher, flow| {
                        let domain = watcher.rsplit('@').next().unwrap_or_default().to_owned();
                        *decided.entry((slot, domain, *flow)).or_insert(refused)
                    });
                    assert_eq!(ended, if refused { 100_000 } else { 0 });
                    n
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(presence, benches);
criterion_main!(presence);
