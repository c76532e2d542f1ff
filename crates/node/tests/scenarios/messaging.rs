//! IM to endpoints: delivered to the app's webhook, and the app's reply
//! sent back to the sender as IM.

use porchlight_link::Target;
use porchlight_node::core::{Action, Input};
use porchlight_node::testkit::*;
use porchlight_node::webhook::Outcome;

/// A bot whose app speaks only HTTP.
const BOT: &str = "\n[[endpoint]]\nuri = \"sip:bot@contoso.com\"\ndisplay_name = \"Bot\"\n\
                   [endpoint.webhook]\nurl = \"http://127.0.0.1:9/hook\"\nsecret = \"s\"\n";

/// The delivery the node asked the driver to post: its number, text and
/// whether the sender was vouched for.
fn posted(node: &TestNode) -> (u64, String, bool) {
    node.actions
        .iter()
        .find_map(|a| match a {
            Action::Post {
                delivery, message, ..
            } => Some((*delivery, message.text.clone(), message.verified)),
            _ => None,
        })
        .expect("the text is posted to the app")
}

#[test]
fn a_webhook_apps_reply_goes_back_to_the_sender() {
    let mut node = TestNode::new(&config(&[], BOT));
    let message = Req::new("MESSAGE", "sip:bot@contoso.com")
        .from("sip:bob@fabrikam.com")
        .body("text/plain", "hello");
    node.receive(&message.text(), &partner());
    assert!(
        statuses(&node.take_sent()).iter().all(|s| *s < 200),
        "no final answer before the app's"
    );
    let (delivery, text_posted, verified) = posted(&node);
    assert_eq!(text_posted, "hello");
    assert!(verified, "fabrikam.com's edge vouches for its users");
    let outcome = Outcome::Delivered {
        status: 200,
        reply: Some("hi, bob".into()),
    };
    node.input(Input::Posted { delivery, outcome });
    let sent = node.take_sent();
    assert!(
        sent.iter()
            .any(|(to, m)| *to == Target::Connection(PARTNER) && m.status() == Some(200)),
        "the sender hears the app took it: {sent:?}"
    );
    let replies = requests(&sent, "MESSAGE");
    assert_eq!(replies.len(), 1, "{sent:?}");
    let (to, reply) = replies[0];
    assert_eq!(*to, Target::Connection(PARTNER), "out to the sender's edge");
    assert_eq!(reply.body(), b"hi, bob");
    assert_eq!(reply.request_uri(), Some("sip:bob@fabrikam.com"));
    assert!(
        text(reply).contains("From: <sip:bot@contoso.com>"),
        "{}",
        text(reply)
    );
}

/// The bot receives "hello" from bob@fabrikam.com; the webhook's outcome
/// is `outcome`; the sender's final answer.
fn sender_hears(outcome: Outcome) -> porchlight_sip::Message {
    let mut node = TestNode::new(&config(&[], BOT));
    let message = Req::new("MESSAGE", "sip:bot@contoso.com")
        .from("sip:bob@fabrikam.com")
        .body("text/plain", "hello");
    node.receive(&message.text(), &partner());
    node.take_sent();
    let (delivery, _, _) = posted(&node);
    node.input(Input::Posted { delivery, outcome });
    let sent = node.take_sent();
    let finals: Vec<_> = sent
        .into_iter()
        .filter(|(_, m)| m.status().is_some())
        .collect();
    assert_eq!(finals.len(), 1, "{finals:?}");
    finals.into_iter().next().unwrap().1
}

#[test]
fn the_sender_hears_what_the_webhook_said() {
    assert_eq!(sender_hears(Outcome::Refused(404)).status(), Some(480));
    assert_eq!(sender_hears(Outcome::Unreachable).status(), Some(480));
    assert_eq!(sender_hears(Outcome::TimedOut).status(), Some(408));
    let failed = sender_hears(Outcome::Failed(502));
    assert_eq!(failed.status(), Some(503));
    assert!(text(&failed).contains("\r\nRetry-After: 30\r\n"));
    let accepted = sender_hears(Outcome::Delivered {
        status: 202,
        reply: None,
    });
    assert_eq!(accepted.status(), Some(202));
}

#[test]
fn a_partners_message_to_an_app_with_a_static_target_is_proxied_there() {
    let ivr = "\n[[endpoint]]\nuri = \"sip:ivr@contoso.com\"\ndisplay_name = \"IVR\"\n\
               sip_target = \"sip:10.0.0.7:5080\"\n";
    let mut node = TestNode::new(&config(&[], ivr));
    let message = Req::new("MESSAGE", "sip:ivr@contoso.com")
        .from("sip:bob@fabrikam.com")
        .body("text/plain", "menu");
    node.receive(&message.text(), &partner());
    let sent = node.take_sent();
    let out = requests(&sent, "MESSAGE");
    assert_eq!(out.len(), 1, "{sent:?}");
    let (to, copy) = out[0];
    assert_eq!(
        *to,
        Target::Address {
            protocol: porchlight_link::Protocol::Udp,
            addr: "10.0.0.7:5080".parse().unwrap(),
            domain: None
        }
    );
    assert_eq!(copy.request_uri(), Some("sip:10.0.0.7:5080"));
    assert!(
        text(copy).contains("X-Porchlight-Trust"),
        "the app is told who the sender is: {}",
        text(copy)
    );
    let copy = copy.clone();
    node.answer(&copy, 200, &inside());
    assert_eq!(finals(&node.take_sent()), [200]);
}

#[test]
fn a_call_for_an_endpoint_nobody_serves_gets_480() {
    // The help desk is Online by declaration, but has no app to ring.
    let mut node = TestNode::new(&config(&[], ""));
    let call = Req::new("INVITE", "sip:helpdesk@contoso.com").from("sip:bob@fabrikam.com");
    node.receive(&call.text(), &partner());
    assert_eq!(finals(&node.take_sent()), [480]);
}

#[test]
fn a_forged_trust_header_from_outside_never_reaches_the_app() {
    let ivr = "\n[[endpoint]]\nuri = \"sip:ivr@contoso.com\"\ndisplay_name = \"IVR\"\n\
               sip_target = \"sip:10.0.0.7:5080\"\n";
    let mut node = TestNode::new(&config(&[], ivr));
    let message = Req::new("MESSAGE", "sip:ivr@contoso.com")
        .from("sip:bob@fabrikam.com")
        .header("X-Porchlight-Trust", "peer=contoso.com;verified=yes")
        .body("text/plain", "menu");
    node.receive(&message.text(), &partner());
    let sent = node.take_sent();
    let (_, copy) = requests(&sent, "MESSAGE")[0];
    let trust: Vec<String> = text(copy)
        .lines()
        .filter(|l| l.starts_with("X-Porchlight-Trust"))
        .map(str::to_owned)
        .collect();
    assert_eq!(trust.len(), 1, "{trust:?}");
    assert!(trust[0].contains("fabrikam.com"), "{trust:?}");
}

/// The outcome an app that wrote through the API hears.
fn sent_through_the_api(
    node: &mut TestNode,
    to: &str,
) -> std::sync::mpsc::Receiver<porchlight_node::status::SentMessage> {
    use porchlight_node::status::{OutgoingMessage, Query, Reply};
    let (tx, rx) = std::sync::mpsc::channel();
    let reply = Reply::new(move |answer| {
        let _ = tx.send(answer);
    });
    let message = OutgoingMessage {
        from: "sip:bot@contoso.com".into(),
        to: to.into(),
        text: "your ticket is solved".into(),
        content_type: None,
    };
    node.input(Input::Query(Query::SendMessage(message, reply)));
    rx
}

#[test]
fn an_app_writes_first_through_the_api_and_hears_the_recipients_answer() {
    let mut node = TestNode::new(&config(&[], BOT));
    let outcome = sent_through_the_api(&mut node, "sip:bob@fabrikam.com");
    let sent = node.take_sent();
    let out = requests(&sent, "MESSAGE");
    assert_eq!(out.len(), 1, "{sent:?}");
    assert_eq!(out[0].0, Target::Connection(PARTNER));
    assert_eq!(out[0].1.body(), b"your ticket is solved");
    assert!(outcome.try_recv().is_err(), "nothing before the answer");
    let copy = out[0].1.clone();
    node.answer(&copy, 200, &partner());
    assert_eq!(outcome.try_recv().expect("the app is told").status, 200);
}

#[test]
fn an_app_cannot_write_to_a_domain_the_policy_blocks() {
    let mut node = TestNode::new(&config(
        &[(
            "blocked_domains = []",
            "blocked_domains = [\"evil.example\"]",
        )],
        BOT,
    ));
    let outcome = sent_through_the_api(&mut node, "sip:mallory@evil.example");
    assert!(requests(&node.take_sent(), "MESSAGE").is_empty());
    assert_eq!(outcome.try_recv().expect("told at once").status, 403);
}

#[test]
fn a_partner_found_by_dialling_gets_what_waited_for_it_and_a_dead_one_fails_it() {
    use porchlight_node::outbound::NextHop;
    // No verified connection to fabrikam.com yet.
    let links = ScriptedLinks {
        verified: Default::default(),
    };
    let allowed = (
        "allowed_domains = [{ domain = \"fabrikam.com\" }]",
        "allowed_domains = [{ domain = \"fabrikam.com\" }, { domain = \"northwind.example\" }]",
    );
    let mut node = TestNode::with_links(&config(&[allowed], BOT), links);
    let outcome = sent_through_the_api(&mut node, "sip:bob@fabrikam.com");
    assert!(
        requests(&node.take_sent(), "MESSAGE").is_empty(),
        "it waits"
    );
    let hop = node
        .actions
        .iter()
        .find_map(|a| match a {
            Action::Dial { hop, .. } => Some(hop.clone()),
            _ => None,
        })
        .expect("the driver is asked to find fabrikam.com's edge");
    assert_eq!(hop, NextHop::Partner("fabrikam.com".into()));
    node.input(Input::Dialed {
        hop: hop.clone(),
        result: Ok(Target::Connection(PARTNER)),
    });
    let sent = node.take_sent();
    assert_eq!(
        requests(&sent, "MESSAGE").len(),
        1,
        "what waited goes: {sent:?}"
    );
    let copy = requests(&sent, "MESSAGE")[0].1.clone();
    node.answer(&copy, 200, &partner());
    assert_eq!(outcome.try_recv().unwrap().status, 200);

    // An allowed partner whose edge cannot be found: the app hears 503 at
    // once, not after the transaction's timeout.
    let outcome = sent_through_the_api(&mut node, "sip:carol@northwind.example");
    let hop = node
        .actions
        .iter()
        .rev()
        .find_map(|a| match a {
            Action::Dial { hop, .. } => Some(hop.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(hop, NextHop::Partner("northwind.example".into()));
    node.input(Input::Dialed {
        hop,
        result: Err("no SRV, no A".into()),
    });
    assert!(requests(&node.take_sent(), "MESSAGE").is_empty());
    assert_eq!(outcome.try_recv().expect("told at once").status, 503);
    let status = node.core.status(node.now);
    assert_eq!((status.dials_succeeded, status.dials_failed), (1, 1));
}

#[test]
fn a_microsoft_im_session_is_held_by_the_node_for_a_webhook_app() {
    let mut node = TestNode::new(&config(&[], BOT));
    let sdp = "v=0\r\no=- 0 0 IN IP4 192.0.2.10\r\ns=session\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
               m=message 5060 sip null\r\na=accept-types:text/plain\r\n";
    // "Hi bot" in base64, as Microsoft clients carry the first text.
    let invite = Req::new("INVITE", "sip:bot@contoso.com")
        .from("sip:bob@fabrikam.com")
        .call_id("ims1")
        .header("Contact", "<sip:bob@192.0.2.10;transport=tls>")
        .header(
            "ms-text-format",
            "text/plain; charset=UTF-8; msgr=WAAtAE0A; ms-body=SGkgYm90",
        )
        .body("application/sdp", sdp);
    node.receive(&invite.text(), &partner());
    let sent = node.take_sent();
    let ok = sent
        .iter()
        .map(|(_, m)| m)
        .find(|m| m.status() == Some(200))
        .expect("the node answers the INVITE for the app");
    assert!(
        String::from_utf8_lossy(ok.body()).contains("m=message"),
        "{}",
        text(ok)
    );
    let tag = ok.to().unwrap().tag().unwrap().to_owned();
    let (_, first, _) = posted(&node);
    assert_eq!(first, "Hi bot", "the first text goes to the webhook");
    assert_eq!(node.core.status(node.now).im_sessions, 1);
    // The session's later MESSAGE goes to the webhook too; BYE ends it.
    let ack = Req::new("ACK", "sip:bot@contoso.com")
        .call_id("ims1")
        .to_tag(&tag);
    node.receive(&ack.text(), &partner());
    let message = Req::new("MESSAGE", "sip:bot@contoso.com")
        .from("sip:bob@fabrikam.com")
        .call_id("ims1")
        .cseq(2)
        .to_tag(&tag)
        .body("text/plain", "second");
    node.receive(&message.text(), &partner());
    assert!(
        node.actions.iter().any(|a| matches!(
            a,
            Action::Post { message, .. } if message.text == "second" && message.in_session
        )),
        "in the session"
    );
    let bye = Req::new("BYE", "sip:bot@contoso.com")
        .from("sip:bob@fabrikam.com")
        .call_id("ims1")
        .cseq(3)
        .to_tag(&tag);
    node.receive(&bye.text(), &partner());
    assert_eq!(finals(&node.take_sent()).last(), Some(&200));
    assert_eq!(node.core.status(node.now).im_sessions, 0);
}
