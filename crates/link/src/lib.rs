//! What the SIP transport and the node say to each other, without I/O:
//! how a message arrived and from whom (RFC 5922 identity), where one is
//! to go, and the per-source bookkeeping both keep (refusals logged once,
//! request rates). The transport crate does the sockets; the node's core
//! depends only on this, so it cannot do any.

mod identity;
mod rates;
mod refusals;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use porchlight_sip::{Message, ParseError};

pub use identity::{
    certificate_not_after, identity_from_certificate, IdentityError, IdentitySource, PeerIdentity,
};
pub use rates::{SourceRateLimits, SourceRates};
pub use refusals::RefusalLog;

/// The transport protocols Porchlight speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// UDP datagrams.
    Udp,
    /// TCP byte stream.
    Tcp,
    /// TLS over TCP.
    Tls,
}

impl Protocol {
    /// The Via transport token.
    pub fn via_token(self) -> &'static str {
        match self {
            Protocol::Udp => "UDP",
            Protocol::Tcp => "TCP",
            Protocol::Tls => "TLS",
        }
    }

    /// The protocol a Via transport token names (`UDP`, `TCP`, `TLS`), as
    /// saved paths and Via values write it.
    pub fn from_via_token(token: &str) -> Option<Protocol> {
        match token {
            "UDP" => Some(Protocol::Udp),
            "TCP" => Some(Protocol::Tcp),
            "TLS" => Some(Protocol::Tls),
            _ => None,
        }
    }

    /// Reliable transports need no retransmissions (§17.1.1.2).
    pub fn is_reliable(self) -> bool {
        self != Protocol::Udp
    }
}

/// Identifies one stream connection for the life of the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnectionId(pub u64);

/// How and from whom a message arrived.
#[derive(Clone, Debug)]
pub struct Origin {
    /// Transport protocol.
    pub protocol: Protocol,
    /// The peer's address as seen by the socket.
    pub source: SocketAddr,
    /// Our address it arrived on.
    pub local: SocketAddr,
    /// The stream connection, for answering on the same one.
    pub connection: Option<ConnectionId>,
    /// The verified certificate identity of a mutual-TLS peer.
    pub peer: Option<Arc<PeerIdentity>>,
}

/// What the transport hands upward.
#[derive(Debug)]
pub enum Received {
    /// A framed, parsed message.
    Message(Message, Origin),
    /// Bytes that are not a message. `head` holds what could still be read
    /// of the header section, so a request can be answered (400, 513).
    Malformed {
        /// Why parsing failed.
        error: ParseError,
        /// The header section, when it could be read despite the error.
        head: Option<Message>,
        /// Where it came from.
        origin: Origin,
    },
}

/// Where to send bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// Over an existing stream connection (responses on streams, §18.2.2).
    Connection(ConnectionId),
    /// To an address; streams reuse a connection to it or open one. For TLS,
    /// `domain` is the server name to verify and the identity under which
    /// connections are reused.
    Address {
        /// Protocol.
        protocol: Protocol,
        /// Address.
        addr: SocketAddr,
        /// The peer's SIP domain (TLS only).
        domain: Option<String>,
    },
}

/// Whether an address alone vouches for a connection from it (the
/// trusted networks), asked by the transport of each new connection.
pub type TrustedSource = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;
