//! Sending toward names rather than addresses: a federated partner's edge
//! (found through its pinned proxy or DNS, reached over mutual TLS with its
//! domain verified, the connection reused) and next hops inside the edge
//! given by host name (RFC 3263).
//!
//! The event loop never waits for DNS or for a connection to open. A
//! request for a name, or for a stream address, with no usable connection
//! is parked here, one dial task per destination runs the lookups, connects
//! and handshakes, and its result releases everything parked for it.
//! [`Dialer`] is that bookkeeping, without I/O; the driver runs the task.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use porchlight_link::{Protocol, Target};
use porchlight_transaction::TxId;

/// Where a request goes, as the node knows it before any lookup.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum NextHop {
    /// A connection or address: nothing to look up.
    Direct(Target),
    /// A federated partner's edge, by the name its certificate must prove.
    Partner(Arc<str>),
    /// A SIP URI whose host is a name, over the transport it asks for.
    Host {
        /// The transport (the URI's `transport` parameter, TLS for `sips:`, else UDP).
        protocol: Protocol,
        /// The URI.
        uri: Arc<str>,
    },
}

impl NextHop {
    /// A plain address.
    pub fn address(protocol: Protocol, addr: SocketAddr) -> NextHop {
        NextHop::Direct(Target::Address {
            protocol,
            addr,
            domain: None,
        })
    }

    /// The transport the request travels on. A connection is one a partner
    /// or endpoint opened to us; the proxy only ever sends to partners' by name.
    pub fn protocol(&self) -> Protocol {
        match self {
            NextHop::Direct(Target::Address { protocol, .. }) | NextHop::Host { protocol, .. } => {
                *protocol
            }
            NextHop::Direct(Target::Connection(_)) | NextHop::Partner(_) => Protocol::Tls,
        }
    }

    /// Whether it is a stream (no retransmissions, §17.1.1.2).
    pub fn is_reliable(&self) -> bool {
        match self {
            NextHop::Direct(Target::Connection(_)) => true,
            other => other.protocol().is_reliable(),
        }
    }
}

/// A message waiting for its next hop to be found.
#[derive(Debug, PartialEq, Eq)]
pub struct Parked {
    /// The client transaction that sent it, told when it cannot go.
    pub transaction: Option<TxId>,
    /// The bytes.
    pub bytes: Bytes,
}

/// What to do with a message for a next hop.
#[derive(Debug, PartialEq, Eq)]
pub enum Dispatch {
    /// Send it there now.
    Send(Target, Parked),
    /// Parked; start a dial task for the hop (the first message for it).
    Dial,
    /// Parked behind a dial already under way.
    Wait,
    /// Too many messages wait for this hop: it fails now.
    Full(Parked),
}

/// How long a host name's resolution is reused before it is looked up
/// again (the resolver's own cache follows the records' TTLs below it).
const HOST_REUSE: Duration = Duration::from_secs(30);

/// What the dialer asks of the transport: facts about open connections,
/// never I/O, so dispatching cannot wait.
pub trait Reach {
    /// `target` as it can be used now (a UDP address, an open connection),
    /// or None when a connection must be opened first.
    fn ready(&self, target: &Target) -> Option<Target>;
    /// An open connection whose peer proved `domain`.
    fn verified(&self, domain: &str) -> Option<Target>;
}

/// Messages parked per name, and the host names already resolved.
pub struct Dialer {
    parked: HashMap<NextHop, Vec<Parked>>,
    hosts: HashMap<Arc<str>, (Target, Instant)>,
    max_parked: usize,
}

impl Dialer {
    /// At most `max_parked` messages wait for any one name.
    pub fn new(max_parked: usize) -> Dialer {
        Dialer {
            parked: HashMap::new(),
            hosts: HashMap::new(),
            max_parked,
        }
    }

    /// Where `message` goes now, or that it waits: a hop is ready when
    /// `reach` can take it without opening anything.
    pub fn dispatch(
        &mut self,
        hop: &NextHop,
        message: Parked,
        now: Instant,
        reach: &(impl Reach + ?Sized),
    ) -> Dispatch {
        let ready = match hop {
            NextHop::Direct(target) => reach.ready(target),
            NextHop::Partner(name) => reach.verified(name),
            NextHop::Host { uri, .. } => self
                .hosts
                .get(uri)
                .filter(|(_, at)| now.duration_since(*at) < HOST_REUSE)
                .and_then(|(target, _)| reach.ready(target)),
        };
        if let Some(target) = ready {
            return Dispatch::Send(target, message);
        }
        let waiting = self.parked.entry(hop.clone()).or_default();
        if waiting.len() >= self.max_parked {
            return Dispatch::Full(message);
        }
        waiting.push(message);
        let first = waiting.len() == 1;
        if first {
            Dispatch::Dial
        } else {
            Dispatch::Wait
        }
    }

    /// A dial finished: what was parked for `hop`, to send to the target
    /// found or to fail.
    pub fn finished(&mut self, hop: &NextHop, found: Option<&Target>, now: Instant) -> Vec<Parked> {
        if let (NextHop::Host { uri, .. }, Some(target)) = (hop, found) {
            self.hosts.insert(uri.clone(), (target.clone(), now));
        }
        self.parked.remove(hop).unwrap_or_default()
    }

    /// Messages waiting, over all destinations.
    pub fn parked(&self) -> usize {
        self.parked.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    // Virtual time starts from a real instant; only the tests read it.
    #![allow(clippy::disallowed_methods)]

    use super::*;

    fn parked(n: u8) -> Parked {
        Parked {
            transaction: None,
            bytes: Bytes::from(vec![n]),
        }
    }

    /// Connections as a test sets them up: UDP and connections are ready,
    /// a stream address only when listed, a partner only when named.
    #[derive(Default)]
    struct Links {
        open: Vec<(Target, Target)>,
        verified: Vec<(&'static str, Target)>,
    }

    impl Reach for Links {
        fn ready(&self, target: &Target) -> Option<Target> {
            match target {
                Target::Address {
                    protocol: Protocol::Tcp | Protocol::Tls,
                    ..
                } => self
                    .open
                    .iter()
                    .find(|(to, _)| to == target)
                    .map(|(_, c)| c.clone()),
                _ => Some(target.clone()),
            }
        }

        fn verified(&self, domain: &str) -> Option<Target> {
            self.verified
                .iter()
                .find(|(d, _)| *d == domain)
                .map(|(_, c)| c.clone())
        }
    }

    #[test]
    fn a_stream_address_without_a_connection_is_dialled_not_waited_for() {
        let mut dialer = Dialer::new(8);
        let now = Instant::now();
        let address = Target::Address {
            protocol: Protocol::Tcp,
            addr: "127.0.0.1:5099".parse().unwrap(),
            domain: None,
        };
        let hop = NextHop::Direct(address.clone());
        let none = Links::default();
        assert_eq!(dialer.dispatch(&hop, parked(1), now, &none), Dispatch::Dial);
        assert_eq!(dialer.dispatch(&hop, parked(2), now, &none), Dispatch::Wait);
        let connection = Target::Connection(porchlight_link::ConnectionId(4));
        assert_eq!(dialer.finished(&hop, Some(&connection), now).len(), 2);
        let open = Links {
            open: vec![(address, connection.clone())],
            ..Links::default()
        };
        assert_eq!(
            dialer.dispatch(&hop, parked(3), now, &open),
            Dispatch::Send(connection, parked(3)),
            "once open, the connection is used at once"
        );
        let udp = NextHop::address(Protocol::Udp, "127.0.0.1:5098".parse().unwrap());
        assert!(matches!(
            dialer.dispatch(&udp, parked(4), now, &none),
            Dispatch::Send(..)
        ));
    }

    #[test]
    fn one_dial_per_name_and_bounded_waiting() {
        let mut dialer = Dialer::new(2);
        let partner = NextHop::Partner("fabrikam.com".into());
        let now = Instant::now();
        let none = &Links::default();
        assert_eq!(
            dialer.dispatch(&partner, parked(1), now, none),
            Dispatch::Dial
        );
        assert_eq!(
            dialer.dispatch(&partner, parked(2), now, none),
            Dispatch::Wait
        );
        assert_eq!(
            dialer.dispatch(&partner, parked(3), now, none),
            Dispatch::Full(parked(3)),
            "a refused message is handed back"
        );
        let released = dialer.finished(&partner, None, now);
        assert_eq!(
            released.iter().map(|p| p.bytes[0]).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(
            dialer.dispatch(&partner, parked(4), now, none),
            Dispatch::Dial,
            "a failed dial leaves nothing behind: the next message dials again"
        );
    }

    #[test]
    fn verified_connections_and_resolved_hosts_need_no_dial() {
        let mut dialer = Dialer::new(8);
        let now = Instant::now();
        let partner = NextHop::Partner("fabrikam.com".into());
        let connection = Target::Connection(porchlight_link::ConnectionId(9));
        let links = Links {
            verified: vec![("fabrikam.com", connection.clone())],
            ..Links::default()
        };
        let d = dialer.dispatch(&partner, parked(1), now, &links);
        assert_eq!(d, Dispatch::Send(connection, parked(1)));

        let host = NextHop::Host {
            protocol: Protocol::Udp,
            uri: "sip:bob@pc1.corp.example".into(),
        };
        assert_eq!(
            dialer.dispatch(&host, parked(2), now, &Links::default()),
            Dispatch::Dial
        );
        let found = Target::Address {
            protocol: Protocol::Udp,
            addr: "10.0.0.7:5060".parse().unwrap(),
            domain: None,
        };
        assert_eq!(dialer.finished(&host, Some(&found), now).len(), 1);
        let d = dialer.dispatch(&host, parked(3), now, &Links::default());
        assert_eq!(d, Dispatch::Send(found, parked(3)), "reused while fresh");
        let later = now + HOST_REUSE;
        assert_eq!(
            dialer.dispatch(&host, parked(4), later, &Links::default()),
            Dispatch::Dial
        );
    }
}
