//! What the running node shows its admin: a snapshot of its counters, its
//! endpoints with live presence and watchers, partner traffic and recent
//! refusals. The core owns the state, so the admin surface asks it with a
//! [`Query`] and gets a copy back; nothing is shared or locked on the SIP
//! path.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use crate::admission::{DecisionCount, DecisionRecord, Way};
use crate::history::{HistorySample, PartnerSample, MAX_CHARTED_PARTNERS};

/// The node's counters and gauges at one moment.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Status {
    /// The software version.
    pub version: &'static str,
    /// The domains served.
    pub domains: Vec<String>,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Subscriptions alive now.
    pub subscriptions_active: u64,
    /// New subscriptions accepted since start.
    pub subscriptions_created: u64,
    /// Refreshes accepted since start.
    pub subscriptions_refreshed: u64,
    /// Subscriptions that ran out since start.
    pub subscriptions_expired: u64,
    /// NOTIFY and BENOTIFY requests sent since start.
    pub notifies_sent: u64,
    /// NOTIFYs that failed for good since start.
    pub notifies_failed: u64,
    /// NOTIFY transactions outstanding now.
    pub notifies_in_flight: u32,
    /// Open TCP and TLS connections.
    pub connections: usize,
    /// Whether new work is being shed for overload now.
    pub overloaded: bool,
    /// Live server transactions.
    pub server_transactions: usize,
    /// Live client transactions.
    pub client_transactions: usize,
    /// Requests being proxied now.
    pub proxied_in_progress: usize,
    /// IM sessions held for webhook apps.
    pub im_sessions: usize,
    /// Webhook deliveries under way.
    pub webhook_deliveries: usize,
    /// Messages waiting for a destination to be found.
    pub parked: usize,
    /// Messages held for connections whose peer reads slower than the
    /// node writes.
    pub backlogged: usize,
    /// Destinations found and connected since start.
    pub dials_succeeded: u64,
    /// Destinations that could not be reached since start.
    pub dials_failed: u64,
    /// Policy decisions by way, kind and outcome.
    pub decisions: Vec<DecisionCount>,
    /// Connections and requests refused by a bound since start, by reason
    /// (exact, whatever the log summed up).
    pub refused: Vec<RefusedCount>,
    /// Requests exchanged with each federated partner.
    pub partners: Vec<PartnerTraffic>,
    /// The endpoints.
    pub endpoints: Vec<EndpointView>,
    /// Write-behind to the store; None when state is kept in memory only.
    pub store: Option<StoreStatus>,
    /// The cluster this node is a member of; None when it is alone.
    pub cluster: Option<crate::cluster::ClusterView>,
    /// When this node's own TLS certificate expires (Unix seconds); None
    /// without a TLS listener.
    pub certificate_not_after: Option<i64>,
    /// Copies of messages for a capture server; None when capture is off.
    pub capture: Option<CaptureStatus>,
}

impl Status {
    /// What the console charts of this status, taken at `at` (Unix
    /// seconds): the gauges, the totals, and only the busiest partners, so
    /// a sample's size does not grow with the partners counted.
    pub fn sample(&self, at: i64) -> HistorySample {
        let mut partners: Vec<PartnerSample> = self
            .partners
            .iter()
            .map(|p| PartnerSample {
                partner: p.partner.clone(),
                requests: p.requests_in + p.requests_out,
            })
            .collect();
        partners.sort_by(|a, b| b.requests.cmp(&a.requests).then(a.partner.cmp(&b.partner)));
        partners.truncate(MAX_CHARTED_PARTNERS);
        HistorySample {
            at,
            subscriptions_active: self.subscriptions_active,
            notifies_sent: self.notifies_sent,
            notifies_failed: self.notifies_failed,
            refused: self.refused.iter().map(|r| r.count).sum(),
            partners,
        }
    }
}

/// Whether the capture server is getting its copies: a rising `dropped`
/// means the capture path cannot keep up (SIP is never held for it).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct CaptureStatus {
    /// The capture server, as looked up at start.
    pub collector: String,
    /// Copies sent since start.
    pub sent: u64,
    /// Copies dropped since start: the queue full, or a message too
    /// large for HEP.
    pub dropped: u64,
    /// Copies the socket refused since start (capture server unreachable).
    pub failed: u64,
}

/// How many were refused for one reason.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct RefusedCount {
    /// Why, as the log says it.
    pub reason: String,
    /// How many since start.
    pub count: u64,
}

/// How write-behind to the store is keeping up.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct StoreStatus {
    /// Batches committed since start.
    pub flushes: u64,
    /// Records saved or deleted since start.
    pub records_written: u64,
    /// Batches that failed to commit since start.
    pub failures: u64,
    /// Time spent committing since start, in seconds.
    pub flush_seconds_total: f64,
    /// The longest commit since start, in seconds.
    pub flush_seconds_max: f64,
    /// Changed subscriptions not yet handed to the writer.
    pub pending_changes: usize,
    /// Batches waiting for the writer.
    pub queued_batches: usize,
    /// Subscriptions brought back at start.
    pub restored: usize,
    /// Restored subscriptions still owed their first NOTIFY.
    pub recovering: usize,
}

/// Traffic with one partner, named as its certificate proves it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct PartnerTraffic {
    /// The partner.
    pub partner: String,
    /// Requests received from it.
    pub requests_in: u64,
    /// Requests sent to it.
    pub requests_out: u64,
    /// Its requests the policy refused.
    pub requests_refused: u64,
    /// When the certificate it last presented expires (Unix seconds);
    /// None until it has connected to us with one.
    pub certificate_not_after: Option<i64>,
}

/// An endpoint with its live presence.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct EndpointView {
    /// Its URI.
    pub uri: String,
    /// The name clients show.
    pub display_name: String,
    /// The availability band, as admins name it (`online`, `away`, …).
    pub availability: &'static str,
    /// The availability number (the Microsoft scale).
    pub availability_value: u32,
    /// The activity token, if any.
    pub activity: Option<String>,
    /// The note, if any.
    pub note: Option<String>,
    /// Subscriptions watching it.
    pub watchers: usize,
    /// Whether its app is registered, when it registers at all.
    pub registered: Option<bool>,
    /// Its health probe's verdict, when it has one.
    pub healthy: Option<bool>,
    /// Whether an admin's setting decides its presence now.
    pub set_by_admin: bool,
}

/// One endpoint in full: its presence and who watches it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct EndpointDetail {
    /// The endpoint.
    #[serde(flatten)]
    pub endpoint: EndpointView,
    /// The watchers' URIs (at most [`MAX_LISTED_WATCHERS`]).
    pub watcher_uris: Vec<String>,
}

/// The most watchers one endpoint detail lists.
pub const MAX_LISTED_WATCHERS: usize = 1000;

/// Where the answer to a [`Query`] goes. The admin side waits on its own
/// channel behind this function, so the core needs no runtime to answer.
pub struct Reply<T>(Box<dyn FnOnce(T) + Send>);

impl<T> Reply<T> {
    /// A reply that hands the answer to `deliver`.
    pub fn new(deliver: impl FnOnce(T) + Send + 'static) -> Reply<T> {
        Reply(Box::new(deliver))
    }

    /// Answers; an asker that has gone away is not an error.
    pub fn send(self, answer: T) {
        (self.0)(answer)
    }
}

/// A question for the node's core from the admin side.
pub enum Query {
    /// The counters, gauges and endpoints now.
    Status(Reply<Status>),
    /// One endpoint with its watchers, by URI.
    Endpoint(String, Reply<Option<EndpointDetail>>),
    /// The most recent refusals, newest first.
    Refusals(Reply<Vec<DecisionRecord>>),
    /// An admin's presence for an endpoint (None clears it).
    SetPresence(
        String,
        Option<porchlight_presence::PresenceState>,
        Reply<Option<EndpointView>>,
    ),
    /// The policy and endpoints to put in force; the answer gives back
    /// the endpoints that were already in force, to be freed off the loop.
    Apply(
        Box<porchlight_policy::PolicyConfig>,
        porchlight_endpoints::EndpointSet,
        Reply<(Imported, porchlight_endpoints::EndpointSet)>,
    ),
    /// An IM to send as an endpoint.
    SendMessage(OutgoingMessage, Reply<SentMessage>),
    /// The samples of the last hour.
    History(Reply<crate::history::HistoryView>),
}

/// An IM an endpoint's app sends through the node (admin API).
#[derive(Clone, Debug, Deserialize, utoipa::ToSchema)]
pub struct OutgoingMessage {
    /// The endpoint it is sent as (filled in from the path).
    #[serde(skip)]
    pub from: String,
    /// The recipient's SIP URI, e.g. `sip:alice@fabrikam.com`.
    pub to: String,
    /// The text.
    pub text: String,
    /// Its media type; `text/plain` when absent.
    #[serde(default)]
    pub content_type: Option<String>,
}

/// How an IM sent through the node ended: the recipient's final SIP
/// response, or the node's own when it never left (policy, routing).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct SentMessage {
    /// The SIP status code.
    pub status: u16,
    /// Its reason phrase.
    pub reason: String,
}

/// What an import did (everything in it saved and in force), or, for a
/// dry run, would do.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Imported {
    /// URIs of endpoints now in service: watchable, registrable, callable.
    pub endpoints_added: Vec<String>,
    /// URIs of endpoints whose settings changed; watchers see the difference.
    pub endpoints_changed: Vec<String>,
    /// URIs of endpoints no longer served; their watchers were told.
    pub endpoints_removed: Vec<String>,
    /// Every change to the policy and endpoints, entry by entry.
    pub changes: crate::ImportPlan,
    /// Only shown: nothing was changed.
    pub dry_run: bool,
}

/// Per-partner request counts, bounded so a flood of names cannot grow it.
#[derive(Default)]
pub struct PartnerCounts {
    counts: HashMap<Arc<str>, PartnerTraffic>,
}

/// The most partners counted one by one; the rest are not listed.
const MAX_COUNTED_PARTNERS: usize = 1024;

impl PartnerCounts {
    /// The partner's entry, made when there is room.
    fn entry(&mut self, partner: &str) -> Option<&mut PartnerTraffic> {
        if !self.counts.contains_key(partner) && self.counts.len() < MAX_COUNTED_PARTNERS {
            let traffic = PartnerTraffic {
                partner: partner.to_owned(),
                requests_in: 0,
                requests_out: 0,
                requests_refused: 0,
                certificate_not_after: None,
            };
            self.counts.insert(partner.into(), traffic);
        }
        self.counts.get_mut(partner)
    }

    /// Counts one request to (`outbound`) or from `partner`; past the
    /// bound, new names go uncounted.
    pub fn count(&mut self, partner: &str, outbound: bool) {
        if let Some(traffic) = self.entry(partner) {
            if outbound {
                traffic.requests_out += 1;
            } else {
                traffic.requests_in += 1;
            }
        }
    }

    /// Notes the expiry of the certificate `partner` presented; true when
    /// it is new or changed (a renewed certificate), so it is looked at.
    pub fn note_certificate(&mut self, partner: &str, not_after: i64) -> bool {
        self.entry(partner).is_some_and(|traffic| {
            traffic.certificate_not_after.replace(not_after) != Some(not_after)
        })
    }

    /// Each partner's certificate expiry, as last seen.
    pub fn certificates(&self) -> impl Iterator<Item = (&str, i64)> {
        self.counts
            .values()
            .filter_map(|t| Some((t.partner.as_str(), t.certificate_not_after?)))
    }

    /// Every counted partner with its traffic, by name.
    pub fn list(&self) -> Vec<PartnerTraffic> {
        let mut list: Vec<PartnerTraffic> = self.counts.values().cloned().collect();
        list.sort_by(|a, b| a.partner.cmp(&b.partner));
        list
    }
}

/// How long ahead of its expiry a certificate is warned of: time to renew
/// it, or to ask a partner to.
pub const CERTIFICATE_WARNING_SECS: i64 = 14 * 86_400;

/// Logs a warning when the certificate of `whose` (ours, or a partner's)
/// expires within [`CERTIFICATE_WARNING_SECS`] of `now_unix`; true when it
/// did.
pub fn warn_if_expiring(whose: &str, not_after: i64, now_unix: i64) -> bool {
    let left = not_after - now_unix;
    if left >= CERTIFICATE_WARNING_SECS {
        return false;
    }
    let expires = jiff::Timestamp::from_second(not_after)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| not_after.to_string());
    if left <= 0 {
        tracing::warn!(certificate = whose, %expires, "the TLS certificate of {whose} has expired: TLS with it fails; renew it");
    } else {
        let days = left / 86_400;
        tracing::warn!(certificate = whose, %expires, days_left = days, "the TLS certificate of {whose} expires in {days} days: renew it before then");
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partner_certificate_is_looked_at_when_new_or_renewed_only() {
        let mut partners = PartnerCounts::default();
        assert!(partners.note_certificate("fabrikam.com", 1_000));
        assert!(!partners.note_certificate("fabrikam.com", 1_000));
        assert!(partners.note_certificate("fabrikam.com", 2_000), "renewed");
        partners.count("fabrikam.com", false);
        let listed = partners.list();
        assert_eq!(listed[0].certificate_not_after, Some(2_000));
        assert_eq!(listed[0].requests_in, 1);
    }

    #[test]
    fn certificates_are_warned_of_within_two_weeks_of_expiry_and_after() {
        let now = 1_800_000_000;
        assert!(!warn_if_expiring(
            "this node",
            now + CERTIFICATE_WARNING_SECS,
            now
        ));
        assert!(warn_if_expiring(
            "this node",
            now + CERTIFICATE_WARNING_SECS - 1,
            now
        ));
        assert!(warn_if_expiring("this node", now - 1, now), "expired");
    }

    #[test]
    fn partners_past_the_bound_are_not_remembered() {
        let mut partners = PartnerCounts::default();
        for n in 0..MAX_COUNTED_PARTNERS {
            partners.count(&format!("p{n}.example"), false);
        }
        assert!(!partners.note_certificate("one-too-many.example", 1_000));
        assert_eq!(partners.certificates().count(), 0);
    }
}
