//! How this node is named and reached: its domains, the names and
//! addresses that make a URI its own, the addresses it listens on (for
//! Via, Contact and Record-Route), the edge's routing (the internal next
//! hop, the key of its dialog tokens) and the trust header it writes for
//! the inside. Set at start; read by the router, the proxy and delivery.

use std::net::SocketAddr;

use porchlight_link::Protocol;

use crate::edge::Edge;
use crate::uas::LocalNames;

/// This node's names, addresses and edge.
pub(super) struct Names {
    /// Our domains: the only From domains sent out to partners.
    pub(super) domains: Vec<String>,
    /// What makes a Request-URI or a Route entry ours.
    pub(super) local: LocalNames,
    /// The listening addresses, by protocol.
    pub(super) listening: Vec<(Protocol, SocketAddr)>,
    /// The internal next hop and the dialog tokens' key.
    pub(super) edge: Edge,
    /// The header that tells the inside who the outside peer is.
    pub(super) trust_header: String,
    /// The host our Record-Route entries name, when not an address.
    pub(super) record_route_host: Option<String>,
}

impl Names {
    /// This node's address for `protocol`, for Via and Record-Route (its
    /// first domain when it does not listen on it).
    pub(super) fn sent_by(&self, protocol: Protocol) -> String {
        self.listening
            .iter()
            .find(|(p, _)| *p == protocol)
            .map_or_else(|| self.domains[0].clone(), |(_, a)| a.to_string())
    }
}
