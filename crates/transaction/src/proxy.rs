//! Stateful proxying (RFC 3261 §16) without I/O: the forwarded copy of a
//! request, responses relayed back through the server transaction, CANCEL,
//! and the answer a proxy owes upstream when its branch fails.
//!
//! Porchlight forwards each request to exactly one target, so a proxied
//! request has one branch: a client transaction whose key maps back to the
//! server transaction it serves. The driver owns both transactions in its
//! [`TransactionLayer`](crate::TransactionLayer); this table only remembers
//! how they pair and what a later CANCEL or failure needs.
//!
//! An INVITE branch also runs Timer C (§16.6 step 11): a callee that rings
//! for ever would otherwise hold the call, and the proxy's state, open.
//! When it fires the branch is cancelled, and if even the CANCEL gets no
//! final response in time the caller is answered 408.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use porchlight_sip::{HeaderError, HeaderName, Message, MessageWriter};

use crate::machine::derived_request;
use crate::{ClientKey, ServerKey};

/// How to rewrite a request for its next hop.
#[derive(Clone, Copy, Debug)]
pub struct Forwarding<'a> {
    /// A new Request-URI (the target, §16.6 step 2); None keeps it.
    pub request_uri: Option<&'a str>,
    /// How many Route entries from the top are ours and already consumed
    /// (§16.4: loose routing removes them).
    pub consumed_routes: usize,
    /// Record-Route entries to add on top, in the order they appear.
    pub record_route: &'a [String],
    /// Our Via without the branch, e.g. `SIP/2.0/TLS contoso.com:5061`.
    pub via: &'a str,
    /// Header names removed on the way (a trust header from outside).
    pub strip: &'a [&'a str],
    /// Headers added on the way (the trust header we vouch for).
    pub add: &'a [(&'a str, String)],
}

/// Why a request cannot be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Max-Forwards reached zero (§16.3 step 3: answer 483).
    #[error("Max-Forwards is exhausted")]
    TooManyHops,
    /// A header the forwarding needs does not parse.
    #[error(transparent)]
    Header(#[from] HeaderError),
}

/// Writes the copy of `request` for the next hop (§16.6 steps 1–8): the
/// new Request-URI, Max-Forwards decremented (70 when absent), our
/// Record-Route entries on top of any others, consumed Route entries
/// removed, our Via with `branch` on top, the body untouched.
pub fn forward(request: &Message, how: &Forwarding<'_>, branch: &str) -> Result<Bytes, ProxyError> {
    let max_forwards = match request.max_forwards()? {
        Some(0) => return Err(ProxyError::TooManyHops),
        Some(n) => n - 1,
        None => 70,
    };
    let uri = how
        .request_uri
        .or_else(|| request.request_uri())
        .unwrap_or_default();
    let mut w = MessageWriter::request(request.method().unwrap_or_default(), uri);
    // Our Via on top of the others, kept together as peers expect.
    w.header_fmt("Via", format_args!("{};branch={branch}", how.via));
    for field in request.headers() {
        if field.name == HeaderName::Via {
            w.header("Via", request.value_bytes(field));
        }
    }
    w.header_fmt("Max-Forwards", format_args!("{max_forwards}"));
    for entry in how.record_route {
        w.header("Record-Route", entry);
    }
    let mut routes_written = false;
    for field in request.headers() {
        let name = request.name_bytes(field);
        match field.name {
            HeaderName::Via | HeaderName::MaxForwards | HeaderName::ContentLength => continue,
            HeaderName::Route => {
                if !routes_written {
                    routes_written = true;
                    for item in request.items(HeaderName::Route).skip(how.consumed_routes) {
                        w.header("Route", item?);
                    }
                }
                continue;
            }
            _ => {}
        }
        if how
            .strip
            .iter()
            .any(|s| s.as_bytes().eq_ignore_ascii_case(name))
        {
            continue;
        }
        if let Ok(name) = std::str::from_utf8(name) {
            w.header(name, request.value_bytes(field));
        }
    }
    for (name, value) in how.add {
        w.header(name, value);
    }
    Ok(w.finish(request.body()))
}

/// The response as the upstream peer gets it: our Via, the topmost entry,
/// removed (§16.7 step 3); everything else, body included, untouched.
pub fn relay_response(response: &Message) -> Bytes {
    relay(
        response,
        response.status().unwrap_or(500),
        std::str::from_utf8(response.reason().unwrap_or_default()).unwrap_or("Unknown"),
    )
}

/// [`relay_response`] with this status line instead of the response's.
fn relay(response: &Message, code: u16, reason: &str) -> Bytes {
    let mut w = MessageWriter::response(code, reason);
    let mut vias_written = false;
    for field in response.headers() {
        match field.name {
            HeaderName::ContentLength => continue,
            HeaderName::Via => {
                if !vias_written {
                    vias_written = true;
                    for item in response.items(HeaderName::Via).skip(1).flatten() {
                        w.header("Via", item);
                    }
                }
                continue;
            }
            _ => {}
        }
        if let Ok(name) = std::str::from_utf8(response.name_bytes(field)) {
            w.header(name, response.value_bytes(field));
        }
    }
    w.finish(response.body())
}

/// What the driver must do after a branch event.
#[derive(Debug)]
pub enum ProxyAction<U> {
    /// Answer the server transaction with these bytes.
    Respond {
        /// Which server transaction.
        server: ServerKey,
        /// The status code, for the transaction's state.
        code: u16,
        /// The relayed response.
        bytes: Bytes,
    },
    /// The branch failed: answer upstream with `code`, built from the
    /// original request the driver stored as `user`.
    Fail {
        /// Which server transaction.
        server: ServerKey,
        /// 408 after a timeout, 503 when the next hop cannot be reached.
        code: u16,
        /// What the driver stored with the branch.
        user: U,
    },
    /// Send this CANCEL for the branch `client` (a new non-INVITE client
    /// transaction, to where that branch went).
    Cancel {
        /// The INVITE's client transaction.
        client: ClientKey,
        /// The CANCEL.
        bytes: Bytes,
    },
}

struct Branch<U> {
    server: ServerKey,
    forwarded: Message,
    provisional: bool,
    cancel_wanted: bool,
    /// When Timer C fires, as its key in the table's timer index; INVITE
    /// branches only.
    timer_c: Option<(Instant, u64)>,
    user: U,
}

/// Timer C's default: RFC 3261 asks for more than three minutes.
pub const DEFAULT_TIMER_C: Duration = Duration::from_secs(181);

/// How long a cancelled branch waits for its final response (the 487)
/// before the caller is answered without it: Timer B's 64·T1.
const CANCEL_GRACE: Duration = Duration::from_secs(32);

/// The proxied requests in progress, one branch each.
pub struct ProxyTable<U> {
    branches: HashMap<ClientKey, Branch<U>>,
    by_server: HashMap<ServerKey, ClientKey>,
    /// Running Timer Cs in firing order; the number tells equal instants apart.
    timers: BTreeMap<(Instant, u64), ClientKey>,
    timer_c: Duration,
    timer_counter: u64,
}

impl<U> Default for ProxyTable<U> {
    fn default() -> Self {
        ProxyTable::new(DEFAULT_TIMER_C)
    }
}

impl<U> ProxyTable<U> {
    /// A table whose INVITE branches give up ringing after `timer_c`.
    pub fn new(timer_c: Duration) -> ProxyTable<U> {
        ProxyTable {
            branches: HashMap::new(),
            by_server: HashMap::new(),
            timers: BTreeMap::new(),
            timer_c,
            timer_counter: 0,
        }
    }

    /// Remembers that `client` (carrying `forwarded`) serves `server`;
    /// `user` comes back if the branch fails. An INVITE starts Timer C.
    pub fn insert(
        &mut self,
        server: ServerKey,
        client: ClientKey,
        forwarded: Message,
        user: U,
        now: Instant,
    ) {
        self.by_server.insert(server.clone(), client.clone());
        let timer_c = (forwarded.method() == Some("INVITE"))
            .then(|| self.start_timer(&client, now + self.timer_c));
        self.branches.insert(
            client,
            Branch {
                server,
                forwarded,
                provisional: false,
                cancel_wanted: false,
                timer_c,
                user,
            },
        );
    }

    fn start_timer(&mut self, client: &ClientKey, at: Instant) -> (Instant, u64) {
        self.timer_counter += 1;
        let key = (at, self.timer_counter);
        self.timers.insert(key, client.clone());
        key
    }

    /// Moves a branch's Timer C to `at`.
    fn restart_timer(&mut self, client: &ClientKey, at: Instant) {
        let Some(old) = self.branches.get_mut(client).and_then(|b| b.timer_c.take()) else {
            return;
        };
        self.timers.remove(&old);
        let key = self.start_timer(client, at);
        if let Some(branch) = self.branches.get_mut(client) {
            branch.timer_c = Some(key);
        }
    }

    /// When the next Timer C fires.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.keys().next().map(|(at, _)| *at)
    }

    /// Fires the Timer Cs due by `now` (§16.8): a branch that has rung is
    /// cancelled, and given [`CANCEL_GRACE`] for its final response; a
    /// branch that never answered, or whose CANCEL went unanswered, owes
    /// the caller 408.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<ProxyAction<U>> {
        let mut actions = Vec::new();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let client = entry.remove();
            let Some(branch) = self.branches.get_mut(&client) else {
                continue;
            };
            branch.timer_c = None;
            if branch.provisional && !branch.cancel_wanted {
                branch.cancel_wanted = true;
                let bytes = cancel_for(&branch.forwarded);
                let key = self.start_timer(&client, now + CANCEL_GRACE);
                if let Some(branch) = self.branches.get_mut(&client) {
                    branch.timer_c = Some(key);
                }
                actions.push(ProxyAction::Cancel { client, bytes });
            } else if let Some(action) = self.on_failure(&client, true) {
                actions.push(action);
            }
        }
        actions
    }

    /// Whether this client transaction is a proxied branch.
    pub fn contains(&self, client: &ClientKey) -> bool {
        self.branches.contains_key(client)
    }

    /// Branches in progress.
    pub fn len(&self) -> usize {
        self.branches.len()
    }

    /// Whether no branch is in progress.
    pub fn is_empty(&self) -> bool {
        self.branches.is_empty()
    }

    /// A response arrived on a branch (§16.7): 100 stays here, other
    /// provisional and all final responses go upstream; a final response
    /// ends the branch. A CANCEL that waited for the first provisional
    /// response goes out now (§9.1). A provisional response other than 100
    /// restarts Timer C (§16.7 step 2).
    pub fn on_response(
        &mut self,
        client: &ClientKey,
        response: &Message,
        now: Instant,
    ) -> Vec<ProxyAction<U>> {
        let code = response.status().unwrap_or(0);
        if (101..200).contains(&code) && self.branches.get(client).is_some_and(|b| !b.cancel_wanted)
        {
            self.restart_timer(client, now + self.timer_c);
        }
        let Some(branch) = self.branches.get_mut(client) else {
            return Vec::new();
        };
        let mut actions = Vec::new();
        if code < 200 {
            if !branch.provisional && branch.cancel_wanted {
                actions.push(ProxyAction::Cancel {
                    client: client.clone(),
                    bytes: cancel_for(&branch.forwarded),
                });
            }
            branch.provisional = true;
            if code == 100 {
                return actions;
            }
            actions.push(ProxyAction::Respond {
                server: branch.server.clone(),
                code,
                bytes: relay_response(response),
            });
            return actions;
        }
        let branch = self.remove(client).expect("present");
        // A 503 from downstream must not make the upstream client think
        // this proxy is overloaded (§16.7 step 6): it becomes 500.
        let bytes = if code == 503 {
            relay(response, 500, "Server Error (next hop unavailable)")
        } else {
            relay_response(response)
        };
        vec![ProxyAction::Respond {
            server: branch.server,
            code: if code == 503 { 500 } else { code },
            bytes,
        }]
    }

    /// The branch timed out (`timed_out`) or its transport failed: the
    /// driver answers upstream with 408 or 503 (§16.7 step 6, §16.8).
    pub fn on_failure(&mut self, client: &ClientKey, timed_out: bool) -> Option<ProxyAction<U>> {
        let branch = self.remove(client)?;
        Some(ProxyAction::Fail {
            server: branch.server,
            code: if timed_out { 408 } else { 503 },
            user: branch.user,
        })
    }

    /// Whether a branch serves the INVITE server transaction `invite`: a
    /// CANCEL for it is this proxy's to answer (§16.10).
    pub fn serves(&self, invite: &ServerKey) -> bool {
        self.by_server.contains_key(invite)
    }

    /// A CANCEL matched the INVITE server transaction `invite` (§16.10).
    /// None when no branch serves it (the driver answers 481); otherwise
    /// the CANCEL to send now, or nothing yet when no provisional response
    /// has arrived (it is sent with the first one).
    pub fn cancel(&mut self, invite: &ServerKey) -> Option<Option<ProxyAction<U>>> {
        let client = self.by_server.get(invite)?;
        let branch = self.branches.get_mut(client)?;
        if branch.cancel_wanted {
            return Some(None);
        }
        branch.cancel_wanted = true;
        Some(branch.provisional.then(|| ProxyAction::Cancel {
            client: client.clone(),
            bytes: cancel_for(&branch.forwarded),
        }))
    }

    fn remove(&mut self, client: &ClientKey) -> Option<Branch<U>> {
        let branch = self.branches.remove(client)?;
        self.by_server.remove(&branch.server);
        if let Some(key) = branch.timer_c {
            self.timers.remove(&key);
        }
        Some(branch)
    }
}

/// The CANCEL for a forwarded INVITE (§9.1): the INVITE's Request-URI,
/// Call-ID, From, To, CSeq number, top Via and Route set.
pub fn cancel_for(invite: &Message) -> Bytes {
    derived_request(invite, "CANCEL", invite)
}
