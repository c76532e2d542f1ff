//! Property tests: whatever the writer produces, the parser reads back
//! field for field, and re-writing the parsed message gives the same bytes.

use bytes::Bytes;
use porchlight_sip::{Answer, Framing, HeaderName, Limits, Message, MessageWriter, ParseErrorKind};
use proptest::prelude::*;

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!%*_+`'~.-]{1,12}"
}

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    // Any bytes but CR, LF and NUL-free edges: values may hold non-UTF-8.
    proptest::collection::vec(prop_oneof![0x21u8..=0x7e, 0x80u8..=0xff, Just(b' ')], 1..40)
        .prop_map(|mut v| {
            while v.last() == Some(&b' ') {
                v.pop();
            }
            if v.is_empty() {
                v.push(b'x');
            }
            v
        })
        .prop_filter("must not start with whitespace", |v| v[0] != b' ')
}

fn headers() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    proptest::collection::vec((token(), header_value()), 0..20).prop_map(|hs| {
        hs.into_iter()
            .filter(|(n, _)| {
                !n.eq_ignore_ascii_case("content-length") && !n.eq_ignore_ascii_case("l")
            })
            .collect()
    })
}

fn rewrite(m: &Message) -> Bytes {
    let mut w = match m.method() {
        Some(method) => MessageWriter::request(method, m.request_uri().unwrap()),
        None => MessageWriter::response(
            m.status().unwrap(),
            std::str::from_utf8(m.reason().unwrap()).unwrap(),
        ),
    };
    for h in m.headers() {
        if h.name != porchlight_sip::HeaderName::ContentLength {
            w.header(
                std::str::from_utf8(m.name_bytes(h)).unwrap(),
                m.value_bytes(h),
            );
        }
    }
    w.finish(m.body())
}

proptest! {
    #[test]
    fn requests_round_trip(
        method in token(),
        user in "[a-z0-9]{1,8}",
        host in "[a-z]{1,8}(\\.[a-z]{2,5}){0,2}",
        hs in headers(),
        body in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let uri = format!("sip:{user}@{host}");
        let mut w = MessageWriter::request(&method, &uri);
        for (n, v) in &hs {
            w.header(n, v);
        }
        let bytes = w.finish(&body);
        let m = Message::parse(bytes.clone(), Framing::Stream, &Limits::default()).unwrap();
        prop_assert_eq!(m.method(), Some(method.as_str()));
        prop_assert_eq!(m.request_uri(), Some(uri.as_str()));
        let parsed: Vec<_> = m.headers().iter().map(|h| (m.name_bytes(h).to_vec(), m.value_bytes(h).to_vec())).collect();
        prop_assert_eq!(parsed.len(), hs.len() + 1);
        for ((n, v), (pn, pv)) in hs.iter().zip(&parsed) {
            prop_assert_eq!(n.as_bytes(), &pn[..]);
            prop_assert_eq!(v, pv);
        }
        prop_assert_eq!(m.body(), &body[..]);
        prop_assert_eq!(rewrite(&m), bytes.clone());
        let frame = Message::frame(&bytes, &Limits::default()).unwrap().unwrap();
        prop_assert_eq!(frame.len, bytes.len());
    }

    #[test]
    fn responses_round_trip(code in 100u16..700, reason in "[ -~]{0,30}", hs in headers()) {
        let reason = reason.trim_end().to_owned();
        let mut w = MessageWriter::response(code, &reason);
        for (n, v) in &hs {
            w.header(n, v);
        }
        let bytes = w.finish(b"");
        let m = Message::parse(bytes.clone(), Framing::Datagram, &Limits::default()).unwrap();
        prop_assert_eq!(m.status(), Some(code));
        prop_assert_eq!(m.reason(), Some(reason.as_bytes()));
        prop_assert_eq!(rewrite(&m), bytes);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let limits = Limits::default();
        let _ = Message::frame(&data, &limits);
        if let Ok(m) = Message::parse(Bytes::from(data), Framing::Datagram, &limits) {
            let _ = m.validate_request();
            let _ = m.validate_response();
        }
    }
}

#[test]
fn limits_are_enforced_with_typed_errors() {
    use porchlight_sip::ParseErrorKind;
    let small = Limits {
        max_message_bytes: 200,
        max_headers: 3,
        max_line_bytes: 40,
    };
    let mut w = MessageWriter::request("OPTIONS", "sip:a@b");
    for i in 0..4 {
        w.header("X", format!("{i}"));
    }
    let err = Message::parse(w.finish(b""), Framing::Datagram, &small).unwrap_err();
    assert_eq!(err.kind, ParseErrorKind::TooManyHeaders { limit: 3 });
    let mut w = MessageWriter::request("OPTIONS", "sip:a@b");
    w.header("X", "y".repeat(50));
    let err = Message::parse(w.finish(b""), Framing::Datagram, &small).unwrap_err();
    assert_eq!(err.kind, ParseErrorKind::LineTooLong { limit: 40 });
    let w = MessageWriter::request("OPTIONS", "sip:a@b");
    let err = Message::parse(w.finish(&[b'z'; 300]), Framing::Datagram, &small).unwrap_err();
    assert_eq!(err.kind, ParseErrorKind::TooLarge { limit: 200 });
}

#[test]
fn non_utf8_header_loses_nothing_after_it() {
    let raw = b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nX-Latin: caf\xe9\r\nFrom: <sip:x@y>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    let m = Message::parse(
        Bytes::from_static(raw),
        Framing::Datagram,
        &Limits::default(),
    )
    .unwrap();
    m.validate_request().unwrap();
    assert_eq!(m.from().unwrap().tag(), Some("1"));
    assert_eq!(m.values_named("x-latin").next(), Some(&b"caf\xe9"[..]));
}

#[test]
fn stream_framing_waits_for_the_whole_body() {
    let msg = MessageWriter::request("MESSAGE", "sip:a@b").finish(b"hello");
    let limits = Limits::default();
    let mut buf = b"\r\n\r\n".to_vec();
    buf.extend_from_slice(&msg[..msg.len() - 2]);
    assert_eq!(Message::frame(&buf, &limits).unwrap(), None);
    buf.extend_from_slice(&msg[msg.len() - 2..]);
    buf.extend_from_slice(b"NEXT");
    let frame = Message::frame(&buf, &limits).unwrap().unwrap();
    assert_eq!((frame.skip, frame.len), (4, msg.len()));
}

#[test]
fn line_breaks_before_the_start_line_count_against_the_limits() {
    let limits = Limits {
        max_message_bytes: 1_000,
        max_line_bytes: 100,
        ..Limits::default()
    };
    // A LF then nothing but CRLF: an error once past the line limit, not
    // a wait for more.
    let mut breaks = b"\n".to_vec();
    breaks.extend(std::iter::repeat_n(*b"\r\n", 49).flatten());
    assert_eq!(Message::frame(&breaks, &limits).unwrap(), None);
    breaks.extend_from_slice(b"\r\n");
    let error = Message::frame(&breaks, &limits).unwrap_err();
    assert!(
        matches!(error.kind, ParseErrorKind::LineTooLong { limit: 100 }),
        "{error}"
    );

    // Breaks and message together may not pass the message limit.
    let msg = MessageWriter::request("MESSAGE", "sip:a@b").finish(&[b'x'; 900]);
    let mut buf = vec![b'\n'; 1_000 - msg.len()];
    buf.extend_from_slice(&msg);
    assert!(Message::frame(&buf, &limits).unwrap().is_some());
    buf.insert(0, b'\n');
    let error = Message::frame(&buf, &limits).unwrap_err();
    assert!(
        matches!(error.kind, ParseErrorKind::TooLarge { limit: 1_000 }),
        "{error}"
    );

    // An unterminated head is refused once the buffer passes the limit,
    // the breaks before it included.
    let mut head = vec![b'\n'; 60];
    head.extend_from_slice(b"MESSAGE sip:a@b SIP/2.0\r\nX: ");
    head.resize(1_000, b'y');
    assert_eq!(Message::frame(&head, &limits).unwrap(), None);
    head.push(b'y');
    assert!(Message::frame(&head, &limits).is_err());
}

#[test]
fn answers_that_establish_a_dialog_copy_the_record_route() {
    let request = |method: &str, to: &str| {
        let raw = format!(
            "{method} sip:helpdesk@contoso.com SIP/2.0\r\nVia: SIP/2.0/TLS edge.fabrikam.com;branch=z9hG4bK1\r\n\
             Record-Route: <sip:edge.fabrikam.com;transport=tls;lr>\r\n\
             Record-Route: <sip:inner.fabrikam.com;lr>, <sip:p3.fabrikam.com;lr>\r\n\
             From: <sip:alice@fabrikam.com>;tag=a\r\nTo: {to}\r\nCall-ID: c\r\nCSeq: 1 {method}\r\n\
             Contact: <sip:alice@10.0.0.1>\r\nContent-Length: 0\r\n\r\n"
        );
        Message::parse(Bytes::from(raw), Framing::Datagram, &Limits::default()).unwrap()
    };
    let routes = |request: &Message, code: u16| {
        let bytes = Answer::new(code, "x").write(request, None, "t");
        let answer = Message::parse(bytes, Framing::Datagram, &Limits::default()).unwrap();
        answer
            .items(HeaderName::RecordRoute)
            .map(|r| r.unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    let all = [
        "<sip:edge.fabrikam.com;transport=tls;lr>",
        "<sip:inner.fabrikam.com;lr>",
        "<sip:p3.fabrikam.com;lr>",
    ];
    let initial = "<sip:helpdesk@contoso.com>";
    for method in ["SUBSCRIBE", "INVITE"] {
        assert_eq!(routes(&request(method, initial), 200), all, "{method} 200");
        assert_eq!(routes(&request(method, initial), 202), all, "{method} 202");
        assert!(
            routes(&request(method, initial), 403).is_empty(),
            "{method} 403"
        );
        let refresh = "<sip:helpdesk@contoso.com>;tag=ours";
        assert!(
            routes(&request(method, refresh), 200).is_empty(),
            "{method} in dialog"
        );
    }
    assert_eq!(
        routes(&request("INVITE", initial), 180),
        all,
        "early dialog"
    );
    assert!(routes(&request("INVITE", initial), 100).is_empty());
    assert!(routes(&request("MESSAGE", initial), 200).is_empty());
    assert!(routes(&request("OPTIONS", initial), 200).is_empty());
}
