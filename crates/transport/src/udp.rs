//! The UDP listener: one datagram is one message (RFC 3261 §18.3).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use porchlight_sip::{Framing, Message};
use tokio::net::UdpSocket;

use crate::{Origin, Protocol, Received, Shared};

/// Binds with `buffer_bytes` of kernel buffer each way: a burst of
/// requests (or of answers to a fan-out) must queue in the kernel rather
/// than be dropped while the core is busy. The kernel may grant less
/// (`net.core.rmem_max`); that is logged with the fix.
/// The buffer asked for when the configuration leaves it to the kernel
/// (0): large enough for bursts, silently capped by the kernel's limit.
const PREFERRED_BUFFER_BYTES: usize = 8 << 20;

pub(crate) fn bind(addr: SocketAddr, buffer_bytes: usize) -> std::io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    let (wanted, explicit) = match buffer_bytes {
        0 => (PREFERRED_BUFFER_BYTES, false),
        n => (n, true),
    };
    socket.set_recv_buffer_size(wanted)?;
    socket.set_send_buffer_size(wanted)?;
    // Linux reports twice the size it grants.
    let granted = socket.recv_buffer_size()? / 2;
    if explicit && granted < buffer_bytes {
        tracing::warn!(
            %addr,
            "UDP receive buffer is {granted} bytes, not the {buffer_bytes} configured: \
             raise net.core.rmem_max and net.core.wmem_max (sysctl) to allow it"
        );
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
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
        shared.capture(Protocol::Udp, source, local, &bytes);
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
            shared
                .refusals
                .note(source.ip(), "receive queue full: datagram dropped", "");
        }
    }
}
