//! Whole-message checks a receiving element applies before acting on a
//! message (RFC 3261 §8.2 and RFC 4475). Parsing only frames a message; this
//! decides whether its mandatory headers are usable, and with which status a
//! bad request is answered.

use crate::header_name::HeaderName;
use crate::message::Message;
use crate::typed::{is_valid_sip_date, HeaderError};
use crate::uri::Uri;

/// Why a request cannot be processed, with the response it deserves.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not SIP/2.0: answered with 505.
    #[error("SIP version {0} is not supported")]
    VersionNotSupported(String),
    /// A header is missing, repeated or malformed: 400.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// The CSeq method differs from the request method: 400.
    #[error("CSeq method does not match the request method")]
    MethodMismatch,
    /// The Request-URI is unusable: 400.
    #[error("malformed Request-URI: {0}")]
    RequestUri(&'static str),
}

impl RequestError {
    /// The status code to answer with.
    pub fn status(&self) -> u16 {
        match self {
            RequestError::VersionNotSupported(_) => 505,
            _ => 400,
        }
    }
}

const SINGLE_VALUED_CHECKED: [HeaderName; 15] = [
    HeaderName::From,
    HeaderName::To,
    HeaderName::CallId,
    HeaderName::CSeq,
    HeaderName::MaxForwards,
    HeaderName::ContentType,
    HeaderName::ContentLength,
    HeaderName::Expires,
    HeaderName::MinExpires,
    HeaderName::Event,
    HeaderName::SubscriptionState,
    HeaderName::SipETag,
    HeaderName::SipIfMatch,
    HeaderName::RetryAfter,
    HeaderName::Date,
];

impl Message {
    /// Checks the parts every transaction and dialog depends on: Via, From,
    /// To, Call-ID, CSeq (single, well-formed, consistent).
    fn validate_common(&self) -> Result<(), HeaderError> {
        debug_assert!(SINGLE_VALUED_CHECKED.iter().all(|h| h.is_single_valued()));
        for name in SINGLE_VALUED_CHECKED {
            if self.count(name) > 1 {
                return Err(HeaderError::Repeated(name));
            }
        }
        let mut vias = 0;
        for via in self.vias() {
            via?;
            vias += 1;
        }
        if vias == 0 {
            return Err(HeaderError::Missing(HeaderName::Via));
        }
        self.from()?;
        self.to()?;
        self.call_id()?;
        self.cseq()?;
        Ok(())
    }

    /// Validates a request before a transaction is created for it.
    pub fn validate_request(&self) -> Result<(), RequestError> {
        let method = self
            .method()
            .ok_or(RequestError::RequestUri("not a request"))?;
        if !self.version().eq_ignore_ascii_case("SIP/2.0") {
            return Err(RequestError::VersionNotSupported(self.version().to_owned()));
        }
        self.validate_common()?;
        if self.cseq()?.method != method {
            return Err(RequestError::MethodMismatch);
        }
        let uri = Uri::parse(self.request_uri().unwrap_or(""))
            .map_err(|e| RequestError::RequestUri(e.0))?;
        if uri.sip().is_some_and(|u| u.headers().is_some()) {
            return Err(RequestError::RequestUri(
                "headers are not allowed in a Request-URI",
            ));
        }
        self.max_forwards()?;
        self.contacts()?;
        for route in self.routes().chain(self.record_routes()) {
            route?;
        }
        self.content_type()?;
        if let Some(date) = self.text(HeaderName::Date)? {
            if !is_valid_sip_date(date) {
                return Err(HeaderError::Malformed {
                    header: HeaderName::Date,
                    reason: "must be an RFC 1123 date in GMT",
                }
                .into());
            }
        }
        Ok(())
    }

    /// Validates a response before it is matched to a client transaction; a
    /// response that fails is discarded (RFC 4475 §3.1.2.5).
    pub fn validate_response(&self) -> Result<(), HeaderError> {
        self.validate_common()
    }
}
