//! The notifier: RFC 6665 subscriptions to the `presence` (RFC 3856) and
//! `presence.winfo` (RFC 3857) packages, the Microsoft batched-subscription,
//! BENOTIFY and piggyback extensions, and the fan-out scheduler. An I/O-free
//! state machine: SUBSCRIBE requests, NOTIFY responses, state changes and
//! time go in; answers and NOTIFY requests to send come out.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use bytes::Bytes;
use porchlight_sip::status;
use porchlight_sip::{Answer, HeaderName, Message, MessageWriter};

use crate::document::{
    publish_time, render, render_rlmi, render_watcherinfo, rlmi_content_type, Format, ListEntry,
    Snapshot, WatcherEntry, FORMATS,
};
use crate::model::{Identity, PresenceState};
use crate::table::{DialogStrings, ExpiryWheel, Interner, SubscriptionId};
use crate::xml_in::{parse_batch_subscribe, XmlLimits};

mod persist;
pub use persist::{ListMember, RestoreError, SavedSubscription, SavedTarget};

/// Where and how NOTIFYs for a subscription leave this node: the
/// transport's handle for the path back to the watcher, and the Via and
/// Contact this node writes on it. Interned, so subscriptions arriving over
/// one partner connection share one copy.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FlowInfo<F> {
    /// The transport's handle (a connection, or a UDP address).
    pub flow: F,
    /// Whether the flow is a stream (no retransmissions).
    pub reliable: bool,
    /// `SIP/2.0/<transport> <sent-by>`, without parameters.
    pub via: String,
    /// Our Contact URI on this flow, with angle brackets.
    pub contact: String,
}

impl<F> FlowInfo<F> {
    /// The same path with its handle in another form (the node's next hop
    /// in memory, words in the store).
    pub fn with_flow<G>(self, flow: G) -> FlowInfo<G> {
        FlowInfo {
            flow,
            reliable: self.reliable,
            via: self.via,
            contact: self.contact,
        }
    }
}

/// The answer of the authorization function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Authorization {
    /// Accept the subscription.
    Allow,
    /// Refuse it with this status and reason (the detail stays in the log).
    Deny {
        /// Status code (403, 404, …).
        code: u16,
        /// Reason phrase.
        reason: String,
    },
}

/// Tunables of the notifier; every bound is explicit.
#[derive(Clone, Debug)]
pub struct NotifierConfig {
    /// Shortest subscription accepted (423 below, except 0).
    pub min_expires: u32,
    /// Longest subscription granted; longer requests are shortened.
    pub max_expires: u32,
    /// Interval when the SUBSCRIBE names none.
    pub default_expires: u32,
    /// Least time between two notifications to one watcher (RFC 3856 §6.4 suggests 5 s).
    pub min_notify_interval: Duration,
    /// NOTIFYs per second across the node during fan-out.
    pub notify_rate: u32,
    /// Paced NOTIFY transactions outstanding across the node. Watchers that
    /// have answered a NOTIFY count only against each other, so new,
    /// restored or silent ones that never answer cannot shut them out;
    /// the others are paced only while the whole count is below it.
    pub max_in_flight: u32,
    /// NOTIFY transactions outstanding toward one flow (one partner connection or address).
    pub max_in_flight_per_flow: u32,
    /// Subscriptions one watcher URI may hold.
    pub max_subscriptions_per_watcher: u32,
    /// Transient NOTIFY failures retried this many times before the subscription ends.
    pub max_notify_retries: u8,
    /// First retry delay; doubles with each attempt.
    pub retry_base: Duration,
    /// Watchers listed in one watcher-information document.
    pub max_winfo_watchers: usize,
    /// Bounds on XML bodies of batched subscriptions.
    pub xml: XmlLimits,
    /// The largest NOTIFY the node may send (its message limit): one that
    /// would be larger ends its subscription rather than wedge it.
    pub max_notify_bytes: usize,
    /// Most a SUBSCRIBE may bring into its dialog (route set, Contact,
    /// From, To, Call-ID, tags), so every NOTIFY of the dialog fits with
    /// room for its body; past it the SUBSCRIBE is refused.
    pub max_dialog_bytes: usize,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        NotifierConfig {
            min_expires: 60,
            max_expires: 3600,
            default_expires: 3600,
            min_notify_interval: Duration::from_secs(5),
            notify_rate: 100_000,
            max_in_flight: 10_000,
            max_in_flight_per_flow: 5_000,
            max_subscriptions_per_watcher: 10_000,
            max_notify_retries: 3,
            retry_base: Duration::from_secs(2),
            max_winfo_watchers: 1000,
            xml: XmlLimits::default(),
            max_notify_bytes: 65_535,
            max_dialog_bytes: 8_192,
        }
    }
}

/// A request the notifier wants sent.
#[derive(Debug)]
pub struct Outgoing<F> {
    /// Which flow.
    pub flow: F,
    /// Whether that flow is reliable.
    pub reliable: bool,
    /// The whole request.
    pub bytes: Bytes,
    /// The top Via branch it was written with, which keys its client
    /// transaction (method NOTIFY) and comes back in the answer; None for
    /// BENOTIFY, which gets no response and so no transaction.
    pub branch: Option<String>,
}

/// Counters for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NotifierStats {
    /// Subscriptions alive now.
    pub active: u64,
    /// New subscriptions accepted.
    pub created: u64,
    /// Refreshes accepted.
    pub refreshed: u64,
    /// Subscriptions that ran out.
    pub expired: u64,
    /// NOTIFY and BENOTIFY requests produced.
    pub notifies_sent: u64,
    /// NOTIFYs that failed for good.
    pub notifies_failed: u64,
    /// Of those, NOTIFYs that would have exceeded the message limit.
    pub notifies_too_large: u64,
}

const NO_ROUTE: u32 = u32::MAX;

/// A record's state, packed in two bytes: what it is (alive, BENOTIFY),
/// what it owes (dirty, terminating) and where it waits (in flight,
/// deferred, queued), as one typed set rather than loose bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Flags(u16);

impl Flags {
    /// None set.
    const NONE: Flags = Flags(0);

    /// Whether every flag of `flags` is set.
    fn has(self, flags: Flags) -> bool {
        self.0 & flags.0 == flags.0
    }

    /// Whether any flag of `flags` is set.
    fn any(self, flags: Flags) -> bool {
        self.0 & flags.0 != 0
    }

    fn set(&mut self, flags: Flags) {
        self.0 |= flags.0;
    }

    fn clear(&mut self, flags: Flags) {
        self.0 &= !flags.0;
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
}

/// The slot holds a live subscription.
const ALIVE: Flags = Flags(1);
/// The watcher takes Microsoft's BENOTIFY (no response) after the first.
const BENOTIFY: Flags = Flags(2);
/// A NOTIFY of this dialog awaits its response.
const IN_FLIGHT: Flags = Flags(4);
/// A newer document (or the final NOTIFY) is owed.
const DIRTY: Flags = Flags(8);
/// The subscription is ending: its final NOTIFY is owed or on its way.
const TERMINATING: Flags = Flags(16);
/// Waiting out the per-watcher interval in the deferred queue.
const DEFERRED: Flags = Flags(32);
/// Waiting for room in the in-flight window.
const QUEUED: Flags = Flags(64);
/// At least one NOTIFY has been sent.
const NOTIFIED: Flags = Flags(128);
/// The watcher has answered a NOTIFY of this dialog with 2xx: it is there,
/// so its NOTIFYs may use the whole in-flight window.
const ANSWERED: Flags = Flags(256);

/// What a subscription watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    /// One endpoint's presence.
    Presence,
    /// A Microsoft batched list (RLMI).
    List,
    /// One endpoint's watchers (RFC 3857).
    WatcherInfo,
}

/// One subscription dialog: 80 bytes plus its packed strings.
#[derive(Debug)]
struct Record {
    dialog: DialogStrings,
    generation: u32,
    /// The endpoint (Presence, WatcherInfo); unused for lists.
    target: u32,
    /// Index in the endpoint's watcher list (Presence).
    position: u32,
    /// Seconds since the notifier's epoch.
    expires_at: u32,
    local_cseq: u32,
    remote_cseq: u32,
    /// The endpoint version last sent (Presence).
    sent_version: u32,
    /// Tenths of a second since the epoch.
    last_sent: u32,
    route_set: u32,
    flow: u32,
    watcher_hash: u32,
    kind: Kind,
    format: Format,
    flags: Flags,
    attempts: u8,
}

#[derive(Debug)]
struct Presentity {
    identity: Identity,
    state: PresenceState,
    publish_time: String,
    version: u32,
    bodies: [Option<Bytes>; FORMATS.len()],
    watchers: Vec<u32>,
    list_watchers: Vec<u32>,
    winfo_watchers: Vec<u32>,
    winfo_version: u32,
    /// An unfinished fan-out: the next watcher position and how many remain.
    cursor: Option<(u32, u32)>,
    /// No longer served: its watchers are being told so.
    removed: bool,
}

impl Presentity {
    fn new(identity: Identity, at: jiff::Timestamp) -> Presentity {
        Presentity {
            identity,
            state: PresenceState::new(crate::model::Availability::OFFLINE),
            publish_time: publish_time(at),
            version: 1,
            bodies: Default::default(),
            watchers: Vec::new(),
            list_watchers: Vec::new(),
            winfo_watchers: Vec::new(),
            winfo_version: 0,
            cursor: None,
            removed: false,
        }
    }
}

/// One resource of a batched list.
#[derive(Debug, Clone)]
enum Member {
    /// One of our endpoints, by slot.
    Known(u32),
    /// Not ours: the watcher should subscribe to it directly.
    Foreign(Box<str>),
    /// One of ours that has been removed.
    Gone(Box<str>),
}

/// Identifies one NOTIFY we sent: encoded in its Via branch, so a response
/// finds its subscription without a lookup table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotifyRef {
    /// The subscription.
    pub id: SubscriptionId,
    /// The NOTIFY's CSeq.
    pub cseq: u32,
}

const BRANCH_PREFIX: &str = "z9hG4bKpl";

impl NotifyRef {
    /// The branch of this NOTIFY: every one unique (the CSeq moves on),
    /// and telling which subscription its answer is for.
    pub fn branch(&self) -> String {
        format!(
            "{BRANCH_PREFIX}{:x}.{:x}.{:x}",
            self.id.index, self.id.generation, self.cseq
        )
    }

    /// Decodes a branch this notifier wrote.
    pub fn from_branch(branch: &str) -> Option<NotifyRef> {
        let mut parts = branch.strip_prefix(BRANCH_PREFIX)?.split('.');
        let mut next = || u32::from_str_radix(parts.next()?, 16).ok();
        Some(NotifyRef {
            id: SubscriptionId {
                index: next()?,
                generation: next()?,
            },
            cseq: next()?,
        })
    }
}

/// Presence subscriptions of one node.
pub struct Notifier<F> {
    config: NotifierConfig,
    epoch: Instant,
    salt: u64,
    records: Vec<Record>,
    free: Vec<u32>,
    presentities: Vec<Presentity>,
    /// Each batched list's members, by record: ordered, so what a policy
    /// change sends to lists goes out in one order, run after run.
    lists: BTreeMap<u32, Vec<Member>>,
    routes: Interner<Box<str>>,
    flows: Interner<FlowInfo<F>>,
    flow_in_flight: Vec<u32>,
    blocked: HashMap<u32, VecDeque<SubscriptionId>>,
    per_watcher: HashMap<u32, u32>,
    wheel: ExpiryWheel,
    /// Answers to subscription requests (initial, refresh, final NOTIFYs): not paced.
    urgent: VecDeque<SubscriptionId>,
    /// Notifications waiting for pacing tokens.
    ready: VecDeque<SubscriptionId>,
    /// Notifications held back by the per-watcher interval, in due order.
    deferred: VecDeque<(u32, SubscriptionId)>,
    /// Retries after transient failures, by due time.
    retries: BinaryHeap<Reverse<(u32, u32, u32)>>,
    /// Endpoints with an unfinished fan-out, served round-robin.
    fanouts: VecDeque<u32>,
    tokens: f64,
    tokens_at: Instant,
    in_flight: u32,
    /// Of `in_flight`, NOTIFYs to watchers that have not answered one yet.
    unanswered_in_flight: u32,
    /// Paced NOTIFYs to such watchers, waiting for the window to have room.
    unanswered_waiting: VecDeque<SubscriptionId>,
    stats: NotifierStats,
    scratch: Vec<u32>,
    /// Records changed since the store last took them.
    journal: persist::Journal,
    /// Restored subscriptions waiting for their first NOTIFY, paced.
    recovery: persist::Recovery,
    /// Records ending because the policy no longer allows them: their final
    /// NOTIFY says `rejected` (a set, as revocations are rare and a record
    /// has no flag bit left).
    revoked: HashSet<u32>,
    /// In a cluster, what sets this node's tags apart from every other
    /// node's (its number and era); None for a node alone.
    origin: Option<Box<str>>,
    /// Subscriptions taken over from another node keep the tag the watcher
    /// holds: by tag, and by slot.
    adopted: HashMap<Box<str>, u32>,
    adopted_tags: HashMap<u32, Box<str>>,
}

impl<F: Clone + Eq + Hash + std::fmt::Debug> Notifier<F> {
    /// An empty notifier; `salt` makes dialog tags unguessable.
    pub fn new(config: NotifierConfig, now: Instant, salt: u64) -> Notifier<F> {
        let wheel = ExpiryWheel::new(config.max_expires + 1);
        Notifier {
            tokens: f64::from(config.notify_rate) / 10.0,
            config,
            epoch: now,
            salt,
            records: Vec::new(),
            free: Vec::new(),
            presentities: Vec::new(),
            lists: BTreeMap::new(),
            routes: Interner::new(),
            flows: Interner::new(),
            flow_in_flight: Vec::new(),
            blocked: HashMap::new(),
            per_watcher: HashMap::new(),
            wheel,
            urgent: VecDeque::new(),
            ready: VecDeque::new(),
            deferred: VecDeque::new(),
            retries: BinaryHeap::new(),
            fanouts: VecDeque::new(),
            tokens_at: now,
            in_flight: 0,
            unanswered_in_flight: 0,
            unanswered_waiting: VecDeque::new(),
            stats: NotifierStats::default(),
            scratch: Vec::new(),
            journal: persist::Journal::default(),
            recovery: persist::Recovery::default(),
            revoked: HashSet::new(),
            origin: None,
            adopted: HashMap::new(),
            adopted_tags: HashMap::new(),
        }
    }

    /// Names this node's tags from now on (`origin.index.generation.check`),
    /// so tags stay apart between the nodes of a cluster, which share one
    /// salt, and any node can tell whose a tag is.
    pub fn set_origin(&mut self, origin: &str) {
        self.origin = Some(origin.into());
    }

    /// The origin a tag names, when it is not this node's own: the node
    /// that made the subscription, for a request that reached another.
    /// The tag's check is verified (every node keys it alike), so a made-up
    /// tag names no node and is not sent on to one.
    pub fn foreign_origin<'t>(&self, tag: &'t str) -> Option<&'t str> {
        let own = self.origin.as_deref()?;
        if self.adopted.contains_key(tag) {
            return None;
        }
        let (origin, rest) = tag.split_once('.')?;
        if origin == own {
            return None;
        }
        let (id, check) = split_tag(rest)?;
        (check == self.tag_check_in(Some(origin), id)).then_some(origin)
    }

    /// Counters.
    pub fn stats(&self) -> NotifierStats {
        self.stats
    }

    /// Declares the endpoint in `slot`, or updates it: a new endpoint, one
    /// removed earlier coming back, or a new identity (display name,
    /// capabilities) or state for one already here. Watchers are notified
    /// of any difference, paced.
    pub fn put_presentity(
        &mut self,
        slot: u32,
        identity: &Identity,
        state: PresenceState,
        at: jiff::Timestamp,
    ) {
        let slot_index = slot as usize;
        while self.presentities.len() <= slot_index {
            // Slots the caller skipped stay vacant, as if removed.
            let mut vacant = Presentity::new(identity.clone(), at);
            vacant.removed = true;
            self.presentities.push(vacant);
        }
        let p = &mut self.presentities[slot_index];
        p.removed = false;
        if p.identity != *identity {
            p.identity = identity.clone();
            self.republish(slot, at);
        }
        self.set_state(slot, state, at);
    }

    /// Whether `slot` holds an endpoint now.
    pub fn is_declared(&self, slot: u32) -> bool {
        self.presentities
            .get(slot as usize)
            .is_some_and(|p| !p.removed)
    }

    /// Ends every subscription to an endpoint that is no longer served:
    /// watchers get a final NOTIFY with `Subscription-State:
    /// terminated;reason=noresource` (RFC 6665 §4.2.2: do not subscribe
    /// again) and an offline document; batched lists show the resource
    /// terminated. New subscriptions never reach it, as the caller's
    /// `resolve` no longer finds it.
    pub fn remove_presentity(&mut self, slot: u32, at: jiff::Timestamp) {
        let Some(p) = self.presentities.get_mut(slot as usize) else {
            return;
        };
        if p.removed {
            return;
        }
        p.removed = true;
        p.cursor = None;
        p.state = PresenceState::new(crate::model::Availability::OFFLINE);
        self.republish(slot, at);
        let p = &self.presentities[slot as usize];
        let ended: Vec<u32> = p
            .watchers
            .iter()
            .chain(&p.winfo_watchers)
            .copied()
            .collect();
        let lists = p.list_watchers.clone();
        let uri: Box<str> = p.identity.uri.as_str().into();
        for index in ended {
            let id = self.id_of(index);
            self.begin_end(id);
            self.changed(index);
        }
        for index in lists {
            if let Some(members) = self.lists.get_mut(&index) {
                for member in members.iter_mut() {
                    if matches!(member, Member::Known(p) if *p == slot) {
                        *member = Member::Gone(uri.clone());
                    }
                }
            }
            self.mark_dirty(index);
            self.changed(index);
        }
        self.presentities[slot as usize].list_watchers = Vec::new();
    }

    /// Puts a changed authorization policy in force for subscriptions
    /// already held: each presence subscription that `refused(endpoint,
    /// watcher, flow)` now refuses ends at once with a final NOTIFY
    /// (`Subscription-State: terminated;reason=rejected`, RFC 6665 §4.2.2:
    /// do not subscribe again), and its refreshes get 481 from then on; in
    /// a batched list, a refused resource turns into one the watcher must
    /// subscribe to itself, as a new list would show it. Returns how many
    /// subscriptions ended.
    pub fn revoke(&mut self, refused: &mut dyn FnMut(u32, &str, &F) -> bool) -> usize {
        let mut ended = Vec::new();
        for (slot, p) in self.presentities.iter().enumerate() {
            for &index in &p.watchers {
                let record = &self.records[index as usize];
                if !record.flags.has(TERMINATING)
                    && refused(
                        slot as u32,
                        record.dialog.remote_uri(),
                        &self.flows.get(record.flow).flow,
                    )
                {
                    ended.push(index);
                }
            }
        }
        for &index in &ended {
            self.revoked.insert(index);
            self.begin_end(self.id_of(index));
            self.changed(index);
        }
        let mut lists_changed = Vec::new();
        for (&index, members) in self.lists.iter_mut() {
            let record = &self.records[index as usize];
            if record.flags.has(TERMINATING) {
                continue;
            }
            let (watcher, flow) = (
                record.dialog.remote_uri(),
                &self.flows.get(record.flow).flow,
            );
            let mut changed = false;
            for member in members.iter_mut() {
                if let Member::Known(slot) = *member {
                    if refused(slot, watcher, flow) {
                        let p = &mut self.presentities[slot as usize];
                        p.list_watchers.retain(|&w| w != index);
                        *member = Member::Foreign(p.identity.uri.as_str().into());
                        changed = true;
                    }
                }
            }
            if changed {
                lists_changed.push(index);
            }
        }
        for index in lists_changed {
            self.mark_dirty(index);
            self.changed(index);
        }
        ended.len()
    }

    /// Who an endpoint is (or was, once removed: its URI names its saved state).
    pub fn identity(&self, presentity: u32) -> &Identity {
        &self.presentities[presentity as usize].identity
    }

    /// The current state of an endpoint.
    pub fn state(&self, presentity: u32) -> &PresenceState {
        &self.presentities[presentity as usize].state
    }

    /// How many dialogs watch an endpoint's presence.
    pub fn watcher_count(&self, presentity: u32) -> usize {
        let p = &self.presentities[presentity as usize];
        p.watchers.len() + p.list_watchers.len()
    }

    /// Sets an endpoint's state. When it differs, every watcher will be
    /// notified of the newest state, paced; a change during a fan-out
    /// restarts the pass so nobody is left with an older state.
    pub fn set_state(&mut self, presentity: u32, state: PresenceState, at: jiff::Timestamp) {
        let p = &mut self.presentities[presentity as usize];
        if p.state == state || p.removed {
            return;
        }
        p.state = state;
        self.republish(presentity, at);
    }

    /// The endpoint's document changed: a new version, rendered afresh,
    /// and a fan-out to its watchers (their final NOTIFYs, once removed).
    fn republish(&mut self, presentity: u32, at: jiff::Timestamp) {
        let p = &mut self.presentities[presentity as usize];
        p.publish_time = publish_time(at);
        p.version = p.version.wrapping_add(1).max(1);
        p.bodies = Default::default();
        if p.removed {
            return;
        }
        let count = p.watchers.len() as u32;
        let start = p.cursor.map_or(0, |(next, _)| next);
        let was_idle = p.cursor.is_none();
        if count > 0 {
            p.cursor = Some((start, count));
            if was_idle {
                self.fanouts.push_back(presentity);
            }
        }
        let lists = p.list_watchers.clone();
        for index in lists {
            self.mark_dirty(index);
        }
    }

    fn now_secs(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.epoch).as_secs() as u32
    }

    fn now_tenths(&self, now: Instant) -> u32 {
        (now.saturating_duration_since(self.epoch).as_millis() / 100) as u32
    }

    fn id_of(&self, index: u32) -> SubscriptionId {
        SubscriptionId {
            index,
            generation: self.records[index as usize].generation,
        }
    }

    fn live(&self, id: SubscriptionId) -> Option<&Record> {
        self.records
            .get(id.index as usize)
            .filter(|r| r.flags.has(ALIVE) && r.generation == id.generation)
    }

    fn tag_check(&self, id: SubscriptionId) -> u32 {
        self.tag_check_in(self.origin.as_deref(), id)
    }

    fn tag_check_in(&self, origin: Option<&str>, id: SubscriptionId) -> u32 {
        keyed_hash(self.salt, |h| {
            if let Some(origin) = origin {
                h.write(origin.as_bytes());
            }
            h.write_u32(id.index);
            h.write_u32(id.generation);
        })
    }

    /// The tag the watcher of `id` holds: the one it was given, by this
    /// node or by the node it was taken over from.
    fn local_tag(&self, id: SubscriptionId) -> String {
        match self.adopted_tags.get(&id.index) {
            Some(tag) => tag.to_string(),
            None => self.own_tag(id),
        }
    }

    /// The tag this node gives the subscription `id`.
    fn own_tag(&self, id: SubscriptionId) -> String {
        self.tag_in(self.origin.as_deref(), id)
    }

    /// The tag a node of `origin` (None: a node alone) gives `id`.
    fn tag_in(&self, origin: Option<&str>, id: SubscriptionId) -> String {
        let check = self.tag_check_in(origin, id);
        match origin {
            Some(origin) => format!("{origin}.{:x}.{:x}.{check:x}", id.index, id.generation),
            None => format!("{:x}.{:x}.{check:x}", id.index, id.generation),
        }
    }

    fn id_from_tag(&self, tag: &str) -> Option<SubscriptionId> {
        if let Some(&index) = self.adopted.get(tag) {
            return Some(self.id_of(index));
        }
        let own = match &self.origin {
            Some(origin) => tag.strip_prefix(&**origin)?.strip_prefix('.')?,
            None => tag,
        };
        let (id, check) = split_tag(own)?;
        (check == self.tag_check(id)).then_some(id)
    }

    /// Handles a SUBSCRIBE addressed to this node. `resolve` maps a URI to
    /// an endpoint; `authorize` is the one place subscription decisions are
    /// made. The answer is ready to send; NOTIFYs follow from [`poll`](Self::poll).
    pub fn subscribe(
        &mut self,
        request: &Message,
        flow: FlowInfo<F>,
        resolve: &dyn Fn(&str) -> Option<u32>,
        authorize: &mut dyn FnMut(u32, &str) -> Authorization,
        now: Instant,
    ) -> Answer {
        let event = match request.event() {
            Ok(Some(e)) => e.value.to_ascii_lowercase(),
            Ok(None) => return bad_event(),
            Err(e) => return Answer::new(status::BAD_REQUEST, format!("Bad Request ({e})")),
        };
        let kind = match event.as_str() {
            "presence" => Kind::Presence,
            "presence.winfo" => Kind::WatcherInfo,
            _ => return bad_event(),
        };
        let expires = match request.expires() {
            Ok(e) => e,
            Err(e) => return Answer::new(status::BAD_REQUEST, format!("Bad Request ({e})")),
        };
        let (Ok(from), Ok(to), Ok(call_id), Ok(cseq)) = (
            request.from(),
            request.to(),
            request.call_id(),
            request.cseq(),
        ) else {
            return Answer::new(status::BAD_REQUEST, "Bad Request (dialog headers)");
        };
        let dialog_bytes = [
            request
                .values(HeaderName::RecordRoute)
                .map(<[u8]>::len)
                .sum::<usize>(),
            request.values(HeaderName::Contact).map(<[u8]>::len).sum(),
            from.uri.as_str().len() + from.tag().map_or(0, str::len),
            to.uri.as_str().len() + to.tag().map_or(0, str::len),
            call_id.len(),
        ]
        .iter()
        .sum::<usize>();
        if dialog_bytes > self.config.max_dialog_bytes {
            return Answer::new(
                status::BAD_REQUEST,
                format!(
                    "Bad Request (route set, Contact and dialog identifiers exceed {} bytes)",
                    self.config.max_dialog_bytes
                ),
            );
        }
        if let Some(tag) = to.tag() {
            return self.refresh(
                request,
                tag,
                call_id,
                from.tag().unwrap_or(""),
                cseq.seq,
                expires,
                now,
            );
        }
        let expires = match self.granted_expires(expires) {
            Ok(e) => e,
            Err(answer) => return *answer,
        };
        let Some(remote_tag) = from.tag() else {
            return Answer::new(status::BAD_REQUEST, "Bad Request (From without a tag)");
        };
        let Some(remote_target) = only_contact(request) else {
            return Answer::new(
                status::BAD_REQUEST,
                "Bad Request (SUBSCRIBE needs exactly one Contact)",
            );
        };
        let watcher = from.uri.as_str();
        let is_batch = request
            .content_type()
            .ok()
            .flatten()
            .is_some_and(|ct| ct.is("application/msrtc-adrl-categorylist+xml"));
        let (kind, target, format, members) = if is_batch && kind == Kind::Presence {
            let batch = match parse_batch_subscribe(request.body(), self.config.xml) {
                Ok(b) => b,
                Err(e) => return Answer::new(status::BAD_REQUEST, format!("Bad Request ({e})")),
            };
            let members: Vec<Member> = batch
                .resources
                .iter()
                .map(|uri| match resolve(uri) {
                    Some(p) if authorize(p, watcher) == Authorization::Allow => Member::Known(p),
                    _ => Member::Foreign(uri.as_str().into()),
                })
                .collect();
            (Kind::List, 0, Format::MsCategories, Some(members))
        } else {
            let Some(presentity) = resolve(request.request_uri().unwrap_or_default()) else {
                return Answer::new(status::NOT_FOUND, "Not Found");
            };
            let format = match kind {
                Kind::WatcherInfo => {
                    let accepted = request.accept().filter_map(Result::ok).collect::<Vec<_>>();
                    if !accepted.is_empty()
                        && !accepted
                            .iter()
                            .any(|m| m.covers("application/watcherinfo+xml"))
                    {
                        return not_acceptable("application/watcherinfo+xml");
                    }
                    Format::Pidf
                }
                _ => match Format::negotiate(request) {
                    Some(f) => f,
                    None => {
                        return not_acceptable(
                            "application/msrtc-event-categories+xml, application/pidf+xml",
                        )
                    }
                },
            };
            if let Authorization::Deny { code, reason } = authorize(presentity, watcher) {
                return Answer::new(code, reason);
            }
            if kind == Kind::WatcherInfo && !self.may_watch_watchers(presentity, watcher) {
                return Answer::new(
                    status::FORBIDDEN,
                    "Forbidden (only the endpoint itself may watch its watchers)",
                );
            }
            (kind, presentity, format, None)
        };
        let watcher_hash = keyed_hash(self.salt, |h| h.write(watcher.as_bytes()));
        let held = self.per_watcher.get(&watcher_hash).copied().unwrap_or(0);
        if held >= self.config.max_subscriptions_per_watcher {
            return Answer::new(
                status::FORBIDDEN,
                "Forbidden (too many subscriptions from this watcher)",
            );
        }
        let Some(dialog) = DialogStrings::new(call_id, remote_tag, watcher, remote_target) else {
            return Answer::new(
                status::BAD_REQUEST,
                "Bad Request (dialog identifiers too long)",
            );
        };
        let route_set = route_set(request);
        // DIRTY: the first document is owed at once.
        let flags = ALIVE
            | DIRTY
            | if request.lists_token(HeaderName::Supported, "ms-benotify") {
                BENOTIFY
            } else {
                Flags::NONE
            };
        let piggyback = kind == Kind::Presence
            && request.lists_token(HeaderName::Supported, "ms-piggyback-first-notify");
        let expires_at = self.now_secs(now) + expires;
        let route_set = route_set.map_or(NO_ROUTE, |r| self.routes.acquire(r.into_boxed_str()));
        let flow_id = self.flows.acquire(flow.clone());
        let id = self.insert(Record {
            dialog,
            generation: 0,
            target,
            position: 0,
            expires_at,
            local_cseq: 0,
            remote_cseq: cseq.seq,
            sent_version: 0,
            last_sent: 0,
            route_set,
            flow: flow_id,
            watcher_hash,
            kind,
            format,
            flags,
            attempts: 0,
        });
        self.stats.created += 1;
        self.attach(id, members);
        let mut answer = Answer::new(status::OK, "OK")
            .with("Expires", expires.to_string())
            .with("Contact", flow.contact.clone());
        answer.to_tag = Some(self.local_tag(id));
        let mut supported = Vec::new();
        if flags.has(BENOTIFY) {
            supported.push("ms-benotify");
        }
        if kind == Kind::List {
            supported.push("eventlist");
            answer = answer.with("Require", "eventlist");
        }
        if piggyback && expires > 0 {
            supported.push("ms-piggyback-first-notify");
            let record = &mut self.records[id.index as usize];
            record.local_cseq += 1;
            let cseq = record.local_cseq;
            let (content_type, body) = self.document(id.index);
            let version = self.presentities[target as usize].version;
            let now_tenths = self.now_tenths(now);
            let record = &mut self.records[id.index as usize];
            record.sent_version = version;
            record.flags.clear(DIRTY);
            record.flags.set(NOTIFIED);
            record.last_sent = now_tenths;
            answer = answer.with("ms-piggyback-cseq", cseq.to_string());
            answer.body = Some((content_type, body));
        } else {
            self.queue_urgent(id);
        }
        if !supported.is_empty() {
            answer = answer.with("Supported", supported.join(", "));
        }
        if expires == 0 {
            // A fetch: one NOTIFY with the state, then the subscription ends.
            self.begin_end(id);
        } else {
            self.wheel.insert(expires_at, id.index);
        }
        answer
    }

    /// The subscription length to grant (RFC 6665 §4.2.1.1): the default
    /// when none is asked, 423 below the minimum, shortened to the maximum;
    /// 0 stays 0 (fetch or unsubscribe).
    fn granted_expires(&self, asked: Option<u32>) -> Result<u32, Box<Answer>> {
        let expires = asked.unwrap_or(self.config.default_expires);
        if expires != 0 && expires < self.config.min_expires {
            return Err(Box::new(
                Answer::new(status::INTERVAL_TOO_BRIEF, "Interval Too Brief")
                    .with("Min-Expires", self.config.min_expires.to_string()),
            ));
        }
        Ok(expires.min(self.config.max_expires))
    }

    fn may_watch_watchers(&self, presentity: u32, watcher: &str) -> bool {
        let own = &self.presentities[presentity as usize].identity.uri;
        crate::same_aor(own, watcher)
    }

    #[allow(clippy::too_many_arguments)]
    fn refresh(
        &mut self,
        request: &Message,
        tag: &str,
        call_id: &str,
        remote_tag: &str,
        seq: u32,
        expires: Option<u32>,
        now: Instant,
    ) -> Answer {
        let Some(id) = self.id_from_tag(tag).filter(|id| {
            self.live(*id).is_some_and(|r| {
                r.dialog.call_id() == call_id
                    && r.dialog.remote_tag() == remote_tag
                    && !r.flags.has(TERMINATING)
            })
        }) else {
            return Answer::new(status::CALL_DOES_NOT_EXIST, "Subscription Does Not Exist");
        };
        let record = &self.records[id.index as usize];
        if seq <= record.remote_cseq {
            return Answer::new(
                status::SERVER_INTERNAL_ERROR,
                "Server Internal Error (CSeq out of order)",
            )
            .with("Retry-After", "1");
        }
        let expires = match self.granted_expires(expires) {
            Ok(e) => e,
            Err(answer) => return *answer,
        };
        let contact = self.flows.get(record.flow).contact.clone();
        let new_target = only_contact(request);
        let now_secs = self.now_secs(now);
        let record = &mut self.records[id.index as usize];
        record.remote_cseq = seq;
        if let Some(target) = new_target {
            if target != record.dialog.remote_target() {
                record.dialog.set_remote_target(target);
            }
        }
        // RFC 6665 §4.2.1.2: a refresh is answered with the current state.
        record.flags.set(DIRTY);
        if expires == 0 {
            self.begin_end(id);
        } else {
            record.expires_at = now_secs + expires;
            self.wheel.insert(now_secs + expires, id.index);
            self.stats.refreshed += 1;
            self.queue_urgent(id);
        }
        self.changed(id.index);
        Answer::new(status::OK, "OK")
            .with("Expires", expires.to_string())
            .with("Contact", contact)
    }

    fn insert(&mut self, mut record: Record) -> SubscriptionId {
        match self.free.pop() {
            Some(index) => {
                record.generation = self.records[index as usize].generation;
                self.records[index as usize] = record;
                self.id_of(index)
            }
            None => {
                self.records.push(record);
                self.id_of((self.records.len() - 1) as u32)
            }
        }
    }

    /// Lists a new record where fan-outs and counts find it.
    fn attach(&mut self, id: SubscriptionId, members: Option<Vec<Member>>) {
        let record = &self.records[id.index as usize];
        let (kind, target) = (record.kind, record.target);
        *self.per_watcher.entry(record.watcher_hash).or_insert(0) += 1;
        self.stats.active += 1;
        self.changed(id.index);
        match kind {
            Kind::Presence => {
                let p = &mut self.presentities[target as usize];
                self.records[id.index as usize].position = p.watchers.len() as u32;
                p.watchers.push(id.index);
                self.watchers_changed(target);
            }
            Kind::List => {
                let members = members.unwrap_or_default();
                for m in &members {
                    if let Member::Known(p) = m {
                        self.presentities[*p as usize].list_watchers.push(id.index);
                    }
                }
                self.lists.insert(id.index, members);
            }
            Kind::WatcherInfo => self.presentities[target as usize]
                .winfo_watchers
                .push(id.index),
        }
    }

    /// Notes a record whose saved copy is out of date (when saving is on).
    fn changed(&mut self, index: u32) {
        if self.journal.enabled {
            self.journal.changed.push(index);
        }
    }

    /// Starts the end of a subscription: its final NOTIFY goes out at once
    /// and the record is freed when that is answered.
    fn begin_end(&mut self, id: SubscriptionId) {
        let record = &mut self.records[id.index as usize];
        record.flags.set(TERMINATING | DIRTY);
        self.queue_urgent(id);
    }

    /// Queues an answer to the watcher's own request; duplicates are
    /// harmless because sending re-checks what is needed.
    fn queue_urgent(&mut self, id: SubscriptionId) {
        self.urgent.push_back(id);
    }

    /// Queues a paced notification, once.
    fn queue_ready(&mut self, index: u32) {
        let id = self.id_of(index);
        let record = &mut self.records[index as usize];
        if !record.flags.has(QUEUED) {
            record.flags.set(QUEUED);
            self.ready.push_back(id);
        }
    }

    /// A list or watcher-info subscription whose document changed.
    fn mark_dirty(&mut self, index: u32) {
        self.records[index as usize].flags.set(DIRTY);
        self.queue_ready(index);
    }

    fn watchers_changed(&mut self, presentity: u32) {
        let p = &mut self.presentities[presentity as usize];
        if p.winfo_watchers.is_empty() {
            return;
        }
        p.winfo_version += 1;
        for index in p.winfo_watchers.clone() {
            self.mark_dirty(index);
        }
    }

    /// Frees a subscription's record and every reference to it.
    fn remove(&mut self, id: SubscriptionId) {
        let Some(record) = self.live(id) else { return };
        let (kind, target, position, route_set, flow, watcher_hash) = (
            record.kind,
            record.target,
            record.position,
            record.route_set,
            record.flow,
            record.watcher_hash,
        );
        match kind {
            Kind::Presence => {
                let p = &mut self.presentities[target as usize];
                let last = p.watchers.pop().expect("a live watcher is listed");
                let mut moved_behind_cursor = false;
                if last != id.index {
                    p.watchers[position as usize] = last;
                    self.records[last as usize].position = position;
                    moved_behind_cursor = p.cursor.is_some_and(|(next, _)| position < next);
                }
                if let Some((_, remaining)) = &mut p.cursor {
                    *remaining = (*remaining).min(p.watchers.len() as u32);
                }
                // The last watcher moved to a place the fan-out has passed:
                // queue it on its own so it is not skipped.
                if moved_behind_cursor && self.needs_notify(&self.records[last as usize]) {
                    self.queue_ready(last);
                }
                self.watchers_changed(target);
            }
            Kind::List => {
                for member in self.lists.remove(&id.index).unwrap_or_default() {
                    if let Member::Known(p) = member {
                        self.presentities[p as usize]
                            .list_watchers
                            .retain(|&w| w != id.index);
                    }
                }
            }
            Kind::WatcherInfo => self.presentities[target as usize]
                .winfo_watchers
                .retain(|&w| w != id.index),
        }
        if route_set != NO_ROUTE {
            self.routes.release(route_set);
        }
        self.flows.release(flow);
        if let Some(count) = self.per_watcher.get_mut(&watcher_hash) {
            *count -= 1;
            if *count == 0 {
                self.per_watcher.remove(&watcher_hash);
            }
        }
        let record = &mut self.records[id.index as usize];
        record.flags = Flags::NONE;
        record.generation = record.generation.wrapping_add(1);
        record.dialog = DialogStrings::default();
        self.revoked.remove(&id.index);
        if let Some(tag) = self.adopted_tags.remove(&id.index) {
            self.adopted.remove(&tag);
        }
        self.free.push(id.index);
        self.stats.active -= 1;
        self.changed(id.index);
    }

    /// The document for a subscription: content type and body.
    fn document(&mut self, index: u32) -> (String, Bytes) {
        let record = &self.records[index as usize];
        match record.kind {
            Kind::Presence => {
                let format = record.format;
                let body = self.body(record.target, format);
                (format.content_type().to_owned(), body)
            }
            Kind::WatcherInfo => {
                let p = &self.presentities[record.target as usize];
                let watchers: Vec<WatcherEntry<'_>> = p
                    .watchers
                    .iter()
                    .take(self.config.max_winfo_watchers)
                    .map(|&w| {
                        let r = &self.records[w as usize];
                        WatcherEntry {
                            id: (u64::from(r.generation) << 32) | u64::from(w),
                            uri: r.dialog.remote_uri(),
                            status: "active",
                            event: "subscribe",
                        }
                    })
                    .collect();
                let doc = render_watcherinfo(&p.identity.uri, p.winfo_version, &watchers);
                ("application/watcherinfo+xml".to_owned(), Bytes::from(doc))
            }
            Kind::List => {
                let list_uri = record.dialog.remote_uri().to_owned();
                let version = record.local_cseq;
                let members = self.lists.get(&index).cloned().unwrap_or_default();
                let bodies: Vec<Option<Bytes>> = members
                    .iter()
                    .map(|m| match m {
                        Member::Known(p) => Some(self.body(*p, Format::MsCategories)),
                        Member::Foreign(_) | Member::Gone(_) => None,
                    })
                    .collect();
                let entries: Vec<ListEntry<'_>> = members
                    .iter()
                    .zip(&bodies)
                    .map(|(m, b)| match (m, b) {
                        (Member::Known(p), Some(body)) => ListEntry::Active {
                            uri: &self.presentities[*p as usize].identity.uri,
                            body: std::str::from_utf8(body).unwrap_or_default(),
                        },
                        (Member::Foreign(uri), _) => ListEntry::Resubscribe { uri },
                        (Member::Gone(uri), _) => ListEntry::Gone { uri },
                        (Member::Known(p), None) => ListEntry::Resubscribe {
                            uri: &self.presentities[*p as usize].identity.uri,
                        },
                    })
                    .collect();
                let doc = render_rlmi(
                    &list_uri,
                    version,
                    Format::MsCategories.content_type(),
                    &entries,
                );
                (rlmi_content_type(), Bytes::from(doc))
            }
        }
    }

    /// An endpoint's body in one format, rendered once per state.
    fn body(&mut self, presentity: u32, format: Format) -> Bytes {
        let p = &mut self.presentities[presentity as usize];
        if let Some(body) = &p.bodies[format.index()] {
            return body.clone();
        }
        let body = Bytes::from(render(
            format,
            &Snapshot {
                identity: &p.identity,
                state: &p.state,
                publish_time: &p.publish_time,
            },
        ));
        p.bodies[format.index()] = Some(body.clone());
        body
    }

    fn needs_notify(&self, record: &Record) -> bool {
        record.flags.any(DIRTY | TERMINATING)
            || (record.kind == Kind::Presence
                && record.sent_version != self.presentities[record.target as usize].version)
    }

    /// Writes the NOTIFY (or BENOTIFY) for a subscription now.
    /// The next NOTIFY of a subscription; None when it would exceed the
    /// node's message limit, which ends the subscription (it is dropped as
    /// a failed one: the watcher's refresh then gets 481 and it
    /// subscribes again) so its slot and in-flight window are not held.
    fn build_notify(&mut self, id: SubscriptionId, now: Instant) -> Option<Outgoing<F>> {
        let now_secs = self.now_secs(now);
        let now_tenths = self.now_tenths(now);
        let index = id.index as usize;
        self.records[index].local_cseq += 1;
        let (content_type, body) = self.document(id.index);
        let record = &self.records[index];
        let terminating = record.flags.has(TERMINATING);
        let benotify = record.flags.has(BENOTIFY | NOTIFIED) && !terminating;
        let method = if benotify { "BENOTIFY" } else { "NOTIFY" };
        let flow = self.flows.get(record.flow);
        let branch = NotifyRef {
            id,
            cseq: record.local_cseq,
        }
        .branch();
        let mut w = MessageWriter::request(method, record.dialog.remote_target());
        w.header_fmt("Via", format_args!("{};branch={branch};rport", flow.via));
        w.header("Max-Forwards", "70");
        if record.route_set != NO_ROUTE {
            w.header("Route", &**self.routes.get(record.route_set));
        }
        let local_uri = match record.kind {
            Kind::List => record.dialog.remote_uri(),
            _ => &self.presentities[record.target as usize].identity.uri,
        };
        w.header_fmt(
            "From",
            format_args!("<{local_uri}>;tag={}", self.local_tag(id)),
        );
        w.header_fmt(
            "To",
            format_args!(
                "<{}>;tag={}",
                record.dialog.remote_uri(),
                record.dialog.remote_tag()
            ),
        );
        w.header("Call-ID", record.dialog.call_id());
        w.header_fmt("CSeq", format_args!("{} {method}", record.local_cseq));
        w.header("Contact", &flow.contact);
        w.header(
            "Event",
            if record.kind == Kind::WatcherInfo {
                "presence.winfo"
            } else {
                "presence"
            },
        );
        if terminating {
            // Expiry, unsubscription and fetch all end the same way; an
            // endpoint removed from service tells the watcher not to retry.
            // Revoked authorization: "rejected", do not retry (§4.2.2).
            let removed =
                record.kind != Kind::List && self.presentities[record.target as usize].removed;
            w.header(
                "Subscription-State",
                if removed {
                    "terminated;reason=noresource"
                } else if self.revoked.contains(&id.index) {
                    "terminated;reason=rejected"
                } else {
                    "terminated;reason=timeout"
                },
            );
        } else {
            w.header_fmt(
                "Subscription-State",
                format_args!(
                    "active;expires={}",
                    record.expires_at.saturating_sub(now_secs)
                ),
            );
        }
        if record.kind == Kind::List {
            w.header("Require", "eventlist");
        }
        w.header("Content-Type", content_type);
        let bytes = w.finish(&body);
        if bytes.len() > self.config.max_notify_bytes {
            self.stats.notifies_failed += 1;
            self.stats.notifies_too_large += 1;
            self.remove(id);
            return None;
        }
        let out = Outgoing {
            flow: flow.flow.clone(),
            reliable: flow.reliable,
            bytes,
            branch: (!benotify).then_some(branch),
        };
        let version = match record.kind {
            Kind::Presence => self.presentities[record.target as usize].version,
            _ => 0,
        };
        let flow_id = record.flow;
        let record = &mut self.records[index];
        record.sent_version = version;
        record.flags.clear(DIRTY);
        record.flags.set(NOTIFIED);
        record.last_sent = now_tenths;
        if !benotify {
            let answered = record.flags.has(ANSWERED);
            record.flags.set(IN_FLIGHT);
            self.in_flight += 1;
            self.unanswered_in_flight += u32::from(!answered);
            self.flow_counter(flow_id, 1);
        }
        self.stats.notifies_sent += 1;
        self.changed(id.index);
        Some(out)
    }

    fn flow_counter(&mut self, flow: u32, delta: i32) {
        let i = flow as usize;
        if self.flow_in_flight.len() <= i {
            self.flow_in_flight.resize(i + 1, 0);
        }
        self.flow_in_flight[i] = self.flow_in_flight[i].saturating_add_signed(delta);
    }

    /// Tries to notify one subscription. `paced` applies the per-watcher
    /// interval and the per-flow window; answers to the watcher's own
    /// requests and final NOTIFYs are not paced.
    fn try_notify(&mut self, id: SubscriptionId, paced: bool, now: Instant) -> Option<Outgoing<F>> {
        let record = self.live(id)?;
        if record.flags.has(IN_FLIGHT) {
            // One NOTIFY at a time: its answer sends whatever is owed then
            // (a newer version, or DIRTY set by whoever queued this).
            return None;
        }
        if !self.needs_notify(record) {
            return None;
        }
        if paced && !record.flags.has(TERMINATING) {
            let interval = (self.config.min_notify_interval.as_millis() / 100) as u32;
            let due = record.last_sent.saturating_add(interval);
            if record.flags.has(NOTIFIED) && due > self.now_tenths(now) {
                if !record.flags.has(DEFERRED) {
                    self.records[id.index as usize].flags.set(DEFERRED);
                    self.deferred.push_back((due, id));
                }
                return None;
            }
            let flow = record.flow;
            if self.flow_in_flight.get(flow as usize).copied().unwrap_or(0)
                >= self.config.max_in_flight_per_flow
            {
                self.blocked.entry(flow).or_default().push_back(id);
                return None;
            }
            if !record.flags.has(ANSWERED) && self.in_flight >= self.config.max_in_flight {
                // Kept QUEUED while it waits, so a change does not queue it twice.
                self.records[id.index as usize].flags.set(QUEUED);
                self.unanswered_waiting.push_back(id);
                return None;
            }
        }
        self.build_notify(id, now)
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.tokens_at).as_secs_f64();
        self.tokens_at = now;
        let rate = f64::from(self.config.notify_rate);
        self.tokens = (self.tokens + elapsed * rate).min((rate / 10.0).max(1.0));
    }

    /// The next request to send, if any may go now.
    pub fn poll(&mut self, now: Instant) -> Option<Outgoing<F>> {
        while let Some(id) = self.urgent.pop_front() {
            if let Some(r) = self.records.get_mut(id.index as usize) {
                if r.generation == id.generation {
                    r.flags.clear(QUEUED);
                }
            }
            if let Some(out) = self.try_notify(id, false, now) {
                return Some(out);
            }
        }
        self.refill(now);
        loop {
            if self.tokens < 1.0 || self.answered_in_flight() >= self.config.max_in_flight {
                return None;
            }
            let room = self.in_flight < self.config.max_in_flight;
            let waiting = if room {
                self.unanswered_waiting.pop_front()
            } else {
                None
            };
            let id = if let Some(id) = waiting.or_else(|| self.ready.pop_front()) {
                if let Some(r) = self.records.get_mut(id.index as usize) {
                    if r.generation == id.generation {
                        r.flags.clear(QUEUED);
                    }
                }
                id
            } else if let Some(id) = room.then(|| self.recovery.next(now)).flatten() {
                // Restored subscriptions have not answered this process yet.
                id
            } else {
                let id = self.next_fanout()?;
                // Never notified by this process: a new subscription about
                // to get its first NOTIFY, or a restored one waiting for its
                // turn in the recovery window. Either will be sent the
                // newest state from its own queue; a fan-out must not turn
                // recovery into a storm.
                if self.live(id).is_some_and(|r| !r.flags.has(NOTIFIED)) {
                    continue;
                }
                id
            };
            if let Some(out) = self.try_notify(id, true, now) {
                self.tokens -= 1.0;
                return Some(out);
            }
        }
    }

    /// The next watcher of a fan-out in progress, round-robin across endpoints.
    fn next_fanout(&mut self) -> Option<SubscriptionId> {
        while let Some(&presentity) = self.fanouts.front() {
            let p = &mut self.presentities[presentity as usize];
            match &mut p.cursor {
                Some((next, remaining)) if *remaining > 0 && !p.watchers.is_empty() => {
                    let position = (*next as usize) % p.watchers.len();
                    *next = ((position + 1) % p.watchers.len()) as u32;
                    *remaining -= 1;
                    let index = p.watchers[position];
                    self.fanouts.rotate_left(1);
                    return Some(self.id_of(index));
                }
                _ => {
                    p.cursor = None;
                    self.fanouts.pop_front();
                }
            }
        }
        None
    }

    /// Handles the final response to a NOTIFY we sent (`code` 408 for a
    /// transaction timeout, 503 for a transport failure). 481, 408 and the
    /// other codes RFC 5057 says end the usage remove the subscription;
    /// other failures are retried with backoff.
    pub fn on_notify_response(
        &mut self,
        notify: NotifyRef,
        code: u16,
        retry_after: Option<u32>,
        now: Instant,
    ) {
        let Some(record) = self.live(notify.id) else {
            return;
        };
        if !record.flags.has(IN_FLIGHT) || record.local_cseq != notify.cseq || code < 200 {
            return;
        }
        let flow = record.flow;
        let terminating = record.flags.has(TERMINATING);
        let answered = record.flags.has(ANSWERED);
        self.records[notify.id.index as usize]
            .flags
            .clear(IN_FLIGHT);
        self.in_flight -= 1;
        self.unanswered_in_flight -= u32::from(!answered);
        self.flow_counter(flow, -1);
        if let Some(waiting) = self.blocked.get_mut(&flow) {
            if let Some(next) = waiting.pop_front() {
                self.ready.push_front(next);
            }
            if waiting.is_empty() {
                self.blocked.remove(&flow);
            }
        }
        let record = &mut self.records[notify.id.index as usize];
        if (200..300).contains(&code) {
            record.attempts = 0;
            record.flags.set(ANSWERED);
            // Writing the final NOTIFY clears DIRTY; still set means this
            // answer is for an earlier NOTIFY and the final one is owed.
            let final_answered = !record.flags.has(DIRTY);
            if terminating && final_answered {
                self.remove(notify.id);
            } else if terminating {
                self.queue_urgent(notify.id);
            } else if self.needs_notify(&self.records[notify.id.index as usize]) {
                self.queue_ready(notify.id.index);
            }
            return;
        }
        let ends_usage = matches!(
            code,
            404 | 405 | 408 | 410 | 416 | 480..=485 | 489 | 501 | 604
        );
        record.attempts += 1;
        if ends_usage || terminating || record.attempts > self.config.max_notify_retries {
            self.stats.notifies_failed += 1;
            self.remove(notify.id);
            return;
        }
        record.flags.set(DIRTY);
        let backoff = self.config.retry_base * (1 << (record.attempts - 1).min(10));
        let delay = retry_after.map_or(backoff, |s| Duration::from_secs(s.into()));
        let due = self.now_tenths(now + delay);
        self.retries
            .push(Reverse((due, notify.id.index, notify.id.generation)));
    }

    /// Runs what is due: expiries, deferred notifications, retries.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now_secs = self.now_secs(now);
        let mut due = std::mem::take(&mut self.scratch);
        self.wheel.advance(now_secs + 1, &mut due);
        for &index in &due {
            let record = &self.records[index as usize];
            if !record.flags.has(ALIVE) || record.flags.has(TERMINATING) {
                continue;
            }
            if record.expires_at <= now_secs {
                self.stats.expired += 1;
                let id = self.id_of(index);
                self.begin_end(id);
            } else {
                // Refreshed since; it has a later entry. Keep this one for
                // a subscription due within this second.
                if record.expires_at == now_secs + 1 {
                    self.wheel.insert(now_secs + 1, index);
                }
            }
        }
        due.clear();
        self.scratch = due;
        let now_tenths = self.now_tenths(now);
        while let Some(&(at, id)) = self.deferred.front() {
            if at > now_tenths {
                break;
            }
            self.deferred.pop_front();
            if let Some(r) = self.records.get_mut(id.index as usize) {
                if r.generation == id.generation {
                    r.flags.clear(DEFERRED);
                    self.ready.push_back(id);
                }
            }
        }
        while let Some(Reverse((at, index, generation))) = self.retries.peek().copied() {
            if at > now_tenths {
                break;
            }
            self.retries.pop();
            let id = SubscriptionId { index, generation };
            if self.live(id).is_some() {
                self.ready.push_back(id);
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) or [`poll`](Self::poll) next has work.
    /// `sending`: whether the caller polls for NOTIFYs now. One that does
    /// not (a node fenced off its watchers) gets no deadline for the
    /// NOTIFYs waiting to go, which would otherwise be due at once, every
    /// time, and keep its driver spinning.
    pub fn next_deadline(&self, now: Instant, sending: bool) -> Option<Instant> {
        let from_tenths = |t: u32| self.epoch + Duration::from_millis(u64::from(t) * 100);
        let mut next: Option<Instant> = None;
        let mut consider = |at: Instant| next = Some(next.map_or(at, |n: Instant| n.min(at)));
        if let Some(second) = self.wheel.next_due() {
            consider(self.epoch + Duration::from_secs(u64::from(second)));
        }
        if let Some(&(at, _)) = self.deferred.front() {
            consider(from_tenths(at));
        }
        if let Some(Reverse((at, _, _))) = self.retries.peek() {
            consider(from_tenths(*at));
        }
        let room = self.in_flight < self.config.max_in_flight;
        let pacing_work = (!self.ready.is_empty() || !self.fanouts.is_empty())
            && self.answered_in_flight() < self.config.max_in_flight
            || !self.unanswered_waiting.is_empty() && room;
        if sending && pacing_work {
            let wait = if self.tokens >= 1.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64((1.0 - self.tokens) / f64::from(self.config.notify_rate))
            };
            consider(now + wait);
        }
        if let Some(at) = self.recovery.next_due(now) {
            consider(at);
        }
        next
    }

    /// Whether anything is waiting to be sent.
    pub fn has_pending(&self) -> bool {
        !self.urgent.is_empty()
            || !self.ready.is_empty()
            || !self.unanswered_waiting.is_empty()
            || !self.fanouts.is_empty()
            || !self.recovery.is_empty()
    }

    /// NOTIFY transactions outstanding.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Of those, NOTIFYs to watchers that have answered one before: the
    /// count their own pacing is held to.
    fn answered_in_flight(&self) -> u32 {
        self.in_flight - self.unanswered_in_flight
    }

    /// Watcher URIs of an endpoint, for the admin view.
    pub fn watchers(&self, presentity: u32) -> impl Iterator<Item = &str> + '_ {
        self.presentities[presentity as usize]
            .watchers
            .iter()
            .map(|&i| self.records[i as usize].dialog.remote_uri())
    }
}

/// The slot, generation and check a tag carries after its origin
/// (`index.generation.check`, in hex); None for anything else.
fn split_tag(body: &str) -> Option<(SubscriptionId, u32)> {
    let mut parts = body.split('.');
    let mut next = || u32::from_str_radix(parts.next()?, 16).ok();
    let id = SubscriptionId {
        index: next()?,
        generation: next()?,
    };
    let check = next()?;
    parts.next().is_none().then_some((id, check))
}

/// A deterministic keyed hash: tags must verify again after a restart with
/// the same salt, which `RandomState` would not allow.
fn keyed_hash(salt: u64, feed: impl FnOnce(&mut StableHasher)) -> u32 {
    let mut h = StableHasher::new(salt);
    feed(&mut h);
    h.finish() as u32
}

/// A hasher whose algorithm is fixed here — FNV-1a seeded with the salt,
/// integers fed little-endian, then the SplitMix64 finaliser — so tags
/// made before a restart verify after it whatever toolchain or machine
/// built either binary. `DefaultHasher` promises no such stability.
pub(crate) struct StableHasher(u64);

impl StableHasher {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

    fn new(salt: u64) -> StableHasher {
        let mut h = StableHasher(Self::OFFSET);
        h.write_u64(salt);
        h
    }
}

impl Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(Self::PRIME);
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write(&n.to_le_bytes());
    }

    fn write_u64(&mut self, n: u64) {
        self.write(&n.to_le_bytes());
    }

    fn finish(&self) -> u64 {
        let mut z = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The single Contact URI of a request, when it has exactly one.
fn only_contact(request: &Message) -> Option<&str> {
    match request.contacts() {
        Ok(porchlight_sip::Contacts::List(list)) if list.len() == 1 => Some(list[0].uri.as_str()),
        _ => None,
    }
}

fn bad_event() -> Answer {
    Answer::new(status::BAD_EVENT, "Bad Event").with("Allow-Events", "presence, presence.winfo")
}

fn not_acceptable(types: &str) -> Answer {
    Answer::new(status::NOT_ACCEPTABLE, "Not Acceptable").with("Accept", types)
}

/// The route set of a dialog we are the UAS of: the Record-Route values,
/// in order (RFC 3261 §12.1.1), as one Route header value.
fn route_set(request: &Message) -> Option<String> {
    let mut out = String::new();
    for value in request.values(HeaderName::RecordRoute) {
        let Ok(value) = std::str::from_utf8(value) else {
            continue;
        };
        if !out.is_empty() {
            out.push_str(", ");
        }
        let _ = write!(out, "{}", value.trim());
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_stays_small() {
        // Millions are held per node: a field added must not grow it unseen.
        assert_eq!(std::mem::size_of::<Record>(), 80);
    }

    #[test]
    fn the_keyed_hash_is_pinned_so_tags_survive_rebuilds() {
        // These values are part of the store's contract: a node built by
        // any toolchain must recognise the To tags an earlier one issued.
        let tag = keyed_hash(0x5eed, |h| {
            h.write_u32(7);
            h.write_u32(3);
        });
        let watcher = keyed_hash(0x5eed, |h| h.write(b"sip:alice@fabrikam.com"));
        assert_eq!((tag, watcher), (0xbb0b_9f7b, 0x781a_427d));
        // And the salt keys it.
        let other_salt = keyed_hash(0x5eee, |h| {
            h.write_u32(7);
            h.write_u32(3);
        });
        assert_ne!(tag, other_salt);
    }
}
