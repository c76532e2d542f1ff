//! Saving subscriptions and bringing them back after a restart.
//!
//! Memory stays the primary copy. The notifier notes which records changed
//! (a journal of slot numbers, deduplicated when taken), the node copies
//! those records out and writes them behind in batches. After a restart the
//! saved records go back into the same slots with the same generations, so
//! the To tags watchers hold and the CSeq numbers they saw stay valid, and
//! their first NOTIFYs are paced over a window instead of sent at once.

use std::collections::VecDeque;
use std::hash::Hasher;
use std::time::{Duration, Instant};

use super::{
    keyed_hash, Flags, Format, Kind, Member, Notifier, Record, SubscriptionId, ALIVE, BENOTIFY,
    DIRTY, NO_ROUTE, TERMINATING,
};
use crate::notifier::FlowInfo;
use crate::table::DialogStrings;

/// Slots whose saved copy is out of date.
#[derive(Debug, Default)]
pub(super) struct Journal {
    /// Off until the node has somewhere to save to.
    pub(super) enabled: bool,
    pub(super) changed: Vec<u32>,
}

/// Restored subscriptions owed their first NOTIFY, released at a rate that
/// spreads them over the recovery window.
#[derive(Debug, Default)]
pub(super) struct Recovery {
    queue: VecDeque<SubscriptionId>,
    rate: f64,
    tokens: f64,
    at: Option<Instant>,
}

impl Recovery {
    /// The next restored subscription whose turn has come.
    pub(super) fn next(&mut self, now: Instant) -> Option<SubscriptionId> {
        if self.queue.is_empty() || self.rate <= 0.0 {
            return None;
        }
        let at = *self.at.get_or_insert(now);
        // A tenth of a second of tokens, plus one so fractions carry over.
        let burst = self.rate / 10.0 + 1.0;
        self.tokens =
            (self.tokens + now.saturating_duration_since(at).as_secs_f64() * self.rate).min(burst);
        self.at = Some(now);
        if self.tokens < 1.0 {
            return None;
        }
        self.tokens -= 1.0;
        self.queue.pop_front()
    }

    /// When the next one may go.
    pub(super) fn next_due(&self, now: Instant) -> Option<Instant> {
        if self.queue.is_empty() || self.rate <= 0.0 {
            // Nothing waiting, or the pace not set yet.
            return None;
        }
        if self.tokens >= 1.0 {
            return Some(now);
        }
        Some(now + Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// One member of a saved batched (RLMI) list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListMember {
    /// An endpoint of this node the watcher was allowed to see.
    Endpoint(String),
    /// Anything else: listed with a `resubscribe` entry.
    Other(String),
}

/// What a saved subscription watches, by URI: endpoint numbers are not
/// stable across configuration changes, their URIs are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SavedTarget {
    /// One endpoint's presence.
    Presence(String),
    /// One endpoint's watchers.
    WatcherInfo(String),
    /// A Microsoft batched list.
    List(Vec<ListMember>),
}

/// A subscription dialog as it is written to the store: everything needed
/// to carry on notifying the watcher after a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedSubscription<F> {
    /// Its slot and generation: they make up the To tag the watcher holds.
    pub id: SubscriptionId,
    /// What it watches.
    pub target: SavedTarget,
    /// The body format negotiated.
    pub format: Format,
    /// Whether the watcher takes BENOTIFY.
    pub benotify: bool,
    /// Call-ID.
    pub call_id: String,
    /// The watcher's tag.
    pub remote_tag: String,
    /// The watcher's URI.
    pub remote_uri: String,
    /// Where NOTIFYs are addressed.
    pub remote_target: String,
    /// When it ends, in seconds since the Unix epoch.
    pub expires_at: u64,
    /// The CSeq of our last NOTIFY.
    pub local_cseq: u32,
    /// The CSeq of the watcher's last SUBSCRIBE.
    pub remote_cseq: u32,
    /// The dialog's route set, as one Route value.
    pub route_set: Option<String>,
    /// The path back to the watcher.
    pub flow: FlowInfo<F>,
    /// The tag the watcher holds for us (To of its SUBSCRIBE); None in
    /// records saved before tags were kept, whose tag follows from `id`.
    pub tag: Option<String>,
}

impl<F> SavedSubscription<F> {
    /// The same subscription with its flow in another form (the node's
    /// next hop in memory, a string in the store).
    pub fn with_flow<G>(self, flow: G) -> SavedSubscription<G> {
        SavedSubscription {
            id: self.id,
            target: self.target,
            format: self.format,
            benotify: self.benotify,
            call_id: self.call_id,
            remote_tag: self.remote_tag,
            remote_uri: self.remote_uri,
            remote_target: self.remote_target,
            expires_at: self.expires_at,
            local_cseq: self.local_cseq,
            remote_cseq: self.remote_cseq,
            route_set: self.route_set,
            flow: self.flow.with_flow(flow),
            tag: self.tag,
        }
    }
}

/// Why a saved subscription was not brought back.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// It ran out while the node was down.
    #[error("it expired while the node was down")]
    Expired,
    /// Its endpoint is no longer configured.
    #[error("endpoint {0} is no longer configured")]
    UnknownEndpoint(String),
    /// Another subscription already holds its slot.
    #[error("slot {0} is already taken")]
    SlotTaken(u32),
    /// A dialog identifier is longer than a record holds.
    #[error("a dialog identifier is too long")]
    TooLong,
}

impl<F: Clone + Eq + std::hash::Hash + std::fmt::Debug> Notifier<F> {
    /// Starts noting changed records for the store (after restoring, so
    /// the restored records are not written straight back).
    pub fn record_changes(&mut self) {
        self.journal.enabled = true;
    }

    /// Moves the slots changed since the last call into `out`, each once.
    pub fn take_changed(&mut self, out: &mut Vec<u32>) {
        std::mem::swap(out, &mut self.journal.changed);
        out.sort_unstable();
        out.dedup();
    }

    /// How many changes wait to be taken (a queue depth for metrics).
    pub fn changes_pending(&self) -> usize {
        self.journal.changed.len()
    }

    /// The saved form of the subscription in a slot; None when the slot is
    /// free or its subscription is ending, which the store deletes.
    pub fn saved(&self, index: u32, now: Instant, unix_now: u64) -> Option<SavedSubscription<F>> {
        let record = self.records.get(index as usize)?;
        if !record.flags.has(ALIVE) || record.flags.has(TERMINATING) {
            return None;
        }
        let uri_of = |p: u32| self.presentities[p as usize].identity.uri.clone();
        let target = match record.kind {
            Kind::Presence => SavedTarget::Presence(uri_of(record.target)),
            Kind::WatcherInfo => SavedTarget::WatcherInfo(uri_of(record.target)),
            Kind::List => SavedTarget::List(
                self.lists
                    .get(&index)
                    .map(|members| {
                        members
                            .iter()
                            .map(|m| match m {
                                Member::Known(p) => ListMember::Endpoint(uri_of(*p)),
                                Member::Gone(uri) => ListMember::Endpoint(uri.to_string()),
                                Member::Foreign(uri) => ListMember::Other(uri.to_string()),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
        };
        let remaining = record.expires_at.saturating_sub(self.now_secs(now));
        Some(SavedSubscription {
            id: self.id_of(index),
            target,
            format: record.format,
            benotify: record.flags.has(BENOTIFY),
            call_id: record.dialog.call_id().to_owned(),
            remote_tag: record.dialog.remote_tag().to_owned(),
            remote_uri: record.dialog.remote_uri().to_owned(),
            remote_target: record.dialog.remote_target().to_owned(),
            expires_at: unix_now + u64::from(remaining),
            local_cseq: record.local_cseq,
            remote_cseq: record.remote_cseq,
            route_set: (record.route_set != NO_ROUTE)
                .then(|| self.routes.get(record.route_set).to_string()),
            flow: self.flows.get(record.flow).clone(),
            tag: Some(self.local_tag(self.id_of(index))),
        })
    }

    /// Whether a saved subscription was made by this node under its tag
    /// (restored in its own slot), rather than by another (adopted).
    pub fn is_own(&self, saved: &SavedSubscription<F>) -> bool {
        self.held_tag(saved) == self.own_tag(saved.id)
    }

    /// The tag a saved subscription's watcher holds; one saved without its
    /// tag was made by a node alone (before tags were kept), under `id`.
    fn held_tag(&self, saved: &SavedSubscription<F>) -> String {
        match &saved.tag {
            Some(tag) => tag.clone(),
            None => self.tag_in(None, saved.id),
        }
    }

    /// Notes every subscription as changed, so the next write-behind saves
    /// them all: when a node alone joins a cluster, the dialogs its store
    /// brought back must reach Redis before anything changes them.
    pub fn save_all(&mut self) {
        for index in 0..self.records.len() as u32 {
            if self.records[index as usize].flags.has(ALIVE) {
                self.changed(index);
            }
        }
    }

    /// Puts a saved subscription back in its slot. Its first NOTIFY waits
    /// for [`pace_recovery`](Self::pace_recovery) to set the pace.
    pub fn restore(
        &mut self,
        saved: SavedSubscription<F>,
        resolve: &dyn Fn(&str) -> Option<u32>,
        now: Instant,
        unix_now: u64,
    ) -> Result<SubscriptionId, RestoreError> {
        let remaining = saved.expires_at.saturating_sub(unix_now);
        if remaining == 0 {
            return Err(RestoreError::Expired);
        }
        let endpoint =
            |uri: &str| resolve(uri).ok_or_else(|| RestoreError::UnknownEndpoint(uri.to_owned()));
        let (kind, target, members) = match &saved.target {
            SavedTarget::Presence(uri) => (Kind::Presence, endpoint(uri)?, None),
            SavedTarget::WatcherInfo(uri) => (Kind::WatcherInfo, endpoint(uri)?, None),
            SavedTarget::List(list) => {
                let members = list
                    .iter()
                    .map(|m| match m {
                        ListMember::Endpoint(uri) => match resolve(uri) {
                            Some(p) => Member::Known(p),
                            None => Member::Foreign(uri.as_str().into()),
                        },
                        ListMember::Other(uri) => Member::Foreign(uri.as_str().into()),
                    })
                    .collect();
                (Kind::List, 0, Some(members))
            }
        };
        let dialog = DialogStrings::new(
            &saved.call_id,
            &saved.remote_tag,
            &saved.remote_uri,
            &saved.remote_target,
        )
        .ok_or(RestoreError::TooLong)?;
        let (index, generation) = if self.is_own(&saved) {
            self.claim_slot(saved.id.index)?;
            (saved.id.index, saved.id.generation)
        } else {
            // Another node's subscription, taken over: any free slot, and
            // the tag the watcher holds.
            let tag: Box<str> = self.held_tag(&saved).into();
            if self.adopted.contains_key(&tag) {
                return Err(RestoreError::SlotTaken(saved.id.index));
            }
            let index = self.free.pop().unwrap_or_else(|| {
                self.records.push(Record::vacant());
                self.records.len() as u32 - 1
            });
            self.adopted.insert(tag.clone(), index);
            self.adopted_tags.insert(index, tag);
            (index, self.records[index as usize].generation)
        };
        let id = SubscriptionId { index, generation };
        let expires_at = self.now_secs(now)
            + u32::try_from(remaining.min(u64::from(self.config.max_expires))).unwrap_or(u32::MAX);
        let route_set = saved
            .route_set
            .map_or(NO_ROUTE, |r| self.routes.acquire(r.into_boxed_str()));
        let flow = self.flows.acquire(saved.flow);
        let salt = self.salt;
        self.records[index as usize] = Record {
            dialog,
            generation,
            target,
            position: 0,
            expires_at,
            local_cseq: saved.local_cseq,
            remote_cseq: saved.remote_cseq,
            sent_version: 0,
            last_sent: 0,
            route_set,
            flow,
            watcher_hash: keyed_hash(salt, |h| h.write(saved.remote_uri.as_bytes())),
            kind,
            format: saved.format,
            // Not NOTIFIED: the first NOTIFY after a restart is a full
            // NOTIFY and is not held back by the per-watcher interval.
            flags: ALIVE
                | DIRTY
                | if saved.benotify {
                    BENOTIFY
                } else {
                    Flags::NONE
                },
            attempts: 0,
        };
        self.attach(id, members);
        self.wheel.insert(expires_at, index);
        self.recovery.queue.push_back(id);
        // Restored at start, the store has it; taken over, it is saved
        // again under this node.
        self.changed(index);
        Ok(id)
    }

    /// Makes a free slot of `index`, growing the slab with free slots up to it.
    fn claim_slot(&mut self, index: u32) -> Result<(), RestoreError> {
        let len = self.records.len() as u32;
        if index < len {
            if self.records[index as usize].flags.has(ALIVE) {
                return Err(RestoreError::SlotTaken(index));
            }
            self.free.retain(|&f| f != index);
            return Ok(());
        }
        for gap in len..index {
            self.records.push(Record::vacant());
            self.free.push(gap);
        }
        self.records.push(Record::vacant());
        Ok(())
    }

    /// Spreads the first NOTIFYs of the restored subscriptions evenly over
    /// `window` (never faster than the node's NOTIFY rate).
    pub fn pace_recovery(&mut self, window: Duration) {
        let count = self.recovery.queue.len() as f64;
        let rate = count / window.as_secs_f64().max(0.001);
        self.recovery.rate = rate.clamp(1.0, f64::from(self.config.notify_rate));
        self.recovery.tokens = 1.0;
        self.recovery.at = None;
    }

    /// Drops every subscription without a word to its watchers: another
    /// node has taken them over and notifies them now. Returns how many.
    pub fn forget_all(&mut self) -> usize {
        let live: Vec<SubscriptionId> = (0..self.records.len() as u32)
            .filter(|&i| self.records[i as usize].flags.has(ALIVE))
            .map(|i| self.id_of(i))
            .collect();
        for &id in &live {
            self.remove(id);
        }
        // Nothing is owed to anyone any more.
        self.in_flight = 0;
        self.unanswered_in_flight = 0;
        self.flow_in_flight.clear();
        self.urgent.clear();
        self.ready.clear();
        self.deferred.clear();
        self.retries.clear();
        self.unanswered_waiting.clear();
        self.recovery.queue.clear();
        live.len()
    }

    /// Restored subscriptions still waiting for their first NOTIFY.
    pub fn recovering(&self) -> usize {
        self.recovery.queue.len()
    }
}

impl Record {
    /// A free slot.
    fn vacant() -> Record {
        Record {
            dialog: DialogStrings::default(),
            generation: 0,
            target: 0,
            position: 0,
            expires_at: 0,
            local_cseq: 0,
            remote_cseq: 0,
            sent_version: 0,
            last_sent: 0,
            route_set: NO_ROUTE,
            flow: 0,
            watcher_hash: 0,
            kind: Kind::Presence,
            format: Format::Pidf,
            flags: Flags::NONE,
            attempts: 0,
        }
    }
}
