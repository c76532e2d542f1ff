//! An arbitrary Authorization header value in a REGISTER, parsed and then
//! checked by the digest verifier against a real challenge: no panic, and
//! nothing made up is ever accepted.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use porchlight_endpoints::digest::{Algorithm, DigestAuth, Verdict};
use porchlight_sip::{Framing, HeaderName, Limits, Message};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    if value.contains(['\r', '\n']) {
        return;
    }
    let raw = format!(
        "REGISTER sip:contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
         From: <sip:bot@contoso.com>;tag=1\r\nTo: <sip:bot@contoso.com>\r\nCall-ID: c\r\n\
         CSeq: 1 REGISTER\r\nAuthorization: {value}\r\nContent-Length: 0\r\n\r\n"
    );
    let Ok(message) = Message::parse(Bytes::from(raw), Framing::Datagram, &Limits::default())
    else {
        return;
    };
    let auth = DigestAuth::new("contoso.com", 7, 300, vec![Algorithm::Sha256, Algorithm::Md5]);
    for credentials in message.auth(HeaderName::Authorization).flatten() {
        let verdict = auth.verify(&credentials, "REGISTER", ("bot", "s3cret"), None, 1_000);
        assert_ne!(verdict, Verdict::Valid, "{value}");
    }
});
