//! `overload`: a flood of new SUBSCRIBEs at a set rate, none of whose
//! NOTIFYs is answered, while `--watchers` subscribed beforehand answer
//! theirs; part-way through, the admin changes the endpoint's note through
//! the API and the delay of each held watcher's NOTIFY is measured. Reports
//! how the flood was answered (2xx, 503, other, none), the server's peak
//! resident memory, and the NOTIFY delays (p50, p99, max) — for
//! `bench/overload-bench.sh`. Loopback only; bounded by `--secs`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use porchlight_sip::{response_to, Framing, Limits, Message};

#[derive(Parser)]
#[command(about = "A SUBSCRIBE flood with held watchers and an admin change")]
struct Args {
    /// The server's UDP address.
    #[arg(long)]
    target: SocketAddr,
    /// The admin API's address.
    #[arg(long)]
    admin: SocketAddr,
    /// The admin API's token file.
    #[arg(long)]
    token_file: std::path::PathBuf,
    /// The endpoint's URI.
    #[arg(long)]
    uri: String,
    /// New SUBSCRIBEs per second.
    #[arg(long)]
    rate: u32,
    /// Seconds of flood.
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// Watchers held through the flood.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Seconds into the flood when the admin changes the note (0: no change).
    #[arg(long, default_value_t = 15)]
    change_after_secs: u64,
    /// The server's process id, for its peak resident memory.
    #[arg(long)]
    pid: Option<u32>,
    /// The loopback address the flood comes from (the held watchers stay
    /// on 127.0.0.1): one outside the trusted networks makes it a
    /// stranger's flood, refused by policy.
    #[arg(long, default_value = "127.0.0.1")]
    flood_from: std::net::Ipv4Addr,
}

fn parse(bytes: &[u8]) -> Option<Message> {
    Message::parse(
        Bytes::copy_from_slice(bytes),
        Framing::Datagram,
        &Limits::default(),
    )
    .ok()
}

fn subscribe(uri: &str, local: SocketAddr, n: u64, expires: u32) -> String {
    format!(
        "SUBSCRIBE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-ov{n};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:w{n}@bench.invalid>;tag=t{n}\r\nTo: <{uri}>\r\n\
         Call-ID: ov-{n}@bench.invalid\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:w@{local}>\r\n\
         Event: presence\r\nAccept: application/pidf+xml\r\nExpires: {expires}\r\nContent-Length: 0\r\n\r\n"
    )
}

/// A held watcher: subscribes, answers every NOTIFY, and notes when the
/// first NOTIFY carrying `marker` arrived.
fn hold(
    args: &Args,
    n: u64,
    marker: Arc<Mutex<Option<String>>>,
    seen: Arc<Mutex<Vec<Option<Instant>>>>,
    ready: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let local = socket.local_addr()?;
    socket.send_to(subscribe(&args.uri, local, n, 3600).as_bytes(), args.target)?;
    let mut buf = vec![0u8; 65_536];
    let mut subscribed = false;
    while !stop.load(Ordering::Relaxed) {
        let Ok(len) = socket.recv(&mut buf) else {
            continue;
        };
        let Some(m) = parse(&buf[..len]) else {
            continue;
        };
        if m.status() == Some(200) && !subscribed {
            subscribed = true;
            ready.fetch_add(1, Ordering::Relaxed);
        }
        if m.method() == Some("NOTIFY") {
            let answer = response_to(&m, 200, "OK", None, Some("w")).finish(b"");
            socket.send_to(&answer, args.target)?;
            let body = String::from_utf8_lossy(m.body());
            let wanted = marker.lock().unwrap().clone();
            if wanted.is_some_and(|w| body.contains(w.as_str())) {
                let mut seen = seen.lock().unwrap();
                if seen[n as usize].is_none() {
                    seen[n as usize] = Some(Instant::now());
                }
            }
        }
    }
    Ok(())
}

fn set_note(args: &Args, note: &str) -> anyhow::Result<u16> {
    let token = std::fs::read_to_string(&args.token_file).context("reading the token")?;
    let path = format!("/api/v1/endpoints/{}/presence", args.uri);
    let body = format!("{{\"availability\":\"online\",\"note\":\"{note}\"}}");
    let mut tcp = TcpStream::connect(args.admin)?;
    write!(
        tcp,
        "PUT {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        args.admin,
        token.trim(),
        body.len()
    )?;
    let mut answer = String::new();
    tcp.read_to_string(&mut answer)?;
    let code = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok(code)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let stop = Arc::new(AtomicBool::new(false));
    let marker = Arc::new(Mutex::new(None::<String>));
    let seen = Arc::new(Mutex::new(vec![None; args.watchers]));
    let ready = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for n in 0..args.watchers as u64 {
        let (a, m, s, r, st) = (
            args.clone(),
            marker.clone(),
            seen.clone(),
            ready.clone(),
            stop.clone(),
        );
        threads.push(std::thread::spawn(move || hold(&a, n, m, s, r, st)));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while ready.load(Ordering::Relaxed) < args.watchers as u64 {
        if Instant::now() > deadline {
            bail!("only {} watchers subscribed", ready.load(Ordering::Relaxed));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let rss_before = args.pid.map_or(0, rss_kib);
    let peak = Arc::new(AtomicU64::new(rss_before));
    if let Some(pid) = args.pid {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    }

    // The flood: paced per millisecond from four sockets, counted by answer.
    let sockets: Vec<UdpSocket> = (0..4)
        .map(|_| -> anyhow::Result<UdpSocket> {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
            s.set_recv_buffer_size(16 << 20)?;
            s.bind(&SocketAddr::from((args.flood_from, 0)).into())?;
            let s: UdpSocket = s.into();
            s.set_read_timeout(Some(Duration::from_millis(100)))?;
            Ok(s)
        })
        .collect::<anyhow::Result<_>>()?;
    let counts: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
    let flood_done = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    for socket in &sockets {
        let (socket, counts, done) = (socket.try_clone()?, counts.clone(), flood_done.clone());
        receivers.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            let mut quiet = 0;
            while quiet < 20 {
                let Ok(len) = socket.recv(&mut buf) else {
                    if done.load(Ordering::Relaxed) {
                        quiet += 1;
                    }
                    continue;
                };
                // Status lines only: NOTIFYs to the flood are left unanswered.
                let head = &buf[..len.min(12)];
                let slot = match head {
                    h if h.starts_with(b"SIP/2.0 2") => 0,
                    h if h.starts_with(b"SIP/2.0 503") => 1,
                    h if h.starts_with(b"SIP/2.0 1") => continue,
                    h if h.starts_with(b"SIP/2.0 ") => 2,
                    _ => continue,
                };
                counts[slot].fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let locals: Vec<SocketAddr> = sockets
        .iter()
        .map(|s| s.local_addr())
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    let total = u64::from(args.rate) * args.secs;
    let mut sent = 0u64;
    let mut changed_at = None;
    while sent < total {
        let due = (started.elapsed().as_secs_f64() * f64::from(args.rate)) as u64;
        while sent < due.min(total) {
            let i = (sent % 4) as usize;
            let bytes = subscribe(&args.uri, locals[i], 1_000_000 + sent, 600);
            let _ = sockets[i].send_to(bytes.as_bytes(), args.target);
            sent += 1;
        }
        if changed_at.is_none()
            && args.change_after_secs > 0
            && started.elapsed() >= Duration::from_secs(args.change_after_secs)
        {
            let note = format!("changed-{}", started.elapsed().as_millis());
            *marker.lock().unwrap() = Some(note.clone());
            let at = Instant::now();
            let code = set_note(&args, &note)?;
            eprintln!("admin change answered {code}");
            changed_at = Some(at);
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let flood_secs = started.elapsed().as_secs_f64();
    flood_done.store(true, Ordering::Relaxed);
    for r in receivers {
        let _ = r.join();
    }
    // The held watchers may still be hearing the change.
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let [ok, shed, other] = [0, 1, 2].map(|i| counts[i].load(Ordering::Relaxed));
    let unanswered = sent.saturating_sub(ok + shed + other);
    println!(
        "flood: offered {}/s for {:.1} s, sent {sent}: 2xx {ok}, 503 {shed} ({:.1} %), other {other}, unanswered {unanswered}",
        args.rate,
        flood_secs,
        shed as f64 * 100.0 / sent.max(1) as f64
    );
    if args.pid.is_some() {
        println!(
            "server RSS: {} MiB before, peak {} MiB, {} MiB 5 s after",
            rss_before / 1024,
            peak.load(Ordering::Relaxed) / 1024,
            args.pid.map_or(0, rss_kib) / 1024
        );
    }
    if let Some(at) = changed_at {
        let seen = seen.lock().unwrap();
        let mut delays: Vec<Duration> = seen.iter().flatten().map(|t| *t - at).collect();
        delays.sort();
        println!(
            "admin change to {} held watchers: notified {}, p50 {:?}, p99 {:?}, max {:?}",
            args.watchers,
            delays.len(),
            percentile(&delays, 0.5),
            percentile(&delays, 0.99),
            delays.last().copied().unwrap_or_default()
        );
    }
    Ok(())
}
