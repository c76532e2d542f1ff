//! `porchlight explain`: the policy decision a request would get, found by
//! the path the request would take. The question (who, to whom, which
//! modality, under which certificate) is written as the request it
//! describes and routed by the same [`router::classify`] as a real one;
//! only then is the policy asked what the path asks it — inbound to an
//! endpoint, inbound to someone behind the edge, or outbound to a partner.
//! So the admin's answer and the node's cannot drift apart.

use std::sync::Arc;

use bytes::Bytes;
use porchlight_link::{IdentitySource, PeerIdentity};
use porchlight_policy::{decide, Decision, LocalParty, Modality, Remote, Request};
use porchlight_sip::{Framing, Limits, Message, Method};

use crate::config::Config;
use crate::edge::{self, domain_of, Direction, Edge};
use crate::presence::local_party;
use crate::router::{self, Dispatch, Facts, RouteCtx, Service, Source};

/// The decision the node in `config` makes for a request from `from` to
/// `to` (SIP URIs) wanting `modality`, that came over mutual TLS with a
/// certificate proving `peer_domains` (None: without one). A request from
/// our domains to another domain is judged as the inside sending out, and
/// the certificate does not matter. None when the request's path asks no
/// policy question: it is answered by the node (an unknown endpoint, a
/// relay refused) or comes from the inside to our own side.
pub fn explain(
    config: &Config,
    from: &str,
    to: &str,
    modality: Modality,
    peer_domains: Option<&[String]>,
) -> Option<Decision> {
    let directory = config.directory().ok()?;
    let request = request_for(from, to, modality)?;
    let local = config.local_names(&[]);
    let edge = Edge {
        internal: edge::address_of(&config.edge.internal_next_hop),
        secret: [0; 32],
    };
    let own_domains = config.own_domains();
    let ctx = RouteCtx {
        local: &local,
        edge: &edge,
        policy: &config.policy,
        own_domains: &own_domains,
        fenced: false,
    };
    let source = if local.names(from) && !local.names(to) {
        Source::Inside(None)
    } else if let Some(domains) = peer_domains {
        Source::Certified(Arc::new(PeerIdentity {
            domains: domains.to_vec(),
            source: IdentitySource::SanDns,
            not_after: i64::MAX,
        }))
    } else {
        Source::Stranger
    };
    let mut facts = Facts::read(&request, source, &ctx);
    facts.endpoint = directory.resolve(to);
    // The inside sends out whoever it is; an endpoint's app is vouched
    // for by where it sends from, which a question cannot show.
    facts.from_endpoint = false;
    let remote = || peer_domains.map_or(Remote::Unverified, Remote::Certified);
    let anyone = |uri| LocalParty {
        uri,
        grant: None,
        site: None,
    };
    let endpoint = |slot: usize| directory.get(slot).map(local_party);
    let (remote_domain, remote, local_side) = match router::classify(&facts, &ctx) {
        Dispatch::Deliver { endpoint: slot, .. } => (domain_of(from), remote(), endpoint(slot)?),
        Dispatch::Service(Service::Subscribe) => {
            (domain_of(from), remote(), endpoint(facts.endpoint?)?)
        }
        Dispatch::Proxy(forward) => match forward.direction {
            Direction::Entering => (domain_of(from), remote(), anyone(to)),
            Direction::Leaving { domain, .. } => {
                let sender = directory.resolve(from).and_then(endpoint);
                (domain, Remote::Destination, sender.unwrap_or(anyone(from)))
            }
            Direction::ToEndpoint(_) | Direction::InDialog => return None,
        },
        _ => return None,
    };
    Some(decide(
        &config.policy,
        &Request {
            remote_domain: &remote_domain,
            remote,
            local: local_side,
            modality,
        },
    ))
}

/// The request a question describes, or None when `from` or `to` cannot
/// be written into one (not a URI, or with characters that would change
/// the message).
fn request_for(from: &str, to: &str, modality: Modality) -> Option<Message> {
    let plain = |uri: &str| {
        !uri.is_empty()
            && uri
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'<' | b'>' | b'"' | b','))
    };
    if !plain(from) || !plain(to) {
        return None;
    }
    let method = method_for(modality);
    let text = format!(
        "{method} {to} SIP/2.0\r\nVia: SIP/2.0/TLS explain.invalid;branch=z9hG4bKexplain\r\n\
         Max-Forwards: 70\r\nFrom: <{from}>;tag=explain\r\nTo: <{to}>\r\n\
         Call-ID: explain\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
    );
    let request = Message::parse(Bytes::from(text), Framing::Stream, &Limits::default()).ok()?;
    request.validate_request().is_ok().then_some(request)
}

/// The method a request of `modality` is made with: a call
/// is an INVITE, IM a MESSAGE, presence a SUBSCRIBE.
fn method_for(modality: Modality) -> Method<'static> {
    match modality {
        Modality::Audio => Method::Invite,
        Modality::Im => Method::Message,
        Modality::Presence => Method::Subscribe,
    }
}
