//! The router: what a request is and where it goes, decided once.
//!
//! Every request the core takes is first read into [`Facts`] — its method,
//! whether it is in a dialog and which side of an edge dialog it belongs
//! to, whether it is addressed to this node, which endpoint it names,
//! whether it comes from the inside, a certified partner or a stranger,
//! where the subscription it refreshes is held — each worked out once.
//! Then one pure function, [`classify`], turns the facts into a
//! [`Dispatch`]: answer it here, hand it to one of the node's services,
//! deliver it to an endpoint's app, proxy it across the edge, or match it
//! to something already under way. `porchlight explain` asks the same
//! function (see [`explain`]), so what the admin reads is the path a
//! request takes.
//!
//! The order of the checks is RFC 3261's: validity (§8.2.1–8.2.2), our own
//! Route entries (§16.4), then the edge's routing, then the checks a UAS
//! makes of what it answers itself — scheme, locality and hop count
//! (§16.3), method, extensions (§8.2.2.3) and bodies (§8.2.3).
//!
//! A front door other than SIP over UDP, TCP or TLS builds `Facts` from its
//! own message and enters here.

use std::net::SocketAddr;
use std::sync::Arc;

use porchlight_link::{Origin, PeerIdentity, Protocol};
use porchlight_policy::PolicyConfig;
use porchlight_sip::status;
use porchlight_sip::{Answer, HeaderName, Message, Method, NameAddr, Uri};

use crate::edge::{hop_of, DialogSide, Direction, Edge, Forward, NO_PARTNER};
use crate::outbound::NextHop;
use crate::uas::{LocalNames, ACCEPTED_BODIES, ALLOWED_EVENTS, ALLOWED_METHODS, SUPPORTED_OPTIONS};

/// Where a request comes from, as the edge's trust model sees it.
#[derive(Clone, Debug)]
pub enum Source {
    /// The trusted inside of the edge (see [`crate::edge::speaks_for_inside`]);
    /// the certificate, if any, names only our own domains.
    Inside(Option<Arc<PeerIdentity>>),
    /// A peer whose certificate proves these names.
    Certified(Arc<PeerIdentity>),
    /// Anyone else.
    Stranger,
}

impl Source {
    /// Who sent a request that came from `origin`: a certificate outranks
    /// an address (see [`crate::edge::speaks_for_inside`]).
    pub fn of(origin: &Origin, ctx: &RouteCtx<'_>) -> Source {
        let inside = crate::edge::speaks_for_inside(ctx.policy, ctx.own_domains, origin);
        match (&origin.peer, inside) {
            (peer, true) => Source::Inside(peer.clone()),
            (Some(peer), false) => Source::Certified(peer.clone()),
            (None, false) => Source::Stranger,
        }
    }

    /// Whether the request speaks for the inside.
    pub fn is_inside(&self) -> bool {
        matches!(self, Source::Inside(_))
    }

    /// The certificate the request came under, wherever from.
    fn peer(&self) -> Option<&PeerIdentity> {
        match self {
            Source::Inside(peer) => peer.as_deref(),
            Source::Certified(peer) => Some(peer),
            Source::Stranger => None,
        }
    }
}

/// What the Request-URI addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addressed {
    /// Not a SIP URI (416).
    NotSip,
    /// One of this node's names or addresses.
    Ours {
        /// Whether it has a user part (an OPTIONS without one pings the node).
        user: bool,
    },
    /// Another domain, lower-case.
    Elsewhere(String),
}

/// What a dialog token in our own Route entry says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Token {
    /// Issued by this node for this Call-ID: the dialog's side and its
    /// outside partner.
    Valid {
        /// Which of our parties the dialog joins.
        side: DialogSide,
        /// The outside partner's name ([`NO_PARTNER`] when it proved none).
        partner: String,
    },
    /// Not one this node issued for this Call-ID.
    Forged,
}

/// Our own Route entries on top of a request (§16.4).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OurRoutes {
    /// How many of the top entries are ours.
    pub consumed: usize,
    /// The dialog token the first of them carries, if any.
    pub token: Option<Token>,
    /// Another Route entry follows ours.
    pub more: bool,
    /// Toward our side of a dialog: the next Route entry, else the
    /// Request-URI, as a hop (read only for a valid token).
    pub onward: Option<NextHop>,
}

/// Where the subscription a refresh names is held, when not here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holder {
    /// A live member of the cluster, at its internal address.
    Member(SocketAddr),
    /// A node that is gone or not yet known here: the node that takes it
    /// over answers the retry.
    Away,
}

/// Everything the router needs to know about a request, each computed
/// once: from the message and its origin ([`Facts::read`]), and from the
/// node's state (the fields the core fills in after).
#[derive(Clone, Debug)]
pub struct Facts<'m> {
    /// The method.
    pub method: Method<'m>,
    /// Why the request cannot be taken at all (400, 505).
    pub invalid: Option<Answer>,
    /// What the Request-URI addresses.
    pub addressed: Addressed,
    /// The To has a tag.
    pub in_dialog: bool,
    /// Our Route entries on top.
    pub routes: OurRoutes,
    /// Who sent it.
    pub source: Source,
    /// Max-Forwards is 0.
    pub hop_limit_reached: bool,
    /// Require tokens this node does not support, comma-separated.
    pub unsupported: Option<String>,
    /// It has a body of a type this node does not accept.
    pub body_refused: bool,
    /// A Microsoft batched subscription (a list in its body, no endpoint
    /// in its Request-URI).
    pub batched: bool,
    /// The endpoint the Request-URI names.
    pub endpoint: Option<usize>,
    /// A call or IM sent by one of our endpoints' apps, proven by where it
    /// came from.
    pub from_endpoint: bool,
    /// A later request of an IM session this node holds.
    pub in_session: bool,
    /// A CANCEL of an INVITE this node proxies.
    pub cancels_proxied: bool,
    /// Where the subscription a SUBSCRIBE refreshes is held, if elsewhere.
    pub held_by: Option<Holder>,
}

/// What the router reads a request with: the node's names, its edge and
/// the policy in force, and whether it may take subscriptions now.
pub struct RouteCtx<'c> {
    /// The names and addresses that mean this node.
    pub local: &'c LocalNames,
    /// The edge's routing and its token key.
    pub edge: &'c Edge,
    /// The policy in force.
    pub policy: &'c PolicyConfig,
    /// This node's own domains and aliases, lower-case: a certificate
    /// naming only these is the inside's.
    pub own_domains: &'c [String],
    /// The node's lease is too old for it to notify (cluster).
    pub fenced: bool,
}

/// The node's own services, which answer what is addressed to the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// A subscription, new or refreshed.
    Subscribe,
    /// A registration of an endpoint's app.
    Register,
    /// An app's presence.
    Publish,
    /// Microsoft's SERVICE (batched subscriptions, self-publication).
    Service,
}

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Dispatch {
    /// Nothing to answer (an ACK to a final answer of ours).
    Absorb,
    /// A final answer from this node, through a server transaction.
    Answer(Answer),
    /// Cancel the INVITE this node proxies (§16.10) and answer 200.
    Cancel,
    /// A later request of an IM session this node holds.
    InSession,
    /// Proxy it (§16).
    Proxy(Forward),
    /// A call or IM for one of our endpoints: deliver it to the app.
    Deliver {
        /// The endpoint's slot.
        endpoint: usize,
        /// Our Route entries removed from the top.
        consumed_routes: usize,
    },
    /// One of the node's own services answers it.
    Service(Service),
}

/// The content type of a Microsoft batched subscription's list.
const BATCH_LIST: &str = "application/msrtc-adrl-categorylist+xml";

impl<'m> Facts<'m> {
    /// What the message says and who sent it, with the node's state left
    /// blank (no endpoint, session, proxied INVITE or holder): the core
    /// fills those in.
    pub fn read(request: &'m Message, source: Source, ctx: &RouteCtx<'_>) -> Facts<'m> {
        let method = request.method_kind().unwrap_or(Method::Other(""));
        let invalid = request.validate_request().err().map(|e| {
            let reason = match e.status() {
                505 => "Version Not Supported".to_owned(),
                _ => format!("Bad Request ({e})"),
            };
            Answer::new(e.status(), reason)
        });
        let addressed = match Uri::parse(request.request_uri().unwrap_or_default()) {
            Ok(Uri::Sip(uri, _)) if ctx.local.is_local(&uri) => Addressed::Ours {
                user: uri.user.is_some(),
            },
            Ok(Uri::Sip(uri, _)) => Addressed::Elsewhere(uri.host.to_string().to_ascii_lowercase()),
            _ => Addressed::NotSip,
        };
        let unsupported: Vec<&str> = request
            .tokens(HeaderName::Require)
            .filter_map(Result::ok)
            .filter(|t| !SUPPORTED_OPTIONS.iter().any(|s| s.eq_ignore_ascii_case(t)))
            .collect();
        let content_type = request.content_type().ok().flatten();
        let body_refused = !request.body().is_empty()
            && !content_type.as_ref().is_some_and(|ct| {
                ACCEPTED_BODIES
                    .split(", ")
                    .any(|a| !a.is_empty() && ct.is(a))
            });
        Facts {
            method,
            invalid,
            addressed,
            in_dialog: request.to().is_ok_and(|to| to.tag().is_some()),
            routes: our_routes(request, ctx),
            source,
            hop_limit_reached: request.max_forwards().ok().flatten() == Some(0),
            unsupported: (!unsupported.is_empty()).then(|| unsupported.join(", ")),
            body_refused,
            batched: content_type.is_some_and(|ct| ct.is(BATCH_LIST)),
            endpoint: None,
            from_endpoint: false,
            in_session: false,
            cancels_proxied: false,
            held_by: None,
        }
    }

    /// A new call or IM (the requests delivered to endpoints).
    pub fn is_new_call(&self) -> bool {
        matches!(self.method, Method::Invite | Method::Message)
    }
}

/// Reads our own Route entries off the top of `request`, and checks the
/// dialog token the first one carries.
fn our_routes(request: &Message, ctx: &RouteCtx<'_>) -> OurRoutes {
    let mut consumed = 0;
    let mut token = None;
    for entry in request.routes() {
        let Ok(entry) = entry else { break };
        let Uri::Sip(sip, _) = &entry.uri else { break };
        if !ctx.local.is_this_node(sip) || sip.param("lr").is_none() {
            break;
        }
        consumed += 1;
        if token.is_none() {
            token = sip
                .user
                .filter(|u| u.starts_with("rr-") || u.starts_with("ep-"))
                .map(str::to_owned);
        }
    }
    let next_route = || request.routes().nth(consumed).and_then(Result::ok);
    let token = token.map(|token| {
        let call_id = request.call_id().unwrap_or_default();
        match ctx.edge.check_token(call_id, &token) {
            Some((side, partner)) => Token::Valid {
                side,
                partner: partner.to_owned(),
            },
            None => Token::Forged,
        }
    });
    let onward = matches!(token, Some(Token::Valid { .. }))
        .then(|| {
            next_route()
                .map(|n: NameAddr<'_>| n.uri.as_str().to_owned())
                .or_else(|| request.request_uri().map(str::to_owned))
                .and_then(|uri| hop_of(&uri))
        })
        .flatten();
    OurRoutes {
        consumed,
        more: next_route().is_some(),
        token,
        onward,
    }
}

/// Decides where a request goes, from its facts alone.
pub fn classify(facts: &Facts<'_>, ctx: &RouteCtx<'_>) -> Dispatch {
    if let Some(answer) = &facts.invalid {
        return Dispatch::Answer(answer.clone());
    }
    if facts.method == Method::Cancel && facts.cancels_proxied {
        return Dispatch::Cancel;
    }
    if facts.in_session {
        return Dispatch::InSession;
    }
    if let Some(dispatch) = across_edge(facts, ctx) {
        return dispatch;
    }
    if facts.method == Method::Subscribe {
        if let Some(Holder::Member(addr)) = facts.held_by {
            return Dispatch::Proxy(Forward {
                next: NextHop::address(Protocol::Tcp, addr),
                consumed_routes: 0,
                direction: Direction::InDialog,
            });
        }
    }
    match at_this_node(facts) {
        Dispatch::Answer(answer)
            if answer.code == status::NOT_FOUND && hides_missing_endpoint(facts, ctx) =>
        {
            // As an endpoint's would be: the hop count comes first (§16.3).
            Dispatch::Answer(if facts.hop_limit_reached {
                Answer::new(status::TOO_MANY_HOPS, "Too Many Hops")
            } else {
                Answer::new(status::FORBIDDEN, "Forbidden")
            })
        }
        Dispatch::Service(Service::Subscribe) if ctx.fenced || facts.held_by.is_some() => {
            // Never 481, which would end the watcher's subscription while
            // its holder may be alive.
            Dispatch::Answer(
                Answer::new(status::SERVICE_UNAVAILABLE, "Service Unavailable")
                    .with("Retry-After", HELD_ELSEWHERE_RETRY_SECS.to_string()),
            )
        }
        Dispatch::Service(Service::Subscribe) if hides_missing_endpoint(facts, ctx) => {
            Dispatch::Answer(Answer::new(status::FORBIDDEN, "Forbidden"))
        }
        dispatch => dispatch,
    }
}

/// Seconds a refresh of a subscription held elsewhere is asked to wait:
/// long enough for another node to take over one whose holder is gone.
pub const HELD_ELSEWHERE_RETRY_SECS: u64 = 5;

/// Whether an outsider's new request to an endpoint that does not exist
/// gets 403 rather than 404, as one the policy refuses would
/// (`hide_missing_endpoints`), so a scan learns nothing.
fn hides_missing_endpoint(facts: &Facts<'_>, ctx: &RouteCtx<'_>) -> bool {
    ctx.policy.edge.hide_missing_endpoints
        && !facts.in_dialog
        && !facts.batched
        && !facts.source.is_inside()
        && facts.endpoint.is_none()
}

/// The edge's routing: whether a request is proxied or delivered rather
/// than answered here, and where to. None: the node answers it.
fn across_edge(facts: &Facts<'_>, ctx: &RouteCtx<'_>) -> Option<Dispatch> {
    let inside = facts.source.is_inside();
    let method = facts.method;
    let routes = &facts.routes;
    let refuse = |reason: &str| {
        Some(Dispatch::Answer(Answer::new(
            status::FORBIDDEN,
            format!("Forbidden ({reason})"),
        )))
    };
    match &routes.token {
        Some(Token::Forged) => return refuse("not a dialog of this edge"),
        Some(Token::Valid { side, partner }) => {
            let from_partner = facts.source.peer().is_some_and(|p| p.covers(partner));
            let next = match side {
                _ if from_partner => routes.onward.clone(),
                // A partner that proved no name is reached like anyone else.
                _ if partner == NO_PARTNER => routes.onward.clone(),
                // From our side: to the dialog's partner, by name. An app
                // may be anywhere; knowing the token bound to this Call-ID
                // is what shows it is in the dialog.
                DialogSide::Endpoint => Some(NextHop::Partner(partner.as_str().into())),
                DialogSide::Inside if inside => Some(NextHop::Partner(partner.as_str().into())),
                DialogSide::Inside => return refuse("not a dialog of this peer"),
            };
            return Some(match next {
                Some(next) => Dispatch::Proxy(Forward {
                    next,
                    consumed_routes: routes.consumed,
                    direction: Direction::InDialog,
                }),
                None => Dispatch::Answer(Answer::new(
                    status::UNSUPPORTED_URI_SCHEME,
                    "Unsupported URI Scheme",
                )),
            });
        }
        None => {}
    }
    // Our entry without a token is a preloaded route (a client using this
    // node as its outbound proxy): consumed, then the request is judged as
    // if it named no route — relaying onward is for the inside only.
    if routes.consumed > 0 && routes.more && !inside {
        return refuse("relaying is not permitted");
    }
    if facts.addressed == Addressed::NotSip {
        return None;
    }
    // ACK and CANCEL follow their INVITE; a request with a To tag but no
    // token is not a dialog this node routes.
    if facts.in_dialog || matches!(method, Method::Ack | Method::Cancel) {
        return None;
    }
    if let (Some(endpoint), true) = (facts.endpoint, facts.is_new_call()) {
        return Some(Dispatch::Deliver {
            endpoint,
            consumed_routes: routes.consumed,
        });
    }
    let own_service = matches!(method, Method::Register | Method::Publish | Method::Service);
    if let Addressed::Elsewhere(domain) = &facts.addressed {
        // Only the inside and our endpoints' apps may send out through the
        // edge; the node's own services are not federated.
        let from_endpoint = !inside && facts.from_endpoint;
        if !(inside || from_endpoint) || own_service {
            return None;
        }
        let partner: Arc<str> = ctx.policy.route_to(domain).verify.into();
        return Some(Dispatch::Proxy(Forward {
            next: NextHop::Partner(partner.clone()),
            consumed_routes: routes.consumed,
            direction: Direction::Leaving {
                domain: domain.clone(),
                partner,
                from_endpoint,
            },
        }));
    }
    let (protocol, addr) = ctx.edge.internal?;
    // New requests for our domains that no endpoint serves go inside; the
    // node's own methods (presence, registration, OPTIONS to the node
    // itself) stay here.
    let pings_node =
        method == Method::Options && facts.addressed == Addressed::Ours { user: false };
    if facts.endpoint.is_some() || own_service || pings_node {
        return None;
    }
    Some(Dispatch::Proxy(Forward {
        next: NextHop::address(protocol, addr),
        consumed_routes: routes.consumed,
        direction: Direction::Entering,
    }))
}

/// What this node answers a request addressed to it, in the order of
/// RFC 3261 §8.2 and §16.3: scheme (416), locality and hop count (483,
/// 403), method (501, 481, 404), extensions (420), bodies (415).
fn at_this_node(facts: &Facts<'_>) -> Dispatch {
    let method = facts.method;
    if method == Method::Ack {
        return Dispatch::Absorb;
    }
    match &facts.addressed {
        Addressed::NotSip => {
            return Dispatch::Answer(Answer::new(
                status::UNSUPPORTED_URI_SCHEME,
                "Unsupported URI Scheme",
            ))
        }
        // Not ours: a proxy would forward it, and with no hops left it may not.
        Addressed::Elsewhere(_) if facts.hop_limit_reached => {
            return Dispatch::Answer(Answer::new(status::TOO_MANY_HOPS, "Too Many Hops"))
        }
        Addressed::Elsewhere(_) => {
            return Dispatch::Answer(Answer::new(
                status::FORBIDDEN,
                "Forbidden (relaying is not permitted)",
            ))
        }
        Addressed::Ours { .. } => {}
    }
    let no_dialog = || {
        Dispatch::Answer(Answer::new(
            status::CALL_DOES_NOT_EXIST,
            "Call/Transaction Does Not Exist",
        ))
    };
    let service = match method {
        Method::Options => None,
        Method::Subscribe => Some(Service::Subscribe),
        Method::Register => Some(Service::Register),
        Method::Publish => Some(Service::Publish),
        Method::Service => Some(Service::Service),
        Method::Cancel => return no_dialog(),
        // A dialog no endpoint or session of this node holds (§12.2.2).
        Method::Invite | Method::Message if facts.in_dialog => return no_dialog(),
        Method::Invite | Method::Message => {
            return Dispatch::Answer(Answer::new(
                status::NOT_FOUND,
                "Not Found (no endpoint by that name)",
            ))
        }
        m if m.is_in_call() => return no_dialog(),
        _ => {
            return Dispatch::Answer(
                Answer::new(status::NOT_IMPLEMENTED, "Not Implemented")
                    .with("Allow", ALLOWED_METHODS),
            )
        }
    };
    if let Some(unsupported) = &facts.unsupported {
        return Dispatch::Answer(
            Answer::new(status::BAD_EXTENSION, "Bad Extension")
                .with("Unsupported", unsupported.clone()),
        );
    }
    if facts.body_refused {
        return Dispatch::Answer(
            Answer::new(status::UNSUPPORTED_MEDIA_TYPE, "Unsupported Media Type")
                .with("Accept", ACCEPTED_BODIES),
        );
    }
    match service {
        Some(service) => Dispatch::Service(service),
        None => Dispatch::Answer(
            Answer::new(status::OK, "OK")
                .with("Allow", ALLOWED_METHODS)
                .with("Accept", ACCEPTED_BODIES)
                .with("Supported", SUPPORTED_OPTIONS.join(", "))
                .with("Allow-Events", ALLOWED_EVENTS),
        ),
    }
}

#[cfg(test)]
mod tests;
