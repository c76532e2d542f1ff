//! The node's own services: SUBSCRIBE, REGISTER (with digest and the
//! guessing guard), PUBLISH and SERVICE.

use super::*;
use crate::router::{Facts, Service};
use porchlight_sip::status;

impl PresenceService {
    /// Answers what the router handed to one of the node's services; its
    /// facts say who sent it and which endpoint it names.
    pub fn handle(
        &mut self,
        service: Service,
        request: &Message,
        origin: &Origin,
        facts: &Facts<'_>,
        now: Now,
    ) -> Answer {
        match service {
            Service::Subscribe => self.subscribe(request, origin, facts, now),
            Service::Register => self.register(request, origin, now),
            Service::Publish => self.publish(request, origin, now),
            Service::Service => self.service(request, origin, now),
        }
    }

    /// Takes a subscription, new or refreshed, through the gate.
    fn subscribe(
        &mut self,
        request: &Message,
        origin: &Origin,
        facts: &Facts<'_>,
        now: Now,
    ) -> Answer {
        let inside = facts.source.is_inside();
        if !inside && !facts.in_dialog && self.hides_refused(request, origin, facts.endpoint, now) {
            return Answer::new(status::FORBIDDEN, "Forbidden");
        }
        let mut flow = flow_info(origin, request);
        // A federated watcher is reached through its partner's edge, by
        // name: NOTIFYs survive the connection closing.
        if !inside {
            let from = request.from().map(|f| domain_of(f.uri.as_str()));
            if let Some(partner) = from
                .ok()
                .and_then(|d| edge::partner_of(&self.access.policy, origin, &d))
            {
                flow.flow = NextHop::Partner(partner);
            }
        }
        let (directory, policy, admission) = (
            &self.directory,
            &self.access.policy,
            &mut self.access.admission,
        );
        self.notifier.subscribe(
            request,
            flow,
            &|uri| directory.resolve(uri).map(|i| i as u32),
            &mut |endpoint, watcher| {
                if inside {
                    Authorization::Allow
                } else {
                    authorize_subscription(
                        policy, directory, admission, origin, endpoint, watcher, now,
                    )
                }
            },
            now.mono,
        )
    }

    /// Password guesses refused unchecked, and wrong passwords, since start.
    pub fn guess_counts(&self) -> (u64, u64) {
        self.access.guesses.counts()
    }

    /// Finds the endpoint a request speaks for and checks it is really that
    /// endpoint talking.
    pub(super) fn authenticated_endpoint(
        &mut self,
        request: &Message,
        origin: &Origin,
        uri: &str,
        now: Now,
    ) -> Result<usize, Box<Answer>> {
        let name = porchlight_presence::aor(uri).unwrap_or_default();
        self.guess_gate(origin, &name, now)?;
        let Some(endpoint) = self.directory.resolve(uri) else {
            return Err(Box::new(self.unknown_claim(
                request,
                origin,
                &name,
                not_found(),
                now,
            )));
        };
        let Some(credentials) = self
            .directory
            .get(endpoint)
            .and_then(|e| e.credentials.clone())
        else {
            return Err(Box::new(self.unknown_claim(
                request,
                origin,
                &name,
                no_credentials(),
                now,
            )));
        };
        let peer = trusted_peer(&credentials, origin);
        let outcome = self
            .registrar
            .authenticate(request, &credentials, peer, now.unix());
        let wrong = outcome.as_ref().is_err_and(|e| e.wrong_credentials);
        self.count_guess(origin, &name, wrong, outcome.is_ok(), now);
        outcome.map(|()| endpoint).map_err(|e| Box::new(e.answer))
    }

    /// Refuses, unchecked, a claim to be `name` from a source (or for a
    /// name) locked out for guessing passwords.
    pub(super) fn guess_gate(
        &mut self,
        origin: &Origin,
        name: &str,
        now: Now,
    ) -> Result<(), Box<Answer>> {
        match self.access.guesses.gate(now.mono, origin.source.ip(), name) {
            Gate::Open => Ok(()),
            Gate::Closed { retry_after } => Err(Box::new(
                Answer::new(status::SERVICE_UNAVAILABLE, "Service Unavailable")
                    .with("Retry-After", retry_after.as_secs().max(1).to_string()),
            )),
        }
    }

    /// Counts the outcome of checking a claim to be `name`; a lockout it
    /// starts is logged once.
    pub(super) fn count_guess(
        &mut self,
        origin: &Origin,
        name: &str,
        wrong: bool,
        proven: bool,
        now: Now,
    ) {
        let source = origin.source.ip();
        if proven {
            self.access.guesses.succeeded(now.mono, source, name);
        }
        if !wrong {
            return;
        }
        for lockout in self.access.guesses.failed(now.mono, source, name) {
            match lockout {
                Lockout::Source(ip, length) => tracing::warn!(
                    source = %ip,
                    "too many wrong passwords from this address: refused for {} s",
                    length.as_secs()
                ),
                Lockout::Endpoint(name, length) => tracing::warn!(
                    endpoint = %name,
                    "too many wrong passwords for this endpoint: strangers refused for {} s",
                    length.as_secs()
                ),
            }
        }
    }

    /// The answer to a claim to be a name that is no endpoint, or one that
    /// nothing can prove: `inside` says which, to the inside and to all
    /// when missing endpoints are not hidden; an outsider otherwise gets
    /// the challenge a real endpoint would give, and its answer counts as
    /// a wrong guess — so nothing tells the two apart.
    pub(super) fn unknown_claim(
        &mut self,
        request: &Message,
        origin: &Origin,
        name: &str,
        inside: Answer,
        now: Now,
    ) -> Answer {
        if !self.access.policy.edge.hide_missing_endpoints || self.speaks_for_inside(origin) {
            return inside;
        }
        let offered = request.auth(HeaderName::Authorization).next().is_some();
        self.count_guess(origin, name, offered, false, now);
        self.registrar.challenge(now.unix(), false, None)
    }

    pub(super) fn register(&mut self, request: &Message, origin: &Origin, now: Now) -> Answer {
        let Ok(to) = request.to() else {
            return Answer::new(status::BAD_REQUEST, "Bad Request (To)");
        };
        let name = porchlight_presence::aor(to.uri.as_str()).unwrap_or_default();
        if let Err(locked) = self.guess_gate(origin, &name, now) {
            return *locked;
        }
        let Some(endpoint) = self.directory.resolve(to.uri.as_str()) else {
            return self.unknown_claim(request, origin, &name, not_found(), now);
        };
        let Some(credentials) = self
            .directory
            .get(endpoint)
            .and_then(|e| e.credentials.clone())
        else {
            return self.unknown_claim(request, origin, &name, no_credentials(), now);
        };
        let peer = trusted_peer(&credentials, origin);
        let outcome = self.registrar.register(
            endpoint,
            request,
            &credentials,
            peer,
            flow_info(origin, request),
            now.mono,
            now.unix(),
        );
        let proven = outcome.answer.code == 200;
        self.count_guess(origin, &name, outcome.wrong_credentials, proven, now);
        if outcome.liveness_changed {
            self.refresh(endpoint, now);
        }
        if proven {
            self.changed.registrations.insert(endpoint);
        }
        let date = httpdate(now.wall);
        outcome.answer.with("Date", date)
    }

    pub(super) fn publish(&mut self, request: &Message, origin: &Origin, now: Now) -> Answer {
        let uri = request.request_uri().unwrap_or_default().to_owned();
        let endpoint = match self.authenticated_endpoint(request, origin, &uri, now) {
            Ok(e) => e,
            Err(answer) => return *answer,
        };
        match request.event() {
            Ok(Some(e)) if e.value.eq_ignore_ascii_case("presence") => {}
            _ => {
                return Answer::new(status::BAD_EVENT, "Bad Event").with("Allow-Events", "presence")
            }
        }
        let (Ok(if_match), Ok(expires)) = (
            request.entity_tag(HeaderName::SipIfMatch),
            request.expires(),
        ) else {
            return Answer::new(status::BAD_REQUEST, "Bad Request (SIP-If-Match or Expires)");
        };
        let body = if request.body().is_empty() {
            None
        } else {
            let is_pidf = request
                .content_type()
                .ok()
                .flatten()
                .is_some_and(|ct| ct.is("application/pidf+xml"));
            if !is_pidf {
                return Answer::new(status::UNSUPPORTED_MEDIA_TYPE, "Unsupported Media Type")
                    .with("Accept", "application/pidf+xml");
            }
            match parse_pidf(request.body(), self.bodies.xml) {
                Ok(state) => match state.check_lengths(self.bodies.note_bytes) {
                    Ok(()) => Some(state),
                    Err(e) => {
                        return Answer::new(status::BAD_REQUEST, format!("Bad Request ({e})"))
                    }
                },
                Err(e) => return Answer::new(status::BAD_REQUEST, format!("Bad Request ({e})")),
            }
        };
        match self
            .publications
            .publish(endpoint as u32, if_match, body, expires, now.mono)
        {
            Ok(published) => {
                self.changed.publications.insert(endpoint);
                self.refresh(endpoint, now);
                let mut answer =
                    Answer::new(status::OK, "OK").with("Expires", published.expires.to_string());
                if let Some(tag) = published.etag {
                    answer = answer.with("SIP-ETag", tag);
                }
                answer
            }
            Err(e) => publish_refusal(&e),
        }
    }

    pub(super) fn service(&mut self, request: &Message, origin: &Origin, now: Now) -> Answer {
        let uri = request.request_uri().unwrap_or_default().to_owned();
        let endpoint = match self.authenticated_endpoint(request, origin, &uri, now) {
            Ok(e) => e,
            Err(answer) => return *answer,
        };
        let is_publish = request
            .content_type()
            .ok()
            .flatten()
            .is_some_and(|ct| ct.is("application/msrtc-category-publish+xml"));
        if !is_publish {
            return Answer::new(status::UNSUPPORTED_MEDIA_TYPE, "Unsupported Media Type")
                .with("Accept", "application/msrtc-category-publish+xml");
        }
        let publications = match parse_category_publish(request.body(), self.bodies.xml) {
            Ok(p) => p,
            Err(e) => return Answer::new(status::BAD_REQUEST, format!("Bad Request ({e})")),
        };
        let limit = self.bodies.note_bytes;
        if let Err(e) = publications.iter().try_for_each(|p| {
            check_length("note", p.note.as_deref(), limit)?;
            check_length("activity", p.activity.as_deref(), limit)
        }) {
            return Answer::new(status::BAD_REQUEST, format!("Bad Request ({e})"));
        }
        match self
            .publications
            .publish_categories(endpoint as u32, publications)
        {
            Ok(()) => {
                self.changed.publications.insert(endpoint);
                self.refresh(endpoint, now);
                Answer::new(status::OK, "OK")
            }
            Err(e) => publish_refusal(&e),
        }
    }
}
