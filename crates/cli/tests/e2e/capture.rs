//! HEP capture against a real capture server: sngrep listening for HEP v3
//! and writing what it hears to a pcap file, which the test reads back.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// sngrep as a HEP receiver (`-L`) with no interface (`-N`), saving every
/// packet it is sent to a pcap file (`-O`).
struct Sngrep {
    child: Child,
    port: u16,
}

impl Sngrep {
    fn start(pcap: &Path) -> Sngrep {
        let port = free_udp_port();
        let child = Command::new("sngrep")
            .arg("-L")
            .arg(format!("udp:127.0.0.1:{port}"))
            .args(["-N", "-O"])
            .arg(pcap)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sngrep runs (scripts/test.sh installs it)");
        // Listening once its port can no longer be bound by anyone else.
        let deadline = Instant::now() + Duration::from_secs(10);
        while UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            assert!(Instant::now() < deadline, "sngrep listens within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        Sngrep { child, port }
    }
}

impl Drop for Sngrep {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One packet of the capture: the addresses sngrep rebuilt from the HEP
/// chunks, and the SIP message.
#[derive(Debug)]
struct Captured {
    source: SocketAddr,
    destination: SocketAddr,
    seconds: u32,
    text: String,
}

/// Every IPv4 packet of a pcap file (little-endian, Ethernet framing, as
/// sngrep writes it); an incomplete last record is left for the next read.
fn read_pcap(path: &Path) -> Vec<Captured> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let mut packets = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let (seconds, length) = (u32_at(at), u32_at(at + 8) as usize);
        let frame = at + 16;
        if frame + length > bytes.len() {
            break;
        }
        let ip = &bytes[frame + 14..frame + length];
        let header = usize::from(ip[0] & 0x0f) * 4;
        let port = |at: usize| u16::from_be_bytes([ip[header + at], ip[header + at + 1]]);
        let address =
            |at: usize| std::net::Ipv4Addr::new(ip[at], ip[at + 1], ip[at + 2], ip[at + 3]);
        packets.push(Captured {
            source: (address(12), port(0)).into(),
            destination: (address(16), port(2)).into(),
            seconds,
            text: String::from_utf8_lossy(&ip[header + 8..]).into_owned(),
        });
        at = frame + length;
    }
    packets
}

/// Polls the capture until `wanted` finds everything it looks for.
fn wait_for_capture(path: &Path, wanted: impl Fn(&[Captured]) -> bool) -> Vec<Captured> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let packets = read_pcap(path);
        if wanted(&packets) {
            return packets;
        }
        assert!(
            Instant::now() < deadline,
            "the capture lacks what was sent; it holds:\n{}",
            packets
                .iter()
                .map(|p| format!("{} -> {}: {}", p.source, p.destination, first_line(&p.text)))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default()
}

#[test]
fn sngrep_sees_a_watchers_subscribe_200_and_notify_with_the_real_addresses() {
    let dir = temp_dir("capture-sngrep");
    let pcap = dir.join("capture.pcap");
    let sngrep = Sngrep::start(&pcap);
    let server = start(
        "capture",
        &config(
            &[],
            &format!("\n[capture]\nhep = \"127.0.0.1:{}\"\n", sngrep.port),
        ),
    );
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;

    let mut watcher = Watcher::new(
        server.udp,
        "sip:helpdesk@contoso.com",
        "sip:alice@fabrikam.com",
    );
    assert_eq!(watcher.subscribe(600).status(), Some(200));
    let notify = watcher.expect_notify("<basic>open</basic>", Duration::from_secs(10));
    let call_id = notify.call_id().unwrap().to_owned();
    let watcher_at: SocketAddr = notify
        .as_bytes()
        .as_ref()
        .split(|&b| b == b'\n')
        .next()
        .map(|line| String::from_utf8_lossy(line).into_owned())
        .and_then(|line| {
            line.split('@')
                .nth(1)?
                .split([' ', ';'])
                .next()?
                .parse()
                .ok()
        })
        .expect("the NOTIFY goes to the watcher's Contact");

    // A stream too: an OPTIONS over TCP and its answer.
    let mut tcp = TcpStream::connect(server.tcp).unwrap();
    tcp.write_all(&request("OPTIONS", "sip:contoso.com", ""))
        .unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = [0u8; 2048];
    let n = tcp.read(&mut answer).unwrap();
    assert!(answer[..n].starts_with(b"SIP/2.0 200"));
    let tcp_local = tcp.local_addr().unwrap();

    let of_watcher = |p: &Captured| p.text.contains(&format!("Call-ID: {call_id}"));
    let packets = wait_for_capture(&pcap, |packets| {
        let watcher_lines: HashSet<&str> = packets
            .iter()
            .filter(|p| of_watcher(p))
            .map(|p| first_line(&p.text))
            .collect();
        watcher_lines.iter().any(|l| l.starts_with("SUBSCRIBE "))
            && watcher_lines.iter().any(|l| l.starts_with("NOTIFY "))
            && watcher_lines.contains("SIP/2.0 200 OK")
            && packets
                .iter()
                .any(|p| p.destination == tcp_local && p.text.starts_with("SIP/2.0 200"))
    });

    let one = |start: &str, cseq: &str| {
        packets
            .iter()
            .find(|p| {
                of_watcher(p)
                    && p.text.starts_with(start)
                    && p.text.contains(&format!(" {cseq}\r\n"))
            })
            .unwrap_or_else(|| panic!("no {start} for {cseq} in the capture"))
    };
    let subscribe = one("SUBSCRIBE ", "SUBSCRIBE");
    assert_eq!(
        subscribe.destination, server.udp,
        "received at the node's own address"
    );
    assert_eq!(subscribe.source.ip(), watcher_at.ip());
    assert_eq!(
        subscribe.source.port(),
        watcher_at.port(),
        "from the watcher's real port"
    );
    let accepted = one("SIP/2.0 200", "SUBSCRIBE");
    assert_eq!(
        (accepted.source, accepted.destination),
        (server.udp, subscribe.source)
    );
    let notified = one("NOTIFY ", "NOTIFY");
    assert_eq!(
        (notified.source, notified.destination),
        (server.udp, subscribe.source)
    );
    assert!(
        notified.text.contains("<basic>open</basic>"),
        "the whole message, body too"
    );
    let answered = one("SIP/2.0 200", "NOTIFY");
    assert_eq!(
        (answered.source, answered.destination),
        (subscribe.source, server.udp)
    );
    for p in [subscribe, accepted, notified, answered] {
        assert!(
            p.seconds.abs_diff(started) <= 30,
            "captured at the time it crossed: {}",
            p.seconds
        );
    }
    let options = packets
        .iter()
        .find(|p| p.text.starts_with("OPTIONS ") && p.source == tcp_local)
        .expect("the OPTIONS over TCP is captured from its real source");
    assert_eq!(options.destination, server.tcp);

    assert!(server.metric("porchlight_capture_messages_total{outcome=\"sent\"}") >= 6);
    assert_eq!(
        server.metric("porchlight_capture_messages_total{outcome=\"dropped\"}"),
        0
    );
}

#[test]
fn an_unreachable_capture_server_costs_sip_nothing_and_is_counted() {
    // Nothing listens there: every other send is refused (ICMP).
    let nobody = free_udp_port();
    let server = start(
        "capture-nobody",
        &config(
            &[],
            &format!("\n[capture]\nhep = \"127.0.0.1:{nobody}\"\nqueue = 1\n"),
        ),
    );
    let watchers = 40;
    let started = Instant::now();
    for n in 0..watchers {
        let mut watcher = Watcher::new(
            server.udp,
            "sip:helpdesk@contoso.com",
            &format!("sip:w{n}@fabrikam.com"),
        );
        assert_eq!(watcher.subscribe(600).status(), Some(200), "watcher {n}");
        watcher.expect_notify("<basic>open</basic>", Duration::from_secs(10));
    }
    let elapsed = started.elapsed();
    // Four messages per watcher crossed the node: SUBSCRIBE, 200, NOTIFY, 200.
    let deadline = Instant::now() + Duration::from_secs(10);
    let counted = || {
        ["sent", "dropped", "failed"]
            .iter()
            .map(|o| {
                server.metric(&format!(
                    "porchlight_capture_messages_total{{outcome=\"{o}\"}}"
                ))
            })
            .sum::<u64>()
    };
    while counted() < 4 * watchers {
        assert!(
            Instant::now() < deadline,
            "every copy is accounted for: {}",
            counted()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        server.metric("porchlight_capture_messages_total{outcome=\"failed\"}") > 0,
        "refused sends are counted"
    );
    assert!(
        elapsed < Duration::from_secs(20),
        "{watchers} watchers set up in {elapsed:?}"
    );
    let status = server.api_get("/api/v1/status");
    assert_eq!(
        status["capture"]["collector"],
        format!("127.0.0.1:{nobody}"),
        "{status}"
    );
}

#[test]
fn a_capture_server_that_cannot_be_found_stops_the_node_with_the_fix() {
    let dir = temp_dir("capture-unknown");
    let path = dir.join("porchlight.toml");
    std::fs::write(
        &path,
        config(&[], "\n[capture]\nhep = \"no-such-host.invalid:9060\"\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_porchlight"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("[capture] hep = \"no-such-host.invalid:9060\"")
            && stderr.contains("correct the name, or remove [capture]"),
        "{stderr}"
    );
}
