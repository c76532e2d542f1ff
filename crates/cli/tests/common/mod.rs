//! Starts the real `porchlight` binary on ephemeral ports and talks to it
//! over real sockets.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use porchlight_sip::{Framing, Limits, Message};

pub struct Server {
    child: Child,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    pub tls: SocketAddr,
    pub dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("porchlight-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The embedded defaults with loopback ephemeral ports and `edits` applied
/// as (old, new) replacements, then `extra` appended.
pub fn config(edits: &[(&str, &str)], extra: &str) -> String {
    let mut text = porchlight_server::DEFAULT_CONFIG
        .replace("udp = [\"0.0.0.0:5060\"]", "udp = [\"127.0.0.1:0\"]")
        .replace("tcp = [\"0.0.0.0:5060\"]", "tcp = [\"127.0.0.1:0\"]")
        .replace("tls = [\"0.0.0.0:5061\"]", "tls = [\"127.0.0.1:0\"]")
        .replace(
            "domains = [\"porchlight.test\"]",
            "domains = [\"contoso.com\"]",
        );
    for (old, new) in edits {
        assert!(text.contains(old), "default config has no {old:?}");
        text = text.replace(old, new);
    }
    text.push_str(extra);
    text
}

pub fn start(name: &str, config_text: &str) -> Server {
    let dir = temp_dir(name);
    let path = dir.join("porchlight.toml");
    std::fs::write(&path, config_text).unwrap();
    start_with_file(&path, dir)
}

pub fn start_with_file(path: &std::path::Path, dir: PathBuf) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_porchlight"))
        .args(["serve", "--config"])
        .arg(path)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("porchlight binary runs");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let (mut udp, mut tcp, mut tls) = (None, None, None);
    while udp.is_none() || tcp.is_none() || tls.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("server reports its listeners");
        let Some(rest) = line.split("listening on ").nth(1) else {
            continue;
        };
        let (proto, addr) = rest.trim().split_once(' ').unwrap();
        let addr: SocketAddr = addr.parse().unwrap();
        match proto {
            "UDP" => udp = Some(addr),
            "TCP" => tcp = Some(addr),
            _ => tls = Some(addr),
        }
    }
    std::thread::spawn(move || while rx.recv().is_ok() {});
    Server {
        child,
        udp: udp.unwrap(),
        tcp: tcp.unwrap(),
        tls: tls.unwrap(),
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
