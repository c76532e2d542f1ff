//! The UDP listener: one datagram is one message (RFC 3261 §18.3).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use porchlight_sip::{Framing, Message};
use tokio::net::UdpSocket;

use crate::{Origin, Protocol, Received, Shared};

pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let std_socket = std::net::UdpSocket::bind(addr)?;
    std_socket.set_nonblocking(true)?;
    UdpSocket::from_std(std_socket)
}

pub(crate) async fn receive_loop(shared: Arc<Shared>, socket: Arc<UdpSocket>) {
    let local = match socket.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, source) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP errors from earlier sends surface here on some systems.
            Err(e) => {
                tracing::debug!(%local, "UDP receive error: {e}");
                continue;
            }
        };
        let data = &buf[..len];
        if data.iter().all(|&b| matches!(b, b'\r' | b'\n' | 0)) {
            continue; // keepalive
        }
        let origin = Origin {
            protocol: Protocol::Udp,
            source,
            local,
            connection: None,
            peer: None,
        };
        let bytes = Bytes::copy_from_slice(data);
        let limits = &shared.config.limits;
        let received = match Message::parse(bytes.clone(), Framing::Datagram, limits) {
            Ok(m) => Received::Message(m, origin),
            Err(error) => Received::Malformed {
                head: Message::parse_head_only(bytes, limits).ok(),
                error,
                origin,
            },
        };
        if shared.inbound.try_send(received).is_err() {
            tracing::warn!(%source, "receive queue full, datagram dropped");
        }
    }
}
