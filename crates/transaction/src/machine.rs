//! The four RFC 3261 §17 state machines. Each takes events (a message, a
//! timer firing, a transport error) and returns actions; none does I/O or
//! reads a clock, so every path can be driven in virtual time.

use std::time::Duration;

use bytes::Bytes;
use porchlight_sip::{Message, MessageWriter};

/// Timer base values (RFC 3261 §17.1.1.1): round-trip estimate, maximum
/// retransmit interval, and how long the network may hold a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerConfig {
    /// T1, the RTT estimate (default 500 ms).
    pub t1: Duration,
    /// T2, the longest retransmit interval for non-INVITE (default 4 s).
    pub t2: Duration,
    /// T4, the longest time a message stays in the network (default 5 s).
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

/// The RFC 3261 timers, plus RFC 6026's Timer L.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// INVITE client retransmit.
    A,
    /// INVITE client timeout.
    B,
    /// INVITE client wait for response retransmissions.
    D,
    /// Non-INVITE client retransmit.
    E,
    /// Non-INVITE client timeout.
    F,
    /// INVITE server final-response retransmit.
    G,
    /// INVITE server wait for ACK.
    H,
    /// INVITE server wait for ACK retransmissions.
    I,
    /// Non-INVITE server wait for request retransmissions.
    J,
    /// Non-INVITE client wait for response retransmissions.
    K,
    /// INVITE server wait for INVITE retransmissions after a 2xx (RFC 6026).
    L,
}

/// What a state machine asks its driver to do.
#[derive(Clone, Debug)]
pub enum Action {
    /// Transmit these bytes to the transaction's peer.
    Send(Bytes),
    /// Fire this timer after the delay (re-arming replaces the old deadline).
    Schedule(Timer, Duration),
    /// Hand this response to the transaction user.
    Deliver(Message),
    /// The transaction gave up: no response (client) or no ACK (server).
    Timeout,
    /// The transport could not deliver; the transaction is over.
    TransportError,
    /// The transaction is finished and can be forgotten.
    Terminated,
}

/// INVITE or everything else: the two have different machines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// INVITE transactions (three-way handshake with ACK).
    Invite,
    /// All other methods.
    NonInvite,
}

impl Kind {
    /// The kind of transaction a request method creates.
    pub fn of(method: &str) -> Kind {
        if method == "INVITE" {
            Kind::Invite
        } else {
            Kind::NonInvite
        }
    }
}

/// States of both server machines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    /// Non-INVITE: request received, nothing sent yet.
    Trying,
    /// A provisional response was sent.
    Proceeding,
    /// A final response was sent (INVITE: a non-2xx one).
    Completed,
    /// INVITE: a 2xx was sent; retransmitted INVITEs are absorbed (RFC 6026).
    Accepted,
    /// INVITE: the ACK for a non-2xx arrived.
    Confirmed,
    /// Done.
    Terminated,
}

/// A server transaction (RFC 3261 §17.2).
#[derive(Debug)]
pub struct ServerTransaction {
    kind: Kind,
    state: ServerState,
    reliable: bool,
    timers: TimerConfig,
    last_response: Option<Bytes>,
    g_interval: Duration,
}

impl ServerTransaction {
    /// Creates the transaction for a new request. An INVITE gets `100 Trying`
    /// at once, so the client stops retransmitting (§17.2.1).
    pub fn new(
        request: &Message,
        reliable: bool,
        timers: TimerConfig,
    ) -> (ServerTransaction, Vec<Action>) {
        let kind = Kind::of(request.method().unwrap_or(""));
        let mut tx = ServerTransaction {
            kind,
            state: if kind == Kind::Invite {
                ServerState::Proceeding
            } else {
                ServerState::Trying
            },
            reliable,
            timers,
            last_response: None,
            g_interval: timers.t1,
        };
        let mut actions = Vec::new();
        if kind == Kind::Invite {
            let trying =
                porchlight_sip::response_to(request, 100, "Trying", None, None).finish(b"");
            tx.last_response = Some(trying.clone());
            actions.push(Action::Send(trying));
        }
        (tx, actions)
    }

    /// Current state.
    pub fn state(&self) -> ServerState {
        self.state
    }

    /// The request arrived again: resend the last response, or absorb it.
    pub fn on_retransmission(&mut self) -> Vec<Action> {
        match (self.state, &self.last_response) {
            (ServerState::Proceeding | ServerState::Completed, Some(r)) => {
                vec![Action::Send(r.clone())]
            }
            _ => Vec::new(),
        }
    }

    /// An ACK matched this INVITE transaction (only a non-2xx ACK does).
    pub fn on_ack(&mut self) -> Vec<Action> {
        if self.kind != Kind::Invite || self.state != ServerState::Completed {
            return Vec::new();
        }
        self.state = ServerState::Confirmed;
        if self.reliable {
            self.terminate(Vec::new())
        } else {
            vec![Action::Schedule(Timer::I, self.timers.t4)]
        }
    }

    /// The transaction user sends a response with this status code.
    pub fn respond(&mut self, code: u16, bytes: Bytes) -> Vec<Action> {
        let open = matches!(self.state, ServerState::Trying | ServerState::Proceeding);
        if !open {
            return Vec::new();
        }
        self.last_response = Some(bytes.clone());
        let mut actions = vec![Action::Send(bytes)];
        let t64 = self.timers.t1 * 64;
        match (self.kind, code) {
            (_, 100..=199) => self.state = ServerState::Proceeding,
            (Kind::Invite, 200..=299) => {
                self.state = ServerState::Accepted;
                actions.push(Action::Schedule(Timer::L, t64));
            }
            (Kind::Invite, _) => {
                self.state = ServerState::Completed;
                if !self.reliable {
                    actions.push(Action::Schedule(Timer::G, self.g_interval));
                }
                actions.push(Action::Schedule(Timer::H, t64));
            }
            (Kind::NonInvite, _) => {
                self.state = ServerState::Completed;
                let wait = if self.reliable { Duration::ZERO } else { t64 };
                actions.push(Action::Schedule(Timer::J, wait));
            }
        }
        actions
    }

    /// A timer fired.
    pub fn on_timer(&mut self, timer: Timer) -> Vec<Action> {
        match (timer, self.state) {
            (Timer::G, ServerState::Completed) => {
                self.g_interval = (self.g_interval * 2).min(self.timers.t2);
                let mut actions: Vec<Action> = self
                    .last_response
                    .iter()
                    .cloned()
                    .map(Action::Send)
                    .collect();
                actions.push(Action::Schedule(Timer::G, self.g_interval));
                actions
            }
            (Timer::H, ServerState::Completed) => self.terminate(vec![Action::Timeout]),
            (Timer::I, ServerState::Confirmed)
            | (Timer::J, ServerState::Completed)
            | (Timer::L, ServerState::Accepted) => self.terminate(Vec::new()),
            _ => Vec::new(),
        }
    }

    /// The transport failed to send a response.
    pub fn on_transport_error(&mut self) -> Vec<Action> {
        self.terminate(vec![Action::TransportError])
    }

    fn terminate(&mut self, mut actions: Vec<Action>) -> Vec<Action> {
        self.state = ServerState::Terminated;
        actions.push(Action::Terminated);
        actions
    }
}

/// States of both client machines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientState {
    /// INVITE sent, nothing heard.
    Calling,
    /// Non-INVITE sent, nothing heard.
    Trying,
    /// A provisional response arrived.
    Proceeding,
    /// A final response arrived; absorbing retransmissions.
    Completed,
    /// Done.
    Terminated,
}

/// What a client transaction sends and keeps. The ACK for an INVITE's
/// non-2xx answer is built from the parsed INVITE (§17.1.1.3); any other
/// request needs only its bytes, so one the node wrote itself is never
/// parsed again.
#[derive(Debug)]
pub enum ClientRequest {
    /// An INVITE, parsed.
    Invite(Message),
    /// Any other request, as sent.
    NonInvite(Bytes),
}

impl ClientRequest {
    fn bytes(&self) -> &Bytes {
        match self {
            ClientRequest::Invite(m) => m.as_bytes(),
            ClientRequest::NonInvite(bytes) => bytes,
        }
    }
}

impl From<Message> for ClientRequest {
    fn from(request: Message) -> ClientRequest {
        match Kind::of(request.method().unwrap_or("")) {
            Kind::Invite => ClientRequest::Invite(request),
            Kind::NonInvite => ClientRequest::NonInvite(request.as_bytes().clone()),
        }
    }
}

/// A client transaction (RFC 3261 §17.1).
#[derive(Debug)]
pub struct ClientTransaction {
    state: ClientState,
    reliable: bool,
    timers: TimerConfig,
    request: ClientRequest,
    ack: Option<Bytes>,
    interval: Duration,
}

impl ClientTransaction {
    /// Starts the transaction: sends the request and arms its timers.
    pub fn start(
        request: ClientRequest,
        reliable: bool,
        timers: TimerConfig,
    ) -> (ClientTransaction, Vec<Action>) {
        let kind = match request {
            ClientRequest::Invite(_) => Kind::Invite,
            ClientRequest::NonInvite(_) => Kind::NonInvite,
        };
        let t64 = timers.t1 * 64;
        let mut actions = vec![Action::Send(request.bytes().clone())];
        let (retransmit, timeout) = match kind {
            Kind::Invite => (Timer::A, Timer::B),
            Kind::NonInvite => (Timer::E, Timer::F),
        };
        if !reliable {
            actions.push(Action::Schedule(retransmit, timers.t1));
        }
        actions.push(Action::Schedule(timeout, t64));
        let tx = ClientTransaction {
            state: match kind {
                Kind::Invite => ClientState::Calling,
                Kind::NonInvite => ClientState::Trying,
            },
            reliable,
            timers,
            request,
            ack: None,
            interval: timers.t1,
        };
        (tx, actions)
    }

    /// Current state.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// A response matched this transaction.
    pub fn on_response(&mut self, response: Message) -> Vec<Action> {
        let code = response.status().unwrap_or(0);
        match (&self.request, self.state, code) {
            (
                _,
                ClientState::Calling | ClientState::Trying | ClientState::Proceeding,
                100..=199,
            ) => {
                self.state = ClientState::Proceeding;
                vec![Action::Deliver(response)]
            }
            (
                ClientRequest::Invite(_),
                ClientState::Calling | ClientState::Proceeding,
                200..=299,
            ) => {
                // The 2xx ACK belongs to the dialog, not the transaction (§13.2.2.4).
                self.terminate(vec![Action::Deliver(response)])
            }
            (ClientRequest::Invite(invite), ClientState::Calling | ClientState::Proceeding, _) => {
                let ack = ack_for_non_2xx(invite, &response);
                self.state = ClientState::Completed;
                self.ack = Some(ack.clone());
                let wait = if self.reliable {
                    Duration::ZERO
                } else {
                    Duration::from_secs(32)
                };
                vec![
                    Action::Send(ack),
                    Action::Deliver(response),
                    Action::Schedule(Timer::D, wait),
                ]
            }
            (ClientRequest::Invite(_), ClientState::Completed, 300..) => {
                self.ack.iter().cloned().map(Action::Send).collect()
            }
            (ClientRequest::NonInvite(_), ClientState::Trying | ClientState::Proceeding, _) => {
                self.state = ClientState::Completed;
                let wait = if self.reliable {
                    Duration::ZERO
                } else {
                    self.timers.t4
                };
                vec![Action::Deliver(response), Action::Schedule(Timer::K, wait)]
            }
            _ => Vec::new(),
        }
    }

    /// A timer fired.
    pub fn on_timer(&mut self, timer: Timer) -> Vec<Action> {
        match (timer, self.state) {
            (Timer::A, ClientState::Calling) => {
                self.interval *= 2;
                vec![
                    Action::Send(self.request.bytes().clone()),
                    Action::Schedule(Timer::A, self.interval),
                ]
            }
            (Timer::E, ClientState::Trying | ClientState::Proceeding) => {
                self.interval = if self.state == ClientState::Proceeding {
                    self.timers.t2
                } else {
                    (self.interval * 2).min(self.timers.t2)
                };
                vec![
                    Action::Send(self.request.bytes().clone()),
                    Action::Schedule(Timer::E, self.interval),
                ]
            }
            // Timer B guards only the Calling state: once a provisional
            // response arrived, a call may ring for as long as the callee
            // lets it (§17.1.1.2).
            (Timer::B, ClientState::Calling)
            | (Timer::F, ClientState::Trying | ClientState::Proceeding) => {
                self.terminate(vec![Action::Timeout])
            }
            (Timer::D | Timer::K, ClientState::Completed) => self.terminate(Vec::new()),
            _ => Vec::new(),
        }
    }

    /// The transport could not send the request.
    pub fn on_transport_error(&mut self) -> Vec<Action> {
        self.terminate(vec![Action::TransportError])
    }

    fn terminate(&mut self, mut actions: Vec<Action>) -> Vec<Action> {
        self.state = ClientState::Terminated;
        actions.push(Action::Terminated);
        actions
    }
}

/// The ACK a client INVITE transaction sends for a non-2xx final response
/// (§17.1.1.3): same Request-URI, Call-ID, From, CSeq number and top Via as
/// the INVITE, To from the response, and the INVITE's Route set.
pub fn ack_for_non_2xx(invite: &Message, response: &Message) -> Bytes {
    derived_request(invite, "ACK", response)
}

/// A request that belongs to an INVITE's transaction (ACK for non-2xx,
/// CANCEL): the INVITE's Request-URI, top Via, From, Call-ID, CSeq number
/// and Route set, with To from `to_source`.
pub(crate) fn derived_request(invite: &Message, method: &str, to_source: &Message) -> Bytes {
    use porchlight_sip::HeaderName;
    let mut w = MessageWriter::request(method, invite.request_uri().unwrap_or(""));
    if let Some(via) = invite.items(HeaderName::Via).next().and_then(Result::ok) {
        w.header("Via", via);
    }
    w.header("Max-Forwards", "70");
    for (name, source) in [
        (HeaderName::From, invite),
        (HeaderName::To, to_source),
        (HeaderName::CallId, invite),
    ] {
        if let Some(v) = source.first_value(name) {
            w.header(name.as_str(), v);
        }
    }
    let seq = invite.cseq().map(|c| c.seq).unwrap_or(0);
    w.header_fmt("CSeq", format_args!("{seq} {method}"));
    for route in invite.values(HeaderName::Route) {
        w.header("Route", route);
    }
    w.finish(b"")
}
