//! The HTTP client of webhook deliveries: each message the core hands
//! over is POSTed to the endpoint's webhook, signed, with a timeout per
//! attempt and bounded retries, and its [`Outcome`] goes back to the core.

use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use porchlight_endpoints::WebhookConfig;
use porchlight_node::webhook::{Outcome, WebhookMessage};
use serde::Deserialize;
use sha2::Sha256;

/// What an app may answer: a reply sent back to the sender as IM.
#[derive(Debug, Default, Deserialize)]
struct WebhookAnswer {
    reply: Option<String>,
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
            .header("user-agent", porchlight_node::uas::SERVER)
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
