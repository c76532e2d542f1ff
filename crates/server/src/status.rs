//! What the running node shows its admin: a snapshot of its counters, its
//! endpoints with live presence and watchers, partner traffic and recent
//! refusals. The event loop owns the state, so the admin surface asks it
//! through a [`NodeHandle`] and gets a copy back; nothing is shared or
//! locked on the SIP path.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

pub use crate::admission::{DecisionCount, DecisionRecord, Way};

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

/// A question for the event loop.
pub(crate) enum Query {
    Status(oneshot::Sender<Status>),
    Endpoint(String, oneshot::Sender<Option<EndpointDetail>>),
    Refusals(oneshot::Sender<Vec<DecisionRecord>>),
    SetPresence(
        String,
        Option<porchlight_presence::PresenceState>,
        oneshot::Sender<Option<EndpointView>>,
    ),
    /// The policy and endpoints to put in force; the answer gives back
    /// the endpoints that were already in force, to be freed off the loop.
    Apply(
        Box<porchlight_policy::PolicyConfig>,
        porchlight_endpoints::EndpointSet,
        oneshot::Sender<(Imported, porchlight_endpoints::EndpointSet)>,
    ),
    SendMessage(OutgoingMessage, oneshot::Sender<SentMessage>),
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

/// Asks the running node about itself. Cloning shares it.
#[derive(Clone)]
pub struct NodeHandle {
    pub(crate) queries: mpsc::Sender<Query>,
    /// The configuration in force; replaced by an import.
    pub(crate) config: Arc<std::sync::RwLock<Arc<crate::Config>>>,
    /// Where an imported configuration is kept; None: memory only.
    pub(crate) store: Option<Arc<dyn porchlight_store::Store>>,
    /// Held through each import, so two at once cannot leave the store
    /// holding one document and the node running the other.
    pub(crate) imports: Arc<tokio::sync::Mutex<()>>,
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

/// Why an import was refused.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The document is invalid, incomplete or removes everything
    /// unasked; nothing was changed.
    #[error(transparent)]
    Refused(#[from] crate::ImportRefusal),
    /// The node keeps nothing: an import would not survive a restart.
    #[error("this node has no store ([store] path = \"\"): change the configuration file instead")]
    NoStore,
    /// Saving failed; nothing was applied.
    #[error(transparent)]
    Store(#[from] porchlight_store::StoreError),
    /// The node has stopped.
    #[error(transparent)]
    Stopped(#[from] Stopped),
    /// A change to the federation lists that contradicts them.
    #[error(transparent)]
    Federation(#[from] porchlight_policy::FederationChangeError),
    /// An endpoint does not pass the checks.
    #[error(transparent)]
    Endpoint(#[from] porchlight_endpoints::EndpointError),
}

/// The node is gone.
#[derive(Debug, thiserror::Error)]
#[error("the node has stopped")]
pub struct Stopped;

impl NodeHandle {
    async fn ask<T>(&self, query: impl FnOnce(oneshot::Sender<T>) -> Query) -> Result<T, Stopped> {
        let (tx, rx) = oneshot::channel();
        self.queries.send(query(tx)).await.map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }

    /// The counters, gauges and endpoints now.
    pub async fn status(&self) -> Result<Status, Stopped> {
        self.ask(Query::Status).await
    }

    /// One endpoint with its watchers; None when the URI is not an endpoint.
    pub async fn endpoint(&self, uri: &str) -> Result<Option<EndpointDetail>, Stopped> {
        let uri = uri.to_owned();
        self.ask(|tx| Query::Endpoint(uri, tx)).await
    }

    /// The most recent refusals, newest first, with their reasons.
    pub async fn refusals(&self) -> Result<Vec<DecisionRecord>, Stopped> {
        self.ask(Query::Refusals).await
    }

    /// Sets an endpoint's presence as the admin says (None clears it);
    /// watchers are notified. None when the URI is not an endpoint.
    pub async fn set_presence(
        &self,
        uri: &str,
        state: Option<porchlight_presence::PresenceState>,
    ) -> Result<Option<EndpointView>, Stopped> {
        let saved = state.as_ref().map(|s| porchlight_store::AdminPresence {
            availability: s.availability.0,
            note: s.note.clone(),
        });
        let owned = uri.to_owned();
        let view = self.ask(|tx| Query::SetPresence(owned, state, tx)).await?;
        if let (Some(view), Some(store)) = (&view, self.store.clone()) {
            // Kept under the endpoint's canonical URI, so it finds its
            // endpoint after a restart whatever alias the admin used.
            let endpoint = view.uri.clone();
            let saving = tokio::task::spawn_blocking(move || {
                store.save_admin_presence(&endpoint, saved.as_ref())
            })
            .await;
            let failure = match saving {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(e) = failure {
                tracing::error!(
                    endpoint = uri,
                    "the admin's presence is in force but not saved: {e}"
                );
            }
        }
        Ok(view)
    }

    /// Sends an IM as one of the node's endpoints and waits for its final
    /// response.
    pub async fn send_message(&self, message: OutgoingMessage) -> Result<SentMessage, Stopped> {
        self.ask(|tx| Query::SendMessage(message, tx)).await
    }

    /// Changes the federation lists (allow, block, remove a domain) as one
    /// checked import: saved, and in force at once.
    pub async fn change_federation(
        &self,
        change: porchlight_policy::FederationChange,
    ) -> Result<Imported, ImportError> {
        let held = self.imports.lock().await;
        let mut provisioned = self.config().provisioned();
        provisioned.policy.change_federation(change)?;
        // One change, named by the admin: emptying a list with it is meant.
        let options = crate::ImportOptions {
            remove_all: true,
            ..crate::ImportOptions::default()
        };
        self.import_holding(&provisioned.to_toml(), options, held)
            .await
    }

    /// The configuration the node runs with, for offline-style questions
    /// such as `explain`.
    pub fn config(&self) -> Arc<crate::Config> {
        self.config
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces the policy and endpoints with a provisioned document
    /// (`config import`): checked like a file, saved in the store, then
    /// put in force at once, endpoints included. Removed endpoints' saved
    /// admin presence is deleted with them.
    pub async fn import(
        &self,
        document: &str,
        options: crate::ImportOptions,
    ) -> Result<Imported, ImportError> {
        let held = self.imports.lock().await;
        self.import_holding(document, options, held).await
    }

    /// [`import`](Self::import), for a caller that holds the import lock
    /// (and read the configuration under it).
    async fn import_holding(
        &self,
        document: &str,
        options: crate::ImportOptions,
        _held: tokio::sync::MutexGuard<'_, ()>,
    ) -> Result<Imported, ImportError> {
        let store = self.store.clone().ok_or(ImportError::NoStore)?;
        // Checking thousands of endpoints takes milliseconds: not on the
        // event loop, which only compares the checked set with its own.
        let current = self.config();
        let document = document.to_owned();
        let (next, endpoints, changes) = tokio::task::spawn_blocking(move || {
            let (next, changes) =
                crate::check_import(&current, &document, "the imported document", options)?;
            let endpoints = porchlight_endpoints::EndpointSet::new(next.endpoints.clone())?;
            Ok::<_, ImportError>((next, endpoints, changes))
        })
        .await
        .map_err(|_| Stopped)??;
        if options.dry_run {
            return Ok(Imported {
                changes,
                dry_run: true,
                ..Imported::default()
            });
        }
        let text = next.provisioned().to_toml();
        let saving = store.clone();
        tokio::task::spawn_blocking(move || saving.save_provisioned(&text))
            .await
            .map_err(|_| Stopped)??;
        let policy = Box::new(next.policy.clone());
        let (mut imported, unchanged) = self.ask(|tx| Query::Apply(policy, endpoints, tx)).await?;
        imported.changes = changes;
        tokio::task::spawn_blocking(move || drop(unchanged));
        *self
            .config
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(next);
        let removed = imported.endpoints_removed.clone();
        tokio::task::spawn_blocking(move || {
            removed
                .iter()
                .try_for_each(|uri| store.save_admin_presence(uri, None))
        })
        .await
        .map_err(|_| Stopped)??;
        tracing::info!(
            added = imported.endpoints_added.len(),
            changed = imported.endpoints_changed.len(),
            removed = imported.endpoints_removed.len(),
            "configuration imported; the policy and endpoints are in force"
        );
        Ok(imported)
    }
}

/// Per-partner request counts, bounded so a flood of names cannot grow it.
#[derive(Default)]
pub(crate) struct PartnerCounts {
    counts: HashMap<Arc<str>, (u64, u64)>,
}

/// The most partners counted one by one; the rest are not listed.
const MAX_COUNTED_PARTNERS: usize = 1024;

impl PartnerCounts {
    pub fn count(&mut self, partner: &str, outbound: bool) {
        let bump = |entry: &mut (u64, u64)| {
            if outbound {
                entry.1 += 1;
            } else {
                entry.0 += 1;
            }
        };
        if let Some(entry) = self.counts.get_mut(partner) {
            return bump(entry);
        }
        if self.counts.len() < MAX_COUNTED_PARTNERS {
            let mut entry = (0, 0);
            bump(&mut entry);
            self.counts.insert(partner.into(), entry);
        }
    }

    pub fn list(&self) -> Vec<PartnerTraffic> {
        let mut list: Vec<PartnerTraffic> = self
            .counts
            .iter()
            .map(|(partner, &(requests_in, requests_out))| PartnerTraffic {
                partner: partner.to_string(),
                requests_in,
                requests_out,
            })
            .collect();
        list.sort_by(|a, b| a.partner.cmp(&b.partner));
        list
    }
}
