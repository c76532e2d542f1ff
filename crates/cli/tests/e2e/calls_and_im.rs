//! Calls and IM between federated users and application endpoints, with
//! real peers: Kamailio (Debian `kamailio`, `kamailio-tls-modules`) as a
//! partner domain's edge over mutual TLS, SIPp and baresip as the users
//! and the apps, and a small HTTP receiver in the test as a webhook app.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use porchlight_sip::Message;

use crate::common::*;

const FABRIKAM: (&str, &str) = (
    "allowed_domains = []                 # e.g.",
    "allowed_domains = [{ domain = \"fabrikam.com\" }] #",
);

/// contoso.com's edge (loopback untrusted, fabrikam.com allowed) serving
/// `sip:ivr@contoso.com`, whose calls go to `sip_target`.
fn ivr_config(pki: &Pki, endpoint_extra: &str) -> String {
    format!(
        "{}\n[[endpoint]]\nuri = \"sip:ivr@contoso.com\"\ndisplay_name = \"IVR\"\n{endpoint_extra}\n",
        pki.config(&[FABRIKAM])
    )
}

#[test]
fn sipp_calls_an_ivr_through_the_edge_hang_up_either_side_and_cancel() {
    let pki = Pki::new("calls-sipp-pki");
    let ivr_port = free_port();
    let server = start(
        "calls-sipp",
        &ivr_config(&pki, &format!("sip_target = \"sip:127.0.0.1:{ivr_port}\"")),
    );
    let fabrikam = Kamailio::start(&pki, "calls-sipp", "fabrikam.com", server.tls);
    let ivr = |file: &str| {
        sipp(&[
            "-sf",
            &scenario(file),
            "-i",
            "127.0.0.1",
            "-p",
            &ivr_port.to_string(),
        ])
    };
    for (caller, callee, what) in [
        (
            "call-uac.xml",
            "call-uas.xml",
            "INVITE, 200, end-to-end ACK and the caller's BYE; the IVR sees the trust header",
        ),
        (
            "call-uac-hung-up.xml",
            "call-uas-hangs-up.xml",
            "the IVR hangs up: its BYE reaches the partner through the edge",
        ),
        (
            "cancel-uac.xml",
            "cancel-uas.xml",
            "the caller cancels while it rings: 200 for the CANCEL, 487 and its ACK",
        ),
    ] {
        let callee = ivr(callee);
        std::thread::sleep(Duration::from_millis(300));
        let caller = sipp_caller(fabrikam.udp(), caller, "ivr");
        finished_ok(caller, &format!("the caller ({what})"));
        finished_ok(callee, &format!("the IVR ({what})"));
    }
}

/// A webhook app: answers each POST as `answer` says, handing the test
/// what it received.
struct Received {
    headers: Vec<(String, String)>,
    body: String,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// How the webhook app answers one POST: a delay, a status and a body.
type Answer = (Duration, u16, &'static str);

fn webhook_app(answers: Vec<Answer>) -> (u16, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut answers = answers.into_iter();
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let tx = tx.clone();
            // One connection may carry several requests (keep-alive).
            let mut reader = BufReader::new(stream);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let mut headers = Vec::new();
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    let h = h.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    let (n, v) = h.split_once(':').unwrap();
                    headers.push((n.trim().to_owned(), v.trim().to_owned()));
                }
                let length: usize = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, v)| v.parse().unwrap());
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let (delay, status, reply) = answers.next().unwrap_or((Duration::ZERO, 200, ""));
                let _ = tx.send(Received {
                    headers,
                    body: String::from_utf8(body).unwrap(),
                });
                std::thread::sleep(delay);
                let answer = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
                    reply.len()
                );
                if reader.get_mut().write_all(answer.as_bytes()).is_err() {
                    break;
                }
            }
        }
    });
    (port, rx)
}

/// The webhook signature an app computes to check a delivery.
fn expected_signature(secret: &str, received: &Received) -> bool {
    use hmac::{Hmac, Mac};
    let header = received.header("x-porchlight-signature").unwrap();
    let (t, v1) = header.split_once(",v1=").unwrap();
    let t = t.strip_prefix("t=").unwrap();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{}", received.body).as_bytes());
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    hex == v1
}

/// A MESSAGE to `to` over UDP from the trusted loopback; its final response.
fn message(server: SocketAddr, to: &str, text: &str) -> Message {
    udp_message(
        "127.0.0.1",
        server,
        "\"Dave\" <sip:dave@127.0.0.1>",
        to,
        text,
    )
}

fn reason(response: &Message) -> String {
    String::from_utf8_lossy(response.reason().unwrap_or_default()).into_owned()
}

#[test]
fn webhook_deliveries_are_signed_retried_and_answered_as_the_app_answered() {
    let secret = "shared-with-the-bot";
    let ok = (Duration::ZERO, 200, "{}");
    let slow = (Duration::from_millis(1500), 200, "{}");
    let broken = (Duration::ZERO, 500, "");
    let (port, posts) = webhook_app(vec![
        ok,
        (Duration::ZERO, 202, ""),
        // Two slow attempts: 408.
        slow,
        slow,
        // Three 500s (the first attempt and two retries): 503.
        broken,
        broken,
        broken,
        // A 500 then a success: the retry delivers it.
        broken,
        ok,
        (Duration::ZERO, 404, ""),
    ]);
    let dead_port = free_port();
    let endpoints = format!(
        "[[endpoint]]\nuri = \"sip:bot@porchlight.test\"\ndisplay_name = \"Bot\"\n\
         [endpoint.webhook]\nurl = \"http://127.0.0.1:{port}/im\"\nsecret = \"{secret}\"\n\
         timeout_ms = 1000\nretries = 2\n\
         [[endpoint]]\nuri = \"sip:slowbot@porchlight.test\"\ndisplay_name = \"Slow\"\n\
         [endpoint.webhook]\nurl = \"http://127.0.0.1:{port}/im\"\nsecret = \"{secret}\"\n\
         timeout_ms = 1000\nretries = 1\n\
         [[endpoint]]\nuri = \"sip:gone@porchlight.test\"\ndisplay_name = \"Gone\"\n\
         [endpoint.webhook]\nurl = \"http://127.0.0.1:{dead_port}/im\"\nsecret = \"{secret}\"\n\
         [[endpoint]]\nuri = \"sip:mute@porchlight.test\"\ndisplay_name = \"Mute\"\ncapabilities = [\"audio\"]\n\
         [[endpoint]]\nuri = \"sip:nowhere@porchlight.test\"\ndisplay_name = \"Nowhere\"\n"
    );
    let server = start(
        "webhook",
        &config(
            &[(
                "domains = [\"contoso.com\"]",
                "domains = [\"contoso.com\", \"porchlight.test\"]",
            )],
            &endpoints,
        ),
    );

    let answer = message(server.udp, "sip:bot@porchlight.test", "hello bot");
    assert_eq!(answer.status(), Some(200), "{}", reason(&answer));
    let post = posts.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(expected_signature(secret, &post), "{:?}", post.headers);
    assert!(!expected_signature("another-secret", &post));
    let json = post.json();
    assert_eq!(json["event"], "message");
    assert_eq!(json["text"], "hello bot");
    assert_eq!(json["from"], "sip:dave@127.0.0.1");
    assert_eq!(json["from_name"], "Dave");
    assert_eq!(json["endpoint"], "sip:bot@porchlight.test");
    assert_eq!(json["content_type"], "text/plain");
    assert_eq!(post.header("content-type"), Some("application/json"));

    let answer = message(server.udp, "sip:bot@porchlight.test", "second");
    assert_eq!(answer.status(), Some(202), "{}", reason(&answer));
    posts.recv_timeout(Duration::from_secs(5)).unwrap();

    let answer = message(server.udp, "sip:slowbot@porchlight.test", "anyone?");
    assert_eq!(answer.status(), Some(408), "{}", reason(&answer));
    let first = posts.recv_timeout(Duration::from_secs(5)).unwrap();
    let second = posts.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(
        first.header("x-porchlight-delivery"),
        second.header("x-porchlight-delivery"),
        "a retry keeps its delivery id"
    );

    let answer = message(server.udp, "sip:bot@porchlight.test", "broken");
    assert_eq!(answer.status(), Some(503), "{}", reason(&answer));
    assert!(reason(&answer).contains("HTTP 500"), "{}", reason(&answer));
    let text = String::from_utf8_lossy(answer.as_bytes()).into_owned();
    assert!(text.contains("\r\nRetry-After: 30\r\n"), "{text}");
    for _ in 0..3 {
        posts.recv_timeout(Duration::from_secs(5)).unwrap();
    }

    let answer = message(server.udp, "sip:bot@porchlight.test", "retried");
    assert_eq!(answer.status(), Some(200), "{}", reason(&answer));
    let tries: Vec<Received> = (0..2)
        .map(|_| posts.recv_timeout(Duration::from_secs(5)).unwrap())
        .collect();
    assert!(tries.iter().all(|t| t.json()["text"] == "retried"));

    let answer = message(server.udp, "sip:bot@porchlight.test", "refused");
    assert_eq!(answer.status(), Some(480), "{}", reason(&answer));
    assert!(reason(&answer).contains("HTTP 404"), "{}", reason(&answer));
    posts.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(
        posts.recv_timeout(Duration::from_millis(800)).is_err(),
        "a 4xx is not retried"
    );

    let started = Instant::now();
    let answer = message(server.udp, "sip:gone@porchlight.test", "hello?");
    assert_eq!(answer.status(), Some(480), "{}", reason(&answer));
    assert!(
        reason(&answer).contains("cannot be reached"),
        "{}",
        reason(&answer)
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    let answer = message(server.udp, "sip:mute@porchlight.test", "can you read?");
    assert_eq!(answer.status(), Some(488), "{}", reason(&answer));
    let answer = message(server.udp, "sip:nowhere@porchlight.test", "hi");
    assert_eq!(answer.status(), Some(480), "{}", reason(&answer));
}

/// Ten seconds of a 440 Hz tone, 8 kHz mono, as baresip's `aufile` reads.
fn tone(path: &std::path::Path) {
    let samples: Vec<u8> = (0..80_000)
        .flat_map(|i| {
            let t = i as f64 / 8000.0;
            ((8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16).to_le_bytes()
        })
        .collect();
    let mut wav = Vec::new();
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + samples.len() as u32).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    for field in [16u32.to_le_bytes().to_vec(), vec![1, 0, 1, 0]] {
        wav.extend_from_slice(&field);
    }
    wav.extend_from_slice(&8000u32.to_le_bytes());
    wav.extend_from_slice(&16000u32.to_le_bytes());
    wav.extend_from_slice(&[2, 0, 16, 0]);
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&(samples.len() as u32).to_le_bytes());
    wav.extend_from_slice(&samples);
    std::fs::write(path, wav).unwrap();
}

/// What baresip printed until the call ended: up to the call statistics
/// its `rtcpsummary` module prints as the call closes, whichever side
/// hung up.
fn call_ended(phone: &Baresip) -> String {
    phone
        .expect("EX=BareSip;", Duration::from_secs(15))
        .join("\n")
}

/// Whether the call statistics show audio both ways: at least `packets`
/// RTP packets sent (`PS=`) and received (`PR=`).
fn audio_flowed(ended: &str, packets: u64) -> bool {
    let Some(summary) = ended.lines().find(|l| l.starts_with("EX=BareSip;")) else {
        return false;
    };
    let count = |key: &str| {
        summary
            .split(';')
            .find_map(|field| field.strip_prefix(key))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    count("PS=") >= packets && count("PR=") >= packets
}

#[test]
fn a_partner_baresip_calls_and_messages_endpoints_served_by_baresip_and_a_webhook() {
    let pki = Pki::new("calls-baresip-pki");
    let (hook_port, posts) = webhook_app(vec![
        (
            Duration::ZERO,
            200,
            "{\"reply\": \"Hi alice, the bot here\"}",
        );
        4
    ]);
    let endpoints = format!(
        "uri = \"sip:ivr@contoso.com\"\ndisplay_name = \"IVR\"\n\
         [endpoint.registration]\npassword = \"s3cret\"\n\
         [[endpoint]]\nuri = \"sip:bot@contoso.com\"\ndisplay_name = \"Bot\"\ncapabilities = [\"im\"]\n\
         [endpoint.webhook]\nurl = \"http://127.0.0.1:{hook_port}/im\"\nsecret = \"bot-secret\"\n"
    );
    let text = ivr_config(&pki, "").replace(
        "uri = \"sip:ivr@contoso.com\"\ndisplay_name = \"IVR\"\n",
        &endpoints,
    );
    let text = text.replace(
        "digest_algorithms = [\"SHA-256\", \"MD5\"]",
        "digest_algorithms = [\"MD5\"]",
    );
    let server = start("calls-baresip", &text);
    let fabrikam = Kamailio::start(&pki, "calls-baresip", "fabrikam.com", server.tls);
    let dir = temp_dir("calls-baresip-phones");
    tone(&dir.join("tone.wav"));
    let audio = format!(
        "module g711.so\nmodule aufile.so\nmodule rtcpsummary.so\naudio_source aufile,{}\n",
        dir.join("tone.wav").display()
    );

    // The IVR's app registers with the node and answers calls itself.
    let ivr = Baresip::start_with(
        &dir.join("ivr"),
        free_port(),
        &["account", "contact"],
        &audio,
        &format!(
            "<sip:ivr@contoso.com>;auth_pass=s3cret;outbound=\"sip:{}\";regint=600;answermode=auto",
            server.udp
        ),
        "\"Alice\" <sip:alice@fabrikam.com>",
    );
    ivr.expect("200 OK", Duration::from_secs(10));
    // Alice registers with her own domain's edge.
    let alice = Baresip::start_with(
        &dir.join("alice"),
        free_port(),
        &["account", "contact"],
        &audio,
        &format!(
            "<sip:alice@fabrikam.com>;outbound=\"sip:{}\";regint=600",
            fabrikam.udp()
        ),
        "\"IVR\" <sip:ivr@contoso.com>\n\"Bot\" <sip:bot@contoso.com>",
    );
    alice.expect("200 OK", Duration::from_secs(10));

    // Two calls answered by the IVR, hung up by alice and then by the IVR;
    // audio flows both ways each time.
    for hangs_up in [&alice, &ivr] {
        alice.command("/dial sip:ivr@contoso.com");
        alice.expect("Call established", Duration::from_secs(10));
        ivr.expect("Call established", Duration::from_secs(10));
        // Long enough for RTCP reports (every 5 s or so) to count the packets.
        std::thread::sleep(Duration::from_secs(6));
        hangs_up.command("/hangup");
        let (a, i) = (call_ended(&alice), call_ended(&ivr));
        // Six seconds of 20 ms packets is 300 each way.
        assert!(audio_flowed(&a, 200), "alice's call statistics: {a}");
        assert!(audio_flowed(&i, 200), "the IVR's call statistics: {i}");
    }

    // The IVR's app calls out: through the edge to alice's domain.
    alice.command("/answermode auto");
    ivr.command("/dial sip:alice@fabrikam.com");
    ivr.expect("Call established", Duration::from_secs(10));
    alice.expect("Call established", Duration::from_secs(10));
    alice.command("/hangup");
    call_ended(&alice);
    assert!(
        call_ended(&ivr).contains("session closed"),
        "the BYE reached the IVR's app"
    );

    // IM over SIP both ways: alice to the IVR's app, and its answer back
    // out through the edge.
    let mut alice_sees = alice.attach();
    let mut ivr_sees = ivr.attach();
    alice_sees.send("/message hello ivr");
    ivr_sees.expect(
        "sip:alice@fabrikam.com: \"hello ivr\"",
        Duration::from_secs(10),
    );
    ivr_sees.send("/message hello alice, this is the ivr");
    alice_sees.expect(
        "sip:ivr@contoso.com: \"hello alice, this is the ivr\"",
        Duration::from_secs(10),
    );

    // IM to the bot, which speaks only HTTP: its webhook gets the message,
    // and its reply reaches alice as IM.
    alice_sees.send("/contact_next");
    alice_sees.send("/message hello bot");
    let post = posts.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(post.json()["text"], "hello bot");
    assert_eq!(post.json()["from"], "sip:alice@fabrikam.com");
    assert_eq!(post.json()["peer"], "fabrikam.com");
    assert_eq!(post.json()["verified"], true);
    assert!(expected_signature("bot-secret", &post));
    alice_sees.expect(
        "sip:bot@contoso.com: \"Hi alice, the bot here\"",
        Duration::from_secs(10),
    );

    // The bot's app speaks first, through the API; the policy still
    // decides where it may write.
    let (code, sent) = send_as(
        &server,
        "sip:bot@contoso.com",
        "sip:alice@fabrikam.com",
        "Ticket 42 is solved",
    );
    assert_eq!((code, sent["status"].as_u64()), (200, Some(200)), "{sent}");
    alice_sees.expect(
        "sip:bot@contoso.com: \"Ticket 42 is solved\"",
        Duration::from_secs(10),
    );
    let (code, sent) = send_as(
        &server,
        "sip:bot@contoso.com",
        "sip:eve@elsewhere.example",
        "hi",
    );
    assert_eq!((code, sent["status"].as_u64()), (403, Some(403)), "{sent}");
    let (code, _) = send_as(
        &server,
        "sip:nobody@contoso.com",
        "sip:alice@fabrikam.com",
        "hi",
    );
    assert_eq!(code, 404);
}

/// Sends IM as `endpoint` through the admin API: the HTTP status and the
/// JSON answer.
fn send_as(server: &Server, endpoint: &str, to: &str, text: &str) -> (u16, serde_json::Value) {
    let (admin, bearer) = server.api();
    let url = format!("http://{admin}/api/v1/endpoints/{endpoint}/messages");
    let response = ureq::post(&url)
        .set("Authorization", &bearer)
        .send_json(serde_json::json!({ "to": to, "text": text }));
    let response = match response {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{url}: {e}"),
    };
    let code = response.status();
    (code, response.into_json().unwrap_or_default())
}

/// Receives on `socket` until a message `wanted` accepts arrives; panics
/// with `what` after 10 s.
fn receive_until(socket: &UdpSocket, what: &str, wanted: impl Fn(&Message) -> bool) -> Message {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 65536];
    loop {
        assert!(Instant::now() < deadline, "no {what} arrived");
        let Ok(n) = socket.recv(&mut buf) else {
            continue;
        };
        let m = parse(&buf[..n]);
        if wanted(&m) {
            return m;
        }
    }
}

/// Everything `socket` receives within `wait`.
fn receive_for(socket: &UdpSocket, wait: Duration) -> Vec<Message> {
    let deadline = Instant::now() + wait;
    let mut buf = vec![0u8; 65536];
    let mut got = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        let left = left.max(Duration::from_millis(1));
        socket.set_read_timeout(Some(left)).unwrap();
        if let Ok(n) = socket.recv(&mut buf) {
            got.push(parse(&buf[..n]));
        }
    }
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    got
}

/// The next request with `method` on `socket`, unanswered.
fn receive_request(socket: &UdpSocket, method: &str) -> Message {
    receive_until(socket, method, |m| m.method() == Some(method))
}

/// The final response on `socket` to the request with CSeq method `method`.
fn final_response(socket: &UdpSocket, method: &str) -> Message {
    receive_until(socket, &format!("final response to {method}"), |m| {
        m.status().is_some_and(|s| s >= 200) && m.cseq().unwrap().method == method
    })
}

#[test]
fn a_microsoft_im_session_with_a_webhook_app_is_held_by_the_node() {
    use base64::Engine;
    let (port, posts) = webhook_app(vec![
        (Duration::ZERO, 200, "{\"reply\": \"Hello from the bot\"}"),
        (Duration::ZERO, 200, "{\"reply\": \"Still here\"}"),
    ]);
    let endpoints = format!(
        "[[endpoint]]\nuri = \"sip:bot@porchlight.test\"\ndisplay_name = \"Bot\"\ncapabilities = [\"im\"]\n\
         [endpoint.webhook]\nurl = \"http://127.0.0.1:{port}/im\"\nsecret = \"s\"\n"
    );
    let server = start(
        "im-session",
        &config(
            &[(
                "domains = [\"contoso.com\"]",
                "domains = [\"contoso.com\", \"porchlight.test\"]",
            )],
            &endpoints,
        ),
    );
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let me = socket.local_addr().unwrap();
    let first = base64::engine::general_purpose::STANDARD.encode("Hi bot, are you there?");
    let sdp = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=session\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
               m=message 5060 sip null\r\na=accept-types:text/plain text/html\r\n";
    let invite = format!(
        "INVITE sip:bot@porchlight.test SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKims1;rport\r\n\
         Max-Forwards: 70\r\nFrom: \"Dave\" <sip:dave@127.0.0.1>;tag=d1\r\nTo: <sip:bot@porchlight.test>\r\n\
         Call-ID: im-session-1\r\nCSeq: 1 INVITE\r\nContact: <sip:dave@{me}>\r\n\
         ms-text-format: text/plain; charset=UTF-8; msgr=WAAtAE0A; ms-body={first}\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    socket.send_to(invite.as_bytes(), server.udp).unwrap();
    let ok = final_response(&socket, "INVITE");
    assert_eq!(ok.status(), Some(200));
    let body = String::from_utf8_lossy(ok.body()).into_owned();
    assert!(
        body.contains("m=message 5060 sip sip:bot@porchlight.test"),
        "{body}"
    );
    let tag = ok.to().unwrap().tag().unwrap().to_owned();
    // Over UDP the 200 comes again (at T1, then 2·T1 later) until it is
    // acknowledged; the ACK goes between the two. The app's reply may
    // already come in the meantime.
    let early = receive_for(&socket, Duration::from_millis(800));
    let is_invite_200 =
        |m: &Message| m.status() == Some(200) && m.cseq().unwrap().method == "INVITE";
    assert!(
        early.iter().any(is_invite_200),
        "the 200 was not sent again"
    );
    let ack = format!(
        "ACK sip:bot@{} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKims2;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:dave@127.0.0.1>;tag=d1\r\nTo: <sip:bot@porchlight.test>;tag={tag}\r\n\
         Call-ID: im-session-1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        server.udp
    );
    socket.send_to(ack.as_bytes(), server.udp).unwrap();
    let late = receive_for(&socket, Duration::from_millis(2000));
    assert!(
        !late.iter().any(is_invite_200),
        "the 200 came again after its ACK"
    );

    // The first text, from the INVITE's header, reaches the webhook; the
    // app's reply comes back inside the dialog.
    let post = posts.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(post.json()["text"], "Hi bot, are you there?");
    assert_eq!(post.json()["in_session"], true);
    assert_eq!(post.json()["call_id"], "im-session-1");
    let reply = early
        .into_iter()
        .chain(late)
        .find(|m| m.method() == Some("MESSAGE"))
        .expect("the app's reply in the dialog");
    assert_eq!(reply.call_id().unwrap(), "im-session-1");
    assert_eq!(reply.from().unwrap().tag(), Some(tag.as_str()));
    assert_eq!(reply.to().unwrap().tag(), Some("d1"));
    assert_eq!(reply.request_uri(), Some(format!("sip:dave@{me}").as_str()));
    assert_eq!(reply.body(), b"Hello from the bot");
    let answer = |request: &Message| {
        let via = std::str::from_utf8(
            request
                .first_value(porchlight_sip::HeaderName::Via)
                .unwrap(),
        )
        .unwrap();
        format!(
            "SIP/2.0 200 OK\r\nVia: {via}\r\nFrom: <sip:bot@porchlight.test>;tag={tag}\r\n\
             To: <sip:dave@127.0.0.1>;tag=d1\r\nCall-ID: im-session-1\r\nCSeq: {} MESSAGE\r\n\
             Content-Length: 0\r\n\r\n",
            request.cseq().unwrap().seq
        )
    };
    socket
        .send_to(answer(&reply).as_bytes(), server.udp)
        .unwrap();

    // Later text inside the dialog: to the webhook, answered by its outcome.
    let in_dialog = |method: &str, cseq: u32, text: &str| {
        format!(
            "{method} sip:bot@{} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKims{cseq};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:dave@127.0.0.1>;tag=d1\r\nTo: <sip:bot@porchlight.test>;tag={tag}\r\n\
             Call-ID: im-session-1\r\nCSeq: {cseq} {method}\r\nContent-Type: text/plain\r\n\
             Content-Length: {}\r\n\r\n{text}",
            server.udp,
            text.len()
        )
    };
    socket
        .send_to(
            in_dialog("MESSAGE", 2, "Reset my password").as_bytes(),
            server.udp,
        )
        .unwrap();
    assert_eq!(final_response(&socket, "MESSAGE").status(), Some(200));
    let post = posts.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(post.json()["text"], "Reset my password");
    let reply = receive_request(&socket, "MESSAGE");
    assert_eq!(reply.body(), b"Still here");
    assert_eq!(
        reply.cseq().unwrap().seq,
        2,
        "our CSeq goes up in the dialog"
    );

    // BYE ends it; text after that belongs to no dialog.
    socket
        .send_to(in_dialog("BYE", 3, "").as_bytes(), server.udp)
        .unwrap();
    assert_eq!(final_response(&socket, "BYE").status(), Some(200));
    socket
        .send_to(in_dialog("MESSAGE", 4, "hello?").as_bytes(), server.udp)
        .unwrap();
    assert_eq!(final_response(&socket, "MESSAGE").status(), Some(481));
}

#[test]
fn a_dead_target_gets_503_at_once_over_tcp_and_408_when_udp_stays_silent() {
    let refused = free_port();
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let endpoints = format!(
        "[[endpoint]]\nuri = \"sip:tcpapp@contoso.com\"\ndisplay_name = \"TCP app\"\n\
         sip_target = \"sip:127.0.0.1:{refused};transport=tcp\"\n\
         [[endpoint]]\nuri = \"sip:udpapp@contoso.com\"\ndisplay_name = \"UDP app\"\n\
         sip_target = \"sip:{}\"\n",
        silent.local_addr().unwrap()
    );
    // A short T1, so Timer F (64·T1) ends the silent branch in 3.2 s.
    let server = start(
        "dead-targets",
        &config(&[("t1_ms = 500", "t1_ms = 50")], &endpoints),
    );
    let started = Instant::now();
    let answer = message(server.udp, "sip:tcpapp@contoso.com", "anyone?");
    assert_eq!(answer.status(), Some(503), "{}", reason(&answer));
    let text = String::from_utf8_lossy(answer.as_bytes()).into_owned();
    assert!(text.contains("\r\nRetry-After: "), "{text}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let answer = message(server.udp, "sip:udpapp@contoso.com", "anyone?");
    assert_eq!(answer.status(), Some(408), "{}", reason(&answer));
}

/// An endpoint's availability as the admin API shows it.
fn availability(server: &Server, endpoint: &str) -> String {
    let view = server.api_get(&format!("/api/v1/endpoints/{endpoint}"));
    view["availability"].as_str().unwrap().to_owned()
}

#[test]
fn an_app_whose_connection_is_gone_gets_503_and_shows_offline_at_once() {
    let endpoints = "[[endpoint]]\nuri = \"sip:desk@contoso.com\"\ndisplay_name = \"Desk\"\n\
                     [endpoint.registration]\npassword = \"s3cret\"\n";
    let server = start(
        "gone-app",
        &config(
            &[(
                "digest_algorithms = [\"SHA-256\", \"MD5\"]",
                "digest_algorithms = [\"MD5\"]",
            )],
            endpoints,
        ),
    );
    let dir = temp_dir("gone-app-phone");
    // The app registers over TCP, and would not again for ten minutes.
    let app = Baresip::start(
        &dir,
        free_port(),
        &["account"],
        &format!(
            "<sip:desk@contoso.com>;auth_pass=s3cret;outbound=\"sip:{};transport=tcp\";regint=600",
            server.tcp
        ),
        "",
    );
    app.expect("200 OK", Duration::from_secs(10));
    assert_eq!(availability(&server, "sip:desk@contoso.com"), "online");
    drop(app);
    std::thread::sleep(Duration::from_millis(300));
    // Its keepalives would notice in minutes; the first IM notices now.
    let answer = message(server.udp, "sip:desk@contoso.com", "still there?");
    assert_eq!(answer.status(), Some(503), "{}", reason(&answer));
    assert_eq!(availability(&server, "sip:desk@contoso.com"), "offline");
    let answer = message(server.udp, "sip:desk@contoso.com", "hello?");
    assert_eq!(answer.status(), Some(480), "{}", reason(&answer));
}

#[test]
fn a_policy_change_ends_a_partners_im_session_with_bye() {
    use porchlight_sip::MessageWriter;
    use porchlight_transport::{Protocol, Target};
    let (port, _posts) = webhook_app(vec![]);
    let pki = Pki::new("im-session-revoked-pki");
    let endpoint = format!(
        "\n[[endpoint]]\nuri = \"sip:bot@contoso.com\"\ndisplay_name = \"Bot\"\ncapabilities = [\"im\"]\n\
         [endpoint.webhook]\nurl = \"http://127.0.0.1:{port}/im\"\nsecret = \"s\"\n"
    );
    let server = start(
        "im-session-revoked",
        &format!("{}{endpoint}", pki.config(&[FABRIKAM])),
    );
    let file = server.dir.join("porchlight.toml");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // fabrikam's edge opens a Microsoft IM session with the bot.
        let (transport, mut rx) = pki.partner("fabrikam.com").await;
        let target = Target::Address {
            protocol: Protocol::Tls,
            addr: server.tls,
            domain: Some("contoso.com".into()),
        };
        let sdp = "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=session\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                   m=message 5060 sip null\r\na=accept-types:text/plain\r\n";
        let mut w = MessageWriter::request("INVITE", "sip:bot@contoso.com");
        w.header("Via", "SIP/2.0/TLS edge.fabrikam.com;branch=z9hG4bK-imr1")
            .header("Max-Forwards", "70")
            .header("From", "<sip:alice@fabrikam.com>;tag=a1")
            .header("To", "<sip:bot@contoso.com>")
            .header("Call-ID", "im-revoked-1")
            .header("CSeq", "1 INVITE")
            .header("Contact", "<sip:alice@edge.fabrikam.com;transport=tls>")
            .header("Content-Type", "application/sdp");
        transport
            .send(&target, w.finish(sdp.as_bytes()))
            .await
            .unwrap();
        let (ok, _) = loop {
            let (m, origin) = next_from_node(&mut rx).await;
            if m.status().is_some_and(|s| s >= 200) {
                break (m, origin);
            }
        };
        assert_eq!(ok.status(), Some(200), "the session is held");
        let to = std::str::from_utf8(ok.values_named("To").next().unwrap())
            .unwrap()
            .to_owned();
        let mut ack = MessageWriter::request("ACK", "sip:bot@contoso.com");
        ack.header("Via", "SIP/2.0/TLS edge.fabrikam.com;branch=z9hG4bK-imr2")
            .header("Max-Forwards", "70")
            .header("From", "<sip:alice@fabrikam.com>;tag=a1")
            .header("To", to.as_str())
            .header("Call-ID", "im-revoked-1")
            .header("CSeq", "1 ACK");
        transport.send(&target, ack.finish(b"")).await.unwrap();

        // The admin blocks fabrikam.com: the node ends the session.
        let said = tokio::task::spawn_blocking({
            let file = file.clone();
            move || {
                porchlight_ok(&file, &["federation", "remove", "fabrikam.com"]);
                porchlight_ok(&file, &["federation", "block", "fabrikam.com"])
            }
        })
        .await
        .unwrap();
        assert!(said.contains("in force"), "{said}");
        let (bye, origin) = loop {
            let (m, origin) = next_from_node(&mut rx).await;
            if m.method().is_some() {
                break (m, origin);
            }
        };
        assert_eq!(bye.method(), Some("BYE"), "{bye:?}");
        assert_eq!(bye.call_id().unwrap(), "im-revoked-1");
        assert_eq!(
            bye.cseq().unwrap().seq,
            1,
            "our first request in the dialog"
        );
        assert_eq!(bye.to().unwrap().tag(), Some("a1"));
        let answer = porchlight_sip::response_to(&bye, 200, "OK", None, None).finish(b"");
        let back = Target::Connection(origin.connection.expect("over the partner's connection"));
        transport.send(&back, answer).await.unwrap();
    });
    // The session is gone: a MESSAGE in it finds none.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.api_get("/api/v1/status")["im_sessions"] != 0 {
        assert!(Instant::now() < deadline, "the IM session is still held");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn endpoints_message_each_other_through_the_api() {
    let (port, posts) = webhook_app(vec![(Duration::ZERO, 200, "{}")]);
    let desk_app = UdpSocket::bind("127.0.0.1:0").unwrap();
    desk_app
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let desk_addr = desk_app.local_addr().unwrap();
    let endpoints = format!(
        "\n[[endpoint]]\nuri = \"sip:bot@contoso.com\"\ndisplay_name = \"Bot\"\ncapabilities = [\"im\"]\n\
         [endpoint.webhook]\nurl = \"http://127.0.0.1:{port}/im\"\nsecret = \"s\"\n\
         [[endpoint]]\nuri = \"sip:desk@contoso.com\"\ndisplay_name = \"Desk\"\ncapabilities = [\"im\"]\n\
         sip_target = \"sip:{desk_addr}\"\n"
    );
    let server = start("endpoint-to-endpoint", &config(&[], &endpoints));

    // The desk writes to the bot: its webhook gets the text, the API the outcome.
    let (status, body) = send_as(
        &server,
        "sip:desk@contoso.com",
        "sip:bot@contoso.com",
        "ticket 7?",
    );
    assert_eq!(status, 200, "{body}");
    let post = posts
        .recv_timeout(Duration::from_secs(5))
        .expect("the bot's webhook was called");
    let json = post.json();
    assert_eq!(json["endpoint"], "sip:bot@contoso.com");
    assert_eq!(json["from"], "sip:desk@contoso.com");
    assert_eq!(json["text"], "ticket 7?");
    assert_eq!(json["verified"], true, "the API's token proves the sender");

    // The bot writes to the desk: its app gets a MESSAGE at its target.
    let answered = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let (n, from) = desk_app
            .recv_from(&mut buf)
            .expect("a MESSAGE for the desk's app");
        let message = parse(&buf[..n]);
        let ok = porchlight_sip::response_to(&message, 200, "OK", None, Some("desk")).finish(b"");
        desk_app.send_to(&ok, from).unwrap();
        message
    });
    let (status, body) = send_as(
        &server,
        "sip:bot@contoso.com",
        "sip:desk@contoso.com",
        "solved",
    );
    assert_eq!(status, 200, "{body}");
    let message = answered.join().unwrap();
    assert_eq!(message.method(), Some("MESSAGE"));
    assert_eq!(
        message.request_uri(),
        Some(format!("sip:{desk_addr}").as_str())
    );
    assert_eq!(message.from().unwrap().uri.as_str(), "sip:bot@contoso.com");
    assert_eq!(message.to().unwrap().uri.as_str(), "sip:desk@contoso.com");
    assert_eq!(message.body(), b"solved");
}

#[test]
fn only_a_proven_sender_is_marked_verified() {
    let (port, posts) = webhook_app(Vec::new());
    let endpoints = format!(
        "[[endpoint]]\nuri = \"sip:bot@contoso.com\"\ndisplay_name = \"Bot\"\n\
         [endpoint.webhook]\nurl = \"http://127.0.0.1:{port}/im\"\nsecret = \"s\"\n"
    );
    let server = start("verified", &config(&[], &endpoints));
    // The trusted inside speaks for our own domain…
    let ours = udp_message(
        "127.0.0.1",
        server.udp,
        "<sip:carol@contoso.com>",
        "sip:bot@contoso.com",
        "from the inside",
    );
    assert_eq!(ours.status(), Some(200));
    let post = posts.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(post.json()["verified"], true, "{}", post.body);
    // …but naming another domain proves nothing: no certificate vouched.
    let claimed = udp_message(
        "127.0.0.1",
        server.udp,
        "<sip:w@fabrikam.com>",
        "sip:bot@contoso.com",
        "a claim",
    );
    assert_eq!(claimed.status(), Some(200));
    let post = posts.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(post.json()["from"], "sip:w@fabrikam.com");
    assert_eq!(post.json()["verified"], false, "{}", post.body);
}
