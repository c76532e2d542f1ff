//! SIP transports for Porchlight: UDP, TCP and TLS listeners and outbound
//! connections (RFC 3261 §18).
//!
//! Every received message reaches the upper layers as one [`Received`]
//! value carrying how it arrived and, for mutual TLS, who the peer is
//! (RFC 5922). Streams are framed by Content-Length, answer CRLF keepalive
//! pings (RFC 5626), close when idle or too slow to finish a message, and
//! are bounded in number, per source, with a share kept for peers that
//! proved who they are. A TLS
//! connection is reused for requests toward a domain only after the peer's
//! certificate proved that domain (RFC 5923).

mod capture;
pub mod framer;
pub mod hep;
pub mod pki;
mod slots;
mod stream;
mod tls;
mod udp;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use porchlight_sip::Limits;
use tokio::sync::{mpsc, Notify};

pub use capture::{Capture, CaptureConfig, CaptureSender, CaptureTotals};
pub use porchlight_link::{
    certificate_not_after, identity_from_certificate, ConnectionId, IdentityError, IdentitySource,
    Origin, PeerIdentity, Protocol, Received, RefusalLog, SourceRateLimits, SourceRates, Target,
    TrustedSource,
};
pub use slots::{Refusal, SlotLimits};
pub use tls::{ClientAuth, TlsError, TlsSettings};

/// Why bytes could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The connection is gone.
    #[error("connection {0:?} is closed")]
    ConnectionClosed(ConnectionId),
    /// No listener or configuration for this protocol.
    #[error("{0:?} is not enabled")]
    NotEnabled(Protocol),
    /// TLS needs a server name to verify.
    #[error("TLS target needs a domain to verify")]
    MissingDomain,
    /// Socket error.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// TLS handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The connection limit is reached.
    #[error("connection limit reached")]
    TooManyConnections,
    /// UDP has no connections to open.
    #[error("UDP is not a stream transport")]
    NotAStream,
    /// The connection's queue is full: its peer is not reading.
    #[error("connection {0:?} is not reading (its queue is full)")]
    QueueFull(ConnectionId),
}

/// What became of bytes offered with [`Transport::try_send`], which never
/// waits: the caller decides what to do with bytes that could not go now.
#[derive(Debug)]
pub enum Offered {
    /// Queued to the connection or written to the socket.
    Sent,
    /// A stream to an address with no connection open: one must be opened
    /// (with [`Transport::connect`], which can take a handshake) first.
    NeedsConnection(Bytes),
    /// The UDP socket's kernel buffer is full for now.
    WouldBlock(Bytes),
}

/// Listener addresses and bounds.
#[derive(Clone)]
pub struct TransportConfig {
    /// UDP listen addresses.
    pub udp: Vec<SocketAddr>,
    /// TCP listen addresses.
    pub tcp: Vec<SocketAddr>,
    /// TLS listen addresses.
    pub tls: Vec<SocketAddr>,
    /// TLS configuration; required when `tls` is non-empty.
    pub tls_settings: Option<TlsSettings>,
    /// Message size, header count and line length bounds.
    pub limits: Limits,
    /// Stream connections: in all, kept for proven peers, per source.
    pub slots: SlotLimits,
    /// Whether an address alone vouches for a connection from it (the
    /// trusted networks): such connections draw on the reserve.
    pub trusted_source: TrustedSource,
    /// A stream with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// A TLS handshake, either way, must finish within this.
    pub handshake_timeout: Duration,
    /// A message must arrive whole within this of its first byte, and an
    /// inbound connection's first message within this of its opening.
    pub message_timeout: Duration,
    /// One log line per refusal reason and peer per this interval.
    pub refusal_log_interval: Duration,
    /// Depth of the queue of received messages toward the core; UDP drops
    /// beyond it, streams wait.
    pub queue_depth: usize,
    /// Depth of each connection's outbound queue.
    pub connection_queue_depth: usize,
    /// Kernel buffer of each UDP socket, each way; 0: as large as the
    /// kernel allows, up to 8 MiB, without a warning when it caps it.
    pub udp_buffer_bytes: usize,
    /// Where a copy of every message received and sent goes; None: nowhere.
    pub capture: Option<Capture>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            udp: Vec::new(),
            tcp: Vec::new(),
            tls: Vec::new(),
            tls_settings: None,
            limits: Limits::default(),
            slots: SlotLimits {
                max_connections: 10_000,
                reserved_connections: 2_000,
                max_per_source: 256,
            },
            trusted_source: Arc::new(|_| false),
            idle_timeout: Duration::from_secs(300),
            handshake_timeout: Duration::from_secs(5),
            message_timeout: Duration::from_secs(10),
            refusal_log_interval: Duration::from_secs(10),
            queue_depth: 65_536,
            connection_queue_depth: 1_024,
            udp_buffer_bytes: 0,
            capture: None,
        }
    }
}

/// Connections waiting in the kernel to be accepted. A burst of
/// connections (a flood, or every partner after a restart) must queue
/// rather than have its SYNs dropped and retried a second later; the
/// kernel caps this at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4_096;

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

#[derive(Clone)]
struct ConnectionHandle {
    sender: mpsc::Sender<Bytes>,
    protocol: Protocol,
    remote: SocketAddr,
    peer: Option<Arc<PeerIdentity>>,
}

#[derive(Default)]
struct Registry {
    by_id: HashMap<ConnectionId, ConnectionHandle>,
    by_addr: HashMap<(Protocol, SocketAddr), ConnectionId>,
    by_domain: HashMap<String, ConnectionId>,
}

pub(crate) struct Shared {
    config: TransportConfig,
    registry: Mutex<Registry>,
    next_id: AtomicU64,
    slots: Mutex<SlotTable>,
    refusals: SharedRefusals,
    inbound: mpsc::Sender<Received>,
    udp_sockets: Vec<Arc<tokio::net::UdpSocket>>,
}

/// A running set of listeners and connections. Cloning shares it.
#[derive(Clone)]
pub struct Transport {
    shared: Arc<Shared>,
    local: Arc<Vec<(Protocol, SocketAddr)>>,
}

impl Transport {
    /// Binds every configured listener and starts receiving. Messages arrive
    /// on the returned channel.
    pub async fn bind(
        config: TransportConfig,
    ) -> std::io::Result<(Transport, mpsc::Receiver<Received>)> {
        let (tx, rx) = mpsc::channel(config.queue_depth);
        let mut udp_sockets = Vec::new();
        let mut local = Vec::new();
        // A bind error names the listener, so the admin knows which to change.
        let named = |protocol: Protocol, addr: SocketAddr| {
            move |e: std::io::Error| {
                std::io::Error::new(e.kind(), format!("{} {addr}: {e}", protocol.via_token()))
            }
        };
        for addr in &config.udp {
            let socket = Arc::new(
                udp::bind(*addr, config.udp_buffer_bytes).map_err(named(Protocol::Udp, *addr))?,
            );
            local.push((Protocol::Udp, socket.local_addr()?));
            udp_sockets.push(socket);
        }
        let mut tcp_listeners = Vec::new();
        for (protocol, addrs) in [(Protocol::Tcp, &config.tcp), (Protocol::Tls, &config.tls)] {
            if protocol == Protocol::Tls && !addrs.is_empty() && config.tls_settings.is_none() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "TLS listener configured without certificates",
                ));
            }
            for addr in addrs {
                let listener = listen(*addr).map_err(named(protocol, *addr))?;
                local.push((protocol, listener.local_addr()?));
                tcp_listeners.push((protocol, listener));
            }
        }
        let shared = Arc::new(Shared {
            slots: Mutex::new(SlotTable {
                slots: slots::Slots::new(config.slots),
                closers: HashMap::new(),
            }),
            refusals: SharedRefusals(Mutex::new(RefusalLog::new(config.refusal_log_interval))),
            config,
            registry: Mutex::new(Registry::default()),
            next_id: AtomicU64::new(1),
            inbound: tx,
            udp_sockets,
        });
        for socket in &shared.udp_sockets {
            tokio::spawn(udp::receive_loop(shared.clone(), socket.clone()));
        }
        for (protocol, listener) in tcp_listeners {
            tokio::spawn(stream::accept_loop(shared.clone(), protocol, listener));
        }
        Ok((
            Transport {
                shared,
                local: Arc::new(local),
            },
            rx,
        ))
    }

    /// The bound addresses (useful with port 0).
    pub fn local_addrs(&self) -> &[(Protocol, SocketAddr)] {
        &self.local
    }

    /// The first bound address of a protocol.
    pub fn local_addr(&self, protocol: Protocol) -> Option<SocketAddr> {
        self.local
            .iter()
            .find(|(p, _)| *p == protocol)
            .map(|(_, a)| *a)
    }

    /// Open stream connections.
    pub fn connection_count(&self) -> usize {
        self.shared
            .registry
            .lock()
            .map(|r| r.by_id.len())
            .unwrap_or(0)
    }

    /// Connections and messages refused by the transport since start, by
    /// reason.
    pub fn refusal_totals(&self) -> Vec<(&'static str, u64)> {
        self.shared
            .refusals
            .0
            .lock()
            .map(|log| log.totals().collect())
            .unwrap_or_default()
    }

    /// What became of the capture copies, when capture is on.
    pub fn capture_totals(&self) -> Option<(SocketAddr, CaptureTotals)> {
        let capture = self.shared.config.capture.as_ref()?;
        Some((capture.collector(), capture.totals()))
    }

    /// The verified identity of a connection's peer.
    pub fn peer_identity(&self, id: ConnectionId) -> Option<Arc<PeerIdentity>> {
        self.shared
            .registry
            .lock()
            .ok()?
            .by_id
            .get(&id)
            .and_then(|c| c.peer.clone())
    }

    /// The protocol of an open connection (TCP or TLS), for the Via and
    /// Record-Route of requests sent over it.
    pub fn connection_protocol(&self, id: ConnectionId) -> Option<Protocol> {
        let r = self.shared.registry.lock().ok()?;
        r.by_id.get(&id).map(|c| c.protocol)
    }

    /// An open connection whose peer proved `domain`, by certificate either
    /// way (RFC 5923 reuse): requests for a partner go over it rather than
    /// a new one.
    pub fn verified_connection(&self, domain: &str) -> Option<ConnectionId> {
        let r = self.shared.registry.lock().ok()?;
        r.by_domain.get(&domain.to_ascii_lowercase()).copied()
    }

    /// Opens (or reuses) a stream connection to `addr`; for TLS the server
    /// must prove `domain`. Dialing is separate from sending so a caller can
    /// try several addresses for one destination.
    pub async fn connect(
        &self,
        protocol: Protocol,
        addr: SocketAddr,
        domain: Option<&str>,
    ) -> Result<ConnectionId, SendError> {
        if protocol == Protocol::Udp {
            return Err(SendError::NotAStream);
        }
        stream::connection_for(&self.shared, protocol, addr, domain).await
    }

    /// Where `target` can be reached now without opening anything: itself
    /// for UDP and connections, the open connection for a stream address
    /// that has one, else None.
    pub fn ready(&self, target: &Target) -> Option<Target> {
        match target {
            Target::Connection(_)
            | Target::Address {
                protocol: Protocol::Udp,
                ..
            } => Some(target.clone()),
            Target::Address {
                protocol,
                addr,
                domain,
            } => stream::open_connection(&self.shared, *protocol, *addr, domain.as_deref())
                .map(Target::Connection),
        }
    }

    /// Sends bytes without waiting: a connection's queue or a UDP socket
    /// takes them now, or they come back with what is missing. The event
    /// loop sends this way, so no peer can hold it up.
    pub fn try_send(&self, target: &Target, bytes: Bytes) -> Result<Offered, SendError> {
        match self.ready(target) {
            Some(Target::Connection(id)) => {
                let handle = self
                    .shared
                    .registry
                    .lock()
                    .ok()
                    .and_then(|r| r.by_id.get(&id).map(|h| h.sender.clone()))
                    .ok_or(SendError::ConnectionClosed(id))?;
                handle.try_send(bytes).map_err(|e| match e {
                    mpsc::error::TrySendError::Full(_) => SendError::QueueFull(id),
                    mpsc::error::TrySendError::Closed(_) => SendError::ConnectionClosed(id),
                })?;
                Ok(Offered::Sent)
            }
            Some(Target::Address { addr, .. }) => {
                let socket = self.udp_socket_for(addr)?;
                match socket.try_send_to(&bytes, addr) {
                    Ok(_) => {
                        self.shared.capture_udp_sent(socket, addr, &bytes);
                        Ok(Offered::Sent)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        Ok(Offered::WouldBlock(bytes))
                    }
                    Err(e) => Err(e.into()),
                }
            }
            None => Ok(Offered::NeedsConnection(bytes)),
        }
    }

    fn udp_socket_for(&self, addr: SocketAddr) -> Result<&tokio::net::UdpSocket, SendError> {
        self.shared
            .udp_sockets
            .iter()
            .find(|s| s.local_addr().is_ok_and(|l| l.is_ipv4() == addr.is_ipv4()))
            .map(|s| &**s)
            .ok_or(SendError::NotEnabled(Protocol::Udp))
    }

    /// Waits until connection `id` can take another message (or is gone):
    /// for a task that tells the event loop when to offer its backlog.
    pub async fn writable(&self, id: ConnectionId) {
        let sender = self
            .shared
            .registry
            .lock()
            .ok()
            .and_then(|r| r.by_id.get(&id).map(|h| h.sender.clone()));
        if let Some(sender) = sender {
            let _ = sender.reserve().await;
        }
    }

    /// Sends bytes, waiting as long as it takes (a connect and handshake,
    /// a full queue): for tasks of their own, never the event loop. UDP goes
    /// out from the first UDP socket of the address family; streams reuse or
    /// open a connection.
    pub async fn send(&self, target: &Target, bytes: Bytes) -> Result<(), SendError> {
        match target {
            Target::Connection(id) => {
                let handle = self
                    .shared
                    .registry
                    .lock()
                    .ok()
                    .and_then(|r| r.by_id.get(id).cloned());
                let handle = handle.ok_or(SendError::ConnectionClosed(*id))?;
                handle
                    .sender
                    .send(bytes)
                    .await
                    .map_err(|_| SendError::ConnectionClosed(*id))
            }
            Target::Address {
                protocol: Protocol::Udp,
                addr,
                ..
            } => {
                let socket = self.udp_socket_for(*addr)?;
                socket.send_to(&bytes, addr).await?;
                self.shared.capture_udp_sent(socket, *addr, &bytes);
                Ok(())
            }
            Target::Address {
                protocol,
                addr,
                domain,
            } => {
                let id = stream::connection_for(&self.shared, *protocol, *addr, domain.as_deref())
                    .await?;
                Box::pin(self.send(&Target::Connection(id), bytes)).await
            }
        }
    }
}

impl Shared {
    /// Copies a message for capture, when capture is on.
    pub(crate) fn capture(
        &self,
        protocol: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        bytes: &Bytes,
    ) {
        if let Some(capture) = &self.config.capture {
            capture.copy(protocol, source, destination, bytes);
        }
    }

    /// Copies a datagram `socket` sent to `to`, when capture is on.
    fn capture_udp_sent(&self, socket: &tokio::net::UdpSocket, to: SocketAddr, bytes: &Bytes) {
        if self.config.capture.is_some() {
            if let Ok(local) = socket.local_addr() {
                self.capture(Protocol::Udp, local, to, bytes);
            }
        }
    }
}

/// The slot table with the way to close each connection it displaces.
struct SlotTable {
    slots: slots::Slots,
    closers: HashMap<slots::Ticket, Arc<Notify>>,
}

/// The transport's refusal log, shared by its tasks.
struct SharedRefusals(Mutex<RefusalLog>);

impl SharedRefusals {
    fn note(&self, peer: IpAddr, reason: &'static str, detail: &str) {
        if let Ok(mut log) = self.0.lock() {
            log.note(Instant::now(), peer, reason, detail);
        }
    }
}

/// A connection's slot, given back when dropped.
pub(crate) struct Slot {
    shared: Arc<Shared>,
    ticket: slots::Ticket,
    displaced: Arc<Notify>,
}

impl Slot {
    /// A slot for a connection with `remote`, or why there is none. A
    /// connection displaced to make room is told to close.
    fn take(shared: &Arc<Shared>, remote: SocketAddr, privileged: bool) -> Result<Slot, Refusal> {
        let mut table = shared.slots.lock().map_err(|_| Refusal::Full)?;
        let (ticket, displaces) = match table.slots.admit(remote.ip(), privileged) {
            slots::Admission::Admit { ticket, displaces } => (ticket, displaces),
            slots::Admission::Refuse(refusal) => return Err(refusal),
        };
        if let Some(closer) = displaces.and_then(|d| table.closers.remove(&d)) {
            closer.notify_one();
        }
        let displaced = Arc::new(Notify::new());
        table.closers.insert(ticket, displaced.clone());
        Ok(Slot {
            shared: shared.clone(),
            ticket,
            displaced,
        })
    }

    /// Resolves when the slot was given to a newer connection.
    async fn displaced(&self) {
        self.displaced.notified().await
    }

    fn update(&self, change: impl FnOnce(&mut slots::Slots, slots::Ticket)) {
        if let Ok(mut table) = self.shared.slots.lock() {
            change(&mut table.slots, self.ticket);
        }
    }

    /// A whole message arrived: the connection keeps its slot.
    fn proven(&self) {
        self.update(slots::Slots::proven);
    }

    /// The peer's certificate proved an identity.
    fn certified(&self) {
        self.update(slots::Slots::certified);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut table) = self.shared.slots.lock() {
            table.slots.release(self.ticket);
            table.closers.remove(&self.ticket);
        }
    }
}

impl Shared {
    fn register(&self, handle: ConnectionHandle) -> ConnectionId {
        let id = ConnectionId(self.next_id.fetch_add(1, Ordering::Relaxed));
        if let Ok(mut r) = self.registry.lock() {
            r.by_addr.insert((handle.protocol, handle.remote), id);
            if let Some(peer) = &handle.peer {
                for d in &peer.domains {
                    r.by_domain.insert(d.clone(), id);
                }
            }
            r.by_id.insert(id, handle);
        }
        id
    }

    fn unregister(&self, id: ConnectionId) {
        if let Ok(mut r) = self.registry.lock() {
            if let Some(h) = r.by_id.remove(&id) {
                if r.by_addr.get(&(h.protocol, h.remote)) == Some(&id) {
                    r.by_addr.remove(&(h.protocol, h.remote));
                }
                r.by_domain.retain(|_, v| *v != id);
            }
        }
    }
}
