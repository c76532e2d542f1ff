//! A node in memory for tests, in the style of quinn-proto's `Pair` and
//! hickory's test-support crate: virtual time, scripted connections and
//! peers, one SIP request builder, and every action the core takes drained
//! and kept to be looked at. A whole exchange a real peer would have with
//! the node runs in milliseconds, with no socket, task or clock.
//!
//! Built for this crate's tests and, with the `testkit` feature, for any
//! crate's: it is not part of a release build.

// Virtual time starts from one real instant; nothing reads the clock after.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use porchlight_link::{
    ConnectionId, IdentitySource, Origin, PeerIdentity, Protocol, Received, Target,
};
use porchlight_sip::{Framing, Limits, Message};
use porchlight_transaction::TimerConfig;

use crate::clock::Now;
use crate::config::Config;
use crate::core::{Action, Core, Input, Links, Started};
use crate::outbound::Reach;
use crate::presence::PresenceService;
use crate::status::{Query, Reply};

/// The partner's mutual-TLS connection, proving fabrikam.com.
pub const PARTNER: ConnectionId = ConnectionId(7);

/// The node's own listening addresses in the tests.
pub const NODE_UDP: &str = "127.0.0.1:5060";
/// The node's TLS listener in the tests.
pub const NODE_TLS: &str = "127.0.0.1:5061";

/// Connections as a test scripts them: datagrams can always go; a TCP or
/// TLS address has no connection until one is opened (a dial); a partner
/// has a verified connection when the test says so.
#[derive(Clone, Debug)]
pub struct ScriptedLinks {
    /// Verified connections, by the domain their certificate proves.
    pub verified: HashMap<String, ConnectionId>,
}

impl Default for ScriptedLinks {
    /// fabrikam.com connected over [`PARTNER`].
    fn default() -> ScriptedLinks {
        ScriptedLinks {
            verified: HashMap::from([("fabrikam.com".to_owned(), PARTNER)]),
        }
    }
}

impl Reach for ScriptedLinks {
    fn ready(&self, target: &Target) -> Option<Target> {
        match target {
            Target::Address {
                protocol: Protocol::Tcp | Protocol::Tls,
                ..
            } => None,
            _ => Some(target.clone()),
        }
    }

    fn verified(&self, domain: &str) -> Option<Target> {
        self.verified.get(domain).map(|id| Target::Connection(*id))
    }
}

impl Links for ScriptedLinks {
    fn connection_protocol(&self, id: ConnectionId) -> Option<Protocol> {
        self.verified
            .values()
            .any(|v| *v == id)
            .then_some(Protocol::Tls)
    }
}

/// The embedded defaults moved to contoso.com (its help desk Online),
/// with `edits` as (old, new) replacements, each of which must apply,
/// and `extra` appended: the text every test's configuration starts from.
pub fn contoso_config(edits: &[(&str, &str)], extra: &str) -> String {
    let mut text = crate::DEFAULT_CONFIG
        .replace(
            "domains = [\"porchlight.test\"]",
            "domains = [\"contoso.com\"]",
        )
        // The demo endpoint moves with the domain.
        .replace(
            "uri = \"sip:helpdesk@porchlight.test\"",
            "uri = \"sip:helpdesk@contoso.com\"",
        );
    for (old, new) in edits {
        assert!(text.contains(old), "default config has no {old:?}");
        text = text.replace(old, new);
    }
    text.push_str(extra);
    text
}

/// The edits that turn [`config`]'s fabrikam.com from allowed to blocked.
pub const BLOCK_FABRIKAM: [(&str, &str); 2] = [
    (
        "allowed_domains = [{ domain = \"fabrikam.com\" }]",
        "allowed_domains = []",
    ),
    (
        "blocked_domains = []",
        "blocked_domains = [\"fabrikam.com\"]",
    ),
];

/// [`contoso_config`] with fabrikam.com allowed, parsed.
pub fn config(edits: &[(&str, &str)], extra: &str) -> Config {
    let allowed = (
        "allowed_domains = []",
        "allowed_domains = [{ domain = \"fabrikam.com\" }]",
    );
    let edits: Vec<(&str, &str)> = std::iter::once(allowed)
        .chain(edits.iter().copied())
        .collect();
    let text = contoso_config(&edits, extra);
    Config::parse(&text, "test", Path::new(".")).expect("a valid configuration")
}

/// A core and its world: virtual time, and what it did.
pub struct TestNode {
    /// The core under test.
    pub core: Core,
    /// The virtual time.
    pub now: Now,
    /// Messages sent, with where, in order.
    pub sent: Vec<(Target, Message)>,
    /// Every other action, in order.
    pub actions: Vec<Action>,
}

impl TestNode {
    /// A node of `config`, with fabrikam.com connected.
    pub fn new(config: &Config) -> TestNode {
        TestNode::with_links(config, ScriptedLinks::default())
    }

    /// A node of `config` whose connections are `links`.
    pub fn with_links(config: &Config, links: ScriptedLinks) -> TestNode {
        // A fixed date: the wall clock is virtual too.
        let wall = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let now = Now::from_clocks(Instant::now(), wall);
        let presence = PresenceService::new(config, 0x5eed, now);
        let probes = presence
            .directory()
            .iter()
            .map(|(slot, e)| (slot, e.health.clone()))
            .collect();
        let udp: SocketAddr = NODE_UDP.parse().unwrap();
        let tls: SocketAddr = NODE_TLS.parse().unwrap();
        let mut local = config.local_names(&[udp, tls]);
        local.hosts.push("127.0.0.1".into());
        let core = Core::new(
            config,
            Started {
                links: Arc::new(links),
                local_addrs: vec![(Protocol::Udp, udp), (Protocol::Tls, tls)],
                local,
                presence,
                timers: TimerConfig {
                    t1: Duration::from_millis(500),
                    t2: Duration::from_secs(4),
                    t4: Duration::from_secs(5),
                },
                tag_seed: 0x5eed,
                edge_secret: [7; 32],
                restored: 0,
                probes,
                now,
            },
        );
        let mut node = TestNode {
            core,
            now,
            sent: Vec::new(),
            actions: Vec::new(),
        };
        node.drain();
        node
    }

    /// Takes every action the core has, parsing what it sends.
    pub fn drain(&mut self) {
        while let Some(action) = self.core.poll_output(self.now) {
            match action {
                Action::Send { target, message } => {
                    let parsed =
                        Message::parse(message.bytes, Framing::Datagram, &Limits::default())
                            .expect("the node sends well-formed SIP");
                    self.sent.push((target, parsed));
                }
                other => self.actions.push(other),
            }
        }
    }

    /// Hands the core an input, then drains what it did.
    pub fn input(&mut self, input: Input) {
        self.core.handle(self.now, input);
        self.drain();
    }

    /// A message arrives from `origin`. Tests may write bare line feeds.
    pub fn receive(&mut self, text: &str, origin: &Origin) {
        let text = if text.contains('\r') {
            text.to_owned()
        } else {
            text.replace('\n', "\r\n")
        };
        let message = Message::parse(Bytes::from(text), Framing::Datagram, &Limits::default())
            .expect("the test writes well-formed SIP");
        self.input(Input::Received(Received::Message(message, origin.clone())));
    }

    /// Bytes arrive from `origin` as the transport would hand them in:
    /// parsed, or reported malformed with what of the head could be read.
    pub fn receive_bytes(&mut self, bytes: &[u8], origin: &Origin) {
        let bytes = Bytes::copy_from_slice(bytes);
        let received = match Message::parse(bytes.clone(), Framing::Datagram, &Limits::default()) {
            Ok(message) => Received::Message(message, origin.clone()),
            Err(error) => Received::Malformed {
                head: Message::parse_head_only(bytes, &Limits::default()).ok(),
                error,
                origin: origin.clone(),
            },
        };
        self.input(Input::Received(received));
    }

    /// Virtual time moves on by `by`, firing every timer due on the way.
    pub fn advance(&mut self, by: Duration) {
        let until = self.now.after(by);
        while let Some(at) = self
            .core
            .poll_timeout(self.now)
            .filter(|at| *at <= until.mono)
        {
            self.now = self.now.after(at.saturating_duration_since(self.now.mono));
            self.core.handle_timeout(self.now);
            self.drain();
        }
        self.now = until;
        self.core.handle_timeout(self.now);
        self.drain();
    }

    /// What was sent since the last call.
    pub fn take_sent(&mut self) -> Vec<(Target, Message)> {
        std::mem::take(&mut self.sent)
    }

    /// The first final answer among what was sent since the last take.
    pub fn final_answer(&mut self) -> Message {
        self.take_sent()
            .into_iter()
            .map(|(_, m)| m)
            .find(|m| m.status().is_some_and(|c| c >= 200))
            .expect("a final answer")
    }

    /// A watcher's `subscribe` from `origin`, its NOTIFYs answered 200 as
    /// a watcher that is there would: what the node sent for it.
    pub fn watch(&mut self, subscribe: &Req, origin: &Origin) -> Vec<(Target, Message)> {
        self.receive(&subscribe.text(), origin);
        let sent = self.take_sent();
        self.answer_notifies(&sent, origin, 200);
        sent
    }

    /// Answers every NOTIFY in `sent` with `code`, as a watcher would.
    pub fn answer_notifies(&mut self, sent: &[(Target, Message)], origin: &Origin, code: u16) {
        for (_, m) in sent.iter().filter(|(_, m)| m.method() == Some("NOTIFY")) {
            self.answer(m, code, origin);
        }
    }

    /// Answers the request `to` with `code` (a To tag added when it has
    /// none), from `origin`.
    pub fn answer(&mut self, to: &Message, code: u16, origin: &Origin) {
        let reason = porchlight_sip::standard_reason(code);
        let tag = to
            .to()
            .ok()
            .and_then(|t| t.tag().map(str::to_owned))
            .unwrap_or_else(|| "answered".into());
        let bytes = porchlight_sip::response_to(to, code, reason, None, Some(&tag)).finish(b"");
        self.receive(&String::from_utf8_lossy(&bytes), origin);
    }

    /// Asks the core a question the admin side would, and gets the answer
    /// at once (the core answers queries as it takes them).
    pub fn ask<T: Send + 'static>(&mut self, question: impl FnOnce(Reply<T>) -> Query) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        let reply = Reply::new(move |answer| {
            let _ = tx.send(answer);
        });
        self.input(Input::Query(question(reply)));
        rx.try_recv().expect("the core answers at once")
    }
}

/// The node's TLS listener.
pub fn tls_local() -> SocketAddr {
    NODE_TLS.parse().unwrap()
}

/// A watcher or user inside the edge, on the trusted networks (loopback).
pub fn inside() -> Origin {
    Origin {
        protocol: Protocol::Udp,
        source: "127.0.0.1:5070".parse().unwrap(),
        local: NODE_UDP.parse().unwrap(),
        connection: None,
        peer: None,
    }
}

/// fabrikam.com's edge, on its mutual-TLS connection from outside.
pub fn partner() -> Origin {
    certified("fabrikam.com", PARTNER, "198.51.100.7:40000")
}

/// A peer whose certificate proves `domain`, on connection `id` from
/// `source`.
pub fn certified(domain: &str, id: ConnectionId, source: &str) -> Origin {
    Origin {
        protocol: Protocol::Tls,
        source: source.parse().unwrap(),
        local: tls_local(),
        connection: Some(id),
        peer: Some(Arc::new(PeerIdentity {
            domains: vec![domain.into()],
            source: IdentitySource::SanUri,
            not_after: 4_102_444_800,
        })),
    }
}

/// Anyone on the internet, over UDP, without a certificate.
pub fn stranger(source: &str) -> Origin {
    Origin {
        protocol: Protocol::Udp,
        source: source.parse().unwrap(),
        local: NODE_UDP.parse().unwrap(),
        connection: None,
        peer: None,
    }
}

/// A message as text, for assertions that show it.
pub fn text(m: &Message) -> String {
    String::from_utf8_lossy(m.as_bytes()).into_owned()
}

/// The status codes of the responses among `sent`.
pub fn statuses(sent: &[(Target, Message)]) -> Vec<u16> {
    sent.iter().filter_map(|(_, m)| m.status()).collect()
}

/// The final answers among `sent` (an INVITE's 100 Trying left out).
pub fn finals(sent: &[(Target, Message)]) -> Vec<u16> {
    statuses(sent).into_iter().filter(|c| *c >= 200).collect()
}

/// The NOTIFYs among `sent`, each once: a retransmission (the same
/// Call-ID and CSeq) is left out.
pub fn notifies(sent: &[(Target, Message)]) -> Vec<&Message> {
    let mut seen = std::collections::HashSet::new();
    requests(sent, "NOTIFY")
        .into_iter()
        .map(|(_, m)| m)
        .filter(|m| {
            let key = (
                m.call_id().unwrap_or_default().to_owned(),
                m.cseq().map(|c| c.seq).unwrap_or_default(),
            );
            seen.insert(key)
        })
        .collect()
}

/// The requests of `method` among `sent`.
pub fn requests<'a>(sent: &'a [(Target, Message)], method: &str) -> Vec<&'a (Target, Message)> {
    sent.iter()
        .filter(|(_, m)| m.method() == Some(method))
        .collect()
}

/// One SIP request builder for every test: a request with the headers
/// RFC 3261 §8.1.1 requires, each replaceable, and any others added.
#[derive(Clone, Debug)]
pub struct Req {
    method: String,
    uri: String,
    via: String,
    from: String,
    to: String,
    call_id: String,
    cseq: u32,
    max_forwards: Option<u32>,
    headers: Vec<(String, String)>,
    body: Option<(String, String)>,
}

impl Req {
    /// `method` for `uri`, from alice@fabrikam.com through fabrikam.com's
    /// edge, a new dialog (no To tag).
    pub fn new(method: &str, uri: &str) -> Req {
        Req {
            method: method.into(),
            uri: uri.into(),
            via: "TLS edge.fabrikam.com".into(),
            from: "<sip:alice@fabrikam.com>;tag=a1".into(),
            to: format!("<{uri}>"),
            call_id: format!("{}-{}", method.to_ascii_lowercase(), uri.len()),
            cseq: 1,
            max_forwards: Some(70),
            headers: Vec::new(),
            body: None,
        }
    }

    /// A SUBSCRIBE to presence for `uri`, with Expires and Accept.
    pub fn subscribe(uri: &str, expires: u32) -> Req {
        Req::new("SUBSCRIBE", uri)
            .header("Event", "presence")
            .header("Accept", "application/pidf+xml")
            .header("Expires", &expires.to_string())
            .header("Contact", "<sip:watcher@192.0.2.10>")
    }

    /// The Via's transport and sent-by, e.g. `UDP 127.0.0.1:5070`.
    pub fn via(mut self, via: &str) -> Req {
        self.via = via.into();
        self
    }

    /// The From URI, with a tag.
    pub fn from(mut self, uri: &str) -> Req {
        self.from = format!("<{uri}>;tag=a1");
        self
    }

    /// The To URI, when it is not the Request-URI (a REGISTER's address
    /// of record).
    pub fn to(mut self, uri: &str) -> Req {
        self.to = format!("<{uri}>");
        self
    }

    /// A To tag: the request is in a dialog.
    pub fn to_tag(mut self, tag: &str) -> Req {
        self.to = format!("{};tag={tag}", self.to);
        self
    }

    /// The Call-ID (also the branch's unique part).
    pub fn call_id(mut self, call_id: &str) -> Req {
        self.call_id = call_id.into();
        self
    }

    /// The CSeq number.
    pub fn cseq(mut self, cseq: u32) -> Req {
        self.cseq = cseq;
        self
    }

    /// Max-Forwards, or none.
    pub fn max_forwards(mut self, hops: Option<u32>) -> Req {
        self.max_forwards = hops;
        self
    }

    /// Another header, after the required ones.
    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// A body of `content_type`.
    pub fn body(mut self, content_type: &str, body: &str) -> Req {
        self.body = Some((content_type.into(), body.into()));
        self
    }

    /// The request as it goes on the wire.
    pub fn text(&self) -> String {
        let Req {
            method, call_id, ..
        } = self;
        let mut text = format!(
            "{method} {} SIP/2.0\r\nVia: SIP/2.0/{};branch=z9hG4bK{call_id}-{}\r\n",
            self.uri, self.via, self.cseq
        );
        if let Some(hops) = self.max_forwards {
            let _ = write!(text, "Max-Forwards: {hops}\r\n");
        }
        let _ = write!(
            text,
            "From: {}\r\nTo: {}\r\nCall-ID: {call_id}\r\nCSeq: {} {method}\r\n",
            self.from, self.to, self.cseq
        );
        for (name, value) in &self.headers {
            let _ = write!(text, "{name}: {value}\r\n");
        }
        let (content_type, body) = self.body.clone().unwrap_or_default();
        if !content_type.is_empty() {
            let _ = write!(text, "Content-Type: {content_type}\r\n");
        }
        let _ = write!(text, "Content-Length: {}\r\n\r\n{body}", body.len());
        text
    }
}

/// What a SIP client answers a digest challenge with (RFC 8760 SHA-256,
/// `qop=auth`): the Authorization header's value for `method` on `uri` as
/// `user` with `password`, the `nc`-th use of the challenge's nonce.
pub fn digest_answer(
    challenge: &str,
    method: &str,
    uri: &str,
    (user, password): (&str, &str),
    nc: u32,
) -> String {
    use sha2::{Digest, Sha256};
    let param = |name: &str| {
        let start = challenge.find(&format!("{name}=\""))? + name.len() + 2;
        let len = challenge[start..].find('"')?;
        Some(challenge[start..start + len].to_owned())
    };
    let realm = param("realm").expect("a realm");
    let nonce = param("nonce").expect("a nonce");
    let hex = |input: String| {
        Sha256::digest(input.as_bytes())
            .iter()
            .fold(String::new(), |mut out, b| {
                let _ = write!(out, "{b:02x}");
                out
            })
    };
    let (nc, cnonce) = (format!("{nc:08x}"), "0a4f113b");
    let ha1 = hex(format!("{user}:{realm}:{password}"));
    let ha2 = hex(format!("{method}:{uri}"));
    let response = hex(format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
    format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm=SHA-256, qop=auth, nc={nc}, cnonce=\"{cnonce}\""
    )
}

/// The SHA-256 challenge among a 401's WWW-Authenticate headers.
pub fn sha256_challenge(answer: &Message) -> String {
    text(answer)
        .lines()
        .find(|l| l.starts_with("WWW-Authenticate:") && l.contains("SHA-256"))
        .expect("a SHA-256 challenge")
        .to_owned()
}
