//! TCP and TLS connections: one reader task that frames messages by
//! Content-Length, one writer task fed by a bounded queue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use porchlight_sip::{Framing, Message};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::identity::identity_from_certificate;
use crate::{
    ConnectionHandle, ConnectionId, Origin, PeerIdentity, Protocol, Received, SendError, Shared,
};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a framing error the connection cannot be resynchronised; it stays
/// open this long so the answer (400, 513) can still be written.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
const PING: &[u8] = b"\r\n\r\n";
const PONG: &[u8] = b"\r\n";

pub(crate) async fn accept_loop(shared: Arc<Shared>, protocol: Protocol, listener: TcpListener) {
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            tracing::warn!(%remote, "connection limit reached, refusing connection");
            continue;
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
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
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
                            start(shared, tls, protocol, remote, local, peer, permit);
                        }
                        Ok(Err(e)) => tracing::info!(%remote, "TLS handshake failed: {e}"),
                        Err(_) => tracing::info!(%remote, "TLS handshake timed out"),
                    }
                }
                _ => {
                    start(shared, tcp, protocol, remote, local, None, permit);
                }
            }
        });
    }
}

/// Registers a connection and spawns its reader and writer.
fn start<S>(
    shared: Arc<Shared>,
    stream: S,
    protocol: Protocol,
    remote: SocketAddr,
    local: SocketAddr,
    peer: Option<Arc<PeerIdentity>>,
    permit: OwnedSemaphorePermit,
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
    tokio::spawn(async move {
        while let Some(bytes) = outgoing.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                break;
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
        read_loop(&shared, reader, origin, sender).await;
        shared.unregister(id);
        drop(permit);
    });
    id
}

async fn read_loop<R: AsyncRead + Unpin>(
    shared: &Shared,
    mut reader: R,
    origin: Origin,
    pongs: mpsc::Sender<Bytes>,
) {
    let limits = &shared.config.limits;
    let mut buf = BytesMut::with_capacity(8 * 1024);
    loop {
        while buf.starts_with(PING) {
            buf.advance(PING.len());
            let _ = pongs.try_send(Bytes::from_static(PONG));
        }
        match Message::frame(&buf, limits) {
            Ok(Some(frame)) => {
                buf.advance(frame.skip);
                let bytes = buf.split_to(frame.len).freeze();
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
            Ok(None) => {}
            Err(error) => {
                let head = Message::parse_head_only(buf.split().freeze(), limits).ok();
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
        }
        match tokio::time::timeout(shared.config.idle_timeout, reader.read_buf(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
            Err(_) => {
                tracing::debug!(remote = %origin.source, "closing idle connection");
                return;
            }
        }
    }
}

/// An open connection to `addr` (reused when one exists), for requests.
pub(crate) async fn connection_for(
    shared: &Arc<Shared>,
    protocol: Protocol,
    addr: SocketAddr,
    domain: Option<&str>,
) -> Result<ConnectionId, SendError> {
    let domain = domain.map(str::to_ascii_lowercase);
    if let Ok(r) = shared.registry.lock() {
        let existing = match (protocol, &domain) {
            (Protocol::Tls, Some(d)) => r.by_domain.get(d),
            (Protocol::Tls, None) => return Err(SendError::MissingDomain),
            _ => r.by_addr.get(&(protocol, addr)),
        };
        if let Some(id) = existing {
            return Ok(*id);
        }
    }
    let permit = shared
        .connections
        .clone()
        .try_acquire_owned()
        .map_err(|_| SendError::TooManyConnections)?;
    let tcp = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
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
                HANDSHAKE_TIMEOUT,
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
            let id = start(shared.clone(), tls, protocol, addr, local, peer, permit);
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
            permit,
        )),
    }
}
