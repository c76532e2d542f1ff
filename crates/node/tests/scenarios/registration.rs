//! Apps registering as their endpoints (RFC 3261 §10, digest per RFC
//! 8760), their registration driving presence, and the guessing guard.

use std::time::Duration;

use porchlight_link::Origin;
use porchlight_node::testkit::*;
use porchlight_sip::Message;

/// A queue whose app registers with a password; no static presence, so it
/// is Offline until the app is there.
const QUEUE: &str = "\n[[endpoint]]\nuri = \"sip:queue@contoso.com\"\ndisplay_name = \"Queue\"\n\
                     [endpoint.registration]\npassword = \"s3cret\"\n";

/// The app, on the inside.
fn app() -> Origin {
    stranger("127.0.0.1:5090")
}

fn register(expires: u32) -> Req {
    Req::new("REGISTER", "sip:contoso.com")
        .from("sip:queue@contoso.com")
        .via("UDP 127.0.0.1:5090")
        .call_id("reg1")
        .header("Contact", "<sip:queue@127.0.0.1:5090>")
        .header("Expires", &expires.to_string())
        .to("sip:queue@contoso.com")
}

/// Registers the app with `password`, answering the challenge; the final
/// answer.
fn register_with(node: &mut TestNode, password: &str, cseq: u32, expires: u32) -> Message {
    let first = register(expires).cseq(cseq);
    node.receive(&first.text(), &app());
    let challenge = node.final_answer();
    assert_eq!(challenge.status(), Some(401));
    let auth = digest_answer(
        &sha256_challenge(&challenge),
        "REGISTER",
        "sip:contoso.com",
        ("queue", password),
        1,
    );
    let second = register(expires)
        .cseq(cseq + 1)
        .header("Authorization", &auth);
    node.receive(&second.text(), &app());
    node.final_answer()
}

#[test]
fn a_register_without_credentials_is_challenged_in_both_algorithms() {
    let mut node = TestNode::new(&config(&[], QUEUE));
    node.receive(&register(600).text(), &app());
    let answer = node.final_answer();
    assert_eq!(answer.status(), Some(401));
    let text = text(&answer);
    assert!(text.contains("algorithm=SHA-256"), "{text}");
    assert!(text.contains("algorithm=MD5"), "{text}");
    assert!(text.contains("qop=\"auth\""), "{text}");
}

#[test]
fn the_right_password_binds_the_app_and_the_endpoint_goes_online_then_offline() {
    let mut node = TestNode::new(&config(&[], QUEUE));
    let watcher = inside();
    let watch = Req::subscribe("sip:queue@contoso.com", 600)
        .from("sip:alice@contoso.com")
        .via("UDP 127.0.0.1:5070");
    node.receive(&watch.text(), &watcher);
    let sent = node.take_sent();
    let (_, first) = requests(&sent, "NOTIFY")[0];
    assert!(
        text(first).contains("<basic>closed</basic>"),
        "{}",
        text(first)
    );
    node.answer_notifies(&sent, &watcher, 200);

    let ok = register_with(&mut node, "s3cret", 1, 600);
    assert_eq!(ok.status(), Some(200));
    assert!(
        text(&ok).contains("<sip:queue@127.0.0.1:5090>"),
        "{}",
        text(&ok)
    );
    node.advance(Duration::from_secs(6));
    let sent = node.take_sent();
    let online = notifies(&sent);
    assert_eq!(online.len(), 1, "{sent:?}");
    assert!(text(online[0]).contains("<basic>open</basic>"));
    node.answer_notifies(&sent, &watcher, 200);

    // The app leaves.
    let bye = register_with(&mut node, "s3cret", 3, 0);
    assert_eq!(bye.status(), Some(200));
    node.advance(Duration::from_secs(6));
    let sent = node.take_sent();
    let offline = notifies(&sent);
    assert_eq!(offline.len(), 1, "{sent:?}");
    assert!(text(offline[0]).contains("<basic>closed</basic>"));
}

#[test]
fn a_wrong_password_is_challenged_again_and_binds_nothing() {
    let mut node = TestNode::new(&config(&[], QUEUE));
    let answer = register_with(&mut node, "guess", 1, 600);
    assert_eq!(answer.status(), Some(401));
    let status = node.core.status(node.now);
    let queue = status
        .endpoints
        .iter()
        .find(|e| e.uri == "sip:queue@contoso.com")
        .unwrap();
    assert_eq!(queue.registered, Some(false));
}

#[test]
fn a_guesser_is_locked_out_unchecked_and_others_are_not() {
    let mut node = TestNode::new(&config(&[], QUEUE));
    for round in 0..10 {
        let answer = register_with(&mut node, "guess", 1 + 2 * round, 600);
        assert_eq!(answer.status(), Some(401), "guess {round}");
    }
    // The eleventh try is refused before anything is checked.
    node.receive(&register(600).cseq(100).text(), &app());
    let locked = node.final_answer();
    assert_eq!(locked.status(), Some(503));
    assert!(text(&locked).contains("\r\nRetry-After: "));
    // Another address, with the password, is not held back.
    let other = stranger("127.0.0.2:5091");
    node.receive(
        &register(600)
            .via("UDP 127.0.0.2:5091")
            .call_id("reg2")
            .text(),
        &other,
    );
    assert_eq!(node.final_answer().status(), Some(401));
    // The lockout ends.
    node.advance(Duration::from_secs(61));
    node.receive(&register(600).cseq(200).text(), &app());
    assert_eq!(node.final_answer().status(), Some(401));
}

#[test]
fn registering_a_name_that_is_no_endpoint_is_404_inside_and_a_challenge_outside_when_hidden() {
    let mut node = TestNode::new(&config(
        &[(
            "hide_missing_endpoints = false",
            "hide_missing_endpoints = true",
        )],
        QUEUE,
    ));
    let nobody = |via: &str| {
        Req::new("REGISTER", "sip:contoso.com")
            .from("sip:nobody@contoso.com")
            .via(via)
            .call_id(&format!("nobody-{}", via.len()))
            .header("Contact", "<sip:nobody@192.0.2.1>")
            .to("sip:nobody@contoso.com")
    };
    node.receive(&nobody("UDP 127.0.0.1:5092").text(), &inside());
    assert_eq!(node.final_answer().status(), Some(404));
    // An outsider cannot tell it from a real endpoint's challenge.
    node.receive(&nobody("TLS edge.fabrikam.com").text(), &partner());
    assert_eq!(node.final_answer().status(), Some(401));
}
