//! The registrar for application endpoints (RFC 3261 §10.3). An endpoint
//! that REGISTERs is online while it has a binding; bindings end when they
//! expire, are removed, or stop answering keepalive OPTIONS.

use std::time::{Duration, Instant};

use porchlight_sip::status;
use porchlight_sip::{Answer, Contacts, HeaderName, Message};

use crate::digest::{Algorithm, DigestAuth, Verdict};

/// One registered contact.
#[derive(Clone, Debug)]
pub struct Binding<F> {
    /// The Contact URI.
    pub contact: String,
    /// When it lapses.
    pub expires_at: Instant,
    /// Call-ID of the REGISTERs that maintain it.
    pub call_id: String,
    /// Their last CSeq.
    pub cseq: u32,
    /// The path back to the contact (where keepalives go).
    pub flow: F,
    /// Keepalives sent without an answer.
    pub misses: u8,
    /// When the next keepalive is due.
    pub next_keepalive: Instant,
}

/// A registered contact as saved: its flow in words, as for
/// subscriptions. The node hands these to the store and gets them back at
/// start, without knowing how the store keeps them.
pub type SavedRegistration = SavedBinding<porchlight_presence::FlowInfo<String>>;

/// A binding as the store keeps it: what a restarted node needs to go on
/// counting the endpoint as registered and keep probing its contact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedBinding<F> {
    /// The Contact URI.
    pub contact: String,
    /// When it lapses, in seconds since the Unix epoch.
    pub expires_at: u64,
    /// Call-ID of the REGISTERs that maintain it.
    pub call_id: String,
    /// Their last CSeq.
    pub cseq: u32,
    /// The path back to the contact.
    pub flow: F,
}

impl<F> SavedBinding<F> {
    /// The same binding with its flow in another form.
    pub fn with_flow<G>(self, flow: G) -> SavedBinding<G> {
        SavedBinding {
            contact: self.contact,
            expires_at: self.expires_at,
            call_id: self.call_id,
            cseq: self.cseq,
            flow,
        }
    }
}

/// How an endpoint may prove it is itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    /// Digest user name and password.
    pub digest: Option<(String, String)>,
    /// A mutual-TLS identity (RFC 5922 domain) trusted without a password.
    pub tls_identity: Option<String>,
    /// The digest algorithms offered to this endpoint, preferred first;
    /// None: the node's `[registrar] digest_algorithms`.
    pub algorithms: Option<Vec<crate::digest::Algorithm>>,
}

/// Registrar bounds.
#[derive(Clone, Copy, Debug)]
pub struct RegistrarConfig {
    /// Shortest registration accepted (423 below).
    pub min_expires: u32,
    /// Longest granted.
    pub max_expires: u32,
    /// When the request names none.
    pub default_expires: u32,
    /// Contacts one endpoint may register.
    pub max_bindings: usize,
    /// Keepalive OPTIONS period; zero disables keepalives.
    pub keepalive_interval: Duration,
    /// Unanswered keepalives before a binding is dropped.
    pub keepalive_misses: u8,
}

/// What a REGISTER did.
#[derive(Debug)]
pub struct Registered {
    /// The response.
    pub answer: Answer,
    /// Whether the endpoint's set of bindings went from empty to not, or back.
    pub liveness_changed: bool,
    /// Whether credentials were offered and were wrong: a guess, for the
    /// [`GuessGuard`](crate::guesses::GuessGuard).
    pub wrong_credentials: bool,
}

/// Why a request was not taken as the endpoint's own.
#[derive(Debug)]
pub struct NotAuthenticated {
    /// The answer: a 401 challenge, or 403 when nothing could prove it.
    pub answer: Answer,
    /// Whether credentials were offered and were wrong (a stale nonce with
    /// the right password is not).
    pub wrong_credentials: bool,
}

/// Bindings of every endpoint, by endpoint index.
#[derive(Debug)]
pub struct Registrar<F> {
    config: RegistrarConfig,
    auth: DigestAuth,
    bindings: Vec<Vec<Binding<F>>>,
}

impl<F: Clone> Registrar<F> {
    /// A registrar for `endpoints` endpoints.
    pub fn new(config: RegistrarConfig, auth: DigestAuth, endpoints: usize) -> Registrar<F> {
        Registrar {
            config,
            auth,
            bindings: vec![Vec::new(); endpoints],
        }
    }

    /// Makes room for endpoints added at run time, up to `slots`.
    pub fn grow(&mut self, slots: usize) {
        if self.bindings.len() < slots {
            self.bindings.resize_with(slots, Vec::new);
        }
    }

    /// Drops every binding of an endpoint: it was removed, or the
    /// credentials its app registered with are no longer the ones it has.
    /// True when it had any.
    pub fn forget(&mut self, endpoint: usize) -> bool {
        self.bindings
            .get_mut(endpoint)
            .is_some_and(|b| !std::mem::take(b).is_empty())
    }

    /// Whether an endpoint has a live binding.
    pub fn is_registered(&self, endpoint: usize) -> bool {
        !self.bindings[endpoint].is_empty()
    }

    /// An endpoint's bindings.
    pub fn bindings(&self, endpoint: usize) -> &[Binding<F>] {
        &self.bindings[endpoint]
    }

    /// Handles a REGISTER for `endpoint`, authenticated by `credentials`.
    /// `peer_identity` is the verified mutual-TLS identity of the sender.
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        &mut self,
        endpoint: usize,
        request: &Message,
        credentials: &Credentials,
        peer_identity: Option<&str>,
        flow: F,
        now: Instant,
        now_unix: u64,
    ) -> Registered {
        let was_registered = self.is_registered(endpoint);
        let (answer, wrong_credentials) =
            match self.authenticate(request, credentials, peer_identity, now_unix) {
                Ok(()) => (self.apply(endpoint, request, flow, now), false),
                Err(refused) => (refused.answer, refused.wrong_credentials),
            };
        Registered {
            answer,
            liveness_changed: was_registered != self.is_registered(endpoint),
            wrong_credentials,
        }
    }

    /// Checks that a request comes from the endpoint itself: its trusted
    /// mutual-TLS identity, or digest credentials (answered with a 401
    /// challenge when missing or wrong). Used for REGISTER, PUBLISH and SERVICE.
    pub fn authenticate(
        &self,
        request: &Message,
        credentials: &Credentials,
        peer_identity: Option<&str>,
        now_unix: u64,
    ) -> Result<(), Box<NotAuthenticated>> {
        if let (Some(trusted), Some(peer)) = (&credentials.tls_identity, peer_identity) {
            if trusted.eq_ignore_ascii_case(peer) {
                return Ok(());
            }
        }
        let Some((user, password)) = &credentials.digest else {
            return Err(Box::new(NotAuthenticated {
                answer: Answer::new(
                    status::FORBIDDEN,
                    "Forbidden (no credentials configured for this endpoint)",
                ),
                wrong_credentials: false,
            }));
        };
        let (mut stale, mut offered) = (false, false);
        let method = request.method().unwrap_or_default();
        for value in request
            .auth(HeaderName::Authorization)
            .filter_map(Result::ok)
        {
            offered = true;
            let own = credentials.algorithms.as_deref();
            match self
                .auth
                .verify(&value, method, (user, password), own, now_unix)
            {
                Verdict::Valid => return Ok(()),
                Verdict::Stale => stale = true,
                Verdict::Invalid => {}
            }
        }
        Err(Box::new(NotAuthenticated {
            answer: self.challenge(now_unix, stale, credentials.algorithms.as_deref()),
            wrong_credentials: offered && !stale,
        }))
    }

    /// A 401 with a fresh challenge per algorithm offered (`own`: the
    /// endpoint's list, else the node's) — also what an outsider gets for
    /// a name that is not an endpoint, when missing ones are hidden.
    pub fn challenge(&self, now_unix: u64, stale: bool, own: Option<&[Algorithm]>) -> Answer {
        let mut answer = Answer::new(status::UNAUTHORIZED, "Unauthorized");
        for challenge in self.auth.challenges(now_unix, stale, own) {
            answer = answer.with("WWW-Authenticate", challenge);
        }
        answer
    }

    /// Updates the bindings of an authenticated REGISTER.
    fn apply(&mut self, endpoint: usize, request: &Message, flow: F, now: Instant) -> Answer {
        let (Ok(call_id), Ok(cseq), Ok(contacts), Ok(header_expires)) = (
            request.call_id(),
            request.cseq(),
            request.contacts(),
            request.expires(),
        ) else {
            return Answer::new(status::BAD_REQUEST, "Bad Request (REGISTER headers)");
        };
        let bindings = &mut self.bindings[endpoint];
        bindings.retain(|b| b.expires_at > now);
        match contacts {
            Contacts::Star => {
                if header_expires != Some(0) {
                    return Answer::new(
                        status::BAD_REQUEST,
                        "Bad Request (Contact: * needs Expires: 0)",
                    );
                }
                bindings.retain(|b| b.call_id == call_id && b.cseq >= cseq.seq);
            }
            Contacts::List(list) => {
                // Every interval is checked before any binding changes.
                let asked: Vec<(&str, u32)> = list
                    .iter()
                    .map(|contact| {
                        let expires = contact
                            .params
                            .value("expires")
                            .and_then(|v| v.parse().ok())
                            .or(header_expires)
                            .unwrap_or(self.config.default_expires);
                        (contact.uri.as_str(), expires)
                    })
                    .collect();
                if asked
                    .iter()
                    .any(|&(_, e)| e != 0 && e < self.config.min_expires)
                {
                    return Answer::new(status::INTERVAL_TOO_BRIEF, "Interval Too Brief")
                        .with("Min-Expires", self.config.min_expires.to_string());
                }
                for (uri, expires) in asked {
                    let expires = expires.min(self.config.max_expires);
                    let existing = bindings.iter().position(|b| b.contact == uri);
                    if let Some(i) = existing {
                        let b = &bindings[i];
                        if b.call_id == call_id && cseq.seq <= b.cseq {
                            return Answer::new(
                                status::SERVER_INTERNAL_ERROR,
                                "Server Internal Error (CSeq out of order)",
                            )
                            .with("Retry-After", "1");
                        }
                        if expires == 0 {
                            bindings.remove(i);
                            continue;
                        }
                    } else if expires == 0 {
                        continue;
                    } else if bindings.len() >= self.config.max_bindings {
                        return Answer::new(
                            status::FORBIDDEN,
                            "Forbidden (too many registered contacts)",
                        );
                    }
                    let binding = Binding {
                        contact: uri.to_owned(),
                        expires_at: now + Duration::from_secs(expires.into()),
                        call_id: call_id.to_owned(),
                        cseq: cseq.seq,
                        flow: flow.clone(),
                        misses: 0,
                        next_keepalive: now + self.config.keepalive_interval,
                    };
                    match existing {
                        Some(i) => bindings[i] = binding,
                        None => bindings.push(binding),
                    }
                }
            }
        }
        let mut answer = Answer::new(status::OK, "OK");
        for b in bindings.iter() {
            let left = b.expires_at.saturating_duration_since(now).as_secs();
            answer = answer.with("Contact", format!("<{}>;expires={left}", b.contact));
        }
        answer
    }

    /// Drops lapsed bindings; returns the endpoints that went offline.
    pub fn expire(&mut self, now: Instant) -> Vec<usize> {
        let mut changed = Vec::new();
        for (endpoint, bindings) in self.bindings.iter_mut().enumerate() {
            let before = bindings.len();
            bindings.retain(|b| b.expires_at > now);
            if before > 0 && bindings.is_empty() {
                changed.push(endpoint);
            }
        }
        changed
    }

    /// Keepalives due now: (endpoint, contact, flow). Each counts as a miss
    /// until [`keepalive_answered`](Self::keepalive_answered) says otherwise;
    /// a binding that reaches the miss limit is dropped, and its endpoint is
    /// returned in the second list.
    pub fn due_keepalives(&mut self, now: Instant) -> (Vec<(usize, String, F)>, Vec<usize>) {
        let mut due = Vec::new();
        let mut lost = Vec::new();
        if self.config.keepalive_interval.is_zero() {
            return (due, lost);
        }
        for (endpoint, bindings) in self.bindings.iter_mut().enumerate() {
            let before = bindings.len();
            bindings.retain(|b| b.misses < self.config.keepalive_misses || b.next_keepalive > now);
            if before > 0 && bindings.is_empty() {
                lost.push(endpoint);
            }
            for b in bindings.iter_mut().filter(|b| b.next_keepalive <= now) {
                b.misses += 1;
                b.next_keepalive = now + self.config.keepalive_interval;
                due.push((endpoint, b.contact.clone(), b.flow.clone()));
            }
        }
        (due, lost)
    }

    /// A request to `contact` could not be sent over its flow (the app's
    /// connection is gone): the binding is dropped now rather than after
    /// its keepalives go unanswered. True when the endpoint went offline.
    pub fn flow_failed(&mut self, endpoint: usize, contact: &str) -> bool {
        let bindings = &mut self.bindings[endpoint];
        let before = bindings.len();
        bindings.retain(|b| b.contact != contact);
        before > 0 && bindings.is_empty()
    }

    /// A keepalive to `contact` was answered (any response proves it is alive).
    pub fn keepalive_answered(&mut self, endpoint: usize, contact: &str) {
        if let Some(b) = self.bindings[endpoint]
            .iter_mut()
            .find(|b| b.contact == contact)
        {
            b.misses = 0;
        }
    }

    /// An endpoint's bindings in the form the store keeps.
    pub fn saved(&self, endpoint: usize, now: Instant, now_unix: u64) -> Vec<SavedBinding<F>> {
        self.bindings[endpoint]
            .iter()
            .filter(|b| b.expires_at > now)
            .map(|b| SavedBinding {
                contact: b.contact.clone(),
                expires_at: now_unix + b.expires_at.saturating_duration_since(now).as_secs(),
                call_id: b.call_id.clone(),
                cseq: b.cseq,
                flow: b.flow.clone(),
            })
            .collect()
    }

    /// Puts an endpoint's saved bindings back after a restart (those not
    /// lapsed, within the binding limit); the first keepalive goes out one
    /// interval later, as after a REGISTER.
    pub fn restore(
        &mut self,
        endpoint: usize,
        saved: Vec<SavedBinding<F>>,
        now: Instant,
        now_unix: u64,
    ) {
        let max = self.config.max_bindings;
        let bindings = &mut self.bindings[endpoint];
        for b in saved.into_iter().filter(|b| b.expires_at > now_unix) {
            if bindings.len() >= max {
                break;
            }
            let left = (b.expires_at - now_unix).min(self.config.max_expires.into());
            bindings.push(Binding {
                contact: b.contact,
                expires_at: now + Duration::from_secs(left),
                call_id: b.call_id,
                cseq: b.cseq,
                flow: b.flow,
                misses: 0,
                next_keepalive: now + self.config.keepalive_interval,
            });
        }
    }

    /// When bindings next need attention (expiry or keepalive).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.bindings
            .iter()
            .flatten()
            .flat_map(|b| {
                let keepalive =
                    (!self.config.keepalive_interval.is_zero()).then_some(b.next_keepalive);
                std::iter::once(b.expires_at).chain(keepalive)
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use porchlight_sip::{Framing, Limits};

    fn config() -> RegistrarConfig {
        RegistrarConfig {
            min_expires: 60,
            max_expires: 3600,
            default_expires: 600,
            max_bindings: 2,
            keepalive_interval: Duration::from_secs(30),
            keepalive_misses: 2,
        }
    }

    fn register(cseq: u32, contact: &str, extra: &str) -> Message {
        let text = format!(
            "REGISTER sip:contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK{cseq}\r\nFrom: <sip:bot@contoso.com>;tag=1\r\n\
             To: <sip:bot@contoso.com>\r\nCall-ID: reg\r\nCSeq: {cseq} REGISTER\r\nContact: {contact}\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        Message::parse(Bytes::from(text), Framing::Datagram, &Limits::default()).unwrap()
    }

    fn trusted() -> Credentials {
        Credentials {
            digest: None,
            tls_identity: Some("apps.contoso.com".into()),
            algorithms: None,
        }
    }

    #[test]
    fn bindings_come_and_go() {
        let mut r: Registrar<u8> = Registrar::new(
            config(),
            DigestAuth::new(
                "contoso.com",
                1,
                300,
                crate::digest::Algorithm::ALL.to_vec(),
            ),
            1,
        );
        let t0 = Instant::now();
        let id = Some("apps.contoso.com");
        // Without the trusted identity or digest credentials: challenged? No digest configured: 403.
        let out = r.register(
            0,
            &register(1, "<sip:bot@10.0.0.1>", ""),
            &trusted(),
            None,
            0,
            t0,
            0,
        );
        assert_eq!(out.answer.code, 403);
        let out = r.register(
            0,
            &register(2, "<sip:bot@10.0.0.1>", "Expires: 120\r\n"),
            &trusted(),
            id,
            0,
            t0,
            0,
        );
        assert_eq!(out.answer.code, 200);
        assert!(out.liveness_changed);
        assert_eq!(out.answer.headers[0].1, "<sip:bot@10.0.0.1>;expires=120");
        let out = r.register(
            0,
            &register(3, "<sip:bot@10.0.0.1>;expires=10", ""),
            &trusted(),
            id,
            0,
            t0,
            0,
        );
        assert_eq!(out.answer.code, 423);
        let out = r.register(
            0,
            &register(2, "<sip:bot@10.0.0.1>", ""),
            &trusted(),
            id,
            0,
            t0,
            0,
        );
        assert_eq!(out.answer.code, 500, "CSeq must grow");
        assert!(r.is_registered(0));
        assert!(r.expire(t0 + Duration::from_secs(119)).is_empty());
        assert_eq!(r.expire(t0 + Duration::from_secs(121)), vec![0]);
        // Removal with Contact: *.
        r.register(
            0,
            &register(5, "<sip:bot@10.0.0.1>", ""),
            &trusted(),
            id,
            0,
            t0,
            0,
        );
        let out = r.register(
            0,
            &register(6, "*", "Expires: 0\r\n"),
            &trusted(),
            id,
            0,
            t0,
            0,
        );
        assert_eq!(out.answer.code, 200);
        assert!(out.liveness_changed);
        assert!(!r.is_registered(0));
        // An endpoint added at run time gets a slot; forgetting drops all.
        r.grow(2);
        r.register(
            1,
            &register(7, "<sip:bot@10.0.0.1>", ""),
            &trusted(),
            id,
            0,
            t0,
            0,
        );
        assert!(r.is_registered(1));
        assert!(r.forget(1));
        assert!(!r.is_registered(1) && !r.forget(1));
    }

    #[test]
    fn digest_challenge_then_accept() {
        let mut r: Registrar<u8> = Registrar::new(
            config(),
            DigestAuth::new(
                "contoso.com",
                1,
                300,
                crate::digest::Algorithm::ALL.to_vec(),
            ),
            1,
        );
        let creds = Credentials {
            digest: Some(("bot".into(), "pw".into())),
            tls_identity: None,
            algorithms: None,
        };
        let t0 = Instant::now();
        let out = r.register(
            0,
            &register(1, "<sip:bot@10.0.0.1>", ""),
            &creds,
            None,
            0,
            t0,
            1000,
        );
        assert_eq!(out.answer.code, 401);
        let challenges: Vec<_> = out
            .answer
            .headers
            .iter()
            .filter(|(n, _)| *n == "WWW-Authenticate")
            .collect();
        assert_eq!(challenges.len(), 2);
        let bad = "Authorization: Digest username=\"bot\", realm=\"contoso.com\", nonce=\"1.2\", uri=\"sip:contoso.com\", response=\"00\"\r\n";
        let out = r.register(
            0,
            &register(2, "<sip:bot@10.0.0.1>", bad),
            &creds,
            None,
            0,
            t0,
            1000,
        );
        assert_eq!(out.answer.code, 401);
        assert!(!r.is_registered(0));
    }

    #[test]
    fn keepalive_misses_drop_the_binding() {
        let mut r: Registrar<u8> = Registrar::new(
            config(),
            DigestAuth::new(
                "contoso.com",
                1,
                300,
                crate::digest::Algorithm::ALL.to_vec(),
            ),
            1,
        );
        let t0 = Instant::now();
        r.register(
            0,
            &register(1, "<sip:bot@10.0.0.1>", ""),
            &trusted(),
            Some("apps.contoso.com"),
            7,
            t0,
            0,
        );
        let (due, lost) = r.due_keepalives(t0 + Duration::from_secs(30));
        assert_eq!(due, vec![(0, "sip:bot@10.0.0.1".to_owned(), 7)]);
        assert!(lost.is_empty());
        r.keepalive_answered(0, "sip:bot@10.0.0.1");
        r.due_keepalives(t0 + Duration::from_secs(60));
        r.due_keepalives(t0 + Duration::from_secs(90));
        let (_, lost) = r.due_keepalives(t0 + Duration::from_secs(120));
        assert_eq!(lost, vec![0]);
        assert!(!r.is_registered(0));
    }
}
