//! Every front door's first request: what the node answers itself, in the
//! order RFC 3261 asks, through a server transaction.

use porchlight_node::testkit::*;

#[test]
fn the_router_answers_what_the_node_answers_itself_through_a_transaction() {
    let mut node = TestNode::new(&config(&[], ""));
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
        let request = Req::new(method, uri).call_id(&format!("r{i}"));
        node.receive(&request.text(), &fabrikam);
        let sent = node.take_sent();
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
        node.receive(&request.text(), &fabrikam);
        assert_eq!(finals(&node.take_sent()), [code], "{method} again");
    }
}

#[test]
fn a_missing_endpoint_is_hidden_from_a_partner_and_not_from_the_inside() {
    let mut node = TestNode::new(&config(
        &[(
            "hide_missing_endpoints = false",
            "hide_missing_endpoints = true",
        )],
        "",
    ));
    for method in ["SUBSCRIBE", "INVITE", "MESSAGE"] {
        let request = Req::new(method, "sip:nobody@contoso.com").header("Event", "presence");
        node.receive(&request.text(), &partner());
        assert_eq!(finals(&node.take_sent()), [403], "{method}");
    }
    // The one that exists is served, so the 403 says nothing of it.
    let known = Req::subscribe("sip:helpdesk@contoso.com", 60).from("sip:bob@fabrikam.com");
    node.receive(&known.text(), &partner());
    assert_eq!(statuses(&node.take_sent()), [200]);
    let inside_asks = Req::subscribe("sip:nobody@contoso.com", 60)
        .from("sip:alice@contoso.com")
        .via("UDP 127.0.0.1:5070");
    node.receive(&inside_asks.text(), &inside());
    assert_eq!(statuses(&node.take_sent()), [404], "the inside is told");
}

/// The final answer to `request` from `origin` (exactly one).
fn answer_to(
    node: &mut TestNode,
    request: &Req,
    origin: &porchlight_link::Origin,
) -> porchlight_sip::Message {
    node.receive(&request.text(), origin);
    let sent = node.take_sent();
    let finals: Vec<_> = sent
        .into_iter()
        .filter(|(_, m)| m.status().is_some_and(|c| c >= 200))
        .collect();
    assert_eq!(finals.len(), 1, "one final answer: {finals:?}");
    finals.into_iter().next().unwrap().1
}

#[test]
fn an_options_ping_from_anyone_lists_what_the_node_does_and_where_it_came_from() {
    let mut node = TestNode::new(&config(&[], ""));
    let ping = Req::new("OPTIONS", "sip:contoso.com").via("UDP 10.9.9.9:5060");
    let answer = answer_to(&mut node, &ping, &stranger("203.0.113.5:5062"));
    assert_eq!(answer.status(), Some(200));
    let answer = text(&answer);
    for header in [
        "Allow:",
        "Accept:",
        "Supported:",
        "Allow-Events:",
        "Server: Porchlight/",
    ] {
        assert!(answer.contains(header), "{header} in {answer}");
    }
    assert!(
        answer.contains("received=203.0.113.5"),
        "the Via says where it really came from (RFC 3261 §18.2.1): {answer}"
    );
}

#[test]
fn a_request_that_is_not_well_formed_gets_400_with_the_reason() {
    let mut node = TestNode::new(&config(&[], ""));
    // No CSeq: parsed, but not a request one may answer as asked.
    let no_cseq = "OPTIONS sip:contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.9.9.9;branch=z9hG4bKnocseq\r\n\
                   Max-Forwards: 70\r\nFrom: <sip:a@fabrikam.com>;tag=1\r\nTo: <sip:contoso.com>\r\n\
                   Call-ID: nocseq\r\nContent-Length: 0\r\n\r\n";
    node.receive_bytes(no_cseq.as_bytes(), &inside());
    let sent = node.take_sent();
    assert_eq!(statuses(&sent), [400]);
    assert!(
        text(&sent[0].1).contains("Bad Request ("),
        "{}",
        text(&sent[0].1)
    );
    // A header line that is not one.
    let garbled = "OPTIONS sip:contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP 10.9.9.9;branch=z9hG4bKgarbled\r\n\
                   Max-Forwards: 70\r\nFrom: <sip:a@fabrikam.com>;tag=1\r\nTo: <sip:contoso.com>\r\n\
                   Call-ID: garbled\r\nCSeq: 1 OPTIONS\r\nContent-Length: 99\r\n\r\nshort";
    node.receive_bytes(garbled.as_bytes(), &inside());
    assert_eq!(statuses(&node.take_sent()), [400]);
}

#[test]
fn a_malformed_response_or_a_stray_one_is_never_answered() {
    let mut node = TestNode::new(&config(&[], ""));
    let stray = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKnobody\r\n\
                 From: <sip:a@contoso.com>;tag=1\r\nTo: <sip:b@contoso.com>;tag=2\r\n\
                 Call-ID: stray\r\nCSeq: 1 NOTIFY\r\nContent-Length: 0\r\n\r\n";
    node.receive_bytes(stray.as_bytes(), &inside());
    let broken = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\r\n\
                  Content-Length: 5\r\n\r\n";
    node.receive_bytes(broken.as_bytes(), &inside());
    assert!(node.take_sent().is_empty());
}

#[test]
fn another_sip_version_gets_505() {
    let mut node = TestNode::new(&config(&[], ""));
    let text =
        Req::new("OPTIONS", "sip:contoso.com")
            .text()
            .replacen("SIP/2.0\r\n", "SIP/7.0\r\n", 1);
    node.receive_bytes(text.as_bytes(), &inside());
    assert_eq!(statuses(&node.take_sent()), [505]);
}

#[test]
fn a_uri_scheme_the_node_does_not_serve_gets_416() {
    let mut node = TestNode::new(&config(&[], ""));
    let request = Req::new("OPTIONS", "tel:+15550100");
    assert_eq!(
        answer_to(&mut node, &request, &inside()).status(),
        Some(416)
    );
}

#[test]
fn no_hops_left_for_another_domain_is_483_and_relaying_for_strangers_403() {
    let mut node = TestNode::new(&config(&[], ""));
    let looping = Req::new("MESSAGE", "sip:carol@northwind.example").max_forwards(Some(0));
    assert_eq!(
        answer_to(&mut node, &looping, &partner()).status(),
        Some(483)
    );
    let relay = Req::new("MESSAGE", "sip:carol@northwind.example").call_id("relay");
    let refused = answer_to(&mut node, &relay, &stranger("203.0.113.5:5060"));
    assert_eq!(refused.status(), Some(403));
    assert!(
        text(&refused).starts_with("SIP/2.0 403 Forbidden\r\n"),
        "an outsider learns what the code says, no more: {}",
        text(&refused)
    );
}

#[test]
fn the_inside_is_told_why_and_outsiders_only_the_code() {
    let mut node = TestNode::new(&config(&[], ""));
    let call = Req::new("INVITE", "sip:nobody@contoso.com");
    let told = answer_to(&mut node, &call.clone().call_id("in"), &inside());
    assert!(text(&told).starts_with("SIP/2.0 404 Not Found (no endpoint by that name)\r\n"));
    let outsider = answer_to(&mut node, &call.call_id("out"), &partner());
    assert!(
        text(&outsider).starts_with("SIP/2.0 404 Not Found\r\n"),
        "{}",
        text(&outsider)
    );
}

#[test]
fn an_extension_the_node_lacks_gets_420_naming_it_and_a_body_it_cannot_read_415() {
    let mut node = TestNode::new(&config(&[], ""));
    let needs = Req::subscribe("sip:helpdesk@contoso.com", 60)
        .header("Require", "eventlist, 100rel")
        .from("sip:bob@fabrikam.com");
    let answer = answer_to(&mut node, &needs, &partner());
    assert_eq!(answer.status(), Some(420));
    assert!(
        text(&answer).contains("\r\nUnsupported: 100rel\r\n"),
        "{}",
        text(&answer)
    );
    let html = Req::new("PUBLISH", "sip:helpdesk@contoso.com")
        .call_id("html")
        .header("Event", "presence")
        .body("text/html", "<p>busy</p>");
    let answer = answer_to(&mut node, &html, &partner());
    assert_eq!(answer.status(), Some(415));
    assert!(
        text(&answer).contains("\r\nAccept: application/pidf+xml"),
        "{}",
        text(&answer)
    );
}

#[test]
fn an_ack_for_nothing_gets_no_answer() {
    let mut node = TestNode::new(&config(&[], ""));
    node.receive(
        &Req::new("ACK", "sip:helpdesk@contoso.com").text(),
        &partner(),
    );
    assert!(node.take_sent().is_empty());
}
