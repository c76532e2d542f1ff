//! Presence on several nodes: what this node tells the others of its own
//! sources, what they tell it, and how the two merge into the sources
//! `effective` combines. A replicated change only updates the sources and
//! recomputes the state; it runs none of the hooks of a local one (shares,
//! stores, probes), so one change cannot echo round the cluster.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use porchlight_presence::PresenceState;

use crate::cluster::{Contribution, Field, NodeId, Share, Shared, SharedPublication, Value};
use crate::snapshot::reconnect_to;

/// How far an adopted subscription's CSeq jumps: past every NOTIFY its
/// old node may have sent after it last saved it, so the watcher never
/// sees a CSeq again or going back.
const ADOPTED_CSEQ_JUMP: u32 = 1000;

use super::*;

/// This node's part in a cluster's presence.
pub(super) struct Sharing {
    node: NodeId,
    /// This node's own sources per slot, as last shared.
    local: Vec<Contribution>,
    /// The other nodes' sources per slot.
    remote: Vec<BTreeMap<NodeId, Contribution>>,
    /// When an entry of a slot lapses (Unix seconds); stale pairs only
    /// cause a recomputation that changes nothing.
    lapses: BTreeSet<(i64, usize)>,
    /// Changes for the driver to share, oldest first.
    outbox: VecDeque<Share>,
    /// Changes from other nodes applied.
    pub(super) applied: u64,
}

impl Sharing {
    pub(super) fn new(node: NodeId, slots: usize) -> Sharing {
        Sharing {
            node,
            local: vec![Contribution::default(); slots],
            remote: vec![BTreeMap::new(); slots],
            lapses: BTreeSet::new(),
            outbox: VecDeque::new(),
            applied: 0,
        }
    }

    fn grow(&mut self, slots: usize) {
        self.local.resize(slots, Contribution::default());
        self.remote.resize(slots, BTreeMap::new());
    }

    /// Registered anywhere in the cluster at `unix` seconds.
    fn registered(&self, slot: usize, here: bool, unix: i64) -> bool {
        here || self.remote[slot].values().any(|c| c.registered_at(unix))
    }

    /// The newest live publication of any node, this one included.
    fn published(&self, slot: usize, unix: i64) -> Option<PresenceState> {
        std::iter::once(&self.local[slot])
            .chain(self.remote[slot].values())
            .filter_map(|c| c.published_at(unix))
            .max_by_key(|p| p.at)
            .map(|p| p.state.clone())
    }
}

impl PresenceService {
    /// Joins a cluster as node `node` in its `era` (which changes each
    /// time another node takes this one's subscriptions over): from now on
    /// this node's tags name it, its own sources are shared and the
    /// others' merged. Called before saved subscriptions are restored, so
    /// they are known by their tags.
    pub fn join_cluster(&mut self, node: NodeId, era: u64, now: Now) {
        self.notifier.set_origin(&format!("{node}-{era}"));
        self.sharing = Some(Sharing::new(node, self.directory.slots()));
        for slot in 0..self.directory.slots() {
            self.refresh(slot, now);
        }
    }

    /// Whether this node may not notify now: its lease in the cluster is
    /// older than it may be, so another node may be taking its watchers
    /// over. NOTIFYs wait and new subscriptions are refused until the
    /// lease is renewed.
    pub fn set_fenced(&mut self, fenced: bool) {
        if self.fenced != fenced {
            if fenced {
                tracing::warn!(
                    "this node is fenced (its lease is not renewed, or an admin drained it): NOTIFYs wait, new subscriptions are refused"
                );
            } else {
                tracing::info!("this node's lease is renewed: notifying again");
            }
        }
        self.fenced = fenced;
    }

    /// This node's subscriptions were taken over by another node while it
    /// could not renew its lease: they are that node's now, and are
    /// dropped here without a word to their watchers; new ones get tags
    /// of the node's new `era`.
    pub fn retire_subscriptions(&mut self, era: u64) -> usize {
        let dropped = self.notifier.forget_all();
        if let Some(sharing) = &self.sharing {
            self.notifier.set_origin(&format!("{}-{era}", sharing.node));
        }
        tracing::warn!(
            dropped,
            "another node took this node's subscriptions over; they are dropped here"
        );
        dropped
    }

    /// The origin (`node-era`) of the node that made the subscription an
    /// in-dialog request names, when that is not this node (nor one whose
    /// subscriptions it took over).
    pub fn made_elsewhere<'a>(&self, request: &'a Message) -> Option<&'a str> {
        let tag = request.to().ok()?.tag()?;
        self.notifier.foreign_origin(tag)
    }

    /// Whether this node's lease is too old for it to notify: it takes no
    /// subscription then.
    pub fn fenced(&self) -> bool {
        self.fenced
    }

    /// Takes over subscriptions another node made (its lease lapsed), with
    /// their paths already rewritten to leave from this node: each keeps
    /// the tag its watcher holds, its CSeq jumps past what the other node
    /// may have sent after its last save, and the first NOTIFYs are spread
    /// over `window`. Returns how many came over.
    pub fn adopt(
        &mut self,
        saved: Vec<SavedSubscription<String>>,
        window: Duration,
        now: Now,
    ) -> usize {
        let unix = now.unix();
        let mut adopted = 0;
        for mut s in saved {
            let Some(hop) = crate::snapshot::flow_from_text(&s.flow.flow, reconnect_to(&s)) else {
                continue;
            };
            s.local_cseq = s.local_cseq.saturating_add(ADOPTED_CSEQ_JUMP);
            let directory = &self.directory;
            match self.notifier.restore(
                s.with_flow(hop),
                &|uri| directory.resolve(uri).map(|i| i as u32),
                now.mono,
                unix,
            ) {
                Ok(_) => adopted += 1,
                Err(e) => tracing::debug!("a subscription not taken over: {e}"),
            }
        }
        self.notifier.pace_recovery(window);
        adopted
    }

    /// The registration and publication sources of a slot, merged over
    /// the cluster when there is one.
    pub(super) fn shared_sources(
        &mut self,
        slot: usize,
        uri: &str,
        now: Now,
    ) -> (bool, Option<PresenceState>) {
        let here = self.registrar.is_registered(slot);
        let mono = now.mono;
        let Some(sharing) = self.sharing.as_mut() else {
            return (here, self.publications.effective(slot as u32, mono));
        };
        let unix = now.unix() as i64;
        let to_unix = |at: Instant| unix + at.saturating_duration_since(mono).as_secs() as i64;
        let registered_until = self
            .registrar
            .bindings(slot)
            .iter()
            .map(|b| b.expires_at)
            .max()
            .map(to_unix);
        let published =
            self.publications
                .effective(slot as u32, mono)
                .map(|state| SharedPublication {
                    state,
                    at: 0,
                    until: self.publications.live_until(slot as u32, mono).map(to_unix),
                });
        let mine = Contribution {
            registered_until,
            published,
        };
        if !mine.same_as(&sharing.local[slot]) {
            let mut mine = mine;
            if let Some(p) = mine.published.as_mut() {
                let was = sharing.local[slot].published.as_ref();
                // The same state refreshed keeps its age; a new one is newest.
                p.at = match was.filter(|w| w.state == p.state) {
                    Some(w) => w.at,
                    None => now.unix_micros(),
                };
            }
            sharing.outbox.push_back(Share {
                endpoint: uri.to_owned(),
                field: Field::Node(sharing.node),
                value: Some(Value::Node(mine.clone())),
            });
            sharing.local[slot] = mine;
        }
        (
            sharing.registered(slot, here, unix),
            sharing.published(slot, unix),
        )
    }

    /// Applies what other nodes said of an endpoint. An entry for this
    /// node that differs from what it holds is written again (memory is
    /// the primary copy: Redis may have lost it in a failover).
    pub fn apply_shared(&mut self, shared: Shared, now: Now) {
        let Some(slot) = self.directory.resolve(&shared.endpoint) else {
            return; // not served here (yet): its import brings a reload
        };
        let Some(sharing) = self.sharing.as_mut() else {
            return;
        };
        let mut admin = None;
        let mut heard_self = false;
        let mut listed = BTreeSet::new();
        for (field, value) in shared.entries {
            listed.insert(field);
            match (field, value) {
                (Field::Node(node), value) if node == sharing.node => {
                    // An event is our own write coming back; only a
                    // reload tells what Redis really holds of us.
                    heard_self = true;
                    let held = match value {
                        Some(Value::Node(held)) => held,
                        _ => Contribution::default(),
                    };
                    if shared.complete && !held.same_as(&sharing.local[slot]) {
                        Self::reassert(sharing, slot, &shared.endpoint);
                    }
                }
                (Field::Node(node), Some(Value::Node(c))) => {
                    if let Some(lapse) = c.next_lapse() {
                        sharing.lapses.insert((lapse, slot));
                    }
                    sharing.remote[slot].insert(node, c);
                }
                (Field::Node(node), _) => {
                    sharing.remote[slot].remove(&node);
                }
                (Field::Admin, Some(Value::Admin(state))) => admin = Some(Some(state)),
                (Field::Admin, _) => admin = Some(None),
            }
        }
        if shared.complete {
            sharing.remote[slot].retain(|node, _| listed.contains(&Field::Node(*node)));
            if !listed.contains(&Field::Admin) {
                admin = Some(None);
            }
            if !heard_self && !sharing.local[slot].same_as(&Contribution::default()) {
                Self::reassert(sharing, slot, &shared.endpoint);
            }
        }
        sharing.applied += 1;
        if let Some(state) = admin {
            self.overrides[slot] = state;
        }
        self.refresh(slot, now);
    }

    /// Queues this node's entry for a slot to be written again.
    fn reassert(sharing: &mut Sharing, slot: usize, uri: &str) {
        sharing.outbox.push_back(Share {
            endpoint: uri.to_owned(),
            field: Field::Node(sharing.node),
            value: Some(Value::Node(sharing.local[slot].clone())),
        });
    }

    /// Shares an admin's setting with the other nodes.
    pub(super) fn share_override(&mut self, uri: &str, state: Option<&PresenceState>) {
        if let Some(sharing) = self.sharing.as_mut() {
            sharing.outbox.push_back(Share {
                endpoint: uri.to_owned(),
                field: Field::Admin,
                value: state.cloned().map(Value::Admin),
            });
        }
    }

    /// An endpoint no longer served: what this node said of it is
    /// withdrawn, and what the others said forgotten.
    pub(super) fn unshare(&mut self, slot: usize, uri: &str) {
        if let Some(sharing) = self.sharing.as_mut() {
            sharing.remote[slot].clear();
            if !sharing.local[slot].same_as(&Contribution::default()) {
                sharing.local[slot] = Contribution::default();
                sharing.outbox.push_back(Share {
                    endpoint: uri.to_owned(),
                    field: Field::Node(sharing.node),
                    value: None,
                });
            }
        }
    }

    /// The directory grew: room for the new slots.
    pub(super) fn grow_shared(&mut self, slots: usize) {
        if let Some(sharing) = self.sharing.as_mut() {
            sharing.grow(slots);
        }
    }

    /// Recomputes the endpoints whose entries from other nodes lapsed.
    pub(super) fn lapse_shared(&mut self, now: Now) {
        let unix = now.unix() as i64;
        let Some(sharing) = self.sharing.as_mut() else {
            return;
        };
        let mut due = Vec::new();
        while let Some(&(at, slot)) = sharing.lapses.first() {
            if at > unix {
                break;
            }
            sharing.lapses.pop_first();
            due.push(slot);
        }
        due.dedup();
        for slot in due {
            self.refresh(slot, now);
        }
    }

    /// When the next entry from another node lapses.
    pub(super) fn next_shared_lapse(&self, now: Now) -> Option<Instant> {
        let (at, _) = self.sharing.as_ref()?.lapses.first()?;
        let left = (*at - now.unix() as i64).max(0) as u64;
        Some(now.mono + Duration::from_secs(left))
    }

    /// The next change to share.
    pub fn poll_share(&mut self) -> Option<Share> {
        self.sharing.as_mut()?.outbox.pop_front()
    }

    /// The canonical URIs of the endpoints served, whose shared sources
    /// this node follows.
    pub fn shared_endpoints(&self) -> Vec<String> {
        self.directory
            .iter()
            .map(|(_, e)| e.identity.uri.clone())
            .collect()
    }

    /// Changes from other nodes applied since start; None when alone.
    pub fn shared_applied(&self) -> Option<u64> {
        self.sharing.as_ref().map(|s| s.applied)
    }
}
