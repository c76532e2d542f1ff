//! The node's core: everything a node decides, with no I/O. Messages,
//! dial results, probe verdicts, webhook outcomes and admin queries come in
//! through [`Core::handle`] with the time ([`Now`]); what the node is to do
//! (send, dial, post, probe, trust these networks) comes out of
//! [`Core::poll_output`]; timers go through [`Core::poll_timeout`] and
//! [`Core::handle_timeout`]. It spawns nothing, reads no clock and awaits
//! nothing: the driver (`porchlight-server`) owns every socket, task and
//! thread, and the scenarios in `tests/scenarios` run the core in memory on
//! the test kit (`testkit`, a feature of this crate). Here is the
//! boundary and the routing of each request; `proxy` sends requests on
//! and `deliver` brings calls and IM to endpoints and their apps.
//!
//! The core's state has owners, each behind a narrow API: `names` (this
//! node's domains, addresses and edge), `ids` (tags, branches, numbers),
//! `shield` (source rates and overload, before the router), `membership`
//! (the cluster and the lease, by which the core fences itself) and
//! `tally` (what the admin is shown); the transaction layer, the proxy
//! table, the dialer, IM sessions and the presence service own the rest.
//!
//! One SUBSCRIBE, from socket to NOTIFY, in six hops:
//! 1. `transport/src/udp.rs` (or `stream.rs`) parses it off the loop;
//!    `server/src/node.rs` `Node::run` hands it in as [`Input::Received`];
//! 2. `core/mod.rs` `on_request` judges the source (rate, overload) and
//!    reads its [`Facts`] once (`Core::facts`);
//! 3. `router.rs` [`router::classify`] decides it is the node's own
//!    [`Service::Subscribe`](crate::router::Service); the transaction layer
//!    opens its server transaction;
//! 4. `presence/services.rs` `PresenceService::handle` admits it (the
//!    gate, the policy) and the notifier takes the subscription; `respond`
//!    answers 200;
//! 5. [`Core::poll_output`] flushes: the 200 from the transaction layer,
//!    then the first NOTIFY, written once by the notifier and handed to a
//!    client transaction as written ([`TransactionLayer::send_written`]);
//! 6. both leave as [`Action::Send`], which the driver offers to the
//!    connection or socket without waiting.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use porchlight_link::{ConnectionId, Origin, Protocol, Received, Target};
use porchlight_policy::Network;
use porchlight_sip::status;
use porchlight_sip::{
    standard_reason, via_with_received, Answer, Contacts, HeaderName, Message, MessageWriter,
    Method, Uri,
};
use porchlight_transaction::proxy::{forward, Forwarding, ProxyAction, ProxyError, ProxyTable};
use porchlight_transaction::{
    ClientKey, Output, RequestMatch, ServerKey, TimerConfig, TransactionLayer, TxId,
};

use crate::clock::Now;
use crate::cluster::{ClusterView, Lease, Share, Shared};
use crate::config::Config;
use crate::delivery::Delivery;
use crate::edge::{self, domain_of, partner_of, DialogSide, Direction, Edge, NO_PARTNER};
use crate::im_session::{first_text_of, ImSessions, InSession, OurSide, SessionKey};
use crate::outbound::{Dialer, Dispatch, NextHop, Parked, Reach};
use crate::overload::Load;
use crate::presence::{modality_of, parse_own, PresenceService};
use crate::router::{self, Facts, Holder, RouteCtx, Source};
use crate::status::{warn_if_expiring, Query, RefusedCount, Reply, SentMessage, Status};
use crate::uas::{answer_malformed, LocalNames, SERVER};
use crate::webhook::{Outcome, WebhookMessage};
use crate::wire::{self, response_target, BranchKind};
use ids::Ids;
use membership::Membership;
use names::Names;
use shield::{Entry, Shield};
use tally::Tally;

mod deliver;
mod ids;
mod membership;
mod names;
mod proxy;
mod shield;
mod tally;

/// What the core asks of the transport: facts about open connections,
/// never I/O.
pub trait Links: Reach + Send + Sync {
    /// The protocol of an open connection, for the Via of what is sent on it.
    fn connection_protocol(&self, id: ConnectionId) -> Option<Protocol>;
}

/// What the core asks the driver to do.
#[derive(Debug)]
pub enum Action {
    /// Send bytes to a target the dialer found ready; if they cannot go,
    /// the driver hands them back as [`Input::SendFailed`].
    Send {
        /// Where.
        target: Target,
        /// The bytes and the transaction to tell.
        message: Parked,
    },
    /// Find and open the way to a next hop; the answer comes back as
    /// [`Input::Dialed`].
    Dial {
        /// The destination.
        hop: NextHop,
        /// A partner's pinned proxy, which replaces DNS.
        pinned: Option<porchlight_policy::ProxyAddress>,
    },
    /// Deliver a text to an app's webhook; [`Input::Posted`] tells how it went.
    Post {
        /// The delivery's number.
        delivery: u64,
        /// The app's webhook.
        webhook: porchlight_endpoints::WebhookConfig,
        /// What to post.
        message: WebhookMessage,
    },
    /// Run an endpoint's health probe (replacing any running one); its
    /// verdicts come back as [`Input::Verdict`].
    StartProbe {
        /// The endpoint's slot.
        endpoint: usize,
        /// The probe's number, which its verdicts carry.
        probe: u64,
        /// What to probe, how often.
        health: porchlight_endpoints::HealthConfig,
    },
    /// Stop an endpoint's health probe.
    StopProbe {
        /// The endpoint's slot.
        endpoint: usize,
    },
    /// The trusted networks of the policy now in force, for the transport:
    /// connections from them draw on the reserved slots.
    TrustedNetworks(Vec<Network>),
    /// Write a change of this node's sources (or an admin's setting) where
    /// the other nodes of the cluster read it. Never waited for: a change
    /// that cannot be written is healed by the driver's next sweep.
    Share(Share),
    /// Follow the shared sources of exactly these endpoints (canonical
    /// URIs), reading each whole once and then its changes as
    /// [`Input::Shared`]; sent at start and whenever the endpoints change.
    Follow(Vec<String>),
}

/// What happens to the core.
pub enum Input {
    /// A message, or bytes that are not one, from the network.
    Received(Received),
    /// The load after a batch of messages.
    Load(Load),
    /// A dial finished.
    Dialed {
        /// What was dialled.
        hop: NextHop,
        /// The way found, or why none was (for the log).
        result: Result<Target, String>,
    },
    /// A message could not be sent.
    SendFailed(Parked),
    /// A health probe's verdict.
    Verdict {
        /// The endpoint's slot.
        endpoint: usize,
        /// The probe's number.
        probe: u64,
        /// Whether the app answered healthy.
        healthy: bool,
    },
    /// A webhook delivery ended.
    Posted {
        /// The delivery's number.
        delivery: u64,
        /// How it ended.
        outcome: Outcome,
    },
    /// The admin surface asks.
    Query(Query),
    /// What other nodes of the cluster said of an endpoint.
    Shared(Shared),
    /// The cluster's members and the driver's counts, for status.
    Cluster(ClusterView),
    /// Subscriptions another node made, whose lease lapsed, to take over.
    Adopt(Vec<porchlight_presence::SavedSubscription<String>>),
    /// The cluster lease as last renewed (or given up): the core fences
    /// itself when it runs out.
    Lease(Lease),
    /// Another node took this node's subscriptions over while its lease
    /// was lost: they are dropped here, and new ones are made in `era`.
    Retired {
        /// The node's new era.
        era: u64,
    },
}

/// Everything the node decides, without I/O: messages and reports in,
/// [`Action`]s out, time passed in. The driver owns every socket and task.
pub struct Core {
    /// What the transport knows about open connections: facts, no I/O.
    links: Arc<dyn Links>,
    /// What the driver is to do, in order.
    actions: VecDeque<Action>,
    /// Every transaction, server and client (RFC 3261 §17).
    layer: TransactionLayer<NextHop>,
    /// This node's names, addresses and edge.
    names: Names,
    /// Endpoints, policy, registrations, publications and subscriptions.
    presence: PresenceService,
    /// Tags, branches and numbers, unique to this node.
    ids: Ids,
    /// Proxied requests in progress (edge mode).
    proxy: ProxyTable<Branch>,
    /// Messages waiting for a partner's edge or a host name to be found.
    dialer: Dialer,
    /// What the admin is shown: age, partners, history, dials.
    tally: Tally,
    /// MESSAGEs waiting for their webhook delivery, by delivery number.
    posting: HashMap<u64, Posting>,
    /// Requests this node sent on its own (IM from an endpoint), with who
    /// waits for the final response.
    originated: HashMap<ClientKey, Option<Reply<SentMessage>>>,
    /// IM sessions the node answers for webhook apps.
    sessions: ImSessions,
    /// The number of each probed endpoint's running health probe, by
    /// slot: a stopped probe's late verdicts are ignored.
    probes: HashMap<usize, u64>,
    /// Source rates and overload, in front of the router.
    shield: Shield,
    /// The cluster and this node's lease in it.
    membership: Membership,
}

/// A text whose webhook delivery is under way.
struct Posting {
    /// Who waits for the outcome.
    waiting: Waiting,
    endpoint: usize,
    upstream: Upstream,
    /// The IM session it came in, where the app's reply goes.
    session: Option<SessionKey>,
}

/// Who waits for a webhook delivery's outcome.
enum Waiting {
    /// The sender's server transaction.
    Transaction(ServerKey),
    /// An app writing to another endpoint of this node through the API.
    Api(Reply<SentMessage>),
    /// Nobody: the first text of an IM session, whose INVITE is answered.
    Nobody,
}

impl Posting {
    /// The text to hand over: the request's body, or for the first text
    /// of a session, what its INVITE carries in `ms-text-format`.
    fn text(&self) -> Option<(String, String)> {
        let request = &self.upstream.request;
        match self.waiting {
            Waiting::Nobody => first_text_of(request),
            Waiting::Transaction(_) | Waiting::Api(_) => Some((
                request.first_value(HeaderName::ContentType).map_or_else(
                    || "text/plain".to_owned(),
                    |ct| String::from_utf8_lossy(ct).trim().to_owned(),
                ),
                String::from_utf8_lossy(request.body()).into_owned(),
            )),
        }
    }
}

/// What a proxied request needs kept to answer upstream itself.
struct Upstream {
    request: Message,
    origin: Origin,
}

/// A proxied branch: the request it serves, and the registration it was
/// sent to, if any (dropped when its flow turns out to be gone).
struct Branch {
    upstream: Upstream,
    registration: Option<(usize, String)>,
}

/// What the node brought up before the core takes over: its transport's
/// facts, its names, and the state restored from the store.
pub struct Started {
    /// What the transport knows about open connections.
    pub links: Arc<dyn Links>,
    /// The bound listening addresses.
    pub local_addrs: Vec<(Protocol, SocketAddr)>,
    /// The names and addresses that mean this node.
    pub local: LocalNames,
    /// Endpoints, policy and restored subscriptions.
    pub presence: PresenceService,
    /// The transaction timers.
    pub timers: TimerConfig,
    /// Seeds tags and branches, unique to this node.
    pub tag_seed: u64,
    /// Keys the edge's Record-Route tokens.
    pub edge_secret: [u8; 32],
    /// Subscriptions brought back from the store.
    pub restored: usize,
    /// Each endpoint's health probe, by slot.
    pub probes: Vec<(usize, Option<porchlight_endpoints::HealthConfig>)>,
    /// When, on both clocks.
    pub now: Now,
}

impl Core {
    /// The core of a node configured by `config`, taking over what was
    /// brought up before it; the health probes to start wait as actions.
    pub fn new(config: &Config, started: Started) -> Core {
        let probes = started.probes;
        let mut core = Core {
            links: started.links,
            actions: VecDeque::new(),
            layer: TransactionLayer::new(started.timers),
            names: Names {
                domains: config.node.domains.clone(),
                local: started.local,
                listening: started.local_addrs,
                edge: Edge {
                    internal: edge::address_of(&config.edge.internal_next_hop),
                    secret: started.edge_secret,
                },
                trust_header: config.edge.trust_header.clone(),
                record_route_host: (!config.edge.record_route_host.is_empty())
                    .then(|| config.edge.record_route_host.clone()),
            },
            presence: started.presence,
            ids: Ids::new(started.tag_seed),
            proxy: ProxyTable::new(std::time::Duration::from_secs(config.timers.timer_c_secs)),
            dialer: Dialer::new(config.limits.max_parked_per_destination),
            tally: Tally::new(
                started.now.mono,
                config.admin.history_interval_secs,
                started.restored,
            ),
            posting: HashMap::new(),
            originated: HashMap::new(),
            sessions: ImSessions::new(config.limits.max_im_sessions, started.timers),
            probes: HashMap::new(),
            shield: Shield::new(&config.limits),
            membership: Membership::new(Duration::from_secs(config.store.renotify_window_secs)),
        };
        core.tell_trusted_networks();
        core.set_probes(probes);
        if let Some(cluster) = &config.cluster {
            core.membership.set_view(ClusterView {
                node: cluster.node_id,
                ..ClusterView::default()
            });
            core.actions
                .push_back(Action::Follow(core.presence.shared_endpoints()));
        }
        core
    }

    /// Takes over another node's subscriptions: each leaves from this
    /// node from now on (our Via and Contact on its transport), so the
    /// watcher's answers and refreshes come here.
    fn adopt(&mut self, saved: Vec<porchlight_presence::SavedSubscription<String>>, now: Now) {
        let count = saved.len();
        let relocated = saved
            .into_iter()
            .filter_map(|mut s| {
                // "SIP/2.0/UDP host:port": the transport it was saved on.
                let token = s.flow.via.split(' ').next()?.rsplit('/').next()?;
                let protocol = Protocol::from_via_token(token)?;
                let (_, addr) = self.names.listening.iter().find(|(p, _)| *p == protocol)?;
                let host = match addr.ip() {
                    ip if ip.is_unspecified() => self.names.domains[0].clone(),
                    std::net::IpAddr::V4(ip) => ip.to_string(),
                    std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                };
                (s.flow.via, s.flow.contact) =
                    wire::our_via_and_contact(protocol, &host, addr.port());
                Some(s)
            })
            .collect();
        let adopted = self
            .presence
            .adopt(relocated, self.membership.renotify_window, now);
        tracing::info!(
            adopted,
            offered = count,
            "took over subscriptions of a node whose lease is gone (lapsed, or given up by a drain); re-notifying them paced over {}s",
            self.membership.renotify_window.as_secs()
        );
    }

    /// Tells the driver the trusted networks of the policy in force.
    fn tell_trusted_networks(&mut self) {
        let networks = self
            .presence
            .policy()
            .edge
            .trusted_networks
            .iter()
            .filter_map(|n| Network::parse(n))
            .collect();
        self.actions.push_back(Action::TrustedNetworks(networks));
    }

    /// The presence service, for the store writer to take changes from.
    pub fn presence_mut(&mut self) -> &mut PresenceService {
        &mut self.presence
    }

    /// Server transactions open, a measure of load.
    pub fn server_transactions(&self) -> usize {
        self.layer.len().0
    }

    /// Subscriptions this node holds, which a cluster member tells the
    /// others (so an admin sees where the watchers are).
    pub fn subscriptions_active(&self) -> u64 {
        self.presence.notifier_stats().0.active
    }

    /// The store writer's part of the status, from the core's side:
    /// changes not yet handed over, subscriptions restored at start and
    /// still being re-notified.
    pub fn store_progress(&self) -> (usize, usize, usize) {
        (
            self.presence.changes_pending(),
            self.tally.restored,
            self.presence.recovering(),
        )
    }
}

impl Core {
    /// Takes one input; what the driver is to do then comes out of
    /// [`poll_output`](Self::poll_output).
    pub fn handle(&mut self, now: Now, input: Input) {
        self.fence(now);
        let wall = now.unix() as i64;
        match input {
            Input::Received(received) => {
                let span = match &received {
                    Received::Message(message, origin) => {
                        self.note_certificate(origin, wall);
                        if message.is_request() {
                            self.request_span(message, origin)
                        } else {
                            tracing::Span::none()
                        }
                    }
                    Received::Malformed { .. } => tracing::Span::none(),
                };
                let _in_span = span.entered();
                self.on_received(received, now)
            }
            Input::Load(load) => self.shield.on_load(load),
            Input::Dialed { hop, result } => self.on_dialed(hop, result, now),
            Input::SendFailed(message) => self.fail(message, now),
            Input::Verdict {
                endpoint,
                probe,
                healthy,
            } => {
                if self.probes.get(&endpoint) == Some(&probe) {
                    self.presence.on_health(endpoint, healthy, now);
                }
            }
            Input::Posted { delivery, outcome } => self.on_posted(delivery, outcome, now),
            Input::Query(query) => self.answer_query(query, now),
            Input::Shared(shared) => self.presence.apply_shared(shared, now),
            Input::Cluster(view) => self.membership.set_view(view),
            Input::Adopt(saved) => self.adopt(saved, now),
            Input::Lease(lease) => {
                self.membership.set_lease(lease);
                self.fence(now);
            }
            Input::Retired { era } => {
                self.presence.retire_subscriptions(era);
            }
        }
    }

    /// The next thing for the driver to do. What a batch of inputs set in
    /// motion is gathered here, once: every answer of the batch before the
    /// NOTIFYs it causes.
    pub fn poll_output(&mut self, now: Now) -> Option<Action> {
        if self.actions.is_empty() {
            self.fence(now);
            self.flush(now);
        }
        self.actions.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has work.
    pub fn poll_timeout(&self, now: Now) -> Option<Instant> {
        [
            self.layer.next_deadline(),
            self.presence.next_deadline(now),
            self.proxy.next_deadline(),
            self.sessions.next_deadline(),
            self.membership.runs_out(now.mono),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Time has come to `now`: timers fire.
    pub fn handle_timeout(&mut self, now: Now) {
        self.fence(now);
        self.layer.handle_timeout(now.mono);
        self.presence.handle_timeout(now);
        for action in self.proxy.handle_timeout(now.mono) {
            self.apply(action, now);
        }
        for (bytes, target) in self.sessions.retransmissions(now.mono) {
            self.send_detached(target, bytes);
        }
        self.sessions.sweep(now.mono);
    }

    /// Starts, restarts (with new settings) or stops endpoints' health
    /// probes, by slot.
    fn set_probes(&mut self, probes: Vec<(usize, Option<porchlight_endpoints::HealthConfig>)>) {
        for (endpoint, health) in probes {
            self.probes.remove(&endpoint);
            let Some(health) = health else {
                self.actions.push_back(Action::StopProbe { endpoint });
                continue;
            };
            let probe = self.ids.probe();
            self.probes.insert(endpoint, probe);
            self.actions.push_back(Action::StartProbe {
                endpoint,
                probe,
                health,
            });
        }
    }

    /// The node's own refusal counters (the transport keeps its own).
    fn refused_counts(&self) -> Vec<RefusedCount> {
        let (unchecked, wrong) = self.presence.guess_counts();
        self.shield
            .refused()
            .chain([
                ("wrong password", wrong),
                ("password guessing: refused unchecked", unchecked),
            ])
            .map(|(reason, count)| RefusedCount {
                reason: reason.to_owned(),
                count,
            })
            .collect()
    }

    /// The node's status as the core knows it; the driver adds what the
    /// transport and the store writer count.
    pub fn status(&self, now: Now) -> Status {
        let (stats, in_flight) = self.presence.notifier_stats();
        let (servers, clients) = self.layer.len();
        Status {
            version: env!("CARGO_PKG_VERSION"),
            domains: self.names.domains.clone(),
            uptime_secs: now
                .mono
                .saturating_duration_since(self.tally.started)
                .as_secs(),
            subscriptions_active: stats.active,
            subscriptions_created: stats.created,
            subscriptions_refreshed: stats.refreshed,
            subscriptions_expired: stats.expired,
            notifies_sent: stats.notifies_sent,
            notifies_failed: stats.notifies_failed,
            notifies_in_flight: in_flight,
            connections: 0,
            overloaded: self.shield.is_shedding(),
            server_transactions: servers,
            client_transactions: clients,
            proxied_in_progress: self.proxy.len(),
            im_sessions: self.sessions.len(),
            webhook_deliveries: self.posting.len(),
            parked: self.dialer.parked(),
            backlogged: 0,
            dials_succeeded: self.tally.dials_succeeded,
            dials_failed: self.tally.dials_failed,
            decisions: self.presence.decision_counts(),
            refused: self.refused_counts(),
            partners: self
                .tally
                .partners
                .list()
                .into_iter()
                .map(|mut p| {
                    p.requests_refused = self.presence.partner_refusals(&p.partner);
                    p
                })
                .collect(),
            endpoints: self.presence.endpoint_views(),
            store: None,
            certificate_not_after: None,
            capture: None,
            cluster: self.membership.view().cloned().map(|mut view| {
                view.applied = self.presence.shared_applied().unwrap_or(0);
                view
            }),
        }
    }

    /// The span every log line about one received request is in, so
    /// machine-read (JSON) logs carry its Call-ID, the partner whose
    /// certificate it came under and the endpoint of ours it addresses.
    /// At WARN level, so it is there whenever warnings are logged; when
    /// logging is off nothing of it is built. Responses get none: they
    /// are a fan-out's bulk (a 200 per NOTIFY) and rarely logged, and a
    /// span costs about a microsecond.
    fn request_span(&self, message: &Message, origin: &Origin) -> tracing::Span {
        // Built only when enabled, in one go: a field recorded later costs
        // a second formatting of the span's fields.
        tracing::warn_span!(
            "sip",
            call_id = message.call_id().unwrap_or_default(),
            partner = origin
                .peer
                .as_deref()
                .and_then(|p| p.domains.first())
                .map(String::as_str),
            endpoint = message
                .request_uri()
                .filter(|uri| self.names.local.names(uri)),
        )
    }

    /// Remembers when the certificate a partner presented expires, and
    /// warns once per certificate when that is near.
    fn note_certificate(&mut self, origin: &Origin, now_unix: i64) {
        let Some(peer) = origin.peer.as_deref() else {
            return;
        };
        let Some(partner) = peer.domains.first() else {
            return;
        };
        if self
            .tally
            .partners
            .note_certificate(partner, peer.not_after)
        {
            warn_if_expiring(&format!("partner {partner}"), peer.not_after, now_unix);
        }
    }

    /// Keeps a sample of `status` (the driver's, with what the transport
    /// counts) taken at `at` (Unix seconds) for the console's charts.
    pub fn record_history(&mut self, at: i64, status: &Status) {
        self.tally.history.record(status.sample(at));
    }

    /// How often the driver is to call [`record_history`](Self::record_history).
    pub fn history_interval(&self) -> Duration {
        Duration::from_secs(self.tally.history.interval_secs())
    }

    /// Each partner's certificate expiry as last presented, for the
    /// driver's daily look at what is about to lapse.
    pub fn partner_certificates(&self) -> Vec<(String, i64)> {
        self.tally
            .partners
            .certificates()
            .map(|(partner, not_after)| (partner.to_owned(), not_after))
            .collect()
    }

    /// Answers the admin surface from the state the core owns.
    fn answer_query(&mut self, query: Query, now: Now) {
        match query {
            // The driver answers it, adding what the transport counts.
            Query::Status(reply) => {
                reply.send(self.status(now));
            }
            Query::Endpoint(uri, reply) => {
                reply.send(self.presence.endpoint_detail(&uri));
            }
            Query::Refusals(reply) => {
                reply.send(self.presence.refusals());
            }
            Query::SetPresence(uri, state, reply) => {
                reply.send(self.presence.set_override(&uri, state, now));
            }
            Query::Apply(policy, mut endpoints, reply) => {
                let applied = self.presence.apply(*policy, &mut endpoints, now);
                if self.membership.view().is_some()
                    && !(applied.added.is_empty() && applied.removed.is_empty())
                {
                    self.actions
                        .push_back(Action::Follow(self.presence.shared_endpoints()));
                }
                self.tell_trusted_networks();
                self.end_refused_sessions(now);
                self.set_probes(applied.probes);
                let imported = crate::status::Imported {
                    endpoints_added: applied.added,
                    endpoints_changed: applied.changed,
                    endpoints_removed: applied.removed,
                    ..crate::status::Imported::default()
                };
                reply.send((imported, endpoints));
            }
            Query::History(reply) => reply.send(self.tally.history.view()),
            Query::SendMessage(message, reply) => {
                let Some(endpoint) = self.presence.directory().resolve(&message.from) else {
                    reply.send(SentMessage {
                        status: 404,
                        reason: format!("{} is not an endpoint of this node", message.from),
                    });
                    return;
                };
                let content_type = message.content_type.as_deref().unwrap_or("text/plain");
                self.send_message(
                    endpoint,
                    &message.to,
                    content_type,
                    &message.text,
                    Some(reply),
                    now,
                );
            }
        }
    }

    /// Sends what the transaction layer and the presence service have for
    /// the network, feeding transaction outcomes back to the service, until
    /// neither has more.
    fn flush(&mut self, now: Now) {
        loop {
            let mut progressed = false;
            while let Some(output) = self.layer.poll_output() {
                progressed = true;
                match output {
                    Output::Send { id, to, bytes } => {
                        let parked = Parked {
                            transaction: Some(id),
                            bytes,
                        };
                        self.send(&to, parked, now);
                    }
                    Output::Response { id, response } => self.on_answer(id, &response, now),
                    Output::Timeout(TxId::Client(id)) => self.on_no_answer(id, true, now),
                    Output::TransportError(TxId::Client(id)) => self.on_no_answer(id, false, now),
                    Output::Timeout(id) | Output::TransportError(id) => {
                        tracing::debug!(?id, "server transaction ended without ACK or transport")
                    }
                }
            }
            while let Some(share) = self.presence.poll_share() {
                self.actions.push_back(Action::Share(share));
            }
            while let Some(out) = self.presence.poll(now) {
                progressed = true;
                let Some(key) = out.transaction else {
                    let parked = Parked {
                        transaction: None,
                        bytes: out.bytes,
                    };
                    self.send(&out.target, parked, now);
                    continue;
                };
                // Written by the service under its own key: not parsed again.
                // A request that cannot go out ends what it was for (its
                // subscription), so nothing waits on an answer that cannot come.
                let branch = key.branch.clone();
                if let Err(e) =
                    self.layer
                        .send_written(key, out.bytes, out.target, out.reliable, now.mono)
                {
                    tracing::error!("cannot start a client transaction: {e}");
                    self.presence.on_failure(&branch, now);
                }
                // Send what that transaction produced before taking more.
                break;
            }
            if !progressed {
                return;
            }
        }
    }

    /// A response to a request this node sent, to whoever sent it: the
    /// branch's kind says who.
    fn on_answer(&mut self, id: ClientKey, response: &Message, now: Now) {
        match BranchKind::of(&id.branch) {
            Some(BranchKind::Im) if self.originated.contains_key(&id) => {
                let status = response.status().unwrap_or(status::SERVER_INTERNAL_ERROR);
                if status >= 200 {
                    let reason = String::from_utf8_lossy(response.reason().unwrap_or_default());
                    self.originated_ended(&id, status, &reason);
                }
            }
            Some(BranchKind::Proxied) if self.proxy.contains(&id) => {
                for action in self.proxy.on_response(&id, response, now.mono) {
                    self.apply(action, now);
                }
            }
            Some(BranchKind::Notify | BranchKind::Keepalive)
                if self.presence.on_response(&id.branch, response, now) => {}
            _ => tracing::debug!(?id, "stray response"),
        }
    }

    /// A request this node sent got no answer: it timed out, or the
    /// transport could not carry it.
    fn on_no_answer(&mut self, id: ClientKey, timed_out: bool, now: Now) {
        match BranchKind::of(&id.branch) {
            Some(BranchKind::Im) if self.originated.contains_key(&id) => {
                let (code, reason) = if timed_out {
                    (status::REQUEST_TIMEOUT, "Request Timeout (no answer)")
                } else {
                    (
                        status::SERVICE_UNAVAILABLE,
                        "Service Unavailable (the next hop cannot be reached)",
                    )
                };
                self.originated_ended(&id, code, reason);
            }
            Some(BranchKind::Proxied) if self.proxy.contains(&id) => {
                let action = self.proxy.on_failure(&id, timed_out);
                action.into_iter().for_each(|a| self.apply(a, now));
            }
            Some(BranchKind::Notify | BranchKind::Keepalive) => {
                self.presence.on_failure(&id.branch, now)
            }
            _ => tracing::debug!(?id, "no answer to a request nobody waits for"),
        }
    }

    /// Sends a message to its next hop, or parks it while the hop is found.
    /// A message that cannot go ends its transaction now rather than at
    /// its timeout.
    fn send(&mut self, hop: &NextHop, message: Parked, now: Now) {
        if self.fences(&message, now) {
            return;
        }
        if let NextHop::Partner(partner) = hop {
            self.tally.partners.count(partner, true);
        }
        if let Some((target, message)) = self.dispatch(hop, message, now) {
            self.actions.push_back(Action::Send { target, message });
        }
    }

    /// Whether `message` is a NOTIFY (a first one or a retransmission) that
    /// a fenced node must not send: another node may be notifying that
    /// watcher now. Its transaction goes on and times out as if unanswered.
    fn fences(&self, message: &Parked, now: Now) -> bool {
        matches!(&message.transaction, Some(TxId::Client(key)) if key.method == "NOTIFY")
            && self.membership.fenced(now.mono)
    }

    /// Takes the fence up or down as the lease and the time say: fenced,
    /// the node sends no NOTIFY and takes no new subscription.
    fn fence(&mut self, now: Now) {
        let fenced = self.membership.fenced(now.mono);
        if fenced != self.presence.fenced() {
            self.presence.set_fenced(fenced);
        }
    }

    /// Where a message can go now; otherwise parks it (starting a dial for
    /// the first one) or, beyond the bound, fails it.
    fn dispatch(&mut self, hop: &NextHop, message: Parked, now: Now) -> Option<(Target, Parked)> {
        let dispatch = self.dialer.dispatch(hop, message, now.mono, &*self.links);
        match dispatch {
            Dispatch::Send(target, message) => return Some((target, message)),
            Dispatch::Dial => self.start_dial(hop.clone()),
            Dispatch::Wait => {}
            Dispatch::Full(message) => {
                tracing::warn!(?hop, "too many messages wait for this destination");
                self.fail(message, now);
            }
        }
        None
    }

    fn fail(&mut self, message: Parked, now: Now) {
        if let Some(id) = message.transaction {
            self.layer.transport_error(&id, now.mono);
        }
    }

    /// Asks the driver to find the way to `hop`, a partner by its pinned
    /// proxy or DNS.
    fn start_dial(&mut self, hop: NextHop) {
        let pinned = match &hop {
            NextHop::Partner(name) => self.presence.policy().route_to(name).pinned,
            _ => None,
        };
        self.actions.push_back(Action::Dial { hop, pinned });
    }

    /// A dial finished: what waited for it goes, or fails.
    fn on_dialed(&mut self, hop: NextHop, result: Result<Target, String>, now: Now) {
        let waiting = self.dialer.finished(&hop, result.as_ref().ok(), now.mono);
        match result {
            Ok(target) => {
                self.tally.dials_succeeded += 1;
                let waiting: Vec<Parked> = waiting
                    .into_iter()
                    .filter(|m| !self.fences(m, now))
                    .collect();
                for message in waiting {
                    self.actions.push_back(Action::Send {
                        target: target.clone(),
                        message,
                    });
                }
            }
            Err(e) => {
                self.tally.dials_failed += 1;
                tracing::warn!(
                    ?hop,
                    waiting = waiting.len(),
                    "destination unreachable: {e}"
                );
                for message in waiting {
                    self.fail(message, now);
                }
            }
        }
    }

    /// Sends what no transaction follows (stateless answers,
    /// retransmissions of our own): at once when the target can take it,
    /// else from a task of its own.
    fn send_detached(&mut self, target: Target, bytes: Bytes) {
        let message = Parked {
            transaction: None,
            bytes,
        };
        self.actions.push_back(Action::Send { target, message });
    }

    fn on_received(&mut self, received: Received, now: Now) {
        match received {
            Received::Message(message, origin) if message.is_request() => {
                self.on_request(message, origin, now)
            }
            Received::Message(response, _) => {
                if response.validate_response().is_ok() {
                    self.layer.receive_response(response, now.mono);
                }
            }
            Received::Malformed {
                error,
                head,
                origin,
            } => {
                tracing::debug!(source = %origin.source, "malformed message: {error}");
                if let Some(answer) = head.as_ref().and_then(|h| answer_malformed(&error, h)) {
                    let head = head.expect("answer implies head");
                    let target = response_target(&head, &origin);
                    let bytes = self.render(&head, &origin, &answer);
                    self.send_detached(target, bytes);
                }
            }
        }
    }

    fn on_request(&mut self, request: Message, origin: Origin, now: Now) {
        // First and cheapest: an anonymous source past its rate is not
        // answered at all; under overload, new work is turned away before
        // it is parsed further, decided or given a transaction.
        let source = Source::of(&origin, &self.route_ctx());
        let anonymous = matches!(source, Source::Stranger);
        match self
            .shield
            .check(&request, origin.source.ip(), anonymous, now.mono)
        {
            Entry::Pass => {}
            Entry::Drop => return,
            Entry::Shed(answer) => {
                let tag = match ServerKey::of(&request) {
                    Ok(key) => self.ids.stateless_tag(&key),
                    Err(_) => self.ids.tag(""),
                };
                let bytes = self.write_answer(&request, &origin, &answer, &tag);
                return self.send_detached(response_target(&request, &origin), bytes);
            }
        }
        if let Some(partner) = origin.peer.as_ref().and_then(|p| p.domains.first()) {
            self.tally.partners.count(partner, false);
        }
        let target = response_target(&request, &origin);
        let facts = self.facts(&request, &origin, source);
        let dispatch = router::classify(&facts, &self.route_ctx());
        let answer = match dispatch {
            router::Dispatch::Cancel => return self.cancel(&request, &origin, &target, now),
            router::Dispatch::InSession => {
                let session = SessionKey::of(&request).expect("a session's request has its key");
                return self.in_session(session, request, origin, target, now);
            }
            router::Dispatch::Proxy(hop) => {
                return self.proxy_request(request, origin, target, hop, now)
            }
            router::Dispatch::Deliver {
                endpoint,
                consumed_routes,
            } => return self.deliver(request, origin, target, endpoint, consumed_routes, now),
            router::Dispatch::Absorb => None,
            router::Dispatch::Answer(answer) => Some(Ok(answer)),
            router::Dispatch::Service(service) => Some(Err(service)),
        };
        let reliable = origin.protocol.is_reliable();
        match self.layer.receive_request(
            &request,
            NextHop::Direct(target.clone()),
            reliable,
            now.mono,
        ) {
            Ok(RequestMatch::New(key)) => {
                let answer = match answer {
                    Some(Ok(answer)) => answer,
                    Some(Err(service)) => self
                        .presence
                        .handle(service, &request, &origin, &facts, now),
                    None => return,
                };
                self.respond(&key, &request, &origin, &answer, now);
            }
            Ok(_) => {}
            // Too malformed for a transaction key: answer statelessly.
            Err(_) => {
                let answer = answer.map(|answer| {
                    answer.unwrap_or_else(|_| {
                        Answer::new(status::BAD_REQUEST, "Bad Request (no transaction key)")
                    })
                });
                if let Some(answer) = answer {
                    let bytes = self.render(&request, &origin, &answer);
                    self.send_detached(target, bytes);
                }
            }
        }
    }

    /// What the router reads requests with: the node's names, its edge,
    /// the policy in force and whether it may take subscriptions.
    fn route_ctx(&self) -> RouteCtx<'_> {
        RouteCtx {
            local: &self.names.local,
            edge: &self.names.edge,
            policy: self.presence.policy(),
            own_domains: self.presence.own_domains(),
            fenced: self.presence.fenced(),
        }
    }

    /// The facts of a request: what it and its origin say, and what the
    /// node's state says of it — each looked up once.
    fn facts<'m>(&self, request: &'m Message, origin: &Origin, source: Source) -> Facts<'m> {
        let mut facts = Facts::read(request, source, &self.route_ctx());
        let directory = self.presence.directory();
        facts.endpoint = request.request_uri().and_then(|uri| directory.resolve(uri));
        facts.from_endpoint = facts.is_new_call()
            && !facts.source.is_inside()
            && self.presence.sent_by_endpoint(request, origin);
        facts.in_session = facts.in_dialog
            && !self.sessions.is_empty()
            && SessionKey::of(request).is_some_and(|k| self.sessions.contains(&k));
        facts.cancels_proxied = facts.method == Method::Cancel
            && !self.proxy.is_empty()
            && ServerKey::of(request).is_ok_and(|k| self.proxy.serves(&k.cancelled_invite()));
        if facts.method == Method::Subscribe {
            facts.held_by = self.holder(request);
        }
        facts
    }

    /// Our Via (without branch) for a request sent to `next`.
    fn via_for(&self, next: &NextHop) -> String {
        let protocol = self.protocol_to(next);
        wire::via(protocol, &self.names.sent_by(protocol))
    }

    /// The transport a request to `next` travels on.
    fn protocol_to(&self, next: &NextHop) -> Protocol {
        match next {
            NextHop::Direct(Target::Connection(id)) => {
                self.links.connection_protocol(*id).unwrap_or(Protocol::Tls)
            }
            next => next.protocol(),
        }
    }

    /// Answers a request through its server transaction.
    fn respond(
        &mut self,
        key: &ServerKey,
        request: &Message,
        origin: &Origin,
        answer: &Answer,
        now: Now,
    ) {
        // Refusals are answered without keeping state, each retransmission
        // again with the same To tag (RFC 3261 §8.2.7), so a flood of them
        // holds nothing for Timer J; what is accepted keeps its transaction.
        if answer.code >= 300 {
            let tag = self.ids.stateless_tag(key);
            let bytes = self.write_answer(request, origin, answer, &tag);
            self.layer.refuse(key, bytes);
        } else {
            let bytes = self.render(request, origin, answer);
            self.layer.respond(key, answer.code, bytes, now.mono);
        }
    }

    fn render(&mut self, request: &Message, origin: &Origin, answer: &Answer) -> Bytes {
        let tag = self.ids.tag("");
        self.write_answer(request, origin, answer, &tag)
    }

    /// Writes an answer with `tag` for a To that has none.
    fn write_answer(
        &self,
        request: &Message,
        origin: &Origin,
        answer: &Answer,
        tag: &str,
    ) -> Bytes {
        let top_via = request
            .top_via()
            .ok()
            .and_then(|via| via_with_received(&via, origin.source.ip(), origin.source.port()));
        let mut answer = answer.clone();
        // Details are for the inside; a stranger learns what the code says.
        if !self.presence.speaks_for_inside(origin) {
            answer.reason = standard_reason(answer.code).to_owned();
        }
        answer.headers.push(("Server", SERVER.to_owned()));
        answer.write(request, top_via.as_deref(), tag)
    }
}

/// The answer for an IM whose headers cannot make a message.
fn unwritable() -> Answer {
    Answer::new(
        status::BAD_REQUEST,
        "Bad Request (the message cannot be written)",
    )
}

/// Tells an app that asked through the API how its request ended.
fn tell(reply: Option<Reply<SentMessage>>, answer: Answer) {
    if let Some(reply) = reply {
        reply.send(SentMessage {
            status: answer.code,
            reason: answer.reason,
        });
    }
}
