//! The admin surface of a running node over real HTTP: the token is
//! required, the API shows live endpoints, watchers and refusals with their
//! reasons, `/metrics` is valid Prometheus text, the OpenAPI document lists
//! the API, and the CLI's `status` and `endpoint` commands read the same.

use std::time::Duration;

use crate::common::*;

fn get(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut request = ureq::get(&format!("http://{addr}{path}"));
    if let Some(token) = token {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    match request.call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{path}: {e}"),
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn cli(server: &Server, args: &[&str]) -> String {
    porchlight_ok(&server.dir.join("porchlight.toml"), args)
}

#[test]
fn the_admin_api_shows_the_running_node_and_requires_its_token() {
    // A fixed port, so the CLI finds the API from the configuration alone.
    let port = free_port();
    let listen = format!("listen = \"127.0.0.1:{port}\"");
    let server = start(
        "admin",
        &config(
            &[
                ("listen = \"127.0.0.1:0\"", &listen),
                (
                    "blocked_domains = []",
                    "blocked_domains = [\"evil.example\"]",
                ),
            ],
            "",
        ),
    );
    let admin = server.admin.expect("the admin API is on by default");
    let token_file = server.dir.join("porchlight-admin.token");
    let token = std::fs::read_to_string(&token_file).unwrap();
    let token = token.trim();

    // No token, a wrong one: 401 with a Bearer challenge, for every route.
    for path in ["/api/v1/status", "/metrics", "/api/v1/openapi.json"] {
        let (status, said) = get(admin, path, None);
        assert_eq!(status, 401, "{path}");
        assert!(said.contains("a bearer token is required"), "{said}");
        let (status, said) = get(admin, path, Some("not-the-token"));
        assert_eq!(status, 401, "{path}");
        assert!(
            said.contains("is not this node's"),
            "a wrong token is told apart: {said}"
        );
    }
    // The OpenAPI document lists the answers no handler writes.
    let doc = json(&get(admin, "/api/v1/openapi.json", Some(token)).1);
    for (path, method) in [
        ("/api/v1/status", "get"),
        ("/api/v1/history", "get"),
        ("/api/v1/config", "put"),
        ("/api/v1/endpoints/{uri}/messages", "post"),
    ] {
        assert!(
            doc["paths"][path][method]["responses"]["401"].is_object(),
            "{path} {method} lacks its 401"
        );
    }
    let messages = &doc["paths"]["/api/v1/endpoints/{uri}/messages"]["post"]["responses"];
    for code in ["400", "415", "422"] {
        assert!(
            messages[code].is_object(),
            "messages lacks {code}: {messages}"
        );
    }
    // IM to no one: 400, not a gateway failure.
    let sent = ureq::post(&format!(
        "http://{admin}/api/v1/endpoints/sip:helpdesk@contoso.com/messages"
    ))
    .set("Authorization", &format!("Bearer {token}"))
    .send_json(serde_json::json!({"to": "", "text": "hi"}));
    match sent {
        Err(ureq::Error::Status(400, r)) => {
            let said = r.into_string().unwrap_or_default();
            assert!(said.contains("not a SIP URI of a user"), "{said}");
        }
        other => panic!("\"to\": \"\" answered {other:?}"),
    }

    // A watcher subscribes; a request going out to a blocked domain is refused.
    let subscribe = request(
        "SUBSCRIBE",
        "sip:helpdesk@contoso.com",
        "Event: presence\r\nExpires: 600\r\nContact: <sip:alice@127.0.0.1:5099>\r\n",
    );
    let answers = udp_exchange(server.udp, &subscribe, Duration::from_millis(500));
    assert_eq!(answers[0].status(), Some(200));
    let message = String::from_utf8(request("MESSAGE", "sip:eve@evil.example", ""))
        .unwrap()
        .replace(
            "From: <sip:alice@fabrikam.com>",
            "From: <sip:bob@contoso.com>",
        );
    let refused = udp_exchange(server.udp, message.as_bytes(), Duration::from_millis(500));
    assert_eq!(refused.last().and_then(|r| r.status()), Some(403));

    let (code, text) = get(admin, "/api/v1/status", Some(token));
    assert_eq!(code, 200, "{text}");
    let status = json(&text);
    assert_eq!(status["subscriptions_active"], 1, "{status}");
    assert_eq!(status["endpoints"][0]["uri"], "sip:helpdesk@contoso.com");
    assert_eq!(status["endpoints"][0]["availability"], "online");
    assert_eq!(status["endpoints"][0]["watchers"], 1);

    let (code, text) = get(
        admin,
        "/api/v1/endpoints/sip:helpdesk@contoso.com",
        Some(token),
    );
    assert_eq!(code, 200, "{text}");
    assert_eq!(json(&text)["watcher_uris"][0], "sip:alice@fabrikam.com");
    assert_eq!(
        get(
            admin,
            "/api/v1/endpoints/sip:nobody@contoso.com",
            Some(token)
        )
        .0,
        404
    );

    let (_, text) = get(admin, "/api/v1/decisions", Some(token));
    let refusal = &json(&text)[0];
    assert_eq!(refusal["way"], "outbound", "{text}");
    assert_eq!(refusal["kind"], "im");
    assert_eq!(refusal["allowed"], false);
    assert!(
        refusal["steps"]
            .to_string()
            .contains("blocked domain evil.example"),
        "{text}"
    );

    // The same explanation as `porchlight explain`, from the running configuration.
    let (code, text) = get(
        admin,
        "/api/v1/explain?from=sip:alice@evil.example&to=sip:helpdesk@contoso.com&kind=presence&peer=evil.example",
        Some(token),
    );
    assert_eq!(code, 200, "{text}");
    let explanation = json(&text);
    assert_eq!(explanation["allowed"], false);
    assert!(
        explanation["steps"].to_string().contains("blocked"),
        "{text}"
    );
    let (offline_ok, offline) = explain(&server, "sip:alice@evil.example", "evil.example");
    assert!(!offline_ok);
    for step in explanation["steps"].as_array().unwrap() {
        assert!(offline.contains(step.as_str().unwrap()), "{offline}");
    }

    let (code, metrics) = get(admin, "/metrics", Some(token));
    assert_eq!(code, 200);
    for line in [
        "porchlight_subscriptions_active 1",
        "porchlight_endpoint_watchers{endpoint=\"sip:helpdesk@contoso.com\"} 1",
        "porchlight_policy_decisions_total{way=\"outbound\",kind=\"im\",outcome=\"deny\"} 1",
        "# TYPE porchlight_notifies_sent_total counter",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    // Every sample line is `name{labels} value` with a number.
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }

    let (code, text) = get(admin, "/api/v1/openapi.json", Some(token));
    assert_eq!(code, 200);
    let doc = json(&text);
    for path in [
        "/api/v1/status",
        "/api/v1/endpoints/{uri}",
        "/api/v1/explain",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["token"]["scheme"],
        "bearer"
    );

    // The CLI reads the same through the API, finding it from the configuration.
    let status = cli(&server, &["status"]);
    assert!(
        status.contains("sip:helpdesk@contoso.com  online (3500)  watchers 1"),
        "{status}"
    );
    assert!(status.contains("subscriptions: 1 active"), "{status}");
    let shown = cli(&server, &["endpoint", "show", "sip:helpdesk@contoso.com"]);
    assert!(
        shown.contains("watched by sip:alice@fabrikam.com"),
        "{shown}"
    );
}
