//! The presence service of a node: joins the endpoint directory, the
//! registrar, publications and the notifier, and speaks to the core in
//! requests answered, requests to send and responses received. Its jobs
//! live apart: where an endpoint's state comes from (`sources`), who may
//! reach whom (`gate`), the SUBSCRIBE/REGISTER/PUBLISH/SERVICE services
//! (`services`), what the store keeps (`snapshots`) and what the admin
//! sees (`views`); this module holds the state they share and applies
//! policy and endpoint changes. The state is owned in parts: `Access`
//! (policy, decisions, the guessing guard), `Keepalives` (OPTIONS under
//! way), `Changed` (what the store has yet to take) and `BodyLimits`,
//! beside the directory, notifier, registrar and publications.

mod gate;
mod keepalives;
mod services;
mod shared;
mod snapshots;
mod sources;
mod views;

use keepalives::Keepalives;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use porchlight_endpoints::digest::DigestAuth;
use porchlight_endpoints::{
    Change, Credentials, Directory, Endpoint, EndpointSet, Gate, GuessGuard, HealthConfig, Lockout,
    Registrar, RegistrarConfig, SavedBinding, SavedRegistration, Sources,
};
use porchlight_link::Origin;
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
use porchlight_sip::status;
use porchlight_sip::{Answer, Framing, HeaderName, Limits, Message, Method};
use porchlight_transaction::ClientKey;

use crate::admission::{Admission, DecisionCount, DecisionRecord, Way};
use crate::clock::Now;
use crate::config::Config;
use crate::delivery::{self, Delivery};
use crate::edge::{self, domain_of};
use crate::outbound::NextHop;
use crate::snapshot::reconnect_to;
use crate::status::{EndpointDetail, EndpointView, MAX_LISTED_WATCHERS};
use crate::wire::flow_info;

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

/// The one place an outsider's subscription is decided: through the
/// federation policy (the inside of the edge is not asked). Refusals are a
/// plain 403 outside and every step in the log.
fn authorize_subscription(
    policy: &PolicyConfig,
    directory: &Directory,
    admission: &mut Admission,
    origin: &Origin,
    endpoint: u32,
    watcher: &str,
    now: Now,
) -> Authorization {
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
        exceeded = admission
            .limits
            .admit(&policy.edge, &domain, endpoint, now.unix_f64())
            .err();
    }
    if outcome.allowed && exceeded.is_none() {
        admission.record(Way::Inbound, Modality::Presence, watcher, to, &outcome, now);
        return Authorization::Allow;
    }
    // Refused: decide again, this time writing down why, for the log.
    let mut decision = decide(policy, &request);
    if let Some(exceeded) = exceeded {
        decision.steps.push(exceeded.to_string());
        decision.allowed = false;
    }
    admission.record(
        Way::Inbound,
        Modality::Presence,
        watcher,
        to,
        &decision,
        now,
    );
    admission.refused(Way::Inbound, &request.remote, watcher, to, &decision, now);
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

/// Who may reach whom: the policy in force, the decisions it made (and
/// discovered partners' limits), the guard against password guessing, and
/// this node's own names for telling the inside from a partner.
struct Access {
    policy: PolicyConfig,
    admission: Admission,
    guesses: GuessGuard,
    /// Our domains and aliases: a certificate naming only these is the
    /// inside's.
    own_domains: Vec<String>,
}

/// Endpoints whose registered contacts or publications changed since the
/// store last took them (sets: bounded by the endpoints, store or not).
#[derive(Default)]
struct Changed {
    registrations: BTreeSet<usize>,
    publications: BTreeSet<usize>,
}

/// What a PUBLISH or SERVICE body may be: its XML, and its longest note or
/// activity.
struct BodyLimits {
    xml: XmlLimits,
    note_bytes: usize,
}

/// Presence state and protocol handling of one node.
pub struct PresenceService {
    /// The endpoints, by slot.
    directory: Directory,
    /// Who may reach whom: the policy, its decisions, the guessing guard.
    access: Access,
    /// Every subscription, and the fan-out of each change.
    notifier: Notifier<NextHop>,
    /// Apps' registered contacts.
    registrar: Registrar<FlowInfo<NextHop>>,
    publications: Publications,
    health: Vec<(Option<bool>, u32)>,
    /// What changed since the store last took it.
    changed: Changed,
    /// Presence an admin set through the API, per endpoint.
    overrides: Vec<Option<porchlight_presence::PresenceState>>,
    /// What a published body may be.
    bodies: BodyLimits,
    /// OPTIONS to registered contacts, under way and to send.
    keepalives: Keepalives,
    next_schedule_check: Instant,
    /// Restored watchers wait for this window's pace until the endpoints'
    /// sources have reported, or the deadline.
    recovery: Option<(Duration, Instant)>,
    /// This node's part in a cluster; None when it is alone.
    sharing: Option<shared::Sharing>,
    /// Whether the node's cluster lease is too old to notify.
    fenced: bool,
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
            config.own_seed(salt),
        );
        let mut service = PresenceService {
            health: vec![(None, 0); slots],
            overrides: vec![None; slots],
            changed: Changed::default(),
            directory,
            access: Access {
                policy: config.policy.clone(),
                admission: Admission::new(Duration::from_secs(
                    config.limits.refusal_log_interval_secs,
                )),
                guesses: GuessGuard::new(config.registrar.guess_limits()),
                own_domains: config.own_domains(),
            },
            notifier,
            registrar,
            publications,
            bodies: BodyLimits {
                xml,
                note_bytes: p.max_note_bytes,
            },
            keepalives: Keepalives::new(salt),
            next_schedule_check: now,
            recovery: None,
            sharing: None,
            fenced: false,
        };
        for slot in 0..slots {
            service.refresh(slot, clock);
        }
        service
    }

    /// Makes the node serve exactly `set` from now on, without a restart:
    /// new endpoints can be watched, registered with and called at once;
    /// changed ones show their new name, state and sources to their
    /// watchers; removed ones end their subscriptions (`noresource`) and
    /// lose their registrations and publications.
    fn apply_endpoints(&mut self, set: &mut EndpointSet, now: Now) -> EndpointsApplied {
        let changes = self.directory.apply(set);
        let slots = self.directory.slots();
        self.registrar.grow(slots);
        self.health.resize(slots, (None, 0));
        self.overrides.resize(slots, None);
        self.grow_shared(slots);
        let at = now.timestamp();
        let mut applied = EndpointsApplied::default();
        for change in changes {
            match change {
                Change::Added(slot) => {
                    let e = self.directory.get(slot).expect("just added");
                    applied.added.push(e.identity.uri.clone());
                    applied.probes.push((slot, e.health.clone()));
                    // A new slot starts empty; a vacated one was emptied
                    // when its endpoint was removed.
                    self.refresh(slot, now);
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
                        self.changed.registrations.insert(slot);
                    }
                    if !awaiting_probe {
                        self.refresh(slot, now);
                    }
                }
                Change::Removed { slot, endpoint } => {
                    applied.removed.push(endpoint.identity.uri.clone());
                    applied.probes.push((slot, None));
                    self.registrar.forget(slot);
                    self.changed.registrations.insert(slot);
                    self.publications.forget(slot as u32);
                    self.changed.publications.insert(slot);
                    self.keepalives.forget_endpoint(slot);
                    self.health[slot] = (None, 0);
                    self.overrides[slot] = None;
                    self.unshare(slot, &endpoint.identity.uri);
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

    /// The federation and access policy in force.
    pub fn policy(&self) -> &PolicyConfig {
        &self.access.policy
    }

    /// Puts a provisioned policy and endpoint set in force together, for
    /// every request from now on and for what is already held: federated
    /// subscriptions the new policy (or an endpoint's new grant) refuses
    /// end with a final NOTIFY saying `rejected`, exactly as a restart
    /// would drop them.
    pub fn apply(
        &mut self,
        policy: PolicyConfig,
        set: &mut EndpointSet,
        now: Now,
    ) -> EndpointsApplied {
        self.access.policy = policy;
        let applied = self.apply_endpoints(set, now);
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
        refuses_held(&self.access.policy, endpoint, remote, partner, Modality::Im)
    }

    /// Ends the federated subscriptions the policy in force refuses.
    fn revoke_refused(&mut self) {
        let (policy, directory) = (&self.access.policy, &self.directory);
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

    /// Why the policy in force now refuses a federated watcher's saved
    /// subscription (the configuration may have changed while the node
    /// was down), by the partner identity it was accepted under.
    fn refused_now(&self, saved: &SavedSubscription<String>, hop: &NextHop) -> Option<String> {
        let (NextHop::Partner(partner), SavedTarget::Presence(uri)) = (hop, &saved.target) else {
            return None;
        };
        let endpoint = self.directory.get(self.directory.resolve(uri)?)?;
        refuses_held(
            &self.access.policy,
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

    /// The endpoints, for the health probes the node starts.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Whether a request speaks for the inside of the edge (see
    /// [`edge::speaks_for_inside`]).
    pub fn speaks_for_inside(&self, origin: &Origin) -> bool {
        edge::speaks_for_inside(&self.access.policy, &self.access.own_domains, origin)
    }

    /// This node's domains and aliases, lower-case: a certificate naming
    /// only these (or hosts under them) is the inside's.
    pub fn own_domains(&self) -> &[String] {
        &self.access.own_domains
    }

    /// Feeds a response to a request this service sent. False when it was
    /// not ours.
    pub fn on_response(&mut self, branch: &str, response: &Message, now: Now) -> bool {
        let code = response.status().unwrap_or(500);
        if let Some(notify) = NotifyRef::from_branch(branch) {
            let retry_after = response.retry_after().ok().flatten().map(|r| r.seconds);
            self.notifier
                .on_notify_response(notify, code, retry_after, now.mono);
            return true;
        }
        if let Some((endpoint, contact)) = self.keepalives.answered(branch) {
            self.registrar.keepalive_answered(endpoint, &contact);
            return true;
        }
        false
    }

    /// A request this service sent got no response (timeout or transport error).
    pub fn on_failure(&mut self, branch: &str, now: Now) {
        if let Some(notify) = NotifyRef::from_branch(branch) {
            self.notifier
                .on_notify_response(notify, 408, None, now.mono);
        }
        self.keepalives.answered(branch);
    }

    /// Runs what is due.
    pub fn handle_timeout(&mut self, now: Now) {
        self.notifier.handle_timeout(now.mono);
        self.begin_recovery_when_settled(now);
        for endpoint in self.registrar.expire(now.mono) {
            self.changed.registrations.insert(endpoint);
            self.refresh(endpoint, now);
        }
        let (due, lost) = self.registrar.due_keepalives(now.mono);
        for endpoint in lost {
            self.changed.registrations.insert(endpoint);
            self.refresh(endpoint, now);
        }
        for (endpoint, contact, flow) in due {
            let uri = &self.notifier.identity(endpoint as u32).uri;
            self.keepalives.send(endpoint, uri, contact, flow);
        }
        for endpoint in self.publications.expire(now.mono) {
            self.changed.publications.insert(endpoint as usize);
            self.refresh(endpoint as usize, now);
        }
        self.lapse_shared(now);
        if now.mono >= self.next_schedule_check {
            self.next_schedule_check = now.mono + Duration::from_secs(15);
            let scheduled: Vec<usize> = self
                .directory
                .iter()
                .filter(|(_, e)| e.schedule.is_some())
                .map(|(slot, _)| slot)
                .collect();
            for slot in scheduled {
                self.refresh(slot, now);
            }
        }
    }

    /// The next request to send; no NOTIFY while fenced.
    pub fn poll(&mut self, now: Now) -> Option<OutgoingRequest> {
        if let Some(out) = self.keepalives.pop() {
            return Some(out);
        }
        if self.fenced {
            return None;
        }
        self.notifier.poll(now.mono).map(|o| OutgoingRequest {
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
    pub fn next_deadline(&self, now: Now) -> Option<Instant> {
        [
            self.notifier.next_deadline(now.mono, !self.fenced),
            self.registrar.next_deadline(),
            self.publications.next_expiry(),
            self.directory
                .iter()
                .any(|(_, e)| e.schedule.is_some())
                .then_some(self.next_schedule_check),
            self.recovery.map(|(_, deadline)| deadline),
            self.next_shared_lapse(now),
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
    Answer::new(status::NOT_FOUND, "Not Found")
}

fn no_credentials() -> Answer {
    Answer::new(
        status::FORBIDDEN,
        "Forbidden (this endpoint has no [endpoint.registration] credentials)",
    )
}

fn publish_refusal(e: &PublishError) -> Answer {
    match e {
        PublishError::IntervalTooBrief(min) => {
            Answer::new(status::INTERVAL_TOO_BRIEF, "Interval Too Brief")
                .with("Min-Expires", min.to_string())
        }
        PublishError::ConditionalFailed => Answer::new(
            status::CONDITIONAL_REQUEST_FAILED,
            "Conditional Request Failed",
        ),
        PublishError::MissingBody => Answer::new(
            status::BAD_REQUEST,
            "Bad Request (an initial PUBLISH needs a body)",
        ),
        PublishError::VersionConflict {
            category,
            instance,
            current,
        } => {
            let mut answer = Answer::new(status::CONFLICT, "Conflict");
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

/// RFC 7231 IMF-fixdate, for the Date header of REGISTER responses.
fn httpdate(at: SystemTime) -> String {
    let ts = jiff::Timestamp::try_from(at).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    ts.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// Parses bytes this service wrote, for the transaction layer.
pub fn parse_own(bytes: Bytes) -> Option<Message> {
    Message::parse(bytes, Framing::Datagram, &Limits::default()).ok()
}
