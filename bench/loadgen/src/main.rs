//! `porchlight-loadgen fanout`: N watchers (spread over several UDP
//! sockets) subscribe to one presentity and answer every NOTIFY; then one
//! PUBLISH changes the presentity, and the tool reports how long the last
//! watcher waited for its NOTIFY. With `--pid` it also reports the
//! server's resident memory before and after the subscriptions, for the
//! bytes-per-subscription figure. With several `--target`s the watchers
//! are spread over them (the nodes of a cluster) and `--publish-to` names
//! the node the change is made on. Protocol-level only, so the same run
//! works against any presence server.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::Parser;
use md5::{Digest, Md5};
use porchlight_sip::{response_to, Framing, HeaderName, Limits, Message};

#[derive(Parser)]
#[command(about = "Presence fan-out and memory benchmark over UDP")]
struct Args {
    /// The server's UDP address; several (comma-separated) spread the
    /// watchers over them, watcher i on the i-th modulo their number.
    #[arg(long, value_delimiter = ',', required = true)]
    target: Vec<SocketAddr>,
    /// Where the PUBLISH goes; the first target when absent.
    #[arg(long)]
    publish_to: Option<SocketAddr>,
    /// The presentity's URI (SUBSCRIBE and PUBLISH Request-URI).
    #[arg(long)]
    uri: String,
    /// Number of watchers.
    #[arg(long, default_value_t = 10_000)]
    watchers: u32,
    /// New subscriptions per second while building up.
    #[arg(long, default_value_t = 10_000)]
    rate: u32,
    /// UDP sockets the watchers are spread over.
    #[arg(long, default_value_t = 16)]
    sockets: u32,
    /// Digest user and password for the PUBLISH, when the server asks.
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    password: Option<String>,
    /// The server's process ids (comma-separated for multi-process servers
    /// such as Kamailio), to report their proportional resident memory.
    #[arg(long, value_delimiter = ',')]
    pid: Vec<u32>,
    /// Seconds to wait after the build-up before measuring memory, so the
    /// server's finished transactions (kept 64*T1 = 32 s over UDP) are gone.
    #[arg(long, default_value_t = 2)]
    settle_secs: u64,
    /// Give up waiting after this many seconds in any phase.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    /// What follows the build-up: `publish` (one change, time to the last
    /// NOTIFY) or `restart` (print "ready for restart", then wait while
    /// the server is killed and restarted, and report how the watchers'
    /// re-notifies arrive).
    #[arg(long, default_value = "publish")]
    then: Then,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Then {
    Publish,
    Restart,
}

/// Per-watcher progress: bit 0 = 2xx to SUBSCRIBE, bit 1 = a NOTIFY after
/// the first one has been counted, and above them the highest NOTIFY CSeq
/// seen, so a retransmitted NOTIFY is not mistaken for the next one
/// whatever number a server starts its CSeqs at.
struct Shared {
    state: Vec<AtomicU64>,
    subscribed: AtomicU32,
    first_notifies: AtomicU32,
    later_notifies: AtomicU32,
    failures: AtomicU32,
    publish_sent_ns: AtomicU64,
    first_later_ns: AtomicU64,
    last_notify_ns: AtomicU64,
    /// NOTIFYs (new CSeqs) beyond the one expected after the build-up: a
    /// duplicate, when nothing changed twice.
    extra_notifies: AtomicU32,
    epoch: Instant,
}

/// Proportional set size summed over the processes: shared memory (Kamailio's
/// shm) counts once in total, not once per process as RSS would.
fn pss_kib(pids: &[u32]) -> anyhow::Result<u64> {
    let mut total = 0;
    for pid in pids {
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
        let line = rollup
            .lines()
            .find(|l| l.starts_with("Pss:"))
            .context("no Pss")?;
        total += line
            .split_whitespace()
            .nth(1)
            .context("Pss value")?
            .parse::<u64>()?;
    }
    Ok(total)
}

fn bind(buffer: usize) -> anyhow::Result<UdpSocket> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    socket.set_recv_buffer_size(buffer)?;
    socket.set_send_buffer_size(buffer)?;
    socket.bind(&"127.0.0.1:0".parse::<SocketAddr>()?.into())?;
    Ok(socket.into())
}

fn watcher_of(call_id: &str) -> Option<usize> {
    call_id.strip_prefix("lg-")?.split('-').next()?.parse().ok()
}

fn receive_loop(socket: UdpSocket, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65536];
    let limits = Limits::default();
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf) else {
            return;
        };
        let Ok(message) = Message::parse(
            Bytes::copy_from_slice(&buf[..n]),
            Framing::Datagram,
            &limits,
        ) else {
            continue;
        };
        let Some(watcher) = message.call_id().ok().and_then(watcher_of) else {
            continue;
        };
        let Some(state) = shared.state.get(watcher) else {
            continue;
        };
        if message.is_request() {
            let ok = response_to(&message, 200, "OK", None, None).finish(b"");
            let _ = socket.send_to(&ok, from);
            if message.method() != Some("NOTIFY") {
                continue;
            }
            let cseq = u64::from(message.cseq().map_or(0, |c| c.seq));
            let Ok(previous) = state.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| {
                let seen = s >> 2;
                let later = if seen > 0 { 2 } else { 0 };
                (cseq > seen).then_some((s & 3) | later | (cseq << 2))
            }) else {
                continue; // a retransmission, or older than one seen
            };
            match (previous >> 2, previous & 2) {
                (0, _) => {
                    shared.first_notifies.fetch_add(1, Ordering::Relaxed);
                }
                (_, 0) => {
                    let now = shared.epoch.elapsed().as_nanos() as u64;
                    shared.first_later_ns.fetch_min(now, Ordering::Relaxed);
                    shared.last_notify_ns.fetch_max(now, Ordering::Relaxed);
                    shared.later_notifies.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    shared.extra_notifies.fetch_add(1, Ordering::Relaxed);
                }
            }
        } else if message.cseq().is_ok_and(|c| c.method == "SUBSCRIBE") {
            match message.status() {
                Some(200..=299) => {
                    if state.fetch_or(1, Ordering::SeqCst) & 1 == 0 {
                        shared.subscribed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(100..=199) => {}
                _ => {
                    shared.failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

fn subscribe(i: u32, uri: &str, local: SocketAddr) -> String {
    format!(
        "SUBSCRIBE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-lg{i}\r\n\
         From: <sip:w{i}@loadgen.invalid>;tag=t{i}\r\nTo: <{uri}>\r\nCall-ID: lg-{i}-{}\r\nCSeq: 1 SUBSCRIBE\r\n\
         Contact: <sip:w{i}@{local}>\r\nMax-Forwards: 70\r\nEvent: presence\r\nAccept: application/pidf+xml\r\n\
         Expires: 3600\r\nContent-Length: 0\r\n\r\n",
        std::process::id()
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Sends a PUBLISH, answering one MD5 digest challenge if the server asks.
fn publish(args: &Args, socket: &UdpSocket) -> anyhow::Result<Instant> {
    let body = "<?xml version=\"1.0\"?><presence xmlns=\"urn:ietf:params:xml:ns:pidf\" \
        xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\" xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\" entity=\"URI\">\
        <tuple id=\"t\"><status><basic>open</basic></status></tuple>\
        <dm:person id=\"p\"><rpid:activities><rpid:busy/></rpid:activities></dm:person></presence>"
        .replace("URI", &args.uri);
    let local = socket.local_addr()?;
    let make = |cseq: u32, auth: &str| {
        format!(
            "PUBLISH {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-pub{cseq}\r\nFrom: <{uri}>;tag=pub\r\n\
             To: <{uri}>\r\nCall-ID: lg-publish-{}\r\nCSeq: {cseq} PUBLISH\r\nMax-Forwards: 70\r\nEvent: presence\r\n\
             Expires: 3600\r\n{auth}Content-Type: application/pidf+xml\r\nContent-Length: {}\r\n\r\n{body}",
            std::process::id(),
            body.len(),
            uri = args.uri
        )
    };
    socket.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = vec![0u8; 65536];
    let mut cseq = 1;
    let mut auth = String::new();
    loop {
        let sent_at = Instant::now();
        let to = args.publish_to.unwrap_or(args.target[0]);
        socket.send_to(make(cseq, &auth).as_bytes(), to)?;
        let response = loop {
            let (n, _) = socket.recv_from(&mut buf).context("no answer to PUBLISH")?;
            let m = Message::parse(
                Bytes::copy_from_slice(&buf[..n]),
                Framing::Datagram,
                &Limits::default(),
            )?;
            if m.status().is_some_and(|s| s >= 200) {
                break m;
            }
        };
        match response.status() {
            Some(200..=299) => return Ok(sent_at),
            Some(401) if auth.is_empty() => {
                let (Some(user), Some(password)) = (&args.user, &args.password) else {
                    bail!("the server wants credentials: pass --user and --password");
                };
                let challenge = response
                    .auth(HeaderName::WwwAuthenticate)
                    .filter_map(Result::ok)
                    .find(|c| {
                        c.param("algorithm")
                            .is_none_or(|a| a.eq_ignore_ascii_case("MD5"))
                    })
                    .context("no MD5 challenge")?;
                let realm = challenge.param("realm").unwrap_or_default();
                let nonce = challenge.param("nonce").unwrap_or_default();
                let ha1 = hex(&Md5::digest(format!("{user}:{realm}:{password}")));
                let ha2 = hex(&Md5::digest(format!("PUBLISH:{}", args.uri)));
                let response = hex(&Md5::digest(format!(
                    "{ha1}:{nonce}:00000001:lg:auth:{ha2}"
                )));
                auth = format!(
                    "Authorization: Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{}\", \
                     response=\"{response}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"lg\"\r\n",
                    args.uri
                );
                cseq += 1;
            }
            other => bail!("PUBLISH answered {other:?}"),
        }
    }
}

/// The server watcher `i` subscribes through.
fn target_of(args: &Args, i: usize) -> SocketAddr {
    args.target[i % args.target.len()]
}

fn wait_for(what: &str, deadline: Instant, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    while !done() {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let n = args.watchers as usize;
    let shared = Arc::new(Shared {
        state: (0..n).map(|_| AtomicU64::new(0)).collect(),
        subscribed: AtomicU32::new(0),
        first_notifies: AtomicU32::new(0),
        later_notifies: AtomicU32::new(0),
        failures: AtomicU32::new(0),
        publish_sent_ns: AtomicU64::new(0),
        first_later_ns: AtomicU64::new(u64::MAX),
        last_notify_ns: AtomicU64::new(0),
        extra_notifies: AtomicU32::new(0),
        epoch: Instant::now(),
    });
    let sockets: Vec<UdpSocket> = (0..args.sockets)
        .map(|_| bind(8 << 20))
        .collect::<anyhow::Result<_>>()?;
    for s in &sockets {
        let s = s.try_clone()?;
        let shared = shared.clone();
        std::thread::spawn(move || receive_loop(s, shared));
    }
    let memory_before = (!args.pid.is_empty())
        .then(|| pss_kib(&args.pid))
        .transpose()?;

    // Build up the watchers at the given rate.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_secs);
    for i in 0..args.watchers {
        let due = started + Duration::from_secs_f64(f64::from(i) / f64::from(args.rate));
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let socket = &sockets[(i % args.sockets) as usize];
        let request = subscribe(i, &args.uri, socket.local_addr()?);
        socket.send_to(request.as_bytes(), target_of(&args, i as usize))?;
        if Instant::now() > deadline {
            bail!("could not send the subscriptions in time");
        }
    }
    let watchers = args.watchers;
    let progress = || {
        format!(
            "2xx {}, failures {}, first NOTIFYs {}",
            shared.subscribed.load(Ordering::Relaxed),
            shared.failures.load(Ordering::Relaxed),
            shared.first_notifies.load(Ordering::Relaxed)
        )
    };
    // Like a real UA (RFC 3261 Timer E), retransmit what is unanswered.
    let mut retransmit_at = Instant::now() + Duration::from_millis(500);
    let mut interval = Duration::from_millis(500);
    wait_for("every 2xx and first NOTIFY", deadline, || {
        if Instant::now() >= retransmit_at {
            for (i, state) in shared.state.iter().enumerate() {
                if state.load(Ordering::Relaxed) & 1 == 0 {
                    let socket = &sockets[i % sockets.len()];
                    if let Ok(local) = socket.local_addr() {
                        let _ = socket.send_to(
                            subscribe(i as u32, &args.uri, local).as_bytes(),
                            target_of(&args, i),
                        );
                    }
                }
            }
            interval = (interval * 2).min(Duration::from_secs(4));
            retransmit_at = Instant::now() + interval;
        }
        shared.subscribed.load(Ordering::Relaxed) + shared.failures.load(Ordering::Relaxed)
            >= watchers
            && shared.first_notifies.load(Ordering::Relaxed)
                >= shared.subscribed.load(Ordering::Relaxed)
    })
    .with_context(progress)?;
    let build = started.elapsed();
    let subscribed = shared.subscribed.load(Ordering::Relaxed);
    println!(
        "subscribed {subscribed} of {watchers} in {:.2} s ({:.0}/s), failures {}",
        build.as_secs_f64(),
        f64::from(subscribed) / build.as_secs_f64(),
        shared.failures.load(Ordering::Relaxed)
    );
    // Let the server settle (answers to NOTIFYs processed) before measuring memory.
    std::thread::sleep(Duration::from_secs(args.settle_secs));
    if let Some(before) = memory_before {
        let after = pss_kib(&args.pid)?;
        println!(
            "server memory (PSS) {before} KiB -> {after} KiB: {:.0} bytes per subscription",
            (after.saturating_sub(before) as f64 * 1024.0) / f64::from(subscribed.max(1))
        );
    }

    if let Then::Restart = args.then {
        return await_renotifies(&args, &shared, subscribed);
    }

    // One change, every watcher notified.
    let publisher = bind(1 << 20)?;
    let sent_at = publish(&args, &publisher)?;
    shared.publish_sent_ns.store(
        sent_at.duration_since(shared.epoch).as_nanos() as u64,
        Ordering::Relaxed,
    );
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let result = wait_for("the NOTIFYs of the change", deadline, || {
        shared.later_notifies.load(Ordering::Relaxed) >= subscribed
    });
    let got = shared.later_notifies.load(Ordering::Relaxed);
    let last = shared.last_notify_ns.load(Ordering::Relaxed);
    let spread =
        Duration::from_nanos(last.saturating_sub(shared.publish_sent_ns.load(Ordering::Relaxed)));
    println!(
        "fan-out: {got} of {subscribed} watchers notified; last NOTIFY {:.3} s after the PUBLISH",
        spread.as_secs_f64()
    );
    // Anything more would be a duplicate; give it a moment to show.
    std::thread::sleep(Duration::from_secs(1));
    println!(
        "repeated NOTIFYs: {}",
        shared.extra_notifies.load(Ordering::Relaxed)
    );
    result
}

/// Waits, while the server is killed and restarted, for every watcher's
/// next NOTIFY (the restored subscription's re-notify), and reports how
/// many came and how fast.
fn await_renotifies(args: &Args, shared: &Shared, subscribed: u32) -> anyhow::Result<()> {
    use std::io::Write;
    println!("ready for restart");
    std::io::stdout().flush()?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let result = wait_for("the re-notifies after the restart", deadline, || {
        shared.later_notifies.load(Ordering::Relaxed) >= subscribed
    });
    let got = shared.later_notifies.load(Ordering::Relaxed);
    let first = shared.first_later_ns.load(Ordering::Relaxed);
    let last = shared.last_notify_ns.load(Ordering::Relaxed);
    let span = Duration::from_nanos(last.saturating_sub(first)).as_secs_f64();
    println!(
        "re-notified {got} of {subscribed} watchers over {span:.2} s ({:.0}/s); lost {}",
        f64::from(got) / span.max(1e-9),
        subscribed - got.min(subscribed)
    );
    // When they came, on the wall clock, for the script that caused it.
    let wall = |ns: u64| {
        let at = shared.epoch + Duration::from_nanos(ns);
        let ago = Instant::now().saturating_duration_since(at);
        (std::time::SystemTime::now() - ago)
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    println!(
        "first re-notify at {:.3}, last at {:.3} (Unix time)",
        wall(first),
        wall(last)
    );
    std::thread::sleep(Duration::from_secs(1));
    println!(
        "repeated NOTIFYs: {}",
        shared.extra_notifies.load(Ordering::Relaxed)
    );
    result
}
