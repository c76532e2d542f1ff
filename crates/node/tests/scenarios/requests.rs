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
