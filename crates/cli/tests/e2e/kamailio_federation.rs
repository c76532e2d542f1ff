//! Two domains federating over mutual TLS with real peers: Porchlight is the
//! edge of contoso.com serving `sip:helpdesk@contoso.com`; Kamailio (Debian
//! `kamailio`, `kamailio-tls-modules`) is the edge of a partner domain, and
//! a baresip user behind it watches the endpoint across the federation.
//! Certificates are issued in the test. The policy decides each outcome,
//! and `porchlight explain` gives the same verdict for every refusal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use porchlight_sip::Message;

use crate::common::*;

/// A baresip user `user` behind `proxy` watching the help desk.
fn watcher(name: &str, user: &str, proxy: &Kamailio) -> Baresip {
    let dir = temp_dir(&format!("baresip-{name}"));
    let watcher = Baresip::start(
        &dir,
        free_port(),
        &["account", "contact", "presence"],
        &format!("<{user}>;outbound=\"sip:{}\";regint=0", proxy.udp()),
        "\"Help Desk\" <sip:helpdesk@contoso.com>;presence=p2p",
    );
    watcher.expect("Subscribing to 1 contacts", Duration::from_secs(10));
    watcher
}

const NO_PARTNERS: &str = "allowed_domains = []                 # e.g.";
const FABRIKAM: &str = "allowed_domains = [{ domain = \"fabrikam.com\" }] #";

#[test]
fn a_partner_user_behind_kamailio_sees_the_endpoint_and_refusals_are_explained() {
    let pki = Pki::new("kamailio-federation");

    // An allowed partner: the baresip user sees the help desk Online.
    let server = start("kam-allowed", &pki.config(&[(NO_PARTNERS, FABRIKAM)]));
    let fabrikam = Kamailio::start(&pki, "fabrikam", "fabrikam.com", server.tls);
    let alice = watcher("alice", "sip:alice@fabrikam.com", &fabrikam);
    alice.expect_status(
        "sip:helpdesk@contoso.com",
        "Online",
        Duration::from_secs(10),
    );
    drop(alice);
    let (ok, text) = explain(&server, "sip:alice@fabrikam.com", "fabrikam.com");
    assert!(ok && text.ends_with("=> ALLOW\n"), "{text}");

    // A user claiming another domain through fabrikam's edge: spoofed.
    let mallory = watcher("mallory", "sip:mallory@contoso-partner.example", &fabrikam);
    mallory.expect("403 Forbidden", Duration::from_secs(10));
    let (ok, text) = explain(
        &server,
        "sip:mallory@contoso-partner.example",
        "fabrikam.com",
    );
    assert!(!ok && text.contains("refused as spoofed"), "{text}");
    drop((mallory, fabrikam, server));

    // The partner's domain blocked: refused.
    let server = start(
        "kam-blocked",
        &pki.config(&[(
            "blocked_domains = []",
            "blocked_domains = [\"fabrikam.com\"]",
        )]),
    );
    let fabrikam = Kamailio::start(&pki, "fabrikam-blocked", "fabrikam.com", server.tls);
    let alice = watcher("alice-blocked", "sip:alice@fabrikam.com", &fabrikam);
    alice.expect("403 Forbidden", Duration::from_secs(10));
    let (ok, text) = explain(&server, "sip:alice@fabrikam.com", "fabrikam.com");
    assert!(
        !ok && text.contains("matches blocked domain fabrikam.com"),
        "{text}"
    );
    drop((alice, fabrikam, server));

    // An external access policy without federation: refused.
    let server = start(
        "kam-nofederation",
        &pki.config(&[
            (NO_PARTNERS, FABRIKAM),
            (
                "[policy.global_policy]\nfederation = true",
                "[policy.global_policy]\nfederation = false",
            ),
        ]),
    );
    let fabrikam = Kamailio::start(&pki, "fabrikam-nofed", "fabrikam.com", server.tls);
    let alice = watcher("alice-nofed", "sip:alice@fabrikam.com", &fabrikam);
    alice.expect("403 Forbidden", Duration::from_secs(10));
    let (ok, text) = explain(&server, "sip:alice@fabrikam.com", "fabrikam.com");
    assert!(!ok && text.contains("federation access is off"), "{text}");
    drop((alice, fabrikam, server));

    // A public provider's edge (its certificate proves its proxy FQDN) with a
    // user in a domain it serves: refused while public-provider access is
    // off, let in once the edge switch and the access policy allow it.
    let provider = "\n[[policy.provider]]\nname = \"PublicIM\"\nproxy_fqdn = \"federation.publicim.example\"\ndomains = [\"publicim.example\"]\n";
    for enabled in [false, true] {
        let switch = enabled.to_string();
        let mut text = pki.config(&[
            (
                "allow_public_providers = false",
                &format!("allow_public_providers = {switch}"),
            ),
            (
                "public_providers = false\npublic_provider_audio",
                &format!("public_providers = {switch}\npublic_provider_audio"),
            ),
        ]);
        text = text.replace("\n[policy.edge]", &format!("{provider}\n[policy.edge]"));
        let server = start(&format!("kam-provider-{switch}"), &text);
        let edge = Kamailio::start(
            &pki,
            &format!("publicim-{switch}"),
            "federation.publicim.example",
            server.tls,
        );
        let bob = watcher(&format!("bob-{switch}"), "sip:bob@publicim.example", &edge);
        if enabled {
            bob.expect_status(
                "sip:helpdesk@contoso.com",
                "Online",
                Duration::from_secs(10),
            );
        } else {
            bob.expect("403 Forbidden", Duration::from_secs(10));
        }
        let (ok, text) = explain(
            &server,
            "sip:bob@publicim.example",
            "federation.publicim.example",
        );
        assert_eq!(ok, enabled, "{text}");
        assert!(text.contains("public provider PublicIM"), "{text}");
    }
}

#[test]
fn a_call_from_behind_kamailio_reaches_the_inside_through_the_edge() {
    let pki = Pki::new("kamailio-call");
    // The inside: a SIPp callee on 127.0.0.2, the only trusted network, so
    // Kamailio on 127.0.0.1 stays an outsider that must prove itself.
    let inside = std::net::UdpSocket::bind("127.0.0.2:0").unwrap();
    let inside_port = inside.local_addr().unwrap().port();
    drop(inside);
    let text = pki.config(&[(NO_PARTNERS, FABRIKAM)]).replace(
        "trusted_networks = []",
        "trusted_networks = [\"127.0.0.2/32\"]",
    );
    let text = text.replace(
        "internal_next_hop = \"\"",
        &format!("internal_next_hop = \"sip:127.0.0.2:{inside_port}\""),
    );
    let server = start("kam-call", &text);
    let fabrikam = Kamailio::start(&pki, "call", "fabrikam.com", server.tls);
    let callee = sipp(&[
        "-sf",
        &scenario("call-uas.xml"),
        "-i",
        "127.0.0.2",
        "-p",
        &inside_port.to_string(),
    ]);
    std::thread::sleep(Duration::from_millis(300));
    let caller = sipp_caller(fabrikam.udp(), "call-uac.xml", "bob");
    finished_ok(
        caller,
        "the caller (INVITE, ACK and BYE through Kamailio and the edge)",
    );
    finished_ok(
        callee,
        "the callee (trust header, ACK and BYE through the edge)",
    );
}

/// A MESSAGE from the trusted inside (127.0.0.2), with its final response.
fn message_from_inside(server: &Server, from: &str, to: &str, text: &str) -> Message {
    udp_message("127.0.0.2", server.udp, &format!("<{from}>"), to, text)
}

#[test]
fn the_inside_reaches_a_partner_found_in_dns_and_notifies_survive_a_lost_connection() {
    let pki = Pki::new("kamailio-outbound");
    let dns_port = free_port();
    let healthy = Arc::new(AtomicBool::new(true));
    let health_port = health_server(healthy.clone());
    let text = pki
        .config(&[
            (
                NO_PARTNERS,
                "allowed_domains = [{ domain = \"partner.test\" }, { domain = \"nowhere.test\" }] #",
            ),
            ("blocked_domains = []", "blocked_domains = [\"evil.test\"]"),
            // The partner's idle connection closes, so the next NOTIFY
            // must find the partner again.
            ("idle_timeout_secs = 300", "idle_timeout_secs = 2"),
            (
                "min_notify_interval_ms = 5000",
                "min_notify_interval_ms = 500",
            ),
            ("nameservers = []", &format!("nameservers = [\"127.0.0.1:{dns_port}\"]")),
            ("note = \"Ask me anything\"\n", &format!(
                "note = \"Ask me anything\"\n[endpoint.health]\nurl = \"http://127.0.0.1:{health_port}/health\"\n\
                 interval_secs = 1\ntimeout_ms = 500\nfailures = 1\n"
            )),
        ])
        // The inside is 127.0.0.2; Kamailio on 127.0.0.1 is an outsider.
        .replace("trusted_networks = []", "trusted_networks = [\"127.0.0.2/32\"]");
    let server = start("kam-outbound", &text);
    let partner = Kamailio::start(&pki, "outbound", "partner.test", server.tls);
    let _dns = Dnsmasq::start(
        dns_port,
        &[
            format!(
                "--srv-host=_sipfederationtls._tcp.partner.test,edge.partner.test,{},1,1",
                partner.tls_port
            ),
            "--host-record=edge.partner.test,127.0.0.1".to_owned(),
        ],
    );

    // alice registers with her domain's edge and watches the help desk.
    let dir = temp_dir("baresip-outbound-alice");
    let alice = Baresip::start(
        &dir,
        free_port(),
        &["account", "contact", "presence"],
        &format!(
            "<sip:alice@partner.test>;outbound=\"sip:{}\";regint=600",
            partner.udp()
        ),
        "\"Help Desk\" <sip:helpdesk@contoso.com>;presence=p2p",
    );
    alice.expect_status(
        "sip:helpdesk@contoso.com",
        "Online",
        Duration::from_secs(15),
    );

    // The partner's connection idles out; the endpoint goes down; the
    // NOTIFY finds the partner's edge through DNS and a new mutual-TLS
    // connection that proves partner.test.
    std::thread::sleep(Duration::from_secs(4));
    healthy.store(false, Ordering::SeqCst);
    alice.expect_status(
        "sip:helpdesk@contoso.com",
        "Offline",
        Duration::from_secs(15),
    );
    let log = std::fs::read_to_string(server.dir.join("server.log")).unwrap();
    assert!(
        log.lines().any(|l| l.contains("connected to partner edge")
            && l.contains("partner=partner.test")
            && l.contains("SRV _sipfederationtls._tcp")),
        "the NOTIFY did not dial the partner through DNS:\n{log}"
    );

    // An IM from someone inside reaches alice through her domain's edge.
    let ok = message_from_inside(
        &server,
        "sip:bob@contoso.com",
        "sip:alice@partner.test",
        "hello from the inside",
    );
    // baresip answers 200 only once its text handler has taken the message
    // (RFC 3428; anything but text/plain gets 415).
    assert_eq!(ok.status(), Some(200));
    let kamailio_log = std::fs::read_to_string(&partner.log).unwrap();
    assert!(
        kamailio_log.contains("delivering MESSAGE from sip:bob@contoso.com to sip:alice-"),
        "{kamailio_log}"
    );

    // Refused: a sender not in our domains, a blocked domain; an allowed
    // domain no DNS knows is unreachable (503 with Retry-After).
    let spoofed = message_from_inside(
        &server,
        "sip:mallory@elsewhere.example",
        "sip:alice@partner.test",
        "x",
    );
    assert_eq!(spoofed.status(), Some(403));
    let blocked = message_from_inside(&server, "sip:bob@contoso.com", "sip:eve@evil.test", "x");
    assert_eq!(blocked.status(), Some(403));
    let (ok, steps) = explain_with(
        &server,
        &[
            "--from",
            "sip:bob@contoso.com",
            "--to",
            "sip:eve@evil.test",
            "--kind",
            "im",
        ],
    );
    assert!(
        !ok && steps.contains("outbound to evil.test")
            && steps.contains("blocked domain evil.test"),
        "{steps}"
    );
    let unreachable = message_from_inside(
        &server,
        "sip:bob@contoso.com",
        "sip:nobody@nowhere.test",
        "x",
    );
    assert_eq!(unreachable.status(), Some(503));
    assert!(unreachable.retry_after().ok().flatten().is_some());

    // Outsiders cannot send out through the edge.
    let relay = udp_exchange(
        server.udp,
        &request("MESSAGE", "sip:alice@partner.test", ""),
        Duration::from_millis(500),
    );
    assert_eq!(relay.last().and_then(|r| r.status()), Some(403));
}

/// Lines of Kamailio's log that contain `needle`, waiting up to `within`
/// for at least one.
fn kamailio_logged(kamailio: &Kamailio, needle: &str, within: Duration) -> Vec<String> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let log = std::fs::read_to_string(&kamailio.log).unwrap_or_default();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect();
        if !lines.is_empty() {
            return lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kamailio never logged {needle:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_certified_partner_on_loopback_is_judged_by_policy_and_a_block_ends_its_watchers() {
    let pki = Pki::new("kamailio-loopback");
    // The default trusted networks: loopback, where Kamailio runs too. Its
    // certificate proves fabrikam.com, and that outranks the address.
    let text = pki.config(&[(NO_PARTNERS, FABRIKAM)]).replace(
        "trusted_networks = []",
        "trusted_networks = [\"127.0.0.0/8\", \"::1/128\"]",
    );
    let server = start("kam-loopback", &text);
    let file = server.dir.join("porchlight.toml");
    let fabrikam = Kamailio::start(&pki, "loopback", "fabrikam.com", server.tls);

    let alice = watcher("loopback-alice", "sip:alice@fabrikam.com", &fabrikam);
    alice.expect_status(
        "sip:helpdesk@contoso.com",
        "Online",
        Duration::from_secs(10),
    );
    // A From that fabrikam's certificate does not prove: spoofed, though
    // the connection comes from a trusted address.
    let mallory = watcher(
        "loopback-mallory",
        "sip:mallory@contoso-partner.example",
        &fabrikam,
    );
    mallory.expect("403 Forbidden", Duration::from_secs(10));
    drop(mallory);

    // A raw watcher behind Kamailio: the 200 carries Kamailio's
    // Record-Route, and the refresh follows it back through Kamailio.
    let mut bob = Watcher::new(
        fabrikam.udp(),
        "sip:helpdesk@contoso.com",
        "sip:bob@fabrikam.com",
    );
    assert_eq!(bob.subscribe(600).status(), Some(200));
    let kamailio_udp = format!("sip:127.0.0.1:{};", fabrikam.udp_port);
    assert!(
        bob.route_set.len() >= 2 && bob.route_set[0].contains(&kamailio_udp),
        "the 200 did not copy Kamailio's Record-Route: {:?}",
        bob.route_set
    );
    bob.expect_notify("<basic>open</basic>", Duration::from_secs(5));
    assert_eq!(bob.subscribe(600).status(), Some(200), "the refresh");
    kamailio_logged(
        &fabrikam,
        "in-dialog SUBSCRIBE to sip:",
        Duration::from_secs(5),
    );

    // The admin blocks fabrikam.com: the node ends the subscriptions it
    // holds for fabrikam's users at once, with the reason RFC 6665 gives
    // for a revoked authorization, and refuses what comes after.
    porchlight_ok(&file, &["federation", "remove", "fabrikam.com"]);
    let said = porchlight_ok(&file, &["federation", "block", "fabrikam.com"]);
    assert!(said.contains("in force"), "{said}");
    let last = bob.expect_notify("Subscription-State: terminated", Duration::from_secs(5));
    assert_eq!(
        std::str::from_utf8(last.values_named("Subscription-State").next().unwrap()).unwrap(),
        "terminated;reason=rejected"
    );
    alice.expect("rejected; will retry in", Duration::from_secs(10));
    alice.expect_status(
        "sip:helpdesk@contoso.com",
        "Unknown",
        Duration::from_secs(5),
    );
    assert_eq!(bob.subscribe(600).status(), Some(481), "the dialog is over");
    bob.new_dialog();
    assert_eq!(bob.subscribe(600).status(), Some(403), "blocked");
    // explain judges by what the node has in force, not by the file.
    let (ok, text) = explain(&server, "sip:alice@fabrikam.com", "fabrikam.com");
    assert!(
        !ok && text.contains("as in force on the node at http://")
            && text.contains("matches blocked domain fabrikam.com"),
        "{text}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server.api_get("/api/v1/status")["subscriptions_active"] != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "subscriptions are left"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
