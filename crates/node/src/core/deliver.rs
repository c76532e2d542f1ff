//! Calls and IM delivered to endpoints: to the app's contact or SIP
//! target, or to its webhook, IM sessions the node answers for webhook
//! apps, and IM an endpoint's app sends through the node.

use super::*;

impl Core {
    /// Delivers a call or IM to an endpoint's app, under the policy for
    /// its modality: proxied to its registered contact or static target,
    /// or posted to its webhook.
    pub(super) fn deliver(
        &mut self,
        request: Message,
        origin: Origin,
        response_target: Target,
        endpoint: usize,
        consumed_routes: usize,
        now: Now,
    ) {
        let Some(key) = self.server_transaction(&request, &origin, response_target, None, now)
        else {
            return;
        };
        let trust = if self.presence.speaks_for_inside(&origin) {
            None
        } else {
            match self
                .presence
                .authorize_entering(&request, &origin, Some(endpoint), now)
            {
                Ok(trust) => Some(trust),
                Err(answer) => return self.respond(&key, &request, &origin, &answer, now),
            }
        };
        match self.presence.delivery(endpoint, modality_of(&request)) {
            Delivery::Sip {
                request_uri,
                next,
                registered,
            } => {
                let hop = edge::Forward {
                    next,
                    consumed_routes,
                    direction: Direction::ToEndpoint(endpoint),
                };
                let registration = registered.then(|| (endpoint, request_uri.clone()));
                let branch = Branch {
                    upstream: Upstream { request, origin },
                    registration,
                };
                self.relay(key, branch, hop, trust, Some(&request_uri), now);
            }
            Delivery::Webhook if request.method_kind() == Some(Method::Invite) => {
                self.open_session(key, request, origin, endpoint, trust, now)
            }
            Delivery::Webhook => {
                let posting = Posting {
                    waiting: Waiting::Transaction(key),
                    endpoint,
                    upstream: Upstream { request, origin },
                    session: None,
                };
                self.post_to_webhook(posting, trust, now);
            }
            Delivery::Refuse(answer) => self.respond(&key, &request, &origin, &answer, now),
        }
    }

    /// Hands a text to its endpoint's webhook in a task of its own; the
    /// server transaction, if any, waits for the outcome. `trust` is the
    /// trust header value the sender was admitted with.
    pub(super) fn post_to_webhook(&mut self, posting: Posting, trust: Option<String>, now: Now) {
        let Some((e, config)) = self
            .presence
            .directory()
            .get(posting.endpoint)
            .and_then(|e| Some((e, e.config.webhook.clone()?)))
        else {
            // Removed, or its webhook taken away, since the session began.
            let answer = Answer::new(
                status::TEMPORARILY_UNAVAILABLE,
                "Temporarily Unavailable (the endpoint's app no longer takes IM here)",
            );
            return self.answer_posting(posting, &answer, now);
        };
        let Some((content_type, text)) = posting.text() else {
            return;
        };
        let Upstream { request, origin } = &posting.upstream;
        let (id, delivery_id) = self.ids.delivery();
        let from = request.from().ok();
        let message = WebhookMessage {
            event: "message",
            delivery_id,
            endpoint: e.identity.uri.clone(),
            from: from
                .as_ref()
                .map(|f| f.uri.as_str().to_owned())
                .unwrap_or_default(),
            from_name: from
                .as_ref()
                .and_then(|f| f.display_name)
                .map(|n| n.trim_matches('"').to_owned())
                .filter(|n| !n.is_empty()),
            content_type,
            text,
            peer: origin
                .peer
                .as_ref()
                .and_then(|p| p.domains.first().cloned()),
            verified: match trust.as_deref() {
                Some(trust) => trust.contains("verified=yes"),
                // From the inside: its word holds for our own domains only;
                // any other domain it names is a claim nobody proved.
                None => from.as_ref().is_some_and(|f| {
                    let domain = domain_of(f.uri.as_str());
                    self.names
                        .domains
                        .iter()
                        .any(|d| d.eq_ignore_ascii_case(&domain))
                }),
            },
            call_id: request.call_id().unwrap_or_default().to_owned(),
            in_session: posting.session.is_some(),
        };
        self.actions.push_back(Action::Post {
            delivery: id,
            webhook: config,
            message,
        });
        self.posting.insert(id, posting);
    }

    /// Answers an IM INVITE for a webhook app as the app itself: the
    /// session is held here, its first text goes to the webhook.
    pub(super) fn open_session(
        &mut self,
        key: ServerKey,
        request: Message,
        origin: Origin,
        endpoint: usize,
        trust: Option<String>,
        now: Now,
    ) {
        let local_tag = self.ids.tag("s");
        let here = if origin.local.ip().is_unspecified() {
            self.names
                .record_route_host
                .clone()
                .unwrap_or_else(|| self.names.domains[0].clone())
        } else {
            origin.local.to_string()
        };
        let transport = origin.protocol.via_token().to_ascii_lowercase();
        let user = self
            .presence
            .directory()
            .get(endpoint)
            .and_then(|e| e.aor.split('@').next())
            .unwrap_or_default()
            .to_owned();
        let from_domain = request
            .from()
            .map(|f| domain_of(f.uri.as_str()))
            .unwrap_or_default();
        // Our requests go to a partner by its name, like the proxy's;
        // otherwise along the caller's route set or to its Contact.
        let next = partner_of(self.presence.policy(), &origin, &from_domain)
            .map(NextHop::Partner)
            .or_else(|| {
                let first_hop = request.record_routes().next().and_then(Result::ok);
                let contact = match request.contacts() {
                    Ok(Contacts::List(list)) => list.first().map(|c| c.uri.as_str().to_owned()),
                    _ => None,
                };
                first_hop
                    .map(|r| r.uri.as_str().to_owned())
                    .or(contact)
                    .and_then(|uri| edge::hop_of(&uri))
            })
            .unwrap_or_else(|| NextHop::Direct(response_target(&request, &origin)));
        let ours = OurSide {
            local_tag,
            contact: format!("<sip:{user}@{here};transport={transport}>"),
            host: origin.local.ip().to_string(),
            next,
            trust: trust.clone(),
        };
        match self.sessions.accept(&request, endpoint, ours, now.mono) {
            Ok(accepted) => {
                let bytes = self.render(&request, &origin, &accepted.answer);
                self.layer.respond(&key, 200, bytes.clone(), now.mono);
                if !origin.protocol.is_reliable() {
                    let target = response_target(&request, &origin);
                    self.sessions
                        .await_ack(&accepted.key, bytes, target, now.mono);
                }
                if accepted.first_text.is_some() {
                    let posting = Posting {
                        waiting: Waiting::Nobody,
                        endpoint,
                        upstream: Upstream { request, origin },
                        session: Some(accepted.key),
                    };
                    self.post_to_webhook(posting, trust, now);
                }
            }
            Err(answer) => self.respond(&key, &request, &origin, &answer, now),
        }
    }

    /// A request inside an IM session the node holds: text goes to the
    /// webhook, a BYE ends the session, anything else is acknowledged.
    pub(super) fn in_session(
        &mut self,
        session: SessionKey,
        request: Message,
        origin: Origin,
        target: Target,
        now: Now,
    ) {
        let reliable = origin.protocol.is_reliable();
        let key =
            match self
                .layer
                .receive_request(&request, NextHop::Direct(target), reliable, now.mono)
            {
                Ok(RequestMatch::New(key)) => key,
                Ok(RequestMatch::DialogAck) => return self.sessions.acked(&session),
                // A retransmission the layer answers.
                _ => return,
            };
        let Some(event) = self
            .sessions
            .receive(&session, request.method_kind(), now.mono)
        else {
            let answer = Answer::new(
                status::CALL_DOES_NOT_EXIST,
                "Call/Transaction Does Not Exist",
            );
            return self.respond(&key, &request, &origin, &answer, now);
        };
        match event {
            InSession::Text { endpoint } => {
                let trust = self.sessions.trust(&session);
                let posting = Posting {
                    waiting: Waiting::Transaction(key),
                    endpoint,
                    upstream: Upstream { request, origin },
                    session: Some(session),
                };
                self.post_to_webhook(posting, trust, now);
            }
            InSession::Ended | InSession::Other => {
                self.respond(&key, &request, &origin, &Answer::new(status::OK, "OK"), now)
            }
        }
    }

    /// Ends the federated IM sessions the policy in force refuses, with a
    /// BYE, as a policy change ends the subscriptions it refuses.
    pub(super) fn end_refused_sessions(&mut self, now: Now) {
        let refused: Vec<SessionKey> = self
            .sessions
            .held()
            .filter_map(|(key, endpoint, remote, next)| {
                let NextHop::Partner(partner) = next else {
                    return None;
                };
                let decision = self.presence.refuses_session(endpoint, remote, partner)?;
                tracing::info!(
                    remote,
                    partner = %partner,
                    "IM session ends: the policy now refuses it\n{decision}"
                );
                Some(key.clone())
            })
            .collect();
        for key in refused {
            let Some(next) = self.sessions.next_hop(&key).cloned() else {
                continue;
            };
            let via = self.via_for(&next);
            let branch = self.ids.branch(BranchKind::Im);
            if let Some((bytes, next)) = self.sessions.end(&key, &via, &branch, now.mono) {
                self.send_in_session(bytes, next, now);
            }
        }
    }

    /// Sends a request of ours in an IM session.
    pub(super) fn send_in_session(&mut self, bytes: Bytes, next: NextHop, now: Now) {
        let Some(request) = parse_own(bytes) else {
            return;
        };
        let reliable = next.is_reliable();
        match self.layer.send_request(request, next, reliable, now.mono) {
            Ok(client) => {
                self.originated.insert(client, None);
            }
            Err(e) => tracing::error!("cannot send into an IM session: {e}"),
        }
    }

    /// A MESSAGE of our own from `from` to `to`, sent to `request_uri`
    /// through `next`; None: handed over here (to a webhook), with our
    /// own address in its Via.
    pub(super) fn write_message(
        &mut self,
        from: &str,
        to: &str,
        request_uri: &str,
        next: Option<&NextHop>,
        content_type: &str,
        text: &str,
    ) -> Option<Message> {
        let via = match next {
            Some(next) => self.via_for(next),
            None => {
                let own = self.own_origin();
                format!("SIP/2.0/{} {}", own.protocol.via_token(), own.local)
            }
        };
        let branch = self.ids.branch(BranchKind::Im);
        let tag = self.ids.tag("im");
        let mut w = MessageWriter::request("MESSAGE", request_uri);
        w.header_fmt("Via", format_args!("{via};branch={branch}"));
        w.header("Max-Forwards", "70");
        w.header_fmt("From", format_args!("<{from}>;tag={tag}"));
        w.header_fmt("To", format_args!("<{to}>"));
        w.header_fmt("Call-ID", format_args!("{tag}@{}", self.names.domains[0]));
        w.header("CSeq", "1 MESSAGE");
        w.header("Content-Type", content_type);
        parse_own(w.finish(text.as_bytes()))
    }

    /// IM from one endpoint's app to another endpoint of this node: to the
    /// recipient's registered contact or static target, else its webhook,
    /// as IM from outside would go; `reply` learns the outcome.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn message_endpoint(
        &mut self,
        from: &str,
        recipient: usize,
        to: &str,
        content_type: &str,
        text: &str,
        reply: Option<Reply<SentMessage>>,
        now: Now,
    ) {
        match self
            .presence
            .delivery(recipient, porchlight_policy::Modality::Im)
        {
            Delivery::Sip {
                request_uri, next, ..
            } => {
                let Some(message) =
                    self.write_message(from, to, &request_uri, Some(&next), content_type, text)
                else {
                    return tell(reply, unwritable());
                };
                self.originate(message, next, reply, now);
            }
            Delivery::Webhook => {
                let Some(message) = self.write_message(from, to, to, None, content_type, text)
                else {
                    return tell(reply, unwritable());
                };
                let posting = Posting {
                    waiting: reply.map_or(Waiting::Nobody, Waiting::Api),
                    endpoint: recipient,
                    upstream: Upstream {
                        request: message,
                        origin: self.own_origin(),
                    },
                    session: None,
                };
                // The sender is one of ours, proven by the API's token.
                self.post_to_webhook(posting, None, now);
            }
            Delivery::Refuse(refusal) => tell(reply, refusal),
        }
    }

    /// Sends a request the node makes for an app; `reply` learns its
    /// final response, or that it could not be sent.
    pub(super) fn originate(
        &mut self,
        message: Message,
        next: NextHop,
        reply: Option<Reply<SentMessage>>,
        now: Now,
    ) {
        let reliable = next.is_reliable();
        match self.layer.send_request(message, next, reliable, now.mono) {
            Ok(client) => {
                self.originated.insert(client, reply);
            }
            Err(e) => tell(
                reply,
                Answer::new(
                    status::SERVER_INTERNAL_ERROR,
                    format!("Server Internal Error ({e})"),
                ),
            ),
        }
    }

    /// Where the node's own requests come from, for the delivery paths
    /// that ask: this node, with no certificate of a peer.
    pub(super) fn own_origin(&self) -> Origin {
        let (protocol, local) = self.names.listening[0];
        Origin {
            protocol,
            source: local,
            local,
            connection: None,
            peer: None,
        }
    }

    /// Sends the app's `text` into an IM session.
    pub(super) fn session_message(&mut self, session: &SessionKey, text: &str, now: Now) {
        let Some(next) = self.sessions.next_hop(session).cloned() else {
            return;
        };
        let via = self.via_for(&next);
        let branch = self.ids.branch(BranchKind::Im);
        if let Some((bytes, next)) = self
            .sessions
            .message(session, text, &via, &branch, now.mono)
        {
            self.send_in_session(bytes, next, now);
        }
    }

    /// A webhook delivery ended: the sender gets its answer, and the app's
    /// reply, if any, goes back to the sender as IM.
    pub(super) fn on_posted(&mut self, id: u64, outcome: Outcome, now: Now) {
        let Some(posting) = self.posting.remove(&id) else {
            return;
        };
        let sender = posting
            .upstream
            .request
            .from()
            .map(|f| f.uri.as_str().to_owned());
        let (endpoint, session) = (posting.endpoint, posting.session.clone());
        self.answer_posting(posting, &outcome.answer(), now);
        let Outcome::Delivered {
            reply: Some(reply), ..
        } = &outcome
        else {
            return;
        };
        if let Some(session) = &session {
            return self.session_message(session, reply, now);
        }
        if let Ok(sender) = sender {
            self.send_message(endpoint, &sender, "text/plain", reply, None, now);
        }
    }

    /// Tells whoever waits for a webhook delivery how it ended.
    pub(super) fn answer_posting(&mut self, posting: Posting, answer: &Answer, now: Now) {
        let Upstream { request, origin } = &posting.upstream;
        match posting.waiting {
            Waiting::Transaction(key) => self.respond(&key, request, origin, answer, now),
            Waiting::Api(reply) => {
                reply.send(SentMessage {
                    status: answer.code,
                    reason: answer.reason.clone(),
                });
            }
            Waiting::Nobody => {}
        }
    }

    /// Sends an IM as `endpoint` to `to`, out through the edge under the
    /// policy (or to the inside, for our own domains in edge mode).
    /// `reply` learns the final response.
    pub(super) fn send_message(
        &mut self,
        endpoint: usize,
        to: &str,
        content_type: &str,
        text: &str,
        reply: Option<Reply<SentMessage>>,
        now: Now,
    ) {
        let refuse = |reply: Option<Reply<SentMessage>>, answer: Answer| {
            tracing::info!(
                to,
                "IM from an endpoint not sent: {} {}",
                answer.code,
                answer.reason
            );
            tell(reply, answer);
        };
        let parsed = Uri::parse(to);
        let Some(uri) = parsed.as_ref().ok().and_then(|u| match u {
            Uri::Sip(sip, _) if sip.user.is_some() => Some(sip),
            _ => None,
        }) else {
            return refuse(
                reply,
                Answer::new(
                    status::BAD_REQUEST,
                    format!("\"to\" = {to:?} is not a SIP URI of a user: write it like \"sip:alice@fabrikam.com\""),
                ),
            );
        };
        let Some(from) = self
            .presence
            .directory()
            .get(endpoint)
            .map(|e| e.identity.uri.clone())
        else {
            return refuse(
                reply,
                Answer::new(status::NOT_FOUND, "Not Found (no longer an endpoint)"),
            );
        };
        // Another endpoint here: delivered as a call or IM from outside
        // would be, to its app's contact, target or webhook.
        if let Some(recipient) = self.presence.directory().resolve(to) {
            return self.message_endpoint(&from, recipient, to, content_type, text, reply, now);
        }
        let domain = uri.host.to_string().to_ascii_lowercase();
        let internal = self.names.edge.internal;
        let next = match (self.names.local.is_local(uri), internal) {
            (false, _) => NextHop::Partner(self.presence.policy().route_to(&domain).verify.into()),
            (true, Some((protocol, addr))) => NextHop::address(protocol, addr),
            (true, None) => {
                return refuse(
                    reply,
                    Answer::new(status::NOT_FOUND, "Not Found (no one here by that name)"),
                )
            }
        };
        let Some(message) = self.write_message(&from, to, to, Some(&next), content_type, text)
        else {
            return refuse(
                reply,
                Answer::new(
                    status::BAD_REQUEST,
                    "Bad Request (the message cannot be written)",
                ),
            );
        };
        if !self.names.local.is_local(uri) {
            if let Err(answer) =
                self.presence
                    .authorize_leaving(&self.names.domains, &message, &domain, now)
            {
                return refuse(reply, *answer);
            }
        }
        self.originate(message, next, reply, now);
    }

    /// A request this node originated got its final response.
    pub(super) fn originated_ended(&mut self, id: &ClientKey, status: u16, reason: &str) {
        if let Some(Some(reply)) = self.originated.remove(id) {
            reply.send(SentMessage {
                status,
                reason: reason.to_owned(),
            });
        }
    }
}
