//! How this node is addressed on the wire, and how it addresses back, in
//! one place: our Via and Contact, the path back to a peer for responses
//! (RFC 3261 §18.2.2, RFC 3581) and for requests in its dialogs, and the
//! branch of every request the node sends, whose kind tells whose its
//! answers are.

use std::net::{IpAddr, SocketAddr};

use porchlight_link::{Origin, Protocol, Target};
use porchlight_presence::FlowInfo;
use porchlight_sip::{Message, Uri, BRANCH_MAGIC_COOKIE};

use crate::outbound::NextHop;

/// Who sent a request this node started, told by its branch (after the
/// magic cookie, §8.1.1.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BranchKind {
    /// A request proxied on for someone else.
    Proxied,
    /// The node's own IM: an endpoint's app writing, or an IM session.
    Im,
    /// A keepalive OPTIONS to a registered contact.
    Keepalive,
    /// A NOTIFY, written by the presence crate's notifier
    /// (`NotifyRef::branch`) with this same tag.
    Notify,
}

impl BranchKind {
    const ALL: [BranchKind; 4] = [
        BranchKind::Proxied,
        BranchKind::Im,
        BranchKind::Keepalive,
        BranchKind::Notify,
    ];

    fn tag(self) -> &'static str {
        match self {
            BranchKind::Proxied => "px",
            BranchKind::Im => "im",
            BranchKind::Keepalive => "ka",
            BranchKind::Notify => "pl",
        }
    }

    /// The kind of a branch this node wrote; None for anyone else's.
    pub fn of(branch: &str) -> Option<BranchKind> {
        let rest = branch.strip_prefix(BRANCH_MAGIC_COOKIE)?;
        BranchKind::ALL
            .into_iter()
            .find(|k| rest.starts_with(k.tag()))
    }

    /// A new branch of this kind, unique in this node by `counter` and
    /// across nodes by `seed`.
    pub fn branch(self, seed: u64, counter: &mut u64) -> String {
        *counter += 1;
        format!(
            "{BRANCH_MAGIC_COOKIE}{}{:x}.{}",
            self.tag(),
            seed & 0xffff,
            counter
        )
    }
}

/// Our Via for `protocol`, sent by `sent_by` (host:port), without branch.
pub fn via(protocol: Protocol, sent_by: &str) -> String {
    format!("SIP/2.0/{} {sent_by}", protocol.via_token())
}

/// Where a response goes (RFC 3261 §18.2.2, RFC 3581): back on the stream
/// it came from; over UDP to the source address, at the source port when
/// `rport` asked for it, else at the sent-by port.
pub fn response_target(request: &Message, origin: &Origin) -> Target {
    if let Some(id) = origin.connection {
        return Target::Connection(id);
    }
    let ip: IpAddr = origin.source.ip();
    let port = match request.top_via() {
        Ok(via) if via.rport().is_some() => origin.source.port(),
        Ok(via) => via.port.unwrap_or(5060),
        Err(_) => origin.source.port(),
    };
    Target::Address {
        protocol: Protocol::Udp,
        addr: SocketAddr::new(ip, port),
        domain: None,
    }
}

/// The path back to a watcher or an endpoint: the stream it used, or its
/// UDP source address (RFC 3581 symmetric response routing).
pub fn flow_of(origin: &Origin) -> NextHop {
    NextHop::Direct(match origin.connection {
        Some(id) => Target::Connection(id),
        None => Target::Address {
            protocol: Protocol::Udp,
            addr: origin.source,
            domain: None,
        },
    })
}

/// Our Via and Contact on the flow a request came in on. A listener bound
/// to a wildcard address does not know which of its addresses the peer
/// used, so it names the host the peer put in the Request-URI.
pub fn flow_info(origin: &Origin, request: &Message) -> FlowInfo<NextHop> {
    let port = origin.local.port();
    let host = if origin.local.ip().is_unspecified() {
        request
            .request_uri()
            .and_then(|u| Uri::parse(u).ok())
            .and_then(|u| u.sip().map(|s| s.host.to_string()))
            .unwrap_or_else(|| "localhost".into())
    } else {
        match origin.local {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        }
    };
    let (via, contact) = our_via_and_contact(origin.protocol, &host, port);
    FlowInfo {
        flow: flow_of(origin),
        reliable: origin.protocol.is_reliable(),
        via,
        contact,
    }
}

/// Our Via (without parameters) and Contact on a flow of `protocol` that
/// leaves from `host:port`: what a subscription's requests carry, so the
/// answers and the next requests come back to this node.
pub fn our_via_and_contact(protocol: Protocol, host: &str, port: u16) -> (String, String) {
    let token = protocol.via_token().to_ascii_lowercase();
    (
        via(protocol, &format!("{host}:{port}")),
        format!("<sip:{host}:{port};transport={token}>"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_branch_the_node_writes_tells_its_kind() {
        let mut counter = 0;
        for kind in BranchKind::ALL {
            let branch = kind.branch(0x5eed, &mut counter);
            assert!(branch.starts_with(BRANCH_MAGIC_COOKIE));
            assert_eq!(BranchKind::of(&branch), Some(kind), "{branch}");
        }
        let notify = porchlight_presence::NotifyRef {
            id: porchlight_presence::SubscriptionId {
                index: 3,
                generation: 1,
            },
            cseq: 9,
        };
        assert_eq!(BranchKind::of(&notify.branch()), Some(BranchKind::Notify));
        assert_eq!(BranchKind::of("z9hG4bK-peer-7"), None, "a peer's branch");
        assert_eq!(BranchKind::of("px1"), None, "no magic cookie");
    }
}
