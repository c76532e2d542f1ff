//! Starts the real `porchlight` binary on ephemeral ports and talks to it
//! over real sockets.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use porchlight_sip::{Framing, Limits, Message, MessageWriter};
use porchlight_transport::pki::{AltName, CertificateAuthority, IssuedCertificate};
use porchlight_transport::{
    ClientAuth, Protocol, Received, Target, TlsSettings, Transport, TransportConfig,
};

pub struct Server {
    child: Child,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub tls: SocketAddr,
    /// The admin API, when the configuration turns it on.
    pub admin: Option<SocketAddr>,
    pub dir: PathBuf,
}

impl Server {
    /// The admin API's address and `Authorization` value (the token the
    /// node wrote at start).
    pub fn api(&self) -> (SocketAddr, String) {
        let token = std::fs::read_to_string(self.dir.join("porchlight-admin.token")).unwrap();
        (self.admin.unwrap(), format!("Bearer {}", token.trim()))
    }

    /// `GET` of an admin API path (`/api/v1/…`); its JSON answer.
    pub fn api_get(&self, path: &str) -> serde_json::Value {
        let (admin, bearer) = self.api();
        ureq::get(&format!("http://{admin}{path}"))
            .set("Authorization", &bearer)
            .call()
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .into_json()
            .unwrap()
    }

    /// The node's `/metrics` text.
    pub fn metrics(&self) -> String {
        let (admin, bearer) = self.api();
        ureq::get(&format!("http://{admin}/metrics"))
            .set("Authorization", &bearer)
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    }

    /// The value of the `/metrics` sample that starts with `sample` (name
    /// and labels).
    pub fn metric(&self, sample: &str) -> u64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {sample} in /metrics"))
    }

    /// How many lines of the node's log so far contain `needle`.
    pub fn log_lines(&self, needle: &str) -> usize {
        std::fs::read_to_string(self.dir.join("server.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// The node's resident memory in KiB, as the kernel counts it.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc status")
    }

    /// Sends the process `signal` (`STOP`, `CONT`, …), as `kill -SIGNAL` does.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{signal}");
    }

    /// Ends the process with SIGKILL, as a crash would: nothing is flushed
    /// or closed by the server itself.
    pub fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls until `done` holds, for at most `within`; whether it did.
pub fn eventually(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("porchlight-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The embedded defaults for contoso.com on loopback ephemeral ports,
/// with `edits` applied as (old, new) replacements, then `extra` appended.
pub fn config(edits: &[(&str, &str)], extra: &str) -> String {
    let loopback = [
        ("udp = [\"0.0.0.0:5060\"]", "udp = [\"127.0.0.1:0\"]"),
        ("tcp = [\"0.0.0.0:5060\"]", "tcp = [\"127.0.0.1:0\"]"),
        ("tls = [\"0.0.0.0:5061\"]", "tls = [\"127.0.0.1:0\"]"),
        ("listen = \"127.0.0.1:8088\"", "listen = \"127.0.0.1:0\""),
    ];
    let edits: Vec<(&str, &str)> = loopback.into_iter().chain(edits.iter().copied()).collect();
    porchlight_node::testkit::contoso_config(&edits, extra)
}

pub fn start(name: &str, config_text: &str) -> Server {
    let dir = temp_dir(name);
    let path = dir.join("porchlight.toml");
    std::fs::write(&path, config_text).unwrap();
    start_with_file(&path, dir)
}

pub fn start_with_file(path: &std::path::Path, dir: PathBuf) -> Server {
    start_with_args(path, dir, &[])
}

/// [`start_with_file`] with more `serve` arguments (e.g. `--json-logs`).
pub fn start_with_args(path: &std::path::Path, dir: PathBuf, args: &[&str]) -> Server {
    let ready = dir.join("listening.json");
    let _ = std::fs::remove_file(&ready);
    let mut child = Command::new(env!("CARGO_BIN_EXE_porchlight"))
        .args(["serve", "--config"])
        .arg(path)
        .arg("--ready-file")
        .arg(&ready)
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("PORCHLIGHT_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("porchlight binary runs");
    // The log is kept next to the configuration, for diagnosis, and shown
    // with a failing test's output.
    let stdout = child.stdout.take().unwrap();
    let mut log = std::fs::File::create(dir.join("server.log")).unwrap();
    std::thread::spawn(move || {
        use std::io::Write;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            eprintln!("[node] {line}");
            let _ = writeln!(log, "{line}");
        }
    });
    // The node says where it listens in a file once everything is bound.
    let mut listening = None;
    let bound = eventually(Duration::from_secs(20), || {
        listening = std::fs::read(&ready)
            .ok()
            .and_then(|json| serde_json::from_slice::<porchlight_server::Listening>(&json).ok());
        listening.is_some() || child.try_wait().unwrap().is_some()
    });
    let listening = listening.unwrap_or_else(|| {
        let _ = child.kill();
        panic!(
            "the node reported no listeners (bound: {bound}); see {}",
            dir.display()
        )
    });
    Server {
        child,
        udp: listening.udp.expect("a UDP listener"),
        tcp: listening.tcp.expect("a TCP listener"),
        tls: listening.tls.expect("a TLS listener"),
        admin: listening.admin,
        dir,
    }
}

pub fn parse(bytes: &[u8]) -> Message {
    Message::parse(
        Bytes::copy_from_slice(bytes),
        Framing::Stream,
        &Limits::default(),
    )
    .unwrap_or_else(|e| {
        panic!(
            "response does not parse: {e}\n{}",
            String::from_utf8_lossy(bytes)
        )
    })
}

/// Receives one datagram (None on the socket's timeout), answering a
/// NOTIFY with 200 as a watcher must.
pub fn receive_answering(socket: &UdpSocket) -> Option<Message> {
    let mut buf = vec![0u8; 65536];
    let (n, from) = socket.recv_from(&mut buf).ok()?;
    let m = Message::parse(
        Bytes::copy_from_slice(&buf[..n]),
        Framing::Datagram,
        &Limits::default(),
    )
    .unwrap();
    if m.method() == Some("NOTIFY") {
        let ok = porchlight_sip::response_to(&m, 200, "OK", None, None).finish(b"");
        socket.send_to(&ok, from).unwrap();
    }
    Some(m)
}

/// A SUBSCRIBE from alice@fabrikam.com at `watcher` to the help desk.
pub fn subscribe_to_helpdesk(watcher: SocketAddr, call_id: &str, tag: &str) -> String {
    subscribe_to("helpdesk", watcher, call_id, tag)
}

/// A SUBSCRIBE from alice@fabrikam.com at `watcher` to `user`@contoso.com.
pub fn subscribe_to(user: &str, watcher: SocketAddr, call_id: &str, tag: &str) -> String {
    format!(
        "SUBSCRIBE sip:{user}@contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP {watcher};branch=z9hG4bK{tag};rport\r\nMax-Forwards: 70\r\n\
         From: <sip:alice@fabrikam.com>;tag={tag}\r\nTo: <sip:{user}@contoso.com>\r\nCall-ID: {call_id}\r\nCSeq: 1 SUBSCRIBE\r\n\
         Contact: <sip:alice@{watcher}>\r\nEvent: presence\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
    )
}

/// The embedded help desk's note line, after which its sub-tables go.
pub const HELPDESK_NOTE: &str = "note = \"Ask me anything\"\n";

/// The help desk's note line followed by a health probe of
/// `127.0.0.1:port` every second, one failure counting as down.
pub fn with_health_probe(port: u16) -> String {
    format!(
        "{HELPDESK_NOTE}[endpoint.health]\nurl = \"http://127.0.0.1:{port}/health\"\n\
         interval_secs = 1\ntimeout_ms = 500\nfailures = 1\n"
    )
}

/// Sends one datagram and returns the datagrams received within `wait`.
pub fn udp_exchange(server: SocketAddr, request: &[u8], wait: Duration) -> Vec<Message> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(wait)).unwrap();
    socket.send_to(request, server).unwrap();
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok((n, _)) = socket.recv_from(&mut buf) {
        out.push(parse(&buf[..n]));
    }
    out
}

/// A request with the mandatory headers; `via_host` and `extra` vary it.
pub fn request(method: &str, uri: &str, extra: &str) -> Vec<u8> {
    format!(
        "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP client.invalid:5099;branch=z9hG4bK-{n};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@fabrikam.com>;tag=a{n}\r\nTo: <{uri}>\r\n\
         Call-ID: test-{n}@client.invalid\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n",
        n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    )
    .into_bytes()
}

/// `porchlight explain` for a presence request to the help desk against
/// the server's configuration, with the peer certificate proving `peer`:
/// (allowed, the printed steps).
pub fn explain(server: &Server, from: &str, peer: &str) -> (bool, String) {
    explain_with(
        server,
        &[
            "--from",
            from,
            "--to",
            "sip:helpdesk@contoso.com",
            "--kind",
            "presence",
            "--peer",
            peer,
        ],
    )
}

/// `porchlight explain` with these arguments against the server's
/// configuration: (allowed, the printed steps).
pub fn explain_with(server: &Server, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_porchlight"))
        .arg("explain")
        .args(args)
        .arg("--config")
        .arg(server.dir.join("porchlight.toml"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

pub fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../sip/tests/fixtures/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

pub fn repo_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// A CA for one test, with the edge certificate for contoso.com written
/// to `dir` as edge.crt, edge.key and ca.pem.
pub struct Pki {
    pub ca: CertificateAuthority,
    pub dir: std::path::PathBuf,
    /// How long the leaves it issues are valid; None: far in the future.
    valid_for: Option<Duration>,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        Pki::with_leaves_valid_for(name, None)
    }

    /// A Pki whose leaves, the edge's among them, expire `valid_for` from now.
    pub fn with_leaves_valid_for(name: &str, valid_for: Option<Duration>) -> Pki {
        let dir = temp_dir(name);
        let ca = CertificateAuthority::new("federation CA").unwrap();
        let pki = Pki { ca, dir, valid_for };
        pki.write_leaf(&pki.dir, "edge", "contoso.com");
        pki
    }

    /// A node config for contoso.com whose loopback is not trusted, so the
    /// test's TLS peer is an outsider; `policy` replaces parts of [policy].
    pub fn config(&self, policy: &[(&str, &str)]) -> String {
        let mut edits = vec![(
            "trusted_networks = [\"127.0.0.0/8\", \"::1/128\"]",
            "trusted_networks = []",
        )];
        edits.extend_from_slice(policy);
        config(
            &edits,
            &format!(
                "\n[tls]\ncertificate = \"{0}/edge.crt\"\nprivate_key = \"{0}/edge.key\"\ntrusted_cas = \"{0}/ca.pem\"\n",
                self.dir.display()
            ),
        )
    }

    /// A certificate proving `domain` (SAN `sip:` URI and dNSName).
    fn leaf(&self, domain: &str) -> IssuedCertificate {
        self.ca
            .issue_valid_for(
                domain,
                &[AltName::Uri(&format!("sip:{domain}")), AltName::Dns(domain)],
                self.valid_for,
            )
            .unwrap()
    }

    /// Issues a certificate proving `domain` and writes it to `dir` as `<stem>.crt` and `<stem>.key`.
    pub fn write_leaf(&self, dir: &std::path::Path, stem: &str, domain: &str) {
        let leaf = self.leaf(domain);
        std::fs::write(dir.join(format!("{stem}.crt")), &leaf.chain_pem).unwrap();
        std::fs::write(dir.join(format!("{stem}.key")), &leaf.key_pem).unwrap();
        std::fs::write(dir.join("ca.pem"), &self.ca.cert_pem).unwrap();
    }

    pub async fn partner(
        &self,
        domain: &str,
    ) -> (Transport, tokio::sync::mpsc::Receiver<Received>) {
        let leaf = self.leaf(domain);
        let tls = TlsSettings::from_pem(
            leaf.chain_pem.as_bytes(),
            leaf.key_pem.as_bytes(),
            self.ca.cert_pem.as_bytes(),
            ClientAuth::Required,
        )
        .unwrap();
        Transport::bind(TransportConfig {
            tls_settings: Some(tls),
            ..TransportConfig::default()
        })
        .await
        .unwrap()
    }
}

/// A baresip process whose output lines the test reads.
pub struct Baresip {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Its UDP console (the `cons` module), for commands like `/contacts`.
    console: SocketAddr,
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Baresip {
    /// Starts baresip with a config directory holding `config`, `accounts`
    /// and `contacts`, and a UDP console for commands.
    pub fn start(
        dir: &Path,
        listen_port: u16,
        modules: &[&str],
        account: &str,
        contacts: &str,
    ) -> Baresip {
        Baresip::start_with(dir, listen_port, modules, "", account, contacts)
    }

    /// [`Baresip::start`] with more configuration lines (`extra`), e.g.
    /// codecs and an audio source for calls.
    pub fn start_with(
        dir: &Path,
        listen_port: u16,
        modules: &[&str],
        extra: &str,
        account: &str,
        contacts: &str,
    ) -> Baresip {
        std::fs::create_dir_all(dir).unwrap();
        let console = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut config = format!(
            "sip_listen 127.0.0.1:{listen_port}\nmodule_path /usr/lib/baresip/modules\n\
             module cons.so\ncons_listen {console}\nmodule_app menu.so\n{extra}"
        );
        for m in modules {
            config.push_str(&format!("module_app {m}.so\n"));
        }
        std::fs::write(dir.join("config"), config).unwrap();
        std::fs::write(dir.join("accounts"), format!("{account}\n")).unwrap();
        std::fs::write(dir.join("contacts"), format!("{contacts}\n")).unwrap();
        // Line-buffered, so each line reaches the test when printed rather
        // than when a pipe buffer fills.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "-eL", "baresip"])
            .arg("-f")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("baresip is installed (scripts/test.sh installs baresip-core)");
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    // Drop the colour escapes baresip puts around status words.
                    if tx.send(plain(&line)).is_err() {
                        break;
                    }
                }
            });
        }
        Baresip {
            child,
            lines,
            console,
        }
    }

    /// The contact list as `/contacts` prints it, with each contact's
    /// presence status.
    pub fn contacts(&self) -> String {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        socket.send_to(b"/contacts\n", self.console).unwrap();
        let mut text = String::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = socket.recv(&mut buf) {
            text.push_str(&plain(&String::from_utf8_lossy(&buf[..n])));
            if text.contains("--- Contacts") && text.ends_with("\n\n") {
                break;
            }
        }
        text
    }

    /// Runs a console command, returning what baresip printed for it.
    pub fn command(&self, command: &str) -> String {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(400)))
            .unwrap();
        socket
            .send_to(format!("{command}\n").as_bytes(), self.console)
            .unwrap();
        let mut text = String::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = socket.recv(&mut buf) {
            text.push_str(&plain(&String::from_utf8_lossy(&buf[..n])));
        }
        text
    }

    /// A console client that stays: baresip prints what it shows the user
    /// (incoming IM, for one) to the client that spoke last.
    pub fn attach(&self) -> Console {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(self.console).unwrap();
        socket.send(b"/reginfo\n").unwrap();
        Console {
            socket,
            seen: String::new(),
        }
    }

    /// Waits until `/contacts` shows `contact` with `status`.
    pub fn expect_status(&self, contact: &str, status: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let list = self.contacts();
            if list
                .lines()
                .any(|l| l.contains(contact) && l.contains(&format!(" {status} ")))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "baresip never showed {contact} {status}; its contacts:\n{list}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits for a line containing `needle`, returning every line seen.
    pub fn expect(&self, needle: &str, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    seen.push(line);
                    if found {
                        return seen;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "baresip never printed {needle:?}; it printed:\n{}",
            seen.join("\n")
        );
    }
}

/// A baresip console client kept open (see [`Baresip::attach`]).
pub struct Console {
    socket: UdpSocket,
    seen: String,
}

impl Console {
    /// Runs a command through this client, so what baresip prints next
    /// still comes here.
    pub fn send(&mut self, command: &str) {
        self.socket.send(format!("{command}\n").as_bytes()).unwrap();
    }

    /// Waits for `needle` in what the console printed since it attached.
    pub fn expect(&mut self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        let mut buf = vec![0u8; 65536];
        while !self.seen.contains(needle) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                panic!(
                    "the console never printed {needle:?}; it printed:\n{}",
                    self.seen
                );
            };
            self.socket
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            if let Ok(n) = self.socket.recv(&mut buf) {
                self.seen
                    .push_str(&plain(&String::from_utf8_lossy(&buf[..n])));
            }
        }
    }
}

/// Drops the colour escapes baresip puts around status words.
fn plain(text: &str) -> String {
    text.replace("\u{1b}[32m", "")
        .replace("\u{1b}[31m", "")
        .replace("\u{1b}[;m", "")
}

/// A loopback port another program (a node, baresip, Kamailio, dnsmasq)
/// will bind, free for both UDP and TCP along with the next one, since
/// baresip puts its TLS transport on `port + 1`.
///
/// Ports come from below the kernel's ephemeral range (32768 and up): a
/// port handed out by binding port 0 can be taken by any outgoing
/// connection between the test choosing it and the program binding it,
/// which made runs fail now and then with "Address already in use". Each
/// test binary starts at its own offset, so binaries running side by side
/// rarely meet.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let offset = std::process::id() % 110 * 200;
    let _ = NEXT.compare_exchange(u32::MAX, offset, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..SPAN / 2 {
        let port = (FIRST + NEXT.fetch_add(2, Ordering::SeqCst) % SPAN) as u16;
        let free = |port: u16| {
            UdpSocket::bind(("127.0.0.1", port)).is_ok()
                && TcpListener::bind(("127.0.0.1", port)).is_ok()
        };
        if free(port) && free(port + 1) {
            return port;
        }
    }
    panic!("no free loopback port between {FIRST} and {}", FIRST + SPAN);
}

/// A dnsmasq serving only the records given (`--srv-host=…`,
/// `--host-record=…`, `--naptr-record=…`) for names under `.test`, on
/// loopback at `port`.
pub struct Dnsmasq(Child);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Dnsmasq {
    /// Starts it and waits until it answers.
    pub fn start<S: AsRef<std::ffi::OsStr>>(port: u16, records: &[S]) -> Dnsmasq {
        // Debian installs it in /usr/sbin, which is not on every user's PATH.
        let program = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("dnsmasq");
        let child = Command::new(program)
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--local=/test/",
                "--pid-file=",
                "--user=root",
                "--log-facility=-",
            ])
            .arg(format!("--port={port}"))
            .args(records)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq is installed (scripts/test.sh installs dnsmasq-base)");
        // Owned from here on, so it is stopped whatever happens next.
        let mut dnsmasq = Dnsmasq(child);
        // Ready once a query (A ready.test) gets any answer.
        let query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ready\x04test\x00\x00\x01\x00\x01";
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = [0u8; 512];
        loop {
            let _ = socket.send_to(query, ("127.0.0.1", port));
            if socket.recv(&mut buf).is_ok() {
                return dnsmasq;
            }
            if let Ok(Some(status)) = dnsmasq.0.try_wait() {
                panic!("dnsmasq exited ({status}): is port {port} taken?");
            }
            assert!(Instant::now() < deadline, "dnsmasq never answered");
        }
    }
}

/// An app health URL that answers 200 or 503 as the test decides.
pub fn health_server(healthy: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let status = if healthy.load(Ordering::SeqCst) {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    port
}

/// A Kamailio instance acting as a partner domain's edge proxy.
pub struct Kamailio {
    child: Child,
    pub udp_port: u16,
    pub tls_port: u16,
    pub log: std::path::PathBuf,
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        // SIGTERM lets the main process stop its children; SIGKILL would
        // leave them holding the ports.
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Kamailio {
    /// Starts Kamailio as the edge of `domain`, with a certificate for
    /// `domain` from the test CA, relaying requests for contoso.com to
    /// Porchlight's TLS listener `edge`.
    pub fn start(pki: &Pki, name: &str, domain: &str, edge: SocketAddr) -> Kamailio {
        let dir = temp_dir(&format!("kamailio-{name}"));
        pki.write_leaf(&dir, "partner", domain);
        let d = dir.display();
        let profile = format!(
            "method = TLSv1.2+\nverify_certificate = yes\nrequire_certificate = yes\n\
             private_key = {d}/partner.key\ncertificate = {d}/partner.crt\nca_list = {d}/ca.pem\n"
        );
        std::fs::write(
            dir.join("tls.cfg"),
            format!("[server:default]\n{profile}\n[client:default]\n{profile}"),
        )
        .unwrap();
        let udp_port = free_port();
        let tls_port = free_port();
        let template = include_str!("../kamailio/partner.cfg");
        let config = template
            .replace("@DOMAIN@", domain)
            .replace("@UDP_PORT@", &udp_port.to_string())
            .replace("@TLS_PORT@", &tls_port.to_string())
            .replace("@DIR@", &d.to_string())
            .replace("@FEDERATED_DOMAIN@", "contoso.com")
            .replace("@EDGE_PORT@", &edge.port().to_string());
        std::fs::write(dir.join("kamailio.cfg"), config).unwrap();
        let log = std::fs::File::create(dir.join("kamailio.log")).unwrap();
        let child = Command::new("kamailio")
            .arg("-f")
            .arg(dir.join("kamailio.cfg"))
            .args(["-DD", "-E", "-m", "64", "-M", "8", "-Y"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("kamailio is installed (scripts/test.sh installs it)");
        let mut kamailio = Kamailio {
            child,
            udp_port,
            tls_port,
            log: dir.join("kamailio.log"),
        };
        // Ready once it answers over UDP (its 404 for a stranger's OPTIONS).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = kamailio.child.try_wait() {
                panic!(
                    "kamailio exited with {status}:\n{}",
                    std::fs::read_to_string(dir.join("kamailio.log")).unwrap_or_default()
                );
            }
            let answers = udp_exchange(
                kamailio.udp(),
                &request("OPTIONS", "sip:nobody@nowhere.invalid", ""),
                Duration::from_millis(300),
            );
            if !answers.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "kamailio never answered");
        }
        kamailio
    }

    pub fn udp(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.udp_port))
    }
}

/// Runs one SIPp call (`-m 1`) with `args`, bounded to 30 s.
pub fn sipp(args: &[&str]) -> Child {
    sipp_calls(args, 1)
}

/// SIPp making `calls` calls of its scenario (at its `-r` rate, when
/// given), failing if any fails or the run passes 30 s.
pub fn sipp_calls(args: &[&str], calls: u32) -> Child {
    Command::new("sipp")
        .args(args)
        .args(["-m", &calls.to_string()])
        .args(["-timeout", "30s", "-timeout_error", "-nostdin"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sipp is installed (scripts/test.sh installs sip-tester)")
}

/// Waits (at most 40 s) for a SIPp run and asserts it succeeded.
pub fn finished_ok(mut child: Child, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            assert!(status.success(), "{name} failed ({status}): {err}");
            return;
        }
        assert!(Instant::now() < deadline, "{name} did not finish");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A SIPp scenario under `bench/sipp`.
pub fn scenario(name: &str) -> String {
    format!("{}/../../bench/sipp/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A SIPp user of fabrikam.com (`sip:carol@fabrikam.com`) running
/// `scenario_file` through its domain's proxy, calling `user`@contoso.com.
pub fn sipp_caller(proxy: SocketAddr, scenario_file: &str, user: &str) -> Child {
    sipp(&[
        &proxy.to_string(),
        "-sf",
        &scenario(scenario_file),
        "-s",
        user,
        "-key",
        "domain",
        "contoso.com",
        "-key",
        "caller",
        "sip:carol@fabrikam.com",
        "-i",
        "127.0.0.1",
        "-p",
        &free_port().to_string(),
    ])
}

/// A MESSAGE (RFC 3428) over UDP from a socket on `ip`, `from` being the
/// From header's address part; its final response (40 s at most, enough
/// for a branch's Timer F).
pub fn udp_message(ip: &str, server: SocketAddr, from: &str, to: &str, text: &str) -> Message {
    let socket = UdpSocket::bind((ip, 0)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(40)))
        .unwrap();
    let local = socket.local_addr().unwrap();
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let bytes = format!(
        "MESSAGE {to} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-im{n};rport\r\n\
         Max-Forwards: 70\r\nFrom: {from};tag=im{n}\r\nTo: <{to}>\r\n\
         Call-ID: im-{n}@test.invalid\r\nCSeq: 1 MESSAGE\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\n\r\n{text}",
        text.len()
    );
    socket.send_to(bytes.as_bytes(), server).unwrap();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no final response to the MESSAGE for {to}: {e}"));
        let response = parse(&buf[..n]);
        if response.status().is_some_and(|s| s >= 200) {
            return response;
        }
    }
}

/// Runs a `porchlight` command against the node configured in `file`:
/// whether it succeeded, and what it printed (standard output, then error).
pub fn porchlight_at(file: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_porchlight"))
        .args(args)
        .arg("--config")
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// [`porchlight_at`] for a command that must succeed; what it printed.
pub fn porchlight_ok(file: &Path, args: &[&str]) -> String {
    let (success, text) = porchlight_at(file, args);
    assert!(success, "{args:?}: {text}");
    text
}

/// A watcher speaking SIP over its own UDP socket: one subscription dialog
/// at a time from `from` to `target`, sent to `proxy` (the node, or a
/// partner's proxy in front of it). The route set is learned from the
/// Record-Route of the answer that set up the dialog (RFC 3261 §12.1.2),
/// so a refresh follows the proxies that asked to stay in the path.
pub struct Watcher {
    socket: UdpSocket,
    proxy: SocketAddr,
    target: String,
    from: String,
    to_tag: Option<String>,
    /// Where requests in the dialog go: the answer's Contact (§12.1.2).
    remote_target: Option<String>,
    /// Route entries for requests in the dialog, in the order to send.
    pub route_set: Vec<String>,
    cseq: u32,
    dialogs: u32,
    /// NOTIFYs that arrived while waiting for a response.
    notifies: VecDeque<Message>,
    /// Header lines (CRLF-terminated) added to each new SUBSCRIBE.
    pub extra_headers: String,
}

impl Watcher {
    pub fn new(proxy: SocketAddr, target: &str, from: &str) -> Watcher {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Watcher {
            socket,
            proxy,
            target: target.to_owned(),
            from: from.to_owned(),
            to_tag: None,
            remote_target: None,
            route_set: Vec::new(),
            cseq: 0,
            dialogs: 1,
            notifies: VecDeque::new(),
            extra_headers: String::new(),
        }
    }

    /// Forgets the dialog: the next SUBSCRIBE starts a new one.
    pub fn new_dialog(&mut self) {
        self.to_tag = None;
        self.remote_target = None;
        self.route_set.clear();
        self.dialogs += 1;
    }

    /// Sends a SUBSCRIBE in the dialog (or a new one) and returns the
    /// final response; a 2xx to a new one sets up the dialog.
    pub fn subscribe(&mut self, expires: u32) -> Message {
        self.cseq += 1;
        let local = self.socket.local_addr().unwrap();
        let to_tag = self
            .to_tag
            .as_ref()
            .map(|t| format!(";tag={t}"))
            .unwrap_or_default();
        let routes: String = self
            .route_set
            .iter()
            .map(|r| format!("Route: {r}\r\n"))
            .collect();
        let (target, from, cseq, dialog) = (&self.target, &self.from, self.cseq, self.dialogs);
        let request_uri = self.remote_target.as_ref().unwrap_or(target);
        let extra = if self.to_tag.is_none() {
            self.extra_headers.as_str()
        } else {
            ""
        };
        let request = format!(
            "SUBSCRIBE {request_uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKw{dialog}x{cseq};rport\r\n\
             Max-Forwards: 70\r\n{routes}{extra}From: <{from}>;tag=w{dialog}\r\nTo: <{target}>{to_tag}\r\n\
             Call-ID: watcher-{dialog}-{port}\r\nCSeq: {cseq} SUBSCRIBE\r\nContact: <sip:watcher@{local}>\r\n\
             Event: presence\r\nAccept: application/pidf+xml\r\nExpires: {expires}\r\nContent-Length: 0\r\n\r\n",
            port = local.port(),
        );
        self.socket.send_to(request.as_bytes(), self.proxy).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let Some(m) = receive_answering(&self.socket) else {
                continue;
            };
            if m.method() == Some("NOTIFY") {
                self.notifies.push_back(m);
            } else if m.status().is_some_and(|s| s >= 200) {
                if m.status() == Some(200) && self.to_tag.is_none() {
                    self.to_tag = m.to().unwrap().tag().map(str::to_owned);
                    self.remote_target = match m.contacts() {
                        Ok(porchlight_sip::Contacts::List(list)) => {
                            list.first().map(|c| c.uri.as_str().to_owned())
                        }
                        _ => None,
                    };
                    let mut routes: Vec<String> = m
                        .items(porchlight_sip::HeaderName::RecordRoute)
                        .map(|r| r.unwrap().to_owned())
                        .collect();
                    routes.reverse();
                    self.route_set = routes;
                }
                return m;
            }
        }
        panic!("no final response to the SUBSCRIBE");
    }

    /// Every NOTIFY that arrives within `wait`, as text.
    pub fn notifies_within(&mut self, wait: Duration) -> Vec<String> {
        let deadline = Instant::now() + wait;
        let mut heard: Vec<String> = self
            .notifies
            .drain(..)
            .map(|m| String::from_utf8_lossy(m.as_bytes().as_ref()).into_owned())
            .collect();
        while Instant::now() < deadline {
            if let Some(m) = receive_answering(&self.socket) {
                heard.push(String::from_utf8_lossy(m.as_bytes().as_ref()).into_owned());
            }
        }
        heard
    }

    /// Answers whatever the node has sent and keeps its NOTIFYs for
    /// [`expect_notify`](Self::expect_notify), as a watcher that stays
    /// up does (a retransmitted NOTIFY is answered again).
    pub fn answer_pending(&mut self) {
        while let Some(m) = receive_answering(&self.socket) {
            if m.method() == Some("NOTIFY") {
                self.notifies.push_back(m);
            }
        }
    }

    /// The next NOTIFY whose body or headers contain `needle`, skipping
    /// earlier ones (a change may be preceded by the state before it).
    pub fn expect_notify(&mut self, needle: &str, within: Duration) -> Message {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let next = self
                .notifies
                .pop_front()
                .or_else(|| receive_answering(&self.socket));
            if let Some(m) = next.filter(|m| m.method() == Some("NOTIFY")) {
                let text = String::from_utf8_lossy(m.as_bytes().as_ref()).into_owned();
                if text.contains(needle) {
                    return m;
                }
                seen.push(text);
            }
            assert!(
                Instant::now() < deadline,
                "no NOTIFY with {needle:?}; saw:\n{}",
                seen.join("\n---\n")
            );
        }
    }
}

/// The next message the node sends a partner's transport, within 10 s.
pub async fn next_from_node(
    rx: &mut tokio::sync::mpsc::Receiver<Received>,
) -> (Message, porchlight_transport::Origin) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Received::Message(m, origin))) => return (m, origin),
            Ok(Some(_)) => continue,
            _ => panic!("nothing arrived from the node"),
        }
    }
}

/// A new `method` request from `from` to `to` as a partner edge of
/// `partner_domain` writes it, for the caller to add to and finish.
pub fn partner_writer(partner_domain: &str, method: &str, from: &str, to: &str) -> MessageWriter {
    // Each call a new transaction and dialog, however alike the requests.
    static SENT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = SENT.fetch_add(1, Ordering::Relaxed);
    let mut w = MessageWriter::request(method, to);
    w.header(
        "Via",
        format!("SIP/2.0/TLS edge.{partner_domain};branch=z9hG4bK-fed{n}"),
    )
    .header("Max-Forwards", "70")
    .header("From", format!("<{from}>;tag=f"))
    .header("To", format!("<{to}>"))
    .header(
        "Call-ID",
        format!("fed{n}-{partner_domain}-{from}-{method}"),
    )
    .header("CSeq", format!("1 {method}"))
    .header(
        "Contact",
        format!("<sip:edge.{partner_domain};transport=tls>"),
    );
    if method == "SUBSCRIBE" {
        w.header("Event", "presence").header("Expires", "600");
    }
    w
}

/// Sends `request` to `server` over a new mutual-TLS connection proving
/// `partner_domain`: the connection, kept for what the node sends back.
pub async fn partner_send(
    pki: &Pki,
    server: &Server,
    partner_domain: &str,
    request: Bytes,
) -> (Transport, tokio::sync::mpsc::Receiver<Received>) {
    let (transport, rx) = pki.partner(partner_domain).await;
    let target = Target::Address {
        protocol: Protocol::Tls,
        addr: server.tls,
        domain: Some("contoso.com".into()),
    };
    transport.send(&target, request).await.unwrap();
    (transport, rx)
}

/// The final status of a new `method` request from `from` to `to`, sent by
/// a partner edge proving `partner_domain` over mutual TLS.
pub async fn partner_request(
    pki: &Pki,
    server: &Server,
    partner_domain: &str,
    method: &str,
    from: &str,
    to: &str,
) -> u16 {
    let request = partner_writer(partner_domain, method, from, to).finish(b"");
    let (_connection, mut rx) = partner_send(pki, server, partner_domain, request).await;
    loop {
        let (m, _) = next_from_node(&mut rx).await;
        if let Some(status) = m.status().filter(|s| *s >= 200) {
            return status;
        }
    }
}

/// The final status of a SUBSCRIBE from alice@fabrikam.com to the help
/// desk, over mutual TLS with fabrikam.com's certificate.
pub async fn alice_of_fabrikam_subscribes(pki: &Pki, server: &Server) -> u16 {
    partner_request(
        pki,
        server,
        "fabrikam.com",
        "SUBSCRIBE",
        "sip:alice@fabrikam.com",
        "sip:helpdesk@contoso.com",
    )
    .await
}

/// A REGISTER for `user` from `socket`, with `auth` (an Authorization line
/// or nothing); `n` makes it a new transaction.
pub fn register(socket: &UdpSocket, server: SocketAddr, user: &str, n: u32, auth: &str) {
    let a = socket.local_addr().unwrap();
    let bytes = format!(
        "REGISTER sip:contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK-guess{n};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:{user}@contoso.com>;tag=g\r\nTo: <sip:{user}@contoso.com>\r\n\
         Call-ID: guess-{user}@test.invalid\r\nCSeq: {n} REGISTER\r\nContact: <sip:{user}@{a}>\r\n\
         Expires: 600\r\n{auth}Content-Length: 0\r\n\r\n"
    );
    socket.send_to(bytes.as_bytes(), server).unwrap();
}

/// The final answer to a REGISTER from `socket` (5 s at most).
pub fn final_answer(socket: &UdpSocket) -> Message {
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = vec![0u8; 65_536];
    loop {
        let n = socket.recv(&mut buf).expect("an answer in time");
        let m = parse(&buf[..n]);
        if m.status().is_some_and(|s| s >= 200) {
            return m;
        }
    }
}

/// Registers `user` with `password` from `socket`: the status of the
/// answer to the challenged REGISTER (or of the first, if not challenged).
pub fn register_with(
    socket: &UdpSocket,
    server: SocketAddr,
    user: &str,
    password: &str,
    n: u32,
) -> u16 {
    register(socket, server, user, n, "");
    let challenge = final_answer(socket);
    if challenge.status() != Some(401) {
        return challenge.status().unwrap();
    }
    let auth = answer_challenge(&challenge, user, password, "REGISTER", "sip:contoso.com");
    register(socket, server, user, n + 1, &auth);
    final_answer(socket).status().unwrap()
}

/// The `Authorization` header line (CRLF included) answering the first,
/// SHA-256, challenge of a 401 with `password`.
pub fn answer_challenge(
    challenge: &Message,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
) -> String {
    let sha256_hex = |text: &str| -> String {
        use sha2::Digest;
        sha2::Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let first = challenge
        .auth(porchlight_sip::HeaderName::WwwAuthenticate)
        .next()
        .expect("a challenge")
        .unwrap();
    let (realm, nonce) = (first.param("realm").unwrap(), first.param("nonce").unwrap());
    let ha1 = sha256_hex(&format!("{user}:{realm}:{password}"));
    let ha2 = sha256_hex(&format!("{method}:{uri}"));
    let response = sha256_hex(&format!("{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}"));
    format!(
        "Authorization: Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm=SHA-256, qop=auth, nc=00000001, cnonce=\"c0ffee\"\r\n"
    )
}

/// Every `porchlight_*` metric name the alerting rules and the dashboard
/// under `deploy/` use, so a renamed metric cannot leave them silently blank.
pub fn deploy_metric_names() -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for file in [
        "deploy/prometheus/porchlight-rules.yml",
        "deploy/grafana/porchlight.json",
    ] {
        let text = std::fs::read_to_string(repo_path(file)).unwrap();
        for (at, _) in text.match_indices("porchlight_") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    names
}

/// The metric names a node's `/metrics` text declares (`# TYPE` lines).
pub fn exported_metric_names(metrics: &str) -> std::collections::BTreeSet<String> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
        .map(str::to_owned)
        .collect()
}
