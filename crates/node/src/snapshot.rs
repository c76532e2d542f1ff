//! What of a node's state is saved, in words: the next hop of a saved
//! subscription or binding, read back after a restart. The store's own codec keeps the records; this is
//! the node's part of them.

use std::net::SocketAddr;

use porchlight_link::{Protocol, Target};
use porchlight_presence::SavedSubscription;

use crate::outbound::NextHop;

/// A next hop in words. A connection does not outlive the process, so it
/// is saved as "reconnect": after a restart the watcher is reached the way
/// RFC 3261 reaches a dialog's remote target.
pub fn flow_to_text(hop: &NextHop) -> String {
    match hop {
        NextHop::Partner(name) => format!("partner {name}"),
        NextHop::Direct(Target::Address {
            protocol,
            addr,
            domain,
        }) => match domain {
            Some(d) => format!("{} {addr} {d}", protocol.via_token()),
            None => format!("{} {addr}", protocol.via_token()),
        },
        NextHop::Direct(Target::Connection(_)) => "reconnect".into(),
        NextHop::Host { protocol, uri } => format!("host {} {uri}", protocol.via_token()),
    }
}

/// Where a saved subscription's lost connection is reached again: the
/// first hop of the dialog's route set, else its remote target (RFC 3261
/// §12.2.1.1).
pub fn reconnect_to(saved: &SavedSubscription<String>) -> &str {
    saved
        .route_set
        .as_deref()
        .and_then(|r| r.split(',').next())
        .map(|r| r.trim().trim_start_matches('<'))
        .and_then(|r| r.split('>').next())
        .unwrap_or(&saved.remote_target)
}

/// Reads back [`flow_to_text`]; a saved connection becomes the next hop
/// `reconnect_to` names.
pub fn flow_from_text(text: &str, reconnect_to: &str) -> Option<NextHop> {
    let mut words = text.split(' ');
    let kind = words.next()?;
    let protocol = Protocol::from_via_token;
    match kind {
        "partner" => Some(NextHop::Partner(words.next()?.into())),
        "host" => Some(NextHop::Host {
            protocol: protocol(words.next()?)?,
            uri: words.next()?.into(),
        }),
        "reconnect" => crate::edge::hop_of(reconnect_to),
        token => {
            let protocol = protocol(token)?;
            let addr: SocketAddr = words.next()?.parse().ok()?;
            Some(NextHop::Direct(Target::Address {
                protocol,
                addr,
                domain: words.next().map(str::to_owned),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use porchlight_presence::{FlowInfo, Format, SavedTarget, SubscriptionId};

    fn saved(route_set: Option<&str>) -> SavedSubscription<String> {
        SavedSubscription {
            id: SubscriptionId {
                index: 0,
                generation: 0,
            },
            target: SavedTarget::Presence("sip:helpdesk@contoso.com".into()),
            format: Format::Pidf,
            benotify: false,
            call_id: "c".into(),
            remote_tag: "t".into(),
            remote_uri: "sip:alice@contoso.com".into(),
            remote_target: "sip:alice@10.0.0.9:5070;transport=tcp".into(),
            expires_at: 0,
            local_cseq: 1,
            remote_cseq: 1,
            route_set: route_set.map(str::to_owned),
            flow: FlowInfo {
                flow: String::new(),
                reliable: true,
                via: String::new(),
                contact: String::new(),
            },
            tag: None,
        }
    }

    #[test]
    fn flows_survive_in_words() {
        let s = saved(None);
        for hop in [
            NextHop::Partner("fabrikam.com".into()),
            NextHop::address(Protocol::Udp, "192.0.2.7:5060".parse().unwrap()),
            NextHop::Direct(Target::Address {
                protocol: Protocol::Tls,
                addr: "192.0.2.7:5061".parse().unwrap(),
                domain: Some("fabrikam.com".into()),
            }),
            NextHop::Host {
                protocol: Protocol::Tcp,
                uri: "sip:pc7.corp.example;transport=tcp".into(),
            },
        ] {
            assert_eq!(
                flow_from_text(&flow_to_text(&hop), reconnect_to(&s)),
                Some(hop)
            );
        }
    }

    #[test]
    fn a_lost_connection_is_reached_again_by_the_dialog_rules() {
        let connection = NextHop::Direct(Target::Connection(porchlight_link::ConnectionId(4)));
        let text = flow_to_text(&connection);
        assert_eq!(
            flow_from_text(&text, reconnect_to(&saved(None))),
            Some(NextHop::address(
                Protocol::Tcp,
                "10.0.0.9:5070".parse().unwrap()
            )),
            "the remote target"
        );
        assert_eq!(
            flow_from_text(
                &text,
                reconnect_to(&saved(Some(
                    "<sip:10.0.0.1:5061;transport=tls;lr>, <sip:10.0.0.2;lr>"
                )))
            ),
            Some(NextHop::address(
                Protocol::Tls,
                "10.0.0.1:5061".parse().unwrap()
            )),
            "the first hop of the route set"
        );
        assert_eq!(flow_from_text("carrier pigeon", "sip:a@b"), None);
    }
}
