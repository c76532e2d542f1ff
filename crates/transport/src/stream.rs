//! TCP and TLS connections: one reader task that frames messages by
//! Content-Length, one writer task fed by a bounded queue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::time::Instant;

use bytes::Bytes;
use porchlight_sip::{Framing, Message};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::framer::{Framed, StreamFramer};
use crate::identity_from_certificate;
use crate::{
    ConnectionHandle, ConnectionId, Origin, PeerIdentity, Protocol, Received, SendError, Shared,
    Slot,
};

/// After a framing error the connection cannot be resynchronised; it stays
/// open this long so the answer (400, 513) can still be written.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
const PONG: &[u8] = b"\r\n";
const IDLE: &str = "idle";

pub(crate) async fn accept_loop(shared: Arc<Shared>, protocol: Protocol, listener: TcpListener) {
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, usually: wait rather than spin.
                shared.refusals.note(
                    remote_unknown(),
                    "accepting a connection failed",
                    &e.to_string(),
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let trusted = (shared.config.trusted_source)(remote.ip());
        let slot = match Slot::take(&shared, remote, trusted) {
            Ok(slot) => slot,
            Err(refusal) => {
                shared.refusals.note(remote.ip(), refusal.as_str(), "");
                // Reset rather than a graceful close: nothing is owed.
                let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let Ok(local) = tcp.local_addr() else { return };
            match protocol {
                Protocol::Tls => {
                    let Some(settings) = shared.config.tls_settings.clone() else {
                        return;
                    };
                    let acceptor = TlsAcceptor::from(settings.server);
                    let handshake =
                        tokio::time::timeout(shared.config.handshake_timeout, acceptor.accept(tcp));
                    let outcome = tokio::select! {
                        outcome = handshake => outcome,
                        () = slot.displaced() => return,
                    };
                    match outcome {
                        Ok(Ok(tls)) => {
                            let peer = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|chain| chain.first())
                                .and_then(|cert| match identity_from_certificate(cert) {
                                    Ok(id) => Some(Arc::new(id)),
                                    Err(e) => {
                                        tracing::warn!(%remote, "client certificate has no usable identity: {e}");
                                        None
                                    }
                                });
                            if peer.is_some() {
                                slot.certified();
                            }
                            start(shared, tls, protocol, remote, local, peer, slot, true);
                        }
                        Ok(Err(e)) => shared.refusals.note(
                            remote.ip(),
                            "TLS handshake failed",
                            &e.to_string(),
                        ),
                        Err(_) => shared
                            .refusals
                            .note(remote.ip(), "TLS handshake timed out", ""),
                    }
                }
                _ => {
                    start(shared, tcp, protocol, remote, local, None, slot, true);
                }
            }
        });
    }
}

/// The address to name when an accept fails before any peer is known.
fn remote_unknown() -> std::net::IpAddr {
    std::net::IpAddr::from([0, 0, 0, 0])
}

/// Registers a connection and spawns its reader and writer. `inbound`
/// connections must send a whole message in time to keep their slot.
#[allow(clippy::too_many_arguments)]
fn start<S>(
    shared: Arc<Shared>,
    stream: S,
    protocol: Protocol,
    remote: SocketAddr,
    local: SocketAddr,
    peer: Option<Arc<PeerIdentity>>,
    slot: Slot,
    inbound: bool,
) -> ConnectionId
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (reader, mut writer) = tokio::io::split(stream);
    let (sender, mut outgoing) = mpsc::channel::<Bytes>(shared.config.connection_queue_depth);
    let id = shared.register(ConnectionHandle {
        sender: sender.clone(),
        protocol,
        remote,
        peer: peer.clone(),
    });
    let writer_shared = shared.clone();
    tokio::spawn(async move {
        while let Some(bytes) = outgoing.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
            if bytes != PONG {
                writer_shared.capture(protocol, local, remote, &bytes);
            }
        }
        let _ = writer.shutdown().await;
    });
    let origin = Origin {
        protocol,
        source: remote,
        local,
        connection: Some(id),
        peer,
    };
    tokio::spawn(async move {
        tokio::select! {
            () = read_loop(&shared, reader, origin, sender, &slot, inbound) => {}
            () = slot.displaced() => {
                shared.refusals.note(remote.ip(), "unproven connection displaced by a newer one", "");
            }
        }
        shared.unregister(id);
        drop(slot);
    });
    id
}

/// Why a stream is closed by its reader.
enum Close {
    /// The peer closed it, or the socket failed.
    Peer,
    /// A deadline passed: idle, or a message (or a new connection's first
    /// one) not finished in time.
    Deadline(&'static str),
}

async fn read_loop<R: AsyncRead + Unpin>(
    shared: &Shared,
    mut reader: R,
    origin: Origin,
    pongs: mpsc::Sender<Bytes>,
    slot: &Slot,
    inbound: bool,
) {
    let config = &shared.config;
    let limits = &config.limits;
    let mut framer = StreamFramer::new(limits.clone());
    let opened = Instant::now();
    // Inbound streams owe a whole message soon after they open.
    let mut awaiting_first = inbound;
    let mut message_started: Option<Instant> = None;
    let close = loop {
        match framer.next_frame() {
            Framed::Message(bytes) => {
                shared.capture(origin.protocol, origin.source, origin.local, &bytes);
                if awaiting_first {
                    awaiting_first = false;
                    slot.proven();
                }
                message_started = None;
                let received = match Message::parse(bytes.clone(), Framing::Stream, limits) {
                    Ok(m) => Received::Message(m, origin.clone()),
                    Err(error) => Received::Malformed {
                        head: Message::parse_head_only(bytes, limits).ok(),
                        error,
                        origin: origin.clone(),
                    },
                };
                if shared.inbound.send(received).await.is_err() {
                    return;
                }
                continue;
            }
            Framed::Malformed { error, bytes } => {
                shared.capture(origin.protocol, origin.source, origin.local, &bytes);
                let head = Message::parse_head_only(bytes, limits).ok();
                let _ = shared
                    .inbound
                    .send(Received::Malformed {
                        error,
                        head,
                        origin: origin.clone(),
                    })
                    .await;
                tokio::time::sleep(CLOSE_GRACE).await;
                return;
            }
            Framed::NeedMore => {}
        }
        for _ in 0..framer.take_pongs() {
            let _ = pongs.try_send(Bytes::from_static(PONG));
        }
        if framer.in_message() {
            message_started.get_or_insert_with(Instant::now);
        }
        let idle = (Instant::now() + config.idle_timeout, IDLE);
        let (deadline, why) = match (awaiting_first, message_started) {
            (true, _) => (
                opened + config.message_timeout,
                "connection closed: no whole first message in time",
            ),
            (false, Some(at)) => (
                at + config.message_timeout,
                "connection closed: message not finished in time",
            ),
            (false, None) => idle,
        }
        .min(idle);
        match tokio::time::timeout_at(deadline.into(), reader.read_buf(framer.buffer())).await {
            Ok(Ok(0)) | Ok(Err(_)) => break Close::Peer,
            Ok(Ok(_)) => {}
            Err(_) => break Close::Deadline(why),
        }
    };
    if let Close::Deadline(why) = close {
        // Idle partners are routine; the rest is worth an aggregated line.
        if why == IDLE {
            tracing::debug!(remote = %origin.source, "closing idle connection");
        } else {
            shared.refusals.note(origin.source.ip(), why, "");
        }
    }
}

/// The open connection requests to `addr` reuse: for TLS the one whose
/// peer proved `domain`, else the one to the address.
pub(crate) fn open_connection(
    shared: &Shared,
    protocol: Protocol,
    addr: SocketAddr,
    domain: Option<&str>,
) -> Option<ConnectionId> {
    let r = shared.registry.lock().ok()?;
    match (protocol, domain) {
        (Protocol::Tls, Some(d)) => r.by_domain.get(&d.to_ascii_lowercase()).copied(),
        (Protocol::Tls, None) => None,
        _ => r.by_addr.get(&(protocol, addr)).copied(),
    }
}

/// An open connection to `addr` (reused when one exists), for requests.
pub(crate) async fn connection_for(
    shared: &Arc<Shared>,
    protocol: Protocol,
    addr: SocketAddr,
    domain: Option<&str>,
) -> Result<ConnectionId, SendError> {
    if protocol == Protocol::Tls && domain.is_none() {
        return Err(SendError::MissingDomain);
    }
    if let Some(id) = open_connection(shared, protocol, addr, domain) {
        return Ok(id);
    }
    let domain = domain.map(str::to_ascii_lowercase);
    // Connections this node opens are its own choice: they count against
    // the reserve, like a trusted peer's.
    let slot = Slot::take(shared, addr, true).map_err(|_| SendError::TooManyConnections)?;
    let tcp = tokio::time::timeout(shared.config.handshake_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr()?;
    match protocol {
        Protocol::Tls => {
            let settings = shared
                .config
                .tls_settings
                .clone()
                .ok_or(SendError::NotEnabled(Protocol::Tls))?;
            let domain = domain.unwrap_or_default();
            let name =
                ServerName::try_from(domain.clone()).map_err(|e| SendError::Tls(e.to_string()))?;
            let tls = tokio::time::timeout(
                shared.config.handshake_timeout,
                TlsConnector::from(settings.client).connect(name, tcp),
            )
            .await
            .map_err(|_| SendError::Tls("handshake timed out".into()))?
            .map_err(|e| SendError::Tls(e.to_string()))?;
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|cert| identity_from_certificate(cert).ok())
                .map(Arc::new);
            let id = start(
                shared.clone(),
                tls,
                protocol,
                addr,
                local,
                peer,
                slot,
                false,
            );
            // The handshake verified the server name, so this connection
            // speaks for `domain` (RFC 5923 reuse).
            if let Ok(mut r) = shared.registry.lock() {
                r.by_domain.insert(domain, id);
            }
            Ok(id)
        }
        _ => Ok(start(
            shared.clone(),
            tcp,
            protocol,
            addr,
            local,
            None,
            slot,
            false,
        )),
    }
}
