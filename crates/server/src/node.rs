//! The running node: binds the transports from the configuration and runs
//! one event loop that feeds received messages and timer deadlines into the
//! transaction layer and writes what comes out.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use bytes::Bytes;
use porchlight_sip::{via_with_received, Answer, Limits, Message};
use porchlight_transaction::{Output, RequestMatch, TimerConfig, TransactionLayer, TxId};
use porchlight_transport::pki::{AltName, CertificateAuthority};
use porchlight_transport::{
    ClientAuth, Origin, Protocol, Received, Target, TlsSettings, Transport, TransportConfig,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{ClientAuthSetting, Config};
use crate::presence::{parse_own, PresenceService};
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
        let event_loop = EventLoop {
            transport: transport.clone(),
            layer: TransactionLayer::new(timers),
            local,
            presence,
            tag_seed,
            tag_counter: 0,
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
                        if !self.presence.on_response(&id.branch, &response, now) {
                            tracing::debug!(?id, "stray response");
                        }
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
                    let transport = self.transport.clone();
                    tokio::spawn(async move { transport.send(&target, bytes).await });
                }
            }
        }
    }

    fn on_request(&mut self, request: Message, origin: Origin) {
        let now = Instant::now();
        let target = response_target(&request, &origin);
        let disposition = answer_request(&request, &self.local);
        let reliable = origin.protocol.is_reliable();
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
                    let transport = self.transport.clone();
                    tokio::spawn(async move { transport.send(&target, bytes).await });
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
