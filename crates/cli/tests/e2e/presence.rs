//! The Microsoft presence dialect against the real binary over TCP: a
//! federated Lync-style SUBSCRIBE gets `msrtc-event-categories` with
//! availability 3500 and BENOTIFY negotiated, piggybacked or in the first
//! NOTIFY; a batched subscription gets a well-formed RLMI multipart.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use porchlight_sip::{Framing, HeaderName, Limits, Message};

/// A TCP connection that reads whole SIP messages.
struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Connection {
    fn open(server: &Server) -> Connection {
        let stream = TcpStream::connect(server.tcp).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Connection {
            stream,
            buf: Vec::new(),
        }
    }

    fn send(&mut self, text: &str) {
        self.stream.write_all(text.as_bytes()).unwrap();
    }

    fn receive(&mut self) -> Message {
        loop {
            if let Ok(Some(frame)) = Message::frame(&self.buf, &Limits::default()) {
                let bytes: Vec<u8> = self
                    .buf
                    .drain(..frame.skip + frame.len)
                    .skip(frame.skip)
                    .collect();
                return Message::parse(Bytes::from(bytes), Framing::Stream, &Limits::default())
                    .unwrap();
            }
            let mut chunk = [0u8; 8192];
            let n = self.stream.read(&mut chunk).expect("a message within 5 s");
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Answers a NOTIFY with 200 on the same connection.
    fn ok(&mut self, request: &Message) {
        let head = porchlight_sip::response_to(request, 200, "OK", None, None);
        self.stream.write_all(&head.finish(b"")).unwrap();
    }
}

fn ms_subscribe(server: &Server, call: &str, supported: &str, extra: &str, body: &str) -> String {
    let local = server.tcp;
    format!(
        "SUBSCRIBE sip:helpdesk@contoso.com SIP/2.0\r\n\
         Via: SIP/2.0/TCP 127.0.0.1:5099;branch=z9hG4bK{call}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@fabrikam.com>;tag={call}f;epid=01010101\r\n\
         To: <sip:helpdesk@contoso.com>\r\n\
         Call-ID: {call}\r\n\
         CSeq: 1 SUBSCRIBE\r\n\
         Contact: <sip:alice@127.0.0.1:5099;transport=tcp>;proxy=replace\r\n\
         User-Agent: UCCAPI/16.0.0.0 OC/16.0.0.0 (Skype for Business)\r\n\
         Event: presence\r\n\
         Accept: application/msrtc-event-categories+xml, application/xpidf+xml, text/xml+msrtc.pidf, application/pidf+xml, application/rlmi+xml, multipart/related\r\n\
         {supported}\
         Proxy-Require: ms-benotify\r\n\
         Expires: 600\r\n\
         {extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .replace("sip:helpdesk@contoso.com SIP", &format!("sip:helpdesk@{local} SIP"))
}

fn contoso_node(name: &str) -> Server {
    start(name, &config(&[], ""))
}

fn text(m: &Message, name: HeaderName) -> String {
    m.text(name).unwrap().unwrap_or_default().to_owned()
}

#[test]
fn ms_subscription_gets_categories_with_benotify_and_piggyback() {
    let server = contoso_node("ms-piggyback");
    let mut c = Connection::open(&server);
    c.send(&ms_subscribe(
        &server,
        "ms1",
        "Supported: ms-benotify\r\nSupported: ms-piggyback-first-notify\r\n",
        "",
        "",
    ));
    let ok = c.receive();
    assert_eq!(ok.status(), Some(200));
    assert!(ok.lists_token(HeaderName::Supported, "ms-benotify"));
    assert!(ok.lists_token(HeaderName::Supported, "ms-piggyback-first-notify"));
    assert!(ok.values_named("ms-piggyback-cseq").next().is_some());
    assert_eq!(
        text(&ok, HeaderName::ContentType),
        "application/msrtc-event-categories+xml"
    );
    let body = std::str::from_utf8(ok.body()).unwrap();
    assert!(body.contains("<availability>3500</availability>"), "{body}");
    assert!(body.contains("<automaton>true</automaton>"));
    assert!(body.contains("<displayName>Porchlight Help Desk</displayName>"));
}

#[test]
fn ms_subscription_without_piggyback_gets_a_categories_notify() {
    let server = contoso_node("ms-notify");
    let mut c = Connection::open(&server);
    c.send(&ms_subscribe(
        &server,
        "ms2",
        "Supported: ms-benotify\r\n",
        "",
        "",
    ));
    let ok = c.receive();
    assert_eq!(ok.status(), Some(200));
    assert!(ok.lists_token(HeaderName::Supported, "ms-benotify"));
    assert!(ok.body().is_empty());
    let notify = c.receive();
    assert_eq!(
        notify.method(),
        Some("NOTIFY"),
        "the first notification is a NOTIFY, not a BENOTIFY"
    );
    assert_eq!(
        text(&notify, HeaderName::ContentType),
        "application/msrtc-event-categories+xml"
    );
    assert!(std::str::from_utf8(notify.body())
        .unwrap()
        .contains("<availability>3500</availability>"));
    assert_eq!(notify.call_id().unwrap(), "ms2");
    assert_eq!(notify.from().unwrap().tag(), ok.to().unwrap().tag());
    c.ok(&notify);
}

#[test]
fn batched_subscription_gets_a_valid_rlmi_multipart() {
    let server = contoso_node("ms-batch");
    let mut c = Connection::open(&server);
    let list = "<batchSub xmlns=\"http://schemas.microsoft.com/2006/01/sip/batch-subscribe\" uri=\"sip:alice@fabrikam.com\" name=\"\">\
        <action name=\"subscribe\" id=\"63792024\"><adhocList>\
        <resource uri=\"sip:helpdesk@contoso.com\"/><resource uri=\"sip:carol@partner.example\"/></adhocList>\
        <categoryList xmlns=\"http://schemas.microsoft.com/2006/09/sip/categorylist\">\
        <category name=\"state\"/><category name=\"services\"/><category name=\"contactCard\"/><category name=\"note\"/><category name=\"calendarData\"/>\
        </categoryList></action></batchSub>";
    c.send(&ms_subscribe(
        &server,
        "ms3",
        "Supported: ms-benotify, eventlist\r\nRequire: adhoclist, categoryList\r\n",
        "Content-Type: application/msrtc-adrl-categorylist+xml\r\n",
        list,
    ));
    let ok = c.receive();
    assert_eq!(ok.status(), Some(200), "{:?}", ok.reason());
    assert!(ok.lists_token(HeaderName::Require, "eventlist"));
    let notify = c.receive();
    c.ok(&notify);
    let content_type = notify.content_type().unwrap().unwrap();
    assert!(content_type.is("multipart/related"));
    let param = |name| {
        content_type
            .params
            .value(name)
            .map(|v| v.trim_matches('"').to_owned())
    };
    assert_eq!(param("type").as_deref(), Some("application/rlmi+xml"));
    let boundary = param("boundary").expect("a boundary");
    let body = std::str::from_utf8(notify.body()).unwrap();
    assert!(body.ends_with(&format!("--{boundary}--\r\n")));
    // Split into parts: headers, blank line, content.
    let parts: Vec<(String, String)> = body
        .split(&format!("--{boundary}"))
        .skip(1)
        .filter(|p| !p.starts_with("--"))
        .map(|p| {
            let (head, content) = p
                .trim_start_matches("\r\n")
                .split_once("\r\n\r\n")
                .expect("part head");
            (head.to_owned(), content.trim_end_matches("\r\n").to_owned())
        })
        .collect();
    assert_eq!(
        parts.len(),
        2,
        "the RLMI list and one document for the resource we serve"
    );
    let (rlmi_head, rlmi) = &parts[0];
    assert!(rlmi_head.contains("Content-Type: application/rlmi+xml"));
    assert!(
        rlmi.contains("<list xmlns=\"urn:ietf:params:xml:ns:rlmi\" uri=\"sip:alice@fabrikam.com\"")
    );
    assert!(rlmi.contains(
        "<resource uri=\"sip:carol@partner.example\"><instance id=\"1\" state=\"resubscribe\"/>"
    ));
    let cid = rlmi
        .split("cid=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the active resource names its part");
    let (doc_head, doc) = &parts[1];
    assert!(doc_head.contains(&format!("Content-ID: <{cid}>")));
    assert!(doc_head.contains("Content-Type: application/msrtc-event-categories+xml"));
    assert!(doc.contains("<availability>3500</availability>"));
}

/// Receives datagrams until one satisfies `want`, answering NOTIFYs with 200.
fn udp_until(socket: &std::net::UdpSocket, want: impl Fn(&Message) -> bool) -> Message {
    loop {
        let m = receive_answering(socket).expect("a datagram in time");
        if want(&m) {
            return m;
        }
    }
}

#[test]
fn registration_with_sha256_digest_and_keepalive_loss() {
    let server = start(
        "keepalive",
        &config(
            &[
                (
                    "min_notify_interval_ms = 5000",
                    "min_notify_interval_ms = 0",
                ),
                ("keepalive_secs = 30", "keepalive_secs = 1"),
                ("keepalive_misses = 3", "keepalive_misses = 2"),
                (
                    "note = \"Ask me anything\"\n",
                    "note = \"Ask me anything\"\n[endpoint.registration]\npassword = \"pw\"\n",
                ),
            ],
            "",
        ),
    );
    let watcher = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    watcher
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let w = watcher.local_addr().unwrap();
    let subscribe = subscribe_to_helpdesk(w, "ka-watch", "w1");
    watcher.send_to(subscribe.as_bytes(), server.udp).unwrap();
    let basic = |m: &Message| {
        std::str::from_utf8(m.body())
            .unwrap()
            .contains("<basic>closed</basic>")
    };
    udp_until(&watcher, |m| m.method() == Some("NOTIFY") && basic(m));

    // The app registers; the first answer is a challenge, SHA-256 first (RFC 8760).
    let app = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    app.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let a = app.local_addr().unwrap();
    let register = |cseq: u32, auth: &str| {
        format!(
            "REGISTER sip:contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bKr{cseq};rport\r\nMax-Forwards: 70\r\n\
             From: <sip:helpdesk@contoso.com>;tag=app\r\nTo: <sip:helpdesk@contoso.com>\r\nCall-ID: ka-reg\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <sip:helpdesk@{a}>\r\nExpires: 600\r\n{auth}Content-Length: 0\r\n\r\n"
        )
    };
    app.send_to(register(1, "").as_bytes(), server.udp).unwrap();
    let challenge = udp_until(&app, |m| m.status() == Some(401));
    let offered: Vec<String> = challenge
        .auth(HeaderName::WwwAuthenticate)
        .map(|c| c.unwrap().param("algorithm").unwrap().to_owned())
        .collect();
    assert_eq!(offered, ["SHA-256", "MD5"]);
    let auth = answer_challenge(&challenge, "helpdesk", "pw", "REGISTER", "sip:contoso.com");
    app.send_to(register(2, &auth).as_bytes(), server.udp)
        .unwrap();
    let ok = udp_until(&app, |m| m.status().is_some_and(|s| s >= 200));
    assert_eq!(ok.status(), Some(200));
    assert!(ok
        .text(HeaderName::Contact)
        .unwrap()
        .unwrap()
        .contains(";expires="));
    udp_until(&watcher, |m| {
        m.method() == Some("NOTIFY")
            && std::str::from_utf8(m.body())
                .unwrap()
                .contains("<basic>open</basic>")
    });

    // The first keepalive is answered; then the app goes silent and is dropped.
    let options = udp_until(&app, |m| m.method() == Some("OPTIONS"));
    let pong = porchlight_sip::response_to(&options, 200, "OK", None, Some("app")).finish(b"");
    app.send_to(&pong, server.udp).unwrap();
    let offline = udp_until(&watcher, |m| m.method() == Some("NOTIFY") && basic(m));
    assert!(
        text(&offline, HeaderName::SubscriptionState).starts_with("active"),
        "the watcher stays subscribed and sees the endpoint offline"
    );
}
