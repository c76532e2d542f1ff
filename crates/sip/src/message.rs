//! The parsed message: one byte buffer plus the offsets of its parts. Header
//! values stay as bytes until a caller asks for a typed view, so a message we
//! only route costs one pass over its head.

use bytes::Bytes;
use memchr::memchr;

use crate::header_name::HeaderName;

/// Hard bounds applied while parsing. Exceeding one is a typed error, never a
/// panic or an unbounded allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest whole message (head and body) accepted.
    pub max_message_bytes: usize,
    /// Most header fields in one message (a folded field counts once).
    pub max_headers: usize,
    /// Longest single physical line of the head.
    pub max_line_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 65_535,
            max_headers: 128,
            max_line_bytes: 8_192,
        }
    }
}

/// Why a byte sequence is not a SIP message, with the offset where that
/// became clear.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} (at byte {offset})")]
pub struct ParseError {
    /// What is wrong.
    pub kind: ParseErrorKind,
    /// Offset into the input where the problem was found.
    pub offset: usize,
}

/// The kinds of framing and start-line errors.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    /// Only line breaks: a keepalive, not a message.
    #[error("no message, only line breaks")]
    Empty,
    /// The head never ends with an empty line.
    #[error("header section is not terminated by an empty line")]
    IncompleteHead,
    /// The message is larger than the configured limit.
    #[error("message exceeds the {limit}-byte limit")]
    TooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// More header fields than the configured limit.
    #[error("more than {limit} header fields")]
    TooManyHeaders {
        /// The configured limit.
        limit: usize,
    },
    /// A line of the head is longer than the configured limit.
    #[error("a header line exceeds the {limit}-byte limit")]
    LineTooLong {
        /// The configured limit.
        limit: usize,
    },
    /// The request line does not have the form `Method SP URI SP SIP/x.y`.
    #[error("malformed request line: {0}")]
    BadRequestLine(&'static str),
    /// The status line does not have the form `SIP/x.y SP ddd SP reason`.
    #[error("malformed status line: {0}")]
    BadStatusLine(&'static str),
    /// A header line has no colon or an invalid name.
    #[error("malformed header line")]
    BadHeaderLine,
    /// Content-Length is not a non-negative decimal number.
    #[error("Content-Length is not a non-negative number")]
    BadContentLength,
    /// Content-Length appears more than once, so the body's extent is unknown.
    #[error("Content-Length appears more than once")]
    DuplicateContentLength,
    /// The datagram holds fewer body bytes than Content-Length declares.
    #[error("Content-Length declares {declared} body bytes but {available} are present")]
    BodyTruncated {
        /// Bytes the header declares.
        declared: usize,
        /// Bytes actually present.
        available: usize,
    },
}

/// A half-open byte range into the message buffer. `u32` keeps a header entry
/// at 20 bytes; messages are far below 4 GiB by limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Span {
    pub(crate) start: u32,
    pub(crate) end: u32,
}

impl Span {
    fn new(start: usize, end: usize) -> Span {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }
    fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// One header field as it appeared: name classified, value untouched.
#[derive(Clone, Copy, Debug)]
pub struct HeaderField {
    /// Classified name.
    pub name: HeaderName,
    name_span: Span,
    value_span: Span,
}

#[derive(Clone, Copy, Debug)]
enum StartLine {
    Request { method: Span, uri: Span },
    Response { code: u16, reason: Span },
}

/// A parsed SIP request or response. Cheap to clone (the buffer is shared).
#[derive(Clone, Debug)]
pub struct Message {
    buf: Bytes,
    start: StartLine,
    version: Span,
    headers: Vec<HeaderField>,
    head_len: u32,
    body: Span,
}

/// How the transport delivered the bytes, which decides what an absent or
/// short Content-Length means (RFC 3261 §18.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// One message per datagram; the body may run to the datagram's end.
    Datagram,
    /// A byte stream; Content-Length alone says where the message ends.
    Stream,
}

/// Where the next message in a stream buffer ends, once it is complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Leading line breaks (keepalives) before the message.
    pub skip: usize,
    /// Length of the message after `skip`.
    pub len: usize,
}

impl Message {
    /// Parses one message from a datagram or a complete stream frame. Extra
    /// bytes after the declared body are ignored (RFC 4475 §3.1.1.8).
    pub fn parse(buf: Bytes, framing: Framing, limits: &Limits) -> Result<Message, ParseError> {
        let skip = leading_breaks(&buf);
        let buf = buf.slice(skip..);
        let parsed = parse_head(&buf, limits, skip)?;
        let head_len = parsed.head_len;
        let available = buf.len() - head_len;
        let body_len = match (parsed.content_length, framing) {
            (Some(declared), _) if declared > available => {
                return Err(ParseError {
                    kind: ParseErrorKind::BodyTruncated {
                        declared,
                        available,
                    },
                    offset: skip + buf.len(),
                })
            }
            (Some(declared), _) => declared,
            (None, Framing::Datagram) => available,
            (None, Framing::Stream) => 0,
        };
        if head_len + body_len > limits.max_message_bytes {
            return Err(ParseError {
                kind: ParseErrorKind::TooLarge {
                    limit: limits.max_message_bytes,
                },
                offset: skip + limits.max_message_bytes.min(buf.len()),
            });
        }
        Ok(Message {
            start: parsed.start,
            version: parsed.version,
            headers: parsed.headers,
            head_len: head_len as u32,
            body: Span::new(head_len, head_len + body_len),
            buf,
        })
    }

    /// Parses only the head of a message, ignoring the body: enough to answer
    /// a message that was refused for its size (513).
    /// A request line that is itself malformed (RFC 4475 §3.1.2.7–10) is
    /// tolerated here, so that such a request can still be answered with 400;
    /// the result then has an empty method and Request-URI.
    pub fn parse_head_only(buf: Bytes, limits: &Limits) -> Result<Message, ParseError> {
        let skip = leading_breaks(&buf);
        let buf = buf.slice(skip..);
        let parsed = parse_head_with(&buf, limits, skip, true)?;
        Ok(Message {
            start: parsed.start,
            version: parsed.version,
            headers: parsed.headers,
            head_len: parsed.head_len as u32,
            body: Span::new(parsed.head_len, parsed.head_len),
            buf: buf.slice(..parsed.head_len),
        })
    }

    /// Finds the extent of the next message in a stream buffer: `Ok(None)`
    /// while more bytes are needed. Line breaks before the start line count
    /// against both limits — a run of them longer than a line, or a
    /// message that with them exceeds the message limit, is an error — so
    /// no stream can make its reader buffer without bound.
    pub fn frame(buf: &[u8], limits: &Limits) -> Result<Option<Frame>, ParseError> {
        let skip = leading_breaks(buf);
        if skip > limits.max_line_bytes {
            return Err(ParseError {
                kind: ParseErrorKind::LineTooLong {
                    limit: limits.max_line_bytes,
                },
                offset: limits.max_line_bytes,
            });
        }
        let too_large = |offset| ParseError {
            kind: ParseErrorKind::TooLarge {
                limit: limits.max_message_bytes,
            },
            offset,
        };
        let rest = &buf[skip..];
        let Some(head_end) = find_head_end(rest) else {
            if buf.len() > limits.max_message_bytes {
                return Err(too_large(limits.max_message_bytes));
            }
            return Ok(None);
        };
        let parsed = parse_head(&rest[..head_end], limits, skip)?;
        let len = parsed.head_len + parsed.content_length.unwrap_or(0);
        if skip + len > limits.max_message_bytes {
            return Err(too_large(skip + len.min(rest.len())));
        }
        Ok((rest.len() >= len).then_some(Frame { skip, len }))
    }

    /// The whole message as received (after leading keepalive line breaks).
    pub fn as_bytes(&self) -> &Bytes {
        &self.buf
    }

    /// True for requests, false for responses.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The request method, case preserved (methods are case-sensitive).
    pub fn method(&self) -> Option<&str> {
        match self.start {
            StartLine::Request { method, .. } => Some(self.str_at(method)),
            StartLine::Response { .. } => None,
        }
    }

    /// The request's method as a type (None for a response).
    pub fn method_kind(&self) -> Option<crate::Method<'_>> {
        self.method().map(crate::Method::of)
    }

    /// The Request-URI exactly as written.
    pub fn request_uri(&self) -> Option<&str> {
        match self.start {
            StartLine::Request { uri, .. } => Some(self.str_at(uri)),
            StartLine::Response { .. } => None,
        }
    }

    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { code, .. } => Some(code),
            StartLine::Request { .. } => None,
        }
    }

    /// The reason phrase of a response, bytes as sent (it may be any UTF-8).
    pub fn reason(&self) -> Option<&[u8]> {
        match self.start {
            StartLine::Response { reason, .. } => Some(&self.buf[reason.range()]),
            StartLine::Request { .. } => None,
        }
    }

    /// The protocol version, e.g. `SIP/2.0`.
    pub fn version(&self) -> &str {
        self.str_at(self.version)
    }

    /// All header fields in order.
    pub fn headers(&self) -> &[HeaderField] {
        &self.headers
    }

    /// The name of a header field as it was written.
    pub fn name_bytes(&self, field: &HeaderField) -> &[u8] {
        &self.buf[field.name_span.range()]
    }

    /// The raw value of a header field (folding kept, outer whitespace trimmed).
    pub fn value_bytes(&self, field: &HeaderField) -> &[u8] {
        &self.buf[field.value_span.range()]
    }

    /// The value of a header field as a shared slice of the message buffer.
    pub fn value_shared(&self, field: &HeaderField) -> Bytes {
        self.buf.slice(field.value_span.range())
    }

    /// Raw values of every field with this name, in order.
    pub fn values(&self, name: HeaderName) -> impl Iterator<Item = &[u8]> + '_ {
        self.headers
            .iter()
            .filter(move |h| h.name == name)
            .map(move |h| self.value_bytes(h))
    }

    /// Raw values of extension headers matched by name, case-insensitively.
    pub fn values_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |h| self.name_bytes(h).eq_ignore_ascii_case(name.as_bytes()))
            .map(move |h| self.value_bytes(h))
    }

    /// How many fields with this name the message has.
    pub fn count(&self, name: HeaderName) -> usize {
        self.headers.iter().filter(|h| h.name == name).count()
    }

    /// The first raw value with this name.
    pub fn first_value(&self, name: HeaderName) -> Option<&[u8]> {
        self.values(name).next()
    }

    /// The body, exactly Content-Length bytes.
    pub fn body(&self) -> &[u8] {
        &self.buf[self.body.range()]
    }

    /// Length of the head including the empty line that ends it.
    pub fn head_len(&self) -> usize {
        self.head_len as usize
    }

    fn str_at(&self, span: Span) -> &str {
        // Start-line parts are checked to be ASCII while parsing.
        std::str::from_utf8(&self.buf[span.range()]).unwrap_or("")
    }
}

fn leading_breaks(buf: &[u8]) -> usize {
    buf.iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count()
}

/// Offset just past the empty line ending the head (CRLFCRLF, or bare LFs).
fn find_head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = memchr(b'\n', &buf[from..]) {
        let nl = from + i;
        let next = nl + 1;
        match buf.get(next) {
            Some(b'\n') => return Some(next + 1),
            Some(b'\r') if buf.get(next + 1) == Some(&b'\n') => return Some(next + 2),
            None => return None,
            _ => from = next,
        }
    }
    None
}

struct ParsedHead {
    start: StartLine,
    version: Span,
    headers: Vec<HeaderField>,
    head_len: usize,
    content_length: Option<usize>,
}

/// One physical line: `[start, end)` without its terminator; `next` is the
/// offset after the terminator.
struct Line {
    start: usize,
    end: usize,
    next: usize,
}

fn next_line(buf: &[u8], start: usize, limits: &Limits, base: usize) -> Result<Line, ParseError> {
    let Some(i) = memchr(b'\n', &buf[start..]) else {
        return Err(ParseError {
            kind: ParseErrorKind::IncompleteHead,
            offset: base + buf.len(),
        });
    };
    let nl = start + i;
    let end = if nl > start && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    if end - start > limits.max_line_bytes {
        return Err(ParseError {
            kind: ParseErrorKind::LineTooLong {
                limit: limits.max_line_bytes,
            },
            offset: base + start,
        });
    }
    Ok(Line {
        start,
        end,
        next: nl + 1,
    })
}

fn parse_head(buf: &[u8], limits: &Limits, base: usize) -> Result<ParsedHead, ParseError> {
    parse_head_with(buf, limits, base, false)
}

fn parse_head_with(
    buf: &[u8],
    limits: &Limits,
    base: usize,
    lenient_request_line: bool,
) -> Result<ParsedHead, ParseError> {
    let first = next_line(buf, 0, limits, base)?;
    let (start, version) = match parse_start_line(&buf[..first.end]) {
        Ok(parsed) => parsed,
        Err(ParseErrorKind::BadRequestLine(_)) if lenient_request_line => (
            StartLine::Request {
                method: Span::default(),
                uri: Span::default(),
            },
            Span::default(),
        ),
        Err(kind) => return Err(ParseError { kind, offset: base }),
    };
    let mut headers: Vec<HeaderField> = Vec::with_capacity(20);
    let mut content_length = None;
    let mut pos = first.next;
    loop {
        let line = next_line(buf, pos, limits, base)?;
        pos = line.next;
        if line.start == line.end {
            break;
        }
        let bytes = &buf[line.start..line.end];
        if bytes[0] == b' ' || bytes[0] == b'\t' {
            // Folded continuation of the previous field (RFC 3261 §7.3.1).
            let Some(last) = headers.last_mut() else {
                return Err(ParseError {
                    kind: ParseErrorKind::BadHeaderLine,
                    offset: base + line.start,
                });
            };
            if let Some(end) = trim_end(buf, line.start, line.end) {
                if last.value_span.start == last.value_span.end {
                    let value_start = line.start + skip_ws(bytes);
                    last.value_span.start = value_start as u32;
                }
                last.value_span.end = end as u32;
            }
            continue;
        }
        if headers.len() == limits.max_headers {
            return Err(ParseError {
                kind: ParseErrorKind::TooManyHeaders {
                    limit: limits.max_headers,
                },
                offset: base + line.start,
            });
        }
        let field = parse_header_line(buf, &line).ok_or(ParseError {
            kind: ParseErrorKind::BadHeaderLine,
            offset: base + line.start,
        })?;
        if field.name == HeaderName::ContentLength {
            let value = &buf[field.value_span.range()];
            let len = parse_content_length(value).ok_or(ParseError {
                kind: ParseErrorKind::BadContentLength,
                offset: base + field.value_span.start as usize,
            })?;
            if content_length.replace(len).is_some() {
                return Err(ParseError {
                    kind: ParseErrorKind::DuplicateContentLength,
                    offset: base + line.start,
                });
            }
        }
        headers.push(field);
    }
    // A folded Content-Length continuation is not supported: the value is
    // read from its first line only, which is what every known peer sends.
    Ok(ParsedHead {
        start,
        version,
        headers,
        head_len: pos,
        content_length,
    })
}

fn skip_ws(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count()
}

/// End of the line with trailing whitespace removed, or None if it is blank.
fn trim_end(buf: &[u8], start: usize, end: usize) -> Option<usize> {
    let mut e = end;
    while e > start && (buf[e - 1] == b' ' || buf[e - 1] == b'\t') {
        e -= 1;
    }
    (e > start).then_some(e)
}

fn parse_header_line(buf: &[u8], line: &Line) -> Option<HeaderField> {
    let bytes = &buf[line.start..line.end];
    let name_len = bytes.iter().take_while(|&&b| is_token_char(b)).count();
    if name_len == 0 {
        return None;
    }
    let mut i = name_len + skip_ws(&bytes[name_len..]);
    if bytes.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    i += skip_ws(&bytes[i..]);
    let value_start = line.start + i;
    let value_end = trim_end(buf, value_start, line.end).unwrap_or(value_start);
    Some(HeaderField {
        name: HeaderName::from_bytes(&bytes[..name_len]),
        name_span: Span::new(line.start, line.start + name_len),
        value_span: Span::new(value_start, value_end),
    })
}

fn parse_content_length(value: &[u8]) -> Option<usize> {
    if value.is_empty() || value.len() > 10 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0usize, |n, &d| {
        n.checked_mul(10)?.checked_add((d - b'0') as usize)
    })
}

/// RFC 3261 `token` characters, as a table: this test runs for nearly every
/// byte of a head, and a table lookup beats a chain of comparisons.
static TOKEN_CHARS: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        i += 1;
    }
    table
};

/// Whether `b` may appear in an RFC 3261 `token`.
#[inline(always)]
pub(crate) fn is_token_char(b: u8) -> bool {
    TOKEN_CHARS[b as usize]
}

fn is_version(v: &[u8]) -> bool {
    // "SIP/" 1*DIGIT "." 1*DIGIT, name case-insensitive.
    if v.len() < 7 || !v[..4].eq_ignore_ascii_case(b"SIP/") {
        return false;
    }
    let rest = &v[4..];
    let Some(dot) = rest.iter().position(|&b| b == b'.') else {
        return false;
    };
    let (major, minor) = (&rest[..dot], &rest[dot + 1..]);
    !major.is_empty()
        && !minor.is_empty()
        && major.iter().all(u8::is_ascii_digit)
        && minor.iter().all(u8::is_ascii_digit)
}

fn parse_start_line(line: &[u8]) -> Result<(StartLine, Span), ParseErrorKind> {
    if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"SIP/") {
        return parse_status_line(line);
    }
    use ParseErrorKind::BadRequestLine as Bad;
    let method_len = line.iter().take_while(|&&b| is_token_char(b)).count();
    if method_len == 0 || line.get(method_len) != Some(&b' ') {
        return Err(Bad("expected a method token followed by one space"));
    }
    let uri_start = method_len + 1;
    let Some(uri_len) = line[uri_start..].iter().position(|&b| b == b' ') else {
        return Err(Bad(
            "expected Request-URI and version separated by one space",
        ));
    };
    let uri_end = uri_start + uri_len;
    let uri = &line[uri_start..uri_end];
    if uri.is_empty() {
        return Err(Bad("more than one space between method and Request-URI"));
    }
    if uri[0] == b'<' {
        return Err(Bad("Request-URI must not be enclosed in <>"));
    }
    if !uri.iter().all(|b| b.is_ascii_graphic()) {
        return Err(Bad("Request-URI contains characters that must be escaped"));
    }
    let version = &line[uri_end + 1..];
    if !is_version(version) {
        return Err(Bad(
            "expected SIP version after Request-URI (whitespace in the URI, or trailing whitespace?)",
        ));
    }
    Ok((
        StartLine::Request {
            method: Span::new(0, method_len),
            uri: Span::new(uri_start, uri_end),
        },
        Span::new(uri_end + 1, line.len()),
    ))
}

fn parse_status_line(line: &[u8]) -> Result<(StartLine, Span), ParseErrorKind> {
    use ParseErrorKind::BadStatusLine as Bad;
    let Some(sp) = line.iter().position(|&b| b == b' ') else {
        return Err(Bad("no status code"));
    };
    if !is_version(&line[..sp]) {
        return Err(Bad("malformed SIP version"));
    }
    let rest = &line[sp + 1..];
    let code_len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if code_len != 3 {
        return Err(Bad("status code must be three digits"));
    }
    let code = rest[..3]
        .iter()
        .fold(0u16, |n, &d| n * 10 + u16::from(d - b'0'));
    if !(100..=699).contains(&code) {
        return Err(Bad("status code outside 100-699"));
    }
    let reason_start = match rest.get(3) {
        None => sp + 4,
        Some(b' ') => sp + 5,
        Some(_) => return Err(Bad("status code must be followed by a space")),
    };
    Ok((
        StartLine::Response {
            code,
            reason: Span::new(reason_start.min(line.len()), line.len()),
        },
        Span::new(0, sp),
    ))
}
