//! Owns every live transaction: matches incoming messages to them, keeps
//! their timer deadlines, and queues what must go out. Time enters only as
//! `now` arguments, so the whole layer runs in virtual time under test.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;
use porchlight_sip::{HeaderError, Message};

use crate::machine::{
    Action, ClientRequest, ClientTransaction, Kind, ServerTransaction, Timer, TimerConfig,
};

/// Identifies a server transaction (RFC 3261 §17.2.3).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ServerKey {
    /// The branch carries the magic cookie: branch, sent-by and method suffice.
    Branch {
        /// Top Via branch.
        branch: String,
        /// Top Via sent-by.
        sent_by: String,
        /// Method, with ACK counted as INVITE.
        method: String,
    },
    /// Pre-RFC 3261 peers: match on the request's identifying fields.
    Legacy {
        /// Request-URI.
        request_uri: String,
        /// From tag.
        from_tag: String,
        /// Call-ID.
        call_id: String,
        /// CSeq number.
        seq: u32,
        /// Method, with ACK counted as INVITE.
        method: String,
        /// Top Via as written.
        top_via: String,
    },
}

impl ServerKey {
    /// The key of the transaction a request belongs to.
    pub fn of(request: &Message) -> Result<ServerKey, HeaderError> {
        let via = request.top_via()?;
        let method = match request.method().unwrap_or("") {
            "ACK" => "INVITE",
            m => m,
        }
        .to_owned();
        if via.has_rfc3261_branch() {
            let port = via.port.map(|p| format!(":{p}")).unwrap_or_default();
            return Ok(ServerKey::Branch {
                branch: via.branch().unwrap_or("").to_owned(),
                sent_by: format!("{}{port}", via.host).to_ascii_lowercase(),
                method,
            });
        }
        Ok(ServerKey::Legacy {
            request_uri: request.request_uri().unwrap_or("").to_owned(),
            from_tag: request.from()?.tag().unwrap_or("").to_owned(),
            call_id: request.call_id()?.to_owned(),
            seq: request.cseq()?.seq,
            method,
            top_via: via.raw.to_owned(),
        })
    }

    /// The INVITE transaction a CANCEL refers to (same key, method INVITE).
    pub fn cancelled_invite(&self) -> ServerKey {
        let mut key = self.clone();
        match &mut key {
            ServerKey::Branch { method, .. } | ServerKey::Legacy { method, .. } => {
                *method = "INVITE".into()
            }
        }
        key
    }
}

/// Identifies a client transaction (§17.1.3): our branch and the method.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// The branch we generated.
    pub branch: String,
    /// The CSeq method.
    pub method: String,
}

impl ClientKey {
    /// The key a response matches.
    pub fn of(message: &Message) -> Result<ClientKey, HeaderError> {
        Ok(ClientKey {
            branch: message.top_via()?.branch().unwrap_or("").to_owned(),
            method: message.cseq()?.method.to_owned(),
        })
    }
}

/// An INVITE was handed over as bytes: its client transaction builds the
/// ACK for a non-2xx answer from the parsed request, so it must come
/// through [`TransactionLayer::send_request`].
#[derive(Debug, thiserror::Error)]
#[error("an INVITE's client transaction needs the parsed request")]
pub struct WrittenInvite;

/// Either kind of transaction.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TxId {
    /// A server transaction.
    Server(ServerKey),
    /// A client transaction.
    Client(ClientKey),
}

/// What the layer needs its driver to do, in order.
#[derive(Debug)]
pub enum Output<C> {
    /// Transmit to the peer described by the transaction's context.
    Send {
        /// Which transaction, to report a failed send with
        /// [`TransactionLayer::transport_error`].
        id: TxId,
        /// Where.
        to: C,
        /// What.
        bytes: Bytes,
    },
    /// A response for a client transaction.
    Response {
        /// Which transaction.
        id: ClientKey,
        /// The response.
        response: Message,
    },
    /// A transaction timed out (client: no final response; server: no ACK).
    Timeout(TxId),
    /// A transaction ended because its transport failed.
    TransportError(TxId),
}

/// How an incoming request relates to existing transactions.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestMatch {
    /// A new transaction was created; the transaction user must answer it.
    New(ServerKey),
    /// A retransmission, handled inside the layer.
    Retransmission,
    /// An ACK for a non-2xx final response, absorbed by its transaction.
    AckAbsorbed,
    /// An ACK with no transaction (the ACK for a 2xx): it belongs to a dialog.
    DialogAck,
}

struct Entry<T, C> {
    machine: T,
    context: C,
    armed: Vec<(Timer, u64)>,
}

fn shrink_if_sparse<K: Eq + std::hash::Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 4096 && map.len() * 8 < map.capacity() {
        map.shrink_to(map.len() * 2);
    }
}

/// All live transactions of one node.
pub struct TransactionLayer<C> {
    timers: TimerConfig,
    servers: HashMap<ServerKey, Entry<ServerTransaction, C>>,
    clients: HashMap<ClientKey, Entry<ClientTransaction, C>>,
    deadlines: BTreeMap<(Instant, u64), (TxId, Timer)>,
    next_seq: u64,
    outputs: VecDeque<Output<C>>,
}

impl<C: Clone> TransactionLayer<C> {
    /// An empty layer with these timer values.
    pub fn new(timers: TimerConfig) -> Self {
        TransactionLayer {
            timers,
            servers: HashMap::new(),
            clients: HashMap::new(),
            deadlines: BTreeMap::new(),
            next_seq: 0,
            outputs: VecDeque::new(),
        }
    }

    /// Matches a validated request to a server transaction, creating one for a new request.
    pub fn receive_request(
        &mut self,
        request: &Message,
        context: C,
        reliable: bool,
        now: Instant,
    ) -> Result<RequestMatch, HeaderError> {
        let key = ServerKey::of(request)?;
        let is_ack = request.method() == Some("ACK");
        let id = TxId::Server(key.clone());
        if let Some(entry) = self.servers.get_mut(&key) {
            let (actions, result) = if is_ack {
                (entry.machine.on_ack(), RequestMatch::AckAbsorbed)
            } else {
                (
                    entry.machine.on_retransmission(),
                    RequestMatch::Retransmission,
                )
            };
            let is_accepted = entry.machine.state() == crate::machine::ServerState::Accepted;
            self.apply(id, actions, now);
            // An ACK after a 2xx passes through to the dialog (RFC 6026 §8.7).
            if is_ack && is_accepted {
                return Ok(RequestMatch::DialogAck);
            }
            return Ok(result);
        }
        if is_ack {
            return Ok(RequestMatch::DialogAck);
        }
        let (machine, actions) = ServerTransaction::new(request, reliable, self.timers);
        self.servers.insert(
            key.clone(),
            Entry {
                machine,
                context,
                armed: Vec::new(),
            },
        );
        self.apply(id, actions, now);
        Ok(RequestMatch::New(key))
    }

    /// The transaction user answers a server transaction. Returns false
    /// when the transaction no longer exists.
    pub fn respond(&mut self, key: &ServerKey, code: u16, response: Bytes, now: Instant) -> bool {
        let Some(entry) = self.servers.get_mut(key) else {
            return false;
        };
        let actions = entry.machine.respond(code, response);
        self.apply(TxId::Server(key.clone()), actions, now);
        true
    }

    /// Answers a server transaction with a final refusal and forgets it at
    /// once (a stateless answer, RFC 3261 §8.2.7): nothing is held for
    /// Timer J or H, so a flood of refused requests costs no memory. A
    /// retransmission is then a new request, answered the same way again;
    /// the ACK of a refused INVITE finds no transaction and is dropped.
    /// Returns false when the transaction no longer exists.
    pub fn refuse(&mut self, key: &ServerKey, response: Bytes) -> bool {
        let Some(entry) = self.servers.remove(key) else {
            return false;
        };
        self.outputs.push_back(Output::Send {
            id: TxId::Server(key.clone()),
            to: entry.context,
            bytes: response,
        });
        true
    }

    /// Starts a client transaction for a request whose top Via carries a
    /// fresh branch.
    pub fn send_request(
        &mut self,
        request: Message,
        context: C,
        reliable: bool,
        now: Instant,
    ) -> Result<ClientKey, HeaderError> {
        let key = ClientKey::of(&request)?;
        self.start_client(key.clone(), request.into(), context, reliable, now);
        Ok(key)
    }

    /// Starts a client transaction for a request other than INVITE that the
    /// caller wrote itself, under the key it wrote (its top Via branch and
    /// CSeq method), so it is never parsed again: the NOTIFYs of a fan-out.
    pub fn send_written(
        &mut self,
        key: ClientKey,
        request: Bytes,
        context: C,
        reliable: bool,
        now: Instant,
    ) -> Result<(), WrittenInvite> {
        if Kind::of(&key.method) == Kind::Invite {
            return Err(WrittenInvite);
        }
        let request = ClientRequest::NonInvite(request);
        self.start_client(key, request, context, reliable, now);
        Ok(())
    }

    fn start_client(
        &mut self,
        key: ClientKey,
        request: ClientRequest,
        context: C,
        reliable: bool,
        now: Instant,
    ) {
        let (machine, actions) = ClientTransaction::start(request, reliable, self.timers);
        self.clients.insert(
            key.clone(),
            Entry {
                machine,
                context,
                armed: Vec::new(),
            },
        );
        self.apply(TxId::Client(key), actions, now);
    }

    /// Matches a validated response to its client transaction. Returns false
    /// for a stray response (no transaction), which a proxy forwards
    /// statelessly and a user agent drops.
    pub fn receive_response(&mut self, response: Message, now: Instant) -> bool {
        let Ok(key) = ClientKey::of(&response) else {
            return false;
        };
        let Some(entry) = self.clients.get_mut(&key) else {
            return false;
        };
        let actions = entry.machine.on_response(response);
        self.apply(TxId::Client(key), actions, now);
        true
    }

    /// The transport failed for this transaction.
    pub fn transport_error(&mut self, id: &TxId, now: Instant) {
        let actions = match id {
            TxId::Server(k) => self
                .servers
                .get_mut(k)
                .map(|e| e.machine.on_transport_error()),
            TxId::Client(k) => self
                .clients
                .get_mut(k)
                .map(|e| e.machine.on_transport_error()),
        };
        if let Some(actions) = actions {
            self.apply(id.clone(), actions, now);
        }
    }

    /// When the next timer is due, for the driver's sleep.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.keys().next().map(|(at, _)| *at)
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(entry) = self.deadlines.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, seq), (id, timer)) = entry.remove_entry();
            let actions = match &id {
                TxId::Server(k) => self
                    .servers
                    .get_mut(k)
                    .filter(|e| e.armed.contains(&(timer, seq)))
                    .map(|e| e.machine.on_timer(timer)),
                TxId::Client(k) => self
                    .clients
                    .get_mut(k)
                    .filter(|e| e.armed.contains(&(timer, seq)))
                    .map(|e| e.machine.on_timer(timer)),
            };
            if let Some(actions) = actions {
                self.apply(id, actions, now);
            }
        }
        // A burst leaves the maps with room for it; hand that back once
        // they are mostly empty, so memory follows the live load.
        shrink_if_sparse(&mut self.servers);
        shrink_if_sparse(&mut self.clients);
    }

    /// The next thing to do, in order.
    pub fn poll_output(&mut self) -> Option<Output<C>> {
        self.outputs.pop_front()
    }

    /// Live server and client transactions.
    pub fn len(&self) -> (usize, usize) {
        (self.servers.len(), self.clients.len())
    }

    /// Whether no transaction is live.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty() && self.clients.is_empty()
    }

    /// The context a transaction was created with.
    pub fn context(&self, id: &TxId) -> Option<&C> {
        match id {
            TxId::Server(k) => self.servers.get(k).map(|e| &e.context),
            TxId::Client(k) => self.clients.get(k).map(|e| &e.context),
        }
    }

    fn apply(&mut self, id: TxId, actions: Vec<Action>, now: Instant) {
        for action in actions {
            let Some(context) = self.context(&id).cloned() else {
                return;
            };
            match action {
                Action::Send(bytes) => self.outputs.push_back(Output::Send {
                    id: id.clone(),
                    to: context,
                    bytes,
                }),
                Action::Schedule(timer, after) => {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    self.deadlines
                        .insert((now + after, seq), (id.clone(), timer));
                    let armed = match &id {
                        TxId::Server(k) => self.servers.get_mut(k).map(|e| &mut e.armed),
                        TxId::Client(k) => self.clients.get_mut(k).map(|e| &mut e.armed),
                    };
                    if let Some(armed) = armed {
                        armed.retain(|(t, _)| *t != timer);
                        armed.push((timer, seq));
                    }
                }
                Action::Deliver(response) => {
                    if let TxId::Client(k) = &id {
                        self.outputs.push_back(Output::Response {
                            id: k.clone(),
                            response,
                        });
                    }
                }
                Action::Timeout => self.outputs.push_back(Output::Timeout(id.clone())),
                Action::TransportError => {
                    self.outputs.push_back(Output::TransportError(id.clone()))
                }
                Action::Terminated => match &id {
                    TxId::Server(k) => {
                        self.servers.remove(k);
                    }
                    TxId::Client(k) => {
                        self.clients.remove(k);
                    }
                },
            }
        }
    }
}
