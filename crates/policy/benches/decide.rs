//! The policy decision with a realistic configuration (100 allowed domains,
//! 1,000 blocked, 5 providers, 1,000 named policies), per request kind.

// `criterion_group!` writes an undocumented public function.
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use porchlight_policy::{
    decide, verdict, AccessPolicy, AllowedDomain, LocalParty, Modality, PolicyConfig,
    PublicProvider, Remote, Request, Verification,
};

fn realistic() -> PolicyConfig {
    let mut config = PolicyConfig::default();
    config.edge.enable_partner_discovery = true;
    config.edge.allow_public_providers = true;
    config.global_policy = AccessPolicy {
        federation: true,
        public_providers: true,
        ..AccessPolicy::default()
    };
    config.allowed_domains = (0..100)
        .map(|i| AllowedDomain {
            domain: format!("partner{i}.example"),
            proxy_fqdn: None,
            verification: Verification::Verified,
        })
        .collect();
    config.blocked_domains = (0..1000).map(|i| format!("blocked{i}.test")).collect();
    config.providers = (0..5)
        .map(|i| PublicProvider {
            name: format!("provider{i}"),
            proxy_fqdn: Some(format!("edge.provider{i}.example")),
            domains: vec![format!("provider{i}.example"), format!("chat{i}.example")],
            enabled: true,
            verification: Verification::Verified,
        })
        .collect();
    config.policies = (0..1000)
        .map(|i| {
            (
                format!("grant{i}"),
                AccessPolicy {
                    federation: true,
                    ..AccessPolicy::default()
                },
            )
        })
        .collect();
    config
}

fn benches(c: &mut Criterion) {
    let config = realistic();
    let run = |from: &'static str, peer: &'static str, explain: bool| {
        let peer = vec![peer.to_owned()];
        let config = config.clone();
        let decide = if explain { decide } else { verdict };
        move || {
            decide(
                &config,
                &Request {
                    remote_domain: from,
                    remote: Remote::Certified(&peer),
                    local: LocalParty {
                        uri: "sip:ep500@contoso.com",
                        grant: Some("grant500"),
                        site: None,
                    },
                    modality: Modality::Presence,
                },
            )
        }
    };
    // `decide` writes the explanation; `verdict` is the hot path's call.
    for (name, explain) in [("decide", true), ("verdict", false)] {
        let allowed = run("partner57.example", "partner57.example", explain);
        c.bench_function(&format!("{name}/allowed-partner"), |b| b.iter(&allowed));
        let discovered = run("sub.unknown.example", "sub.unknown.example", explain);
        c.bench_function(&format!("{name}/discovered-partner"), |b| {
            b.iter(&discovered)
        });
        let blocked = run("mail.blocked999.test", "mail.blocked999.test", explain);
        c.bench_function(&format!("{name}/blocked"), |b| b.iter(&blocked));
        let provider = run("chat3.example", "edge.provider3.example", explain);
        c.bench_function(&format!("{name}/public-provider"), |b| b.iter(&provider));
    }
}

criterion_group!(policy, benches);
criterion_main!(policy);
