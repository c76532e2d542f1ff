//! Writing messages. Porchlight builds what it sends with a writer over one
//! growing buffer: no intermediate header objects, Content-Length always
//! computed from the body.

use std::fmt::Write as _;
use std::net::IpAddr;

use bytes::{BufMut, Bytes, BytesMut};

use crate::cursor::SplitItems;
use crate::header_name::HeaderName;
use crate::message::Message;
use crate::typed::Via;
use crate::uri::Host;

/// Builds one message into a buffer.
#[derive(Debug)]
pub struct MessageWriter {
    buf: BytesMut,
}

impl MessageWriter {
    /// Starts a request line.
    pub fn request(method: &str, uri: &str) -> MessageWriter {
        let mut buf = BytesMut::with_capacity(512);
        buf.put_slice(method.as_bytes());
        buf.put_u8(b' ');
        buf.put_slice(uri.as_bytes());
        buf.put_slice(b" SIP/2.0\r\n");
        MessageWriter { buf }
    }

    /// Starts a status line.
    pub fn response(code: u16, reason: &str) -> MessageWriter {
        let mut buf = BytesMut::with_capacity(512);
        let _ = write!(Wrapper(&mut buf), "SIP/2.0 {code} {reason}\r\n");
        MessageWriter { buf }
    }

    /// Appends one header field.
    pub fn header(&mut self, name: &str, value: impl AsRef<[u8]>) -> &mut Self {
        self.buf.put_slice(name.as_bytes());
        self.buf.put_slice(b": ");
        self.buf.put_slice(value.as_ref());
        self.buf.put_slice(b"\r\n");
        self
    }

    /// Appends one header field with a formatted value.
    pub fn header_fmt(&mut self, name: &str, value: std::fmt::Arguments<'_>) -> &mut Self {
        self.buf.put_slice(name.as_bytes());
        self.buf.put_slice(b": ");
        let _ = Wrapper(&mut self.buf).write_fmt(value);
        self.buf.put_slice(b"\r\n");
        self
    }

    /// Ends the head with Content-Length and appends the body.
    pub fn finish(mut self, body: &[u8]) -> Bytes {
        let _ = write!(
            Wrapper(&mut self.buf),
            "Content-Length: {}\r\n\r\n",
            body.len()
        );
        self.buf.put_slice(body);
        self.buf.freeze()
    }
}

struct Wrapper<'a>(&'a mut BytesMut);

impl std::fmt::Write for Wrapper<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}

/// The top Via of a received request as a server must record it (RFC 3261
/// §18.2.1 `received`, RFC 3581 `rport` filled in), so responses find their
/// way back through NATs. None when nothing needs to change.
pub fn via_with_received(via: &Via<'_>, source_ip: IpAddr, source_port: u16) -> Option<String> {
    let rport_requested = via.rport() == Some(None);
    let host_is_source = match via.host {
        Host::Name(_) => false,
        _ => via.host.ip() == Some(source_ip),
    };
    let add_received = (!host_is_source || rport_requested) && via.received().is_none();
    if !add_received && !rport_requested {
        return None;
    }
    let params = via.params.as_str();
    let params_start = params.as_ptr() as usize - via.raw.as_ptr() as usize;
    let mut out = String::with_capacity(via.raw.len() + 40);
    out.push_str(&via.raw[..params_start]);
    for segment in params.split(';').skip(1) {
        out.push(';');
        if segment.trim().eq_ignore_ascii_case("rport") {
            let _ = write!(out, "rport={source_port}");
        } else {
            out.push_str(segment);
        }
    }
    if add_received {
        let _ = write!(out, ";received={source_ip}");
    }
    Some(out)
}

/// The reason phrase RFC 3261 §21 (and the RFCs that added codes) gives a
/// status code, or its class's: what an answer says to a stranger, who
/// should learn no more than the code tells.
pub fn standard_reason(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        204 => "No Notification",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        305 => "Use Proxy",
        380 => "Alternative Service",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        412 => "Conditional Request Failed",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        485 => "Ambiguous",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        489 => "Bad Event",
        491 => "Request Pending",
        493 => "Undecipherable",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => match code / 100 {
            1 => "Provisional",
            2 => "Success",
            3 => "Redirection",
            4 => "Client Error",
            5 => "Server Error",
            _ => "Global Failure",
        },
    }
}

/// A response a transaction user decided on, before it is written: status,
/// reason, the headers beyond those copied from the request, the To tag of
/// the dialog it creates, and a body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    /// Status code.
    pub code: u16,
    /// Reason phrase (control characters are replaced when written).
    pub reason: String,
    /// Extra header fields, in order.
    pub headers: Vec<(&'static str, String)>,
    /// The To tag to add when the request has none; a dialog-creating
    /// answer names its own, others get a fresh one from the writer.
    pub to_tag: Option<String>,
    /// Content type and body.
    pub body: Option<(String, Bytes)>,
}

impl Answer {
    /// A status and reason with nothing else.
    pub fn new(code: u16, reason: impl Into<String>) -> Answer {
        Answer {
            code,
            reason: reason.into(),
            ..Answer::default()
        }
    }

    /// Adds a header field.
    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Answer {
        self.headers.push((name, value.into()));
        self
    }

    /// Writes the answer to `request` (see [`response_to`]); `fallback_tag`
    /// is used when the answer names no tag of its own.
    pub fn write(&self, request: &Message, top_via: Option<&str>, fallback_tag: &str) -> Bytes {
        let reason: String = self
            .reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let tag = self.to_tag.as_deref().unwrap_or(fallback_tag);
        let mut w = response_to(request, self.code, &reason, top_via, Some(tag));
        for (name, value) in &self.headers {
            w.header(name, value);
        }
        match &self.body {
            Some((content_type, body)) => {
                w.header("Content-Type", content_type);
                w.finish(body)
            }
            None => w.finish(b""),
        }
    }
}

/// Starts a response to `request`: copies Via (the top one replaced by
/// `top_via`, see [`via_with_received`]), From, To (adding `to_tag` when it has none), Call-ID and
/// CSeq, as RFC 3261 §8.2.6.2 requires, and the Record-Route when the
/// response establishes a dialog (§12.1.1: a 101–299 to an INVITE or
/// SUBSCRIBE outside a dialog), so the peer's later requests follow the
/// proxies that asked to stay in the path. Works on raw bytes, so even a
/// request with a malformed Via can be answered.
pub fn response_to(
    request: &Message,
    code: u16,
    reason: &str,
    top_via: Option<&str>,
    to_tag: Option<&str>,
) -> MessageWriter {
    let mut w = MessageWriter::response(code, reason);
    let mut first_via = true;
    let establishes_dialog = (101..300).contains(&code)
        && matches!(request.method(), Some("INVITE" | "SUBSCRIBE"))
        && request.to().is_ok_and(|to| to.tag().is_none());
    for field in request.headers() {
        let value = request.value_bytes(field);
        match field.name {
            HeaderName::Via if first_via => {
                first_via = false;
                match (std::str::from_utf8(value), top_via) {
                    (Ok(s), Some(top)) => {
                        let mut items = SplitItems::new(s);
                        items.next();
                        let mut line = String::with_capacity(s.len() + top.len());
                        line.push_str(top);
                        for rest in items {
                            line.push_str(", ");
                            line.push_str(rest);
                        }
                        w.header("Via", line);
                    }
                    _ => {
                        w.header("Via", value);
                    }
                }
            }
            HeaderName::Via => {
                w.header("Via", value);
            }
            HeaderName::To => {
                // A To that does not parse is echoed untouched: appending
                // to it could double a tag we cannot see.
                let has_tag = request.to().map_or(true, |to| to.tag().is_some());
                match to_tag {
                    Some(tag) if !has_tag && code > 100 => {
                        let mut v = BytesMut::from(value);
                        v.put_slice(b";tag=");
                        v.put_slice(tag.as_bytes());
                        w.header("To", v);
                    }
                    _ => {
                        w.header("To", value);
                    }
                }
            }
            HeaderName::From | HeaderName::CallId | HeaderName::CSeq => {
                w.header(field.name.as_str(), value);
            }
            HeaderName::RecordRoute if establishes_dialog => {
                w.header("Record-Route", value);
            }
            _ => {}
        }
    }
    w
}
