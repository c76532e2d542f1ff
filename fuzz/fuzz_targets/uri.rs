//! SIP, SIPS and other URIs and name-addr forms as any header may carry
//! them: parsing and every accessor, no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use porchlight_sip::{NameAddr, Uri};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(uri) = Uri::parse(text) {
        let _ = uri.as_str();
        if let Some(sip) = uri.sip() {
            let _ = sip.params().count();
            let _ = sip.param("transport");
            let _ = sip.headers();
            let _ = sip.host.ip();
            let _ = sip.host.matches("contoso.com");
        }
    }
    if let Ok(name_addr) = NameAddr::parse(text) {
        let _ = name_addr.tag();
        let _ = Uri::parse(name_addr.uri.as_str());
    }
});
