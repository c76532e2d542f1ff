//! Request methods as a type, so the node decides what a request is by
//! matching a value, not by comparing strings in several places.

use std::fmt;

/// A SIP request method: the ones Porchlight acts on by name (RFC 3261,
/// 3262, 3265/6665, 3311, 3428, 3515, 3903, 6086, and Microsoft's SERVICE
/// and BENOTIFY), and any other as it was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method<'a> {
    /// Sets up a session (RFC 3261).
    Invite,
    /// Acknowledges an INVITE's final answer.
    Ack,
    /// Ends a session.
    Bye,
    /// Cancels a pending request.
    Cancel,
    /// Asks for capabilities; also a keepalive.
    Options,
    /// Binds a contact to an address of record.
    Register,
    /// Asks for notifications of an event (RFC 6665).
    Subscribe,
    /// A notification in a subscription.
    Notify,
    /// Microsoft's NOTIFY that expects no answer.
    Benotify,
    /// Publishes event state (RFC 3903).
    Publish,
    /// An instant message (RFC 3428).
    Message,
    /// Mid-session information (RFC 6086).
    Info,
    /// Asks the recipient to make a request (RFC 3515).
    Refer,
    /// Acknowledges a reliable provisional answer (RFC 3262).
    Prack,
    /// Changes a session before it is set up (RFC 3311).
    Update,
    /// Microsoft's presence publication and queries.
    Service,
    /// Any other method, as written.
    Other(&'a str),
}

impl<'a> Method<'a> {
    /// The method a request line names (methods are case-sensitive, §7.1).
    pub fn of(name: &'a str) -> Method<'a> {
        match name {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "REGISTER" => Method::Register,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "BENOTIFY" => Method::Benotify,
            "PUBLISH" => Method::Publish,
            "MESSAGE" => Method::Message,
            "INFO" => Method::Info,
            "REFER" => Method::Refer,
            "PRACK" => Method::Prack,
            "UPDATE" => Method::Update,
            "SERVICE" => Method::Service,
            other => Method::Other(other),
        }
    }

    /// The name as written on the request line.
    pub fn as_str(self) -> &'a str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Benotify => "BENOTIFY",
            Method::Publish => "PUBLISH",
            Method::Message => "MESSAGE",
            Method::Info => "INFO",
            Method::Refer => "REFER",
            Method::Prack => "PRACK",
            Method::Update => "UPDATE",
            Method::Service => "SERVICE",
            Method::Other(name) => name,
        }
    }

    /// The node's own services: presence subscriptions, publications and
    /// registration, answered here rather than routed.
    pub fn is_service(self) -> bool {
        matches!(
            self,
            Method::Subscribe | Method::Publish | Method::Service | Method::Register
        )
    }

    /// Methods that belong to a call or an IM session's dialog.
    pub fn is_in_call(self) -> bool {
        matches!(
            self,
            Method::Bye | Method::Info | Method::Update | Method::Prack | Method::Refer
        )
    }
}

impl fmt::Display for Method<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_method_reads_back_as_written() {
        for name in [
            "INVITE",
            "ACK",
            "BYE",
            "CANCEL",
            "OPTIONS",
            "REGISTER",
            "SUBSCRIBE",
            "NOTIFY",
            "BENOTIFY",
            "PUBLISH",
            "MESSAGE",
            "INFO",
            "REFER",
            "PRACK",
            "UPDATE",
            "SERVICE",
        ] {
            let method = Method::of(name);
            assert!(!matches!(method, Method::Other(_)), "{name}");
            assert_eq!(method.as_str(), name);
        }
        assert_eq!(
            Method::of("invite"),
            Method::Other("invite"),
            "case-sensitive"
        );
        assert_eq!(Method::of("FOO").as_str(), "FOO");
    }
}
