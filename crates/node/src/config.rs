//! Node configuration: one TOML document, validated before anything binds.
//! Every error names the file, the line and what to do about it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The configuration compiled into the binary.
pub const DEFAULT_CONFIG: &str = include_str!("default.toml");

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// Which file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed or a key is unknown or mistyped.
    #[error("{origin}:{line}: {message}\n  fix: {fix}")]
    Syntax {
        /// File name, or `<embedded defaults>`.
        origin: String,
        /// 1-based line.
        line: usize,
        /// What the parser said.
        message: String,
        /// What to change.
        fix: String,
    },
    /// The values parse but make no sense together.
    #[error("{origin}: {message}\n  fix: {fix}")]
    Invalid {
        /// File name.
        origin: String,
        /// What is wrong.
        message: String,
        /// What to change.
        fix: &'static str,
    },
    /// The `[policy]` section is inconsistent.
    #[error("{origin}: [policy]: {problem}")]
    Policy {
        /// File name.
        origin: String,
        /// What is wrong, with the fix (in the message, so not a separate cause).
        problem: porchlight_policy::PolicyError,
    },
    /// An `[[endpoint]]` declaration is unusable.
    #[error("{origin}:{line}: {problem}")]
    Endpoint {
        /// File name.
        origin: String,
        /// The line of the endpoint's `uri`.
        line: usize,
        /// What is wrong, with the fix (in the message, so not a separate cause).
        problem: porchlight_endpoints::EndpointError,
    },
}

/// Identity of the node.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// SIP domains this node is authoritative for.
    pub domains: Vec<String>,
    /// Other host names or literal addresses that mean this node.
    pub aliases: Vec<String>,
    /// Runtime threads; 0 means one per core.
    pub worker_threads: usize,
}

/// Listener addresses.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenSection {
    /// UDP addresses.
    pub udp: Vec<SocketAddr>,
    /// TCP addresses.
    pub tcp: Vec<SocketAddr>,
    /// TLS addresses.
    pub tls: Vec<SocketAddr>,
}

/// Every bound, explicit.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    /// Largest message accepted (513 beyond).
    pub max_message_bytes: usize,
    /// Most header fields in a message.
    pub max_headers: usize,
    /// Longest header line.
    pub max_line_bytes: usize,
    /// Most simultaneous TCP/TLS connections.
    pub max_connections: usize,
    /// Of those, how many only certified peers, the trusted networks and
    /// the node's own dialling may use: a flood of anonymous connections
    /// never takes them.
    pub reserved_connections: usize,
    /// Most anonymous connections from one address.
    pub max_connections_per_source: usize,
    /// Idle stream connections close after this many seconds.
    pub idle_timeout_secs: u64,
    /// A TLS handshake must finish within this many seconds.
    pub tls_handshake_timeout_secs: u64,
    /// A message must arrive whole within this many seconds of its first
    /// byte, and a new connection's first message within this of opening.
    pub message_timeout_secs: u64,
    /// Received messages waiting for the event loop past which new work is
    /// shed (503 with Retry-After) until the backlog is under half of it.
    pub overload_backlog: usize,
    /// Live server transactions past which new work is shed.
    pub overload_server_transactions: usize,
    /// Resident memory, in MiB, past which new work is shed; 0: no budget.
    pub memory_budget_mib: u64,
    /// What shed requests are told to wait (Retry-After), with up to as
    /// much again of jitter.
    pub overload_retry_after_secs: u64,
    /// Requests per second one anonymous source (an address, or an IPv6
    /// /64; neither a certified peer nor the trusted networks) may send;
    /// past it they are dropped unanswered. 0: no limit.
    pub source_request_rate: u32,
    /// Requests such a source may send at once before the rate applies.
    pub source_request_burst: u32,
    /// Anonymous sources whose rate is tracked at once.
    pub max_rate_sources: usize,
    /// Refusals are logged once per reason and peer per this many seconds,
    /// with a count of the rest; metrics count every one.
    pub refusal_log_interval_secs: u64,
    /// Received messages queued toward the core.
    pub receive_queue_depth: usize,
    /// Messages queued per connection toward the network.
    pub connection_queue_depth: usize,
    /// Kernel buffer of each UDP socket, each way, so bursts queue instead of dropping.
    pub udp_buffer_bytes: usize,
    /// Messages held for one destination while its edge is looked up and
    /// dialled; beyond it they fail at once (503 upstream).
    pub max_parked_per_destination: usize,
    /// Messages held for one connection whose queue is full, so the event
    /// loop never waits for a peer to read; past it they fail.
    pub connection_backlog: usize,
    /// IM sessions the node holds for webhook apps at once; beyond it an
    /// IM INVITE gets 486.
    pub max_im_sessions: usize,
}

/// RFC 3261 timer bases.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimersSection {
    /// T1 in milliseconds.
    pub t1_ms: u64,
    /// T2 in milliseconds.
    pub t2_ms: u64,
    /// T4 in milliseconds.
    pub t4_ms: u64,
    /// Timer C (§16.6): seconds a proxied INVITE may ring before this node
    /// cancels it.
    pub timer_c_secs: u64,
}

/// Edge mode: proxying for the SIP infrastructure behind the node.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSection {
    /// Where requests for our domains that no endpoint serves are proxied
    /// (a SIP URI with an IP address, e.g. `sip:10.0.0.5:5060;transport=tcp`);
    /// empty answers them here (404).
    pub internal_next_hop: String,
    /// The header stamped on requests let in from outside when they are
    /// forwarded inside (and removed from whatever arrives from outside).
    pub trust_header: String,
    /// The host name put in the Record-Route entries that face the
    /// outside, so partners reach in-dialog requests back by name; empty
    /// uses the address the dialog's first request arrived on.
    pub record_route_host: String,
}

/// The admin surface: HTTP API, metrics and console.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    /// Where the admin API listens; empty turns it off. Loopback by default:
    /// put it behind a TLS reverse proxy to reach it from elsewhere.
    pub listen: String,
    /// The file holding the bearer token, made on first start when missing.
    pub token_file: PathBuf,
    /// Seconds between the samples of the last hour the console charts.
    #[serde(deserialize_with = "history_interval")]
    pub history_interval_secs: u64,
}

/// A sampling interval, checked where it is written so a bad one names
/// its line: 0 would never sample, past ten minutes the hour's chart has
/// too few points to read.
fn history_interval<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let secs = u64::deserialize(d)?;
    if !(1..=600).contains(&secs) {
        return Err(serde::de::Error::custom(format!(
            "invalid value: {secs} is not a sampling interval; use 10 (seconds between \
             the console's samples, 1 to 600)"
        )));
    }
    Ok(secs)
}

impl ClusterSection {
    /// The lease, as a duration.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    /// What makes no sense in the section, and the fix.
    fn validate(&self) -> Result<(), (String, &'static str)> {
        if self.redis.is_empty() {
            return Err((
                "[cluster] redis lists no address".into(),
                "list at least one node of the Redis Cluster, e.g. redis = [\"redis://10.0.0.5:6379\"]",
            ));
        }
        if self.node_id == 0 {
            return Err((
                "[cluster] node_id = 0".into(),
                "number the nodes from 1, a different number on each",
            ));
        }
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err((
                format!("[cluster] name = {:?} cannot prefix Redis keys", self.name),
                "use letters, digits, '-' and '_' only (the default is \"pl\")",
            ));
        }
        if self.lease_ms < 3000 {
            return Err((
                format!(
                    "[cluster] lease_ms = {}: a lease this short lapses in a Redis failover \
                     or a busy second, and the node would be taken for dead",
                    self.lease_ms
                ),
                "use at least twice the Redis cluster-node-timeout plus 2000 (8000 for a 3 s timeout)",
            ));
        }
        if self.sweep_secs == 0 || self.share_queue == 0 {
            return Err((
                "[cluster] sweep_secs or share_queue is 0".into(),
                "use a positive number (30 and 65536 are the defaults)",
            ));
        }
        Ok(())
    }
}

impl StoreSection {
    /// The write-behind interval.
    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }
}

impl AdminSection {
    /// The listen address; None when the admin surface is off.
    pub fn address(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }
}

/// Where the node keeps what must survive a restart, and how it writes it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// The store's directory, relative to the configuration file; empty
    /// keeps everything in memory only.
    pub path: PathBuf,
    /// Changes are written behind at most this long after they happen:
    /// what was acknowledged more than this before a crash is kept.
    pub flush_interval_ms: u64,
    /// `process` survives the process being killed; `disk` (fsync on each
    /// flush) also survives the machine losing power, at a cost per flush.
    pub durability: DurabilitySetting,
    /// After a restart, restored watchers get their first NOTIFY spread
    /// over this many seconds rather than all at once.
    pub renotify_window_secs: u64,
}

/// How far each flush must reach.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DurabilitySetting {
    /// The operating system's buffers.
    Process,
    /// The disk.
    Disk,
}

/// How this node joins the others of a cluster: the Redis Cluster they
/// share, and who this node is among them. Without it the node is alone and
/// keeps everything in its own store.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Seed addresses of the Redis Cluster (`redis://host:port`, or
    /// `rediss://host:port` for TLS); the client finds the other masters
    /// and replicas from any one of them.
    pub redis: Vec<RedisSeed>,
    /// This node's number, unique in the cluster: it owns what it holds
    /// under this number.
    pub node_id: u16,
    /// Where the other nodes reach this one: one of its TCP listeners,
    /// to which they forward refreshes of the subscriptions it holds;
    /// shown to the admin with the members.
    pub internal: SocketAddr,
    /// Prefix of every key and channel, so several Porchlight clusters
    /// can share one Redis Cluster.
    #[serde(default = "default_cluster_name")]
    pub name: String,
    /// ACL user for Redis AUTH; empty for the default user.
    #[serde(default)]
    pub username: String,
    /// File holding the Redis password (relative to the configuration
    /// file), so the secret is not in the configuration; empty for none.
    #[serde(default)]
    pub password_file: PathBuf,
    /// PEM file of the CA that signed the Redis servers' certificates, for
    /// `rediss://` seeds with a private CA; empty trusts the system's roots.
    #[serde(default)]
    pub ca_file: PathBuf,
    /// How long this node's membership lasts without a renewal. It must
    /// outlast a Redis failover (at least twice `cluster-node-timeout`
    /// plus 2 s; plus 6 s where Redis shares busy machines), or a failover
    /// fences the node (no NOTIFY, new subscriptions 503) and could look
    /// like its death.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// How often every endpoint's shared sources are compared with Redis,
    /// to heal a change whose event was lost (pub/sub is at most once).
    #[serde(default = "default_sweep_secs")]
    pub sweep_secs: u64,
    /// Changes to share that may wait for Redis before the oldest are
    /// dropped (and healed by the next sweep); the SIP path never waits.
    #[serde(default = "default_share_queue")]
    pub share_queue: usize,
}

/// A Redis Cluster seed address, checked where it is written so a typo
/// names its line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisSeed(pub String);

impl<'de> Deserialize<'de> for RedisSeed {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RedisSeed, D::Error> {
        let text = String::deserialize(d)?;
        let rest = text
            .strip_prefix("redis://")
            .or_else(|| text.strip_prefix("rediss://"))
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "invalid value: {text:?} is not a Redis address; write \"redis://HOST:PORT\" \
                     (or \"rediss://HOST:PORT\" for TLS)"
                ))
            })?;
        let authority = rest.split('/').next().unwrap_or_default();
        let hostport = authority.rsplit('@').next().unwrap_or_default();
        if authority.contains('@') {
            return Err(serde::de::Error::custom(format!(
                "invalid value: {text:?} carries a password; put it in [cluster] password_file"
            )));
        }
        let port = hostport.rsplit(':').next().unwrap_or_default();
        if hostport.is_empty() || !hostport.contains(':') || port.parse::<u16>().is_err() {
            return Err(serde::de::Error::custom(format!(
                "invalid value: {text:?} names no host and port; write \"redis://HOST:PORT\""
            )));
        }
        Ok(RedisSeed(text))
    }
}

fn default_cluster_name() -> String {
    "pl".into()
}

fn default_lease_ms() -> u64 {
    8000
}

fn default_sweep_secs() -> u64 {
    30
}

fn default_share_queue() -> usize {
    65536
}

/// A copy of every SIP message for a HEP capture server (Homer, sngrep),
/// where SIP operators look first when a partner says a message never came.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureSection {
    /// The capture server, `host:port` (HEP v3 over UDP).
    pub hep: HepCollector,
    /// The capture agent number shown with each message; None: the
    /// cluster's `node_id`, else 1, so the nodes of a cluster differ.
    #[serde(default)]
    pub agent_id: Option<u32>,
    /// Copies that may wait to be sent before new ones are dropped (and
    /// counted): capture never holds SIP up.
    #[serde(default = "default_capture_queue")]
    pub queue: usize,
}

fn default_capture_queue() -> usize {
    8192
}

impl Config {
    /// The capture agent number: the one set, else the cluster node's.
    pub fn capture_agent_id(&self) -> Option<u32> {
        let capture = self.capture.as_ref()?;
        let node = self.cluster.as_ref().map(|c| u32::from(c.node_id));
        Some(capture.agent_id.or(node).unwrap_or(1))
    }
}

/// A capture server's `host:port`, checked where it is written so a typo
/// names its line; the name is looked up when the node starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HepCollector(pub String);

impl<'de> Deserialize<'de> for HepCollector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<HepCollector, D::Error> {
        let text = String::deserialize(d)?;
        let (host, port) = text.rsplit_once(':').unwrap_or((text.as_str(), ""));
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(serde::de::Error::custom(format!(
                "invalid value: {text:?} is not a capture server; write \"HOST:PORT\", \
                 e.g. \"10.0.0.9:9060\" (HEP over UDP)"
            )));
        }
        Ok(HepCollector(text))
    }
}

/// Name servers for finding partners' edges and named next hops.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    /// Name servers (`"IP:port"`); empty uses the system's resolv.conf.
    pub nameservers: Vec<SocketAddr>,
}

/// Certificate files for TLS.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain, leaf first.
    pub certificate: PathBuf,
    /// PEM private key.
    pub private_key: PathBuf,
    /// PEM CAs whose client certificates are trusted.
    pub trusted_cas: PathBuf,
    /// `required` (mutual TLS) or `optional`.
    #[serde(default = "default_client_auth")]
    pub client_auth: ClientAuthSetting,
}

/// Whether TLS peers must present certificates.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthSetting {
    /// Mutual TLS.
    Required,
    /// Verified when offered.
    Optional,
}

fn default_client_auth() -> ClientAuthSetting {
    ClientAuthSetting::Required
}

/// Presence subscriptions and publications.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceSection {
    /// Shortest subscription accepted (423 below).
    pub min_expires: u32,
    /// Longest subscription granted.
    pub max_expires: u32,
    /// Subscription length when the SUBSCRIBE names none.
    pub default_expires: u32,
    /// Least time between two notifications to one watcher (RFC 3856 §6.4).
    pub min_notify_interval_ms: u64,
    /// NOTIFYs per second across the node during fan-out.
    pub notify_rate: u32,
    /// NOTIFY transactions outstanding across the node.
    pub max_notify_in_flight: u32,
    /// NOTIFY transactions outstanding toward one connection or address.
    pub max_notify_in_flight_per_flow: u32,
    /// Subscriptions one watcher URI may hold.
    pub max_subscriptions_per_watcher: u32,
    /// Retries of a NOTIFY after a transient failure.
    pub notify_retries: u8,
    /// First retry delay; doubles each time.
    pub notify_retry_base_ms: u64,
    /// Watchers listed in one watcher-information document.
    pub max_winfo_watchers: usize,
    /// Largest XML body accepted (PIDF, category publications, batched subscriptions).
    pub max_xml_bytes: usize,
    /// Most a SUBSCRIBE may bring into its dialog (route set, Contact,
    /// URIs, tags, Call-ID); beyond it the SUBSCRIBE gets 400, so every
    /// NOTIFY of a held subscription fits the message limit.
    pub max_dialog_bytes: usize,
    /// Longest note, from PUBLISH, SERVICE, the API or the configuration.
    pub max_note_bytes: usize,
    /// Shortest publication accepted.
    pub publish_min_expires: u32,
    /// Longest publication granted.
    pub publish_max_expires: u32,
    /// Publication length when the PUBLISH names none.
    pub publish_default_expires: u32,
}

/// Registration of endpoints.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrarSection {
    /// Shortest registration accepted.
    pub min_expires: u32,
    /// Longest registration granted.
    pub max_expires: u32,
    /// Registration length when the REGISTER names none.
    pub default_expires: u32,
    /// Contacts one endpoint may register.
    pub max_bindings: usize,
    /// Seconds between keepalive OPTIONS to registered contacts; 0 disables them.
    pub keepalive_secs: u64,
    /// Unanswered keepalives before a binding is dropped.
    pub keepalive_misses: u8,
    /// How long a digest nonce stays valid.
    pub nonce_lifetime_secs: u64,
    /// Digest algorithms offered, in order: `SHA-256`, `MD5`.
    pub digest_algorithms: Vec<String>,
    /// Wrong passwords from one address within the window before it is
    /// refused (503 with Retry-After) for a lockout.
    pub max_wrong_passwords_per_source: u32,
    /// Wrong passwords for one endpoint from anyone within the window
    /// before strangers are refused for it (addresses that proved the
    /// password keep working).
    pub max_wrong_passwords_per_endpoint: u32,
    /// The window wrong passwords are counted in.
    pub wrong_password_window_secs: u64,
    /// The first lockout; each further one doubles, up to `max_lockout_secs`.
    pub lockout_secs: u64,
    /// The longest lockout.
    pub max_lockout_secs: u64,
}

impl RegistrarSection {
    /// The password-guessing bounds.
    pub fn guess_limits(&self) -> porchlight_endpoints::GuessLimits {
        porchlight_endpoints::GuessLimits {
            per_source: self.max_wrong_passwords_per_source,
            per_endpoint: self.max_wrong_passwords_per_endpoint,
            window: Duration::from_secs(self.wrong_password_window_secs),
            backoff: Duration::from_secs(self.lockout_secs),
            max_backoff: Duration::from_secs(self.max_lockout_secs.max(self.lockout_secs)),
        }
    }

    /// The configured algorithms (validated with the configuration).
    pub fn algorithms(&self) -> Vec<porchlight_endpoints::digest::Algorithm> {
        self.digest_algorithms
            .iter()
            .filter_map(|a| porchlight_endpoints::digest::Algorithm::from_name(a))
            .collect()
    }
}

/// The whole configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Node identity.
    pub node: NodeSection,
    /// Listeners.
    pub listen: ListenSection,
    /// Bounds.
    pub limits: LimitsSection,
    /// Timers.
    pub timers: TimersSection,
    /// TLS files; absent means a generated throw-away certificate.
    pub tls: Option<TlsSection>,
    /// Presence.
    pub presence: PresenceSection,
    /// Registrar.
    pub registrar: RegistrarSection,
    /// Federation and external-access policy.
    #[serde(default)]
    pub policy: porchlight_policy::PolicyConfig,
    /// Edge mode.
    pub edge: EdgeSection,
    /// DNS.
    pub dns: DnsSection,
    /// Admin surface.
    pub admin: AdminSection,
    /// Persistence.
    pub store: StoreSection,
    /// Copies of every message for a capture server; absent means none.
    #[serde(default)]
    pub capture: Option<CaptureSection>,
    /// Several nodes sharing one Redis Cluster; absent means one node alone.
    #[serde(default)]
    pub cluster: Option<ClusterSection>,
    /// Application endpoints.
    #[serde(default, rename = "endpoint")]
    pub endpoints: Vec<porchlight_endpoints::EndpointConfig>,
    /// Where relative paths in this file are resolved from.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// Whether this is the embedded defaults, which are for trying the
    /// node: what a file would have to fix (no `[tls]`) is only noted.
    #[serde(skip)]
    pub embedded: bool,
}

/// The federation policy and the endpoints as one declarative document:
/// what `config export` writes, `config import` reads, the provisioning
/// commands change and the store keeps.
#[derive(Clone, Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Provisioned {
    /// Federation and external-access policy.
    #[serde(default)]
    pub policy: porchlight_policy::PolicyConfig,
    /// Application endpoints.
    #[serde(default, rename = "endpoint")]
    pub endpoints: Vec<porchlight_endpoints::EndpointConfig>,
}

impl Provisioned {
    /// The document as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("policy and endpoints are plain data")
    }
}

/// Parses TOML, turning a syntax or type error into one that names the
/// line and the fix.
fn from_toml<T: serde::de::DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
        let message = e.message().to_owned();
        ConfigError::Syntax {
            origin: origin.to_owned(),
            line,
            fix: fix_for(&message),
            message,
        }
    })
}

/// The sections of a configuration file that a provisioned document does
/// not carry: they are read at start, from the file.
const FILE_ONLY_SECTIONS: [&str; 12] = [
    "node",
    "listen",
    "limits",
    "timers",
    "tls",
    "presence",
    "registrar",
    "edge",
    "dns",
    "admin",
    "store",
    "cluster",
];

/// A whole configuration file given where a provisioned document belongs
/// (`config import`): named as such, with what to do, rather than as an
/// unknown key.
fn refuse_file_sections(text: &str, origin: &str) -> Result<(), ConfigError> {
    let Ok(table) = toml::from_str::<toml::Table>(text) else {
        return Ok(()); // the parse that follows names the syntax error
    };
    let Some(section) = FILE_ONLY_SECTIONS.iter().find(|s| table.contains_key(**s)) else {
        return Ok(());
    };
    let line = text
        .lines()
        .position(|l| {
            let l = l.trim_start();
            l.starts_with(&format!("[{section}]"))
                || l.starts_with(&format!("[{section}."))
                || l.starts_with(&format!("{section} ="))
                || l.starts_with(&format!("{section}."))
        })
        .map_or(1, |n| n + 1);
    Err(ConfigError::Syntax {
        origin: origin.to_owned(),
        line,
        message: format!(
            "[{section}] belongs to the configuration file, which the node reads at start;              an import carries only [policy] and [[endpoint]]"
        ),
        fix: "import what `porchlight config export` writes (or just the file's [policy] and [[endpoint]] sections); change the other sections in the file and restart the node".into(),
    })
}

/// Parses a configuration file over the embedded defaults: every section
/// and key the file leaves out has its documented default (the one
/// `porchlight config defaults` prints), so a file of ten lines is a whole
/// configuration. Endpoints come from the file alone. Errors name the
/// file's line.
fn over_defaults(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let file: toml::Table = from_toml(text, origin)?;
    let mut merged: toml::Table =
        toml::from_str(DEFAULT_CONFIG).expect("the embedded defaults are valid TOML");
    merged.remove("endpoint");
    merge(&mut merged, file);
    toml::Value::Table(merged)
        .try_into()
        .map_err(|e: toml::de::Error| {
            let message = e.message().to_owned();
            ConfigError::Syntax {
                origin: origin.to_owned(),
                line: line_of_error(text, &e.to_string(), &message),
                fix: fix_for(&message),
                message,
            }
        })
}

/// Lays `over` onto `base`: tables merge key by key, anything else
/// (values, arrays, arrays of tables) replaces what `base` has.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(value)) => merge(inner, value),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// The line of the file a deserialisation error is about. The error
/// names the key's path (`in \`limits.max_headers\``) but, after the
/// merge, no position: find the key under its section, preferring the line
/// that holds the value the message quotes.
fn line_of_error(text: &str, shown: &str, message: &str) -> usize {
    let path = shown
        .rsplit_once("\nin `")
        .map(|(_, p)| p.trim_end().trim_end_matches('`'))
        .unwrap_or_default();
    let mut segments: Vec<&str> = path.split('.').filter(|s| !s.is_empty()).collect();
    // An unknown field is named in the message; the path is its table.
    let key = match message.strip_prefix("unknown field `") {
        Some(rest) => rest.split('`').next().unwrap_or_default(),
        None => segments.pop().unwrap_or_default(),
    };
    let section = segments.join(".");
    let quoted: Vec<&str> = message
        .split(['`', '"'])
        .skip(1)
        .step_by(2)
        .filter(|q| !q.is_empty() && *q != key)
        .collect();
    let mut in_section = section.is_empty();
    let mut first = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        if let Some(header) = trimmed.strip_prefix('[') {
            let name = header
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or_default();
            in_section = name.trim() == section;
            continue;
        }
        let names_key = trimmed
            .split_once('=')
            .is_some_and(|(k, _)| k.trim().trim_matches('"') == key);
        if in_section && names_key {
            if quoted.iter().any(|q| line.contains(q)) {
                return n + 1;
            }
            first.get_or_insert(n + 1);
        }
    }
    first.unwrap_or_else(|| {
        // A section header of its own, else the start.
        text.lines()
            .position(|l| {
                l.trim_start().trim_start_matches('[').starts_with(&section) && !section.is_empty()
            })
            .map_or(1, |n| n + 1)
    })
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

fn fix_for(message: &str) -> String {
    if message.contains("unknown field") {
        "remove the key or correct its spelling; `porchlight config defaults` lists every key"
            .into()
    } else if message.contains("missing field") {
        "add the key; `porchlight config defaults` shows it with its default value".into()
    } else if message.contains("invalid socket address") {
        "write addresses as \"IP:PORT\", e.g. \"0.0.0.0:5060\" or \"[::]:5061\"".into()
    } else if message.contains("unknown variant") {
        "use one of the values the message lists".into()
    } else if ["invalid type", "invalid value", "invalid length"]
        .iter()
        .any(|t| message.starts_with(t))
    {
        "correct the value to the type shown in `porchlight config defaults`".into()
    } else {
        "correct the TOML at that line: strings in \"quotes\", lists in [brackets], one key = value per line, each [section] once".into()
    }
}

impl Config {
    /// The embedded defaults.
    pub fn embedded() -> Config {
        let mut config = Config::parse(DEFAULT_CONFIG, "<embedded defaults>", Path::new("."))
            .expect("embedded defaults are valid");
        config.embedded = true;
        config
    }

    /// A seed of this node's own from a salt its cluster shares, so tags,
    /// Call-IDs and entity tags stay apart between the nodes; the salt
    /// itself for a node alone.
    pub fn own_seed(&self, salt: u64) -> u64 {
        salt ^ self.cluster.as_ref().map_or(0, |c| u64::from(c.node_id))
    }

    /// Validates the text of the configuration file at `path` (which the
    /// caller read: this crate touches no file), resolving relative paths
    /// from its directory.
    pub fn from_file_text(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let base = path.parent().unwrap_or(Path::new(".")).to_owned();
        Config::parse(text, &path.display().to_string(), &base)
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str, origin: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let mut config = over_defaults(text, origin)?;
        config.base_dir = base_dir.to_owned();
        config.checked(text, origin)
    }

    /// The federation policy and endpoints: what the provisioning commands
    /// change and `config export` writes.
    pub fn provisioned(&self) -> Provisioned {
        Provisioned {
            policy: self.policy.clone(),
            endpoints: self.endpoints.clone(),
        }
    }

    /// This configuration with its policy and endpoints taken from a
    /// provisioned document (`config import`), checked like a file.
    pub fn with_provisioned(&self, text: &str, origin: &str) -> Result<Config, ConfigError> {
        refuse_file_sections(text, origin)?;
        let provisioned: Provisioned = from_toml(text, origin)?;
        let mut config = self.clone();
        config.policy = provisioned.policy;
        config.endpoints = provisioned.endpoints;
        config.checked(text, origin)
    }

    /// Every check beyond the syntax; `text` locates the offending line.
    fn checked(self, text: &str, origin: &str) -> Result<Config, ConfigError> {
        let config = self;
        config.validate(origin)?;
        config.directory().map_err(|problem| {
            let uri = match &problem {
                porchlight_endpoints::EndpointError::Uri(u)
                | porchlight_endpoints::EndpointError::Duplicate(u)
                | porchlight_endpoints::EndpointError::Credentials(u)
                | porchlight_endpoints::EndpointError::DigestAlgorithms(u)
                | porchlight_endpoints::EndpointError::HealthUrl(u)
                | porchlight_endpoints::EndpointError::SipTarget(u)
                | porchlight_endpoints::EndpointError::Webhook(u)
                | porchlight_endpoints::EndpointError::Schedule { uri: u, .. }
                | porchlight_endpoints::EndpointError::OutsideDomains { uri: u, .. } => {
                    Some(u.as_str())
                }
                // A value, not an endpoint: the line that holds it.
                porchlight_endpoints::EndpointError::Capability(v)
                | porchlight_endpoints::EndpointError::Availability(v) => Some(v.as_str()),
            };
            // The line of the offending endpoint's uri (the last one for a
            // duplicate), or of the offending value.
            let line = uri
                .and_then(|u| text.rfind(&format!("\"{u}\"")))
                .map_or(1, |offset| line_of(text, offset));
            ConfigError::Endpoint {
                origin: origin.to_owned(),
                line,
                problem,
            }
        })?;
        let grants = config
            .endpoints
            .iter()
            .filter_map(|e| e.policy.as_deref().map(|p| (e.uri.as_str(), p)));
        config
            .policy
            .validate(grants)
            .map_err(|problem| ConfigError::Policy {
                origin: origin.to_owned(),
                problem,
            })?;
        config.no_own_domain_in_federation(origin)?;
        Ok(config)
    }

    /// Our own domains are served here, never federated with: listing one
    /// as a partner, blocked or provider domain is a mistake to name.
    fn no_own_domain_in_federation(&self, origin: &str) -> Result<(), ConfigError> {
        let policy = &self.policy;
        let listed = policy
            .allowed_domains
            .iter()
            .map(|d| ("allowed_domains", &d.domain))
            .chain(
                policy
                    .blocked_domains
                    .iter()
                    .map(|d| ("blocked_domains", d)),
            )
            .chain(
                policy
                    .providers
                    .iter()
                    .flat_map(|p| p.domains.iter().map(|d| ("provider domains", d))),
            );
        for (list, domain) in listed {
            let domain = domain.trim_end_matches('.');
            if let Some(own) = self
                .node
                .domains
                .iter()
                .find(|own| own.eq_ignore_ascii_case(domain))
            {
                return Err(ConfigError::Invalid {
                    origin: origin.to_owned(),
                    message: format!(
                        "[policy] {list} lists {own}, which this node serves ([node] domains)"
                    ),
                    fix: "remove it: the node's own domains are not federated with",
                });
            }
        }
        Ok(())
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |message: String, fix: &'static str| ConfigError::Invalid {
            origin: origin.to_owned(),
            message,
            fix,
        };
        if let Some(cluster) = &self.cluster {
            cluster
                .validate()
                .map_err(|(message, fix)| invalid(message, fix))?;
            let internal = cluster.internal;
            let listened = self.listen.tcp.iter().any(|l| {
                l.port() == internal.port() && (l.ip().is_unspecified() || l.ip() == internal.ip())
            });
            if !listened {
                return Err(invalid(
                    format!(
                        "[cluster] internal = \"{internal}\" is not one of this node's [listen] tcp \
                         addresses: the other nodes forward refreshes there"
                    ),
                    "use the address the other nodes reach one of [listen] tcp at (its port, \
                     and its IP unless that listener binds 0.0.0.0)",
                ));
            }
        }
        if self.node.domains.is_empty() {
            return Err(invalid(
                "[node] domains is empty".into(),
                "name at least one SIP domain this node serves",
            ));
        }
        if self.listen.udp.is_empty() && self.listen.tcp.is_empty() && self.listen.tls.is_empty() {
            return Err(invalid(
                "[listen] has no address".into(),
                "add at least one udp, tcp or tls address",
            ));
        }
        if self.limits.max_message_bytes < 1024
            || self.limits.max_line_bytes < 256
            || self.limits.max_headers < 16
        {
            return Err(invalid(
                "[limits] are too small for real SIP traffic".into(),
                "use max_message_bytes >= 1024, max_line_bytes >= 256, max_headers >= 16",
            ));
        }
        let l = &self.limits;
        if l.max_connections == 0
            || l.max_connections_per_source == 0
            || l.receive_queue_depth == 0
            || l.connection_queue_depth == 0
            || l.connection_backlog == 0
            || l.tls_handshake_timeout_secs == 0
            || l.message_timeout_secs == 0
            || l.refusal_log_interval_secs == 0
            || l.overload_backlog == 0
            || l.overload_server_transactions == 0
            || l.overload_retry_after_secs == 0
        {
            return Err(invalid(
                "[limits] a connection, queue or time bound is 0".into(),
                "use a positive number",
            ));
        }
        if l.source_request_rate > 0 && (l.source_request_burst == 0 || l.max_rate_sources == 0) {
            return Err(invalid(
                format!(
                    "[limits] source_request_rate = {} with source_request_burst = {} and \
                     max_rate_sources = {}: no source could send anything",
                    l.source_request_rate, l.source_request_burst, l.max_rate_sources
                ),
                "use source_request_burst = 400 and max_rate_sources = 100000, \
                 or source_request_rate = 0 for no limit",
            ));
        }
        if l.reserved_connections >= l.max_connections {
            return Err(invalid(
                format!(
                    "[limits] reserved_connections = {} leaves no slot of max_connections = {} \
                     for anyone else",
                    l.reserved_connections, l.max_connections
                ),
                "keep reserved_connections below max_connections (a fifth of it is usual)",
            ));
        }
        if self.presence.max_dialog_bytes * 2 > self.limits.max_message_bytes {
            return Err(invalid(
                format!(
                    "[presence] max_dialog_bytes = {} leaves too little room for a NOTIFY's body \
                     within [limits] max_message_bytes = {}",
                    self.presence.max_dialog_bytes, self.limits.max_message_bytes
                ),
                "keep max_dialog_bytes at most half of max_message_bytes (8192 is usual)",
            ));
        }
        let note_limit = self.presence.max_note_bytes;
        for e in &self.endpoints {
            let long = [
                ("note", e.note.as_deref()),
                ("display_name", Some(&*e.display_name)),
            ]
            .into_iter()
            .find_map(|(field, text)| {
                porchlight_presence::check_length(field, text, note_limit).err()
            });
            if let Some(too_long) = long {
                return Err(invalid(
                    format!("endpoint {}: {too_long}", e.uri),
                    "shorten it, or raise [presence] max_note_bytes",
                ));
            }
        }
        let r = &self.registrar;
        if r.max_wrong_passwords_per_source == 0
            || r.max_wrong_passwords_per_endpoint == 0
            || r.wrong_password_window_secs == 0
            || r.lockout_secs == 0
        {
            return Err(invalid(
                "[registrar] a wrong-password bound is 0 (every first mistake would lock out)"
                    .into(),
                "use a positive number: 10 per source, 30 per endpoint, 60 s window and lockout",
            ));
        }
        let p = &self.presence;
        if p.min_expires > p.default_expires
            || p.default_expires > p.max_expires
            || p.max_expires == 0
        {
            return Err(invalid(
                format!(
                    "[presence] min_expires = {}, default_expires = {}, max_expires = {}",
                    p.min_expires, p.default_expires, p.max_expires
                ),
                "keep min_expires <= default_expires <= max_expires, max_expires positive",
            ));
        }
        if p.publish_min_expires > p.publish_default_expires
            || p.publish_default_expires > p.publish_max_expires
        {
            return Err(invalid(
                "[presence] publish_min_expires, publish_default_expires, publish_max_expires are out of order".into(),
                "keep publish_min_expires <= publish_default_expires <= publish_max_expires",
            ));
        }
        if p.notify_rate == 0
            || p.max_notify_in_flight == 0
            || p.max_notify_in_flight_per_flow == 0
            || p.max_subscriptions_per_watcher == 0
        {
            return Err(invalid(
                "[presence] a NOTIFY rate or bound is 0".into(),
                "use positive numbers for notify_rate, max_notify_in_flight, max_notify_in_flight_per_flow and max_subscriptions_per_watcher",
            ));
        }
        let r = &self.registrar;
        if r.min_expires > r.default_expires
            || r.default_expires > r.max_expires
            || r.max_bindings == 0
        {
            return Err(invalid(
                format!(
                    "[registrar] min_expires = {}, default_expires = {}, max_expires = {}, max_bindings = {}",
                    r.min_expires, r.default_expires, r.max_expires, r.max_bindings
                ),
                "keep min_expires <= default_expires <= max_expires and max_bindings positive",
            ));
        }
        if r.digest_algorithms.is_empty() || r.algorithms().len() != r.digest_algorithms.len() {
            return Err(invalid(
                format!("[registrar] digest_algorithms = {:?}", r.digest_algorithms),
                "list one or both of \"SHA-256\" and \"MD5\", preferred first",
            ));
        }
        if !self.edge.internal_next_hop.is_empty()
            && crate::edge::address_of(&self.edge.internal_next_hop).is_none()
        {
            return Err(invalid(
                format!(
                    "[edge] internal_next_hop = {:?} is not a SIP URI with an IP address",
                    self.edge.internal_next_hop
                ),
                "write it like \"sip:10.0.0.5:5060;transport=tcp\", or leave it empty",
            ));
        }
        let rr_host = &self.edge.record_route_host;
        if !rr_host.is_empty() && porchlight_sip::Uri::parse(&format!("sip:{rr_host}")).is_err() {
            return Err(invalid(
                format!("[edge] record_route_host = {rr_host:?} is not a host name"),
                "write a host name like \"edge.contoso.com\", or leave it empty",
            ));
        }
        if !self.admin.listen.is_empty() && self.admin.address().is_none() {
            return Err(invalid(
                format!("[admin] listen = {:?} is not an address", self.admin.listen),
                "write it like \"127.0.0.1:8088\", or \"\" to turn the admin API off",
            ));
        }
        if self.store.flush_interval_ms == 0 || self.store.flush_interval_ms > 60_000 {
            return Err(invalid(
                format!(
                    "[store] flush_interval_ms = {}",
                    self.store.flush_interval_ms
                ),
                "use 1 to 60000 milliseconds (default 100); set path = \"\" to keep state in memory only",
            ));
        }
        if self.timers.timer_c_secs <= 180 {
            return Err(invalid(
                format!("[timers] timer_c_secs = {}", self.timers.timer_c_secs),
                "use more than 180 seconds (RFC 3261 §16.6); the default is 181",
            ));
        }
        if self.limits.max_im_sessions == 0 {
            return Err(invalid(
                "[limits] max_im_sessions = 0".into(),
                "allow at least one IM session with webhook apps (default 10000)",
            ));
        }
        if self.limits.max_parked_per_destination == 0 {
            return Err(invalid(
                "[limits] max_parked_per_destination = 0".into(),
                "allow at least one message to wait while a destination is dialled (default 1024)",
            ));
        }
        let header = &self.edge.trust_header;
        if header.is_empty()
            || !header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(invalid(
                format!("[edge] trust_header = {header:?}"),
                "use a header name of letters, digits and dashes, e.g. \"X-Porchlight-Trust\"",
            ));
        }
        if self.timers.t1_ms == 0 || self.timers.t2_ms < self.timers.t1_ms {
            return Err(invalid(
                format!(
                    "[timers] t1_ms = {}, t2_ms = {}",
                    self.timers.t1_ms, self.timers.t2_ms
                ),
                "t1_ms must be positive and t2_ms at least t1_ms (RFC 3261 defaults: 500 and 4000)",
            ));
        }
        Ok(())
    }

    /// This node's domains and aliases, lower-case: a certificate naming
    /// only these (or hosts under them) is the inside's.
    pub fn own_domains(&self) -> Vec<String> {
        self.node
            .domains
            .iter()
            .chain(&self.node.aliases)
            .map(|d| d.to_ascii_lowercase())
            .collect()
    }

    /// The names and addresses that make a Request-URI this node's: its
    /// domains, aliases and Record-Route host, and the addresses it
    /// listens on.
    pub fn local_names(&self, listening: &[SocketAddr]) -> crate::uas::LocalNames {
        crate::uas::LocalNames {
            hosts: self
                .node
                .domains
                .iter()
                .chain(&self.node.aliases)
                .chain(std::iter::once(&self.edge.record_route_host).filter(|h| !h.is_empty()))
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            addresses: listening.iter().map(SocketAddr::ip).collect(),
            ports: listening.iter().map(SocketAddr::port).collect(),
        }
    }

    /// The validated endpoints.
    pub fn directory(
        &self,
    ) -> Result<porchlight_endpoints::Directory, porchlight_endpoints::EndpointError> {
        porchlight_endpoints::Directory::new(
            self.endpoints.clone(),
            &self.node.domains,
            &self.node.aliases,
        )
    }

    /// Resolves a path from this file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_owned()
        } else {
            self.base_dir.join(path)
        }
    }

    /// Idle timeout as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.limits.idle_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capture_server_without_a_port_names_its_line_and_the_form() {
        let text =
            "[node]\ndomains = [\"apps.example.com\"]\n\n[capture]\nhep = \"homer.example.com\"\n";
        let err = Config::parse(text, "edge.toml", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("edge.toml:5:"), "{err}");
        assert!(err.contains("write \"HOST:PORT\""), "{err}");
        for good in [
            "homer.example.com:9060",
            "[2001:db8::9]:9060",
            "10.0.0.9:9060",
        ] {
            let text = format!("[node]\ndomains = [\"a.example\"]\n[capture]\nhep = \"{good}\"\n");
            let config = Config::parse(&text, "edge.toml", Path::new(".")).unwrap();
            assert_eq!(config.capture.unwrap().hep.0, good);
        }
    }

    #[test]
    fn a_history_interval_of_zero_or_past_ten_minutes_names_its_line_and_the_fix() {
        for bad in ["0", "601"] {
            let text = format!(
                "[node]\ndomains = [\"a.example\"]\n[admin]\nhistory_interval_secs = {bad}\n"
            );
            let err = Config::parse(&text, "edge.toml", Path::new("."))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("edge.toml:4:"), "{err}");
            assert!(err.contains("use 10"), "{err}");
        }
        let text = "[node]\ndomains = [\"a.example\"]\n[admin]\nhistory_interval_secs = 1\n";
        let config = Config::parse(text, "edge.toml", Path::new(".")).unwrap();
        assert_eq!(config.admin.history_interval_secs, 1);
    }

    #[test]
    fn the_capture_agent_is_the_cluster_node_unless_set() {
        let base = "[node]\ndomains = [\"a.example\"]\n[listen]\ntcp = [\"10.0.0.11:5060\"]\n[capture]\nhep = \"10.0.0.9:9060\"\n";
        let alone = Config::parse(base, "a.toml", Path::new(".")).unwrap();
        assert_eq!(alone.capture_agent_id(), Some(1));
        let clustered = format!(
            "{base}[cluster]\nredis = [\"redis://10.0.0.5:6379\"]\nnode_id = 4\ninternal = \"10.0.0.11:5060\"\n"
        );
        let member = Config::parse(&clustered, "a.toml", Path::new(".")).unwrap();
        assert_eq!(member.capture_agent_id(), Some(4));
        let set = base.replace("9060\"\n", "9060\"\nagent_id = 9\n");
        let set = Config::parse(&set, "a.toml", Path::new(".")).unwrap();
        assert_eq!(set.capture_agent_id(), Some(9));
        assert_eq!(Config::embedded().capture_agent_id(), None);
    }

    #[test]
    fn a_configuration_file_is_no_import_and_says_what_to_import() {
        let err = Config::embedded()
            .with_provisioned(DEFAULT_CONFIG, "porchlight.toml")
            .unwrap_err()
            .to_string();
        let line = DEFAULT_CONFIG
            .lines()
            .position(|l| l.starts_with("[node]"))
            .unwrap()
            + 1;
        assert!(
            err.starts_with(&format!(
                "porchlight.toml:{line}: [node] belongs to the configuration file"
            )),
            "{err}"
        );
        assert!(
            err.contains("fix: import what `porchlight config export` writes"),
            "{err}"
        );
    }

    #[test]
    fn a_small_file_is_a_whole_configuration_with_the_documented_defaults() {
        let small = "[node]\ndomains = [\"apps.example.com\"]\n\n[limits]\nmax_headers = 64\n\n\
                     [policy.edge]\nenable_partner_discovery = true\n\n[[endpoint]]\n\
                     uri = \"sip:bot@apps.example.com\"\ndisplay_name = \"Bot\"\n";
        let config = Config::parse(small, "small.toml", Path::new(".")).unwrap();
        let defaults = Config::embedded();
        assert_eq!(config.node.domains, ["apps.example.com"]);
        assert_eq!(config.limits.max_headers, 64);
        assert_eq!(
            config.limits.max_message_bytes,
            defaults.limits.max_message_bytes
        );
        assert_eq!(config.presence.max_expires, defaults.presence.max_expires);
        assert!(config.policy.edge.enable_partner_discovery);
        assert_eq!(
            config.policy.edge.trusted_networks, defaults.policy.edge.trusted_networks,
            "a table's other keys keep their defaults"
        );
        assert_eq!(config.listen.udp, defaults.listen.udp);
        assert_eq!(
            config.endpoints.len(),
            1,
            "endpoints come from the file alone"
        );
        let empty = Config::parse("", "empty.toml", Path::new(".")).unwrap();
        assert!(empty.endpoints.is_empty());
        assert_eq!(empty.node.domains, defaults.node.domains);
    }

    #[test]
    fn errors_in_a_small_file_name_its_line() {
        let err = |text: &str| {
            Config::parse(text, "small.toml", Path::new("."))
                .unwrap_err()
                .to_string()
        };
        let e = err("[node]\ndomains = [\"a.example\"]\n\n[limits]\nmax_headers = \"many\"\n");
        assert!(e.starts_with("small.toml:5: invalid type"), "{e}");
        assert!(e.contains("fix: correct the value to the type"), "{e}");
        let e = err("[limits]\nmax_headers = 64\nmax_hedaers = 3\n");
        assert!(
            e.starts_with("small.toml:3: unknown field `max_hedaers`"),
            "{e}"
        );
        let e = err("[policy.edge]\n\nallow_federated_users = \"yes\"\n");
        assert!(e.starts_with("small.toml:3: invalid type"), "{e}");
        let e = err("[limits\nmax_headers = 64\n");
        assert!(e.starts_with("small.toml:1:"), "{e}");
        assert!(e.contains("fix: correct the TOML at that line"), "{e}");
    }

    #[test]
    fn embedded_defaults_are_valid() {
        let c = Config::embedded();
        assert_eq!(c.node.domains, ["porchlight.test"]);
        assert_eq!(c.listen.tls.len(), 1);
    }

    #[test]
    fn errors_name_the_line_and_a_fix() {
        let text =
            DEFAULT_CONFIG.replace("max_headers = 128", "max_headers = 128\nmax_hedaers = 3");
        let err = Config::parse(&text, "edge.toml", Path::new("."))
            .unwrap_err()
            .to_string();
        let line = DEFAULT_CONFIG
            .lines()
            .position(|l| l.starts_with("max_headers"))
            .unwrap()
            + 2;
        assert!(
            err.starts_with(&format!("edge.toml:{line}: unknown field `max_hedaers`")),
            "{err}"
        );
        assert!(err.contains("fix: remove the key"), "{err}");
        let text = DEFAULT_CONFIG.replace("\"0.0.0.0:5061\"", "\"0.0.0.0\"");
        let err = Config::parse(&text, "edge.toml", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(err.contains("IP:PORT"), "{err}");
        let text = DEFAULT_CONFIG.replace("t2_ms = 4000", "t2_ms = 10");
        let err = Config::parse(&text, "edge.toml", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(err.contains("t2_ms at least t1_ms"), "{err}");
        let text = DEFAULT_CONFIG.replace("source_request_burst = 400", "source_request_burst = 0");
        let err = Config::parse(&text, "edge.toml", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no source could send anything"), "{err}");
        assert!(
            err.contains("source_request_rate = 0 for no limit"),
            "{err}"
        );
    }

    #[test]
    fn the_provisioned_document_round_trips_and_is_checked_like_a_file() {
        let config = Config::embedded();
        let exported = config.provisioned().to_toml();
        let imported = config
            .with_provisioned(&exported, "export.toml")
            .expect("an export imports");
        assert_eq!(imported.provisioned().to_toml(), exported, "idempotent");

        let changed = exported.replace(
            "blocked_domains = []",
            "blocked_domains = [\"spam.example\"]",
        );
        let imported = config.with_provisioned(&changed, "changed.toml").unwrap();
        assert_eq!(imported.policy.blocked_domains, ["spam.example"]);
        assert_eq!(config.policy.blocked_domains, Vec::<String>::new());

        let typo = exported.replace("blocked_domains", "blocked_domain");
        let err = config
            .with_provisioned(&typo, "typo.toml")
            .unwrap_err()
            .to_string();
        let line = exported
            .lines()
            .position(|l| l.starts_with("blocked_domains"))
            .unwrap()
            + 1;
        assert!(
            err.starts_with(&format!("typo.toml:{line}: unknown field `blocked_domain`")),
            "{err}"
        );
        let twice = format!(
            "{exported}\n[[endpoint]]\nuri = \"sip:helpdesk@porchlight.test\"\ndisplay_name = \"Again\"\n"
        );
        let err = config
            .with_provisioned(&twice, "twice.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("twice.toml:"), "{err}");
    }
}
