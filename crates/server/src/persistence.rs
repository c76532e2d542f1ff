//! Write-behind of a node's subscriptions, and their return after a
//! restart.
//!
//! The event loop keeps the only live copy. On each flush tick it takes the
//! slots that changed, copies those records out and hands the batch to a
//! writer thread, so the store's latency never holds up SIP. When the
//! writer falls behind, the loop stops handing over and lets changes
//! accumulate (each slot once), so memory stays bounded by the number of
//! subscriptions, not by the rate of change.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use porchlight_node::clock::Now;
use porchlight_node::presence::PresenceService;
use porchlight_node::snapshot::flow_to_text;
use porchlight_store::{Batch, Store};

use crate::cluster::DialogBatch;

/// Batches handed to the writer and not yet committed, beyond which the
/// loop waits for it.
const MAX_QUEUED_BATCHES: usize = 2;

/// What the writer has done, for metrics and the status API.
#[derive(Debug, Default)]
pub struct StoreCounters {
    /// Batches committed.
    pub flushes: AtomicU64,
    /// Records saved or deleted.
    pub records: AtomicU64,
    /// Batches that failed to commit.
    pub failures: AtomicU64,
    /// Time spent committing, in microseconds, summed.
    pub flush_micros: AtomicU64,
    /// The longest commit so far, in microseconds.
    pub max_flush_micros: AtomicU64,
    /// Batches waiting for the writer.
    pub queued: AtomicUsize,
}

/// Where a cluster node's subscriptions go besides its store: Redis,
/// through the cluster task, so another node can take them over.
pub struct Mirror {
    /// The cluster task's queue.
    pub batches: tokio::sync::mpsc::Sender<DialogBatch>,
    /// Batches sent and not yet written.
    pub queued: Arc<AtomicUsize>,
}

/// The loop's side of write-behind.
pub struct WriteBehind {
    /// The store writer's queue; None for a cluster node without a store.
    batches: Option<mpsc::Sender<Batch>>,
    counters: Arc<StoreCounters>,
    mirror: Option<Mirror>,
    changed: Vec<u32>,
    /// The next batch to the mirror is a drain's last.
    handing_over: bool,
}

impl WriteBehind {
    /// Starts writing behind to `store` (on a thread of its own) and to
    /// the `mirror`, either of which may be absent.
    pub fn start(
        store: Option<Arc<dyn Store>>,
        mirror: Option<Mirror>,
    ) -> std::io::Result<WriteBehind> {
        let counters = Arc::new(StoreCounters::default());
        let batches = match store {
            Some(store) => Some(Self::writer(store, counters.clone())?),
            None => None,
        };
        Ok(WriteBehind {
            batches,
            counters,
            mirror,
            changed: Vec::new(),
            handing_over: false,
        })
    }

    /// Whether a store is written (rather than only the cluster).
    pub fn has_store(&self) -> bool {
        self.batches.is_some()
    }

    /// The writer thread for `store`.
    fn writer(
        store: Arc<dyn Store>,
        counters: Arc<StoreCounters>,
    ) -> std::io::Result<mpsc::Sender<Batch>> {
        let (batches, incoming) = mpsc::channel::<Batch>();
        let shared = counters;
        std::thread::Builder::new()
            .name("porchlight-store".into())
            .spawn(move || {
                for batch in incoming {
                    let started = Instant::now();
                    let records = (batch.saved.len() + batch.deleted.len()) as u64;
                    match store.write(&batch) {
                        Ok(()) => {
                            let micros = started.elapsed().as_micros() as u64;
                            shared.flushes.fetch_add(1, Ordering::Relaxed);
                            shared.records.fetch_add(records, Ordering::Relaxed);
                            shared.flush_micros.fetch_add(micros, Ordering::Relaxed);
                            shared.max_flush_micros.fetch_max(micros, Ordering::Relaxed);
                        }
                        Err(e) => {
                            shared.failures.fetch_add(1, Ordering::Relaxed);
                            tracing::error!("write-behind batch of {records} records lost: {e}");
                        }
                    }
                    shared.queued.fetch_sub(1, Ordering::Relaxed);
                }
            })?;
        Ok(batches)
    }

    /// Saves every subscription in the next batch to the mirror and marks
    /// it the last: the node is drained, and gives them to another node
    /// once they are in Redis.
    pub fn hand_over(&mut self, presence: &mut PresenceService) {
        presence.save_all();
        self.handing_over = self.mirror.is_some();
    }

    /// The writer's counters.
    pub fn counters(&self) -> Arc<StoreCounters> {
        self.counters.clone()
    }

    /// Hands what changed since the last tick to the writer and the
    /// mirror, unless either is still busy with earlier batches.
    pub fn tick(&mut self, presence: &mut PresenceService, now: Now) {
        if self.counters.queued.load(Ordering::Relaxed) >= MAX_QUEUED_BATCHES
            || self
                .mirror
                .as_ref()
                .is_some_and(|m| m.queued.load(Ordering::Relaxed) >= MAX_QUEUED_BATCHES)
        {
            return;
        }
        presence.take_changed(&mut self.changed);
        let registrations = presence.take_registration_changes(now);
        let publications = presence.take_publication_changes(now);
        let last = std::mem::take(&mut self.handing_over);
        if self.changed.is_empty() && registrations.is_empty() && publications.is_empty() && !last {
            return;
        }
        let mut batch = Batch {
            publications,
            registrations: registrations
                .into_iter()
                .map(|(endpoint, bindings)| {
                    let bindings = bindings
                        .into_iter()
                        .map(|b| {
                            let text = flow_to_text(&b.flow.flow);
                            let flow = b.flow.clone().with_flow(text);
                            b.with_flow(flow)
                        })
                        .collect();
                    (endpoint, bindings)
                })
                .collect(),
            ..Batch::default()
        };
        for &slot in &self.changed {
            match presence.saved(slot, now) {
                Some(saved) => {
                    let flow = flow_to_text(&saved.flow.flow);
                    batch.saved.push(saved.with_flow(flow));
                }
                None => batch.deleted.push(slot),
            }
        }
        self.changed.clear();
        if let Some(mirror) = &self.mirror {
            let dialogs = DialogBatch {
                saved: batch
                    .saved
                    .iter()
                    .map(|s| (s.id.index, porchlight_store::codec::encode_subscription(s)))
                    .collect(),
                deleted: batch.deleted.clone(),
                last,
            };
            if last || !(dialogs.saved.is_empty() && dialogs.deleted.is_empty()) {
                mirror.queued.fetch_add(1, Ordering::Relaxed);
                if mirror.batches.try_send(dialogs).is_err() {
                    mirror.queued.fetch_sub(1, Ordering::Relaxed);
                    tracing::error!(
                        "the cluster task has stopped; subscriptions are no longer saved in Redis"
                    );
                }
            }
        }
        let Some(batches) = &self.batches else {
            return;
        };
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        if batches.send(batch).is_err() {
            self.counters.queued.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("the store writer has stopped; changes are no longer saved");
        }
    }
}
