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
