//! `porchlight serve` over real sockets: what it answers, how, and to whom.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::*;
use porchlight_sip::HeaderName;

const WAIT: Duration = Duration::from_millis(700);

fn only_response(server: std::net::SocketAddr, request: &[u8]) -> porchlight_sip::Message {
    let mut responses = udp_exchange(server, request, WAIT);
    assert_eq!(responses.len(), 1, "exactly one response expected");
    responses.remove(0)
}

#[test]
fn options_over_udp_gets_200_with_capabilities_and_nat_parameters() {
    let server = start("options-udp", &config(&[], ""));
    let r = only_response(server.udp, &request("OPTIONS", "sip:contoso.com", ""));
    assert_eq!(r.status(), Some(200));
    assert_eq!(
        r.text(HeaderName::Allow).unwrap(),
        Some("OPTIONS, ACK, CANCEL, SUBSCRIBE, PUBLISH, SERVICE, REGISTER, INVITE, MESSAGE, BYE, INFO")
    );
    assert!(
        r.accept()
            .filter_map(Result::ok)
            .any(|m| m.is("application/pidf+xml")),
        "Accept lists PIDF"
    );
    assert!(r.lists_token(HeaderName::Supported, "ms-benotify"));
    assert!(r.lists_token(HeaderName::Supported, "eventlist"));
    assert_eq!(
        r.text(HeaderName::AllowEvents).unwrap(),
        Some("presence, presence.winfo")
    );
    assert!(r.to().unwrap().tag().is_some(), "To tag added");
    let via = r.top_via().unwrap();
    assert_eq!(via.received(), Some("127.0.0.1"));
    assert!(via.rport().flatten().is_some(), "rport filled in");
    assert!(r.server().unwrap().unwrap().starts_with("Porchlight/"));
}

#[test]
fn rfc4475_requests_get_the_responses_the_rfc_asks_for() {
    // The Request-URIs name example.com: answer as a node for that domain.
    let edit = config(
        &[(
            "domains = [\"contoso.com\"]",
            "domains = [\"contoso.com\", \"example.com\", \"company.com\", \"registrar.example.com\"]",
        )],
        "",
    );
    let server = start("torture", &edit);
    let cases: [(&str, u16); 12] = [
        ("badinv01", 400),
        ("lwsstart", 400),
        ("trws", 400),
        ("ltgtruri", 400),
        ("escruri", 400),
        ("quotbal", 400),
        ("mismatch01", 400),
        ("multi01", 400),
        ("badvers", 505),
        ("unkscm", 416),
        ("bext01", 420),
        ("esc02", 501),
    ];
    for (name, status) in cases {
        let responses = udp_exchange(
            server.udp,
            &with_rport(&fixture(&format!("rfc4475/{name}.dat"))),
            WAIT,
        );
        // INVITEs also get 100 Trying, and UDP finals are retransmitted
        // until ACKed (Timer G): every final must be the expected one.
        let finals: Vec<_> = responses
            .iter()
            .filter_map(|r| r.status())
            .filter(|&c| c >= 200)
            .collect();
        assert!(
            !finals.is_empty() && finals.iter().all(|&c| c == status),
            "{name}: {finals:?}"
        );
        if name == "bext01" {
            let unsupported: Vec<_> = responses[0]
                .tokens(HeaderName::Unsupported)
                .map(Result::unwrap)
                .collect();
            assert_eq!(
                unsupported,
                ["nothingSupportsThis", "nothingSupportsThisEither"]
            );
        }
    }
    // Zero Max-Forwards to us is answered; a response is never answered.
    let zeromf = udp_exchange(
        server.udp,
        &with_rport(&fixture("rfc4475/zeromf.dat")),
        WAIT,
    );
    assert_eq!(
        zeromf.iter().map(|r| r.status()).collect::<Vec<_>>(),
        [Some(200)]
    );
    assert!(udp_exchange(server.udp, &fixture("rfc4475/bcast.dat"), WAIT).is_empty());
}

#[test]
fn unknown_methods_get_501_calls_without_a_callee_404_or_480_and_foreign_targets_are_refused() {
    let server = start("methods", &config(&[], ""));
    let responses = udp_exchange(
        server.udp,
        &request("FROBNICATE", "sip:helpdesk@contoso.com", ""),
        WAIT,
    );
    assert_eq!(responses[0].status(), Some(501));
    assert_eq!(
        responses[0].text(HeaderName::Allow).unwrap(),
        Some("OPTIONS, ACK, CANCEL, SUBSCRIBE, PUBLISH, SERVICE, REGISTER, INVITE, MESSAGE, BYE, INFO")
    );
    // A call for no endpoint: 404; for an endpoint whose app is not
    // reachable (no registration, target or webhook): 480.
    for (uri, status) in [
        ("sip:nobody@contoso.com", 404),
        ("sip:helpdesk@contoso.com", 480),
    ] {
        let invite = request("INVITE", uri, "");
        let responses = udp_exchange(server.udp, &invite, WAIT);
        let codes: Vec<_> = responses.iter().map(|r| r.status().unwrap()).collect();
        // A refusal keeps no state (RFC 3261 §8.2.7): answered once…
        assert_eq!(codes, [100, status], "{uri}");
        // …and a retransmitted INVITE again, with the same To tag.
        let again = udp_exchange(server.udp, &invite, WAIT);
        let last = again.last().unwrap();
        assert_eq!(last.status(), Some(status));
        assert_eq!(
            last.to().unwrap().tag(),
            responses[1].to().unwrap().tag(),
            "{uri}"
        );
    }
    // Inside a dialog no one here holds: 481.
    let bye = String::from_utf8(request("BYE", "sip:helpdesk@contoso.com", ""))
        .unwrap()
        .replace(
            "To: <sip:helpdesk@contoso.com>",
            "To: <sip:helpdesk@contoso.com>;tag=gone",
        );
    assert_eq!(
        only_response(server.udp, bye.as_bytes()).status(),
        Some(481)
    );
    let hop = request("OPTIONS", "sip:bob@elsewhere.example", "").replace_max_forwards();
    assert_eq!(only_response(server.udp, &hop).status(), Some(483));
    let relay = request("OPTIONS", "sip:bob@elsewhere.example", "");
    assert_eq!(only_response(server.udp, &relay).status(), Some(403));
    let body = request(
        "OPTIONS",
        "sip:contoso.com",
        "Content-Type: application/unknownformat\r\n",
    )
    .with_body(b"0123456789");
    let r = only_response(server.udp, &body);
    assert_eq!(r.status(), Some(415));
    assert!(r.first_value(HeaderName::Accept).is_some());
}

#[test]
fn oversize_messages_get_513() {
    let server = start(
        "oversize",
        &config(
            &[
                ("max_message_bytes = 65535", "max_message_bytes = 2048"),
                ("max_dialog_bytes = 8192", "max_dialog_bytes = 1024"),
            ],
            "",
        ),
    );
    let big = request("OPTIONS", "sip:contoso.com", "").with_body(&[b'x'; 3000]);
    assert_eq!(only_response(server.udp, &big).status(), Some(513));
    let mut tcp = TcpStream::connect(server.tcp).unwrap();
    tcp.write_all(&big).unwrap();
    assert_eq!(StreamReader::new(tcp).next().status(), Some(513));
}

#[test]
fn retransmitted_requests_get_the_same_response_once_per_copy() {
    let server = start("retransmit", &config(&[], ""));
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let req = request("OPTIONS", "sip:contoso.com", "");
    socket.send_to(&req, server.udp).unwrap();
    socket.send_to(&req, server.udp).unwrap();
    let mut buf = [0u8; 4096];
    let (n1, _) = socket.recv_from(&mut buf).unwrap();
    let first = buf[..n1].to_vec();
    let (n2, _) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(
        &buf[..n2],
        &first[..],
        "the transaction resends the identical response (same To tag)"
    );
}

/// Reads framed messages from a stream, keeping what it read ahead.
struct StreamReader {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl StreamReader {
    fn new(stream: TcpStream) -> StreamReader {
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        StreamReader {
            stream,
            buf: Vec::new(),
        }
    }

    fn next(&mut self) -> porchlight_sip::Message {
        let mut chunk = [0u8; 4096];
        loop {
            if let Ok(Some(frame)) =
                porchlight_sip::Message::frame(&self.buf, &porchlight_sip::Limits::default())
            {
                let msg = parse(&self.buf[frame.skip..frame.skip + frame.len]);
                self.buf.drain(..frame.skip + frame.len);
                return msg;
            }
            let n = self
                .stream
                .read(&mut chunk)
                .expect("response before timeout");
            assert!(n > 0, "connection closed before a response");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The torture messages carry Vias without a port or `rport`, so RFC 3261
/// §18.2.2 sends their responses to port 5060; the test client asks for
/// symmetric responses (RFC 3581) to receive them on its own port.
fn with_rport(message: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(message).into_owned();
    let mut done = false;
    let lines: Vec<String> = text
        .split("\r\n")
        .map(|line| {
            let lower = line.to_ascii_lowercase();
            if !done && (lower.starts_with("via:") || lower.starts_with("v:")) {
                done = true;
                format!("{line};rport")
            } else {
                line.to_owned()
            }
        })
        .collect();
    if String::from_utf8(message.to_vec()).is_err() {
        return message.to_vec();
    }
    lines.join("\r\n").into_bytes()
}

#[test]
fn tcp_pipelined_requests_keepalive_pong_and_idle_close() {
    let server = start(
        "tcp",
        &config(&[("idle_timeout_secs = 300", "idle_timeout_secs = 1")], ""),
    );
    let mut tcp = TcpStream::connect(server.tcp).unwrap();
    let mut both = request("OPTIONS", "sip:contoso.com", "");
    both.extend(request("OPTIONS", "sip:contoso.com", ""));
    tcp.write_all(&both).unwrap();
    let mut reader = StreamReader::new(tcp.try_clone().unwrap());
    assert_eq!(reader.next().status(), Some(200));
    assert_eq!(reader.next().status(), Some(200));
    tcp.write_all(b"\r\n\r\n").unwrap();
    let mut pong = [0u8; 2];
    tcp.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"\r\n", "RFC 5626 pong");
    let mut rest = [0u8; 16];
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        tcp.read(&mut rest).unwrap(),
        0,
        "idle connection closed by the server"
    );
}

#[test]
fn connection_limit_is_enforced() {
    let server = start(
        "connlimit",
        &config(
            &[
                ("max_connections = 10000", "max_connections = 2"),
                ("reserved_connections = 2000", "reserved_connections = 0"),
            ],
            "",
        ),
    );
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(server.tcp).unwrap())
        .collect();
    for c in &mut held {
        c.write_all(&request("OPTIONS", "sip:contoso.com", ""))
            .unwrap();
        assert_eq!(
            StreamReader::new(c.try_clone().unwrap()).next().status(),
            Some(200)
        );
    }
    let mut third = TcpStream::connect(server.tcp).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let _ = third.write_all(&request("OPTIONS", "sip:contoso.com", ""));
    let mut buf = [0u8; 64];
    assert!(
        matches!(third.read(&mut buf), Ok(0) | Err(_)),
        "third connection is refused"
    );
}

trait RequestEdit {
    fn replace_max_forwards(self) -> Vec<u8>;
    fn with_body(self, body: &[u8]) -> Vec<u8>;
}

impl RequestEdit for Vec<u8> {
    fn replace_max_forwards(self) -> Vec<u8> {
        String::from_utf8(self)
            .unwrap()
            .replace("Max-Forwards: 70", "Max-Forwards: 0")
            .into_bytes()
    }
    fn with_body(self, body: &[u8]) -> Vec<u8> {
        let text = String::from_utf8(self).unwrap();
        let mut out = text
            .replace(
                "Content-Length: 0\r\n",
                &format!("Content-Length: {}\r\n", body.len()),
            )
            .into_bytes();
        out.extend_from_slice(body);
        out
    }
}
