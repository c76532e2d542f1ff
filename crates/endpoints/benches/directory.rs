//! The cost of an endpoint change on a node with many endpoints. The
//! admin request validates the whole new set on its own task; the event
//! loop then applies it (compare, move one slot) while everything else
//! waits, so the first bench bounds that pause.

// `criterion_group!` writes an undocumented public function.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use porchlight_endpoints::{Directory, EndpointConfig, EndpointSet};

/// `n` endpoints, every tenth with registration, health and business hours.
fn endpoints(n: usize) -> Vec<EndpointConfig> {
    (0..n)
        .map(|i| {
            let extra = if i % 10 == 0 {
                "[registration]\npassword = \"pw\"\n\
                 [health]\nurl = \"http://127.0.0.1:8080/health\"\n\
                 [schedule]\ntimezone = \"Europe/Berlin\"\ndays = [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]\n\
                 open = \"08:00\"\nclose = \"18:00\"\n"
            } else {
                ""
            };
            toml::from_str(&format!(
                "uri = \"sip:queue{i}@contoso.com\"\ndisplay_name = \"Queue {i}\"\n{extra}"
            ))
            .expect("valid endpoint")
        })
        .collect()
}

fn apply(c: &mut Criterion) {
    let domains = ["contoso.com".to_owned()];
    for n in [1_000, 10_000] {
        let before = endpoints(n);
        let mut after = before.clone();
        after[n / 2].availability = "busy".into();
        // In the event loop: compare and move.
        c.bench_function(&format!("apply one change among {n} endpoints"), |b| {
            b.iter_batched(
                || {
                    let directory = Directory::new(before.clone(), &domains, &[]).expect("valid");
                    (directory, EndpointSet::new(after.clone()).expect("valid"))
                },
                |(mut directory, mut set)| {
                    let changes = directory.apply(&mut set);
                    (directory, changes, set)
                },
                BatchSize::LargeInput,
            )
        });
        // Before it, in the admin request's task: validate the whole set.
        c.bench_function(&format!("validate {n} endpoints"), |b| {
            b.iter_batched(
                || after.clone(),
                |configs| EndpointSet::new(configs).expect("valid"),
                BatchSize::LargeInput,
            )
        });
    }
}

criterion_group!(benches, apply);
criterion_main!(benches);
