//! The driver's side of a cluster: the Redis Cluster connection, this
//! node's lease and membership, the secrets every node shares, and the
//! endpoints' shared sources carried both ways.
//!
//! One task owns the connection. The event loop hands it the core's
//! shares through a bounded queue and never waits for it; what it reads
//! comes back as inputs. Redis supplies the consensus: each endpoint's
//! shared record (`{p:H}:src`) and its change channel (`{p:H}:ev`) carry
//! one hash tag, so one script writes the record and publishes the change
//! in the same step, on one master. Pub/sub loses what is sent while a
//! connection is down, so every endpoint is read whole after a
//! disconnection and compared by revision on a sweep.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use porchlight_node::cluster::{ClusterView, Field, Lease, Member, NodeId, Share, Shared, Value};
use porchlight_node::config::ClusterSection;
use porchlight_node::Config;
use porchlight_store::NodeSecrets;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Script};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};

/// The layout of what the nodes keep in Redis; a cluster written with
/// another refuses nodes of this build rather than be misread.
const SCHEMA: &str = "1";

/// Longest wait for the Redis Cluster at start.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Shares written at once, concurrently, before the task looks at
/// anything else.
const SHARE_BATCH: usize = 256;

/// Pushes (change events) waiting for the task before the oldest are
/// dropped and every endpoint is read again.
const PUSH_QUEUE: usize = 65536;

/// Why a node cannot join its cluster; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Redis could not be reached or refused us.
    #[error("cannot reach the Redis Cluster at {seeds}: {reason}. Check [cluster] redis, that the servers run with cluster-enabled yes, and the password ([cluster] password_file)")]
    Unreachable {
        /// The seeds configured.
        seeds: String,
        /// What the client said.
        reason: String,
    },
    /// A file named in `[cluster]` could not be read.
    #[error("[cluster] {key}: cannot read {path}: {source}")]
    File {
        /// Which key.
        key: &'static str,
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The cluster was written by a build with another layout.
    #[error("the Redis Cluster holds Porchlight schema {found} under [cluster] name = {name:?}, and this build writes schema {SCHEMA}. Run the version the other nodes run, or use another [cluster] name")]
    Schema {
        /// The key prefix.
        name: String,
        /// The schema found.
        found: String,
    },
    /// The store holds dialogs made with other secrets than the cluster's.
    #[error("this node's store holds subscriptions whose tags are keyed by its own secrets, and the cluster already has others: joining would break them. Hand them to the running nodes with `porchlight cluster init --from-store DIR` (the node stopped), let them end, or join this node first")]
    SecretsDiffer,
    /// Another running node holds this node's number.
    #[error("[cluster] node_id = {0} is held by a running node: its lease is renewed. Give each node its own node_id")]
    DuplicateNode(NodeId),
    /// Redis answered what a Porchlight cluster never writes.
    #[error("the Redis Cluster's {key} holds {found:?}, which is not what a Porchlight node writes; use another [cluster] name")]
    Foreign {
        /// The key.
        key: String,
        /// What it holds.
        found: String,
    },
    /// The store could not take the cluster's secrets.
    #[error(transparent)]
    Store(#[from] porchlight_store::StoreError),
}

/// The names of everything a cluster keeps, under its prefix.
#[derive(Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn cluster(&self, what: &str) -> String {
        format!("{}:{{c}}:{what}", self.prefix)
    }

    fn lease(&self, node: NodeId) -> String {
        format!("{}:{{n:{node}}}:lease", self.prefix)
    }

    /// A node's own keys beside its lease: `takeover` (set by the node
    /// that took its subscriptions over), `era`, and `drain` (an admin's
    /// request that it hand its watchers over).
    fn node(&self, node: NodeId, what: &str) -> String {
        format!("{}:{{n:{node}}}:{what}", self.prefix)
    }

    /// One of the buckets an origin's subscriptions are saved in: spread
    /// over slots, so one node's watchers are not all on one master.
    fn dialogs(&self, origin: &str, bucket: u32) -> String {
        format!("{}:{{d:{origin}:{bucket}}}:subs", self.prefix)
    }

    /// The hash tag of an endpoint: short, and free of braces whatever
    /// its URI holds.
    fn tag(uri: &str) -> String {
        let digest = Sha256::digest(uri.as_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("p:{hex}")
    }

    fn sources(&self, uri: &str) -> String {
        format!("{}:{{{}}}:src", self.prefix, Keys::tag(uri))
    }

    fn events(&self, uri: &str) -> String {
        format!("{}:{{{}}}:ev", self.prefix, Keys::tag(uri))
    }
}

/// Writes one entry of an endpoint's shared record and publishes the
/// change in the same step. The revision only grows, even across a clock
/// step back or a failover to a replica that missed the last writes.
/// Numbers are formatted by hand: Lua would print a microsecond count in
/// exponent notation.
static WRITE_ENTRY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rev = tonumber(redis.call('HGET', KEYS[1], 'rev') or '0')
if now > rev then rev = now else rev = rev + 1 end
local r = string.format('%.0f', rev)
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], ARGV[1])
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
redis.call('HSET', KEYS[1], 'rev', r, 'uri', ARGV[3])
redis.call('SPUBLISH', KEYS[2], r .. '\n' .. ARGV[1] .. '\n' .. ARGV[2])
return r
"#,
    )
});

/// Renews this node's lease: 1 renewed, 2 taken again after it lapsed, 3
/// taken again after another node took its subscriptions over (with the
/// new era), 4 renewed with an admin's request to drain, 0 held by
/// another incarnation (another node with our number).
static RENEW_LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return {0, 0} end
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('DEL', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {3, tonumber(redis.call('GET', KEYS[3]) or '0')}
end
if held then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  if redis.call('DEL', KEYS[4]) == 1 then return {4, 0} end
  return {1, 0}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {2, 0}
"#,
    )
});

/// Gives up this node's lease, if it still holds it, so that another
/// node takes its subscriptions over at once: the end of a drain.
static RELEASE_LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
"#,
    )
});

/// Asks a live node to drain: 1 asked, 0 its lease is gone, -1 already
/// asked. The request lapses if the node never acts on it.
static REQUEST_DRAIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[1]) == false then return -1 end
return 1
"#,
    )
});

/// Claims a node whose lease is gone: the first survivor to run it wins,
/// retires the node's era, and takes its subscriptions over. The node's
/// own renewal runs on the same slot, so the two cannot cross.
static CLAIM_NODE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
if redis.call('SET', KEYS[2], ARGV[1], 'NX') == false then return -1 end
return redis.call('INCR', KEYS[3]) - 1
"#,
    )
});

/// Buckets an origin's saved subscriptions are spread over.
const DIALOG_BUCKETS: u32 = 64;

/// Consecutive reads that must find a member's lease gone before it is
/// taken for dead: one may miss a lease that a failover delayed.
const MISSES_BEFORE_TAKEOVER: u32 = 2;

/// How long a retired origin's saved subscriptions are kept after a
/// takeover: long enough for the adopter's write-behind to have saved them
/// under its own origin.
const RETIRED_DIALOGS_KEPT: Duration = Duration::from_secs(10);

/// Subscriptions handed to the event loop at once during a takeover.
const ADOPT_CHUNK: usize = 5000;

/// Replaces the cluster's provisioned configuration if it is still at the
/// revision the importing node read (compare-and-swap), and tells every
/// node. A conflict returns minus the revision found (0 or less).
static PUBLISH_DOCUMENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local rev = tonumber(redis.call('GET', KEYS[2]) or '0')
if rev ~= tonumber(ARGV[1]) then return -rev end
redis.call('SET', KEYS[1], ARGV[2])
rev = redis.call('INCR', KEYS[2])
redis.call('SPUBLISH', KEYS[3], 'provisioned\n' .. rev)
return rev
"#,
    )
});

/// Gives a new cluster its first provisioned configuration, the joining
/// node's; returns the revision and document in force.
static SEED_DOCUMENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[2], '1')
end
return {redis.call('GET', KEYS[2]), redis.call('GET', KEYS[1])}
"#,
    )
});

/// What a node says of itself in the members' record, rewritten at each
/// renewal; the others show it and find who holds what.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct MemberRecord {
    /// Where the other nodes reach it.
    internal: String,
    /// Which run of the node holds the lease.
    incarnation: String,
    /// When that run joined (Unix seconds).
    since: u64,
    /// Its era: its subscriptions' tags begin `node-era`.
    #[serde(default)]
    era: u64,
    /// Subscriptions it holds.
    #[serde(default)]
    subscriptions: u64,
    /// Whether it is drained.
    #[serde(default)]
    draining: bool,
}

/// What an admin's command asks of the cluster: its provisioned
/// configuration (policy and endpoints), which every node runs: one
/// document under one revision, replaced only by a compare-and-swap, so
/// two imports at once cannot lose one; and drains.
#[derive(Clone)]
pub struct ClusterControl {
    connection: ClusterConnection,
    keys: Keys,
    /// This node, and its lease (a drain request lapses after two).
    node: NodeId,
    lease: Duration,
    /// The revision this node runs.
    applied: Arc<AtomicU64>,
}

/// Why an import could not be made the cluster's.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Another node imported first.
    #[error("the cluster's configuration changed meanwhile (now revision {found}, this node ran {read}): read it again (`porchlight config export`) and import again")]
    Conflict {
        /// The revision this node read.
        read: u64,
        /// The revision found.
        found: u64,
    },
    /// Redis did not take it.
    #[error("the Redis Cluster did not take the configuration: {0}; nothing was changed")]
    Redis(String),
}

/// Why a node cannot be drained.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// The node asked is alone, not in a cluster.
    #[error("this node is not in a cluster (no [cluster] in its configuration file): no other node would take its watchers")]
    NotClustered,
    /// No member has that number.
    #[error("node {0} is not a member of the cluster (`porchlight status` lists the members)")]
    NotMember(NodeId),
    /// Its lease is gone: the others take it over already.
    #[error("node {0}'s lease has lapsed: the other nodes take its watchers over without a drain")]
    Lapsed(NodeId),
    /// Asked before, and not yet done or still in force.
    #[error("node {0} is draining already; restart it to have it take watchers again")]
    Draining(NodeId),
    /// No other live node would take its watchers.
    #[error("node {0} is the only live node that is not draining: no other would take its watchers; start another node first")]
    Alone(NodeId),
    /// Redis did not answer.
    #[error("the Redis Cluster did not answer: {0}; nothing was changed")]
    Redis(String),
}

impl From<redis::RedisError> for DrainError {
    fn from(e: redis::RedisError) -> Self {
        DrainError::Redis(e.to_string())
    }
}

impl ClusterControl {
    /// The revision this node runs.
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
    }

    /// Notes that this node runs `rev`.
    pub fn set_applied(&self, rev: u64) {
        self.applied.fetch_max(rev, Ordering::SeqCst);
    }

    /// Makes `document` the cluster's configuration if it still is at
    /// the revision this node runs; the new revision.
    pub async fn publish(&self, document: &str) -> Result<u64, PublishError> {
        let read = self.applied();
        let mut connection = self.connection.clone();
        let rev: i64 = PUBLISH_DOCUMENT
            .key(self.keys.cluster("provisioned"))
            .key(self.keys.cluster("rev"))
            .key(self.keys.cluster("ev"))
            .arg(read)
            .arg(document)
            .invoke_async(&mut connection)
            .await
            .map_err(|e| PublishError::Redis(e.to_string()))?;
        if rev <= 0 {
            return Err(PublishError::Conflict {
                read,
                found: rev.unsigned_abs(),
            });
        }
        wait_for_replica(&mut connection, &self.keys.cluster("rev")).await;
        Ok(rev as u64)
    }

    /// Asks `node` to drain: at its next renewal it stops notifying, saves
    /// every subscription and gives up its lease, and the first other
    /// node to see it gone takes its watchers over, re-notifying them
    /// paced. Answers how many subscriptions it held at its last renewal.
    pub async fn drain(&self, node: NodeId) -> Result<u64, DrainError> {
        let mut connection = self.connection.clone();
        let members = read_members(&mut connection, &self.keys, self.node).await?;
        let Some(target) = members.iter().find(|m| m.node == node) else {
            return Err(DrainError::NotMember(node));
        };
        if target.lease_left_ms.is_none() {
            return Err(DrainError::Lapsed(node));
        }
        if target.draining {
            return Err(DrainError::Draining(node));
        }
        if !members
            .iter()
            .any(|m| m.node != node && m.lease_left_ms.is_some() && !m.draining)
        {
            return Err(DrainError::Alone(node));
        }
        let asked: i64 = REQUEST_DRAIN
            .key(self.keys.lease(node))
            .key(self.keys.node(node, "drain"))
            .arg((self.lease * 2).as_millis() as u64)
            .invoke_async(&mut connection)
            .await?;
        match asked {
            1 => Ok(target.subscriptions),
            0 => Err(DrainError::Lapsed(node)),
            _ => Err(DrainError::Draining(node)),
        }
    }

    /// The cluster's configuration now: its revision and document.
    pub async fn fetch(&self) -> redis::RedisResult<(u64, String)> {
        let mut connection = self.connection.clone();
        let (rev, document): (Option<u64>, Option<String>) = redis::pipe()
            .get(self.keys.cluster("rev"))
            .get(self.keys.cluster("provisioned"))
            .query_async(&mut connection)
            .await?;
        Ok((rev.unwrap_or(0), document.unwrap_or_default()))
    }
}

/// A node that has joined its cluster, before its task runs.
pub struct Joined {
    /// The secrets every node of the cluster keys its tags with.
    pub secrets: NodeSecrets,
    /// The admin's commands to the cluster.
    pub control: ClusterControl,
    /// Its document as this node joined (the node's own, if it is the first).
    pub provisioned: String,
    /// This node's era: its tags and saved subscriptions are under
    /// `node-era`, which a takeover retires.
    pub era: u64,
    /// Whether another node took this node's subscriptions over while it
    /// was gone: its store's are then no longer its own.
    pub retired: bool,
    connection: ClusterConnection,
    pushes: mpsc::Receiver<PushInfo>,
    pushes_lost: Arc<AtomicBool>,
    keys: Keys,
    node: NodeId,
    /// What this node says of itself; `incarnation` holds the lease.
    record: MemberRecord,
    lease: Duration,
    sweep: Duration,
}

/// What the event loop holds of the cluster task.
pub struct ClusterLink {
    /// Where the core's shares go; full means Redis is behind.
    pub shares: mpsc::Sender<Share>,
    /// The endpoints to follow, latest only.
    pub follow: watch::Sender<Vec<String>>,
    /// Shares that did not fit the queue (healed by the next sweep).
    pub dropped: Arc<AtomicU64>,
    /// Asks the task to read every endpoint again, after a share was dropped.
    pub resync: Arc<AtomicBool>,
    /// Where write-behind sends this node's subscriptions for Redis.
    pub dialogs: mpsc::Sender<DialogBatch>,
    /// Dialog batches sent and not yet written.
    pub dialogs_queued: Arc<std::sync::atomic::AtomicUsize>,
    /// Subscriptions the node holds, for its member record.
    pub held: Arc<AtomicU64>,
    /// When the lease was last renewed (milliseconds after `started`).
    renewed_ms: Arc<AtomicU64>,
    started: std::time::Instant,
    /// Past this age of the last renewal the node must not notify.
    fence_after: Duration,
    /// Set when an admin drains the node: fenced until it restarts.
    draining: Arc<AtomicBool>,
}

impl ClusterLink {
    /// The lease as last renewed, for the core, which fences itself when
    /// it runs out: another node may be about to take its watchers over.
    /// On the monotonic clock, so a node resumed after a pause is fenced
    /// before it sends anything.
    pub fn lease(&self) -> Lease {
        if self.draining.load(Ordering::Relaxed) {
            return Lease::GivenUp;
        }
        let renewed = self.started + Duration::from_millis(self.renewed_ms.load(Ordering::Relaxed));
        Lease::Until(renewed + self.fence_after)
    }
}

/// What the cluster task reports to the event loop.
pub enum Report {
    /// What other nodes said of an endpoint.
    Shared(Shared),
    /// The members, leases and counts.
    View(ClusterView),
    /// Subscriptions of a node whose lease lapsed, this node's now.
    Adopt(Vec<porchlight_presence::SavedSubscription<String>>),
    /// Another node took this node's subscriptions over while its lease
    /// was lost; this node goes on in `era`.
    Retired(u64),
    /// An admin drains this node: every subscription is to be saved in
    /// one last batch, after which the lease is given up.
    Drain,
}

/// One write-behind batch of this node's subscriptions, for Redis: saved
/// records by slot (in the store's encoding), and slots whose
/// subscription ended.
#[derive(Debug, Default)]
pub struct DialogBatch {
    /// Saved or updated, by slot.
    pub saved: Vec<(u32, Vec<u8>)>,
    /// Ended.
    pub deleted: Vec<u32>,
    /// The last batch of a drain: once it is written the node gives up
    /// its lease, and another takes these subscriptions over.
    pub last: bool,
}

/// The error for a Redis that cannot be reached or refuses us.
fn unreachable(cluster: &ClusterSection, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Unreachable {
        seeds: seeds_of(cluster),
        reason: e.to_string(),
    }
}

/// The seeds, for messages.
fn seeds_of(cluster: &ClusterSection) -> String {
    cluster
        .redis
        .iter()
        .map(|s| s.0.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A client for the cluster's seeds, with the AUTH and TLS `[cluster]`
/// asks for.
fn client_builder(
    config: &Config,
    cluster: &ClusterSection,
) -> Result<ClusterClientBuilder, ClusterError> {
    let mut builder = ClusterClientBuilder::new(cluster.redis.iter().map(|s| s.0.as_str()))
        .use_protocol(redis::ProtocolVersion::RESP3)
        .connection_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(2));
    if !cluster.username.is_empty() {
        builder = builder.username(&cluster.username);
    }
    if !cluster.password_file.as_os_str().is_empty() {
        let path = config.resolve(&cluster.password_file);
        let password = std::fs::read_to_string(&path).map_err(|source| ClusterError::File {
            key: "password_file",
            path: path.display().to_string(),
            source,
        })?;
        builder = builder.password(password.trim_end_matches(['\r', '\n']));
    }
    if !cluster.ca_file.as_os_str().is_empty() {
        let path = config.resolve(&cluster.ca_file);
        let root = std::fs::read(&path).map_err(|source| ClusterError::File {
            key: "ca_file",
            path: path.display().to_string(),
            source,
        })?;
        builder = builder.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root),
        });
    }
    Ok(builder)
}

/// Connects, within [`CONNECT_TIMEOUT`].
async fn connect(
    builder: ClusterClientBuilder,
    cluster: &ClusterSection,
) -> Result<ClusterConnection, ClusterError> {
    let client = builder.build().map_err(|e| unreachable(cluster, e))?;
    tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_connection())
        .await
        .map_err(|_| {
            unreachable(
                cluster,
                format!("no answer in {}s", CONNECT_TIMEOUT.as_secs()),
            )
        })?
        .map_err(|e| unreachable(cluster, e))
}

/// Agrees with the cluster on the layout, the secrets (`own`, if it is
/// the first) and the provisioned configuration (`config`'s, if it is the
/// first): the secrets, and the configuration's revision and document.
async fn agree(
    c: &mut ClusterConnection,
    keys: &Keys,
    config: &Config,
    cluster: &ClusterSection,
    own: NodeSecrets,
    holds_dialogs: bool,
) -> Result<(NodeSecrets, u64, String), ClusterError> {
    let unreachable = |e: redis::RedisError| unreachable(cluster, e);
    let schema = set_once(c, &keys.cluster("schema"), SCHEMA)
        .await
        .map_err(unreachable)?;
    if schema != SCHEMA {
        return Err(ClusterError::Schema {
            name: cluster.name.clone(),
            found: schema,
        });
    }
    let secrets_key = keys.cluster("secrets");
    let agreed = set_once(c, &secrets_key, &hex(&own.to_bytes()))
        .await
        .map_err(unreachable)?;
    let secrets = unhex(&agreed)
        .and_then(|b| <[u8; 40]>::try_from(b).ok())
        .map(|b| NodeSecrets::from_bytes(&b))
        .ok_or(ClusterError::Foreign {
            key: secrets_key,
            found: agreed,
        })?;
    if secrets != own && holds_dialogs {
        return Err(ClusterError::SecretsDiffer);
    }
    let (rev, provisioned): (u64, String) = SEED_DOCUMENT
        .key(keys.cluster("provisioned"))
        .key(keys.cluster("rev"))
        .arg(config.provisioned().to_toml())
        .invoke_async(c)
        .await
        .map_err(unreachable)?;
    wait_for_replica(c, &keys.cluster("rev")).await;
    Ok((secrets, rev, provisioned))
}

/// Joins the cluster `config` names: connects, checks the layout, agrees
/// on the secrets and the provisioned configuration (this node's own,
/// when it is the first), and takes this node's lease, waiting out one
/// left by this node's previous run.
pub async fn join(
    config: &Config,
    cluster: &ClusterSection,
    own: NodeSecrets,
    holds_dialogs: bool,
) -> Result<Joined, ClusterError> {
    let (push_tx, pushes) = mpsc::channel(PUSH_QUEUE);
    let pushes_lost = Arc::new(AtomicBool::new(false));
    let lost = pushes_lost.clone();
    let builder = client_builder(config, cluster)?.push_sender(move |push: PushInfo| {
        // Never block the client: a lost event is healed by a reload.
        if push_tx.try_send(push).is_err() {
            lost.store(true, Ordering::Relaxed);
        }
        Ok::<(), redis::aio::SendError>(())
    });
    let mut connection = connect(builder, cluster).await?;
    let keys = Keys {
        prefix: cluster.name.clone(),
    };
    let c = &mut connection;
    let (secrets, rev, provisioned) = agree(c, &keys, config, cluster, own, holds_dialogs).await?;
    let unreachable = |e: redis::RedisError| unreachable(cluster, e);
    let (era, retired) = claim_era(c, &keys, cluster.node_id)
        .await
        .map_err(unreachable)?;
    let incarnation = format!("{:016x}", NodeSecrets::generate()?.salt);
    take_lease(c, &keys, cluster, &incarnation)
        .await
        .map_err(|e| match e {
            LeaseError::Redis(e) => unreachable(e),
            LeaseError::Held => ClusterError::DuplicateNode(cluster.node_id),
        })?;
    let record = MemberRecord {
        internal: cluster.internal.to_string(),
        incarnation: incarnation.clone(),
        since: unix_secs(),
        era,
        ..MemberRecord::default()
    };
    write_member(c, &keys, cluster.node_id, &record)
        .await
        .map_err(unreachable)?;
    tracing::info!(
        node = cluster.node_id,
        "joined the cluster {:?} on Redis at {}",
        cluster.name,
        seeds_of(cluster)
    );
    let control = ClusterControl {
        connection: connection.clone(),
        keys: keys.clone(),
        node: cluster.node_id,
        lease: cluster.lease(),
        applied: Arc::new(AtomicU64::new(rev)),
    };
    Ok(Joined {
        secrets,
        control,
        provisioned,
        era,
        retired,
        connection,
        pushes,
        pushes_lost,
        keys,
        node: cluster.node_id,
        record,
        lease: cluster.lease(),
        sweep: Duration::from_secs(cluster.sweep_secs),
    })
}

/// What a stopped node's store handed to the cluster.
#[derive(Debug)]
pub struct Handover {
    /// Subscriptions written for the running nodes to take over.
    pub subscriptions: usize,
    /// Saved by an older version without their tag: they cannot move, and
    /// end when their watchers refresh.
    pub untagged: usize,
    /// Whether the store's configuration became the cluster's (it had
    /// none); otherwise the cluster's stays in force.
    pub configuration_seeded: bool,
    /// The node that took the subscriptions over, if one did in time.
    pub adopted_by: Option<NodeId>,
}

/// Moves a stopped node's state from its `store` into the cluster, as
/// `[cluster] node_id`: the secrets and configuration if the cluster has
/// none, and every subscription, saved as that node's and left without a
/// lease, so a running node takes them over as it would a dead node's
/// (each keeps its tag, its CSeq moves forward, and it is re-notified
/// paced); the store keeps them no more. Waits up to `wait` for a node
/// to take them.
pub async fn hand_over_store(
    config: &Config,
    cluster: &ClusterSection,
    store: &dyn porchlight_store::Store,
    wait: Duration,
) -> Result<Handover, ClusterError> {
    let unreachable = |e: redis::RedisError| unreachable(cluster, e);
    let mut connection = connect(client_builder(config, cluster)?, cluster).await?;
    let keys = Keys {
        prefix: cluster.name.clone(),
    };
    let c = &mut connection;
    let (_, _, provisioned) = agree(c, &keys, config, cluster, store.secrets(), false).await?;
    let node = cluster.node_id;
    let running: Option<String> = redis::cmd("GET")
        .arg(keys.lease(node))
        .query_async(c)
        .await
        .map_err(unreachable)?;
    if running.is_some() {
        return Err(ClusterError::DuplicateNode(node));
    }
    let (era, _) = claim_era(c, &keys, node).await.map_err(unreachable)?;
    let (tagged, untagged): (Vec<_>, Vec<_>) = store
        .subscriptions()?
        .into_iter()
        .partition(|s| s.tag.is_some());
    let batch = DialogBatch {
        saved: tagged
            .iter()
            .map(|s| (s.id.index, porchlight_store::codec::encode_subscription(s)))
            .collect(),
        ..DialogBatch::default()
    };
    let origin = format!("{node}-{era}");
    if write_dialogs(c, &keys, &origin, &batch).await > 0 {
        return Err(self::unreachable(
            cluster,
            "some of the subscriptions were not written; nothing was handed over, run it again",
        ));
    }
    let record = MemberRecord {
        internal: cluster.internal.to_string(),
        incarnation: "handed over from a store".into(),
        since: unix_secs(),
        era,
        subscriptions: tagged.len() as u64,
        draining: true,
    };
    write_member(c, &keys, node, &record)
        .await
        .map_err(unreachable)?;
    // They are the cluster's now: the store must not bring them back if
    // it is started alone again, or two nodes would notify one watcher.
    store.write(&porchlight_store::Batch {
        deleted: tagged.iter().map(|s| s.id.index).collect(),
        ..porchlight_store::Batch::default()
    })?;
    let deadline = tokio::time::Instant::now() + wait;
    let adopted_by = loop {
        let by: Option<NodeId> = redis::cmd("GET")
            .arg(keys.node(node, "takeover"))
            .query_async(c)
            .await
            .map_err(unreachable)?;
        if by.is_some() || tokio::time::Instant::now() >= deadline {
            break by;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    Ok(Handover {
        subscriptions: tagged.len(),
        untagged: untagged.len(),
        configuration_seeded: provisioned == config.provisioned().to_toml(),
        adopted_by,
    })
}

/// This node's era, and whether its last one was retired by a takeover
/// (the flag is cleared: this run starts the new era).
async fn claim_era(
    c: &mut ClusterConnection,
    keys: &Keys,
    node: NodeId,
) -> redis::RedisResult<(u64, bool)> {
    let (era, taken): (Option<u64>, Option<String>) = redis::pipe()
        .get(keys.node(node, "era"))
        .get(keys.node(node, "takeover"))
        .query_async(c)
        .await?;
    if let Some(by) = &taken {
        tracing::warn!(
            node,
            "node {by} took this node's subscriptions over while it was gone; it starts afresh"
        );
        redis::cmd("DEL")
            .arg(keys.node(node, "takeover"))
            .exec_async(c)
            .await?;
    }
    Ok((era.unwrap_or(0), taken.is_some()))
}

/// Sets a key unless it is set, then waits for a replica to have it (a
/// failover right after must not lose what every node agreed on), and
/// returns what it holds.
async fn set_once(c: &mut ClusterConnection, key: &str, value: &str) -> redis::RedisResult<String> {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .arg("NX")
        .exec_async(c)
        .await?;
    let held: String = redis::cmd("GET").arg(key).query_async(c).await?;
    wait_for_replica(c, key).await;
    Ok(held)
}

/// `WAIT 1 100` on the master of `key`'s slot. It is not consistency,
/// only a narrower window; a cluster without replicas answers 0 at once.
async fn wait_for_replica(c: &mut ClusterConnection, key: &str) {
    let route = redis::cluster_routing::RoutingInfo::SingleNode(
        redis::cluster_routing::SingleNodeRoutingInfo::SpecificNode(
            redis::cluster_routing::Route::with_key(key, redis::cluster_routing::SlotAddr::Master),
        ),
    );
    let mut wait = redis::cmd("WAIT");
    wait.arg(1).arg(100);
    if let Err(e) = c.route_command(wait, route).await {
        tracing::debug!("WAIT for a replica of {key}: {e}");
    }
}

enum LeaseError {
    Redis(redis::RedisError),
    Held,
}

/// Takes this node's lease. One left by a previous run of this node
/// (killed, restarted quickly) lapses within the lease; one that is
/// still renewed after that belongs to another running node.
async fn take_lease(
    c: &mut ClusterConnection,
    keys: &Keys,
    cluster: &ClusterSection,
    incarnation: &str,
) -> Result<(), LeaseError> {
    let key = keys.lease(cluster.node_id);
    let deadline = tokio::time::Instant::now() + cluster.lease() + Duration::from_secs(2);
    let mut warned = false;
    loop {
        let taken: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(incarnation)
            .arg("NX")
            .arg("PX")
            .arg(cluster.lease_ms)
            .query_async(c)
            .await
            .map_err(LeaseError::Redis)?;
        if taken.is_some() {
            wait_for_replica(c, &key).await;
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(LeaseError::Held);
        }
        if !warned {
            warned = true;
            tracing::warn!(
                node = cluster.node_id,
                "this node's lease is still held (by its previous run, or by another node \
                 with the same node_id); waiting up to {} ms for it to lapse",
                cluster.lease_ms
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What the task knows of one endpoint it follows.
struct Followed {
    uri: String,
    /// The newest revision applied.
    rev: i64,
}

impl Joined {
    /// Starts the cluster task: it renews the lease, writes shares,
    /// follows the endpoints and reports to `reports`, and tells
    /// `provisioned` of each configuration revision newer than this node's.
    pub fn spawn(
        self,
        queue: usize,
        reports: mpsc::Sender<Report>,
        provisioned: mpsc::Sender<u64>,
    ) -> ClusterLink {
        let (shares, shares_rx) = mpsc::channel(queue);
        let (follow, follow_rx) = watch::channel(Vec::new());
        let (dialogs, dialogs_rx) = mpsc::channel(4);
        let dropped = Arc::new(AtomicU64::new(0));
        let resync = Arc::new(AtomicBool::new(false));
        let dialogs_queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let started = std::time::Instant::now();
        let renewed_ms = Arc::new(AtomicU64::new(0));
        let held = Arc::new(AtomicU64::new(0));
        let draining = Arc::new(AtomicBool::new(false));
        // Fenced 2 s before the lease lapses, so no NOTIFY leaves after
        // another node may have taken over.
        let fence_after = self.lease.saturating_sub(Duration::from_secs(2));
        let task = Task {
            origin: format!("{}-{}", self.node, self.era),
            misses: HashMap::new(),
            dialogs_queued: dialogs_queued.clone(),
            renewed_ms: renewed_ms.clone(),
            started,
            held: held.clone(),
            draining: draining.clone(),
            drain: Drain::Serving,
            joined: self,
            reports,
            provisioned,
            followed: HashMap::new(),
            view: ClusterView::default(),
            dropped: dropped.clone(),
            resync: resync.clone(),
            settling: None,
        };
        tokio::spawn(task.run(shares_rx, follow_rx, dialogs_rx));
        ClusterLink {
            shares,
            follow,
            dropped,
            resync,
            dialogs,
            dialogs_queued,
            held,
            renewed_ms,
            started,
            fence_after,
            draining,
        }
    }
}

struct Task {
    joined: Joined,
    reports: mpsc::Sender<Report>,
    provisioned: mpsc::Sender<u64>,
    /// By channel name.
    followed: HashMap<String, Followed>,
    view: ClusterView,
    dropped: Arc<AtomicU64>,
    resync: Arc<AtomicBool>,
    /// This node's `node-era`, under which its subscriptions are saved.
    origin: String,
    /// Consecutive reads that found each member's lease gone.
    misses: HashMap<NodeId, u32>,
    dialogs_queued: Arc<std::sync::atomic::AtomicUsize>,
    renewed_ms: Arc<AtomicU64>,
    started: std::time::Instant,
    held: Arc<AtomicU64>,
    draining: Arc<AtomicBool>,
    drain: Drain,
    /// Early sweeps still owed after a slot moved.
    settling: Option<Settling>,
}

/// The early sweeps owed after a slot moved: how many are left, the wait
/// before the next, and when it is.
#[derive(Clone, Copy)]
struct Settling {
    left: u32,
    wait: Duration,
    at: tokio::time::Instant,
}

impl Settling {
    /// The first, a moment after a slot moved.
    fn begin() -> Settling {
        Settling {
            left: SETTLE_SWEEPS,
            wait: SETTLE_FIRST,
            at: tokio::time::Instant::now() + SETTLE_FIRST,
        }
    }

    /// The one after this one, if any is left.
    fn next(self) -> Option<Settling> {
        let wait = self.wait * 2;
        (self.left > 1).then(|| Settling {
            left: self.left - 1,
            wait,
            at: tokio::time::Instant::now() + wait,
        })
    }
}

/// After a slot moves to another master, events published while the shard
/// settles (the new master promoted, clients' slot maps refreshed, shard
/// subscriptions moved) may reach no one. The node sweeps this many times
/// early (2, 6 and 14 s after the move: each wait twice the one before),
/// rather than wait out the regular sweep.
const SETTLE_SWEEPS: u32 = 3;
/// The wait before the first early sweep after a slot moved.
const SETTLE_FIRST: Duration = Duration::from_secs(2);

/// Where a drain of this node stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Drain {
    /// Not asked.
    Serving,
    /// Asked: fenced, saving every subscription, lease still held.
    Saving,
    /// Lease given up; waiting for another node to take over (renewing
    /// now would take the lease back before it can).
    Released,
    /// Taken over: a member again with nothing held, still fenced.
    Drained,
}

impl Task {
    async fn run(
        mut self,
        mut shares: mpsc::Receiver<Share>,
        mut follow: watch::Receiver<Vec<String>>,
        mut dialogs: mpsc::Receiver<DialogBatch>,
    ) {
        self.view.node = self.joined.node;
        let channel = self.joined.keys.cluster("ev");
        if let Err(e) = self.joined.connection.ssubscribe(&channel).await {
            tracing::warn!(
                "SSUBSCRIBE {channel}: {e}; configuration changes are found by the sweep"
            );
        }
        let mut lease_tick = tokio::time::interval(renewal_interval(self.joined.lease));
        lease_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sweep_tick = tokio::time::interval(self.joined.sweep);
        sweep_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sweep_tick.tick().await;
        loop {
            let settled = self.settling.map(|s| s.at);
            tokio::select! {
                _ = lease_tick.tick() => {
                    let healthy = self.renew_lease().await;
                    self.report_members(healthy).await;
                }
                () = async move {
                    match settled {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.settling = self.settling.and_then(Settling::next);
                    self.sweep().await;
                }
                batch = dialogs.recv() => {
                    let Some(batch) = batch else { return };
                    let last = batch.last;
                    self.save_dialogs(batch).await;
                    self.dialogs_queued.fetch_sub(1, Ordering::Relaxed);
                    if last {
                        self.release_lease().await;
                    }
                }
                share = shares.recv() => {
                    let Some(share) = share else { return };
                    let mut batch = vec![share];
                    while batch.len() < SHARE_BATCH {
                        match shares.try_recv() {
                            Ok(share) => batch.push(share),
                            Err(_) => break,
                        }
                    }
                    self.write(batch).await;
                }
                changed = follow.changed() => {
                    if changed.is_err() { return }
                    let uris = follow.borrow_and_update().clone();
                    self.follow(uris).await;
                }
                push = self.joined.pushes.recv() => {
                    let Some(push) = push else { return };
                    self.on_push(push).await;
                }
                _ = sweep_tick.tick() => self.sweep().await,
            }
            if self.joined.pushes_lost.swap(false, Ordering::Relaxed)
                || self.resync.swap(false, Ordering::Relaxed)
            {
                self.reload_all().await;
            }
        }
    }

    /// Renews the lease and this node's member record; whether this node
    /// holds the lease now. A drained node that gave its lease up waits
    /// for the takeover instead, and counts as not holding it.
    async fn renew_lease(&mut self) -> bool {
        let j = &mut self.joined;
        if self.drain == Drain::Released {
            let taken: redis::RedisResult<bool> = redis::cmd("EXISTS")
                .arg(j.keys.node(j.node, "takeover"))
                .query_async(&mut j.connection)
                .await;
            if !taken.unwrap_or(false) {
                return false;
            }
            self.drain = Drain::Drained;
        }
        let renewed: redis::RedisResult<(i64, u64)> = RENEW_LEASE
            .key(j.keys.lease(j.node))
            .key(j.keys.node(j.node, "takeover"))
            .key(j.keys.node(j.node, "era"))
            .key(j.keys.node(j.node, "drain"))
            .arg(&j.record.incarnation)
            .arg(j.lease.as_millis() as u64)
            .invoke_async(&mut j.connection)
            .await;
        let held = match renewed {
            Ok((1, _)) => true,
            Ok((2, _)) => {
                tracing::warn!(
                    node = j.node,
                    "this node's lease had lapsed (Redis failed over, or the node was paused); taken again"
                );
                true
            }
            Ok((3, era)) => {
                // Its dialogs are another node's now: a new era for new ones.
                self.origin = format!("{}-{era}", j.node);
                j.record.era = era;
                let _ = self.reports.send(Report::Retired(era)).await;
                true
            }
            Ok((4, _)) if self.drain == Drain::Serving => {
                tracing::warn!(
                    node = j.node,
                    "an admin drains this node: it notifies no more, saves its subscriptions \
                     and hands them to the other nodes; it takes no new ones until restarted"
                );
                self.drain = Drain::Saving;
                self.draining.store(true, Ordering::Relaxed);
                let _ = self.reports.send(Report::Drain).await;
                true
            }
            Ok((4, _)) => true,
            Ok(_) => {
                tracing::error!(
                    node = j.node,
                    "another node holds this node's lease: two nodes run with the same [cluster] node_id"
                );
                false
            }
            Err(e) => {
                tracing::warn!(node = j.node, "renewing the lease: {e}");
                false
            }
        };
        if held {
            let ms = self.started.elapsed().as_millis() as u64;
            self.renewed_ms.store(ms, Ordering::Relaxed);
            j.record.subscriptions = self.held.load(Ordering::Relaxed);
            j.record.draining = self.drain != Drain::Serving;
            if let Err(e) = write_member(&mut j.connection, &j.keys, j.node, &j.record).await {
                tracing::warn!(node = j.node, "writing this node's member record: {e}");
            }
        }
        held
    }

    /// Gives the lease up once a drain's last batch is saved, so the
    /// first other node to see it gone takes the subscriptions over.
    async fn release_lease(&mut self) {
        if self.drain != Drain::Saving {
            return;
        }
        let j = &mut self.joined;
        let released: redis::RedisResult<()> = RELEASE_LEASE
            .key(j.keys.lease(j.node))
            .arg(&j.record.incarnation)
            .invoke_async(&mut j.connection)
            .await;
        match released {
            Ok(()) => {
                tracing::warn!(
                    node = j.node,
                    subscriptions = self.held.load(Ordering::Relaxed),
                    "drained: every subscription is saved and the lease given up; \
                     another node takes them over"
                );
                self.drain = Drain::Released;
            }
            // The lease lapses anyway; the takeover then follows it.
            Err(e) => tracing::warn!(node = j.node, "giving up the lease: {e}"),
        }
    }

    /// Writes a batch of this node's subscriptions to their buckets, one
    /// pipeline per bucket (one slot each).
    async fn save_dialogs(&mut self, batch: DialogBatch) {
        let j = &self.joined;
        let failed = write_dialogs(&j.connection, &j.keys, &self.origin, &batch).await;
        if failed > 0 {
            tracing::warn!(
                "{failed} buckets of saved subscriptions not written to Redis; \
                 their next change writes them again"
            );
        }
    }

    /// Notes members whose lease is gone, and takes over one found gone
    /// twice running, while this node holds its own (a node that cannot
    /// renew its own lease proves nothing about the others').
    async fn watch_members(&mut self, members: &[Member], healthy: bool) {
        for m in members.iter().filter(|m| !m.this_node) {
            if m.lease_left_ms.is_some() {
                self.misses.remove(&m.node);
                continue;
            }
            let misses = self.misses.entry(m.node).or_default();
            *misses += 1;
            if *misses >= MISSES_BEFORE_TAKEOVER && healthy {
                self.misses.remove(&m.node);
                self.take_over(m.node).await;
            }
        }
    }

    /// Claims a dead node and, having won, takes its subscriptions over:
    /// reads its buckets and hands them to the event loop in chunks; its
    /// membership ends, and its buckets go once this node has saved the
    /// subscriptions under its own origin.
    async fn take_over(&mut self, dead: NodeId) {
        let j = &mut self.joined;
        let claimed: redis::RedisResult<i64> = CLAIM_NODE
            .key(j.keys.lease(dead))
            .key(j.keys.node(dead, "takeover"))
            .key(j.keys.node(dead, "era"))
            .arg(j.node)
            .invoke_async(&mut j.connection)
            .await;
        let era = match claimed {
            Ok(era) if era >= 0 => era,
            Ok(_) => return, // back, or claimed by another survivor
            Err(e) => {
                tracing::warn!(node = dead, "claiming a node whose lease lapsed: {e}");
                return;
            }
        };
        wait_for_replica(&mut j.connection, &j.keys.node(dead, "takeover")).await;
        let origin = format!("{dead}-{era}");
        let reads = (0..DIALOG_BUCKETS).map(|bucket| {
            let mut connection = j.connection.clone();
            let key = j.keys.dialogs(&origin, bucket);
            async move {
                let record: redis::RedisResult<Vec<(u32, Vec<u8>)>> = redis::cmd("HGETALL")
                    .arg(key)
                    .query_async(&mut connection)
                    .await;
                record
            }
        });
        let mut saved = Vec::new();
        let mut unreadable = 0;
        for bucket in join_all(reads).await {
            match bucket {
                Ok(records) => {
                    for (_, bytes) in records {
                        match porchlight_store::codec::decode_subscription(&bytes) {
                            Ok(s) => saved.push(s),
                            Err(_) => unreadable += 1,
                        }
                    }
                }
                Err(e) => tracing::warn!(node = dead, "reading its saved subscriptions: {e}"),
            }
        }
        tracing::warn!(
            node = dead,
            subscriptions = saved.len(),
            unreadable,
            "node {dead}'s lease is gone (lapsed, or given up by a drain): this node takes its subscriptions over"
        );
        self.view.takeovers += 1;
        while !saved.is_empty() {
            let rest = saved.split_off(saved.len().min(ADOPT_CHUNK));
            if self.reports.send(Report::Adopt(saved)).await.is_err() {
                return;
            }
            saved = rest;
        }
        let _ = redis::cmd("HDEL")
            .arg(j.keys.cluster("members"))
            .arg(dead)
            .exec_async(&mut j.connection)
            .await;
        // Once the write-behind has saved them here, the old copies go.
        let connection = j.connection.clone();
        let keys: Vec<String> = (0..DIALOG_BUCKETS)
            .map(|b| j.keys.dialogs(&origin, b))
            .collect();
        tokio::spawn(async move {
            tokio::time::sleep(RETIRED_DIALOGS_KEPT).await;
            let deletes = keys.into_iter().map(|key| {
                let mut connection = connection.clone();
                async move { redis::cmd("DEL").arg(key).exec_async(&mut connection).await }
            });
            join_all(deletes).await;
        });
    }

    /// Reads the members and their leases, for status and to find members
    /// that are gone.
    async fn report_members(&mut self, healthy: bool) {
        let j = &mut self.joined;
        let Ok(listed) = read_members(&mut j.connection, &j.keys, j.node).await else {
            return;
        };
        self.watch_members(&listed, healthy).await;
        self.view.members = listed;
        self.view.share_failures = self.dropped.load(Ordering::Relaxed);
        let _ = self.reports.try_send(Report::View(self.view.clone()));
    }

    /// Writes a batch of shares concurrently; one that fails is written
    /// again by the next full reload, which this asks for.
    async fn write(&mut self, batch: Vec<Share>) {
        let j = &self.joined;
        let writes = batch.iter().map(|share| {
            let mut connection = j.connection.clone();
            let mut invocation = WRITE_ENTRY.prepare_invoke();
            invocation
                .key(j.keys.sources(&share.endpoint))
                .key(j.keys.events(&share.endpoint))
                .arg(share.field.key())
                .arg(share.value.as_ref().map(Value::encode).unwrap_or_default())
                .arg(&share.endpoint);
            async move {
                let written: redis::RedisResult<String> =
                    invocation.invoke_async(&mut connection).await;
                written
            }
        });
        let results = join_all(writes).await;
        let failed = results.iter().filter(|r| r.is_err()).count();
        self.view.shared += (results.len() - failed) as u64;
        if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
            tracing::warn!("{failed} shared changes not written ({e}); all are written again");
            self.dropped.fetch_add(failed as u64, Ordering::Relaxed);
            self.resync.store(true, Ordering::Relaxed);
        }
    }

    /// Follows exactly `uris`: new ones are subscribed to and read whole.
    async fn follow(&mut self, uris: Vec<String>) {
        let keys = self.joined.keys.clone();
        let wanted: HashMap<String, String> =
            uris.into_iter().map(|u| (keys.events(&u), u)).collect();
        let gone: Vec<String> = self
            .followed
            .keys()
            .filter(|channel| !wanted.contains_key(*channel))
            .cloned()
            .collect();
        for channel in gone {
            self.followed.remove(&channel);
            if let Err(e) = self.joined.connection.sunsubscribe(&channel).await {
                tracing::debug!("SUNSUBSCRIBE {channel}: {e}");
            }
        }
        let mut new = Vec::new();
        for (channel, uri) in wanted {
            if self.followed.contains_key(&channel) {
                continue;
            }
            // Subscribed before the read: a change between the two is
            // then seen twice, never missed.
            if let Err(e) = self.joined.connection.ssubscribe(&channel).await {
                tracing::warn!("SSUBSCRIBE {channel}: {e}; read again on the next sweep");
            }
            self.followed
                .insert(channel.clone(), Followed { uri, rev: -1 });
            new.push(channel);
        }
        self.reload(new).await;
    }

    async fn on_push(&mut self, push: PushInfo) {
        match push.kind {
            PushKind::SMessage => {
                let (Some(channel), Some(payload)) = (push.data.first(), push.data.get(1)) else {
                    return;
                };
                let (Some(channel), Some(payload)) = (text(channel), text(payload)) else {
                    return;
                };
                self.on_event(&channel, &payload);
            }
            PushKind::SUnsubscribe => {
                // Redis ends shard subscriptions when their slot moves to
                // another master (a failover, a resharding): follow the
                // channel on its new master and read what was missed.
                let Some(channel) = push.data.first().and_then(text) else {
                    return;
                };
                if !self.followed.contains_key(&channel)
                    && channel != self.joined.keys.cluster("ev")
                {
                    return; // our own SUNSUBSCRIBE
                }
                tracing::info!(
                    channel,
                    "a shard subscription moved with its slot; followed again"
                );
                self.settling = Some(Settling::begin());
                if let Err(e) = self.joined.connection.ssubscribe(&channel).await {
                    tracing::warn!("SSUBSCRIBE {channel}: {e}; every endpoint is read again");
                    self.resync.store(true, Ordering::Relaxed);
                }
                if channel == self.joined.keys.cluster("ev") {
                    if let Ok((rev, _)) = self.joined.control.fetch().await {
                        self.on_provisioned(rev);
                    }
                } else {
                    self.reload(vec![channel]).await;
                }
            }
            PushKind::Disconnection => {
                tracing::warn!("a Redis connection closed; every endpoint is read again");
                self.resync.store(true, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// One change event: `rev`, the entry's name and its value, on lines;
    /// on the cluster's channel, a configuration's new revision.
    fn on_event(&mut self, channel: &str, payload: &str) {
        if let Some(rev) = payload.strip_prefix("provisioned\n") {
            if let Ok(rev) = rev.parse::<u64>() {
                self.on_provisioned(rev);
            }
            return;
        }
        let Some(followed) = self.followed.get_mut(channel) else {
            return;
        };
        let mut lines = payload.splitn(3, '\n');
        let (Some(rev), Some(key), Some(value)) = (lines.next(), lines.next(), lines.next()) else {
            return;
        };
        let (Ok(rev), Some(field)) = (rev.parse::<i64>(), Field::parse(key)) else {
            return;
        };
        if rev <= followed.rev {
            return; // already in what a reload read
        }
        followed.rev = rev;
        let value = decode(field, value);
        let shared = Shared {
            endpoint: followed.uri.clone(),
            entries: vec![(field, value)],
            complete: false,
        };
        let _ = self.reports.try_send(Report::Shared(shared));
    }

    fn on_provisioned(&mut self, rev: u64) {
        if rev > self.joined.control.applied() {
            // Full means one is pending already, and it reads the newest.
            let _ = self.provisioned.try_send(rev);
        }
    }

    /// Compares the configuration's and every followed endpoint's
    /// revision with Redis, and reads again what moved without an event.
    async fn sweep(&mut self) {
        if let Ok((rev, _)) = self.joined.control.fetch().await {
            self.on_provisioned(rev);
        }
        let j = &self.joined;
        let reads = self.followed.iter().map(|(channel, f)| {
            let mut connection = j.connection.clone();
            let key = j.keys.sources(&f.uri);
            let (channel, seen) = (channel.clone(), f.rev);
            async move {
                let rev: redis::RedisResult<Option<i64>> = redis::cmd("HGET")
                    .arg(key)
                    .arg("rev")
                    .query_async(&mut connection)
                    .await;
                (channel, seen, rev)
            }
        });
        let stale: Vec<String> = join_all(reads)
            .await
            .into_iter()
            .filter(|(_, seen, rev)| match rev {
                Ok(rev) => rev.unwrap_or(0) != (*seen).max(0),
                Err(_) => true,
            })
            .map(|(channel, _, _)| channel)
            .collect();
        if !stale.is_empty() {
            tracing::info!(
                endpoints = stale.len(),
                "shared presence moved without an event; read again"
            );
            self.reload(stale).await;
        }
    }

    async fn reload_all(&mut self) {
        let all = self.followed.keys().cloned().collect();
        self.reload(all).await;
    }

    /// Reads endpoints' shared records whole and reports them complete.
    async fn reload(&mut self, channels: Vec<String>) {
        let j = &self.joined;
        let reads = channels.into_iter().filter_map(|channel| {
            let uri = self.followed.get(&channel)?.uri.clone();
            let mut connection = j.connection.clone();
            let key = j.keys.sources(&uri);
            Some(async move {
                let record: redis::RedisResult<HashMap<String, String>> = redis::cmd("HGETALL")
                    .arg(key)
                    .query_async(&mut connection)
                    .await;
                (channel, uri, record)
            })
        });
        for (channel, uri, record) in join_all(reads).await {
            let record = match record {
                Ok(record) => record,
                Err(e) => {
                    tracing::warn!(endpoint = uri, "reading shared presence: {e}");
                    self.resync.store(true, Ordering::Relaxed);
                    continue;
                }
            };
            self.view.reloads += 1;
            let rev = record.get("rev").and_then(|r| r.parse().ok()).unwrap_or(0);
            if let Some(f) = self.followed.get_mut(&channel) {
                f.rev = rev;
            }
            let entries = record
                .iter()
                .filter_map(|(key, value)| {
                    let field = Field::parse(key)?;
                    Some((field, decode(field, value)))
                })
                .collect();
            let shared = Shared {
                endpoint: uri,
                entries,
                complete: true,
            };
            if self.reports.send(Report::Shared(shared)).await.is_err() {
                return;
            }
        }
    }
}

/// A shared value, or None (withdrawn) for an empty or unreadable one.
/// Writes a batch of an origin's subscriptions to its buckets, one
/// pipeline per bucket (one slot each); how many buckets failed.
async fn write_dialogs(
    connection: &ClusterConnection,
    keys: &Keys,
    origin: &str,
    batch: &DialogBatch,
) -> usize {
    let mut buckets: HashMap<u32, redis::Pipeline> = HashMap::new();
    for (slot, bytes) in &batch.saved {
        let bucket = slot % DIALOG_BUCKETS;
        buckets
            .entry(bucket)
            .or_default()
            .hset(keys.dialogs(origin, bucket), slot, bytes.as_slice())
            .ignore();
    }
    for slot in &batch.deleted {
        let bucket = slot % DIALOG_BUCKETS;
        buckets
            .entry(bucket)
            .or_default()
            .hdel(keys.dialogs(origin, bucket), slot)
            .ignore();
    }
    let writes = buckets.into_values().map(|pipe| {
        let mut connection = connection.clone();
        async move { pipe.exec_async(&mut connection).await }
    });
    join_all(writes)
        .await
        .into_iter()
        .filter(|r| r.is_err())
        .count()
}

/// The members and their leases, as each last said of itself.
async fn read_members(
    c: &mut ClusterConnection,
    keys: &Keys,
    this: NodeId,
) -> redis::RedisResult<Vec<Member>> {
    let members: HashMap<NodeId, String> = redis::cmd("HGETALL")
        .arg(keys.cluster("members"))
        .query_async(c)
        .await?;
    let mut listed = Vec::with_capacity(members.len());
    for (node, record) in members {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(keys.lease(node))
            .query_async(c)
            .await
            .unwrap_or(-2);
        let record: MemberRecord = serde_json::from_str(&record).unwrap_or_default();
        listed.push(Member {
            node,
            internal: record.internal,
            lease_left_ms: u64::try_from(ttl).ok(),
            this_node: node == this,
            subscriptions: record.subscriptions,
            draining: record.draining,
            era: record.era,
        });
    }
    listed.sort_by_key(|m| m.node);
    Ok(listed)
}

/// Writes what a node says of itself into the members' record.
async fn write_member(
    c: &mut ClusterConnection,
    keys: &Keys,
    node: NodeId,
    record: &MemberRecord,
) -> redis::RedisResult<()> {
    let text = serde_json::to_string(record).unwrap_or_default();
    redis::cmd("HSET")
        .arg(keys.cluster("members"))
        .arg(node)
        .arg(text)
        .exec_async(c)
        .await
}

fn decode(field: Field, value: &str) -> Option<Value> {
    if value.is_empty() {
        return None;
    }
    Value::decode(field, value)
        .map_err(|e| tracing::warn!("{e}; ignored until rewritten"))
        .ok()
}

fn text(value: &redis::Value) -> Option<String> {
    match value {
        redis::Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

/// A lease is renewed four times in its life, and at least every second.
fn renewal_interval(lease: Duration) -> Duration {
    (lease / 4).min(Duration::from_secs(1))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoints_record_and_channel_share_one_slot_apart_from_others() {
        let keys = Keys {
            prefix: "pl".into(),
        };
        let uri = "sip:help{desk}@contoso.com";
        let (record, channel) = (keys.sources(uri), keys.events(uri));
        let slot = |k: &str| redis::cluster_routing::Slot::for_key(k);
        assert_eq!(slot(&record), slot(&channel));
        assert!(
            record.starts_with("pl:{p:") && record.ends_with("}:src"),
            "{record}"
        );
        assert_ne!(keys.sources("sip:sales@contoso.com"), record);
    }

    #[test]
    fn secrets_read_back_from_hex() {
        let secrets = NodeSecrets::generate().unwrap();
        let text = hex(&secrets.to_bytes());
        let back = <[u8; 40]>::try_from(unhex(&text).unwrap()).unwrap();
        assert_eq!(NodeSecrets::from_bytes(&back), secrets);
        assert_eq!(unhex("zz"), None);
    }
}
