//! The admin side's handle on a running node: it asks the core through
//! the driver's channel and waits for the copy it gets back, and it saves
//! imports and an admin's presence in the store off the event loop.

use std::sync::Arc;

use porchlight_node::status::{
    DecisionRecord, EndpointDetail, EndpointView, Imported, OutgoingMessage, Query, Reply,
    SentMessage, Status,
};
use tokio::sync::{mpsc, oneshot};

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
    /// The cluster (its configuration, which an import replaces, and
    /// drains); None when the node is alone.
    pub(crate) cluster: Option<crate::cluster::ClusterControl>,
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
    /// Another node of the cluster imported first, or Redis refused.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::PublishError),
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
    async fn ask<T: Send + 'static>(
        &self,
        query: impl FnOnce(Reply<T>) -> Query,
    ) -> Result<T, Stopped> {
        let (tx, rx) = oneshot::channel();
        let reply = Reply::new(move |answer| {
            let _ = tx.send(answer);
        });
        self.queries.send(query(reply)).await.map_err(|_| Stopped)?;
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

    /// The samples of the last hour the node took of itself.
    pub async fn history(&self) -> Result<porchlight_node::history::HistoryView, Stopped> {
        self.ask(Query::History).await
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
        if self.store.is_none() && self.cluster.is_none() {
            return Err(ImportError::NoStore);
        }
        let (next, endpoints, changes) = self
            .check(document, "the imported document", options)
            .await?;
        if options.dry_run {
            return Ok(Imported {
                changes,
                dry_run: true,
                ..Imported::default()
            });
        }
        let text = next.provisioned().to_toml();
        let rev = match &self.cluster {
            Some(cluster) => Some(cluster.publish(&text).await?),
            None => None,
        };
        let imported = self.put_in_force(next, endpoints, text).await?;
        if let (Some(cluster), Some(rev)) = (&self.cluster, rev) {
            cluster.set_applied(rev);
        }
        Ok(Imported {
            changes,
            ..imported
        })
    }

    /// Drains cluster member `node` (this one or another): it hands its
    /// watchers to the other nodes and takes no new ones until restarted.
    /// Answers how many subscriptions it held.
    pub async fn drain(
        &self,
        node: porchlight_node::cluster::NodeId,
    ) -> Result<u64, crate::cluster::DrainError> {
        match &self.cluster {
            Some(cluster) => cluster.drain(node).await,
            None => Err(crate::cluster::DrainError::NotClustered),
        }
    }

    /// Puts in force the configuration another node made the cluster's
    /// (revision `rev`), unless this node runs it or a newer one already.
    pub async fn adopt_cluster_configuration(&self) -> Result<(), ImportError> {
        let Some(cluster) = &self.cluster else {
            return Ok(());
        };
        let _held = self.imports.lock().await;
        let (rev, document) = cluster
            .fetch()
            .await
            .map_err(|e| crate::cluster::PublishError::Redis(e.to_string()))?;
        if rev <= cluster.applied() {
            return Ok(());
        }
        let origin = format!("the cluster's configuration (revision {rev})");
        // Another node checked it already; removing everything was meant there.
        let options = crate::ImportOptions {
            remove_all: true,
            ..crate::ImportOptions::default()
        };
        let (next, endpoints, _) = self.check(&document, &origin, options).await?;
        let text = next.provisioned().to_toml();
        self.put_in_force(next, endpoints, text).await?;
        cluster.set_applied(rev);
        tracing::info!("{origin} is in force");
        Ok(())
    }

    /// Checks a document against the configuration in force, off the
    /// event loop: checking thousands of endpoints takes milliseconds,
    /// and the loop only compares the checked set with its own.
    async fn check(
        &self,
        document: &str,
        origin: &str,
        options: crate::ImportOptions,
    ) -> Result<
        (
            crate::Config,
            porchlight_endpoints::EndpointSet,
            crate::ImportPlan,
        ),
        ImportError,
    > {
        let current = self.config();
        let (document, origin) = (document.to_owned(), origin.to_owned());
        tokio::task::spawn_blocking(move || {
            let (next, changes) = crate::check_import(&current, &document, &origin, options)?;
            let endpoints = porchlight_endpoints::EndpointSet::new(next.endpoints.clone())?;
            Ok::<_, ImportError>((next, endpoints, changes))
        })
        .await
        .map_err(|_| Stopped)?
    }

    /// Saves a checked configuration in the store (when there is one) and
    /// puts it in force, endpoints included; removed endpoints' saved
    /// admin presence goes with them.
    async fn put_in_force(
        &self,
        next: crate::Config,
        endpoints: porchlight_endpoints::EndpointSet,
        text: String,
    ) -> Result<Imported, ImportError> {
        if let Some(store) = self.store.clone() {
            tokio::task::spawn_blocking(move || store.save_provisioned(&text))
                .await
                .map_err(|_| Stopped)??;
        }
        let policy = Box::new(next.policy.clone());
        let (imported, unchanged) = self.ask(|tx| Query::Apply(policy, endpoints, tx)).await?;
        tokio::task::spawn_blocking(move || drop(unchanged));
        *self
            .config
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(next);
        if let Some(store) = self.store.clone() {
            let removed = imported.endpoints_removed.clone();
            tokio::task::spawn_blocking(move || {
                removed
                    .iter()
                    .try_for_each(|uri| store.save_admin_presence(uri, None))
            })
            .await
            .map_err(|_| Stopped)??;
        }
        tracing::info!(
            added = imported.endpoints_added.len(),
            changed = imported.endpoints_changed.len(),
            removed = imported.endpoints_removed.len(),
            "configuration imported; the policy and endpoints are in force"
        );
        Ok(imported)
    }
}
