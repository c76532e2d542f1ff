//! Header names known to Porchlight, recognised case-insensitively and in
//! their compact forms (RFC 3261 §7.3.3), so lookups never compare strings.

macro_rules! header_names {
    ($( $(#[$doc:meta])* $variant:ident => $canonical:literal, [$($lower:literal),+]; )*) => {
        /// A header name, with the compact and long forms folded together so
        /// that `v:` and `Via:` are the same header to every caller.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum HeaderName {
            $( $(#[$doc])* $variant, )*
            /// Any header Porchlight does not interpret; kept verbatim.
            Other,
        }

        impl HeaderName {
            /// The canonical spelling used when Porchlight writes the header.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( HeaderName::$variant => $canonical, )*
                    HeaderName::Other => "(extension header)",
                }
            }

            /// Classifies a header name as it appeared on the wire.
            pub fn from_bytes(name: &[u8]) -> HeaderName {
                let mut lower = [0u8; 24];
                if name.len() > lower.len() {
                    return HeaderName::Other;
                }
                for (dst, src) in lower.iter_mut().zip(name) {
                    *dst = src.to_ascii_lowercase();
                }
                match &lower[..name.len()] {
                    $( $($lower)|+ => HeaderName::$variant, )*
                    _ => HeaderName::Other,
                }
            }
        }
    };
}

header_names! {
    /// The path a request took, and the path its responses take back.
    Via => "Via", [b"via", b"v"];
    /// The logical originator.
    From => "From", [b"from", b"f"];
    /// The logical recipient.
    To => "To", [b"to", b"t"];
    /// Groups all messages of one dialog or registration.
    CallId => "Call-ID", [b"call-id", b"i"];
    /// Orders requests within a dialog and matches responses.
    CSeq => "CSeq", [b"cseq"];
    /// Hop limit against forwarding loops.
    MaxForwards => "Max-Forwards", [b"max-forwards"];
    /// Where the sender can be reached directly.
    Contact => "Contact", [b"contact", b"m"];
    /// Proxies a request must visit.
    Route => "Route", [b"route"];
    /// Proxies that want to stay on the dialog's path.
    RecordRoute => "Record-Route", [b"record-route"];
    /// Requested or granted lifetime of a registration, subscription or publication.
    Expires => "Expires", [b"expires"];
    /// Shortest lifetime a server accepts (sent with 423).
    MinExpires => "Min-Expires", [b"min-expires"];
    /// The event package of a SUBSCRIBE, NOTIFY or PUBLISH.
    Event => "Event", [b"event", b"o"];
    /// State of a subscription carried by every NOTIFY.
    SubscriptionState => "Subscription-State", [b"subscription-state"];
    /// Body formats the sender understands.
    Accept => "Accept", [b"accept"];
    /// Methods the sender supports.
    Allow => "Allow", [b"allow"];
    /// Event packages the sender supports.
    AllowEvents => "Allow-Events", [b"allow-events", b"u"];
    /// Extensions the sender supports.
    Supported => "Supported", [b"supported", b"k"];
    /// Extensions the recipient must support.
    Require => "Require", [b"require"];
    /// Extensions every proxy must support.
    ProxyRequire => "Proxy-Require", [b"proxy-require"];
    /// Extensions the responder did not support (sent with 420).
    Unsupported => "Unsupported", [b"unsupported"];
    /// Media type of the body.
    ContentType => "Content-Type", [b"content-type", b"c"];
    /// Length of the body in octets; frames messages on streams.
    ContentLength => "Content-Length", [b"content-length", b"l"];
    /// Encodings applied to the body.
    ContentEncoding => "Content-Encoding", [b"content-encoding", b"e"];
    /// Entity tag a publication was given (RFC 3903).
    SipETag => "SIP-ETag", [b"sip-etag"];
    /// Entity tag a publication refresh refers to (RFC 3903).
    SipIfMatch => "SIP-If-Match", [b"sip-if-match"];
    /// Digest challenge from a registrar or UAS.
    WwwAuthenticate => "WWW-Authenticate", [b"www-authenticate"];
    /// Credentials answering a WWW-Authenticate challenge.
    Authorization => "Authorization", [b"authorization"];
    /// Digest challenge from a proxy.
    ProxyAuthenticate => "Proxy-Authenticate", [b"proxy-authenticate"];
    /// Credentials answering a Proxy-Authenticate challenge.
    ProxyAuthorization => "Proxy-Authorization", [b"proxy-authorization"];
    /// How long to wait before retrying.
    RetryAfter => "Retry-After", [b"retry-after"];
    /// Extra diagnostics about a response.
    Warning => "Warning", [b"warning"];
    /// Software of the requesting agent.
    UserAgent => "User-Agent", [b"user-agent"];
    /// Software of the responding agent.
    Server => "Server", [b"server"];
    /// When the message was sent (RFC 1123 form, GMT only).
    Date => "Date", [b"date"];
    /// Human-readable topic.
    Subject => "Subject", [b"subject", b"s"];
}

impl HeaderName {
    /// Headers RFC 3261 allows at most once; a second copy makes a request malformed.
    pub fn is_single_valued(self) -> bool {
        matches!(
            self,
            HeaderName::From
                | HeaderName::To
                | HeaderName::CallId
                | HeaderName::CSeq
                | HeaderName::MaxForwards
                | HeaderName::ContentType
                | HeaderName::ContentLength
                | HeaderName::Expires
                | HeaderName::MinExpires
                | HeaderName::Event
                | HeaderName::SubscriptionState
                | HeaderName::SipETag
                | HeaderName::SipIfMatch
                | HeaderName::RetryAfter
                | HeaderName::Date
        )
    }
}

#[cfg(test)]
mod tests {
    use super::HeaderName;

    #[test]
    fn compact_and_long_forms_are_one_header() {
        assert_eq!(HeaderName::from_bytes(b"v"), HeaderName::Via);
        assert_eq!(HeaderName::from_bytes(b"VIA"), HeaderName::Via);
        assert_eq!(HeaderName::from_bytes(b"I"), HeaderName::CallId);
        assert_eq!(
            HeaderName::from_bytes(b"MaX-fOrWaRdS"),
            HeaderName::MaxForwards
        );
        assert_eq!(HeaderName::from_bytes(b"C%6Fntact"), HeaderName::Other);
        assert_eq!(HeaderName::from_bytes(&[b'x'; 40]), HeaderName::Other);
    }
}
