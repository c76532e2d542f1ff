//! Federation policy on the real binary over mutual TLS, with certificates
//! issued in the test: a partner's SUBSCRIBE is let in or refused by the
//! policy, a spoofed From domain is refused, and `porchlight explain` gives
//! the same verdict with its reasons.

use std::time::Duration;

use crate::common::*;

/// Sends a SUBSCRIBE from `from` over mutual TLS with `partner_domain`'s certificate; returns the status.
async fn subscribe(pki: &Pki, server: &Server, partner_domain: &str, from: &str) -> u16 {
    subscribe_to(
        pki,
        server,
        partner_domain,
        from,
        "sip:helpdesk@contoso.com",
    )
    .await
}

async fn subscribe_to(
    pki: &Pki,
    server: &Server,
    partner_domain: &str,
    from: &str,
    to: &str,
) -> u16 {
    partner_request(pki, server, partner_domain, "SUBSCRIBE", from, to).await
}

/// The answers to a MESSAGE and an INVITE from fabrikam.com for an
/// endpoint that does not exist.
async fn missing_endpoint_answers(pki: &Pki, server: &Server) -> [u16; 2] {
    let mut answers = [0; 2];
    for (answer, method) in answers.iter_mut().zip(["MESSAGE", "INVITE"]) {
        *answer = partner_request(
            pki,
            server,
            "fabrikam.com",
            method,
            "sip:a@fabrikam.com",
            "sip:nobody@contoso.com",
        )
        .await;
    }
    answers
}

#[tokio::test(flavor = "multi_thread")]
async fn partner_subscriptions_follow_the_policy_and_explain_says_why() {
    let pki = Pki::new("federation");
    let allowed = "allowed_domains = []                 # e.g.";
    let fabrikam = "allowed_domains = [{ domain = \"fabrikam.com\" }] #";

    // An allowed partner sees the endpoint.
    let server = start("fed-allowed", &pki.config(&[(allowed, fabrikam)]));
    assert_eq!(
        subscribe(&pki, &server, "fabrikam.com", "sip:alice@fabrikam.com").await,
        200
    );
    let (ok, text) = explain(&server, "sip:alice@fabrikam.com", "fabrikam.com");
    assert!(
        ok && text.contains("fabrikam.com is an allowed partner domain")
            && text.ends_with("=> ALLOW\n"),
        "{text}"
    );

    // The same partner claiming another domain is refused as spoofed.
    assert_eq!(
        subscribe(
            &pki,
            &server,
            "fabrikam.com",
            "sip:mallory@contoso-partner.example"
        )
        .await,
        403
    );
    let (ok, text) = explain(
        &server,
        "sip:mallory@contoso-partner.example",
        "fabrikam.com",
    );
    assert!(!ok && text.contains("refused as spoofed"), "{text}");
    drop(server);

    // Its domain blocked: refused.
    let server = start(
        "fed-blocked",
        &pki.config(&[(
            "blocked_domains = []",
            "blocked_domains = [\"fabrikam.com\"]",
        )]),
    );
    assert_eq!(
        subscribe(&pki, &server, "fabrikam.com", "sip:alice@fabrikam.com").await,
        403
    );
    let (ok, text) = explain(&server, "sip:alice@fabrikam.com", "fabrikam.com");
    assert!(
        !ok && text.contains("matches blocked domain fabrikam.com"),
        "{text}"
    );
    drop(server);

    // An access policy without federation: refused even for an allowed partner.
    let server = start(
        "fed-nofederation",
        &pki.config(&[
            (allowed, fabrikam),
            (
                "[policy.global_policy]\nfederation = true",
                "[policy.global_policy]\nfederation = false",
            ),
        ]),
    );
    assert_eq!(
        subscribe(&pki, &server, "fabrikam.com", "sip:alice@fabrikam.com").await,
        403
    );
    let (ok, text) = explain(&server, "sip:alice@fabrikam.com", "fabrikam.com");
    assert!(!ok && text.contains("federation access is off"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn discovered_partners_are_limited_and_missing_endpoints_can_be_hidden() {
    let pki = Pki::new("federation-discovered");
    let server = start(
        "fed-discovered",
        &pki.config(&[
            (
                "enable_partner_discovery = false",
                "enable_partner_discovery = true",
            ),
            (
                "discovered_partner_rate = 20",
                "discovered_partner_rate = 1",
            ),
        ]),
    );
    // Not listed anywhere: a discovered partner, let in, then held to its rate.
    assert_eq!(
        subscribe(
            &pki,
            &server,
            "northwind.example",
            "sip:ann@northwind.example"
        )
        .await,
        200
    );
    assert_eq!(
        subscribe(
            &pki,
            &server,
            "northwind.example",
            "sip:bob@northwind.example"
        )
        .await,
        403
    );
    // An endpoint that does not exist: 404 by default.
    assert_eq!(
        subscribe_to(
            &pki,
            &server,
            "fabrikam.com",
            "sip:a@fabrikam.com",
            "sip:nobody@contoso.com"
        )
        .await,
        404
    );
    assert_eq!(missing_endpoint_answers(&pki, &server).await, [404, 404]);
    drop(server);

    let server = start(
        "fed-hidden",
        &pki.config(&[(
            "hide_missing_endpoints = false",
            "hide_missing_endpoints = true",
        )]),
    );
    assert_eq!(
        subscribe_to(
            &pki,
            &server,
            "fabrikam.com",
            "sip:a@fabrikam.com",
            "sip:nobody@contoso.com"
        )
        .await,
        403
    );
    // Calls and IM to no one are hidden the same way.
    assert_eq!(missing_endpoint_answers(&pki, &server).await, [403, 403]);
}

#[tokio::test(flavor = "multi_thread")]
async fn certificates_near_their_expiry_are_warned_of_shown_and_exported() {
    // Four whole days and some hours left: "expires in 4 days".
    let valid_for = Duration::from_secs(5 * 86_400 - 3600);
    let pki = Pki::with_leaves_valid_for("cert-expiry", Some(valid_for));
    let expected = (std::time::SystemTime::now() + valid_for)
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let near = |value: u64| value.abs_diff(expected) <= 120;
    // A fixed admin port, so the CLI finds the API from the configuration.
    let listen = format!("listen = \"127.0.0.1:{}\"", free_port());
    let server = start(
        "cert-expiry-node",
        &pki.config(&[
            (
                "allowed_domains = []                 # e.g.",
                "allowed_domains = [{ domain = \"fabrikam.com\" }] #",
            ),
            ("listen = \"127.0.0.1:0\"", &listen),
        ]),
    );

    // Our own certificate: warned of at start, its expiry exported.
    let warned = "the TLS certificate of this node expires in 4 days";
    assert!(
        eventually(Duration::from_secs(30), || server.log_lines(warned) >= 1),
        "a warning at start for the node's certificate"
    );
    assert_eq!(server.log_lines(warned), 1, "one warning at start");
    let ours = server.metric("porchlight_tls_certificate_expiry_timestamp_seconds ");
    assert!(near(ours), "{ours} is not about {expected}");

    // Nothing is known of a partner before it connects.
    let partner_metric =
        "porchlight_partner_certificate_expiry_timestamp_seconds{partner=\"fabrikam.com\"}";
    assert!(!server.metrics().contains(partner_metric));

    // A partner's certificate: warned of once when first presented, not
    // on every request with it.
    for _ in 0..3 {
        assert_eq!(
            subscribe(&pki, &server, "fabrikam.com", "sip:alice@fabrikam.com").await,
            200
        );
    }
    let warned = "the TLS certificate of partner fabrikam.com expires in 4 days";
    assert!(
        eventually(Duration::from_secs(30), || server.log_lines(warned) >= 1),
        "a warning for the partner's certificate"
    );
    assert_eq!(
        server.log_lines(warned),
        1,
        "one warning, not one per request"
    );
    let theirs = server.metric(partner_metric);
    assert!(near(theirs), "{theirs} is not about {expected}");

    // The API and the CLI say the same.
    let status = server.api_get("/api/v1/status");
    assert_eq!(status["certificate_not_after"].as_u64(), Some(ours));
    assert_eq!(
        status["partners"][0]["certificate_not_after"].as_u64(),
        Some(theirs)
    );
    let text = porchlight_ok(&server.dir.join("porchlight.toml"), &["status"]);
    let day = |seconds: u64| {
        jiff::Timestamp::from_second(seconds as i64)
            .unwrap()
            .to_string()
    };
    assert!(
        text.contains(&format!("TLS certificate expires {}", day(ours))),
        "{text}"
    );
    // Its NOTIFYs count as requests out, however many are sent yet.
    let partner_line = text
        .lines()
        .find(|l| l.starts_with("partner fabrikam.com: 3 requests in (0 refused), "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        partner_line.ends_with(&format!("; certificate expires {}", day(theirs))),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_the_call_id_partner_and_endpoint_of_a_refused_request() {
    let pki = Pki::new("json-logs");
    let dir = temp_dir("json-logs-node");
    let path = dir.join("porchlight.toml");
    let blocked = pki.config(&[(
        "blocked_domains = []",
        "blocked_domains = [\"fabrikam.com\"]",
    )]);
    std::fs::write(&path, blocked).unwrap();
    let server = start_with_args(&path, dir, &["--json-logs"]);
    assert_eq!(
        subscribe(&pki, &server, "fabrikam.com", "sip:alice@fabrikam.com").await,
        403
    );

    let refused = || {
        std::fs::read_to_string(server.dir.join("server.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("refused: by policy"))
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))
            })
            .next()
    };
    assert!(
        eventually(Duration::from_secs(10), || refused().is_some()),
        "the refusal is logged"
    );
    let line = refused().unwrap();
    let span = &line["span"];
    assert_eq!(span["name"], "sip", "{line}");
    let call_id = span["call_id"].as_str().unwrap_or_else(|| panic!("{line}"));
    assert!(
        call_id.starts_with("fed")
            && call_id.ends_with("-fabrikam.com-sip:alice@fabrikam.com-SUBSCRIBE"),
        "{line}"
    );
    assert_eq!(span["partner"], "fabrikam.com", "{line}");
    assert_eq!(span["endpoint"], "sip:helpdesk@contoso.com", "{line}");
    assert_eq!(line["level"], "INFO");
    assert!(line["timestamp"].is_string());
    // And the refusal is counted against the partner.
    assert_eq!(
        server.metric("porchlight_partner_refused_total{partner=\"fabrikam.com\"}"),
        1
    );
}
