//! The presence service of a node: joins the endpoint directory, the
//! registrar, publications and the notifier, and speaks to the event loop
//! in requests answered, requests to send and responses received.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use porchlight_endpoints::digest::DigestAuth;
use porchlight_endpoints::{
    Change, Credentials, Directory, Endpoint, EndpointSet, Gate, GuessGuard, HealthConfig, Lockout,
    Registrar, RegistrarConfig, SavedBinding, Sources,
};
use porchlight_link::{Origin, Protocol, Target};
use porchlight_policy::{
    decide, verdict, Class, Decision, LocalParty, Modality, PolicyConfig, Remote,
    Request as PolicyRequest, Verification,
};
use porchlight_presence::check_length;
use porchlight_presence::xml_in::{parse_category_publish, parse_pidf};
use porchlight_presence::{
    Authorization, FlowInfo, Notifier, NotifierConfig, NotifierStats, NotifyRef, Publications,
    PublishBounds, PublishError, SavedPublication, SavedSubscription, SavedTarget, XmlLimits,
};
use porchlight_sip::{Answer, Framing, HeaderName, Limits, Message, MessageWriter, Method, Uri};
use porchlight_store::SavedRegistration;
use porchlight_transaction::ClientKey;

use crate::admission::{Admission, DecisionCount, DecisionRecord, Way};
use crate::clock::Now;
use crate::config::Config;
use crate::delivery::{self, Delivery};
use crate::edge::{self, domain_of};
use crate::outbound::NextHop;
use crate::snapshot::reconnect_to;
use crate::status::{EndpointDetail, EndpointView, MAX_LISTED_WATCHERS};

/// The path back to a watcher or an endpoint: the stream it used, or its
/// UDP source address (RFC 3581 symmetric response routing).
fn flow_of(origin: &Origin) -> NextHop {
    NextHop::Direct(match origin.connection {
        Some(id) => Target::Connection(id),
        None => Target::Address {
            protocol: Protocol::Udp,
            addr: origin.source,
            domain: None,
        },
    })
}

/// A request the service wants sent.
#[derive(Debug)]
pub struct OutgoingRequest {
    /// Where.
    pub target: NextHop,
    /// Whether that is a stream.
    pub reliable: bool,
    /// The request.
    pub bytes: Bytes,
    /// The client transaction it starts, under the key it was written
    /// with; None for BENOTIFY, which gets no response.
    pub transaction: Option<ClientKey>,
}

const KEEPALIVE_BRANCH: &str = "z9hG4bKka";

/// The one place subscription decisions are made: requests from trusted
/// networks are the inside of the edge; any other goes through the
/// federation policy. Refusals are a plain 403 outside and every step in
/// the log.
fn authorize_subscription(
    policy: &PolicyConfig,
    directory: &Directory,
    admission: &mut Admission,
    inside: bool,
    origin: &Origin,
    endpoint: u32,
    watcher: &str,
) -> Authorization {
    if inside {
        return Authorization::Allow;
    }
    let domain = domain_of(watcher);
    let Some(e) = directory.get(endpoint as usize) else {
        return Authorization::Deny {
            code: 404,
            reason: "Not Found".into(),
        };
    };
    let to = &e.identity.uri;
    let request = PolicyRequest {
        remote_domain: &domain,
        remote: remote_of(origin),
        local: local_party(e),
        modality: Modality::Presence,
    };
    let outcome = verdict(policy, &request);
    let mut exceeded = None;
    if outcome.allowed && outcome.class == Some(Class::DiscoveredPartner) {
        let now = admission.clock.unix_f64();
        exceeded = admission
            .limits
            .admit(&policy.edge, &domain, endpoint, now)
            .err();
    }
    if outcome.allowed && exceeded.is_none() {
        admission.record(Way::Inbound, Modality::Presence, watcher, to, &outcome);
        return Authorization::Allow;
    }
    // Refused: decide again, this time writing down why, for the log.
    let mut decision = decide(policy, &request);
    if let Some(exceeded) = exceeded {
        decision.steps.push(exceeded.to_string());
        decision.allowed = false;
    }
    admission.record(Way::Inbound, Modality::Presence, watcher, to, &decision);
    admission.log_refusal(Way::Inbound, watcher, to, &decision);
    Authorization::Deny {
        code: 403,
        reason: "Forbidden".into(),
    }
}

/// The policy's full decision when it refuses `remote`, vouched for by
/// `partner`'s certificate, `modality` with `endpoint`: the question a new
/// request is asked, put to a subscription or IM session already held
/// (after a policy change, or restored at start), so the live and the
/// restarted node agree.
fn refuses_held(
    policy: &PolicyConfig,
    endpoint: &Endpoint,
    remote: &str,
    partner: &str,
    modality: Modality,
) -> Option<Decision> {
    let domain = domain_of(remote);
    let partners = [partner.to_owned()];
    let request = PolicyRequest {
        remote_domain: &domain,
        remote: Remote::Certified(&partners),
        local: local_party(endpoint),
        modality,
    };
    (!verdict(policy, &request).allowed).then(|| decide(policy, &request))
}

/// What the policy knows of an inbound request's sender.
fn remote_of(origin: &Origin) -> Remote<'_> {
    match origin.peer.as_deref() {
        Some(peer) => Remote::Certified(&peer.domains),
        None => Remote::Unverified,
    }
}

/// An endpoint as the policy sees it: its URI, granted policy and site.
pub fn local_party(e: &Endpoint) -> LocalParty<'_> {
    LocalParty {
        uri: &e.identity.uri,
        grant: e.config.policy.as_deref(),
        site: e.config.site.as_deref(),
    }
}

/// The policy's name for what a request wants. An INVITE is a call unless
/// its offer has only `m=message` lines: a Microsoft IM session.
pub fn modality_of(request: &Message) -> Modality {
    match request.method_kind() {
        Some(Method::Invite) if is_im_session(request.body()) => Modality::Im,
        Some(Method::Invite) => Modality::Audio,
        Some(Method::Subscribe | Method::Notify) => Modality::Presence,
        _ => Modality::Im,
    }
}

/// Whether an SDP offer asks for text only (`m=message … sip null`).
fn is_im_session(sdp: &[u8]) -> bool {
    let mut media = sdp
        .split(|b| *b == b'\n')
        .filter(|line| line.starts_with(b"m="))
        .peekable();
    media.peek().is_some() && media.all(|line| line.starts_with(b"m=message "))
}

/// What [`PresenceService::apply_endpoints`] did, for the admin and for
/// the node's health probes.
#[derive(Debug, Default)]
pub struct EndpointsApplied {
    /// URIs of endpoints now in service.
    pub added: Vec<String>,
    /// URIs of endpoints whose declaration changed.
    pub changed: Vec<String>,
    /// URIs of endpoints no longer served.
    pub removed: Vec<String>,
    /// Slots whose health probe must be (re)started with this setting, or
    /// stopped (None).
    pub probes: Vec<(usize, Option<HealthConfig>)>,
}

/// What came of restoring saved subscriptions.
#[derive(Debug, Default)]
pub struct RestoreReport {
    /// Back in service.
    pub restored: usize,
    /// Left out, by slot, with the reason.
    pub dropped: Vec<(u32, String)>,
}

/// Longest a restarted node waits for its endpoints' health probes before
/// re-notifying restored watchers anyway.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

/// Presence state and protocol handling of one node.
pub struct PresenceService {
    directory: Directory,
    policy: PolicyConfig,
    /// Discovered partners' limits and the decisions made; a mutex only
    /// because the authorization callback borrows the service immutably.
    admission: Admission,
    /// The time of the input being handled, as the driver told it.
    clock: Now,
    notifier: Notifier<NextHop>,
    registrar: Registrar<FlowInfo<NextHop>>,
    /// Wrong passwords counted, guessers locked out.
    guesses: GuessGuard,
    publications: Publications,
    health: Vec<(Option<bool>, u32)>,
    /// Endpoints whose registered contacts changed since the store last
    /// took them (a set: bounded by the endpoints, store or not).
    registrations_changed: BTreeSet<usize>,
    /// Endpoints whose publications changed since the store last took them.
    publications_changed: BTreeSet<usize>,
    /// Presence an admin set through the API, per endpoint.
    overrides: Vec<Option<porchlight_presence::PresenceState>>,
    xml: XmlLimits,
    /// Longest note or activity accepted.
    max_note_bytes: usize,
    /// Our domains and aliases: a certificate naming only these is the
    /// inside's.
    own_domains: Vec<String>,
    keepalives: HashMap<String, (usize, String)>,
    keepalive_seq: u64,
    next_schedule_check: Instant,
    outgoing: std::collections::VecDeque<OutgoingRequest>,
    /// Restored watchers wait for this window's pace until the endpoints'
    /// sources have reported, or the deadline.
    recovery: Option<(Duration, Instant)>,
}

impl PresenceService {
    /// Builds the service from a validated configuration.
    pub fn new(config: &Config, salt: u64, clock: Now) -> PresenceService {
        let now = clock.mono;
        let directory = config
            .directory()
            .expect("validated with the configuration");
        let slots = directory.slots();
        let p = &config.presence;
        let xml = XmlLimits {
            max_bytes: p.max_xml_bytes,
            ..XmlLimits::default()
        };
        let notifier = Notifier::new(
            NotifierConfig {
                min_expires: p.min_expires,
                max_expires: p.max_expires,
                default_expires: p.default_expires,
                min_notify_interval: Duration::from_millis(p.min_notify_interval_ms),
                notify_rate: p.notify_rate,
                max_in_flight: p.max_notify_in_flight,
                max_in_flight_per_flow: p.max_notify_in_flight_per_flow,
                max_subscriptions_per_watcher: p.max_subscriptions_per_watcher,
                max_notify_retries: p.notify_retries,
                retry_base: Duration::from_millis(p.notify_retry_base_ms),
                max_winfo_watchers: p.max_winfo_watchers,
                xml,
                max_notify_bytes: config.limits.max_message_bytes,
                max_dialog_bytes: p.max_dialog_bytes,
            },
            now,
            salt,
        );
        let r = &config.registrar;
        let registrar = Registrar::new(
            RegistrarConfig {
                min_expires: r.min_expires,
                max_expires: r.max_expires,
                default_expires: r.default_expires,
                max_bindings: r.max_bindings,
                keepalive_interval: Duration::from_secs(r.keepalive_secs),
                keepalive_misses: r.keepalive_misses,
            },
            DigestAuth::new(
                config.node.domains[0].clone(),
                salt,
                r.nonce_lifetime_secs,
                r.algorithms(),
            ),
            slots,
        );
        let publications = Publications::new(
            PublishBounds {
                min_expires: p.publish_min_expires,
                max_expires: p.publish_max_expires,
                default_expires: p.publish_default_expires,
            },
            salt,
        );
        let mut service = PresenceService {
            health: vec![(None, 0); slots],
            overrides: vec![None; slots],
            registrations_changed: BTreeSet::new(),
            publications_changed: BTreeSet::new(),
            directory,
            policy: config.policy.clone(),
            admission: Admission::new(
                Duration::from_secs(config.limits.refusal_log_interval_secs),
                clock,
            ),
            clock,
            notifier,
            registrar,
            guesses: GuessGuard::new(config.registrar.guess_limits()),
            publications,
            xml,
            max_note_bytes: p.max_note_bytes,
            own_domains: config
                .node
                .domains
                .iter()
                .chain(&config.node.aliases)
                .map(|d| d.to_ascii_lowercase())
                .collect(),
            keepalives: HashMap::new(),
            keepalive_seq: 0,
            next_schedule_check: now,
            outgoing: Default::default(),
            recovery: None,
        };
        for slot in 0..slots {
            service.refresh(slot);
        }
        service
    }

    /// Makes the node serve exactly `set` from now on, without a restart:
    /// new endpoints can be watched, registered with and called at once;
    /// changed ones show their new name, state and sources to their
    /// watchers; removed ones end their subscriptions (`noresource`) and
    /// lose their registrations and publications.
    fn apply_endpoints(&mut self, set: &mut EndpointSet) -> EndpointsApplied {
        let changes = self.directory.apply(set);
        let slots = self.directory.slots();
        self.registrar.grow(slots);
        self.health.resize(slots, (None, 0));
        self.overrides.resize(slots, None);
        let at = self.clock.timestamp();
        let mut applied = EndpointsApplied::default();
        for change in changes {
            match change {
                Change::Added(slot) => {
                    let e = self.directory.get(slot).expect("just added");
                    applied.added.push(e.identity.uri.clone());
                    applied.probes.push((slot, e.health.clone()));
                    // A new slot starts empty; a vacated one was emptied
                    // when its endpoint was removed.
                    self.refresh(slot);
                }
                Change::Changed { slot, before } => {
                    let e = self.directory.get(slot).expect("just changed");
                    applied.changed.push(e.identity.uri.clone());
                    if e.health != before.health {
                        applied.probes.push((slot, e.health.clone()));
                        // The old probe's verdict stands until the new one
                        // reports; none stands without a probe.
                        self.health[slot].1 = 0;
                        if e.health.is_none() {
                            self.health[slot].0 = None;
                        }
                    }
                    // A probe that has never reported decides when it
                    // does (at once): watchers are not shown "offline,
                    // nothing has said up yet" in between.
                    let awaiting_probe = e.health.is_some() && self.health[slot].0.is_none();
                    if e.credentials != before.credentials && self.registrar.forget(slot) {
                        // Registered with credentials it no longer has.
                        self.registrations_changed.insert(slot);
                    }
                    if !awaiting_probe {
                        self.refresh(slot);
                    }
                }
                Change::Removed { slot, endpoint } => {
                    applied.removed.push(endpoint.identity.uri.clone());
                    applied.probes.push((slot, None));
                    self.registrar.forget(slot);
                    self.registrations_changed.insert(slot);
                    self.publications.forget(slot as u32);
                    self.publications_changed.insert(slot);
                    self.keepalives.retain(|_, (e, _)| *e != slot);
                    self.health[slot] = (None, 0);
                    self.overrides[slot] = None;
                    self.notifier.remove_presentity(slot as u32, at);
                }
            }
        }
        for uri in &applied.added {
            tracing::info!(endpoint = %uri, "endpoint added; in service now");
        }
        for uri in &applied.changed {
            tracing::info!(endpoint = %uri, "endpoint changed; in force now");
        }
        for uri in &applied.removed {
            tracing::info!(
                endpoint = %uri,
                "endpoint removed; its watchers are told (noresource), its registrations and publications dropped"
            );
        }
        applied
    }

    /// The state the sources of endpoint `e` (in slot `endpoint`) give it now.
    fn effective(
        &self,
        endpoint: usize,
        e: &Endpoint,
        at: jiff::Timestamp,
    ) -> porchlight_presence::PresenceState {
        let sources = Sources {
            registered: e
                .credentials
                .as_ref()
                .map(|_| self.registrar.is_registered(endpoint)),
            healthy: self.health[endpoint].0,
            // An admin's setting wins over the app's own publications.
            published: self.overrides[endpoint].clone().or_else(|| {
                self.publications
                    .effective(endpoint as u32, self.clock.mono)
            }),
        };
        e.effective_state(&sources, at)
    }

    /// Recomputes an endpoint's state from its sources and tells the
    /// notifier who it is and how it is; watchers hear of a change.
    /// Nothing for a vacant slot (a report about an endpoint removed since).
    fn refresh(&mut self, endpoint: usize) {
        let at = self.clock.timestamp();
        let Some(e) = self.directory.get(endpoint) else {
            return;
        };
        let state = self.effective(endpoint, e, at);
        if self.notifier.is_declared(endpoint as u32)
            && *self.notifier.state(endpoint as u32) != state
        {
            tracing::info!(
                endpoint = %e.identity.uri,
                availability = state.availability.0,
                "presence changed"
            );
        }
        self.notifier
            .put_presentity(endpoint as u32, &e.identity, state, at);
    }

    /// The federation and access policy in force.
    pub fn policy(&self) -> &PolicyConfig {
        &self.policy
    }

    /// Puts a provisioned policy and endpoint set in force together, for
    /// every request from now on and for what is already held: federated
    /// subscriptions the new policy (or an endpoint's new grant) refuses
    /// end with a final NOTIFY saying `rejected`, exactly as a restart
    /// would drop them.
    pub fn apply(&mut self, policy: PolicyConfig, set: &mut EndpointSet) -> EndpointsApplied {
        self.policy = policy;
        let applied = self.apply_endpoints(set);
        self.revoke_refused();
        applied
    }

    /// The policy's decision when it now refuses an IM session held with
    /// `remote` (vouched for by `partner`) on `endpoint`; None while allowed.
    pub fn refuses_session(
        &self,
        endpoint: usize,
        remote: &str,
        partner: &str,
    ) -> Option<Decision> {
        let endpoint = self.directory.get(endpoint)?;
        refuses_held(&self.policy, endpoint, remote, partner, Modality::Im)
    }

    /// Ends the federated subscriptions the policy in force refuses.
    fn revoke_refused(&mut self) {
        let (policy, directory) = (&self.policy, &self.directory);
        // One decision per endpoint, watcher domain and partner.
        let mut decided: HashMap<(u32, String, Arc<str>), bool> = HashMap::new();
        let revoked = self.notifier.revoke(&mut |slot, watcher, hop| {
            let NextHop::Partner(partner) = hop else {
                return false;
            };
            let Some(endpoint) = directory.get(slot as usize) else {
                return false;
            };
            let key = (slot, domain_of(watcher), partner.clone());
            if let Some(&refused) = decided.get(&key) {
                return refused;
            }
            let refusal = refuses_held(policy, endpoint, watcher, partner, Modality::Presence);
            if let Some(decision) = &refusal {
                tracing::info!(
                    watcher,
                    endpoint = %endpoint.identity.uri,
                    partner = %partner,
                    "held subscriptions from this domain end: the policy now refuses them\n{decision}"
                );
            }
            decided.insert(key, refusal.is_some());
            refusal.is_some()
        });
        if revoked > 0 {
            tracing::info!(revoked, "policy change ended held subscriptions");
        }
    }

    /// The policy check for a request entering from outside: calls, IM and
    /// subscriptions for people behind the edge (against the global
    /// policy), or calls and IM for one of our endpoints (against its grant
    /// or site). Ok carries the trust header value describing the peer.
    pub fn authorize_entering(
        &mut self,
        request: &Message,
        origin: &Origin,
        endpoint: Option<usize>,
    ) -> Result<String, Box<Answer>> {
        let from = request.from().map(|f| f.uri.as_str()).unwrap_or_default();
        let to = request.request_uri().unwrap_or_default();
        let from_domain = domain_of(from);
        let local = match endpoint.and_then(|slot| self.directory.get(slot)) {
            Some(e) => local_party(e),
            None => LocalParty {
                uri: to,
                grant: None,
                site: None,
            },
        };
        let policy_request = PolicyRequest {
            remote_domain: &from_domain,
            remote: remote_of(origin),
            local,
            modality: modality_of(request),
        };
        let outcome = self
            .admission
            .admit(&self.policy, Way::Inbound, &policy_request, from, to);
        if !outcome.allowed {
            return Err(Box::new(Answer::new(403, "Forbidden")));
        }
        let class = match &outcome.class {
            Some(Class::PublicProvider(name)) => format!("public-provider;provider=\"{name}\""),
            _ => "federation".to_owned(),
        };
        let peer = origin
            .peer
            .as_deref()
            .map(|p| p.domains.join(","))
            .unwrap_or_default();
        // Fails closed: only a class whose edge vouches for its users says yes.
        let verified = match outcome
            .class
            .as_ref()
            .map(|c| self.policy.verification(c, &from_domain))
        {
            Some(Verification::Verified) => "yes",
            _ => "no",
        };
        Ok(format!("peer=\"{peer}\";verified={verified};class={class}"))
    }

    /// The policy check for a request from the inside to another domain:
    /// the sender must be one of ours (our certificate speaks only for our
    /// domains), and the remote domain's class and the sender's policy (its
    /// endpoint grant or site, else the global policy) must allow the
    /// modality.
    pub fn authorize_leaving(
        &mut self,
        our_domains: &[String],
        request: &Message,
        remote_domain: &str,
    ) -> Result<(), Box<Answer>> {
        let from = request.from().map(|f| f.uri.as_str()).unwrap_or_default();
        let from_domain = domain_of(from);
        if !our_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(&from_domain))
        {
            tracing::info!(
                from,
                "outbound request refused: the From domain is not one of ours"
            );
            return Err(Box::new(Answer::new(
                403,
                "Forbidden (the From domain is not served here)",
            )));
        }
        let directory = &self.directory;
        let local = match directory.resolve(from).and_then(|slot| directory.get(slot)) {
            Some(e) => local_party(e),
            None => LocalParty {
                uri: from,
                grant: None,
                site: None,
            },
        };
        let policy_request = PolicyRequest {
            remote_domain,
            remote: Remote::Destination,
            local,
            modality: modality_of(request),
        };
        let to = request.request_uri().unwrap_or_default();
        if self
            .admission
            .admit(&self.policy, Way::Outbound, &policy_request, from, to)
            .allowed
        {
            Ok(())
        } else {
            Err(Box::new(Answer::new(403, "Forbidden")))
        }
    }

    /// Where a call or IM with `modality` for `endpoint` goes now.
    pub fn delivery(&self, endpoint: usize, modality: Modality) -> Delivery {
        match self.directory.get(endpoint) {
            Some(e) => delivery::choose(e, self.registrar.bindings(endpoint), modality),
            None => Delivery::Refuse(Answer::new(404, "Not Found")),
        }
    }

    /// A call or IM for `endpoint` could not be sent to its registered
    /// `contact`: the app's connection is gone, so is its registration,
    /// and watchers see it go offline unless another source says up.
    pub fn delivery_failed(&mut self, endpoint: usize, contact: &str) {
        let Some(e) = self.directory.get(endpoint) else {
            return;
        };
        if self.registrar.flow_failed(endpoint, contact) {
            tracing::info!(
                endpoint = %e.identity.uri,
                contact,
                "the app's connection is gone; its registration is dropped"
            );
        }
        self.registrations_changed.insert(endpoint);
        self.refresh(endpoint);
    }

    /// Whether `request` comes from the app of the endpoint in its From.
    pub fn sent_by_endpoint(&self, request: &Message, origin: &Origin) -> bool {
        let Ok(from) = request.from() else {
            return false;
        };
        self.directory
            .resolve(from.uri.as_str())
            .and_then(|slot| Some((slot, self.directory.get(slot)?)))
            .is_some_and(|(slot, e)| delivery::sent_by(e, self.registrar.bindings(slot), origin))
    }

    /// An endpoint with its live presence, for the admin.
    fn endpoint_view(&self, endpoint: usize, e: &Endpoint) -> EndpointView {
        let state = self.notifier.state(endpoint as u32);
        EndpointView {
            uri: e.identity.uri.clone(),
            display_name: e.config.display_name.clone(),
            availability: state.availability.band().name(),
            availability_value: state.availability.0,
            activity: state.activity.clone(),
            note: state.note.clone(),
            watchers: self.notifier.watcher_count(endpoint as u32),
            registered: e
                .credentials
                .as_ref()
                .map(|_| self.registrar.is_registered(endpoint)),
            healthy: self.health[endpoint].0,
            set_by_admin: self.overrides[endpoint].is_some(),
        }
    }

    /// Sets (or, with None, clears) an admin's presence for an endpoint:
    /// it wins over every source until cleared. None when the URI is not
    /// an endpoint.
    pub fn set_override(
        &mut self,
        uri: &str,
        state: Option<porchlight_presence::PresenceState>,
    ) -> Option<EndpointView> {
        let endpoint = self.directory.resolve(uri)?;
        if let Some(state) = &state {
            tracing::info!(
                endpoint = uri,
                availability = state.availability.0,
                "presence set by the admin"
            );
        } else {
            tracing::info!(endpoint = uri, "the admin's presence cleared");
        }
        self.overrides[endpoint] = state;
        self.refresh(endpoint);
        Some(self.endpoint_view(endpoint, self.directory.get(endpoint)?))
    }

    /// Every endpoint with its live presence.
    pub fn endpoint_views(&self) -> Vec<EndpointView> {
        self.directory
            .iter()
            .map(|(slot, e)| self.endpoint_view(slot, e))
            .collect()
    }

    /// One endpoint with who watches it.
    pub fn endpoint_detail(&self, uri: &str) -> Option<EndpointDetail> {
        let endpoint = self.directory.resolve(uri)?;
        Some(EndpointDetail {
            endpoint: self.endpoint_view(endpoint, self.directory.get(endpoint)?),
            watcher_uris: self
                .notifier
                .watchers(endpoint as u32)
                .take(MAX_LISTED_WATCHERS)
                .map(str::to_owned)
                .collect(),
        })
    }

    /// Subscription and NOTIFY counters, and NOTIFYs outstanding.
    pub fn notifier_stats(&self) -> (NotifierStats, u32) {
        (self.notifier.stats(), self.notifier.in_flight())
    }

    /// Policy decisions by way, kind and outcome.
    pub fn decision_counts(&self) -> Vec<DecisionCount> {
        self.admission.counts()
    }

    /// The most recent refusals, newest first.
    pub fn refusals(&self) -> Vec<DecisionRecord> {
        self.admission.recent()
    }

    /// Moves the subscription slots changed since the last call into `out`.
    pub fn take_changed(&mut self, out: &mut Vec<u32>) {
        self.notifier.take_changed(out);
    }

    /// The saved form of a subscription slot; None: delete it.
    pub fn saved(&self, slot: u32, now: Instant, unix: u64) -> Option<SavedSubscription<NextHop>> {
        self.notifier.saved(slot, now, unix)
    }

    /// Each endpoint whose registered contacts changed since the last
    /// call, with its contacts now (an empty list: none left).
    pub fn take_registration_changes(
        &mut self,
        now: Instant,
        unix: u64,
    ) -> Vec<(String, Vec<SavedBinding<FlowInfo<NextHop>>>)> {
        std::mem::take(&mut self.registrations_changed)
            .into_iter()
            .map(|endpoint| {
                (
                    self.notifier.identity(endpoint as u32).uri.clone(),
                    self.registrar.saved(endpoint, now, unix),
                )
            })
            .collect()
    }

    /// The endpoints whose publications changed, with their publications
    /// now (empty: none left), for the store.
    pub fn take_publication_changes(
        &mut self,
        now: Instant,
        unix: u64,
    ) -> Vec<(String, Vec<SavedPublication>)> {
        std::mem::take(&mut self.publications_changed)
            .into_iter()
            .map(|endpoint| {
                (
                    self.notifier.identity(endpoint as u32).uri.clone(),
                    self.publications.saved(endpoint as u32, now, unix),
                )
            })
            .collect()
    }

    /// Puts saved publications back, so an app's published state holds
    /// across a restart and its refreshes keep their entity tags. Returns
    /// the URIs of endpoints no longer configured, whose publications the
    /// store should drop.
    pub fn restore_publications(
        &mut self,
        saved: Vec<(String, Vec<SavedPublication>)>,
        now: Instant,
    ) -> Vec<String> {
        let unix = self.clock.unix();
        let mut orphans = Vec::new();
        for (uri, publications) in saved {
            let Some(endpoint) = self.directory.resolve(&uri) else {
                orphans.push(uri);
                continue;
            };
            self.publications
                .restore(endpoint as u32, publications, now, unix);
            self.refresh(endpoint);
        }
        orphans
    }

    /// Puts saved registered contacts back, so endpoints whose apps were
    /// registered are online again from the first moment. Returns how many
    /// came back, and the URIs of endpoints no longer configured, whose
    /// contacts the store should drop.
    pub fn restore_registrations(
        &mut self,
        saved: Vec<(String, Vec<SavedRegistration>)>,
        now: Instant,
    ) -> (usize, Vec<String>) {
        let unix = self.clock.unix();
        let mut restored = 0;
        let mut orphans = Vec::new();
        for (uri, bindings) in saved {
            let Some(endpoint) = self.directory.resolve(&uri) else {
                orphans.push(uri);
                continue;
            };
            let bindings: Vec<_> = bindings
                .into_iter()
                .filter_map(|b| {
                    let hop = crate::snapshot::flow_from_text(&b.flow.flow, &b.contact)?;
                    let flow = b.flow.clone().with_flow(hop);
                    Some(b.with_flow(flow))
                })
                .collect();
            restored += bindings.len();
            self.registrar.restore(endpoint, bindings, now, unix);
            self.refresh(endpoint);
        }
        (restored, orphans)
    }

    /// Puts saved subscriptions back, drops those that cannot come back
    /// (expired, endpoint gone, now refused by the policy), paces their
    /// first NOTIFYs over `window`, and starts noting changes for the store.
    pub fn restore(
        &mut self,
        saved: Vec<SavedSubscription<String>>,
        window: Duration,
        now: Instant,
    ) -> RestoreReport {
        let unix = self.clock.unix();
        let mut report = RestoreReport::default();
        for s in saved {
            let Some(hop) = crate::snapshot::flow_from_text(&s.flow.flow, reconnect_to(&s)) else {
                report
                    .dropped
                    .push((s.id.index, "its path back is unreadable".into()));
                continue;
            };
            if let Some(reason) = self.refused_now(&s, &hop) {
                report.dropped.push((s.id.index, reason));
                continue;
            }
            let slot = s.id.index;
            let directory = &self.directory;
            match self.notifier.restore(
                s.with_flow(hop),
                &|uri| directory.resolve(uri).map(|i| i as u32),
                now,
                unix,
            ) {
                Ok(_) => report.restored += 1,
                Err(e) => report.dropped.push((slot, e.to_string())),
            }
        }
        self.recovery = Some((window, now + SETTLE_LIMIT));
        self.begin_recovery_when_settled(now);
        self.notifier.record_changes();
        report
    }

    /// Starts re-notifying restored watchers once every endpoint's health
    /// probe has reported (or [`SETTLE_LIMIT`] has passed), so the first
    /// NOTIFY after a restart carries the endpoint's real state, not the
    /// "unknown yet" of a node that just started.
    fn begin_recovery_when_settled(&mut self, now: Instant) {
        let Some((window, deadline)) = self.recovery else {
            return;
        };
        let settled = self
            .directory
            .iter()
            .all(|(slot, e)| e.health.is_none() || self.health[slot].0.is_some());
        if settled || now >= deadline {
            self.notifier.pace_recovery(window);
            self.recovery = None;
        }
    }

    /// Why the policy in force now refuses a federated watcher's saved
    /// subscription (the configuration may have changed while the node
    /// was down), by the partner identity it was accepted under.
    fn refused_now(&self, saved: &SavedSubscription<String>, hop: &NextHop) -> Option<String> {
        let (NextHop::Partner(partner), SavedTarget::Presence(uri)) = (hop, &saved.target) else {
            return None;
        };
        let endpoint = self.directory.get(self.directory.resolve(uri)?)?;
        refuses_held(
            &self.policy,
            endpoint,
            &saved.remote_uri,
            partner,
            Modality::Presence,
        )
        .map(|decision| {
            format!(
                "the policy now refuses {}: {decision}",
                domain_of(&saved.remote_uri)
            )
        })
    }

    /// Changed subscriptions not yet taken for the store.
    pub fn changes_pending(&self) -> usize {
        self.notifier.changes_pending()
    }

    /// Restored subscriptions still owed their first NOTIFY.
    pub fn recovering(&self) -> usize {
        self.notifier.recovering()
    }

    /// The time of the input about to be handled: every date, expiry,
    /// nonce and schedule the service works out is of this moment.
    pub fn observe(&mut self, now: Now) {
        self.clock = now;
        self.admission.clock = now;
    }

    /// The endpoints, for the health probes the node starts.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Answers a SUBSCRIBE, PUBLISH, SERVICE or REGISTER.
    pub fn handle(&mut self, request: &Message, origin: &Origin, now: Instant) -> Answer {
        match request.method_kind().unwrap_or(Method::Other("")) {
            Method::Subscribe => {
                if self.hides_missing_endpoint(request, origin)
                    || self.hides_refused(request, origin)
                {
                    return Answer::new(403, "Forbidden");
                }
                let mut flow = flow_info(origin, request);
                let inside = self.speaks_for_inside(origin);
                // A federated watcher is reached through its partner's
                // edge, by name: NOTIFYs survive the connection closing.
                if !inside {
                    let from = request.from().map(|f| domain_of(f.uri.as_str()));
                    if let Some(partner) = from
                        .ok()
                        .and_then(|d| edge::partner_of(&self.policy, origin, &d))
                    {
                        flow.flow = NextHop::Partner(partner);
                    }
                }
                let (directory, policy, admission) =
                    (&self.directory, &self.policy, &mut self.admission);
                self.notifier.subscribe(
                    request,
                    flow,
                    &|uri| directory.resolve(uri).map(|i| i as u32),
                    &mut |endpoint, watcher| {
                        authorize_subscription(
                            policy, directory, admission, inside, origin, endpoint, watcher,
                        )
                    },
                    now,
                )
            }
            Method::Register => self.register(request, origin, now),
            Method::Publish => self.publish(request, origin, now),
            Method::Service => self.service(request, origin, now),
            _ => Answer::new(501, "Not Implemented"),
        }
    }

    /// Password guesses refused unchecked, and wrong passwords, since start.
    pub fn guess_counts(&self) -> (u64, u64) {
        self.guesses.counts()
    }

    /// Whether a request speaks for the inside of the edge (see
    /// [`edge::speaks_for_inside`]).
    pub fn speaks_for_inside(&self, origin: &Origin) -> bool {
        edge::speaks_for_inside(&self.policy, &self.own_domains, origin)
    }

    /// Whether an outsider's new request (a subscription, a call, IM) to
    /// an endpoint that does not exist should get 403 rather than 404
    /// (`hide_missing_endpoints`).
    pub fn hides_missing_endpoint(&self, request: &Message, origin: &Origin) -> bool {
        let in_dialog = request.to().is_ok_and(|to| to.tag().is_some());
        let batched = request
            .content_type()
            .ok()
            .flatten()
            .is_some_and(|ct| ct.is("application/msrtc-adrl-categorylist+xml"));
        self.policy.edge.hide_missing_endpoints
            && !in_dialog
            && !batched
            && !self.speaks_for_inside(origin)
            && self
                .directory
                .resolve(request.request_uri().unwrap_or_default())
                .is_none()
    }

    /// Whether a stranger's new subscription to an existing endpoint is
    /// one the policy refuses, when missing endpoints are hidden: it is
    /// refused before anything in it is checked, as a missing one is, so a
    /// malformed request cannot tell the two apart. The refusal is
    /// recorded like any other.
    fn hides_refused(&mut self, request: &Message, origin: &Origin) -> bool {
        if !self.policy.edge.hide_missing_endpoints
            || self.speaks_for_inside(origin)
            || request.to().is_ok_and(|to| to.tag().is_some())
        {
            return false;
        }
        let Some(endpoint) = self
            .directory
            .resolve(request.request_uri().unwrap_or_default())
        else {
            return false;
        };
        let watcher = request.from().map(|f| f.uri.as_str()).unwrap_or_default();
        let (directory, policy, admission) = (&self.directory, &self.policy, &mut self.admission);
        let e = directory.get(endpoint).expect("resolved");
        let domain = domain_of(watcher);
        let policy_request = PolicyRequest {
            remote_domain: &domain,
            remote: remote_of(origin),
            local: local_party(e),
            modality: Modality::Presence,
        };
        !verdict(policy, &policy_request).allowed
            && authorize_subscription(
                policy,
                directory,
                admission,
                false,
                origin,
                endpoint as u32,
                watcher,
            ) != Authorization::Allow
    }

    /// Finds the endpoint a request speaks for and checks it is really that
    /// endpoint talking.
    fn authenticated_endpoint(
        &mut self,
        request: &Message,
        origin: &Origin,
        uri: &str,
        now: Instant,
    ) -> Result<usize, Box<Answer>> {
        let name = porchlight_presence::aor(uri).unwrap_or_default();
        self.guess_gate(origin, &name, now)?;
        let Some(endpoint) = self.directory.resolve(uri) else {
            return Err(Box::new(self.unknown_claim(
                request,
                origin,
                &name,
                not_found(),
                now,
            )));
        };
        let Some(credentials) = self
            .directory
            .get(endpoint)
            .and_then(|e| e.credentials.clone())
        else {
            return Err(Box::new(self.unknown_claim(
                request,
                origin,
                &name,
                no_credentials(),
                now,
            )));
        };
        let peer = trusted_peer(&credentials, origin);
        let outcome = self
            .registrar
            .authenticate(request, &credentials, peer, self.clock.unix());
        let wrong = outcome.as_ref().is_err_and(|e| e.wrong_credentials);
        self.count_guess(origin, &name, wrong, outcome.is_ok(), now);
        outcome.map(|()| endpoint).map_err(|e| Box::new(e.answer))
    }

    /// Refuses, unchecked, a claim to be `name` from a source (or for a
    /// name) locked out for guessing passwords.
    fn guess_gate(&mut self, origin: &Origin, name: &str, now: Instant) -> Result<(), Box<Answer>> {
        match self.guesses.gate(now, origin.source.ip(), name) {
            Gate::Open => Ok(()),
            Gate::Closed { retry_after } => Err(Box::new(
                Answer::new(503, "Service Unavailable")
                    .with("Retry-After", retry_after.as_secs().max(1).to_string()),
            )),
        }
    }

    /// Counts the outcome of checking a claim to be `name`; a lockout it
    /// starts is logged once.
    fn count_guess(
        &mut self,
        origin: &Origin,
        name: &str,
        wrong: bool,
        proven: bool,
        now: Instant,
    ) {
        let source = origin.source.ip();
        if proven {
            self.guesses.succeeded(now, source, name);
        }
        if !wrong {
            return;
        }
        for lockout in self.guesses.failed(now, source, name) {
            match lockout {
                Lockout::Source(ip, length) => tracing::warn!(
                    source = %ip,
                    "too many wrong passwords from this address: refused for {} s",
                    length.as_secs()
                ),
                Lockout::Endpoint(name, length) => tracing::warn!(
                    endpoint = %name,
                    "too many wrong passwords for this endpoint: strangers refused for {} s",
                    length.as_secs()
                ),
            }
        }
    }

    /// The answer to a claim to be a name that is no endpoint, or one that
    /// nothing can prove: `inside` says which, to the inside and to all
    /// when missing endpoints are not hidden; an outsider otherwise gets
    /// the challenge a real endpoint would give, and its answer counts as
    /// a wrong guess — so nothing tells the two apart.
    fn unknown_claim(
        &mut self,
        request: &Message,
        origin: &Origin,
        name: &str,
        inside: Answer,
        now: Instant,
    ) -> Answer {
        if !self.policy.edge.hide_missing_endpoints || self.speaks_for_inside(origin) {
            return inside;
        }
        let offered = request.auth(HeaderName::Authorization).next().is_some();
        self.count_guess(origin, name, offered, false, now);
        self.registrar.challenge(self.clock.unix(), false, None)
    }

    fn register(&mut self, request: &Message, origin: &Origin, now: Instant) -> Answer {
        let Ok(to) = request.to() else {
            return Answer::new(400, "Bad Request (To)");
        };
        let name = porchlight_presence::aor(to.uri.as_str()).unwrap_or_default();
        if let Err(locked) = self.guess_gate(origin, &name, now) {
            return *locked;
        }
        let Some(endpoint) = self.directory.resolve(to.uri.as_str()) else {
            return self.unknown_claim(request, origin, &name, not_found(), now);
        };
        let Some(credentials) = self
            .directory
            .get(endpoint)
            .and_then(|e| e.credentials.clone())
        else {
            return self.unknown_claim(request, origin, &name, no_credentials(), now);
        };
        let peer = trusted_peer(&credentials, origin);
        let outcome = self.registrar.register(
            endpoint,
            request,
            &credentials,
            peer,
            flow_info(origin, request),
            now,
            self.clock.unix(),
        );
        let proven = outcome.answer.code == 200;
        self.count_guess(origin, &name, outcome.wrong_credentials, proven, now);
        if outcome.liveness_changed {
            self.refresh(endpoint);
        }
        if proven {
            self.registrations_changed.insert(endpoint);
        }
        let date = httpdate(self.clock.wall);
        outcome.answer.with("Date", date)
    }

    fn publish(&mut self, request: &Message, origin: &Origin, now: Instant) -> Answer {
        let uri = request.request_uri().unwrap_or_default().to_owned();
        let endpoint = match self.authenticated_endpoint(request, origin, &uri, now) {
            Ok(e) => e,
            Err(answer) => return *answer,
        };
        match request.event() {
            Ok(Some(e)) if e.value.eq_ignore_ascii_case("presence") => {}
            _ => return Answer::new(489, "Bad Event").with("Allow-Events", "presence"),
        }
        let (Ok(if_match), Ok(expires)) = (
            request.entity_tag(HeaderName::SipIfMatch),
            request.expires(),
        ) else {
            return Answer::new(400, "Bad Request (SIP-If-Match or Expires)");
        };
        let body = if request.body().is_empty() {
            None
        } else {
            let is_pidf = request
                .content_type()
                .ok()
                .flatten()
                .is_some_and(|ct| ct.is("application/pidf+xml"));
            if !is_pidf {
                return Answer::new(415, "Unsupported Media Type")
                    .with("Accept", "application/pidf+xml");
            }
            match parse_pidf(request.body(), self.xml) {
                Ok(state) => match state.check_lengths(self.max_note_bytes) {
                    Ok(()) => Some(state),
                    Err(e) => return Answer::new(400, format!("Bad Request ({e})")),
                },
                Err(e) => return Answer::new(400, format!("Bad Request ({e})")),
            }
        };
        match self
            .publications
            .publish(endpoint as u32, if_match, body, expires, now)
        {
            Ok(published) => {
                self.publications_changed.insert(endpoint);
                self.refresh(endpoint);
                let mut answer =
                    Answer::new(200, "OK").with("Expires", published.expires.to_string());
                if let Some(tag) = published.etag {
                    answer = answer.with("SIP-ETag", tag);
                }
                answer
            }
            Err(e) => publish_refusal(&e),
        }
    }

    fn service(&mut self, request: &Message, origin: &Origin, now: Instant) -> Answer {
        let uri = request.request_uri().unwrap_or_default().to_owned();
        let endpoint = match self.authenticated_endpoint(request, origin, &uri, now) {
            Ok(e) => e,
            Err(answer) => return *answer,
        };
        let is_publish = request
            .content_type()
            .ok()
            .flatten()
            .is_some_and(|ct| ct.is("application/msrtc-category-publish+xml"));
        if !is_publish {
            return Answer::new(415, "Unsupported Media Type")
                .with("Accept", "application/msrtc-category-publish+xml");
        }
        let publications = match parse_category_publish(request.body(), self.xml) {
            Ok(p) => p,
            Err(e) => return Answer::new(400, format!("Bad Request ({e})")),
        };
        let limit = self.max_note_bytes;
        if let Err(e) = publications.iter().try_for_each(|p| {
            check_length("note", p.note.as_deref(), limit)?;
            check_length("activity", p.activity.as_deref(), limit)
        }) {
            return Answer::new(400, format!("Bad Request ({e})"));
        }
        match self
            .publications
            .publish_categories(endpoint as u32, publications)
        {
            Ok(()) => {
                self.publications_changed.insert(endpoint);
                self.refresh(endpoint);
                Answer::new(200, "OK")
            }
            Err(e) => publish_refusal(&e),
        }
    }

    /// A health probe's verdict for an endpoint.
    pub fn on_health(&mut self, endpoint: usize, healthy: bool) {
        let Some(e) = self.directory.get(endpoint) else {
            return;
        };
        let threshold = e.health.as_ref().map_or(1, |h| h.failures);
        let (verdict, failures) = &mut self.health[endpoint];
        if healthy {
            *failures = 0;
            *verdict = Some(true);
        } else {
            *failures += 1;
            if *failures >= threshold {
                *verdict = Some(false);
            }
        }
        self.refresh(endpoint);
        self.begin_recovery_when_settled(self.clock.mono);
    }

    /// Feeds a response to a request this service sent. False when it was
    /// not ours.
    pub fn on_response(&mut self, branch: &str, response: &Message, now: Instant) -> bool {
        let code = response.status().unwrap_or(500);
        if let Some(notify) = NotifyRef::from_branch(branch) {
            let retry_after = response.retry_after().ok().flatten().map(|r| r.seconds);
            self.notifier
                .on_notify_response(notify, code, retry_after, now);
            return true;
        }
        if let Some((endpoint, contact)) = self.keepalives.remove(branch) {
            self.registrar.keepalive_answered(endpoint, &contact);
            return true;
        }
        false
    }

    /// A request this service sent got no response (timeout or transport error).
    pub fn on_failure(&mut self, branch: &str, now: Instant) {
        if let Some(notify) = NotifyRef::from_branch(branch) {
            self.notifier.on_notify_response(notify, 408, None, now);
        }
        self.keepalives.remove(branch);
    }

    /// Runs what is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.notifier.handle_timeout(now);
        self.begin_recovery_when_settled(now);
        for endpoint in self.registrar.expire(now) {
            self.registrations_changed.insert(endpoint);
            self.refresh(endpoint);
        }
        let (due, lost) = self.registrar.due_keepalives(now);
        for endpoint in lost {
            self.registrations_changed.insert(endpoint);
            self.refresh(endpoint);
        }
        for (endpoint, contact, flow) in due {
            self.keepalive(endpoint, contact, flow);
        }
        for endpoint in self.publications.expire(now) {
            self.publications_changed.insert(endpoint as usize);
            self.refresh(endpoint as usize);
        }
        if now >= self.next_schedule_check {
            self.next_schedule_check = now + Duration::from_secs(15);
            let scheduled: Vec<usize> = self
                .directory
                .iter()
                .filter(|(_, e)| e.schedule.is_some())
                .map(|(slot, _)| slot)
                .collect();
            for slot in scheduled {
                self.refresh(slot);
            }
        }
    }

    /// An OPTIONS to a registered contact, over the flow it registered on.
    fn keepalive(&mut self, endpoint: usize, contact: String, flow: FlowInfo<NextHop>) {
        self.keepalive_seq += 1;
        let branch = format!("{KEEPALIVE_BRANCH}{:x}", self.keepalive_seq);
        let uri = &self.notifier.identity(endpoint as u32).uri;
        let mut w = MessageWriter::request("OPTIONS", &contact);
        w.header_fmt("Via", format_args!("{};branch={branch};rport", flow.via));
        w.header("Max-Forwards", "70");
        w.header_fmt(
            "From",
            format_args!("<{uri}>;tag=ka{:x}", self.keepalive_seq),
        );
        w.header_fmt("To", format_args!("<{contact}>"));
        w.header_fmt(
            "Call-ID",
            format_args!("keepalive-{:x}-{endpoint}", self.keepalive_seq),
        );
        w.header("CSeq", "1 OPTIONS");
        self.keepalives.insert(branch.clone(), (endpoint, contact));
        self.outgoing.push_back(OutgoingRequest {
            target: flow.flow,
            reliable: flow.reliable,
            bytes: w.finish(b""),
            transaction: Some(ClientKey {
                branch,
                method: "OPTIONS".into(),
            }),
        });
    }

    /// The next request to send.
    pub fn poll(&mut self, now: Instant) -> Option<OutgoingRequest> {
        if let Some(out) = self.outgoing.pop_front() {
            return Some(out);
        }
        self.notifier.poll(now).map(|o| OutgoingRequest {
            target: o.flow,
            reliable: o.reliable,
            bytes: o.bytes,
            transaction: o.branch.map(|branch| ClientKey {
                branch,
                method: "NOTIFY".into(),
            }),
        })
    }

    /// When [`handle_timeout`](Self::handle_timeout) or [`poll`](Self::poll) next has work.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        [
            self.notifier.next_deadline(now),
            self.registrar.next_deadline(),
            self.publications.next_expiry(),
            self.directory
                .iter()
                .any(|(_, e)| e.schedule.is_some())
                .then_some(self.next_schedule_check),
            self.recovery.map(|(_, deadline)| deadline),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// The endpoint's trusted mutual-TLS identity, when the request's peer
/// certificate proves it.
fn trusted_peer<'a>(credentials: &'a Credentials, origin: &Origin) -> Option<&'a str> {
    credentials
        .tls_identity
        .as_deref()
        .filter(|trusted| origin.peer.as_ref().is_some_and(|p| p.covers(trusted)))
}

fn not_found() -> Answer {
    Answer::new(404, "Not Found")
}

fn no_credentials() -> Answer {
    Answer::new(
        403,
        "Forbidden (this endpoint has no [endpoint.registration] credentials)",
    )
}

fn publish_refusal(e: &PublishError) -> Answer {
    match e {
        PublishError::IntervalTooBrief(min) => {
            Answer::new(423, "Interval Too Brief").with("Min-Expires", min.to_string())
        }
        PublishError::ConditionalFailed => Answer::new(412, "Conditional Request Failed"),
        PublishError::MissingBody => {
            Answer::new(400, "Bad Request (an initial PUBLISH needs a body)")
        }
        PublishError::VersionConflict {
            category,
            instance,
            current,
        } => {
            let mut answer = Answer::new(409, "Conflict");
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Fault xmlns=\"http://schemas.microsoft.com/2006/09/sip/service-fault\">\
                 <Faultcode>Client.BadCall.WrongDelta</Faultcode><details><operation index=\"0\" categoryName=\"{category}\" \
                 instance=\"{instance}\"><curVersion>{current}</curVersion></operation></details></Fault>\n"
            );
            answer.body = Some(("application/msrtc-fault+xml".into(), Bytes::from(body)));
            answer
        }
    }
}

/// Our Via and Contact on the flow a request came in on. A listener bound
/// to a wildcard address does not know which of its addresses the peer
/// used, so it names the host the peer put in the Request-URI.
fn flow_info(origin: &Origin, request: &Message) -> FlowInfo<NextHop> {
    let port = origin.local.port();
    let host = if origin.local.ip().is_unspecified() {
        request
            .request_uri()
            .and_then(|u| Uri::parse(u).ok())
            .and_then(|u| u.sip().map(|s| s.host.to_string()))
            .unwrap_or_else(|| "localhost".into())
    } else {
        match origin.local {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        }
    };
    let token = origin.protocol.via_token();
    FlowInfo {
        flow: flow_of(origin),
        reliable: origin.protocol.is_reliable(),
        via: format!("SIP/2.0/{token} {host}:{port}"),
        contact: format!(
            "<sip:{host}:{port};transport={}>",
            token.to_ascii_lowercase()
        ),
    }
}

/// RFC 7231 IMF-fixdate, for the Date header of REGISTER responses.
fn httpdate(at: SystemTime) -> String {
    let ts = jiff::Timestamp::try_from(at).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    ts.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// Parses bytes this service wrote, for the transaction layer.
pub fn parse_own(bytes: Bytes) -> Option<Message> {
    Message::parse(bytes, Framing::Datagram, &Limits::default()).ok()
}
