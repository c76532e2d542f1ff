//! What this node says of itself as a user agent server: the methods,
//! extensions, bodies and events it takes (which the router checks a
//! request against, and its answers list), the names that make a
//! Request-URI ours, and the answer to bytes that did not parse.

use std::net::IpAddr;

use porchlight_sip::status;
use porchlight_sip::{Answer, Message, Method, ParseError, ParseErrorKind};

/// Methods this node implements.
pub const ALLOWED_METHODS: &str =
    "OPTIONS, ACK, CANCEL, SUBSCRIBE, PUBLISH, SERVICE, REGISTER, INVITE, MESSAGE, BYE, INFO";
/// Option tags this node supports: the Microsoft presence extensions and
/// RFC 4662 lists (which Microsoft batched subscriptions require).
pub const SUPPORTED_OPTIONS: &[&str] = &[
    "eventlist",
    "ms-benotify",
    "ms-piggyback-first-notify",
    "adhoclist",
    "categoryList",
];
/// Body types this node accepts in requests.
pub const ACCEPTED_BODIES: &str = "application/pidf+xml, application/msrtc-category-publish+xml, application/msrtc-adrl-categorylist+xml";
/// Event packages this node serves.
pub const ALLOWED_EVENTS: &str = "presence, presence.winfo";
/// The Server header value.
pub const SERVER: &str = concat!("Porchlight/", env!("CARGO_PKG_VERSION"));

/// The names and addresses that make a Request-URI "ours".
#[derive(Clone, Debug, Default)]
pub struct LocalNames {
    /// Host names (domains and aliases), lower-case.
    pub hosts: Vec<String>,
    /// Listen addresses; an unspecified one (0.0.0.0, ::) means every
    /// address of its family.
    pub addresses: Vec<IpAddr>,
    /// Listen ports: a Route entry naming another port on one of our
    /// addresses is another program's (a proxy on the same host).
    pub ports: Vec<u16>,
}

impl LocalNames {
    /// Whether a URI names this node (one of its domains or addresses).
    pub fn is_local(&self, uri: &porchlight_sip::SipUri<'_>) -> bool {
        match uri.host.ip() {
            Some(ip) => {
                self.addresses
                    .iter()
                    .any(|a| *a == ip || (a.is_unspecified() && a.is_ipv4() == ip.is_ipv4()))
                    || self.hosts.iter().any(|h| uri.host.matches(h))
            }
            None => self.hosts.iter().any(|h| uri.host.matches(h)),
        }
    }
}

impl LocalNames {
    /// Whether `uri`, as written, is a SIP URI naming this node.
    pub fn names(&self, uri: &str) -> bool {
        porchlight_sip::Uri::parse(uri)
            .ok()
            .is_some_and(|parsed| parsed.sip().is_some_and(|sip| self.is_local(sip)))
    }

    /// Whether a Route entry names this node (§16.4): one of its names or
    /// addresses, and one of its ports when it gives a port.
    pub fn is_this_node(&self, uri: &porchlight_sip::SipUri<'_>) -> bool {
        self.is_local(uri)
            && uri
                .port
                .is_none_or(|p| self.ports.is_empty() || self.ports.contains(&p))
    }
}

/// Decides the response to bytes that did not parse, when their header
/// section could still be read. Responses are never answered.
pub fn answer_malformed(error: &ParseError, head: &Message) -> Option<Answer> {
    if !head.is_request() || head.method_kind() == Some(Method::Ack) {
        return None;
    }
    Some(match error.kind {
        ParseErrorKind::TooLarge { .. } => {
            Answer::new(status::MESSAGE_TOO_LARGE, "Message Too Large")
        }
        _ => Answer::new(status::BAD_REQUEST, format!("Bad Request ({})", error.kind)),
    })
}
