//! Proxying (RFC 3261 §16): requests the edge sends on, to the inside,
//! to a partner or to an endpoint's contact, each through a client
//! transaction paired with the server transaction it serves, and CANCEL.

use super::*;

impl Core {
    /// A CANCEL for an INVITE this node proxies (§16.10): 200 for the
    /// CANCEL, and the CANCEL goes on downstream. The router sends here
    /// only a CANCEL whose INVITE a branch serves.
    pub(super) fn cancel(&mut self, request: &Message, origin: &Origin, target: &Target, now: Now) {
        let Ok(key) = ServerKey::of(request) else {
            return;
        };
        let Some(downstream) = self.proxy.cancel(&key.cancelled_invite()) else {
            return;
        };
        let reliable = origin.protocol.is_reliable();
        if let Ok(RequestMatch::New(own)) =
            self.layer
                .receive_request(request, NextHop::Direct(target.clone()), reliable, now.mono)
        {
            self.respond(&own, request, origin, &Answer::new(status::OK, "OK"), now);
        }
        if let Some(action) = downstream {
            self.apply(action, now);
        }
    }

    /// Opens the server transaction of a request this node proxies or
    /// delivers. None when nothing more is to be done: a retransmission, an
    /// ACK for a 2xx forwarded on `hop` statelessly, or an answer already
    /// given (400 without a transaction key, 483 with no hops left — §16.3
    /// step 3 puts the hop count before policy, so a looping request gets
    /// 483 whoever sent it).
    pub(super) fn server_transaction(
        &mut self,
        request: &Message,
        origin: &Origin,
        response_target: Target,
        hop: Option<&edge::Forward>,
        now: Now,
    ) -> Option<ServerKey> {
        let reliable = origin.protocol.is_reliable();
        let key = match self.layer.receive_request(
            request,
            NextHop::Direct(response_target.clone()),
            reliable,
            now.mono,
        ) {
            Ok(RequestMatch::New(key)) => key,
            Ok(RequestMatch::DialogAck) => {
                let forwarded = hop.and_then(|hop| {
                    let bytes = self.forwarded(request, origin, hop, None, None).ok()?;
                    Some((hop, bytes))
                });
                if let Some((hop, bytes)) = forwarded {
                    let ack = Parked {
                        transaction: None,
                        bytes,
                    };
                    if let Some((target, ack)) = self.dispatch(&hop.next, ack, now) {
                        self.send_detached(target, ack.bytes);
                    }
                }
                return None;
            }
            Ok(_) => return None,
            Err(_) => {
                let answer = Answer::new(status::BAD_REQUEST, "Bad Request (no transaction key)");
                let bytes = self.render(request, origin, &answer);
                self.send_detached(response_target, bytes);
                return None;
            }
        };
        if request.max_forwards().ok().flatten() == Some(0) {
            let answer = Answer::new(status::TOO_MANY_HOPS, "Too Many Hops");
            self.respond(&key, request, origin, &answer, now);
            return None;
        }
        Some(key)
    }

    /// Forwards a request the edge routes elsewhere: a new one through a
    /// server and a client transaction, an ACK for a 2xx statelessly.
    pub(super) fn proxy_request(
        &mut self,
        request: Message,
        origin: Origin,
        response_target: Target,
        hop: edge::Forward,
        now: Now,
    ) {
        let Some(key) =
            self.server_transaction(&request, &origin, response_target, Some(&hop), now)
        else {
            return;
        };
        let admitted = match &hop.direction {
            Direction::Entering => self
                .presence
                .authorize_entering(&request, &origin, None, now)
                .map(Some),
            Direction::Leaving { domain, .. } => self
                .presence
                .authorize_leaving(&self.names.domains, &request, domain, now)
                .map(|()| None),
            Direction::ToEndpoint(_) | Direction::InDialog => Ok(None),
        };
        match admitted {
            Ok(trust) => {
                let branch = Branch {
                    upstream: Upstream { request, origin },
                    registration: None,
                };
                self.relay(key, branch, hop, trust, None, now)
            }
            Err(answer) => self.respond(&key, &request, &origin, &answer, now),
        }
    }

    /// Where the subscription a refresh names is held when another node
    /// made it: a live member of the cluster in the run that made it, at
    /// its internal address (the refresh is proxied there over TCP, in the
    /// dialog), or a node that is gone or not yet known here (answered 503
    /// with Retry-After; the node that takes it over answers the retry).
    pub(super) fn holder(&self, request: &Message) -> Option<Holder> {
        let origin = self.presence.made_elsewhere(request)?;
        Some(self.membership.live_member(origin).map_or_else(
            || {
                tracing::debug!(
                    origin,
                    "a refresh for a subscription of a node that is gone or not yet known here"
                );
                Holder::Away
            },
            Holder::Member,
        ))
    }

    /// Sends the copy of an admitted request on through a client
    /// transaction paired with its server transaction `key`.
    pub(super) fn relay(
        &mut self,
        key: ServerKey,
        branch: Branch,
        hop: edge::Forward,
        trust: Option<String>,
        request_uri: Option<&str>,
        now: Now,
    ) {
        let Upstream { request, origin } = &branch.upstream;
        let forwarded = match self.forwarded(request, origin, &hop, trust, request_uri) {
            Ok(bytes) => parse_own(bytes)
                .ok_or_else(|| Answer::new(status::SERVER_INTERNAL_ERROR, "Server Internal Error")),
            Err(ProxyError::TooManyHops) => {
                Err(Answer::new(status::TOO_MANY_HOPS, "Too Many Hops"))
            }
            Err(e) => Err(Answer::new(
                status::BAD_REQUEST,
                format!("Bad Request ({e})"),
            )),
        };
        let forwarded = match forwarded {
            Ok(forwarded) => forwarded,
            Err(answer) => {
                let Upstream { request, origin } = &branch.upstream;
                self.respond(&key, request, origin, &answer, now);
                return;
            }
        };
        let reliable_out = hop.next.is_reliable();
        match self
            .layer
            .send_request(forwarded.clone(), hop.next, reliable_out, now.mono)
        {
            Ok(client) => self.proxy.insert(key, client, forwarded, branch, now.mono),
            Err(e) => tracing::error!("cannot start a client transaction: {e}"),
        }
    }

    /// The copy of `request` for `hop`: our Via, for a new request crossing
    /// the edge our two Record-Route entries (the one facing the next hop
    /// on top), and the trust header only when this node vouches for it.
    pub(super) fn forwarded(
        &mut self,
        request: &Message,
        origin: &Origin,
        hop: &edge::Forward,
        trust: Option<String>,
        request_uri: Option<&str>,
    ) -> Result<Bytes, ProxyError> {
        let protocol = self.protocol_to(&hop.next);
        let via = self.via_for(&hop.next);
        let mut record_route = Vec::new();
        let call_id = request.call_id().unwrap_or_default();
        let entry = |token: &str, host: &str, p: Protocol| {
            let t = p.via_token().to_ascii_lowercase();
            format!("<sip:{token}@{host};transport={t};lr>")
        };
        match &hop.direction {
            Direction::Entering | Direction::ToEndpoint(_) => {
                let side = match hop.direction {
                    Direction::Entering => DialogSide::Inside,
                    _ => DialogSide::Endpoint,
                };
                let from = request.from().map(|f| domain_of(f.uri.as_str()));
                let partner = from
                    .ok()
                    .and_then(|d| partner_of(self.presence.policy(), origin, &d))
                    .unwrap_or_else(|| NO_PARTNER.into());
                let token = self.names.edge.route_token(call_id, side, &partner);
                let outside = self
                    .names
                    .record_route_host
                    .clone()
                    .unwrap_or_else(|| origin.local.to_string());
                record_route.push(entry(&token, &self.names.sent_by(protocol), protocol));
                record_route.push(entry(&token, &outside, origin.protocol));
            }
            Direction::Leaving {
                partner,
                from_endpoint,
                ..
            } => {
                let side = if *from_endpoint {
                    DialogSide::Endpoint
                } else {
                    DialogSide::Inside
                };
                let token = self.names.edge.route_token(call_id, side, partner);
                let outside = self
                    .names
                    .record_route_host
                    .clone()
                    .unwrap_or_else(|| self.names.sent_by(Protocol::Tls));
                record_route.push(entry(&token, &outside, Protocol::Tls));
                record_route.push(entry(&token, &origin.local.to_string(), origin.protocol));
            }
            Direction::InDialog => {}
        }
        let trust_header = self.names.trust_header.as_str();
        let add: Vec<(&str, String)> = trust.into_iter().map(|t| (trust_header, t)).collect();
        // Only what this node vouches for reaches the inside, and nothing
        // of it leaves: the header is removed from whatever passes.
        let strip: &[&str] = &[trust_header];
        let branch = self.ids.branch(BranchKind::Proxied);
        forward(
            request,
            &Forwarding {
                request_uri,
                consumed_routes: hop.consumed_routes,
                record_route: &record_route,
                via: &via,
                strip,
                add: &add,
            },
            &branch,
        )
    }

    /// Carries out what the proxy table asks for.
    pub(super) fn apply(&mut self, action: ProxyAction<Branch>, now: Now) {
        match action {
            ProxyAction::Respond {
                server,
                code,
                bytes,
            } => {
                self.layer.respond(&server, code, bytes, now.mono);
            }
            ProxyAction::Fail { server, code, user } => {
                let reason = if code == 408 {
                    "Request Timeout (the next hop did not answer)"
                } else {
                    "Service Unavailable (the next hop cannot be reached)"
                };
                let mut answer = Answer::new(code, reason);
                if code == 503 {
                    answer = answer.with("Retry-After", "30".to_owned());
                    if let Some((endpoint, contact)) = &user.registration {
                        self.presence.delivery_failed(*endpoint, contact, now);
                    }
                }
                let Upstream { request, origin } = &user.upstream;
                self.respond(&server, request, origin, &answer, now);
            }
            ProxyAction::Cancel { client, bytes } => {
                let target = self.layer.context(&TxId::Client(client)).cloned();
                if let (Some(target), Some(cancel)) = (target, parse_own(bytes)) {
                    let reliable = target.is_reliable();
                    if let Err(e) = self.layer.send_request(cancel, target, reliable, now.mono) {
                        tracing::error!("cannot send CANCEL: {e}");
                    }
                }
            }
        }
    }
}
