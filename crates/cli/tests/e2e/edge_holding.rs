//! Holding at the edge: each attack a node on the internet meets, made
//! over real sockets on loopback, bounded in count and time, with the
//! bound it must keep asserted — memory, answers, timing.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use crate::common::*;

/// A TCP connection to `server` from `source`, one of the loopback
/// addresses (all of 127.0.0.0/8 is local), so a test can be many peers.
fn connect_from(source: IpAddr, server: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(source, 0).into()).unwrap();
    socket.connect(&server.into()).unwrap();
    socket.into()
}

/// Whether the node has closed (or reset) a connection, discarding what it
/// sent before; never blocks.
fn closed_by_node(mut stream: &TcpStream) -> bool {
    stream.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue,
            Err(e) => break e.kind() != ErrorKind::WouldBlock,
        }
    };
    stream.set_nonblocking(false).unwrap();
    closed
}

/// The node answers a plain OPTIONS over a fresh connection: not wedged.
fn still_answers(server: &Server) {
    let mut tcp = TcpStream::connect(server.tcp).unwrap();
    tcp.write_all(&request("OPTIONS", "sip:contoso.com", ""))
        .unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 2048];
    let n = tcp.read(&mut buf).expect("an answer to OPTIONS");
    assert!(
        buf[..n].starts_with(b"SIP/2.0 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
}

#[test]
fn a_stream_of_line_breaks_is_closed_and_costs_no_memory() {
    let server = start("breaks", &config(&[], ""));
    still_answers(&server);
    let before = server.rss_kib();
    let mut tcp = TcpStream::connect(server.tcp).unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    tcp.write_all(b"\n").unwrap();
    let chunk = b"\r\n".repeat(32 * 1024);
    let started = Instant::now();
    let mut sent = 0usize;
    while sent < 200 << 20 {
        match tcp.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    assert!(
        sent < 200 << 20,
        "the node took 200 MB of line breaks without closing"
    );
    assert!(
        eventually(Duration::from_secs(10), || closed_by_node(&tcp)),
        "the connection is closed, not just stalled"
    );
    let grown = server.rss_kib().saturating_sub(before);
    eprintln!(
        "closed after {sent} bytes in {:?}; RSS grew by {grown} KiB",
        started.elapsed()
    );
    assert!(grown < 4 * 1024, "RSS grew by {grown} KiB");
    still_answers(&server);
}

#[test]
fn silent_dripping_and_stalled_handshakes_are_closed_in_time() {
    let server = start(
        "drip",
        &config(
            &[
                (
                    "tls_handshake_timeout_secs = 5",
                    "tls_handshake_timeout_secs = 1",
                ),
                ("message_timeout_secs = 10", "message_timeout_secs = 2"),
            ],
            "",
        ),
    );
    let started = Instant::now();
    let silent = TcpStream::connect(server.tcp).unwrap();
    let stalled_tls = TcpStream::connect(server.tls).unwrap();
    let mut dripping = TcpStream::connect(server.tcp).unwrap();
    let options = request("OPTIONS", "sip:contoso.com", "");
    // One byte every 200 ms: the message would take minutes.
    let mut dripped = 0;
    let mut drip_closed_at = None;
    while started.elapsed() < Duration::from_secs(8) && dripped < options.len() {
        if dripping.write_all(&options[dripped..=dripped]).is_err() || closed_by_node(&dripping) {
            drip_closed_at = Some(started.elapsed());
            break;
        }
        dripped += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let drip_closed_at = drip_closed_at.expect("the dripping connection is closed");
    assert!(
        drip_closed_at >= Duration::from_millis(1_500) && drip_closed_at < Duration::from_secs(6),
        "closed at {drip_closed_at:?}, the message deadline is 2 s"
    );
    // Each connection's deadline runs from its own accept, so the others may
    // close a moment after the dripping one: wait for them up to the same bound.
    let left = Duration::from_secs(6).saturating_sub(started.elapsed());
    assert!(
        eventually(left, || closed_by_node(&silent)),
        "no first message within 2 s: closed"
    );
    let left = Duration::from_secs(6).saturating_sub(started.elapsed());
    assert!(
        eventually(left, || closed_by_node(&stalled_tls)),
        "no TLS handshake within 1 s: closed"
    );
    still_answers(&server);
}

/// The node's count of open TCP and TLS connections.
fn open_connections(server: &Server) -> u64 {
    server.api_get("/api/v1/status")["connections"]
        .as_u64()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_floods_cannot_keep_a_partner_out() {
    // Every connection here is a descriptor, in this process and the node's.
    let files = rlimit::increase_nofile_limit(12_000).unwrap();
    assert!(
        files >= 12_000,
        "open files are limited to {files}: raise ulimit -Hn"
    );
    let pki = Pki::new("fair-pki");
    let server = start(
        "fair",
        &pki.config(&[
            // Connections hold their slots for the whole test.
            ("message_timeout_secs = 10", "message_timeout_secs = 120"),
            (
                "allowed_domains = []",
                "allowed_domains = [{ domain = \"fabrikam.com\" }]",
            ),
        ]),
    );
    let node = server.tcp;

    // One address gets 256 anonymous connections; the rest are reset.
    let one = IpAddr::from([127, 0, 0, 9]);
    let from_one: Vec<_> = (0..300).map(|_| connect_from(one, node)).collect();
    assert!(
        eventually(Duration::from_secs(10), || {
            from_one.iter().filter(|c| closed_by_node(c)).count() >= 44
        }),
        "connections past the per-source limit are reset"
    );
    assert_eq!(from_one.iter().filter(|c| closed_by_node(c)).count(), 44);
    drop(from_one);

    // 10,000 idle connections from 40 addresses: the anonymous share
    // (8,000) fills, and newcomers displace the oldest.
    let flood: Vec<_> = (0..10_000u32)
        .map(|i| connect_from(IpAddr::from([127, 0, 1, 1 + (i % 40) as u8]), node))
        .collect();
    let displaced = |n: usize| {
        eventually(Duration::from_secs(30), || {
            flood.iter().filter(|c| closed_by_node(c)).count() == n
        })
    };
    assert!(displaced(2_000), "the anonymous share (8,000) holds");
    assert_eq!(open_connections(&server), 8_000);
    // The partner still connects over mutual TLS and subscribes.
    let status = alice_of_fabrikam_subscribes(&pki, &server).await;
    assert_eq!(status, 200, "the partner's SUBSCRIBE through the flood");
    assert!(displaced(2_001), "the partner took the place of one more");
    drop(flood);
}

#[test]
fn one_flooding_source_is_dropped_alone() {
    let server = start("pike", &config(&[UNTRUSTED_LOOPBACK], ""));
    // 2,000 OPTIONS in about 2 s from one stranger: its burst (400) and
    // its rate (100/s) are answered, the rest dropped unanswered.
    let flooder = udp_on([127, 0, 0, 80]);
    let started = Instant::now();
    for n in 0..2_000u32 {
        flooder
            .send_to(&request("OPTIONS", "sip:contoso.com", ""), server.udp)
            .unwrap();
        if n % 10 == 9 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    flooder
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let (mut answered, mut last, mut buf) = (0u64, Duration::ZERO, vec![0u8; 65_536]);
    while let Ok(n) = flooder.recv(&mut buf) {
        assert_eq!(parse(&buf[..n]).status(), Some(200), "answered or dropped");
        answered += 1;
        last = started.elapsed();
    }
    // Whatever the node answered, it had decided by the last answer's arrival.
    let allowed = 401 + (100.0 * last.as_secs_f64()).ceil() as u64;
    eprintln!("{answered} of 2,000 answered, the last at {last:?}");
    assert!(
        (400..=allowed).contains(&answered),
        "{answered} answered; its burst and rate allow {allowed}"
    );
    // Another stranger is answered at once.
    let other = udp_on([127, 0, 0, 81]);
    other
        .send_to(&request("OPTIONS", "sip:contoso.com", ""), server.udp)
        .unwrap();
    assert_eq!(final_answer(&other).status(), Some(200));
    // Every dropped one is counted; the log says so once per interval.
    let dropped = || {
        server.api_get("/api/v1/status")["refused"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["reason"] == "source rate: request dropped")
            .map_or(0, |r| r["count"].as_u64().unwrap())
    };
    assert!(
        eventually(Duration::from_secs(5), || dropped() == 2_000 - answered),
        "{} counted dropped, {} not answered",
        dropped(),
        2_000 - answered
    );
    assert!(server.log_lines("source rate: request dropped") <= 2);
    still_answers(&server);
}

/// Endpoints for the enumeration and guessing tests: one whose app
/// registers with a password, one with nothing to prove itself by.
const APPS: &str = "\n[[endpoint]]\nuri = \"sip:queue@contoso.com\"\ndisplay_name = \"Queue\"\n\
    [endpoint.registration]\npassword = \"s3cret\"\n\
    [[endpoint]]\nuri = \"sip:bot@contoso.com\"\ndisplay_name = \"Bot\"\n";

const UNTRUSTED_LOOPBACK: (&str, &str) = (
    "trusted_networks = [\"127.0.0.0/8\", \"::1/128\"]",
    "trusted_networks = []",
);

/// A UDP socket on `ip` with room to queue thousands of answers.
fn udp_on(ip: [u8; 4]) -> UdpSocket {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    socket.set_recv_buffer_size(4 << 20).unwrap();
    socket.bind(&SocketAddr::from((ip, 0)).into()).unwrap();
    socket.into()
}

/// Sends `windows` windows of 100 requests from `socket` (`send(i)` sends
/// the i-th), reading each window's final answers before the next so none
/// is lost to a full socket buffer on a busy machine: how many of each
/// status came back. Every 503 must say when to retry.
fn in_windows(
    socket: &UdpSocket,
    windows: u32,
    mut send: impl FnMut(u32),
) -> std::collections::BTreeMap<u16, u32> {
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let (mut counts, mut buf) = (std::collections::BTreeMap::new(), vec![0u8; 65_536]);
    for window in 0..windows {
        for n in 0..100 {
            send(window * 100 + n);
        }
        let mut answered = 0;
        while answered < 100 {
            let Ok(n) = socket.recv(&mut buf) else { break };
            let m = parse(&buf[..n]);
            // Requests (the NOTIFYs of accepted subscriptions) go unanswered.
            let Some(status) = m.status().filter(|s| *s >= 200) else {
                continue;
            };
            if status == 503 {
                assert!(
                    m.retry_after().ok().flatten().is_some(),
                    "503 says when to retry"
                );
            }
            *counts.entry(status).or_insert(0) += 1;
            answered += 1;
        }
    }
    counts
}

#[test]
fn password_guessing_is_slowed_per_source_and_per_endpoint() {
    let server = start(
        "guess",
        &config(
            &[
                UNTRUSTED_LOOPBACK,
                ("lockout_secs = 60", "lockout_secs = 10"),
                // Every guess reaches the guard: the rate per source would
                // drop most of them unanswered before any is checked.
                ("source_request_rate = 100", "source_request_rate = 0"),
            ],
            APPS,
        ),
    );
    // The app proves its password once from its own address.
    let app = udp_on([127, 0, 0, 30]);
    assert_eq!(register_with(&app, server.udp, "queue", "s3cret", 1), 200);

    // 20,000 wrong answers from one address, with a real nonce.
    let guesser = udp_on([127, 0, 0, 20]);
    register(&guesser, server.udp, "queue", 1, "");
    let challenge = final_answer(&guesser);
    let wrong = answer_challenge(&challenge, "queue", "guess", "REGISTER", "sip:contoso.com");
    let started = Instant::now();
    let mut answers = in_windows(&guesser, 200, |i| {
        register(&guesser, server.udp, "queue", 10 + i, &wrong)
    });
    let real_tries = answers.remove(&401).unwrap_or(0);
    let refused = answers.remove(&503).unwrap_or(0);
    assert!(answers.is_empty(), "only 401 and 503: {answers:?}");
    eprintln!(
        "{real_tries} checked, {refused} refused in {:?}",
        started.elapsed()
    );
    // Lockouts of 10 s, then 20, 40…: how many could have begun meanwhile.
    let elapsed = started.elapsed().as_secs();
    let lockouts = (0..).find(|k| 10 * ((1u64 << k) - 1) > elapsed).unwrap();
    assert!(
        (10..=10 * lockouts).contains(&real_tries),
        "{real_tries} checked: only max_wrong_passwords_per_source per lockout"
    );
    assert!(real_tries + refused >= 19_900, "every guess is answered");
    assert!(
        eventually(Duration::from_secs(5), || server
            .log_lines("too many wrong passwords from this address")
            == 1),
        "one log line for the lockout, not one per guess"
    );
    // The app's own address is not locked out, and the guesser is let
    // back once its lockout ends, with the right password.
    assert_eq!(register_with(&app, server.udp, "queue", "s3cret", 100), 200);
    assert!(
        {
            let mut attempt = 30_000;
            eventually(Duration::from_secs(25), || {
                attempt += 2;
                register_with(&guesser, server.udp, "queue", "s3cret", attempt) == 200
            })
        },
        "the right password works again after the lockout"
    );

    // Guessing from many addresses locks the name for strangers, not for
    // the app that proved it.
    for source in 40..43u8 {
        let socket = udp_on([127, 0, 0, source]);
        for n in 0..10 {
            register(&socket, server.udp, "queue", 1 + n, &wrong);
            final_answer(&socket);
        }
    }
    let stranger = udp_on([127, 0, 0, 50]);
    assert_eq!(
        register_with(&stranger, server.udp, "queue", "s3cret", 1),
        503
    );
    assert_eq!(register_with(&app, server.udp, "queue", "s3cret", 200), 200);
    let refused = server.api_get("/api/v1/status")["refused"].clone();
    let count = |reason: &str| {
        refused
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["reason"] == reason)
            .map_or(0, |r| r["count"].as_u64().unwrap())
    };
    // The guesser's 10, then 20 more until the name locked at 30: the
    // third address's guesses were not even checked.
    assert_eq!(count("wrong password"), 30);
    assert!(count("password guessing: refused unchecked") >= 19_000);
}

/// The final answer, status and reason, to `bytes` sent by a stranger.
fn strangers_answer(server: &Server, bytes: &[u8]) -> (u16, String) {
    let answers = udp_exchange(server.udp, bytes, Duration::from_millis(700));
    let last = answers
        .iter()
        .rev()
        .find(|m| m.status().is_some_and(|s| s >= 200))
        .unwrap_or_else(|| panic!("no final answer to {}", String::from_utf8_lossy(bytes)));
    let reason = String::from_utf8_lossy(last.reason().unwrap_or_default()).into_owned();
    (last.status().unwrap(), reason)
}

#[test]
fn a_stranger_cannot_tell_a_missing_endpoint_from_one_it_may_not_reach() {
    let server = start(
        "hidden",
        &config(
            &[
                UNTRUSTED_LOOPBACK,
                (
                    "hide_missing_endpoints = false",
                    "hide_missing_endpoints = true",
                ),
            ],
            APPS,
        ),
    );
    let contact = "Contact: <sip:alice@192.0.2.1>\r\n";
    let methods: [(&str, String); 8] = [
        ("REGISTER", contact.into()),
        ("PUBLISH", "Event: presence\r\n".into()),
        ("SERVICE", String::new()),
        ("SUBSCRIBE", format!("Event: presence\r\n{contact}")),
        // Malformed: no Contact. Still the same answer for every name.
        ("SUBSCRIBE", "Event: presence\r\n".into()),
        ("MESSAGE", String::new()),
        ("INVITE", contact.into()),
        ("OPTIONS", String::new()),
    ];
    for (method, extra) in &methods {
        let answers: Vec<(u16, String)> = ["queue", "bot", "helpdesk", "nobody"]
            .iter()
            .map(|user| {
                strangers_answer(
                    &server,
                    &request(method, &format!("sip:{user}@contoso.com"), extra),
                )
            })
            .collect();
        assert!(
            answers.iter().all(|a| a == &answers[0]),
            "{method} ({extra:?}) answers differ by name: {answers:?}"
        );
        let (code, reason) = &answers[0];
        assert_eq!(
            reason,
            porchlight_sip::standard_reason(*code),
            "{method}: the reason says no more than the code"
        );
    }
}

/// An endpoint federation may not reach, by its own policy.
const INSIDE_ONLY: &str =
    "\n[[endpoint]]\nuri = \"sip:inside@contoso.com\"\ndisplay_name = \"Inside\"\n\
    policy = \"inside-only\"\n[policy.policies.inside-only]\nfederation = false\n";

/// The RLMI line of each resource in a batched NOTIFY, its position left
/// out, with the URI the line is for.
fn rlmi_resources(body: &str) -> Vec<(String, String)> {
    body.lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("<resource uri=\"")?;
            let (uri, rest) = rest.split_once('"')?;
            let state = rest.split(" state=").nth(1)?;
            let state = state.split(['/', ' ']).next()?;
            Some((uri.to_owned(), state.to_owned()))
        })
        .collect()
}

#[tokio::test]
async fn a_partners_batched_list_learns_only_what_it_may_watch() {
    let pki = Pki::new("batch-pki");
    let server = start(
        "batch",
        &format!(
            "{}{INSIDE_ONLY}",
            pki.config(&[
                (
                    "allowed_domains = []",
                    "allowed_domains = [{ domain = \"fabrikam.com\" }]",
                ),
                (
                    "hide_missing_endpoints = false",
                    "hide_missing_endpoints = true",
                ),
            ])
        ),
    );
    // One at a time, the endpoint it may not reach and none answer alike.
    for to in ["sip:inside@contoso.com", "sip:nobody@contoso.com"] {
        let status = partner_request(
            &pki,
            &server,
            "fabrikam.com",
            "SUBSCRIBE",
            "sip:alice@fabrikam.com",
            to,
        )
        .await;
        assert_eq!(status, 403, "{to}");
    }
    // In one batched list, too: the help desk it may watch is active; the
    // one it may not, the missing one and another domain's all say
    // resubscribe, with nothing else to tell them apart.
    let names = [
        "sip:helpdesk@contoso.com",
        "sip:inside@contoso.com",
        "sip:nobody@contoso.com",
        "sip:carol@elsewhere.example",
    ];
    let resources: String = names
        .iter()
        .map(|uri| format!("<resource uri=\"{uri}\"/>"))
        .collect();
    let list = format!(
        "<batchSub xmlns=\"http://schemas.microsoft.com/2006/01/sip/batch-subscribe\" uri=\"sip:alice@fabrikam.com\" name=\"\">\
         <action name=\"subscribe\" id=\"1\"><adhocList>{resources}</adhocList>\
         <categoryList xmlns=\"http://schemas.microsoft.com/2006/09/sip/categorylist\"><category name=\"state\"/></categoryList>\
         </action></batchSub>"
    );
    let mut w = partner_writer(
        "fabrikam.com",
        "SUBSCRIBE",
        "sip:alice@fabrikam.com",
        "sip:helpdesk@contoso.com",
    );
    w.header("Supported", "eventlist")
        .header("Require", "adhoclist, categoryList")
        .header(
            "Accept",
            "application/msrtc-event-categories+xml, application/rlmi+xml, multipart/related",
        )
        .header("Content-Type", "application/msrtc-adrl-categorylist+xml");
    let (_connection, mut rx) =
        partner_send(&pki, &server, "fabrikam.com", w.finish(list.as_bytes())).await;
    let (mut answer, mut notify) = (None, None);
    while answer.is_none() || notify.is_none() {
        let (m, _) = next_from_node(&mut rx).await;
        match m.method() {
            Some("NOTIFY") => notify = Some(m),
            None if m.status().is_some_and(|s| s >= 200) => answer = Some(m),
            _ => {}
        }
    }
    assert_eq!(answer.unwrap().status(), Some(200));
    let notify = notify.unwrap();
    let resources = rlmi_resources(std::str::from_utf8(notify.body()).unwrap());
    let listed: Vec<&str> = resources.iter().map(|(uri, _)| uri.as_str()).collect();
    assert_eq!(listed, names, "every name listed, in order");
    let states: Vec<&str> = resources.iter().map(|(_, state)| state.as_str()).collect();
    assert_eq!(
        states,
        [
            "\"active\"",
            "\"resubscribe\"",
            "\"resubscribe\"",
            "\"resubscribe\""
        ]
    );
    let documents = std::str::from_utf8(notify.body())
        .unwrap()
        .matches("Content-Type: application/msrtc-event-categories+xml")
        .count();
    assert_eq!(documents, 1, "a document for the help desk alone");
}

/// What `svwar` (SIPVicious) reports scanning `server` for the names in
/// `dictionary` with `method`.
fn svwar(server: &Server, dictionary: &std::path::Path, method: &str) -> String {
    let out = std::process::Command::new("sipvicious_svwar")
        .args(["--force", "-m", method, "-d"])
        .arg(dictionary)
        .args(["--maximumtime", "30"])
        .arg(format!("udp://{}", server.udp))
        .output()
        .expect("sipvicious_svwar runs (pip install sipvicious)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn svwar_finds_no_endpoint_when_missing_ones_are_hidden() {
    let dir = temp_dir("svwar-names");
    let names = [
        "queue", "bot", "helpdesk", "nobody", "alice", "1000", "admin",
    ];
    let dictionary = dir.join("names.txt");
    std::fs::write(&dictionary, names.join("\n")).unwrap();
    let node = |name: &str, hide: &str| {
        start(
            name,
            &config(
                // svwar names the node by its address, which is the node's
                // own: the names resolve as they would by domain.
                &[UNTRUSTED_LOOPBACK, ("hide_missing_endpoints = false", hide)],
                APPS,
            ),
        )
    };
    // Not hidden, svwar tells the endpoints from the rest: the scan works.
    let open = node("svwar-open", "hide_missing_endpoints = false");
    let report = svwar(&open, &dictionary, "REGISTER");
    assert!(report.contains("| queue"), "{report}");
    assert!(!report.contains("| nobody"), "{report}");
    drop(open);

    let hidden = node("svwar-hidden", "hide_missing_endpoints = true");
    for method in ["REGISTER", "OPTIONS", "INVITE"] {
        let report = svwar(&hidden, &dictionary, method);
        assert!(
            report.contains("found nothing"),
            "{method} scan ran: {report}"
        );
        for name in names {
            assert!(
                !report.contains(&format!("| {name} ")),
                "{method} scan found {name}: {report}"
            );
        }
    }
}

/// `lines` Record-Route entries of 87 bytes each.
fn record_routes(lines: usize) -> String {
    (0..lines)
        .map(|i| {
            format!(
                "Record-Route: <sip:proxy{i:04}.{}.example;lr>\r\n",
                "x".repeat(60)
            )
        })
        .collect()
}

/// Waits for every watcher's NOTIFY carrying `needle`, all at once: with
/// a small in-flight window, one watcher waiting on another's unanswered
/// NOTIFY would stall a one-by-one reader.
fn every_one_hears(watchers: &mut [Watcher], needle: &str) {
    std::thread::scope(|scope| {
        for w in watchers.iter_mut() {
            scope.spawn(move || w.expect_notify(needle, Duration::from_secs(5)));
        }
    });
}

fn set_note(server: &Server, note: &str) -> u16 {
    let (admin, bearer) = server.api();
    let url = format!("http://{admin}/api/v1/endpoints/sip:helpdesk@contoso.com/presence");
    match ureq::put(&url)
        .set("Authorization", &bearer)
        .send_json(serde_json::json!({"availability": "online", "note": note}))
    {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn nothing_a_watcher_or_an_admin_sends_can_wedge_notifications() {
    let server = start(
        "wedge",
        &config(
            &[
                ("max_message_bytes = 65535", "max_message_bytes = 16384"),
                ("max_note_bytes = 1024", "max_note_bytes = 8192"),
                (
                    "min_notify_interval_ms = 5000",
                    "min_notify_interval_ms = 0",
                ),
                // Two slots: one leaked would halve the node's NOTIFYs, two stop them.
                ("max_notify_in_flight = 10000", "max_notify_in_flight = 2"),
            ],
            "",
        ),
    );
    let helpdesk = "sip:helpdesk@contoso.com";
    let mut plain: Vec<Watcher> = (0..3)
        .map(|i| Watcher::new(server.udp, helpdesk, &format!("sip:w{i}@contoso.com")))
        .collect();
    for w in &mut plain {
        assert_eq!(w.subscribe(600).status(), Some(200));
        w.expect_notify("<basic>open</basic>", Duration::from_secs(5));
    }
    // A route set past max_dialog_bytes is refused when it arrives.
    let mut long_route = Watcher::new(server.udp, helpdesk, "sip:long@contoso.com");
    long_route.extra_headers = record_routes(100);
    assert!(
        record_routes(100).len() < 16_384,
        "within the message limit"
    );
    assert_eq!(long_route.subscribe(600).status(), Some(400));
    // One within it is taken: its NOTIFYs fit until the note grows.
    let mut big = Watcher::new(server.udp, helpdesk, "sip:big@contoso.com");
    // 90 entries: 7,830 bytes, under the 8,192 of max_dialog_bytes.
    big.extra_headers = record_routes(90);
    assert_eq!(big.subscribe(600).status(), Some(200));
    big.expect_notify("<basic>open</basic>", Duration::from_secs(5));

    // The API refuses a 70 KB note outright.
    assert_eq!(set_note(&server, &"n".repeat(70_000)), 400);
    // An 8 KB note is allowed, but with the big route set it no longer
    // fits one message: that subscription ends, the others hear it.
    let note = "m".repeat(8_000);
    assert_eq!(set_note(&server, &note), 200);
    every_one_hears(&mut plain, &note);
    for round in 0..5 {
        let note = format!("round {round}");
        assert_eq!(set_note(&server, &note), 200);
        every_one_hears(&mut plain, &note);
    }
    // The watchers stay up and answer what comes, retransmissions included.
    assert!(
        eventually(Duration::from_secs(5), || {
            plain.iter_mut().for_each(Watcher::answer_pending);
            server.api_get("/api/v1/status")["notifies_in_flight"] == 0
        }),
        "every in-flight slot is given back: {}",
        server.api_get("/api/v1/status")
    );
    // The ended subscription is gone: its refresh gets 481 (RFC 6665 §4.1.2.2),
    // so the watcher subscribes again.
    assert_eq!(big.subscribe(600).status(), Some(481));
}

#[test]
fn overload_sheds_new_work_and_keeps_what_is_held() {
    let server = start(
        "overload",
        &config(
            &[
                (
                    "overload_server_transactions = 200000",
                    "overload_server_transactions = 200",
                ),
                (
                    "min_notify_interval_ms = 5000",
                    "min_notify_interval_ms = 0",
                ),
                // Transactions (and the flood's unanswered NOTIFYs) end in
                // 9.6 s: long past the flood, however slow the machine, so the
                // node is still shedding when it is asked.
                ("t1_ms = 500", "t1_ms = 150"),
            ],
            "",
        ),
    );
    let helpdesk = "sip:helpdesk@contoso.com";
    let mut held: Vec<Watcher> = (0..3)
        .map(|i| Watcher::new(server.udp, helpdesk, &format!("sip:held{i}@contoso.com")))
        .collect();
    for w in &mut held {
        assert_eq!(w.subscribe(600).status(), Some(200));
        w.expect_notify("<basic>open</basic>", Duration::from_secs(5));
    }
    // A flood of new subscriptions, none of whose NOTIFYs is answered.
    let flood = udp_on([127, 0, 0, 70]);
    let local = flood.local_addr().unwrap();
    let answers = in_windows(&flood, 20, |i| {
        let bytes = format!(
                "SUBSCRIBE {helpdesk} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-flood{i};rport\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:f{i}@contoso.com>;tag=f\r\nTo: <{helpdesk}>\r\n\
                 Call-ID: flood-{i}@test.invalid\r\nCSeq: 1 SUBSCRIBE\r\nContact: <sip:f@{local}>\r\n\
                 Event: presence\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n"
            );
        flood.send_to(bytes.as_bytes(), server.udp).unwrap();
    });
    let accepted = answers.get(&200).copied().unwrap_or(0);
    let shed = answers.get(&503).copied().unwrap_or(0);
    assert!(
        answers.keys().all(|s| [200, 503].contains(s)),
        "taken or shed, nothing else: {answers:?}"
    );
    eprintln!("{accepted} accepted, {shed} shed");
    // The mark is 200 transactions; a batch or two more may get in first.
    assert!(accepted < 800, "{accepted} of 2,000 accepted");
    assert!(
        shed > 1_000,
        "past the mark new work is shed: {shed} of 2,000"
    );
    assert_eq!(server.api_get("/api/v1/status")["overloaded"], true);
    // What is held goes on: refreshes are taken, changes are notified.
    for w in &mut held {
        assert_eq!(
            w.subscribe(600).status(),
            Some(200),
            "a refresh is never shed"
        );
    }
    assert_eq!(set_note(&server, "through the flood"), 200);
    every_one_hears(&mut held, "through the flood");
    // Once the transactions drain, new work is taken again.
    assert!(
        eventually(Duration::from_secs(20), || {
            let mut late = Watcher::new(server.udp, helpdesk, "sip:late@contoso.com");
            late.subscribe(600).status() == Some(200)
        }),
        "the node recovers"
    );
    assert_eq!(server.api_get("/api/v1/status")["overloaded"], false);
}

/// A TCP listener whose accept queue is full, so a connect to it is never
/// answered (its SYNs are dropped) until the caller gives up: a next hop
/// that is black-holed, on loopback.
fn black_hole() -> (socket2::Socket, TcpStream, SocketAddr) {
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    listener
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let filler = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    let hangs = TcpStream::connect_timeout(&addr, Duration::from_millis(300));
    assert_eq!(
        hangs.map(|_| ()).unwrap_err().kind(),
        ErrorKind::TimedOut,
        "a connect to the black hole hangs"
    );
    (listener, filler, addr)
}

/// Watchers of the help desk in groups, each group one UDP socket read by
/// a thread of its own, so a fan-out's NOTIFYs are taken as fast as they
/// come.
struct Crowd {
    groups: Vec<UdpSocket>,
    per_group: usize,
}

impl Crowd {
    fn subscribe(server: SocketAddr, groups: usize, per_group: usize) -> Crowd {
        let groups: Vec<UdpSocket> = (0..groups)
            .map(|_| {
                let socket = udp_on([127, 0, 0, 1]);
                socket
                    .set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                socket
            })
            .collect();
        std::thread::scope(|scope| {
            for (g, socket) in groups.iter().enumerate() {
                scope.spawn(move || {
                    let local = socket.local_addr().unwrap();
                    for i in 0..per_group {
                        let request = subscribe_to_helpdesk(
                            local,
                            &format!("crowd-{g}-{i}"),
                            &format!("crowd{g}x{i}"),
                        );
                        socket.send_to(request.as_bytes(), server).unwrap();
                    }
                    let (mut accepted, mut notified) = (0, 0);
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while (accepted < per_group || notified < per_group)
                        && Instant::now() < deadline
                    {
                        match receive_answering(socket) {
                            Some(m) if m.status() == Some(200) => accepted += 1,
                            Some(m) if m.method() == Some("NOTIFY") => notified += 1,
                            _ => {}
                        }
                    }
                    assert_eq!(
                        (accepted, notified),
                        (per_group, per_group),
                        "every watcher of group {g} is accepted and notified"
                    );
                });
            }
        });
        Crowd { groups, per_group }
    }

    /// How long until every watcher has heard a NOTIFY carrying `needle`,
    /// counted from `since`.
    fn all_hear(&self, needle: &str, since: Instant) -> Duration {
        let last = std::thread::scope(|scope| {
            let readers: Vec<_> = self
                .groups
                .iter()
                .map(|socket| {
                    scope.spawn(move || {
                        let mut heard = std::collections::HashSet::new();
                        let deadline = Instant::now() + Duration::from_secs(30);
                        while heard.len() < self.per_group && Instant::now() < deadline {
                            let Some(m) = receive_answering(socket) else {
                                continue;
                            };
                            let text = String::from_utf8_lossy(m.as_bytes().as_ref()).into_owned();
                            if m.method() == Some("NOTIFY") && text.contains(needle) {
                                heard.insert(m.call_id().unwrap_or_default().to_owned());
                            }
                        }
                        assert_eq!(heard.len(), self.per_group, "every watcher hears {needle}");
                        Instant::now()
                    })
                })
                .collect();
            readers
                .into_iter()
                .map(|r| r.join().unwrap())
                .max()
                .unwrap()
        });
        last - since
    }
}

/// What the node reports waiting for a destination to be dialled.
fn parked(server: &Server) -> u64 {
    server.api_get("/api/v1/status")["parked"].as_u64().unwrap()
}

#[test]
fn a_black_holed_next_hop_does_not_delay_anyone_elses_notifications() {
    let (_listener, _filler, hole) = black_hole();
    let pki = Pki::new("black-hole-pki");
    let text = pki
        .config(&[
            (
                "allowed_domains = []",
                "allowed_domains = [{ domain = \"fabrikam.com\" }]",
            ),
            (
                "internal_next_hop = \"\"",
                &format!("internal_next_hop = \"sip:{hole};transport=tcp\""),
            ),
            (
                "min_notify_interval_ms = 5000",
                "min_notify_interval_ms = 0",
            ),
        ])
        // The watchers are the inside; the partner proves itself anyway.
        .replace(
            "trusted_networks = []",
            "trusted_networks = [\"127.0.0.0/8\"]",
        );
    let server = start("black-hole", &text);
    let crowd = Crowd::subscribe(server.udp, 20, 50);
    // The fan-out to 1,000 watchers with every next hop answering.
    let set = Instant::now();
    assert_eq!(set_note(&server, "before"), 200);
    let before = crowd.all_hear("before", set);

    // A partner's MESSAGE for a user of ours that no endpoint serves goes
    // to the internal next hop, whose connect hangs.
    let caller = std::thread::scope(|scope| {
        let caller = scope.spawn(|| {
            let sent = Instant::now();
            let status = tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(partner_request(
                    &pki,
                    &server,
                    "fabrikam.com",
                    "MESSAGE",
                    "sip:alice@fabrikam.com",
                    "sip:nobody@contoso.com",
                ));
            (status, sent.elapsed())
        });
        assert!(
            eventually(Duration::from_secs(5), || parked(&server) == 1),
            "the MESSAGE waits for its connect: {}",
            server.api_get("/api/v1/status")
        );
        let set = Instant::now();
        assert_eq!(set_note(&server, "during"), 200);
        let during = crowd.all_hear("during", set);
        assert_eq!(parked(&server), 1, "the connect was pending all along");
        eprintln!(
            "fan-out to 1,000 watchers: {before:?} before, {during:?} with a connect hanging"
        );
        // Before this bound, the event loop waited out the connect (the
        // 5 s handshake timeout) and every NOTIFY with it.
        assert!(
            during < before * 3 + Duration::from_millis(250),
            "the fan-out took {during:?} with a connect hanging, {before:?} without"
        );
        caller.join().unwrap()
    });
    // The connect gives up at its timeout and the partner hears so.
    let (status, waited) = caller;
    assert_eq!(status, 503, "the unreachable next hop is a 503");
    assert!(
        waited < Duration::from_secs(15),
        "answered within the handshake timeout: {waited:?}"
    );
    assert!(eventually(Duration::from_secs(5), || parked(&server) == 0));
}
