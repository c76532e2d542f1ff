//! Table-driven tests of the decision function: every switch and every
//! precedence rule, each with the step that explains it.

use porchlight_policy::{
    decide, verdict, Class, DiscoveredLimits, EdgeAccess, LimitExceeded, LocalParty, Modality,
    PolicyConfig, PolicyError, Remote, Request, Verification,
};

const BASE: &str = r#"
edge = { allow_federated_users = true, enable_partner_discovery = true, allow_public_providers = true }
allowed_domains = [{ domain = "fabrikam.com" }, { domain = "partner.example", proxy_fqdn = "sip.partner.example" }]
blocked_domains = ["evil.example", "spam.test"]
global_policy = { federation = true, public_providers = true, public_provider_audio = false }

[[provider]]
name = "PublicIM"
proxy_fqdn = "federation.publicim.example"
domains = ["publicim.example", "chat.example"]

[[provider]]
name = "Retired"
domains = ["retired.example"]
enabled = false

[site_policies.berlin]
federation = true
public_providers = false

[policies.partners-only]
federation = true
public_providers = false
audio = false

[policies.open]
federation = true
public_providers = true
public_provider_audio = true
"#;

struct Case {
    name: &'static str,
    edit: fn(&mut PolicyConfig),
    from: &'static str,
    peer: &'static [&'static str],
    grant: Option<&'static str>,
    site: Option<&'static str>,
    modality: Modality,
    allowed: bool,
    class: Option<Class>,
    explains: &'static str,
}

fn keep(_: &mut PolicyConfig) {}

fn cases() -> Vec<Case> {
    use Modality::*;
    let base = |name, from, peer, modality, allowed, class, explains| Case {
        name,
        edit: keep,
        from,
        peer,
        grant: None,
        site: None,
        modality,
        allowed,
        class,
        explains,
    };
    vec![
        base(
            "allowed partner, presence",
            "fabrikam.com",
            &["fabrikam.com"],
            Presence,
            true,
            Some(Class::AllowedPartner),
            "allowed partner domain",
        ),
        base(
            "case-insensitive domains",
            "Fabrikam.COM",
            &["fabrikam.com"],
            Im,
            true,
            Some(Class::AllowedPartner),
            "identity verified",
        ),
        base(
            "spoofed From domain",
            "fabrikam.com",
            &["evil.example"],
            Presence,
            false,
            None,
            "refused as spoofed",
        ),
        base(
            "no mutual TLS",
            "fabrikam.com",
            &[],
            Presence,
            false,
            None,
            "no mutual-TLS identity",
        ),
        base(
            "blocked domain",
            "evil.example",
            &["evil.example"],
            Presence,
            false,
            Some(Class::Blocked("evil.example".into())),
            "matches blocked domain evil.example",
        ),
        base(
            "blocked by suffix",
            "mail.spam.test",
            &["mail.spam.test"],
            Presence,
            false,
            Some(Class::Blocked("spam.test".into())),
            "blocked domain spam.test",
        ),
        base(
            "suffix match needs a dot",
            "notevil.example",
            &["notevil.example"],
            Presence,
            true,
            Some(Class::DiscoveredPartner),
            "discovered partner",
        ),
        base(
            "discovered partner",
            "contoso.net",
            &["contoso.net"],
            Presence,
            true,
            Some(Class::DiscoveredPartner),
            "enable_partner_discovery is on",
        ),
        Case {
            edit: |c| c.edge.enable_partner_discovery = false,
            ..base(
                "discovery off",
                "contoso.net",
                &["contoso.net"],
                Presence,
                false,
                Some(Class::DiscoveredPartner),
                "enable_partner_discovery is off",
            )
        },
        Case {
            edit: |c| c.edge.allow_federated_users = false,
            ..base(
                "federation switched off at the edge",
                "fabrikam.com",
                &["fabrikam.com"],
                Presence,
                false,
                Some(Class::AllowedPartner),
                "allow_federated_users is off",
            )
        },
        Case {
            edit: |c| c.edge.allow_federated_users = false,
            ..base(
                "discovery needs federation too",
                "contoso.net",
                &["contoso.net"],
                Presence,
                false,
                Some(Class::DiscoveredPartner),
                "enable_partner_discovery is off",
            )
        },
        base(
            "provider user via provider edge",
            "chat.example",
            &["federation.publicim.example"],
            Presence,
            true,
            Some(Class::PublicProvider("PublicIM".into())),
            "public provider PublicIM, which serves chat.example",
        ),
        Case {
            edit: |c| c.edge.allow_public_providers = false,
            ..base(
                "providers switched off",
                "publicim.example",
                &["publicim.example"],
                Presence,
                false,
                Some(Class::PublicProvider("PublicIM".into())),
                "allow_public_providers is off",
            )
        },
        base(
            "disabled provider",
            "retired.example",
            &["retired.example"],
            Presence,
            false,
            Some(Class::PublicProvider("Retired".into())),
            "which is disabled",
        ),
        base(
            "provider audio is its own switch",
            "publicim.example",
            &["publicim.example"],
            Audio,
            false,
            Some(Class::PublicProvider("PublicIM".into())),
            "audio (public_provider_audio) is off",
        ),
        base(
            "partner audio",
            "fabrikam.com",
            &["fabrikam.com"],
            Audio,
            true,
            Some(Class::AllowedPartner),
            "audio is on",
        ),
        Case {
            edit: |c| c.global_policy.federation = false,
            ..base(
                "global policy without federation",
                "fabrikam.com",
                &["fabrikam.com"],
                Presence,
                false,
                Some(Class::AllowedPartner),
                "the global policy applies: federation access is off",
            )
        },
        Case {
            edit: |c| c.global_policy.presence = false,
            ..base(
                "presence switched off",
                "fabrikam.com",
                &["fabrikam.com"],
                Presence,
                false,
                Some(Class::AllowedPartner),
                "presence is off",
            )
        },
        Case {
            edit: |c| c.global_policy.im = false,
            ..base(
                "IM switched off, presence still on",
                "fabrikam.com",
                &["fabrikam.com"],
                Im,
                false,
                Some(Class::AllowedPartner),
                "im is off",
            )
        },
        Case {
            site: Some("berlin"),
            ..base(
                "site policy beats global",
                "publicim.example",
                &["publicim.example"],
                Presence,
                false,
                Some(Class::PublicProvider("PublicIM".into())),
                "site policy berlin applies: public_providers access is off",
            )
        },
        Case {
            site: Some("berlin"),
            grant: Some("open"),
            ..base(
                "endpoint grant beats site",
                "publicim.example",
                &["publicim.example"],
                Audio,
                true,
                Some(Class::PublicProvider("PublicIM".into())),
                "policy open granted to sip:helpdesk@contoso.com",
            )
        },
        Case {
            grant: Some("partners-only"),
            ..base(
                "grant turns audio off",
                "fabrikam.com",
                &["fabrikam.com"],
                Audio,
                false,
                Some(Class::AllowedPartner),
                "audio is off",
            )
        },
        Case {
            site: Some("nowhere"),
            ..base(
                "unknown site falls back to global",
                "fabrikam.com",
                &["fabrikam.com"],
                Presence,
                true,
                Some(Class::AllowedPartner),
                "the global policy applies",
            )
        },
    ]
}

#[test]
fn every_switch_and_precedence_rule() {
    let base: PolicyConfig = toml::from_str(BASE).unwrap();
    for case in cases() {
        let mut config = base.clone();
        (case.edit)(&mut config);
        let peer: Vec<String> = case.peer.iter().map(|s| s.to_string()).collect();
        let request = Request {
            remote_domain: case.from,
            remote: if peer.is_empty() {
                Remote::Unverified
            } else {
                Remote::Certified(&peer)
            },
            local: LocalParty {
                uri: "sip:helpdesk@contoso.com",
                grant: case.grant,
                site: case.site,
            },
            modality: case.modality,
        };
        let decision = decide(&config, &request);
        assert_eq!(decision.allowed, case.allowed, "{}:\n{decision}", case.name);
        // The quiet verdict reaches the same outcome and writes nothing.
        let quiet = verdict(&config, &request);
        assert_eq!(
            (quiet.allowed, &quiet.class),
            (decision.allowed, &decision.class),
            "{}",
            case.name
        );
        assert!(quiet.steps.is_empty(), "{}", case.name);
        assert_eq!(decision.class, case.class, "{}:\n{decision}", case.name);
        assert!(
            decision.steps.iter().any(|s| s.contains(case.explains)),
            "{}: no step says {:?}:\n{decision}",
            case.name,
            case.explains
        );
    }
}

#[test]
fn configuration_errors_say_what_to_fix() {
    let mut config: PolicyConfig = toml::from_str(BASE).unwrap();
    assert_eq!(
        config.validate([("sip:helpdesk@contoso.com", "open")]),
        Ok(())
    );
    let err = config
        .validate([("sip:helpdesk@contoso.com", "missing")])
        .unwrap_err();
    assert!(err
        .to_string()
        .contains("add [policy.policies.missing] (or run `porchlight policy new missing`)"));
    config.blocked_domains.push("partner.example".into());
    assert_eq!(
        config.validate([]),
        Err(PolicyError::AllowedAndBlocked("partner.example".into()))
    );
    assert!(toml::from_str::<PolicyConfig>("edge = { allow_everything = true }").is_err());
}

#[test]
fn trusted_networks() {
    let defaults = PolicyConfig::default();
    assert!(defaults.is_trusted("127.0.0.1".parse().unwrap()));
    assert!(defaults.is_trusted("::1".parse().unwrap()));
    assert!(!defaults.is_trusted("192.0.2.1".parse().unwrap()));
    // Lookups are indexed on first use: a changed policy is a new configuration.
    let mut config = PolicyConfig::default();
    config.edge.trusted_networks = vec![
        "10.1.0.0/16".into(),
        "2001:db8::/32".into(),
        "192.0.2.7".into(),
    ];
    assert!(config.is_trusted("10.1.255.3".parse().unwrap()));
    assert!(!config.is_trusted("10.2.0.1".parse().unwrap()));
    assert!(config.is_trusted("2001:db8::5".parse().unwrap()));
    assert!(config.is_trusted("192.0.2.7".parse().unwrap()));
    assert!(!config.is_trusted("192.0.2.8".parse().unwrap()));
    config.edge.trusted_networks.push("10.0.0.0/33".into());
    assert!(config
        .validate([])
        .unwrap_err()
        .to_string()
        .contains("CIDR"));
}

#[test]
fn discovered_partner_limits() {
    let edge = EdgeAccess {
        discovered_partner_rate: 2,
        discovered_partner_max_contacts: 3,
        ..EdgeAccess::default()
    };
    let mut limits = DiscoveredLimits::default();
    assert_eq!(limits.admit(&edge, "contoso.net", 1, 0.0), Ok(()));
    assert_eq!(limits.admit(&edge, "contoso.net", 2, 0.0), Ok(()));
    assert_eq!(
        limits.admit(&edge, "contoso.net", 3, 0.0),
        Err(LimitExceeded::Rate(2))
    );
    assert_eq!(
        limits.admit(&edge, "other.net", 1, 0.0),
        Ok(()),
        "each domain has its own bucket"
    );
    assert_eq!(limits.admit(&edge, "Contoso.NET", 3, 1.0), Ok(()));
    assert_eq!(
        limits.admit(&edge, "contoso.net", 4, 2.0),
        Err(LimitExceeded::Contacts(3))
    );
    assert_eq!(
        limits.admit(&edge, "contoso.net", 1, 3.0),
        Ok(()),
        "endpoints already reached stay reachable"
    );
}

/// Requests from the inside toward other domains pass the same
/// classification, edge switches and local policy; identity is the
/// connection's business, checked before anything is sent.
#[test]
fn outbound_requests() {
    let base: PolicyConfig = toml::from_str(BASE).unwrap();
    let request = |to, grant, modality| Request {
        remote_domain: to,
        remote: Remote::Destination,
        local: LocalParty {
            uri: "sip:helpdesk@contoso.com",
            grant,
            site: None,
        },
        modality,
    };
    let outbound =
        |config: &PolicyConfig, to, grant, modality| decide(config, &request(to, grant, modality));
    let cases: [(&str, Option<&str>, Modality, bool, &str); 7] = [
        (
            "fabrikam.com",
            None,
            Modality::Im,
            true,
            "allowed partner domain",
        ),
        (
            "evil.example",
            None,
            Modality::Im,
            false,
            "matches blocked domain evil.example",
        ),
        (
            "unknown.example",
            None,
            Modality::Audio,
            true,
            "a discovered partner",
        ),
        (
            "publicim.example",
            None,
            Modality::Im,
            true,
            "belongs to public provider PublicIM",
        ),
        (
            "publicim.example",
            None,
            Modality::Audio,
            false,
            "audio (public_provider_audio) is off",
        ),
        (
            "retired.example",
            None,
            Modality::Im,
            false,
            "which is disabled",
        ),
        (
            "fabrikam.com",
            Some("partners-only"),
            Modality::Audio,
            false,
            "audio is off",
        ),
    ];
    for (to, grant, modality, allowed, explains) in cases {
        let decision = outbound(&base, to, grant, modality);
        assert_eq!(decision.allowed, allowed, "{to} {modality:?}:\n{decision}");
        assert!(decision.steps[0].contains("outbound to"), "{decision}");
        assert!(
            decision.steps.iter().any(|s| s.contains(explains)),
            "{to}: expected {explains:?} in\n{decision}"
        );
        assert_eq!(
            verdict(&base, &request(to, grant, modality)).allowed,
            allowed
        );
    }
    let mut no_discovery = base.clone();
    no_discovery.edge.enable_partner_discovery = false;
    let decision = outbound(&no_discovery, "unknown.example", None, Modality::Im);
    assert!(!decision.allowed, "{decision}");
    assert!(decision
        .to_string()
        .contains("enable_partner_discovery is off"));
}

/// Where each kind of remote domain is reached, and what it must prove.
#[test]
fn routes_to_partners_and_providers() {
    let config: PolicyConfig = toml::from_str(BASE).unwrap();
    let route = |d| {
        let r = config.route_to(d);
        (r.verify, r.pinned.map(|p| p.to_string()))
    };
    assert_eq!(route("Fabrikam.com"), ("fabrikam.com".into(), None));
    assert_eq!(
        route("partner.example"),
        ("partner.example".into(), Some("sip.partner.example".into())),
        "a pinned proxy still proves the partner's own domain"
    );
    let provider_edge = (
        "federation.publicim.example".to_owned(),
        Some("federation.publicim.example".to_owned()),
    );
    assert_eq!(
        route("chat.example"),
        provider_edge,
        "a provider's users go through its edge"
    );
    assert_eq!(route("federation.publicim.example"), provider_edge);
    assert_eq!(
        route("retired.example"),
        ("retired.example".into(), None),
        "no proxy_fqdn: discovery"
    );
}

/// An edge that does not vouch for its users is let in by the same rules,
/// and the decision says its requests go on marked unverified.
#[test]
fn verification_levels() {
    let text = BASE.replace(
        "domains = [\"publicim.example\", \"chat.example\"]",
        "domains = [\"publicim.example\", \"chat.example\"]\nverification = \"unverified\"",
    );
    let config: PolicyConfig = toml::from_str(&text).unwrap();
    let peer = vec!["federation.publicim.example".to_owned()];
    let decision = decide(
        &config,
        &Request {
            remote_domain: "chat.example",
            remote: Remote::Certified(&peer),
            local: LocalParty::default(),
            modality: Modality::Im,
        },
    );
    assert!(decision.allowed, "{decision}");
    assert!(
        decision
            .to_string()
            .contains("does not vouch for its users"),
        "{decision}"
    );
    let class = decision.class.unwrap();
    assert_eq!(
        config.verification(&class, "chat.example"),
        Verification::Unverified
    );
    assert_eq!(
        config.verification(&Class::AllowedPartner, "fabrikam.com"),
        Verification::Verified,
        "verified unless the entry says otherwise"
    );
}
