//! How this node answers requests addressed to it, as pure functions of the
//! request and the node's names: validation (400, 505), URI scheme (416),
//! locality and hop count (483, 403), method (501, 481, 404), extensions (420)
//! and bodies (415), in the order of RFC 3261 §8.2 and §16.3.

use std::net::IpAddr;

use porchlight_sip::status;
use porchlight_sip::{Answer, HeaderName, Message, Method, ParseError, ParseErrorKind, Uri};

/// Methods this node implements.
pub const ALLOWED_METHODS: &str =
    "OPTIONS, ACK, CANCEL, SUBSCRIBE, PUBLISH, SERVICE, REGISTER, INVITE, MESSAGE, BYE, INFO";
/// Methods that reach the node's endpoints (calls and IM) or live inside
/// their dialogs; here only when no endpoint or dialog takes them.
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
    /// Whether a Route entry names this node (§16.4): one of its names or
    /// addresses, and one of its ports when it gives a port.
    pub fn is_this_node(&self, uri: &porchlight_sip::SipUri<'_>) -> bool {
        self.is_local(uri)
            && uri
                .port
                .is_none_or(|p| self.ports.is_empty() || self.ports.contains(&p))
    }
}

/// What to do with a received request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Send this final response.
    Respond(Answer),
    /// No response (ACK).
    Absorb,
    /// Well-formed and ours: the presence service answers it.
    Deliver,
}

/// Decides the response to a parsed request.
pub fn answer_request(request: &Message, local: &LocalNames) -> Disposition {
    if let Err(e) = request.validate_request() {
        let reason = match e.status() {
            505 => "Version Not Supported".to_owned(),
            _ => format!("Bad Request ({e})"),
        };
        return Disposition::Respond(Answer::new(e.status(), reason));
    }
    let method = request.method_kind().unwrap_or(Method::Other(""));
    if method == Method::Ack {
        return Disposition::Absorb;
    }
    let uri = Uri::parse(request.request_uri().unwrap_or_default());
    let Ok(Uri::Sip(sip_uri, _)) = uri else {
        return Disposition::Respond(Answer::new(
            status::UNSUPPORTED_URI_SCHEME,
            "Unsupported URI Scheme",
        ));
    };
    if !local.is_local(&sip_uri) {
        // Not ours: a proxy would forward it, and with no hops left it may not.
        if request.max_forwards().ok().flatten() == Some(0) {
            return Disposition::Respond(Answer::new(status::TOO_MANY_HOPS, "Too Many Hops"));
        }
        return Disposition::Respond(Answer::new(
            status::FORBIDDEN,
            "Forbidden (relaying is not permitted)",
        ));
    }
    let in_dialog = request.to().is_ok_and(|to| to.tag().is_some());
    match method {
        Method::Options => {}
        m if m.is_service() => {}
        Method::Cancel => {
            return Disposition::Respond(Answer::new(
                status::CALL_DOES_NOT_EXIST,
                "Call/Transaction Does Not Exist",
            ))
        }
        // A dialog no endpoint or session of this node holds (§12.2.2).
        Method::Invite | Method::Message if in_dialog => {
            return Disposition::Respond(Answer::new(
                status::CALL_DOES_NOT_EXIST,
                "Call/Transaction Does Not Exist",
            ))
        }
        Method::Invite | Method::Message => {
            return Disposition::Respond(Answer::new(
                status::NOT_FOUND,
                "Not Found (no endpoint by that name)",
            ))
        }
        m if m.is_in_call() => {
            return Disposition::Respond(Answer::new(
                status::CALL_DOES_NOT_EXIST,
                "Call/Transaction Does Not Exist",
            ))
        }
        _ => {
            return Disposition::Respond(
                Answer::new(status::NOT_IMPLEMENTED, "Not Implemented")
                    .with("Allow", ALLOWED_METHODS),
            );
        }
    }
    let unsupported: Vec<&str> = request
        .tokens(HeaderName::Require)
        .filter_map(Result::ok)
        .filter(|t| !SUPPORTED_OPTIONS.iter().any(|s| s.eq_ignore_ascii_case(t)))
        .collect();
    if !unsupported.is_empty() {
        return Disposition::Respond(
            Answer::new(status::BAD_EXTENSION, "Bad Extension")
                .with("Unsupported", unsupported.join(", ")),
        );
    }
    if !request.body().is_empty() {
        let accepted = request.content_type().ok().flatten().is_some_and(|ct| {
            ACCEPTED_BODIES
                .split(", ")
                .any(|a| !a.is_empty() && ct.is(a))
        });
        if !accepted {
            return Disposition::Respond(
                Answer::new(status::UNSUPPORTED_MEDIA_TYPE, "Unsupported Media Type")
                    .with("Accept", ACCEPTED_BODIES),
            );
        }
    }
    if method != Method::Options {
        return Disposition::Deliver;
    }
    Disposition::Respond(
        Answer::new(status::OK, "OK")
            .with("Allow", ALLOWED_METHODS)
            .with("Accept", ACCEPTED_BODIES)
            .with("Supported", SUPPORTED_OPTIONS.join(", "))
            .with("Allow-Events", ALLOWED_EVENTS),
    )
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
