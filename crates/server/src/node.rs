//! The running node: binds the transports from the configuration, opens
//! the store, and drives the [`Core`] — the only place with sockets,
//! tasks, threads and `.await`. It turns what happens into the core's
//! inputs and carries out its actions without ever waiting for a peer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use porchlight_policy::Network;
use porchlight_resolve::Resolver;
use porchlight_sip::Limits;
use porchlight_store::{Batch, Durability, EmbeddedStore, NodeSecrets, Store};
use porchlight_transaction::TimerConfig;
use porchlight_transport::pki::{AltName, CertificateAuthority};
use porchlight_transport::{
    Capture, CaptureConfig, ClientAuth, ConnectionId, Offered, Protocol, Received, SendError,
    SlotLimits, Target, TlsSettings, Transport, TransportConfig, TrustedSource,
};
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use porchlight_node::clock::Now;
use porchlight_node::config::{ClientAuthSetting, Config, DurabilitySetting};
use porchlight_node::core::{Action, Core, Input, Links, Started};
use porchlight_node::outbound::{NextHop, Parked, Reach};
use porchlight_node::overload::Load;
use porchlight_node::presence::PresenceService;
use porchlight_node::status::{
    warn_if_expiring, CaptureStatus, Query, RefusedCount, Status, StoreStatus,
};
use porchlight_node::webhook::Outcome;

use crate::backlog::{Backlogs, Held};
use crate::cluster::{self, ClusterError, ClusterLink, Report};
use crate::dial::{dial, DialError};
use crate::handle::NodeHandle;
use crate::health::Verdict;
use crate::persistence::{Mirror, WriteBehind};
use crate::webhook::Webhooks;

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A certificate file could not be read.
    #[error("{path}: {source}")]
    ReadFile {
        /// Which file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The certificates do not make a usable TLS configuration.
    #[error(transparent)]
    Tls(#[from] porchlight_transport::TlsError),
    /// A throw-away certificate could not be generated.
    #[error("generating a certificate: {0}")]
    Generate(#[from] porchlight_transport::pki::Error),
    /// A listener could not be bound.
    #[error("binding listener {0}: stop the program that holds it (another Porchlight?), or change [listen]")]
    Bind(std::io::Error),
    /// The system's DNS configuration could not be read.
    #[error("reading the DNS configuration (set [dns] nameservers instead): {0}")]
    Resolver(std::io::Error),
    /// The store cannot be opened or read; the node does not start rather
    /// than lose what it holds.
    #[error(transparent)]
    Store(#[from] porchlight_store::StoreError),
    /// The store's provisioned configuration does not pass the checks.
    #[error(transparent)]
    Provisioned(#[from] porchlight_node::ConfigError),
    /// The store's writer thread could not be started.
    #[error("starting the store writer: {0}")]
    Writer(std::io::Error),
    /// The capture server cannot be found, or no socket reaches it.
    #[error("[capture] hep = {collector:?}: {source}; correct the name, or remove [capture]")]
    Capture {
        /// The capture server as written.
        collector: String,
        /// Why.
        source: std::io::Error,
    },
    /// The node cannot join its cluster.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// Starts sending copies of every message to the capture server, when
/// `[capture]` names one; its name is looked up once, here.
async fn start_capture(config: &Config) -> Result<Option<Capture>, StartError> {
    let (Some(section), Some(agent_id)) = (&config.capture, config.capture_agent_id()) else {
        return Ok(None);
    };
    let failed = |source| StartError::Capture {
        collector: section.hep.0.clone(),
        source,
    };
    let collector = tokio::net::lookup_host(section.hep.0.as_str())
        .await
        .map_err(failed)?
        .next()
        .ok_or_else(|| failed(std::io::ErrorKind::NotFound.into()))?;
    let capture = Capture::start(&CaptureConfig {
        collector,
        agent_id,
        queue_depth: section.queue,
    })
    .await
    .map_err(failed)?;
    tracing::info!(%collector, agent_id, "capturing every SIP message as HEP v3");
    Ok(Some(capture))
}

/// A started node.
pub struct Node {
    transport: Transport,
    task: JoinHandle<()>,
    handle: NodeHandle,
}

impl Node {
    /// Binds every listener and starts the event loop.
    pub async fn start(mut config: Config) -> Result<Node, StartError> {
        let tls_settings = if config.listen.tls.is_empty() {
            None
        } else {
            Some(tls_settings(&config)?)
        };
        let certificate_not_after = tls_settings.as_ref().map(|tls| tls.not_after);
        let trusted_networks = TrustedNetworks::default();
        let transport_config = TransportConfig {
            udp: config.listen.udp.clone(),
            tcp: config.listen.tcp.clone(),
            tls: config.listen.tls.clone(),
            tls_settings,
            limits: limits(&config),
            slots: SlotLimits {
                max_connections: config.limits.max_connections,
                reserved_connections: config.limits.reserved_connections,
                max_per_source: config.limits.max_connections_per_source,
            },
            trusted_source: trusted_networks.source(),
            idle_timeout: config.idle_timeout(),
            handshake_timeout: Duration::from_secs(config.limits.tls_handshake_timeout_secs),
            message_timeout: Duration::from_secs(config.limits.message_timeout_secs),
            refusal_log_interval: Duration::from_secs(config.limits.refusal_log_interval_secs),
            queue_depth: config.limits.receive_queue_depth,
            connection_queue_depth: config.limits.connection_queue_depth,
            udp_buffer_bytes: config.limits.udp_buffer_bytes,
            capture: start_capture(&config).await?,
        };
        let (transport, received) = Transport::bind(transport_config)
            .await
            .map_err(StartError::Bind)?;
        let listening: Vec<_> = transport.local_addrs().iter().map(|(_, a)| *a).collect();
        let local = config.local_names(&listening);
        let timers = TimerConfig {
            t1: std::time::Duration::from_millis(config.timers.t1_ms),
            t2: std::time::Duration::from_millis(config.timers.t2_ms),
            t4: std::time::Duration::from_millis(config.timers.t4_ms),
        };
        let store = open_store(&config)?;
        let store_handle = store.clone();
        if let Some(document) = store
            .as_ref()
            .map(|s| s.provisioned())
            .transpose()?
            .flatten()
        {
            config = config.with_provisioned(&document, "the store's provisioned configuration")?;
            tracing::info!(
                "policy and endpoints from the store (set by `porchlight config import` or the \
                 provisioning commands); the configuration file's [policy] and [[endpoint]] are not used"
            );
        }
        let mut secrets = match &store {
            Some(store) => store.secrets(),
            None => NodeSecrets::generate()?,
        };
        let joined = match &config.cluster {
            Some(cluster) => {
                let holds_dialogs = match &store {
                    Some(store) => store.holds_subscriptions()?,
                    None => false,
                };
                let joined = cluster::join(&config, cluster, secrets, holds_dialogs).await?;
                if joined.provisioned != config.provisioned().to_toml() {
                    config = config.with_provisioned(
                        &joined.provisioned,
                        "the cluster's provisioned configuration",
                    )?;
                    tracing::info!(
                        "policy and endpoints from the cluster (set by an import on any node); \
                         the configuration file's and the store's are not used"
                    );
                }
                if joined.secrets != secrets {
                    if let Some(store) = &store {
                        store.adopt_secrets(joined.secrets)?;
                    }
                    secrets = joined.secrets;
                }
                Some(joined)
            }
            None => None,
        };
        let mut presence = PresenceService::new(&config, secrets.salt, clock());
        let retired = joined.as_ref().is_some_and(|j| j.retired);
        if let (Some(section), Some(joined)) = (&config.cluster, &joined) {
            // Before restoring: saved subscriptions are known by their tags.
            presence.join_cluster(section.node_id, joined.era, clock());
        }
        let (reports_tx, reports) = mpsc::channel(1024);
        let (provisioned_tx, mut provisioned) = mpsc::channel(16);
        let control = joined.as_ref().map(|j| j.control.clone());
        let cluster = config
            .cluster
            .as_ref()
            .zip(joined)
            .map(|(section, joined)| joined.spawn(section.share_queue, reports_tx, provisioned_tx));
        let mirror = cluster.as_ref().map(|link| Mirror {
            batches: link.dialogs.clone(),
            queued: link.dialogs_queued.clone(),
        });
        let (write_behind, restored) = restore(&config, store, mirror, retired, &mut presence)?;
        let (verdicts_tx, verdicts) = mpsc::channel(64);
        let probes = presence
            .directory()
            .iter()
            .map(|(slot, e)| (slot, e.health.clone()))
            .collect();
        let resolver = Arc::new(resolver(&config).map_err(StartError::Resolver)?);
        let (queries_tx, queries) = mpsc::channel(16);
        let (dials_tx, dials) = mpsc::channel(64);
        let (writable_tx, writable) = mpsc::channel(64);
        let (webhooks_tx, webhooks_done) = mpsc::channel(256);
        let _record_route_host = &config.edge.record_route_host;
        let core = Core::new(
            &config,
            Started {
                links: Arc::new(TransportLinks(transport.clone())),
                local_addrs: transport.local_addrs().to_vec(),
                local,
                presence,
                timers,
                tag_seed: config.own_seed(secrets.salt),
                edge_secret: secrets.edge_secret,
                restored,
                probes,
                now: clock(),
            },
        );
        let driver = Driver {
            core,
            transport: transport.clone(),
            resolver,
            backlogs: Backlogs::new(config.limits.connection_backlog),
            webhooks: Webhooks::default(),
            probes: HashMap::new(),
            write_behind,
            dials_tx,
            writable_tx,
            webhooks_tx,
            verdicts_tx,
            next_load_sample: Instant::now(),
            resident: 0,
            trusted_networks,
            cluster,
            lease: None,
            certificate_not_after,
        };
        let inbox = Inbox {
            received,
            verdicts,
            dials,
            writable,
            queries,
            webhooks_done,
            reports,
        };
        let flush_interval = config.store.flush_interval();
        let task = tokio::spawn(driver.run(inbox, flush_interval));
        for (protocol, addr) in transport.local_addrs() {
            tracing::info!("listening on {} {addr}", protocol.via_token());
        }
        let handle = NodeHandle {
            queries: queries_tx,
            config: Arc::new(std::sync::RwLock::new(Arc::new(config))),
            store: store_handle,
            imports: Arc::default(),
            cluster: control,
        };
        let adopting = handle.clone();
        tokio::spawn(async move {
            while provisioned.recv().await.is_some() {
                if let Err(e) = adopting.adopt_cluster_configuration().await {
                    tracing::error!("the cluster's new configuration is not in force here: {e}");
                }
            }
        });
        Ok(Node {
            transport,
            task,
            handle,
        })
    }

    /// The bound address of a protocol.
    pub fn local_addr(&self, protocol: Protocol) -> Option<SocketAddr> {
        self.transport.local_addr(protocol)
    }

    /// Where the node listens, with the admin API's address (bound by the
    /// caller), as `serve --ready-file` reports it.
    pub fn listening(&self, admin: Option<SocketAddr>) -> Listening {
        Listening {
            udp: self.local_addr(Protocol::Udp),
            tcp: self.local_addr(Protocol::Tcp),
            tls: self.local_addr(Protocol::Tls),
            admin,
        }
    }

    /// Asks the running node about itself (the admin surface).
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Runs until the event loop ends.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// The addresses a started node listens on, for scripts and tests that
/// start it on port 0: read from a file rather than from the log, whose
/// wording is for people.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Listening {
    /// SIP over UDP.
    pub udp: Option<SocketAddr>,
    /// SIP over TCP.
    pub tcp: Option<SocketAddr>,
    /// SIP over TLS.
    pub tls: Option<SocketAddr>,
    /// The admin API.
    pub admin: Option<SocketAddr>,
}

impl Listening {
    /// Writes these addresses to `path` as JSON, whole or not at all (a
    /// reader polling for the file never sees half of it).
    pub fn write(&self, path: &std::path::Path) -> std::io::Result<()> {
        let partial = path.with_extension("partial");
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&partial, json)?;
        std::fs::rename(&partial, path)
    }
}

/// The time on both clocks, for the core: the only place it is read.
fn clock() -> Now {
    Now::from_clocks(Instant::now(), SystemTime::now())
}

/// The DNS resolver `config` asks for: its `[dns] nameservers`, else the
/// system's.
pub fn resolver(config: &Config) -> std::io::Result<Resolver> {
    if config.dns.nameservers.is_empty() {
        Resolver::system()
    } else {
        Ok(Resolver::with_nameservers(&config.dns.nameservers))
    }
}

/// Opens the configured store; None when state is kept in memory only.
fn open_store(config: &Config) -> Result<Option<Arc<dyn Store>>, StartError> {
    if config.store.path.as_os_str().is_empty() {
        tracing::warn!("[store] path is empty: subscriptions will not survive a restart");
        return Ok(None);
    }
    let path = config.resolve(&config.store.path);
    let durability = match config.store.durability {
        DurabilitySetting::Process => Durability::Process,
        DurabilitySetting::Disk => Durability::Disk,
    };
    let store = EmbeddedStore::open(&path, durability)?;
    tracing::info!("store at {}", path.display());
    Ok(Some(Arc::new(store)))
}

/// Brings back the saved subscriptions, deletes those that cannot come
/// back, and starts writing changes behind, to the store and (in a
/// cluster) to Redis. A `retired` node's subscriptions were taken over by
/// another node while it was gone: they are deleted, not restored.
fn restore(
    config: &Config,
    store: Option<Arc<dyn Store>>,
    mirror: Option<Mirror>,
    retired: bool,
    presence: &mut PresenceService,
) -> Result<(Option<WriteBehind>, usize), StartError> {
    let window = std::time::Duration::from_secs(config.store.renotify_window_secs);
    let Some(store) = store else {
        if mirror.is_none() {
            return Ok((None, 0));
        }
        // Nothing to restore; every change from now on goes to Redis.
        presence.restore(Vec::new(), window, clock());
        let writer = WriteBehind::start(None, mirror).map_err(StartError::Writer)?;
        return Ok((Some(writer), 0));
    };
    let started = Instant::now();
    // In a cluster the admin's settings are the cluster's, read with the
    // rest of the shared presence; a copy kept here could be stale.
    let admin_presence = match config.cluster {
        Some(_) => Vec::new(),
        None => store.admin_presence()?,
    };
    for (endpoint, set) in admin_presence {
        let mut state = porchlight_presence::PresenceState::new(porchlight_presence::Availability(
            set.availability,
        ));
        state.note = set.note;
        if presence
            .set_override(&endpoint, Some(state), clock())
            .is_none()
        {
            // Gone with its endpoint: an endpoint added later under the
            // same URI starts from its own sources.
            tracing::info!(
                endpoint,
                "an admin's saved presence names an endpoint no longer configured; deleted"
            );
            store.save_admin_presence(&endpoint, None)?;
        }
    }
    let (contacts, mut orphans) = presence.restore_registrations(store.registrations()?, clock());
    if contacts > 0 {
        tracing::info!("restored {contacts} registered contacts");
    }
    orphans.extend(presence.restore_publications(store.publications()?, clock()));
    orphans.sort_unstable();
    orphans.dedup();
    if !orphans.is_empty() {
        tracing::info!(
            "deleted the saved registrations and publications of {} endpoints no longer configured",
            orphans.len()
        );
        store.write(&Batch {
            registrations: orphans
                .iter()
                .map(|uri| (uri.clone(), Vec::new()))
                .collect(),
            publications: orphans.into_iter().map(|uri| (uri, Vec::new())).collect(),
            ..Batch::default()
        })?;
    }
    let mut saved = store.subscriptions()?;
    if retired && !saved.is_empty() {
        tracing::warn!(
            "{} saved subscriptions were taken over by another node while this one was gone; deleted here",
            saved.len()
        );
        store.write(&Batch {
            deleted: saved.iter().map(|s| s.id.index).collect(),
            ..Batch::default()
        })?;
        saved.clear();
    }
    let found = saved.len();
    let report = presence.restore(saved, window, clock());
    if mirror.is_some() {
        // What the store brought back may not be in Redis yet (a node
        // alone joining): saved there with the first write-behind.
        presence.save_all();
    }
    for (slot, reason) in report.dropped.iter().take(20) {
        tracing::info!(slot, "saved subscription not restored: {reason}");
    }
    if !report.dropped.is_empty() {
        store.write(&Batch {
            deleted: report.dropped.iter().map(|(slot, _)| *slot).collect(),
            ..Batch::default()
        })?;
    }
    if found > 0 {
        tracing::info!(
            "restored {} of {found} saved subscriptions in {:.2?}; their NOTIFYs are spread over {}s",
            report.restored,
            started.elapsed(),
            window.as_secs()
        );
    }
    let writer = WriteBehind::start(Some(store), mirror).map_err(StartError::Writer)?;
    Ok((Some(writer), report.restored))
}

fn limits(config: &Config) -> Limits {
    Limits {
        max_message_bytes: config.limits.max_message_bytes,
        max_headers: config.limits.max_headers,
        max_line_bytes: config.limits.max_line_bytes,
    }
}

fn tls_settings(config: &Config) -> Result<TlsSettings, StartError> {
    let Some(tls) = &config.tls else {
        if config.embedded {
            tracing::info!(
                "the embedded defaults have no [tls]: using a certificate generated at start, \
                 fine for trying Porchlight; configure [tls] to federate"
            );
        } else {
            tracing::warn!(
                "no [tls] section: using a certificate generated at start, which no partner \
                 trusts; configure [tls] (certificate, private_key, trusted_cas) to federate"
            );
        }
        let ca = CertificateAuthority::new("Porchlight throw-away CA")?;
        let domain = &config.node.domains[0];
        let uri = format!("sip:{domain}");
        let leaf = ca.issue(domain, &[AltName::Uri(&uri), AltName::Dns(domain)])?;
        return Ok(TlsSettings::from_pem(
            leaf.chain_pem.as_bytes(),
            leaf.key_pem.as_bytes(),
            ca.cert_pem.as_bytes(),
            ClientAuth::Required,
        )?);
    };
    let read = |path: &std::path::Path| {
        let path = config.resolve(path);
        std::fs::read(&path).map_err(|source| StartError::ReadFile {
            path: path.display().to_string(),
            source,
        })
    };
    let client_auth = match tls.client_auth {
        ClientAuthSetting::Required => ClientAuth::Required,
        ClientAuthSetting::Optional => ClientAuth::Optional,
    };
    Ok(TlsSettings::from_pem(
        &read(&tls.certificate)?,
        &read(&tls.private_key)?,
        &read(&tls.trusted_cas)?,
        client_auth,
    )?)
}

/// How often resident memory is read for overload control.
const LOAD_SAMPLE: Duration = Duration::from_millis(100);

/// How often certificates are looked at for expiry: daily warnings over
/// the last two weeks, and a partner's is also looked at when first seen.
const CERTIFICATE_CHECK: Duration = Duration::from_secs(86_400);

/// The process's resident memory in bytes, from `/proc/self/statm` (0
/// where there is none). Pages are taken as 4 KiB, the size on the
/// platforms the node is built for.
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// The store writer's counters with the core's write-behind progress.
fn store_status(writer: &WriteBehind, core: &Core) -> StoreStatus {
    let c = writer.counters();
    let (pending_changes, restored, recovering) = core.store_progress();
    let micros = |v: u64| v as f64 / 1e6;
    StoreStatus {
        flushes: c.flushes.load(Ordering::Relaxed),
        records_written: c.records.load(Ordering::Relaxed),
        failures: c.failures.load(Ordering::Relaxed),
        flush_seconds_total: micros(c.flush_micros.load(Ordering::Relaxed)),
        flush_seconds_max: micros(c.max_flush_micros.load(Ordering::Relaxed)),
        pending_changes,
        queued_batches: c.queued.load(Ordering::Relaxed),
        restored,
        recovering,
    }
}

/// The trusted networks as the transport sees them, kept in step with the
/// policy in force: connections from them draw on the reserved slots.
#[derive(Clone, Default)]
struct TrustedNetworks(Arc<std::sync::RwLock<Vec<Network>>>);

impl TrustedNetworks {
    /// Follows the policy in force.
    fn set(&self, networks: Vec<Network>) {
        if let Ok(mut held) = self.0.write() {
            *held = networks;
        }
    }

    /// The transport's question for a new connection's address.
    fn source(&self) -> TrustedSource {
        let networks = self.0.clone();
        Arc::new(move |ip| {
            networks
                .read()
                .is_ok_and(|n| n.iter().any(|network| network.contains(ip)))
        })
    }
}

/// The transport as the core sees it: facts about its connections.
struct TransportLinks(Transport);

impl Reach for TransportLinks {
    fn ready(&self, target: &Target) -> Option<Target> {
        self.0.ready(target)
    }

    fn verified(&self, domain: &str) -> Option<Target> {
        self.0.verified_connection(domain).map(Target::Connection)
    }
}

impl Links for TransportLinks {
    fn connection_protocol(&self, id: ConnectionId) -> Option<Protocol> {
        self.0.connection_protocol(id)
    }
}

/// Most messages handled between two flushes.
const RECEIVE_BATCH: usize = 256;

/// A dial task's report: the next hop it looked for, and what it found.
type Dialed = (NextHop, Result<Target, DialError>);

/// A webhook delivery's report: its number and how it ended.
type WebhookDone = (u64, Outcome);

/// Everything that reports to the event loop: the network, the tasks it
/// started and the admin side.
struct Inbox {
    received: mpsc::Receiver<Received>,
    verdicts: mpsc::Receiver<Verdict>,
    dials: mpsc::Receiver<Dialed>,
    writable: mpsc::Receiver<ConnectionId>,
    queries: mpsc::Receiver<Query>,
    webhooks_done: mpsc::Receiver<WebhookDone>,
    /// What the cluster task read; never anything when alone.
    reports: mpsc::Receiver<Report>,
}

/// The thin shell around the [`Core`]: owns the sockets, tasks and
/// threads, turns what happens into inputs, and carries out the core's
/// actions without ever waiting for a peer.
struct Driver {
    core: Core,
    transport: Transport,
    resolver: Arc<Resolver>,
    /// Messages for connections whose queue is full, in order.
    backlogs: Backlogs,
    /// The HTTP client of webhook deliveries.
    webhooks: Webhooks,
    /// How to stop each running health probe, by endpoint slot.
    probes: HashMap<usize, tokio::task::AbortHandle>,
    /// Hands changed subscriptions to the store; None: memory only.
    write_behind: Option<WriteBehind>,
    dials_tx: mpsc::Sender<Dialed>,
    /// Where a task reports that a backlogged connection takes more.
    writable_tx: mpsc::Sender<ConnectionId>,
    /// Where finished webhook deliveries report.
    webhooks_tx: mpsc::Sender<WebhookDone>,
    verdicts_tx: mpsc::Sender<Verdict>,
    next_load_sample: Instant,
    /// Resident memory when last read.
    resident: u64,
    /// What the transport asks of a new connection's address.
    trusted_networks: TrustedNetworks,
    /// The cluster task; None when the node is alone.
    cluster: Option<ClusterLink>,
    /// The lease the core was last told of; None before the first, or alone.
    lease: Option<porchlight_node::cluster::Lease>,
    /// When our TLS certificate expires (Unix seconds); None without TLS.
    certificate_not_after: Option<i64>,
}

impl Driver {
    async fn run(mut self, inbox: Inbox, flush_interval: std::time::Duration) {
        let Inbox {
            mut received,
            mut verdicts,
            mut dials,
            mut writable,
            mut queries,
            mut webhooks_done,
            mut reports,
        } = inbox;
        let mut flush_tick = tokio::time::interval(flush_interval);
        flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut certificate_tick = tokio::time::interval(CERTIFICATE_CHECK);
        let mut history_tick = tokio::time::interval(self.core.history_interval());
        history_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.carry_out(clock());
        loop {
            let deadline = self.core.poll_timeout(clock());
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                message = received.recv() => match message {
                    Some(message) => {
                        let now = clock();
                        self.core.handle(now, Input::Received(message));
                        // Take what else is already queued before sending:
                        // under load this turns one wake-up per message
                        // into one per batch.
                        for _ in 0..RECEIVE_BATCH {
                            match received.try_recv() {
                                Ok(message) => self.core.handle(now, Input::Received(message)),
                                Err(_) => break,
                            }
                        }
                        let load = self.load(received.len(), now.mono);
                        self.core.handle(now, Input::Load(load));
                    }
                    None => return,
                },
                Some((endpoint, probe, healthy)) = verdicts.recv() => {
                    self.core.handle(clock(), Input::Verdict { endpoint, probe, healthy });
                }
                Some((hop, result)) = dials.recv() => {
                    let result = result.map_err(|e| e.to_string());
                    self.core.handle(clock(), Input::Dialed { hop, result });
                }
                Some(id) = writable.recv() => self.on_writable(id),
                Some(query) = queries.recv() => self.answer_query(query),
                Some((delivery, outcome)) = webhooks_done.recv() => {
                    self.core.handle(clock(), Input::Posted { delivery, outcome });
                }
                Some(report) = reports.recv(), if self.cluster.is_some() => self.on_report(report),
                _ = flush_tick.tick(), if self.write_behind.is_some() => {
                    if let Some(writer) = &mut self.write_behind {
                        writer.tick(self.core.presence_mut(), clock());
                    }
                }
                _ = certificate_tick.tick() => self.check_certificates(),
                _ = history_tick.tick() => self.record_history(),
                () = sleep => self.core.handle_timeout(clock()),
            }
            self.check_fence();
            self.carry_out(clock());
        }
    }

    /// Warns of each certificate, ours or a partner's, that expires within
    /// the warning time: once at start, then every [`CERTIFICATE_CHECK`].
    fn check_certificates(&self) {
        let now = clock().unix() as i64;
        if let Some(not_after) = self.certificate_not_after {
            warn_if_expiring("this node", not_after, now);
        }
        for (partner, not_after) in self.core.partner_certificates() {
            warn_if_expiring(&format!("partner {partner}"), not_after, now);
        }
    }

    /// The load after a batch (memory is read at most every [`LOAD_SAMPLE`]).
    fn load(&mut self, backlog: usize, now: Instant) -> Load {
        if now >= self.next_load_sample {
            self.next_load_sample = now + LOAD_SAMPLE;
            self.resident = resident_bytes();
        }
        Load {
            backlog,
            server_transactions: self.core.server_transactions(),
            resident_bytes: self.resident,
        }
    }

    /// Hands what the cluster task read to the core; a drain goes to the
    /// write-behind, which saves every subscription for the takeover.
    fn on_report(&mut self, report: Report) {
        let input = match report {
            Report::Shared(shared) => Input::Shared(shared),
            Report::View(view) => Input::Cluster(view),
            Report::Adopt(saved) => Input::Adopt(saved),
            Report::Retired(era) => Input::Retired { era },
            Report::Drain => {
                if let Some(writer) = &mut self.write_behind {
                    writer.hand_over(self.core.presence_mut());
                }
                return;
            }
        };
        self.core.handle(clock(), input);
    }

    /// Tells the core its lease whenever it is renewed or given up (the
    /// cluster task's reports wake the loop every second), and the task
    /// how many subscriptions the node holds. The core fences itself when
    /// the lease runs out.
    fn check_fence(&mut self) {
        let Some(link) = &self.cluster else {
            return;
        };
        link.held
            .store(self.core.subscriptions_active(), Ordering::Relaxed);
        let lease = link.lease();
        if Some(lease) != self.lease {
            self.lease = Some(lease);
            self.core.handle(clock(), Input::Lease(lease));
        }
    }

    /// Does what the core asked, until it asks nothing more.
    fn carry_out(&mut self, now: Now) {
        while let Some(action) = self.core.poll_output(now) {
            match action {
                Action::Send { target, message } => self.offer(&target, message, now),
                Action::Dial { hop, pinned } => self.dial(hop, pinned),
                Action::Post {
                    delivery,
                    webhook,
                    message,
                } => {
                    let (webhooks, done) = (self.webhooks.clone(), self.webhooks_tx.clone());
                    tokio::spawn(async move {
                        let outcome = webhooks.deliver(&webhook, &message).await;
                        let _ = done.send((delivery, outcome)).await;
                    });
                }
                Action::StartProbe {
                    endpoint,
                    probe,
                    health,
                } => {
                    let task = tokio::spawn(crate::health::run(
                        endpoint,
                        probe,
                        health.url,
                        std::time::Duration::from_secs(health.interval_secs),
                        std::time::Duration::from_millis(health.timeout_ms),
                        self.verdicts_tx.clone(),
                    ));
                    if let Some(old) = self.probes.insert(endpoint, task.abort_handle()) {
                        old.abort();
                    }
                }
                Action::TrustedNetworks(networks) => self.trusted_networks.set(networks),
                Action::StopProbe { endpoint } => {
                    if let Some(old) = self.probes.remove(&endpoint) {
                        old.abort();
                    }
                }
                Action::Share(share) => {
                    if let Some(link) = &self.cluster {
                        if link.shares.try_send(share).is_err() {
                            // Redis is behind: the task reads everything
                            // again and writes what differs.
                            link.dropped.fetch_add(1, Ordering::Relaxed);
                            link.resync.store(true, Ordering::Relaxed);
                        }
                    }
                }
                Action::Follow(endpoints) => {
                    if let Some(link) = &self.cluster {
                        link.follow.send_replace(endpoints);
                    }
                }
            }
        }
    }

    /// Hands a message to a target the dialer found ready, without
    /// waiting: a connection's queue takes it or, full, fails it (its peer
    /// is not reading); a UDP socket whose buffer is full for now gets it
    /// from a task of its own, and a lost datagram is the transaction's to
    /// retransmit.
    ///
    /// A connection whose queue is full gets its messages held, in order,
    /// until a task sees it take more; past the backlog's bound they fail.
    fn offer(&mut self, target: &Target, message: Parked, now: Now) {
        // Whatever way the target is named, a connection with a backlog
        // keeps its messages in order behind it.
        if let Some(Target::Connection(id)) = self.transport.ready(target) {
            if self.backlogs.holds(id) {
                return self.hold(id, message, now);
            }
        }
        match self.transport.try_send(target, message.bytes.clone()) {
            Ok(Offered::Sent) => {}
            Ok(Offered::WouldBlock(bytes)) => self.hand_off(target.clone(), bytes),
            Ok(Offered::NeedsConnection(bytes)) if message.transaction.is_none() => {
                self.hand_off(target.clone(), bytes)
            }
            Ok(Offered::NeedsConnection(_)) => {
                tracing::debug!(?target, "send failed: the connection closed meanwhile");
                self.core.handle(now, Input::SendFailed(message));
            }
            Err(SendError::QueueFull(id)) => self.hold(id, message, now),
            Err(e) => {
                tracing::debug!(?target, "send failed: {e}");
                self.core.handle(now, Input::SendFailed(message));
            }
        }
    }

    fn hold(&mut self, id: ConnectionId, message: Parked, now: Now) {
        match self.backlogs.hold(id, message) {
            Held::First => {
                let (transport, report) = (self.transport.clone(), self.writable_tx.clone());
                tokio::spawn(async move {
                    transport.writable(id).await;
                    let _ = report.send(id).await;
                });
            }
            Held::Behind => {}
            Held::Full(message) => {
                tracing::warn!(?id, "the peer is not reading: its backlog is full");
                self.core.handle(now, Input::SendFailed(message));
            }
        }
    }

    /// A backlogged connection takes more: its messages are offered again,
    /// oldest first, until it is full again.
    fn on_writable(&mut self, id: ConnectionId) {
        let now = clock();
        let target = Target::Connection(id);
        for message in self.backlogs.release(id) {
            self.offer(&target, message, now);
        }
    }

    /// Sends from a task of its own, for what may wait (a full UDP buffer,
    /// a stateless answer over a connection to open) and what no
    /// transaction follows.
    fn hand_off(&self, target: Target, bytes: Bytes) {
        let transport = self.transport.clone();
        tokio::spawn(async move {
            if let Err(e) = transport.send(&target, bytes).await {
                tracing::debug!(?target, "send failed: {e}");
            }
        });
    }

    /// Looks for a next hop in a task of its own; the event loop goes on.
    fn dial(&self, hop: NextHop, pinned: Option<porchlight_policy::ProxyAddress>) {
        let (resolver, transport, report) = (
            self.resolver.clone(),
            self.transport.clone(),
            self.dials_tx.clone(),
        );
        tokio::spawn(async move {
            let result = dial(&hop, pinned.as_ref(), &resolver, &transport).await;
            let _ = report.send((hop, result)).await;
        });
    }

    /// Answers the admin surface: what the transport and the store writer
    /// count is added here, the rest is the core's.
    fn answer_query(&mut self, query: Query) {
        let now = clock();
        let Query::Status(reply) = query else {
            return self.core.handle(now, Input::Query(query));
        };
        reply.send(self.status(now));
    }

    /// Samples the node for the console's charts of the last hour.
    fn record_history(&mut self) {
        let now = clock();
        let status = self.status(now);
        self.core.record_history(now.unix() as i64, &status);
    }

    /// The core's status with what the transport and the store writer count.
    fn status(&mut self, now: Now) -> Status {
        let mut status = self.core.status(now);
        status.connections = self.transport.connection_count();
        status.backlogged = self.backlogs.len();
        status.certificate_not_after = self.certificate_not_after;
        status
            .refused
            .extend(
                self.transport
                    .refusal_totals()
                    .into_iter()
                    .map(|(reason, count)| RefusedCount {
                        reason: reason.to_owned(),
                        count,
                    }),
            );
        status.refused.sort_by(|a, b| a.reason.cmp(&b.reason));
        status.capture = self
            .transport
            .capture_totals()
            .map(|(collector, totals)| CaptureStatus {
                collector: collector.to_string(),
                sent: totals.sent,
                dropped: totals.dropped,
                failed: totals.failed,
            });
        status.store = self
            .write_behind
            .as_ref()
            .filter(|w| w.has_store())
            .map(|w| store_status(w, &self.core));
        status
    }
}
