//! IM delivery to apps that speak only HTTP, as the core sees it: what is
//! posted, and how a delivery ended. The driver's HTTP client posts each
//! message to the endpoint's webhook as JSON, signed with the endpoint's
//! shared secret, with a timeout per attempt and a bounded number of
//! retries. The SIP
//! sender's answer reflects what happened (200/202, or 480, 408 or 503
//! with the reason), and a reply in the app's answer goes back as IM.
//!
//! The signature header is `X-Porchlight-Signature: t=<unix seconds>,
//! v1=<hex HMAC-SHA256 of "<t>.<body>">`: the app recomputes it with the
//! secret, and rejects old timestamps to defeat replays. A delivery keeps
//! one `X-Porchlight-Delivery` id across its retries, so an app that got
//! the first attempt after all can drop the repeats.

use porchlight_sip::status;
use porchlight_sip::Answer;
use serde::Serialize;

/// The JSON body of a delivery.
#[derive(Debug, Serialize)]
pub struct WebhookMessage {
    /// Always `"message"`; other events may follow.
    pub event: &'static str,
    /// Unique per delivery, the same across its retries.
    pub delivery_id: String,
    /// The endpoint the message is for.
    pub endpoint: String,
    /// The sender's SIP URI.
    pub from: String,
    /// The sender's display name, when it gave one.
    pub from_name: Option<String>,
    /// The body's media type (`text/plain`, `text/html`, …).
    pub content_type: String,
    /// The message text.
    pub text: String,
    /// The federation peer whose certificate vouched for the sender; None
    /// for senders on the node's trusted networks.
    pub peer: Option<String>,
    /// Whether the sender's domain is verified (see the trust header).
    pub verified: bool,
    /// The SIP Call-ID, which groups a conversation's messages.
    pub call_id: String,
    /// Sent in an IM session (Microsoft clients): the app's reply goes back
    /// in the same conversation window.
    pub in_session: bool,
}

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The app took it (any 2xx), maybe with a reply.
    Delivered {
        /// The HTTP status.
        status: u16,
        /// Text to send back to the sender.
        reply: Option<String>,
    },
    /// The app answered 4xx: no retry.
    Refused(u16),
    /// No connection could be made on any attempt.
    Unreachable,
    /// The last attempt took longer than the timeout.
    TimedOut,
    /// The last attempt got a 5xx.
    Failed(u16),
}

impl Outcome {
    /// The SIP answer for the sender of the MESSAGE.
    pub fn answer(&self) -> Answer {
        match self {
            Outcome::Delivered { status: 202, .. } => Answer::new(status::ACCEPTED, "Accepted"),
            Outcome::Delivered { .. } => Answer::new(status::OK, "OK"),
            Outcome::Refused(status) => Answer::new(
                status::TEMPORARILY_UNAVAILABLE,
                format!("Temporarily Unavailable (the app refused the message: HTTP {status})"),
            ),
            Outcome::Unreachable => Answer::new(
                status::TEMPORARILY_UNAVAILABLE,
                "Temporarily Unavailable (the app's webhook cannot be reached)",
            ),
            Outcome::TimedOut => Answer::new(
                status::REQUEST_TIMEOUT,
                "Request Timeout (the app's webhook did not answer in time)",
            ),
            Outcome::Failed(status) => Answer::new(
                status::SERVICE_UNAVAILABLE,
                format!("Service Unavailable (the app's webhook failed: HTTP {status})"),
            )
            .with("Retry-After", "30".to_owned()),
        }
    }
}
