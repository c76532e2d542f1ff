//! The running node: binds the transports from the configuration and runs
//! one event loop that feeds received messages and timer deadlines into the
//! transaction layer and writes what comes out.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use bytes::Bytes;
use porchlight_sip::{via_with_received, Answer, Limits, Message};
use porchlight_transaction::proxy::{forward, Forwarding, ProxyAction, ProxyTable};
use porchlight_transaction::{
    Output, RequestMatch, ServerKey, TimerConfig, TransactionLayer, TxId,
};
use porchlight_transport::pki::{AltName, CertificateAuthority};
use porchlight_transport::{
    ClientAuth, Origin, Protocol, Received, Target, TlsSettings, Transport, TransportConfig,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{ClientAuthSetting, Config};
use crate::edge::{self, Route};
use crate::presence::{authorize_relay, parse_own, PresenceService};
use crate::uas::{answer_malformed, answer_request, Disposition, LocalNames, SERVER};

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A certificate file could not be read.
    #[error("{path}: {source}")]
    ReadFile {
        /// Which file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The certificates do not make a usable TLS configuration.
    #[error(transparent)]
    Tls(#[from] porchlight_transport::TlsError),
    /// A throw-away certificate could not be generated.
    #[error("generating a certificate: {0}")]
    Generate(#[from] porchlight_transport::pki::Error),
    /// A listener could not be bound.
    #[error("binding listeners: {0}")]
    Bind(std::io::Error),
}

/// A started node.
pub struct Node {
    transport: Transport,
    task: JoinHandle<()>,
}

impl Node {
    /// Binds every listener and starts the event loop.
    pub async fn start(config: Config) -> Result<Node, StartError> {
        let tls_settings = if config.listen.tls.is_empty() {
            None
        } else {
            Some(tls_settings(&config)?)
        };
        let transport_config = TransportConfig {
            udp: config.listen.udp.clone(),
            tcp: config.listen.tcp.clone(),
            tls: config.listen.tls.clone(),
            tls_settings,
            limits: limits(&config),
            max_connections: config.limits.max_connections,
            idle_timeout: config.idle_timeout(),
            queue_depth: config.limits.receive_queue_depth,
            connection_queue_depth: config.limits.connection_queue_depth,
            udp_buffer_bytes: config.limits.udp_buffer_bytes,
        };
        let (transport, received) = Transport::bind(transport_config)
            .await
            .map_err(StartError::Bind)?;
        let local = LocalNames {
            hosts: config
                .node
                .domains
                .iter()
                .chain(&config.node.aliases)
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            addresses: transport
                .local_addrs()
                .iter()
                .map(|(_, a)| a.ip())
                .collect(),
        };
        let timers = TimerConfig {
            t1: std::time::Duration::from_millis(config.timers.t1_ms),
            t2: std::time::Duration::from_millis(config.timers.t2_ms),
            t4: std::time::Duration::from_millis(config.timers.t4_ms),
        };
        let tag_seed = RandomState::new().hash_one(Instant::now());
        let presence = PresenceService::new(&config, tag_seed, Instant::now());
        let (verdicts_tx, verdicts) = mpsc::channel(64);
        for (i, endpoint) in presence.directory().endpoints().iter().enumerate() {
            if let Some(h) = &endpoint.health {
                tokio::spawn(crate::health::run(
                    i,
                    h.url.clone(),
                    std::time::Duration::from_secs(h.interval_secs),
                    std::time::Duration::from_millis(h.timeout_ms),
                    verdicts_tx.clone(),
                ));
            }
        }
        let mut secret = [0u8; 32];
        for (i, chunk) in secret.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(
                &RandomState::new()
                    .hash_one((i, Instant::now()))
                    .to_be_bytes(),
            );
        }
        let event_loop = EventLoop {
            transport: transport.clone(),
            layer: TransactionLayer::new(timers),
            local,
            presence,
            tag_seed,
            tag_counter: 0,
            proxy: ProxyTable::default(),
            internal_hop: edge::address_of(&config.edge.internal_next_hop),
            trust_header: config.edge.trust_header.clone(),
            route_secret: secret,
            domain: config.node.domains[0].clone(),
            branch_counter: 0,
        };
        let task = tokio::spawn(event_loop.run(received, verdicts));
        for (protocol, addr) in transport.local_addrs() {
            tracing::info!("listening on {} {addr}", protocol.via_token());
        }
        Ok(Node { transport, task })
    }

    /// The bound address of a protocol.
    pub fn local_addr(&self, protocol: Protocol) -> Option<SocketAddr> {
        self.transport.local_addr(protocol)
    }

    /// Runs until the event loop ends.
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

fn limits(config: &Config) -> Limits {
    Limits {
        max_message_bytes: config.limits.max_message_bytes,
        max_headers: config.limits.max_headers,
        max_line_bytes: config.limits.max_line_bytes,
    }
}

fn tls_settings(config: &Config) -> Result<TlsSettings, StartError> {
    let Some(tls) = &config.tls else {
        tracing::warn!("no [tls] section: using a generated certificate that no peer trusts");
        let ca = CertificateAuthority::new("Porchlight throw-away CA")?;
        let domain = &config.node.domains[0];
        let uri = format!("sip:{domain}");
        let leaf = ca.issue(domain, &[AltName::Uri(&uri), AltName::Dns(domain)])?;
        return Ok(TlsSettings::from_pem(
            leaf.chain_pem.as_bytes(),
            leaf.key_pem.as_bytes(),
            ca.cert_pem.as_bytes(),
            ClientAuth::Required,
        )?);
    };
    let read = |path: &std::path::Path| {
        let path = config.resolve(path);
        std::fs::read(&path).map_err(|source| StartError::ReadFile {
            path: path.display().to_string(),
            source,
        })
    };
    let client_auth = match tls.client_auth {
        ClientAuthSetting::Required => ClientAuth::Required,
        ClientAuthSetting::Optional => ClientAuth::Optional,
    };
    Ok(TlsSettings::from_pem(
        &read(&tls.certificate)?,
        &read(&tls.private_key)?,
        &read(&tls.trusted_cas)?,
        client_auth,
    )?)
}

/// Most messages handled between two flushes.
const RECEIVE_BATCH: usize = 256;

struct EventLoop {
    transport: Transport,
    layer: TransactionLayer<Target>,
    local: LocalNames,
    presence: PresenceService,
    tag_seed: u64,
    tag_counter: u64,
    /// Proxied requests in progress (edge mode).
    proxy: ProxyTable<Upstream>,
    internal_hop: Option<(Protocol, SocketAddr)>,
    trust_header: String,
    /// Keys the Record-Route tokens of dialogs this node proxies.
    route_secret: [u8; 32],
    domain: String,
    branch_counter: u64,
}

/// What a proxied request needs kept to answer upstream itself.
struct Upstream {
    request: Message,
    origin: Origin,
}

impl EventLoop {
    async fn run(
        mut self,
        mut received: mpsc::Receiver<Received>,
        mut verdicts: mpsc::Receiver<(usize, bool)>,
    ) {
        loop {
            let now = Instant::now();
            let deadline = [self.layer.next_deadline(), self.presence.next_deadline(now)]
                .into_iter()
                .flatten()
                .min();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                message = received.recv() => match message {
                    Some(message) => {
                        self.on_received(message);
                        // Take what else is already queued before sending:
                        // under load this turns one wake-up per message
                        // into one per batch.
                        for _ in 0..RECEIVE_BATCH {
                            match received.try_recv() {
                                Ok(message) => self.on_received(message),
                                Err(_) => break,
                            }
                        }
                    }
                    None => return,
                },
                Some((endpoint, healthy)) = verdicts.recv() => self.presence.on_health(endpoint, healthy),
                () = sleep => {
                    let now = Instant::now();
                    self.layer.handle_timeout(now);
                    self.presence.handle_timeout(now);
                }
            }
            self.flush().await;
        }
    }

    /// Sends what the transaction layer and the presence service have for
    /// the network, feeding transaction outcomes back to the service, until
    /// neither has more.
    async fn flush(&mut self) {
        loop {
            let now = Instant::now();
            let mut progressed = false;
            while let Some(output) = self.layer.poll_output() {
                progressed = true;
                match output {
                    Output::Send { id, to, bytes } => {
                        // A send that cannot happen (the connection is gone)
                        // ends the transaction now rather than at its timeout.
                        if !self.send(&to, bytes).await {
                            self.layer.transport_error(&id, now);
                        }
                    }
                    Output::Response { id, response } => {
                        if self.proxy.contains(&id) {
                            for action in self.proxy.on_response(&id, &response) {
                                self.apply(action, now);
                            }
                        } else if !self.presence.on_response(&id.branch, &response, now) {
                            tracing::debug!(?id, "stray response");
                        }
                    }
                    Output::Timeout(TxId::Client(id)) if self.proxy.contains(&id) => {
                        let action = self.proxy.on_failure(&id, true);
                        action.into_iter().for_each(|a| self.apply(a, now));
                    }
                    Output::TransportError(TxId::Client(id)) if self.proxy.contains(&id) => {
                        let action = self.proxy.on_failure(&id, false);
                        action.into_iter().for_each(|a| self.apply(a, now));
                    }
                    Output::Timeout(TxId::Client(id))
                    | Output::TransportError(TxId::Client(id)) => {
                        self.presence.on_failure(&id.branch, now)
                    }
                    Output::Timeout(id) | Output::TransportError(id) => {
                        tracing::debug!(?id, "server transaction ended without ACK or transport")
                    }
                }
            }
            while let Some(out) = self.presence.poll(now) {
                progressed = true;
                if !out.expects_response {
                    self.send(&out.target, out.bytes).await;
                    continue;
                }
                let Some(request) = parse_own(out.bytes) else {
                    tracing::error!("the presence service wrote an unparsable request");
                    continue;
                };
                if let Err(e) = self
                    .layer
                    .send_request(request, out.target, out.reliable, now)
                {
                    tracing::error!("cannot start a client transaction: {e}");
                }
                // Send what that transaction produced before taking more.
                break;
            }
            if !progressed {
                return;
            }
        }
    }

    /// Sends without waiting, for what no transaction follows (stateless
    /// answers, a forwarded ACK for a 2xx).
    fn send_detached(&self, target: Target, bytes: Bytes) {
        let transport = self.transport.clone();
        tokio::spawn(async move {
            if let Err(e) = transport.send(&target, bytes).await {
                tracing::debug!(?target, "send failed: {e}");
            }
        });
    }

    /// Sends, logging a failure; false when the bytes could not go.
    async fn send(&self, to: &Target, bytes: Bytes) -> bool {
        match self.transport.send(to, bytes).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(?to, "send failed: {e}");
                false
            }
        }
    }

    fn on_received(&mut self, received: Received) {
        match received {
            Received::Message(message, origin) if message.is_request() => {
                self.on_request(message, origin)
            }
            Received::Message(response, _) => {
                if response.validate_response().is_ok() {
                    self.layer.receive_response(response, Instant::now());
                }
            }
            Received::Malformed {
                error,
                head,
                origin,
            } => {
                tracing::debug!(source = %origin.source, "malformed message: {error}");
                if let Some(answer) = head.as_ref().and_then(|h| answer_malformed(&error, h)) {
                    let head = head.expect("answer implies head");
                    let target = response_target(&head, &origin);
                    let bytes = self.render(&head, &origin, &answer);
                    self.send_detached(target, bytes);
                }
            }
        }
    }

    fn on_request(&mut self, request: Message, origin: Origin) {
        let now = Instant::now();
        let target = response_target(&request, &origin);
        let reliable = origin.protocol.is_reliable();
        let mut disposition = None;
        if request.validate_request().is_ok() {
            if request.method() == Some("CANCEL") && self.cancel(&request, &origin, &target, now) {
                return;
            }
            // Only edge mode asks whether the target is an endpoint.
            let is_endpoint = self.internal_hop.is_some()
                && request
                    .request_uri()
                    .is_some_and(|uri| self.presence.directory().resolve(uri).is_some());
            match edge::route(
                &request,
                &self.local,
                self.internal_hop,
                self.presence.policy().is_trusted(origin.source.ip()),
                &self.route_secret,
                is_endpoint,
            ) {
                Route::Local => {}
                Route::Refuse(answer) => disposition = Some(Disposition::Respond(answer)),
                Route::Forward(hop) => {
                    return self.proxy_request(request, origin, target, hop, now)
                }
            }
        }
        let disposition = disposition.unwrap_or_else(|| answer_request(&request, &self.local));
        match self
            .layer
            .receive_request(&request, target.clone(), reliable, now)
        {
            Ok(RequestMatch::New(key)) => {
                let answer = match disposition {
                    Disposition::Respond(answer) => answer,
                    Disposition::Deliver => self.presence.handle(&request, &origin, now),
                    Disposition::Absorb => return,
                };
                let bytes = self.render(&request, &origin, &answer);
                self.layer.respond(&key, answer.code, bytes, now);
            }
            Ok(_) => {}
            // Too malformed for a transaction key: answer statelessly.
            Err(_) => {
                let answer = match disposition {
                    Disposition::Respond(answer) => Some(answer),
                    Disposition::Deliver => {
                        Some(Answer::new(400, "Bad Request (no transaction key)"))
                    }
                    Disposition::Absorb => None,
                };
                if let Some(answer) = answer {
                    let bytes = self.render(&request, &origin, &answer);
                    self.send_detached(target, bytes);
                }
            }
        }
    }

    /// A CANCEL for an INVITE this node proxies (§16.10): 200 for the
    /// CANCEL, and the CANCEL goes on downstream. False when no proxied
    /// INVITE matches (the node answers it as its own).
    fn cancel(
        &mut self,
        request: &Message,
        origin: &Origin,
        target: &Target,
        now: Instant,
    ) -> bool {
        let Ok(key) = ServerKey::of(request) else {
            return false;
        };
        let Some(downstream) = self.proxy.cancel(&key.cancelled_invite()) else {
            return false;
        };
        let reliable = origin.protocol.is_reliable();
        if let Ok(RequestMatch::New(own)) =
            self.layer
                .receive_request(request, target.clone(), reliable, now)
        {
            let bytes = self.render(request, origin, &Answer::new(200, "OK"));
            self.layer.respond(&own, 200, bytes, now);
        }
        if let Some(action) = downstream {
            self.apply(action, now);
        }
        true
    }

    /// Forwards a request edge mode routes elsewhere: a new one through a
    /// server and a client transaction, an ACK for a 2xx statelessly.
    fn proxy_request(
        &mut self,
        request: Message,
        origin: Origin,
        response_target: Target,
        hop: edge::Forward,
        now: Instant,
    ) {
        let reliable = origin.protocol.is_reliable();
        let key = match self
            .layer
            .receive_request(&request, response_target.clone(), reliable, now)
        {
            Ok(RequestMatch::New(key)) => key,
            Ok(RequestMatch::DialogAck) => {
                if let Ok(bytes) = self.forwarded(&request, &origin, &hop, None) {
                    self.send_detached(hop.target, bytes);
                }
                return;
            }
            Ok(_) => return,
            Err(_) => {
                let answer = Answer::new(400, "Bad Request (no transaction key)");
                let bytes = self.render(&request, &origin, &answer);
                self.send_detached(response_target, bytes);
                return;
            }
        };
        let trust = if hop.entering {
            match authorize_relay(self.presence.policy(), &request, &origin) {
                Ok(trust) => trust,
                Err(answer) => {
                    let bytes = self.render(&request, &origin, &answer);
                    self.layer.respond(&key, answer.code, bytes, now);
                    return;
                }
            }
        } else {
            None
        };
        let forwarded = match self.forwarded(&request, &origin, &hop, trust) {
            Ok(bytes) => parse_own(bytes),
            Err(e) => {
                tracing::debug!("not forwarded: {e}");
                None
            }
        };
        let Some(forwarded) = forwarded else {
            let answer = Answer::new(483, "Too Many Hops");
            let bytes = self.render(&request, &origin, &answer);
            self.layer.respond(&key, answer.code, bytes, now);
            return;
        };
        let reliable_out = is_stream(&hop.target);
        match self
            .layer
            .send_request(forwarded.clone(), hop.target, reliable_out, now)
        {
            Ok(client) => self
                .proxy
                .insert(key, client, forwarded, Upstream { request, origin }),
            Err(e) => tracing::error!("cannot start a client transaction: {e}"),
        }
    }

    /// The copy of `request` for `hop`: our Via, and for a request entering
    /// from outside our two Record-Route entries and the trust header.
    fn forwarded(
        &mut self,
        request: &Message,
        origin: &Origin,
        hop: &edge::Forward,
        trust: Option<String>,
    ) -> Result<Bytes, porchlight_transaction::proxy::ProxyError> {
        let (protocol, local) = match &hop.target {
            Target::Address { protocol, .. } => (*protocol, self.transport.local_addr(*protocol)),
            Target::Connection(_) => (Protocol::Tls, self.transport.local_addr(Protocol::Tls)),
        };
        let sent_by = local.map_or_else(|| self.domain.clone(), |a| a.to_string());
        let via = format!("SIP/2.0/{} {sent_by}", protocol.via_token());
        let mut record_route = Vec::new();
        if hop.entering {
            let token = edge::route_token(
                &self.route_secret,
                request.call_id().unwrap_or_default(),
                origin.connection,
            );
            let inside = protocol.via_token().to_ascii_lowercase();
            let outside = origin.protocol.via_token().to_ascii_lowercase();
            record_route.push(format!("<sip:{token}@{sent_by};transport={inside};lr>"));
            record_route.push(format!(
                "<sip:{token}@{};transport={outside};lr>",
                origin.local
            ));
        }
        let trust_header = self.trust_header.as_str();
        let add: Vec<(&str, String)> = trust.into_iter().map(|t| (trust_header, t)).collect();
        // Only what this node vouches for reaches the inside.
        let strip: &[&str] = if hop.entering { &[trust_header] } else { &[] };
        self.branch_counter += 1;
        let branch = format!(
            "z9hG4bKpx{:x}.{}",
            self.tag_seed & 0xffff,
            self.branch_counter
        );
        forward(
            request,
            &Forwarding {
                request_uri: None,
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
    fn apply(&mut self, action: ProxyAction<Upstream>, now: Instant) {
        match action {
            ProxyAction::Respond {
                server,
                code,
                bytes,
            } => {
                self.layer.respond(&server, code, bytes, now);
            }
            ProxyAction::Fail { server, code, user } => {
                let reason = if code == 408 {
                    "Request Timeout (the next hop did not answer)"
                } else {
                    "Service Unavailable (the next hop cannot be reached)"
                };
                let bytes = self.render(&user.request, &user.origin, &Answer::new(code, reason));
                self.layer.respond(&server, code, bytes, now);
            }
            ProxyAction::Cancel { client, bytes } => {
                let target = self.layer.context(&TxId::Client(client)).cloned();
                if let (Some(target), Some(cancel)) = (target, parse_own(bytes)) {
                    let reliable = is_stream(&target);
                    if let Err(e) = self.layer.send_request(cancel, target, reliable, now) {
                        tracing::error!("cannot send CANCEL: {e}");
                    }
                }
            }
        }
    }

    fn render(&mut self, request: &Message, origin: &Origin, answer: &Answer) -> Bytes {
        let top_via = request
            .top_via()
            .ok()
            .and_then(|via| via_with_received(&via, origin.source.ip(), origin.source.port()));
        self.tag_counter += 1;
        let tag = format!("{:x}{:x}", self.tag_seed & 0xffff_ffff, self.tag_counter);
        let mut answer = answer.clone();
        answer.headers.push(("Server", SERVER.to_owned()));
        answer.write(request, top_via.as_deref(), &tag)
    }
}

/// Whether sending to `target` goes over a stream (no retransmissions).
fn is_stream(target: &Target) -> bool {
    !matches!(
        target,
        Target::Address {
            protocol: Protocol::Udp,
            ..
        }
    )
}

/// Where a response goes (RFC 3261 §18.2.2, RFC 3581): back on the stream
/// it came from; over UDP to the source address, at the source port when
/// `rport` asked for it, else at the sent-by port.
fn response_target(request: &Message, origin: &Origin) -> Target {
    if let Some(id) = origin.connection {
        return Target::Connection(id);
    }
    let ip: IpAddr = origin.source.ip();
    let port = match request.top_via() {
        Ok(via) if via.rport().is_some() => origin.source.port(),
        Ok(via) => via.port.unwrap_or(5060),
        Err(_) => origin.source.port(),
    };
    Target::Address {
        protocol: Protocol::Udp,
        addr: SocketAddr::new(ip, port),
        domain: None,
    }
}
