//! Microsoft-dialect IM sessions with apps that speak only HTTP. A Lync or
//! Skype for Business user starts IM with an `INVITE` whose SDP offers only
//! `m=message … sip null`, the first text riding base64 in an
//! `ms-text-format` header; later text comes as `MESSAGE` inside the
//! dialog. A webhook app cannot hold that dialog, so the node answers the
//! INVITE itself, hands each text to the webhook, and sends the app's
//! replies as MESSAGEs in the dialog. I/O-free: the node feeds requests in
//! and sends what comes out.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use porchlight_link::Target;
use porchlight_sip::status;
use porchlight_sip::{Answer, Contacts, HeaderName, Message, MessageWriter, Method};
use porchlight_transaction::TimerConfig;

use crate::outbound::NextHop;

/// Names one session: its Call-ID and the tag this node gave it. Ordered,
/// so the retransmissions due at one moment go out in one order, run
/// after run.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct SessionKey {
    call_id: String,
    local_tag: String,
}

impl SessionKey {
    /// The key of a request inside a session: its Call-ID and To tag.
    pub fn of(request: &Message) -> Option<SessionKey> {
        Some(SessionKey {
            call_id: request.call_id().ok()?.to_owned(),
            local_tag: request.to().ok()?.tag()?.to_owned(),
        })
    }
}

/// One session's dialog state (RFC 3261 §12.1.1, as the UAS).
struct Session {
    endpoint: usize,
    /// The endpoint's URI, our side of the dialog.
    local_uri: String,
    /// The caller's From value, tag included: the To of our requests.
    remote: String,
    /// The caller's address of record, for the policy.
    remote_uri: String,
    remote_target: String,
    route_set: Vec<String>,
    local_cseq: u32,
    next: NextHop,
    /// The trust header value the INVITE was admitted with; None from the
    /// trusted networks.
    trust: Option<String>,
    last_active: Instant,
}

/// A session just accepted: the 200 to send, and the first text if the
/// INVITE carried one.
#[derive(Debug)]
pub struct Accepted {
    /// The answer to the INVITE.
    pub answer: Answer,
    /// The session.
    pub key: SessionKey,
    /// `(content type, text)` from `ms-text-format`.
    pub first_text: Option<(String, String)>,
}

/// How this node takes part in a session it accepts.
#[derive(Debug)]
pub struct OurSide {
    /// Our To tag.
    pub local_tag: String,
    /// Our Contact, with angle brackets.
    pub contact: String,
    /// The address in our SDP answer.
    pub host: String,
    /// Where our requests in the session go.
    pub next: NextHop,
    /// The trust header value the INVITE was admitted with; None from the
    /// trusted networks.
    pub trust: Option<String>,
}

/// What came in a request inside a session.
#[derive(Debug, PartialEq, Eq)]
pub enum InSession {
    /// Text for the app (a MESSAGE).
    Text {
        /// The endpoint the session is with.
        endpoint: usize,
    },
    /// The caller ended it (BYE).
    Ended,
    /// Anything else the node answers 200 (INFO typing notices, a
    /// re-INVITE's ACK, …).
    Other,
}

/// The sessions this node holds for webhook apps.
pub struct ImSessions {
    sessions: HashMap<SessionKey, Session>,
    /// 2xx answers sent over UDP and not yet ACKed (§13.3.1.4): few at a
    /// time, so kept apart from the sessions.
    unacked: BTreeMap<SessionKey, Unacked>,
    max: usize,
    idle: Duration,
    timers: TimerConfig,
    /// When idle sessions are next looked for; None: at the first chance.
    next_sweep: Option<Instant>,
}

/// A 2xx the node retransmits until its ACK arrives.
struct Unacked {
    bytes: Bytes,
    target: Target,
    next: Instant,
    interval: Duration,
    give_up: Instant,
}

/// How long a silent session is kept: clients end them with BYE, but a
/// vanished one must not hold memory for ever.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How often idle sessions are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

impl ImSessions {
    /// At most `max` sessions at once; further INVITEs get 486. `timers`
    /// pace the 2xx retransmissions over UDP.
    pub fn new(max: usize, timers: TimerConfig) -> ImSessions {
        ImSessions {
            sessions: HashMap::new(),
            unacked: BTreeMap::new(),
            max,
            idle: IDLE_TIMEOUT,
            timers,
            next_sweep: None,
        }
    }

    /// The 2xx `bytes` accepting `key` went to `target` over UDP: it is
    /// sent again at T1, doubling up to T2, until the ACK comes; with no
    /// ACK after 64·T1 the session is given up (§13.3.1.4).
    pub fn await_ack(&mut self, key: &SessionKey, bytes: Bytes, target: Target, now: Instant) {
        let t1 = self.timers.t1;
        self.unacked.insert(
            key.clone(),
            Unacked {
                bytes,
                target,
                next: now + t1,
                interval: t1,
                give_up: now + 64 * t1,
            },
        );
    }

    /// The ACK for a session's 2xx arrived.
    pub fn acked(&mut self, key: &SessionKey) {
        self.unacked.remove(key);
    }

    /// The 2xx answers to send again now, and where.
    pub fn retransmissions(&mut self, now: Instant) -> Vec<(Bytes, Target)> {
        let mut due = Vec::new();
        let mut given_up = Vec::new();
        for (key, u) in &mut self.unacked {
            if now >= u.give_up {
                given_up.push(key.clone());
            } else if now >= u.next {
                due.push((u.bytes.clone(), u.target.clone()));
                u.interval = (u.interval * 2).min(self.timers.t2);
                u.next = now + u.interval;
            }
        }
        for key in given_up {
            tracing::info!(
                call_id = key.call_id,
                "IM session not acknowledged; given up"
            );
            self.unacked.remove(&key);
            self.sessions.remove(&key);
        }
        due
    }

    /// When the next 2xx retransmission is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.unacked.values().map(|u| u.next.min(u.give_up)).min()
    }

    /// Sessions held.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Answers an IM INVITE for `endpoint` as the app: a 200 with our tag,
    /// Contact and SDP answer.
    pub fn accept(
        &mut self,
        invite: &Message,
        endpoint: usize,
        ours: OurSide,
        now: Instant,
    ) -> Result<Accepted, Box<Answer>> {
        let OurSide {
            local_tag,
            contact,
            host,
            next,
            trust,
        } = ours;
        if self.sessions.len() >= self.max {
            return Err(Box::new(Answer::new(
                status::BUSY_HERE,
                "Busy Here (too many IM sessions with apps)",
            )));
        }
        let bad = |what: &str| {
            Box::new(Answer::new(
                status::BAD_REQUEST,
                format!("Bad Request ({what})"),
            ))
        };
        let key = SessionKey {
            call_id: invite.call_id().map_err(|_| bad("Call-ID"))?.to_owned(),
            local_tag: local_tag.clone(),
        };
        let from = invite
            .first_value(HeaderName::From)
            .ok_or_else(|| bad("From"))?;
        let remote_uri = invite
            .from()
            .map(|f| f.uri.as_str().to_owned())
            .map_err(|_| bad("From"))?;
        let remote_target = match invite.contacts() {
            Ok(Contacts::List(list)) => list.first().map(|c| c.uri.as_str().to_owned()),
            _ => None,
        }
        .ok_or_else(|| bad("no Contact"))?;
        let route_set: Vec<String> = invite
            .items(HeaderName::RecordRoute)
            .filter_map(Result::ok)
            .map(str::to_owned)
            .collect();
        let local_uri = invite
            .to()
            .map(|t| t.uri.as_str().to_owned())
            .map_err(|_| bad("To"))?;
        let sdp = format!(
            "v=0\r\no=- 0 0 IN IP4 {host}\r\ns=session\r\nc=IN IP4 {host}\r\nt=0 0\r\n\
             m=message 5060 sip {local_uri}\r\na=accept-types:text/plain text/html\r\n"
        );
        // The writer copies the Record-Route (§12.1.1).
        let mut answer = Answer::new(status::OK, "OK").with("Contact", contact);
        answer.to_tag = Some(local_tag);
        answer.body = Some(("application/sdp".into(), Bytes::from(sdp)));
        let first_text = first_text_of(invite);
        self.sessions.insert(
            key.clone(),
            Session {
                endpoint,
                local_uri,
                remote: String::from_utf8_lossy(from).into_owned(),
                remote_uri,
                remote_target,
                route_set,
                local_cseq: 0,
                next,
                trust,
                last_active: now,
            },
        );
        Ok(Accepted {
            answer,
            key,
            first_text,
        })
    }

    /// Whether no session is held (the common case: no lookups then).
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Whether `key` names a session held.
    pub fn contains(&self, key: &SessionKey) -> bool {
        self.sessions.contains_key(key)
    }

    /// Where the node's requests in a session go.
    pub fn next_hop(&self, key: &SessionKey) -> Option<&NextHop> {
        self.sessions.get(key).map(|s| &s.next)
    }

    /// The trust header value a session was admitted with.
    pub fn trust(&self, key: &SessionKey) -> Option<String> {
        self.sessions.get(key).and_then(|s| s.trust.clone())
    }

    /// What a request with `method` in session `key` means for it; None:
    /// no such session (any more). A BYE ends the session.
    pub fn receive(
        &mut self,
        key: &SessionKey,
        method: Option<Method>,
        now: Instant,
    ) -> Option<InSession> {
        let session = self.sessions.get_mut(key)?;
        session.last_active = now;
        Some(match method {
            Some(Method::Message) => InSession::Text {
                endpoint: session.endpoint,
            },
            Some(Method::Bye) => {
                self.sessions.remove(key);
                self.unacked.remove(key);
                InSession::Ended
            }
            _ => InSession::Other,
        })
    }

    /// A MESSAGE carrying `text` from the app into the session, and where
    /// it goes; None when the session is gone. `via` is our Via without
    /// the branch.
    pub fn message(
        &mut self,
        key: &SessionKey,
        text: &str,
        via: &str,
        branch: &str,
        now: Instant,
    ) -> Option<(Bytes, NextHop)> {
        let (mut w, next) = self.request(key, "MESSAGE", via, branch, now)?;
        w.header("Content-Type", "text/plain; charset=UTF-8");
        Some((w.finish(text.as_bytes()), next))
    }

    /// The sessions held, for deciding which the policy still allows:
    /// (session, endpoint, the caller's address of record, where our
    /// requests go).
    pub fn held(&self) -> impl Iterator<Item = (&SessionKey, usize, &str, &NextHop)> {
        self.sessions
            .iter()
            .map(|(key, s)| (key, s.endpoint, s.remote_uri.as_str(), &s.next))
    }

    /// Ends a session from our side: the BYE to send, and where; the
    /// session is forgotten at once (its answer is not waited for).
    pub fn end(
        &mut self,
        key: &SessionKey,
        via: &str,
        branch: &str,
        now: Instant,
    ) -> Option<(Bytes, NextHop)> {
        let (w, next) = self.request(key, "BYE", via, branch, now)?;
        self.sessions.remove(key);
        self.unacked.remove(key);
        Some((w.finish(b""), next))
    }

    /// A request of ours in session `key`, headers written up to the body.
    fn request(
        &mut self,
        key: &SessionKey,
        method: &str,
        via: &str,
        branch: &str,
        now: Instant,
    ) -> Option<(MessageWriter, NextHop)> {
        let session = self.sessions.get_mut(key)?;
        session.local_cseq += 1;
        session.last_active = now;
        let mut w = MessageWriter::request(method, &session.remote_target);
        w.header_fmt("Via", format_args!("{via};branch={branch}"));
        w.header("Max-Forwards", "70");
        for route in &session.route_set {
            w.header("Route", route);
        }
        w.header_fmt(
            "From",
            format_args!("<{}>;tag={}", session.local_uri, key.local_tag),
        );
        w.header("To", &session.remote);
        w.header("Call-ID", &key.call_id);
        w.header_fmt("CSeq", format_args!("{} {method}", session.local_cseq));
        Some((w, session.next.clone()))
    }

    /// Forgets sessions silent for longer than the idle timeout, looking
    /// once a minute at most.
    pub fn sweep(&mut self, now: Instant) {
        if self.next_sweep.is_none_or(|at| now >= at) {
            self.expire(now);
            self.next_sweep = Some(now + SWEEP_INTERVAL);
        }
    }

    /// Forgets sessions silent for longer than the idle timeout.
    pub fn expire(&mut self, now: Instant) {
        let idle = self.idle;
        self.sessions
            .retain(|_, s| now.saturating_duration_since(s.last_active) < idle);
    }
}

/// The first text of an IM INVITE: `ms-text-format: text/plain;
/// charset=UTF-8; …; ms-body=<base64>`, as `(content type, text)`.
pub fn first_text_of(invite: &Message) -> Option<(String, String)> {
    let field = invite
        .headers()
        .iter()
        .find(|f| invite.name_bytes(f).eq_ignore_ascii_case(b"ms-text-format"))?;
    let value = std::str::from_utf8(invite.value_bytes(field)).ok()?;
    let mut parts = value.split(';').map(str::trim);
    let content_type = parts.next()?.to_owned();
    let body = parts.find_map(|p| p.strip_prefix("ms-body="))?;
    let text = base64::engine::general_purpose::STANDARD
        .decode(body.trim_matches('"'))
        .ok()?;
    Some((content_type, String::from_utf8(text).ok()?))
}

#[cfg(test)]
mod tests {
    // Virtual time starts from a real instant; only the tests read it.
    #![allow(clippy::disallowed_methods)]

    use super::*;
    use porchlight_sip::{Framing, Limits};

    fn parse(text: &str) -> Message {
        Message::parse(
            Bytes::from(text.replace('\n', "\r\n")),
            Framing::Stream,
            &Limits::default(),
        )
        .unwrap()
    }

    const INVITE: &str = "INVITE sip:bot@contoso.com SIP/2.0
Via: SIP/2.0/TLS edge.fabrikam.com;branch=z9hG4bK1
Record-Route: <sip:edge.fabrikam.com;transport=tls;lr>
From: \"Alice\" <sip:alice@fabrikam.com>;tag=a1
To: <sip:bot@contoso.com>
Call-ID: im-1
CSeq: 1 INVITE
Contact: <sip:alice@10.9.9.9:5061;transport=tls>
ms-text-format: text/plain; charset=UTF-8; msgr=WAAtAE0A; ms-body=aGVsbG8gYm90
Content-Type: application/sdp
Content-Length: 0

";

    fn hop() -> NextHop {
        NextHop::Partner("fabrikam.com".into())
    }

    /// Sessions holding the one [`INVITE`] accepted (endpoint 3, tag t1).
    fn one_session() -> (ImSessions, SessionKey, Instant) {
        let mut sessions = ImSessions::new(10, TimerConfig::default());
        let now = Instant::now();
        let key = sessions
            .accept(&parse(INVITE), 3, ours("t1", "<sip:10.0.0.2>"), now)
            .unwrap()
            .key;
        (sessions, key, now)
    }

    fn ours(tag: &str, contact: &str) -> OurSide {
        OurSide {
            local_tag: tag.into(),
            contact: contact.into(),
            host: "10.0.0.2".into(),
            next: hop(),
            trust: None,
        }
    }

    #[test]
    fn an_im_invite_is_answered_with_sdp_and_its_first_text_taken() {
        let mut sessions = ImSessions::new(10, TimerConfig::default());
        let now = Instant::now();
        let accepted = sessions
            .accept(
                &parse(INVITE),
                3,
                ours("t1", "<sip:10.0.0.2:5061;transport=tls>"),
                now,
            )
            .unwrap();
        assert_eq!(accepted.answer.code, 200);
        assert_eq!(accepted.answer.to_tag.as_deref(), Some("t1"));
        let (ct, sdp) = accepted.answer.body.clone().unwrap();
        assert_eq!(ct, "application/sdp");
        let sdp = String::from_utf8(sdp.to_vec()).unwrap();
        assert!(
            sdp.contains("m=message 5060 sip sip:bot@contoso.com\r\n"),
            "{sdp}"
        );
        let written = accepted.answer.write(&parse(INVITE), None, "unused");
        let written = Message::parse(written, Framing::Stream, &Limits::default()).unwrap();
        assert_eq!(
            written.items(HeaderName::RecordRoute).collect::<Vec<_>>(),
            [Ok("<sip:edge.fabrikam.com;transport=tls;lr>")]
        );
        assert_eq!(
            accepted.first_text,
            Some(("text/plain".into(), "hello bot".into()))
        );
        assert_eq!(sessions.len(), 1);
    }

    #[test]
    fn replies_follow_the_dialog_and_bye_ends_it() {
        let (mut sessions, key, now) = one_session();
        let (bytes, next) = sessions
            .message(
                &key,
                "hi alice",
                "SIP/2.0/TLS 10.0.0.2:5061",
                "z9hG4bKr1",
                now,
            )
            .unwrap();
        assert_eq!(next, hop());
        let m = parse(
            &String::from_utf8(bytes.to_vec())
                .unwrap()
                .replace("\r\n", "\n"),
        );
        assert_eq!(
            m.request_uri(),
            Some("sip:alice@10.9.9.9:5061;transport=tls")
        );
        assert_eq!(m.from().unwrap().tag(), Some("t1"));
        assert_eq!(m.to().unwrap().tag(), Some("a1"));
        assert_eq!(m.cseq().unwrap().seq, 1);
        assert_eq!(m.routes().count(), 1);
        assert_eq!(m.body(), b"hi alice");
        let second = sessions
            .message(&key, "again", "SIP/2.0/TLS 10.0.0.2:5061", "z9hG4bKr2", now)
            .unwrap()
            .0;
        let second = parse(
            &String::from_utf8(second.to_vec())
                .unwrap()
                .replace("\r\n", "\n"),
        );
        assert_eq!(second.cseq().unwrap().seq, 2);

        let in_dialog = |method: &str| {
            parse(&format!(
                "{method} sip:10.0.0.2 SIP/2.0\nVia: SIP/2.0/TLS edge.fabrikam.com;branch=z9hG4bK9\n\
                 From: <sip:alice@fabrikam.com>;tag=a1\nTo: <sip:bot@contoso.com>;tag=t1\n\
                 Call-ID: im-1\nCSeq: 2 {method}\nContent-Length: 0\n\n"
            ))
        };
        // As the node does: the request names its session, then its method
        // says what it means.
        let receive = |sessions: &mut ImSessions, method: &str| {
            let request = in_dialog(method);
            let key = SessionKey::of(&request).expect("an in-dialog request");
            sessions.receive(&key, request.method_kind(), now)
        };
        assert_eq!(
            receive(&mut sessions, "MESSAGE"),
            Some(InSession::Text { endpoint: 3 })
        );
        assert_eq!(receive(&mut sessions, "INFO"), Some(InSession::Other));
        assert_eq!(receive(&mut sessions, "BYE"), Some(InSession::Ended));
        assert!(receive(&mut sessions, "MESSAGE").is_none());
        assert!(sessions.message(&key, "late", "v", "b", now).is_none());
    }

    #[test]
    fn a_2xx_over_udp_is_sent_again_until_its_ack_and_given_up_without_one() {
        let (mut sessions, key, now) = one_session();
        let target = Target::Address {
            protocol: porchlight_link::Protocol::Udp,
            addr: "192.0.2.9:5060".parse().unwrap(),
            domain: None,
        };
        sessions.await_ack(&key, Bytes::from_static(b"200"), target.clone(), now);
        let t1 = Duration::from_millis(500);
        assert_eq!(sessions.next_deadline(), Some(now + t1));
        assert!(sessions.retransmissions(now).is_empty());
        assert_eq!(sessions.retransmissions(now + t1).len(), 1);
        // Doubling: next at 3·T1.
        assert_eq!(sessions.next_deadline(), Some(now + 3 * t1));
        // The ACK stops it.
        let ack = parse(
            "ACK sip:10.0.0.2 SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK2\n\
             From: <sip:alice@fabrikam.com>;tag=a1\nTo: <sip:bot@contoso.com>;tag=t1\n\
             Call-ID: im-1\nCSeq: 1 ACK\nContent-Length: 0\n\n",
        );
        sessions.acked(&SessionKey::of(&ack).unwrap());
        assert_eq!(sessions.next_deadline(), None);
        // Without an ACK, 64·T1 later the session is gone.
        sessions.await_ack(&key, Bytes::from_static(b"200"), target, now);
        sessions.retransmissions(now + 64 * t1);
        assert_eq!((sessions.len(), sessions.next_deadline()), (0, None));
    }

    #[test]
    fn sessions_are_bounded_and_idle_ones_expire() {
        let mut sessions = ImSessions::new(1, TimerConfig::default());
        let now = Instant::now();
        sessions
            .accept(&parse(INVITE), 0, ours("t1", "<sip:10.0.0.2>"), now)
            .unwrap();
        let refused = sessions
            .accept(&parse(INVITE), 0, ours("t2", "<sip:10.0.0.2>"), now)
            .unwrap_err();
        assert_eq!(refused.code, 486);
        sessions.expire(now + IDLE_TIMEOUT / 2);
        assert_eq!(sessions.len(), 1);
        sessions.expire(now + IDLE_TIMEOUT);
        assert_eq!(sessions.len(), 0);
    }
}
