//! IM delivery to apps that speak only HTTP: each message is POSTed to the
//! endpoint's webhook as JSON, signed with the endpoint's shared secret,
//! with a timeout per attempt and a bounded number of retries. The SIP
//! sender's answer reflects what happened (200/202, or 480, 408 or 503
//! with the reason), and a reply in the app's answer goes back as IM.
//!
//! The signature header is `X-Porchlight-Signature: t=<unix seconds>,
//! v1=<hex HMAC-SHA256 of "<t>.<body>">`: the app recomputes it with the
//! secret, and rejects old timestamps to defeat replays. A delivery keeps
//! one `X-Porchlight-Delivery` id across its retries, so an app that got
//! the first attempt after all can drop the repeats.

use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use porchlight_endpoints::WebhookConfig;
use porchlight_sip::Answer;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

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

/// What an app may answer: a reply sent back to the sender as IM.
#[derive(Debug, Default, Deserialize)]
struct WebhookAnswer {
    reply: Option<String>,
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
            Outcome::Delivered { status: 202, .. } => Answer::new(202, "Accepted"),
            Outcome::Delivered { .. } => Answer::new(200, "OK"),
            Outcome::Refused(status) => Answer::new(
                480,
                format!("Temporarily Unavailable (the app refused the message: HTTP {status})"),
            ),
            Outcome::Unreachable => Answer::new(
                480,
                "Temporarily Unavailable (the app's webhook cannot be reached)",
            ),
            Outcome::TimedOut => Answer::new(
                408,
                "Request Timeout (the app's webhook did not answer in time)",
            ),
            Outcome::Failed(status) => Answer::new(
                503,
                format!("Service Unavailable (the app's webhook failed: HTTP {status})"),
            )
            .with("Retry-After", "30".to_owned()),
        }
    }
}

/// The value of the signature header for `body` sent at `unix` seconds.
pub fn signature(secret: &str, unix: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(unix.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={unix},v1={hex}")
}

/// The largest app answer read; a reply is a chat message, not a file.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// A pooled HTTP/1.1 client shared by every delivery, so a busy app's
/// webhook is reached over kept-alive connections.
#[derive(Clone)]
pub struct Webhooks {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Webhooks {
    fn default() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Webhooks { client }
    }
}

/// One attempt's result.
enum Attempt {
    Answered(u16, Bytes),
    Unreachable,
    TimedOut,
}

impl Webhooks {
    /// Delivers `message` to the webhook: attempts until a 2xx or 4xx, or
    /// until the retries are spent on refused connections, timeouts and
    /// 5xx answers, pausing a little longer before each retry.
    pub async fn deliver(&self, config: &WebhookConfig, message: &WebhookMessage) -> Outcome {
        let body = Bytes::from(serde_json::to_vec(message).expect("plain data serializes"));
        let mut outcome = Outcome::Unreachable;
        for attempt in 0..=config.retries {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(WebhookConfig::backoff_ms(attempt))).await;
            }
            outcome = match self.attempt(config, &message.delivery_id, &body).await {
                Attempt::Answered(status @ 200..=299, answer) => {
                    let reply = serde_json::from_slice::<WebhookAnswer>(&answer)
                        .ok()
                        .and_then(|a| a.reply)
                        .filter(|r| !r.is_empty());
                    return Outcome::Delivered { status, reply };
                }
                Attempt::Answered(status @ 500..=599, _) => Outcome::Failed(status),
                Attempt::Answered(status, _) => return Outcome::Refused(status),
                Attempt::Unreachable => Outcome::Unreachable,
                Attempt::TimedOut => Outcome::TimedOut,
            };
            tracing::debug!(url = %config.url, attempt, ?outcome, "webhook attempt failed");
        }
        outcome
    }

    async fn attempt(&self, config: &WebhookConfig, delivery_id: &str, body: &Bytes) -> Attempt {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let request = hyper::Request::post(&config.url)
            .header("content-type", "application/json")
            .header("user-agent", crate::uas::SERVER)
            .header("x-porchlight-delivery", delivery_id)
            .header(
                "x-porchlight-signature",
                signature(&config.secret, unix, body),
            )
            .body(Full::new(body.clone()));
        let Ok(request) = request else {
            return Attempt::Unreachable;
        };
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status().as_u16();
            let answer = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, hyper_util::client::legacy::Error>((status, answer))
        };
        match tokio::time::timeout(Duration::from_millis(config.timeout_ms), exchange).await {
            Ok(Ok((status, answer))) => Attempt::Answered(status, answer),
            Ok(Err(e)) => {
                tracing::debug!(url = %config.url, "webhook: {e}");
                Attempt::Unreachable
            }
            Err(_) => Attempt::TimedOut,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_cover_the_time_and_the_body() {
        let a = signature("s3cret", 1_700_000_000, b"{\"text\":\"hi\"}");
        assert!(a.starts_with("t=1700000000,v1="));
        assert_eq!(a.len(), "t=1700000000,v1=".len() + 64);
        assert_eq!(a, signature("s3cret", 1_700_000_000, b"{\"text\":\"hi\"}"));
        assert_ne!(a, signature("s3cret", 1_700_000_001, b"{\"text\":\"hi\"}"));
        assert_ne!(a, signature("s3cret", 1_700_000_000, b"{\"text\":\"ho\"}"));
        assert_ne!(a, signature("other", 1_700_000_000, b"{\"text\":\"hi\"}"));
    }

    #[test]
    fn outcomes_become_the_answers_the_issue_names() {
        let code = |o: Outcome| o.answer().code;
        assert_eq!(
            code(Outcome::Delivered {
                status: 200,
                reply: None
            }),
            200
        );
        assert_eq!(
            code(Outcome::Delivered {
                status: 202,
                reply: None
            }),
            202
        );
        assert_eq!(
            code(Outcome::Delivered {
                status: 204,
                reply: None
            }),
            200
        );
        assert_eq!(code(Outcome::Refused(404)), 480);
        assert_eq!(code(Outcome::Unreachable), 480);
        assert_eq!(code(Outcome::TimedOut), 408);
        let failed = Outcome::Failed(502).answer();
        assert_eq!(failed.code, 503);
        assert!(failed.reason.contains("HTTP 502"));
        assert!(failed.headers.iter().any(|(n, _)| *n == "Retry-After"));
    }
}
