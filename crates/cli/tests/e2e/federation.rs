//! Federation policy on the real binary over mutual TLS, with certificates
//! issued in the test: a partner's SUBSCRIBE is let in or refused by the
//! policy, a spoofed From domain is refused, and `porchlight explain` gives
//! the same verdict with its reasons.

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
