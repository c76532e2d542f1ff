//! Where an endpoint's presence comes from: its health probe and its
//! app's own publications (RFC 3903), each reaching the watchers.

use std::time::Duration;

use porchlight_node::core::{Action, Input};
use porchlight_node::testkit::*;

/// An app with a health URL and a password to publish with.
const PROBED: &str = "\n[[endpoint]]\nuri = \"sip:ivr@contoso.com\"\ndisplay_name = \"IVR\"\n\
                      [endpoint.health]\nurl = \"http://127.0.0.1:9/health\"\n\
                      [endpoint.registration]\npassword = \"s3cret\"\n";

fn watch(node: &mut TestNode) {
    let watch = Req::subscribe("sip:ivr@contoso.com", 600)
        .from("sip:alice@contoso.com")
        .via("UDP 127.0.0.1:5070");
    node.watch(&watch, &inside());
}

/// The probe the node asked the driver to run for the IVR: slot, number.
fn probe(node: &TestNode) -> (usize, u64) {
    node.actions
        .iter()
        .rev()
        .find_map(|a| match a {
            Action::StartProbe {
                endpoint, probe, ..
            } => Some((*endpoint, *probe)),
            _ => None,
        })
        .expect("a probe is started for the endpoint with a health URL")
}

/// The one new NOTIFY after `by`, answered.
fn next_notify(node: &mut TestNode, by: Duration) -> String {
    node.advance(by);
    let sent = node.take_sent();
    let fresh = notifies(&sent);
    assert_eq!(fresh.len(), 1, "{sent:?}");
    let body = text(fresh[0]);
    node.answer_notifies(&sent, &inside(), 200);
    body
}

#[test]
fn the_health_probe_drives_presence_and_a_stopped_probes_verdict_is_ignored() {
    let mut node = TestNode::new(&config(&[], PROBED));
    let (endpoint, number) = probe(&node);
    watch(&mut node);
    node.input(Input::Verdict {
        endpoint,
        probe: number,
        healthy: true,
    });
    assert!(next_notify(&mut node, Duration::from_secs(6)).contains("<basic>open</basic>"));
    // One failed check is not yet down: two in a row are (the default).
    let failed = Input::Verdict {
        endpoint,
        probe: number,
        healthy: false,
    };
    node.input(failed);
    node.advance(Duration::from_secs(6));
    assert!(
        notifies(&node.take_sent()).is_empty(),
        "one failure is no verdict"
    );
    node.input(Input::Verdict {
        endpoint,
        probe: number,
        healthy: false,
    });
    assert!(next_notify(&mut node, Duration::from_secs(6)).contains("<basic>closed</basic>"));
    // A verdict from a probe that is no longer the endpoint's changes nothing.
    node.input(Input::Verdict {
        endpoint,
        probe: number + 100,
        healthy: true,
    });
    node.advance(Duration::from_secs(6));
    assert!(notifies(&node.take_sent()).is_empty());
}

fn publish(cseq: u32, auth: Option<&str>, etag: Option<&str>, note: &str) -> String {
    let pidf = format!(
        "<?xml version=\"1.0\"?><presence xmlns=\"urn:ietf:params:xml:ns:pidf\" \
         xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" entity=\"sip:ivr@contoso.com\">\
         <tuple id=\"a\"><status><basic>open</basic></status></tuple>\
         <dm:person id=\"p\"><dm:note>{note}</dm:note></dm:person></presence>"
    );
    let mut req = Req::new("PUBLISH", "sip:ivr@contoso.com")
        .from("sip:ivr@contoso.com")
        .via("UDP 127.0.0.1:5090")
        .call_id("pub1")
        .cseq(cseq)
        .header("Event", "presence")
        .header("Expires", "600")
        .body("application/pidf+xml", &pidf);
    if let Some(auth) = auth {
        req = req.header("Authorization", auth);
    }
    if let Some(etag) = etag {
        req = req.header("SIP-If-Match", etag);
    }
    req.text()
}

#[test]
fn an_apps_publication_is_authenticated_reaches_watchers_and_is_refreshed_by_its_entity_tag() {
    let mut node = TestNode::new(&config(&[], PROBED));
    watch(&mut node);
    let app = stranger("127.0.0.1:5090");
    node.receive(&publish(1, None, None, "Queue is short"), &app);
    let challenge = node.final_answer();
    assert_eq!(
        challenge.status(),
        Some(401),
        "only the endpoint's app may publish"
    );
    let auth = digest_answer(
        &sha256_challenge(&challenge),
        "PUBLISH",
        "sip:ivr@contoso.com",
        ("ivr", "s3cret"),
        1,
    );
    node.receive(&publish(2, Some(&auth), None, "Queue is short"), &app);
    let ok = node.final_answer();
    assert_eq!(ok.status(), Some(200), "{}", text(&ok));
    let etag = ok
        .first_value(porchlight_sip::HeaderName::SipETag)
        .map(|v| String::from_utf8_lossy(v).trim().to_owned())
        .expect("an entity tag");
    assert!(next_notify(&mut node, Duration::from_secs(6)).contains("Queue is short"));
    // A refresh names the entity tag; one naming another is 412.
    let auth = digest_answer(
        &sha256_challenge(&challenge),
        "PUBLISH",
        "sip:ivr@contoso.com",
        ("ivr", "s3cret"),
        2,
    );
    node.receive(&publish(3, Some(&auth), Some("no-such-tag"), "x"), &app);
    assert_eq!(node.final_answer().status(), Some(412));
    let auth = digest_answer(
        &sha256_challenge(&challenge),
        "PUBLISH",
        "sip:ivr@contoso.com",
        ("ivr", "s3cret"),
        3,
    );
    node.receive(&publish(4, Some(&auth), Some(&etag), "Queue is long"), &app);
    assert_eq!(node.final_answer().status(), Some(200));
    assert!(next_notify(&mut node, Duration::from_secs(6)).contains("Queue is long"));
}
