//! What write-behind and restart cost in the embedded store: encoding one
//! subscription, committing a batch of a flush interval's worth, and
//! reading a saved population back.

// `criterion_group!` writes an undocumented public function.
#![allow(missing_docs)]

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use porchlight_presence::{FlowInfo, Format, SavedSubscription, SavedTarget, SubscriptionId};
use porchlight_store::codec::{decode_subscription, encode_subscription};
use porchlight_store::{Batch, Durability, EmbeddedStore, Store};

fn subscription(index: u32) -> SavedSubscription<String> {
    SavedSubscription {
        id: SubscriptionId {
            index,
            generation: 1,
        },
        target: SavedTarget::Presence("sip:helpdesk@contoso.com".into()),
        format: Format::Pidf,
        benotify: false,
        call_id: format!("{index:08x}-5f1c0a@192.0.2.10"),
        remote_tag: format!("t{index}"),
        remote_uri: format!("sip:user{index}@fabrikam.com"),
        remote_target: format!("sip:user{index}@192.0.2.10:5060"),
        expires_at: 1_800_000_000,
        local_cseq: 1,
        remote_cseq: 1,
        route_set: None,
        flow: FlowInfo {
            flow: "partner fabrikam.com".into(),
            reliable: true,
            via: "SIP/2.0/TLS 192.0.2.1:5061".into(),
            contact: "<sip:192.0.2.1:5061;transport=tls>".into(),
        },
        tag: None,
    }
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("porchlight-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn codec(c: &mut Criterion) {
    let s = subscription(42);
    let bytes = encode_subscription(&s);
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode", |b| b.iter(|| encode_subscription(&s)));
    g.bench_function("decode", |b| {
        b.iter(|| decode_subscription(&bytes).unwrap())
    });
    g.finish();
}

fn write_behind(c: &mut Criterion) {
    // 3,000 changes: a 100 ms flush interval at 30,000 subscriptions a second.
    const BATCH: u32 = 3_000;
    let path = scratch("write");
    let store = EmbeddedStore::open(&path, Durability::Process).unwrap();
    let mut g = c.benchmark_group("write_behind");
    g.throughput(Throughput::Elements(u64::from(BATCH)));
    g.sample_size(30);
    let mut next = 0u32;
    g.bench_function("batch_3000", |b| {
        b.iter_batched(
            || {
                let batch = Batch {
                    saved: (next..next + BATCH).map(subscription).collect(),
                    ..Batch::default()
                };
                next += BATCH;
                batch
            },
            |batch| store.write(&batch).unwrap(),
            BatchSize::LargeInput,
        )
    });
    g.finish();
    drop(store);
    let _ = std::fs::remove_dir_all(&path);
}

fn load(c: &mut Criterion) {
    const COUNT: u32 = 100_000;
    let path = scratch("load");
    {
        let store = EmbeddedStore::open(&path, Durability::Process).unwrap();
        for start in (0..COUNT).step_by(10_000) {
            store
                .write(&Batch {
                    saved: (start..start + 10_000).map(subscription).collect(),
                    ..Batch::default()
                })
                .unwrap();
        }
    }
    let mut g = c.benchmark_group("restart");
    g.throughput(Throughput::Elements(u64::from(COUNT)));
    g.sample_size(10);
    g.bench_function("open_and_read_100k", |b| {
        b.iter(|| {
            let store = EmbeddedStore::open(&path, Durability::Process).unwrap();
            assert_eq!(store.subscriptions().unwrap().len(), COUNT as usize);
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&path);
}

criterion_group!(benches, codec, write_behind, load);
criterion_main!(benches);
