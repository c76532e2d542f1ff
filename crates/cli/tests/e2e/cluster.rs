//! Several nodes on one real Redis Cluster (six `redis-server` processes
//! on loopback: three masters, three replicas, made by
//! `redis-cli --cluster create`): presence set on any node reaches every
//! watcher on every node exactly once, through the node that holds it; a
//! Redis master lost, planned or killed, loses nothing and the change
//! after it still reaches everyone; and what a careless admin writes
//! (two nodes with one number, an unreachable Redis, a seed without its
//! scheme) stops the node with the fix.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use porchlight_sip::Message;

/// A Redis Cluster of three masters with a replica each, on loopback
/// ports of its own; every process is killed when it is dropped.
struct RedisCluster {
    servers: Vec<(u16, Child)>,
    dir: PathBuf,
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.servers {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One Redis Cluster at a time: six servers and two or three nodes per
/// test are a heavy load on a two-core machine, and the other end-to-end
/// tests run beside them.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl RedisCluster {
    /// Starts a cluster; the guard keeps any other test's from starting
    /// until this test ends.
    fn start(name: &str) -> (RedisCluster, std::sync::MutexGuard<'static, ()>) {
        let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        (RedisCluster::start_alone(name), guard)
    }

    fn start_alone(name: &str) -> RedisCluster {
        let dir = temp_dir(&format!("redis-{name}"));
        let mut servers = Vec::new();
        for _ in 0..6 {
            let (port, bus) = (free_port(), free_port());
            let data = dir.join(port.to_string());
            std::fs::create_dir_all(&data).unwrap();
            // The timeouts of upstream's create-cluster script; a 3 s
            // node timeout keeps a busy machine from failing over by itself.
            let child = Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--cluster-port",
                    &bus.to_string(),
                ])
                .args(["--bind", "127.0.0.1", "--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "3000", "--appendonly", "yes"])
                .args(["--save", "", "--logfile", "redis.log"])
                .arg("--dir")
                .arg(&data)
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server runs (scripts/test.sh installs it)");
            servers.push((port, child));
        }
        let cluster = RedisCluster { servers, dir };
        for (port, _) in &cluster.servers {
            cluster.wait_until(*port, "PING", "PONG", Duration::from_secs(10));
        }
        let addresses: Vec<String> = cluster
            .servers
            .iter()
            .map(|(p, _)| format!("127.0.0.1:{p}"))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .unwrap();
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        for (port, _) in &cluster.servers {
            cluster.wait_until(
                *port,
                "CLUSTER INFO",
                "cluster_state:ok",
                Duration::from_secs(20),
            );
        }
        cluster
    }

    /// `redis-cli -p port ARGS…`'s output.
    fn cli(&self, port: u16, args: &str) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args.split(' '))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_until(&self, port: u16, args: &str, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let out = self.cli(port, args);
            if out.contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis {port} `{args}` never showed {needle:?}: {out}; logs in {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The seed list a node's `[cluster] redis` names: one server is enough.
    fn seeds(&self) -> String {
        format!("\"redis://127.0.0.1:{}\"", self.servers[0].0)
    }

    /// The ports of the master serving `key`'s slot and of its replica.
    fn master_and_replica_of(&self, key: &str) -> (u16, u16) {
        let slot: u16 = self
            .cli(self.servers[0].0, &format!("CLUSTER KEYSLOT {key}"))
            .trim()
            .parse()
            .unwrap();
        let port_of = |line: &str| -> u16 {
            let addr = line.split(' ').nth(1).unwrap();
            addr.split(['@', ':']).nth(1).unwrap().parse().unwrap()
        };
        // The cluster's view settles by gossip: a replica may not be known
        // to the server asked yet, so ask until it is.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let nodes = self.cli(self.servers[0].0, "CLUSTER NODES");
            let master = nodes.lines().find(|l| {
                l.contains("master")
                    && !l.contains("fail")
                    && l.split(' ').skip(8).any(|range| {
                        let (a, b) = range.split_once('-').unwrap_or((range, range));
                        matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
                    })
            });
            let replica = master.and_then(|master| {
                let id = master.split(' ').next().unwrap();
                nodes
                    .lines()
                    .find(|l| l.contains("slave") && l.split(' ').nth(3) == Some(id))
            });
            if let (Some(master), Some(replica)) = (master, replica) {
                return (port_of(master), port_of(replica));
            }
            assert!(
                Instant::now() < deadline,
                "no master with a replica serves slot {slot}:\n{nodes}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn kill_9(&mut self, port: u16) {
        let (_, child) = self.servers.iter_mut().find(|(p, _)| *p == port).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// The record key of an endpoint's shared presence, as the nodes name it.
fn sources_key(name: &str, uri: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(uri.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{name}:{{p:{hex}}}:src")
}

/// A node of cluster `name` numbered `node`: NOTIFYs unpaced, the help
/// desk and a queue whose app registers; the other nodes reach it on its
/// TCP listener.
fn node_config(redis: &RedisCluster, name: &str, node: u16, lease_ms: u64) -> String {
    let internal = free_port();
    config(
        &[
            (
                "min_notify_interval_ms = 5000",
                "min_notify_interval_ms = 0",
            ),
            ("renotify_window_secs = 30", "renotify_window_secs = 2"),
            (
                "tcp = [\"127.0.0.1:0\"]",
                &format!("tcp = [\"127.0.0.1:{internal}\"]"),
            ),
        ],
        &format!(
            "\n[cluster]\nredis = [{}]\nnode_id = {node}\ninternal = \"127.0.0.1:{}\"\n\
             name = \"{name}\"\nlease_ms = {lease_ms}\n\
             \n[[endpoint]]\nuri = \"sip:queue@contoso.com\"\ndisplay_name = \"Support Queue\"\n\
             [endpoint.registration]\npassword = \"s3cret\"\n",
            redis.seeds(),
            internal,
        ),
    )
}

/// Watchers of the queue held by one node: one socket, one dialog each.
struct Crowd {
    socket: UdpSocket,
    node: SocketAddr,
    call_ids: Vec<String>,
    /// Every NOTIFY body heard, by Call-ID.
    heard: HashMap<String, Vec<String>>,
}

impl Crowd {
    fn subscribe(node: &Server, label: &str, count: usize) -> Crowd {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let at = socket.local_addr().unwrap();
        let call_ids: Vec<String> = (0..count).map(|i| format!("{label}-{i}")).collect();
        for (i, call_id) in call_ids.iter().enumerate() {
            let request = subscribe_to("queue", at, call_id, &format!("{label}t{i}"));
            socket.send_to(request.as_bytes(), node.udp).unwrap();
        }
        Crowd {
            socket,
            node: node.udp,
            call_ids,
            heard: HashMap::new(),
        }
    }

    /// Answers NOTIFYs until every watcher has heard one containing
    /// `needle` (after what it had heard before), or panics at the deadline.
    fn expect_all(&mut self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let missing = self
                .call_ids
                .iter()
                .filter(|c| {
                    !self
                        .heard
                        .get(*c)
                        .is_some_and(|h| h.iter().any(|b| b.contains(needle)))
                })
                .count();
            if missing == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{missing} of {} watchers on {} never heard {needle:?}",
                self.call_ids.len(),
                self.node
            );
            if let Some(m) = receive_answering(&self.socket) {
                self.note(&m);
            }
        }
    }

    /// Answers NOTIFYs until every watcher has heard its subscription end
    /// for `reason` (`Subscription-State: terminated;reason=…`).
    fn expect_all_final(&mut self, reason: &str, within: Duration) {
        self.expect_all(&format!("terminated;reason={reason}"), within);
    }

    /// Keeps a NOTIFY's Subscription-State and body, by Call-ID.
    fn note(&mut self, m: &Message) {
        if m.method() == Some("NOTIFY") {
            let state = m
                .text(porchlight_sip::HeaderName::SubscriptionState)
                .ok()
                .flatten()
                .unwrap_or_default();
            let body = format!(
                "Subscription-State: {state}\n{}",
                String::from_utf8_lossy(m.body())
            );
            let call_id = m.call_id().unwrap().to_owned();
            self.heard.entry(call_id).or_default().push(body);
        }
    }

    /// How many NOTIFYs each watcher heard containing `needle`.
    fn counts(&self, needle: &str) -> Vec<usize> {
        self.call_ids
            .iter()
            .map(|c| {
                self.heard
                    .get(c)
                    .map_or(0, |h| h.iter().filter(|b| b.contains(needle)).count())
            })
            .collect()
    }
}

fn set_presence(node: &Server, args: &[&str]) {
    let out = porchlight_ok(&node.dir.join("porchlight.toml"), args);
    assert!(!out.is_empty());
}

/// Sets the queue's presence on `node`, as an admin, with a note.
fn set_queue(node: &Server, availability: &str, note: &str) {
    set_presence(
        node,
        &[
            "endpoint",
            "presence",
            "set",
            "sip:queue@contoso.com",
            availability,
            "--note",
            note,
        ],
    );
}

const OPEN: &str = "<basic>open</basic>";
const CLOSED: &str = "<basic>closed</basic>";

#[test]
fn presence_set_on_any_node_reaches_every_watcher_on_every_node_once() {
    let (redis, _one) = RedisCluster::start("fanout");
    let nodes: Vec<Server> = (1..=3)
        .map(|n| {
            start(
                &format!("cluster-fanout-{n}"),
                &node_config(&redis, "fanout", n, 8000),
            )
        })
        .collect();
    let mut crowds: Vec<Crowd> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| Crowd::subscribe(node, &format!("n{}", i + 1), 20))
        .collect();
    // The alerting rules' and dashboard's cluster metrics are what a member exports.
    let exported = exported_metric_names(&nodes[0].metrics());
    for name in deploy_metric_names() {
        if name.starts_with("porchlight_cluster_") {
            assert!(exported.contains(&name), "{name} is not exported");
        }
    }
    // The queue's app has not registered anywhere: Offline everywhere.
    for crowd in &mut crowds {
        crowd.expect_all(CLOSED, Duration::from_secs(10));
    }

    // The app registers with node 1 only; node 2's and 3's watchers see
    // it Online, as node 1's do.
    let app = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert_eq!(register_with(&app, nodes[0].udp, "queue", "s3cret", 1), 200);
    for crowd in &mut crowds {
        crowd.expect_all(OPEN, Duration::from_secs(10));
    }

    // The admin sets the queue's presence on node 2; everyone hears it,
    // then node 3 clears it and everyone hears the app's state again.
    set_queue(&nodes[1], "busy", "Cluster-wide");
    for crowd in &mut crowds {
        crowd.expect_all("Cluster-wide", Duration::from_secs(10));
    }
    set_presence(
        &nodes[2],
        &["endpoint", "presence", "clear", "sip:queue@contoso.com"],
    );
    for crowd in &mut crowds {
        crowd.expect_all("<dm:note>Available</dm:note>", Duration::from_secs(10));
    }
    // One change, one NOTIFY per watcher: however many nodes saw the
    // setting (the one it was set on, and the two it reached), each
    // watcher heard it from its own node once.
    for crowd in &crowds {
        assert!(
            crowd.counts("Cluster-wide").iter().all(|&n| n == 1),
            "watchers on {} heard the admin's setting {:?} times",
            crowd.node,
            crowd.counts("Cluster-wide")
        );
    }

    // Every node shows the members and their leases.
    let status = nodes[2].api_get("/api/v1/status");
    let members = status["cluster"]["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{status}");
    assert!(
        members
            .iter()
            .all(|m| m["lease_left_ms"].as_u64().is_some()),
        "{members:?}"
    );
    assert!(status["cluster"]["applied"].as_u64().unwrap() >= 3);
    let text = porchlight_ok(&nodes[2].dir.join("porchlight.toml"), &["status"]);
    assert!(
        text.contains("cluster: node 3") && text.contains("(this node)"),
        "{text}"
    );
    assert_eq!(text.matches("  member ").count(), 3, "{text}");
    // Node 1 joined first: its view fills in as the others join.
    let (admin, bearer) = nodes[0].api();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = ureq::get(&format!("http://{admin}/metrics"))
            .set("Authorization", &bearer)
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        let leases = metrics
            .lines()
            .filter(|l| l.starts_with("porchlight_cluster_member_lease_seconds{"))
            .count();
        if leases == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A node killed: its lease lapses and every other node shows it so.
    let mut nodes = nodes;
    nodes[0].kill_9();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = nodes[1].api_get("/api/v1/status");
        let lapsed: Vec<u64> = status["cluster"]["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["lease_left_ms"].is_null())
            .map(|m| m["node"].as_u64().unwrap())
            .collect();
        if lapsed == [1] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 1's lease never showed lapsed: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_redis_master_lost_planned_or_killed_loses_no_presence() {
    let (mut redis, _one) = RedisCluster::start("failover");
    let nodes: Vec<Server> = (1..=2)
        .map(|n| {
            start(
                &format!("cluster-failover-{n}"),
                // The whole suite shares the machine: failovers are slow,
                // and the lease outlasts them as docs/cluster.md asks.
                &node_config(&redis, "failover", n, 12000),
            )
        })
        .collect();
    let mut watchers = Crowd::subscribe(&nodes[1], "fo", 10);
    watchers.expect_all(CLOSED, Duration::from_secs(10));
    let app = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert_eq!(register_with(&app, nodes[0].udp, "queue", "s3cret", 1), 200);
    watchers.expect_all(OPEN, Duration::from_secs(10));
    let key = sources_key("failover", "sip:queue@contoso.com");

    // A planned failover of the queue's master: its replica takes over.
    let (master, replica) = redis.master_and_replica_of(&key);
    assert!(redis.cli(replica, "CLUSTER FAILOVER").contains("OK"));
    redis.wait_until(replica, "ROLE", "master", Duration::from_secs(20));
    set_queue(&nodes[0], "away", "After the planned failover");
    watchers.expect_all("After the planned failover", Duration::from_secs(20));

    // The new master killed under load: SIPp watchers subscribe, refresh
    // and unsubscribe on both nodes (each a dialog saved to Redis and
    // deleted) while it dies, and none waits for Redis. Its replica (the
    // old master) takes over once the cluster sees it fail.
    let (master_now, replica_now) = redis.master_and_replica_of(&key);
    assert_eq!((master_now, replica_now), (replica, master));
    let load: Vec<Child> = nodes
        .iter()
        .map(|node| {
            sipp_calls(
                &[
                    &node.udp.to_string(),
                    "-sf",
                    &scenario("subscribe-uac.xml"),
                    "-s",
                    "helpdesk",
                    "-r",
                    "40",
                    "-l",
                    "100",
                    "-i",
                    "127.0.0.1",
                    "-p",
                    &free_port().to_string(),
                ],
                400,
            )
        })
        .collect();
    let loaded = Instant::now() + Duration::from_secs(20);
    while nodes[0].api_get("/api/v1/status")["subscriptions_created"].as_u64() < Some(50) {
        assert!(Instant::now() < loaded, "SIPp never started subscribing");
        std::thread::sleep(Duration::from_millis(50));
    }
    let heard_before: Vec<usize> = watchers.counts("");
    redis.kill_9(master_now);
    redis.wait_until(replica_now, "ROLE", "master", Duration::from_secs(30));
    redis.wait_until(
        replica_now,
        "CLUSTER INFO",
        "cluster_state:ok",
        Duration::from_secs(30),
    );
    set_queue(&nodes[0], "busy", "After the master died");
    watchers.expect_all("After the master died", Duration::from_secs(30));
    for (i, child) in load.into_iter().enumerate() {
        finished_ok(child, &format!("SIPp watchers on node {}", i + 1));
    }
    // Reconciling after the failover sent nothing where nothing changed:
    // each watcher heard the change, once, and no more.
    let heard_after = watchers.counts("");
    for (before, after) in heard_before.iter().zip(&heard_after) {
        assert_eq!(
            after - before,
            1,
            "NOTIFYs per watcher: {heard_before:?} -> {heard_after:?}"
        );
    }

    // Nothing node 1 holds was lost: a node that starts now reads the
    // registration (and the admin's setting) from what Redis kept.
    let late = start(
        "cluster-failover-3",
        &node_config(&redis, "failover", 3, 12000),
    );
    let mut late_watchers = Crowd::subscribe(&late, "late", 5);
    late_watchers.expect_all("After the master died", Duration::from_secs(10));
    set_presence(
        &nodes[1],
        &["endpoint", "presence", "clear", "sip:queue@contoso.com"],
    );
    // The registration on node 1 shows once the admin's setting is gone.
    late_watchers.expect_all("<dm:note>Available</dm:note>", Duration::from_secs(10));
    watchers.expect_all("<dm:note>Available</dm:note>", Duration::from_secs(10));
    // Neither failover looked like a node's death: no takeover, and node
    // 2 still holds its watchers.
    for node in &nodes {
        let status = node.api_get("/api/v1/status");
        assert_eq!(status["cluster"]["takeovers"], 0, "{status}");
    }
    assert_eq!(
        nodes[1].api_get("/api/v1/status")["subscriptions_active"],
        10
    );
}

/// What `porchlight serve` prints and whether it stopped, within `within`.
fn serve_fails(config_text: &str, name: &str, within: Duration) -> String {
    let dir = temp_dir(name);
    let path = dir.join("porchlight.toml");
    std::fs::write(&path, config_text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_porchlight"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("`serve` with {name}'s configuration still runs after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut out = String::new();
    use std::io::Read;
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    out
}

#[test]
fn what_a_careless_admin_writes_stops_the_node_with_the_fix() {
    // A seed without its scheme names the line and the form.
    let (redis, _one) = RedisCluster::start("careless");
    let dir = temp_dir("cluster-careless-seed");
    let path = dir.join("porchlight.toml");
    let text = node_config(&redis, "careless", 1, 8000).replace(
        &format!("redis = [{}]", redis.seeds()),
        &format!("redis = [\"127.0.0.1:{}\"]", redis.servers[0].0),
    );
    std::fs::write(&path, &text).unwrap();
    let checked = Command::new(env!("CARGO_BIN_EXE_porchlight"))
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&checked.stderr).into_owned()
        + &String::from_utf8_lossy(&checked.stdout);
    let line = text
        .lines()
        .position(|l| l.starts_with("redis = "))
        .unwrap()
        + 1;
    assert!(!checked.status.success());
    assert!(
        out.contains(&format!("porchlight.toml:{line}:")) && out.contains("redis://HOST:PORT"),
        "{out}"
    );

    // An internal address the node does not listen at (its UDP port, say)
    // could never take a forwarded refresh: refused with the fix.
    let text = node_config(&redis, "careless", 1, 8000);
    let tcp = text.lines().find(|l| l.starts_with("tcp = ")).unwrap();
    std::fs::write(&path, text.replace(tcp, "tcp = []")).unwrap();
    let checked = Command::new(env!("CARGO_BIN_EXE_porchlight"))
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&checked.stderr);
    assert!(!checked.status.success());
    assert!(
        out.contains("porchlight.toml") && out.contains("is not one of this node's [listen] tcp"),
        "{out}"
    );

    // Nothing listens at the seed: the node does not start, and says why.
    let closed = free_port();
    let unreachable = node_config(&redis, "careless", 1, 8000)
        .replace(&redis.seeds(), &format!("\"redis://127.0.0.1:{closed}\""));
    let out = serve_fails(
        &unreachable,
        "cluster-careless-unreachable",
        Duration::from_secs(30),
    );
    assert!(out.contains("cannot reach the Redis Cluster"), "{out}");

    // Two nodes with one number: the second waits out the lease, finds it
    // still renewed, and stops naming the key to change.
    let _first = start(
        "cluster-careless-first",
        &node_config(&redis, "careless", 7, 3000),
    );
    let started = Instant::now();
    let out = serve_fails(
        &node_config(&redis, "careless", 7, 3000),
        "cluster-careless-second",
        Duration::from_secs(30),
    );
    assert!(
        out.contains("node_id = 7 is held by a running node"),
        "{out}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "it gave up before a restarted node's old lease could have lapsed"
    );
}

#[test]
fn an_import_on_one_node_is_in_force_on_every_node_and_a_stale_one_is_refused() {
    let (redis, _one) = RedisCluster::start("import");
    let nodes: Vec<Server> = (1..=3)
        .map(|n| {
            start(
                &format!("cluster-import-{n}"),
                &node_config(&redis, "import", n, 8000),
            )
        })
        .collect();
    let mut crowds: Vec<Crowd> = nodes[1..]
        .iter()
        .enumerate()
        .map(|(i, node)| Crowd::subscribe(node, &format!("imp{i}"), 10))
        .collect();
    for crowd in &mut crowds {
        crowd.expect_all(CLOSED, Duration::from_secs(10));
    }

    // Node 1 removes the queue; the watchers held by nodes 2 and 3 are
    // told at once that it is gone.
    let file = |n: usize| nodes[n].dir.join("porchlight.toml");
    porchlight_ok(&file(0), &["endpoint", "remove", "sip:queue@contoso.com"]);
    let removed = Instant::now();
    for crowd in &mut crowds {
        crowd.expect_all_final("noresource", Duration::from_secs(5));
    }
    let everywhere = removed.elapsed();
    assert!(
        everywhere < Duration::from_secs(1),
        "the removal took {everywhere:?} to reach every node's watchers"
    );
    let listed = porchlight_ok(&file(2), &["endpoint", "list"]);
    assert!(!listed.contains("sip:queue@contoso.com"), "{listed}");

    // Another node's import that node 2 has not seen yet (the revision
    // moved without an event): node 2's own import is refused, not
    // written over it, and changes nothing there.
    let rev_key = "import:{c}:rev";
    let bumped = redis.cli(redis.servers[0].0, &format!("-c INCR {rev_key}"));
    assert!(bumped.trim().parse::<u64>().is_ok(), "{bumped}");
    let (ok, out) = porchlight_at(
        &file(1),
        &["endpoint", "add", "sip:bot@contoso.com", "--name", "Bot"],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("changed meanwhile"), "{out}");
    let listed = porchlight_ok(&file(1), &["endpoint", "list"]);
    assert!(!listed.contains("sip:bot@contoso.com"), "{listed}");
}

#[test]
fn a_node_restarted_within_its_lease_restores_its_own_watchers() {
    let (redis, _one) = RedisCluster::start("restart");
    let first = start(
        "cluster-restart-1",
        &node_config(&redis, "restart", 1, 4000),
    );
    // Node 2 on a fixed port, as the Contact its watchers hold, and with
    // a short recovery window.
    let port = free_port();
    let second_config = node_config(&redis, "restart", 2, 4000).replace(
        "udp = [\"127.0.0.1:0\"]",
        &format!("udp = [\"127.0.0.1:{port}\"]"),
    );
    let mut second = start("cluster-restart-2", &second_config);
    let mut watchers = Crowd::subscribe(&second, "rs", 10);
    watchers.expect_all(CLOSED, Duration::from_secs(10));
    // Past the write-behind flush: the dialogs are on the disk.
    let flushed = Instant::now() + Duration::from_secs(5);
    while Instant::now() < flushed {
        let status = second.api_get("/api/v1/status");
        if status["store"]["records_written"].as_u64().unwrap_or(0) >= 10 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    second.kill_9();
    let (dir, path) = (second.dir.clone(), second.dir.join("porchlight.toml"));
    let restarted = Instant::now();
    let second = start_with_file(&path, dir);
    // Its old lease was still held: it waited for it rather than run
    // beside what might have been another node with its number.
    assert!(
        restarted.elapsed() >= Duration::from_secs(2),
        "restarted in {:?}, inside the old lease",
        restarted.elapsed()
    );
    let status = second.api_get("/api/v1/status");
    assert_eq!(status["store"]["restored"], 10, "{status}");
    // Its watchers hear the queue come online from node 1, in the dialogs
    // they had.
    let app = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert_eq!(register_with(&app, first.udp, "queue", "s3cret", 1), 200);
    watchers.expect_all(OPEN, Duration::from_secs(10));
}

/// Waits until Redis holds `count` saved subscriptions of `origin` in
/// cluster `name` (the write-behind reached it).
fn wait_for_saved(redis: &RedisCluster, name: &str, origin: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let saved: usize = (0..64)
            .map(|b| {
                let key = format!("-c HLEN {name}:{{d:{origin}:{b}}}:subs");
                let out = redis.cli(redis.servers[0].0, &key);
                out.trim().parse::<usize>().unwrap_or(0)
            })
            .sum();
        if saved == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{saved} of {count} subscriptions of {origin} in Redis"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `node`'s write-behind has written `count` records to its store.
fn wait_for_written(node: &Server, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.api_get("/api/v1/status")["store"]["records_written"].as_u64() < Some(count) {
        assert!(
            Instant::now() < deadline,
            "the dialogs were never written behind"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A node alone's configuration made a member's: the `[cluster]` of
/// `member` (a [`node_config`]), and the TCP listener it names as where
/// the others reach it.
fn as_member(alone: &str, member: &str) -> String {
    let section =
        &member[member.find("\n[cluster]").unwrap()..member.find("\n\n[[endpoint]]").unwrap()];
    let tcp = member.lines().find(|l| l.starts_with("tcp = ")).unwrap();
    alone.replace("tcp = [\"127.0.0.1:0\"]", tcp) + section
}

/// One NOTIFY as a watcher saw it.
#[derive(Clone, Debug)]
struct Heard {
    from: SocketAddr,
    cseq: u32,
    from_tag: String,
    contact: String,
    text: String,
}

/// Watchers of the queue that keep each dialog's To tag (from the 200)
/// and every NOTIFY with where it came from.
struct Dialogs {
    socket: UdpSocket,
    to_tags: HashMap<String, String>,
    heard: HashMap<String, Vec<Heard>>,
    count: usize,
}

impl Dialogs {
    fn subscribe(node: &Server, label: &str, count: usize) -> Dialogs {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let at = socket.local_addr().unwrap();
        for i in 0..count {
            let request = subscribe_to(
                "queue",
                at,
                &format!("{label}-{i}"),
                &format!("{label}t{i}"),
            );
            socket.send_to(request.as_bytes(), node.udp).unwrap();
        }
        let mut dialogs = Dialogs {
            socket,
            to_tags: HashMap::new(),
            heard: HashMap::new(),
            count,
        };
        dialogs.until(
            Duration::from_secs(10),
            "a 200 and a NOTIFY for every watcher",
            |d| d.to_tags.len() == count && d.heard.len() == count,
        );
        dialogs
    }

    /// Answers and keeps what arrives until `done`, or panics at the deadline.
    fn until(&mut self, within: Duration, what: &str, done: impl Fn(&Dialogs) -> bool) {
        let deadline = Instant::now() + within;
        let mut buf = vec![0u8; 65536];
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "never saw {what}: {:?}",
                self.heard
            );
            let Ok((n, from)) = self.socket.recv_from(&mut buf) else {
                continue;
            };
            let m = parse(&buf[..n]);
            let call_id = m.call_id().unwrap().to_owned();
            if m.status() == Some(200) {
                let tag = m.to().unwrap().tag().unwrap().to_owned();
                self.to_tags.insert(call_id, tag);
                continue;
            }
            if m.method() != Some("NOTIFY") {
                continue;
            }
            let ok = porchlight_sip::response_to(&m, 200, "OK", None, None).finish(b"");
            self.socket.send_to(&ok, from).unwrap();
            let contact = match m.contacts() {
                Ok(porchlight_sip::Contacts::List(list)) => list
                    .first()
                    .map(|c| c.uri.as_str().to_owned())
                    .unwrap_or_default(),
                _ => String::new(),
            };
            let state = m
                .text(porchlight_sip::HeaderName::SubscriptionState)
                .ok()
                .flatten()
                .unwrap_or_default()
                .to_owned();
            self.heard.entry(call_id).or_default().push(Heard {
                from,
                cseq: m.cseq().unwrap().seq,
                from_tag: m.from().unwrap().tag().unwrap_or_default().to_owned(),
                contact,
                text: format!("{state}\n{}", String::from_utf8_lossy(m.body())),
            });
        }
    }

    /// Answers and keeps whatever arrives for `window`.
    fn pump(&mut self, window: Duration) {
        let end = Instant::now() + window;
        self.until(window + Duration::from_secs(1), "", |_| {
            Instant::now() >= end
        });
    }

    /// NOTIFYs heard since `marks` (a count per watcher).
    fn since(&self, marks: &HashMap<String, usize>) -> HashMap<String, Vec<Heard>> {
        self.heard
            .iter()
            .map(|(c, h)| (c.clone(), h[marks.get(c).copied().unwrap_or(0)..].to_vec()))
            .collect()
    }

    /// Asserts that the first NOTIFY each watcher heard in `after` is a
    /// takeover's by `survivor`: from it, in the dialog the watcher had
    /// (its To tag), CSeq past `last_cseq` by the jump, active, and with
    /// the survivor's Contact for what follows.
    fn assert_taken_over(
        &self,
        after: &HashMap<String, Vec<Heard>>,
        survivor: &Server,
        last_cseq: &HashMap<String, u32>,
    ) {
        for (call_id, heard) in after {
            let h = &heard[0];
            assert_eq!(h.from, survivor.udp, "{call_id}: from the survivor");
            assert_eq!(&h.from_tag, &self.to_tags[call_id], "{call_id}: its dialog");
            assert!(
                h.cseq >= last_cseq[call_id] + 1000,
                "{call_id}: CSeq {} after {}",
                h.cseq,
                last_cseq[call_id]
            );
            assert!(h.text.starts_with("active"), "{call_id}: {}", h.text);
            assert!(
                h.contact.contains(&survivor.udp.port().to_string()),
                "{call_id}: {}",
                h.contact
            );
        }
    }

    /// Sets the queue busy with `note` on `node`, and answers what
    /// arrives until every watcher has heard it.
    fn hear_busy(&mut self, node: &Server, note: &str) {
        let marks = self.marks();
        set_queue(node, "busy", note);
        self.until(Duration::from_secs(10), note, |d| {
            d.since(&marks)
                .values()
                .filter(|h| h.iter().any(|n| n.text.contains(note)))
                .count()
                == d.count
        });
    }

    fn marks(&self) -> HashMap<String, usize> {
        self.heard
            .iter()
            .map(|(c, h)| (c.clone(), h.len()))
            .collect()
    }
}

#[test]
fn a_node_killed_loses_no_watcher_and_duplicates_none() {
    let (redis, _one) = RedisCluster::start("takeover");
    let survivor = start(
        "cluster-takeover-1",
        &node_config(&redis, "takeover", 1, 4000),
    );
    let mut doomed = start(
        "cluster-takeover-2",
        &node_config(&redis, "takeover", 2, 4000),
    );
    let mut watchers = Dialogs::subscribe(&doomed, "tk", 20);
    // Past the write-behind flush: the dialogs are in Redis.
    wait_for_saved(&redis, "takeover", "2-0", 20);
    let before = watchers.marks();
    let before_kill = before.clone();
    let last_cseq: HashMap<String, u32> = watchers
        .heard
        .iter()
        .map(|(c, h)| (c.clone(), h.last().unwrap().cseq))
        .collect();

    doomed.kill_9();
    let killed = Instant::now();
    // Node 1 finds node 2's lease gone twice, claims it and re-notifies
    // every one of its watchers, once, from itself, in the dialog it had.
    watchers.until(
        Duration::from_secs(20),
        "a NOTIFY from the survivor to every watcher",
        |d| d.since(&before).values().filter(|h| !h.is_empty()).count() == d.count,
    );
    let took = killed.elapsed();
    let after = watchers.since(&before);
    watchers.assert_taken_over(&after, &survivor, &last_cseq);
    eprintln!("takeover: every watcher re-notified {took:?} after the kill");

    // A refresh sent to a node that never held the dialog is forwarded
    // to the live member that holds it, which answers and notifies.
    let third = start(
        "cluster-takeover-3",
        &node_config(&redis, "takeover", 3, 4000),
    );
    let mut stray = Dialogs::subscribe(&third, "stray", 1);
    let known = Instant::now() + Duration::from_secs(10);
    while !survivor.api_get("/api/v1/status")["cluster"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["node"] == 3 && m["lease_left_ms"].is_u64())
    {
        assert!(Instant::now() < known, "node 1 never saw node 3 join");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A refresh in a watcher's dialog: its From tag, the To tag it was
    // given, the next CSeq, a branch of its own.
    let refresh_of = |call_id: &str, tag: &str, at: SocketAddr| {
        subscribe_to("queue", at, call_id, &call_id.replace('-', "t"))
            .replace(";branch=z9hG4bK", ";branch=z9hG4bKrefresh")
            .replace(
                "To: <sip:queue@contoso.com>",
                &format!("To: <sip:queue@contoso.com>;tag={tag}"),
            )
            .replace("CSeq: 1 SUBSCRIBE", "CSeq: 2 SUBSCRIBE")
    };
    let misdirected = refresh_of(
        "stray-0",
        &stray.to_tags["stray-0"],
        stray.socket.local_addr().unwrap(),
    );
    let marks = stray.marks();
    stray.to_tags.clear();
    stray
        .socket
        .send_to(misdirected.as_bytes(), survivor.udp)
        .unwrap();
    stray.until(
        Duration::from_secs(5),
        "the forwarded refresh's 200 and NOTIFY",
        |d| d.to_tags.contains_key("stray-0") && !d.since(&marks)["stray-0"].is_empty(),
    );
    assert_eq!(stray.since(&marks)["stray-0"][0].from, third.udp);
    assert_eq!(
        third.api_get("/api/v1/status")["subscriptions_refreshed"],
        1
    );

    // One whose node is gone, at a node that did not take it over, is
    // asked to retry (where the node that did answers), never told the
    // subscription is gone (481 would end it).
    let orphaned = refresh_of(
        "tk-5",
        &watchers.to_tags["tk-5"],
        watchers.socket.local_addr().unwrap(),
    );
    let answers = udp_exchange(third.udp, orphaned.as_bytes(), Duration::from_secs(2));
    let answer = answers
        .iter()
        .find(|m| m.status().is_some())
        .expect("an answer");
    assert_eq!(answer.status(), Some(503), "{answer:?}");
    assert!(answer
        .text(porchlight_sip::HeaderName::RetryAfter)
        .ok()
        .flatten()
        .is_some());

    // A refresh follows the new Contact into the same dialog.
    let call_id = "tk-3";
    let contact = &after[call_id][0].contact;
    let at = watchers.socket.local_addr().unwrap();
    let refresh = format!(
        "SUBSCRIBE {contact} SIP/2.0\r\nVia: SIP/2.0/UDP {at};branch=z9hG4bKtkr3;rport\r\nMax-Forwards: 70\r\n\
         From: <sip:alice@fabrikam.com>;tag=tkt3\r\nTo: <sip:queue@contoso.com>;tag={}\r\nCall-ID: {call_id}\r\n\
         CSeq: 2 SUBSCRIBE\r\nContact: <sip:alice@{at}>\r\nEvent: presence\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n",
        watchers.to_tags[call_id]
    );
    watchers
        .socket
        .send_to(refresh.as_bytes(), survivor.udp)
        .unwrap();
    watchers.to_tags.remove(call_id);
    watchers.until(Duration::from_secs(5), "the refresh's 200", |d| {
        d.to_tags.contains_key(call_id)
    });

    // The next change reaches each watcher once, from the survivor.
    watchers.hear_busy(&survivor, "After the takeover");
    // Between the kill and that change, each watcher heard the takeover
    // once: no duplicate, whichever node might have sent it.
    for (call_id, heard) in watchers.since(&before_kill) {
        let takeover = heard
            .iter()
            .filter(|h| !h.text.contains("After the takeover"))
            .count();
        assert_eq!(
            takeover,
            1 + usize::from(call_id == "tk-3"),
            "{call_id} heard {heard:?}"
        );
        let change = heard
            .iter()
            .filter(|h| h.text.contains("After the takeover"))
            .count();
        assert_eq!(change, 1, "{call_id} heard {heard:?}");
    }
    let status = survivor.api_get("/api/v1/status");
    assert_eq!(status["cluster"]["takeovers"], 1, "{status}");
    assert_eq!(status["subscriptions_active"], 20, "{status}");
}

#[test]
fn a_node_paused_past_its_lease_sends_nothing_for_watchers_taken_over() {
    let (redis, _one) = RedisCluster::start("paused");
    let survivor = start("cluster-paused-1", &node_config(&redis, "paused", 1, 4000));
    let paused = start("cluster-paused-2", &node_config(&redis, "paused", 2, 4000));
    let mut watchers = Dialogs::subscribe(&paused, "ps", 10);
    // Past the write-behind flush: the dialogs are in Redis.
    wait_for_saved(&redis, "paused", "2-0", 10);
    let before = watchers.marks();

    paused.signal("STOP");
    watchers.until(Duration::from_secs(20), "the survivor's takeover", |d| {
        d.since(&before).values().filter(|h| !h.is_empty()).count() == d.count
    });
    // A change while node 2 sleeps: the survivor tells every watcher. Node
    // 2 finds the change, and its own unanswered NOTIFYs' timers, when it
    // wakes.
    set_queue(&survivor, "away", "While node 2 slept");
    watchers.until(
        Duration::from_secs(10),
        "the change while node 2 slept",
        |d| {
            d.heard
                .values()
                .filter(|h| h.iter().any(|n| n.text.contains("While node 2 slept")))
                .count()
                == d.count
        },
    );
    paused.signal("CONT");
    // Node 2 wakes fenced, learns on renewing its lease that its watchers
    // were taken over, and drops them without a word.
    let deadline = Instant::now() + Duration::from_secs(15);
    while paused.api_get("/api/v1/status")["subscriptions_active"] != 0 {
        assert!(Instant::now() < deadline, "node 2 still holds its watchers");
        watchers.pump(Duration::from_millis(200));
    }
    watchers.pump(Duration::from_millis(200));
    let from_paused: Vec<Heard> = watchers
        .since(&before)
        .into_values()
        .flatten()
        .filter(|h| h.from == paused.udp)
        .collect();
    assert!(
        from_paused.is_empty(),
        "node 2 notified after its lease lapsed: {from_paused:?}"
    );
    // New watchers may subscribe to it again, in its new era.
    let fresh = Dialogs::subscribe(&paused, "fresh", 3);
    assert!(
        fresh.to_tags.values().all(|t| t.starts_with("2-1.")),
        "{:?}",
        fresh.to_tags
    );
}

#[test]
fn a_node_alone_joins_a_cluster_without_ending_its_dialogs() {
    let (redis, _one) = RedisCluster::start("join");
    // A node alone, with a store, holding watchers.
    let alone_config = config(
        &[
            (
                "min_notify_interval_ms = 5000",
                "min_notify_interval_ms = 0",
            ),
            ("renotify_window_secs = 30", "renotify_window_secs = 2"),
        ],
        "\n[[endpoint]]\nuri = \"sip:queue@contoso.com\"\ndisplay_name = \"Support Queue\"\n\
         [endpoint.registration]\npassword = \"s3cret\"\n",
    );
    let port = free_port();
    let alone_config = alone_config.replace(
        "udp = [\"127.0.0.1:0\"]",
        &format!("udp = [\"127.0.0.1:{port}\"]"),
    );
    let mut alone = start("cluster-join-1", &alone_config);
    let mut watchers = Dialogs::subscribe(&alone, "jn", 10);
    wait_for_written(&alone, 10);

    // It joins a cluster: the same file with [cluster] added, restarted.
    alone.kill_9();
    let (dir, path) = (alone.dir.clone(), alone.dir.join("porchlight.toml"));
    let member_config = as_member(&alone_config, &node_config(&redis, "join", 1, 4000));
    std::fs::write(&path, member_config).unwrap();
    let member = start_with_file(&path, dir);
    assert_eq!(member.api_get("/api/v1/status")["store"]["restored"], 10);
    let before = watchers.marks();
    watchers.until(
        Duration::from_secs(10),
        "the re-notify after joining",
        |d| d.since(&before).values().filter(|h| !h.is_empty()).count() == d.count,
    );
    for (call_id, heard) in watchers.since(&before) {
        assert_eq!(
            heard[0].from_tag, watchers.to_tags[&call_id],
            "{call_id} keeps its dialog"
        );
    }

    // A second node joins; the first dies; the second carries on every
    // dialog the node alone made.
    let second = start("cluster-join-2", &node_config(&redis, "join", 2, 4000));
    let mut member = member;
    // Past the first write-behind after joining: the dialogs are in Redis.
    wait_for_saved(&redis, "join", "1-0", 10);
    member.kill_9();
    let before = watchers.marks();
    watchers.until(Duration::from_secs(20), "the second node's takeover", |d| {
        d.since(&before).values().filter(|h| !h.is_empty()).count() == d.count
    });
    for (call_id, heard) in watchers.since(&before) {
        assert_eq!(heard[0].from, second.udp, "{call_id}");
        assert_eq!(
            heard[0].from_tag, watchers.to_tags[&call_id],
            "{call_id} keeps its dialog"
        );
    }
}

#[test]
fn a_drained_node_hands_every_watcher_to_another_once_and_takes_no_new_ones() {
    let (redis, _one) = RedisCluster::start("drain");
    let survivor = start("cluster-drain-1", &node_config(&redis, "drain", 1, 4000));
    let survivor_file = survivor.dir.join("porchlight.toml");

    // What a careless admin asks first: a number that is no member, and
    // the only live node, which no other would relieve.
    let (ok, said) = porchlight_at(&survivor_file, &["cluster", "drain", "9"]);
    assert!(!ok && said.contains("node 9 is not a member"), "{said}");
    let (ok, said) = porchlight_at(&survivor_file, &["cluster", "drain", "1"]);
    assert!(!ok && said.contains("only live node"), "{said}");

    let drained = start("cluster-drain-2", &node_config(&redis, "drain", 2, 4000));
    let mut watchers = Dialogs::subscribe(&drained, "dr", 20);
    let last_cseq: HashMap<String, u32> = watchers
        .heard
        .iter()
        .map(|(c, h)| (c.clone(), h.last().unwrap().cseq))
        .collect();
    // A watcher we did not write: baresip, held by the node to be drained.
    let baresip = Baresip::start(
        &drained.dir.join("baresip"),
        free_port(),
        &["account", "contact", "presence"],
        "<sip:alice@127.0.0.1>;regint=0",
        &format!("\"Queue\" <sip:queue@{}>;presence=p2p", drained.udp),
    );
    baresip.expect("Subscribing to 1 contacts", Duration::from_secs(10));
    let members_hold = |node: &Server, want: &[(u16, u64)]| {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let status = node.api_get("/api/v1/status");
            let members = status["cluster"]["members"].as_array().unwrap().clone();
            let held = |n: u16| {
                members
                    .iter()
                    .find(|m| m["node"] == n)
                    .and_then(|m| m["subscriptions"].as_u64())
            };
            if want.iter().all(|&(n, count)| held(n) == Some(count)) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "members never held {want:?}: {status}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // Every member says at its renewal how many it holds.
    members_hold(&survivor, &[(1, 0), (2, 21)]);

    // Drained from the other node: nothing was waited for, the drain saves
    // every dialog itself before it lets go.
    let before = watchers.marks();
    let said = porchlight_ok(&survivor_file, &["cluster", "drain", "2"]);
    assert!(
        said.contains("node 2 drains") && said.contains("21 subscriptions"),
        "{said}"
    );
    let (ok, said) = porchlight_at(&survivor_file, &["cluster", "drain", "2"]);
    assert!(!ok && said.contains("draining already"), "{said}");

    watchers.until(
        Duration::from_secs(20),
        "a NOTIFY from the survivor to every watcher",
        |d| d.since(&before).values().filter(|h| !h.is_empty()).count() == d.count,
    );
    watchers.assert_taken_over(&watchers.since(&before), &survivor, &last_cseq);
    let status = members_hold(&survivor, &[(1, 21), (2, 0)]);
    assert_eq!(status["cluster"]["takeovers"], 1, "{status}");
    let drained_member = status["cluster"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node"] == 2)
        .unwrap()
        .clone();
    assert_eq!(drained_member["draining"], true, "{status}");
    let shown = porchlight_ok(&survivor_file, &["status"]);
    assert!(shown.contains("0 subscriptions, draining"), "{shown}");
    let metrics = ureq::get(&format!("http://{}/metrics", survivor.api().0))
        .set("Authorization", &survivor.api().1)
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains("porchlight_cluster_member_draining{node=\"2\"} 1"),
        "{metrics}"
    );

    // The drained node takes no new watcher: it asks it to retry elsewhere.
    let fresh = subscribe_to(
        "queue",
        watchers.socket.local_addr().unwrap(),
        "dr-new",
        "drn",
    );
    let answers = udp_exchange(drained.udp, fresh.as_bytes(), Duration::from_secs(2));
    let answer = answers
        .iter()
        .find(|m| m.status().is_some())
        .expect("an answer");
    assert_eq!(answer.status(), Some(503), "{answer:?}");

    // The next change reaches every watcher once, from the survivor, and
    // baresip shows it; the drained node sent nothing since the drain.
    watchers.hear_busy(&survivor, "After the drain");
    baresip.expect(
        "changed status from Offline to Busy",
        Duration::from_secs(10),
    );
    watchers.pump(Duration::from_secs(1));
    for (call_id, heard) in watchers.since(&before) {
        assert_eq!(
            heard.len(),
            2,
            "{call_id}: the takeover and the change, once each: {heard:?}"
        );
        assert!(
            heard.iter().all(|h| h.from == survivor.udp),
            "{call_id}: {heard:?}"
        );
    }
}

#[test]
fn cluster_init_hands_a_stopped_node_alones_watchers_to_the_running_members() {
    let (redis, _one) = RedisCluster::start("init");
    let member = start("cluster-init-1", &node_config(&redis, "init", 1, 4000));
    // A node alone, with a store, holding watchers; then stopped.
    let alone_config = config(
        &[("renotify_window_secs = 30", "renotify_window_secs = 2")],
        "\n[[endpoint]]\nuri = \"sip:queue@contoso.com\"\ndisplay_name = \"Support Queue\"\n",
    );
    let mut alone = start("cluster-init-alone", &alone_config);
    let mut watchers = Dialogs::subscribe(&alone, "in", 10);
    wait_for_written(&alone, 10);
    let store = alone.dir.join("porchlight-data");
    let handover = alone.dir.join("member.toml");
    let member_config = as_member(&alone_config, &node_config(&redis, "init", 2, 4000));
    std::fs::write(&handover, member_config).unwrap();
    let init = |file: &std::path::Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_porchlight"))
            .args(["cluster", "init", "--from-store"])
            .arg(&store)
            .arg("--config")
            .arg(file)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };

    // What a careless admin tries first: the node still running, and a
    // configuration without [cluster].
    let (ok, said) = init(&handover);
    assert!(!ok && said.contains("stop the node first"), "{said}");
    alone.kill_9();
    let (ok, said) = init(&alone.dir.join("porchlight.toml"));
    assert!(!ok && said.contains("has no [cluster] section"), "{said}");

    let before = watchers.marks();
    let (ok, said) = init(&handover);
    assert!(ok, "{said}");
    assert!(
        said.contains("10 subscriptions") && said.contains("node 1 took them over"),
        "{said}"
    );
    watchers.until(
        Duration::from_secs(20),
        "a NOTIFY from the member to every watcher",
        |d| d.since(&before).values().filter(|h| !h.is_empty()).count() == d.count,
    );
    for (call_id, heard) in watchers.since(&before) {
        assert_eq!(heard[0].from, member.udp, "{call_id}");
        assert_eq!(
            heard[0].from_tag, watchers.to_tags[&call_id],
            "{call_id} keeps its dialog"
        );
        assert!(
            heard[0].text.starts_with("active"),
            "{call_id}: {}",
            heard[0].text
        );
    }
    assert_eq!(member.api_get("/api/v1/status")["subscriptions_active"], 10);

    // Handed over once: the store keeps them no more, so neither a second
    // init nor the node started alone again can notify them twice.
    let (ok, said) = init(&handover);
    assert!(ok && said.contains("0 subscriptions"), "{said}");
    let again = start_with_file(&alone.dir.join("porchlight.toml"), alone.dir.clone());
    assert_eq!(again.api_get("/api/v1/status")["store"]["restored"], 0);
}
