//! `porchlight sip check`: reads captured messages and says, for each, what
//! it is or exactly why it is not valid SIP.

use std::fmt::Write as _;
use std::path::Path;

use bytes::Bytes;
use porchlight_sip::{Framing, HeaderName, Limits, Message};

/// One line of output per file, and whether the file holds a valid message.
pub fn check_file(path: &Path) -> (String, bool) {
    let name = path.display();
    let bytes = match std::fs::read(path) {
        Ok(b) => Bytes::from(b),
        Err(e) => return (format!("{name}: cannot read: {e}"), false),
    };
    let message = match Message::parse(bytes, Framing::Datagram, &Limits::default()) {
        Ok(m) => m,
        Err(e) => {
            return (
                format!("{name}: error at byte {}: {}", e.offset, e.kind),
                false,
            )
        }
    };
    let validity = match message.method() {
        Some(_) => message
            .validate_request()
            .map_err(|e| format!("invalid, would be answered {}: {e}", e.status())),
        None => message
            .validate_response()
            .map_err(|e| format!("invalid, would be discarded: {e}")),
    };
    (
        summary(&name.to_string(), &message, validity.as_ref().err()),
        validity.is_ok(),
    )
}

fn summary(name: &str, m: &Message, problem: Option<&String>) -> String {
    let mut out = String::new();
    let _ = match (m.method(), m.status()) {
        (Some(method), _) => write!(out, "{name}: {method} {}", m.request_uri().unwrap_or("")),
        (None, Some(code)) => write!(
            out,
            "{name}: {code} {}",
            String::from_utf8_lossy(m.reason().unwrap_or(b""))
        ),
        _ => write!(out, "{name}:"),
    };
    for header in [
        HeaderName::CallId,
        HeaderName::CSeq,
        HeaderName::From,
        HeaderName::To,
        HeaderName::Event,
    ] {
        if let Some(v) = m.first_value(header) {
            let _ = write!(
                out,
                "\n  {}: {}",
                header.as_str(),
                String::from_utf8_lossy(v)
            );
        }
    }
    if let Ok(via) = m.top_via() {
        let _ = write!(
            out,
            "\n  Via: {} {} branch={}",
            via.transport,
            via.host,
            via.branch().unwrap_or("-")
        );
    }
    let _ = write!(
        out,
        "\n  {} headers, body {} bytes",
        m.headers().len(),
        m.body().len()
    );
    match problem {
        Some(p) => {
            let _ = write!(out, "\n  {p}");
        }
        None => out.push_str("\n  valid"),
    }
    out
}
