//! Feeds arbitrary bytes to the parser as a datagram and as a stream, then
//! runs every typed view and validation: none may panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use porchlight_sip::{Framing, HeaderName, Limits, Message};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let _ = Message::frame(data, &limits);
    for framing in [Framing::Datagram, Framing::Stream] {
        let Ok(m) = Message::parse(Bytes::copy_from_slice(data), framing, &limits) else {
            continue;
        };
        let _ = m.validate_request();
        let _ = m.validate_response();
        let _ = m.vias().count();
        let _ = m.contacts();
        let _ = m.routes().count();
        let _ = m.accept().count();
        let _ = m.event();
        let _ = m.subscription_state();
        let _ = m.retry_after();
        let _ = m.warnings().count();
        let _ = m.expires();
        let _ = m.auth(HeaderName::Authorization).map(|a| a.map(|a| a.params().count())).count();
        let _ = m.tokens(HeaderName::Supported).count();
        let _ = m.entity_tag(HeaderName::SipIfMatch);
        let _ = Message::parse_head_only(Bytes::copy_from_slice(data), &limits);
    }
});
