//! RFC 4475 and RFC 5118 torture messages: every valid one parses with its
//! key fields as the RFC describes them; every invalid one is refused by the
//! layer that should object, with the typed error that names the problem.

use bytes::Bytes;
use porchlight_sip::{
    Contacts, Framing, HeaderError, HeaderName, Host, Limits, Message, ParseErrorKind,
    RequestError, Uri,
};

fn fixture(name: &str) -> Bytes {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
}

fn parse(name: &str) -> Message {
    Message::parse(
        fixture(&format!("rfc4475/{name}.dat")),
        Framing::Datagram,
        &Limits::default(),
    )
    .unwrap_or_else(|e| panic!("{name} should parse: {e}"))
}

fn valid_request(name: &str) -> Message {
    let m = parse(name);
    m.validate_request()
        .unwrap_or_else(|e| panic!("{name} should be valid: {e}"));
    m
}

fn parse_error(name: &str) -> ParseErrorKind {
    Message::parse(
        fixture(&format!("rfc4475/{name}.dat")),
        Framing::Datagram,
        &Limits::default(),
    )
    .expect_err(name)
    .kind
}

fn request_error(name: &str) -> RequestError {
    parse(name).validate_request().expect_err(name)
}

fn malformed(header: HeaderName) -> impl Fn(RequestError) -> bool {
    move |e| matches!(e, RequestError::Header(HeaderError::Malformed { header: h, .. }) if h == header)
}

#[test]
fn wsinv_short_tortuous_invite() {
    let m = valid_request("wsinv");
    assert_eq!(m.method(), Some("INVITE"));
    assert_eq!(m.to().unwrap().tag(), Some("1918181833n"));
    let from = m.from().unwrap();
    assert_eq!(from.display_name, Some(r#"J Rosenberg \\\""#));
    assert_eq!(from.tag(), Some("98asjd8"));
    assert_eq!(m.max_forwards().unwrap(), Some(68));
    let cseq = m.cseq().unwrap();
    assert_eq!((cseq.seq, cseq.method), (9, "INVITE"));
    let vias: Vec<_> = m.vias().map(Result::unwrap).collect();
    assert_eq!(vias.len(), 3);
    assert_eq!(vias[0].branch(), Some("390skdjuw"));
    assert_eq!(vias[1].transport, "TCP");
    assert_eq!(vias[1].host, Host::Name("spindle.example.com"));
    assert_eq!(vias[2].branch(), Some("z9hG4bK30239"));
    assert_eq!(m.text(HeaderName::Subject).unwrap(), Some(""));
    let folded = m.values_named("NewFangledHeader").next().unwrap();
    assert_eq!(folded, b"newfangled value\r\n continued newfangled value");
    assert_eq!(
        m.routes()
            .next()
            .unwrap()
            .unwrap()
            .uri
            .sip()
            .unwrap()
            .param("lr"),
        Some(None)
    );
    let contact = match m.contacts().unwrap() {
        Contacts::List(l) => l,
        Contacts::Star => panic!("star"),
    };
    assert_eq!(contact[0].params.value("secondparam"), None);
    assert_eq!(contact[0].params.value("q"), Some("0.33"));
    assert_eq!(m.body().len(), 150);
}

#[test]
fn intmeth_extension_method_and_unusual_characters() {
    let m = valid_request("intmeth");
    assert_eq!(
        m.method(),
        Some("!interesting-Method0123456789_*+`.%indeed'~")
    );
    assert_eq!(m.cseq().unwrap().method, m.method().unwrap());
    let uri = Uri::parse(m.request_uri().unwrap()).unwrap();
    assert_eq!(uri.sip().unwrap().host, Host::Name("example.com"));
    assert_eq!(
        m.from().unwrap().display_name,
        Some("token1~` token2'+_ token3*%!.-")
    );
    assert_eq!(m.from().unwrap().tag(), Some("_token~1'+`*%!-."));
    assert_eq!(
        m.from().unwrap().params.value("fromParam''~+*_!.-%"),
        Some("работающий")
    );
    assert!(m.to().unwrap().display_name.unwrap().contains("NUL:\\\0"));
    let ext = m.values_named("extensionHeader-!.%*+_`'~").next().unwrap();
    assert_eq!(
        std::str::from_utf8(ext).unwrap(),
        "\u{FEFF}\u{5927}\u{505C}\u{96FB}"
    );
    assert_eq!(m.max_forwards().unwrap(), Some(255));
}

#[test]
fn escaping_cases() {
    let m = valid_request("esc01");
    assert_eq!(m.call_id().unwrap(), "esc01.239409asdfakjkn23onasd0-3234");
    assert_eq!(m.content_type().unwrap().unwrap().subtype, "sdp");
    let Contacts::List(c) = m.contacts().unwrap() else {
        panic!()
    };
    assert_eq!(
        c[0].uri.sip().unwrap().param("n%61me"),
        Some(Some("v%61lue%25%34%31"))
    );

    let m = valid_request("escnull");
    let Contacts::List(c) = m.contacts().unwrap() else {
        panic!()
    };
    assert_eq!(c.len(), 2);
    assert_eq!(c[1].uri.sip().unwrap().user, Some("%00%00"));

    let m = valid_request("esc02");
    assert_eq!(m.method(), Some("RE%47IST%45R"));
    assert_eq!(
        m.count(HeaderName::Contact),
        2,
        "C%6Fntact is an extension header"
    );
    assert_eq!(m.values_named("C%6Fntact").count(), 1);
    assert_eq!(m.top_via().unwrap().branch(), Some("z9hG4bK209%fzsnel234"));
}

#[test]
fn display_name_and_uri_edge_cases() {
    assert_eq!(
        valid_request("lwsdisp").from().unwrap().display_name,
        Some("caller")
    );
    let m = valid_request("semiuri");
    let uri = Uri::parse(m.request_uri().unwrap()).unwrap();
    assert_eq!(uri.sip().unwrap().user, Some("user;par=u%40example.net"));
    assert_eq!(uri.sip().unwrap().host, Host::Name("example.com"));
    let accept: Vec<_> = m.accept().map(|a| a.unwrap().subtype).collect();
    assert_eq!(
        accept,
        ["sdp", "pkcs7-mime", "mixed", "signed", "sip", "sipfrag"]
    );
}

#[test]
fn long_values_and_trailing_datagram_bytes() {
    let m = valid_request("longreq");
    assert!(m.to().unwrap().display_name.unwrap().len() > 100);
    assert!(m.vias().count() > 10);
    let m = valid_request("dblreq");
    assert_eq!(m.method(), Some("REGISTER"));
    assert!(
        m.body().is_empty(),
        "the INVITE after the REGISTER is not its body"
    );
}

#[test]
fn transports_and_multipart() {
    let m = valid_request("transports");
    let t: Vec<_> = m.vias().map(|v| v.unwrap().transport).collect();
    assert_eq!(t, ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]);
    let m = valid_request("mpart01");
    let ct = m.content_type().unwrap().unwrap();
    assert_eq!((ct.kind, ct.subtype), ("multipart", "mixed"));
    assert_eq!(ct.params.value("boundary"), Some("7a9cbec02ceef655"));
    assert_eq!(m.body().len(), m.content_length().unwrap());
}

#[test]
fn unusual_and_empty_reason_phrases() {
    let m = parse("unreason");
    m.validate_response().unwrap();
    assert_eq!(m.status(), Some(200));
    assert!(std::str::from_utf8(m.reason().unwrap())
        .unwrap()
        .starts_with("= 2**3 * 5**2 "));
    let m = parse("noreason");
    m.validate_response().unwrap();
    assert_eq!((m.status(), m.reason()), (Some(100), Some(&b""[..])));
}

#[test]
fn framing_errors() {
    assert!(matches!(
        parse_error("clerr"),
        ParseErrorKind::BodyTruncated { declared: 9999, .. }
    ));
    assert_eq!(parse_error("ncl"), ParseErrorKind::BadContentLength);
    assert_eq!(parse_error("mcl01"), ParseErrorKind::DuplicateContentLength);
    assert_eq!(parse_error("baddn"), ParseErrorKind::IncompleteHead);
    assert!(matches!(
        parse_error("bigcode"),
        ParseErrorKind::BadStatusLine(_)
    ));
}

#[test]
fn request_line_errors() {
    for name in ["ltgtruri", "lwsruri", "lwsstart", "trws"] {
        assert!(
            matches!(parse_error(name), ParseErrorKind::BadRequestLine(_)),
            "{name}"
        );
    }
    assert!(matches!(
        request_error("escruri"),
        RequestError::RequestUri(_)
    ));
    assert_eq!(request_error("badvers").status(), 505);
}

#[test]
fn header_errors_answered_with_400() {
    let cases: [(&str, HeaderName); 6] = [
        ("badinv01", HeaderName::Via),
        ("scalar02", HeaderName::CSeq),
        ("quotbal", HeaderName::To),
        ("baddate", HeaderName::Date),
        ("regbadct", HeaderName::Contact),
        ("badaspec", HeaderName::To),
    ];
    for (name, header) in cases {
        let err = request_error(name);
        assert_eq!(err.status(), 400, "{name}");
        assert!(malformed(header)(err.clone()), "{name}: {err}");
    }
    assert_eq!(request_error("mismatch01"), RequestError::MethodMismatch);
    assert_eq!(request_error("mismatch02"), RequestError::MethodMismatch);
    assert_eq!(
        request_error("insuf"),
        RequestError::Header(HeaderError::Missing(HeaderName::From))
    );
    assert_eq!(
        request_error("multi01"),
        RequestError::Header(HeaderError::Repeated(HeaderName::From))
    );
}

#[test]
fn overlarge_scalars_in_a_response_discard_it() {
    let m = parse("scalarlg");
    assert!(matches!(
        m.validate_response(),
        Err(HeaderError::Malformed {
            header: HeaderName::CSeq,
            ..
        })
    ));
}

#[test]
fn transaction_and_application_layer_cases_parse() {
    assert!(!valid_request("badbranch")
        .top_via()
        .unwrap()
        .has_rfc3261_branch());
    let m = valid_request("unkscm");
    assert!(matches!(
        Uri::parse(m.request_uri().unwrap()).unwrap(),
        Uri::Other {
            scheme: "nobodyKnowsThisScheme",
            ..
        }
    ));
    let m = valid_request("novelsc");
    assert!(matches!(
        Uri::parse(m.request_uri().unwrap()).unwrap(),
        Uri::Other {
            scheme: "soap.beep",
            ..
        }
    ));
    let m = valid_request("unksm2");
    assert!(matches!(
        m.to().unwrap().uri,
        Uri::Other { scheme: "isbn", .. }
    ));
    assert!(matches!(
        m.from().unwrap().uri,
        Uri::Other { scheme: "http", .. }
    ));
    let m = valid_request("bext01");
    let require: Vec<_> = m.tokens(HeaderName::Require).map(Result::unwrap).collect();
    assert_eq!(
        require,
        ["nothingSupportsThis", "nothingSupportsThisEither"]
    );
    assert_eq!(m.tokens(HeaderName::ProxyRequire).count(), 2);
    let m = valid_request("invut");
    assert!(m
        .content_type()
        .unwrap()
        .unwrap()
        .is("application/unknownformat"));
    let m = valid_request("regaut01");
    let auth = m.auth(HeaderName::Authorization).next().unwrap().unwrap();
    assert_eq!(
        (auth.scheme, auth.param("opaque-data")),
        ("NoOneKnowsThisScheme", Some("here"))
    );
    let m = parse("bcast");
    m.validate_response().unwrap();
    assert_eq!(
        m.vias().nth(1).unwrap().unwrap().host,
        Host::Ipv4("255.255.255.255".parse().unwrap())
    );
    assert_eq!(valid_request("zeromf").max_forwards().unwrap(), Some(0));
    let m = valid_request("cparam01");
    let Contacts::List(c) = m.contacts().unwrap() else {
        panic!()
    };
    assert!(c[0].params.has("unknownparam"));
    assert_eq!(c[0].uri.sip().unwrap().param("unknownparam"), None);
    let m = valid_request("cparam02");
    let Contacts::List(c) = m.contacts().unwrap() else {
        panic!()
    };
    assert!(!c[0].params.has("unknownparam"));
    assert_eq!(c[0].uri.sip().unwrap().param("unknownparam"), Some(None));
    let m = valid_request("regescrt");
    let Contacts::List(c) = m.contacts().unwrap() else {
        panic!()
    };
    assert_eq!(
        c[0].uri.sip().unwrap().headers(),
        Some("Route=%3Csip:sip.example.com%3E")
    );
    let m = valid_request("sdp01");
    assert!(m
        .accept()
        .next()
        .unwrap()
        .unwrap()
        .is("text/nobodyKnowsThis"));
    let m = valid_request("inv2543");
    assert_eq!(m.top_via().unwrap().branch(), None);
    assert_eq!(m.max_forwards().unwrap(), None);
}

#[test]
fn every_rfc4475_file_is_handled_without_panic() {
    let dir = format!("{}/tests/fixtures/rfc4475", env!("CARGO_MANIFEST_DIR"));
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let bytes = Bytes::from(std::fs::read(entry.unwrap().path()).unwrap());
        if let Ok(m) = Message::parse(bytes, Framing::Datagram, &Limits::default()) {
            let _ = m.validate_request();
        }
        seen += 1;
    }
    assert_eq!(seen, 50);
}

fn rfc5118(name: &str) -> Result<Message, String> {
    let raw = fixture(&format!("rfc5118/{name}"));
    let mut wire = String::from_utf8(raw.to_vec())
        .unwrap()
        .replace('\n', "\r\n");
    if !wire.contains("\r\n\r\n") {
        wire.push_str("\r\n");
    }
    // The SDP examples of RFC 5118 declare a Content-Length that does not
    // match their own printed bodies; these cases test IPv6 syntax, so the
    // wire form carries the body's true length.
    let (head, body) = wire.split_once("\r\n\r\n").unwrap();
    let head: Vec<String> = head
        .split("\r\n")
        .map(|l| match l.starts_with("Content-Length:") {
            true => format!("Content-Length: {}", body.len()),
            false => l.to_owned(),
        })
        .collect();
    let wire = format!("{}\r\n\r\n{body}", head.join("\r\n"));
    let m = Message::parse(Bytes::from(wire), Framing::Datagram, &Limits::default())
        .map_err(|e| e.to_string())?;
    m.validate_request().map_err(|e| e.to_string())?;
    Ok(m)
}

#[test]
fn ipv6_torture_messages() {
    for name in [
        "ipv6-good",
        "port-ambiguous",
        "port-unambiguous",
        "via-received-param-with-delim",
        "via-received-param-no-delim",
        "ipv6-in-sdp",
        "mult-ip-in-header",
        "mult-ip-in-sdp",
        "ipv4-mapped-ipv6",
        "ipv6-bug-abnf-3-colons",
        "ipv6-correct-abnf-2-colons",
    ] {
        rfc5118(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(rfc5118("ipv6-bad").is_err());

    let m = rfc5118("port-ambiguous").unwrap();
    let uri = Uri::parse(m.request_uri().unwrap()).unwrap();
    assert_eq!(
        (uri.sip().unwrap().host, uri.sip().unwrap().port),
        (Host::Ipv6("2001:db8::10:5070"), None)
    );
    let m = rfc5118("port-unambiguous").unwrap();
    assert_eq!(
        Uri::parse(m.request_uri().unwrap())
            .unwrap()
            .sip()
            .unwrap()
            .port,
        Some(5070)
    );
    let m = rfc5118("via-received-param-with-delim").unwrap();
    assert_eq!(m.top_via().unwrap().received(), Some("[2001:db8::9:255]"));
    let m = rfc5118("via-received-param-no-delim").unwrap();
    assert_eq!(m.top_via().unwrap().received(), Some("2001:db8::9:255"));
    let m = rfc5118("mult-ip-in-header").unwrap();
    let hosts: Vec<_> = m.vias().map(|v| v.unwrap().host.to_string()).collect();
    assert_eq!(hosts, ["[2001:db8::9:1]", "192.0.2.1", "[2001:db8::9:255]"]);
    let m = rfc5118("ipv4-mapped-ipv6").unwrap();
    assert_eq!(
        m.top_via().unwrap().host.ip(),
        Some("::ffff:192.0.2.10".parse().unwrap())
    );
}
