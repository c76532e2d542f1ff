//! Typed views of header values, built only when asked for. Each borrows from
//! the message buffer; none allocates.

use crate::cursor::{is_lws, Cursor, SplitItems};
use crate::header_name::HeaderName;
use crate::message::{is_token_char, Message};
use crate::params::Params;
use crate::uri::{parse_host, parse_port, Host, Uri};

/// Why a header could not be read as its type.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// A required header is absent.
    #[error("missing {} header", .0.as_str())]
    Missing(HeaderName),
    /// A header allowed once appears more than once.
    #[error("{} header appears more than once", .0.as_str())]
    Repeated(HeaderName),
    /// The value is not UTF-8, so it cannot be typed (other headers are unaffected).
    #[error("{} header is not valid UTF-8", .0.as_str())]
    NotUtf8(HeaderName),
    /// The value does not follow the header's grammar.
    #[error("malformed {} header: {reason}", header.as_str())]
    Malformed {
        /// Which header.
        header: HeaderName,
        /// What is wrong.
        reason: &'static str,
    },
}

fn malformed(header: HeaderName) -> impl Fn(&'static str) -> HeaderError {
    move |reason| HeaderError::Malformed { header, reason }
}

/// A `name-addr` or `addr-spec` with header parameters: From, To, Contact,
/// Route, Record-Route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// Display name: quoted ones without quotes (escapes kept), token ones as written.
    pub display_name: Option<&'a str>,
    /// The address.
    pub uri: Uri<'a>,
    /// Header parameters after the address.
    pub params: Params<'a>,
}

impl<'a> NameAddr<'a> {
    /// Parses one name-addr or addr-spec item.
    pub fn parse(item: &'a str) -> Result<NameAddr<'a>, &'static str> {
        let mut c = Cursor::new(item);
        c.skip_lws();
        let display_name = if c.peek() == Some(b'"') {
            let d = c.quoted().ok_or("unterminated quoted display name")?;
            c.skip_lws();
            if c.peek() != Some(b'<') {
                return Err("display name must be followed by <URI>");
            }
            Some(d)
        } else {
            display_name_tokens(&mut c)
        };
        let uri = if c.eat(b'<') {
            let rest = c.rest();
            let close = rest.find('>').ok_or("missing > after URI")?;
            let raw = &rest[..close];
            c.pos += close + 1;
            if raw.is_empty() || raw.bytes().any(is_lws) {
                return Err("whitespace inside <URI>");
            }
            Uri::parse(raw).map_err(|e| e.0)?
        } else {
            let raw = c.take_while(|b| !is_lws(b) && b != b';' && b != b',');
            if raw.contains('?') {
                return Err("a URI with headers must be enclosed in <>");
            }
            Uri::parse(raw).map_err(|e| e.0)?
        };
        let params = Params::parse(&mut c).map_err(|_| "malformed parameter")?;
        c.skip_lws();
        if !c.at_end() {
            return Err("unexpected text after the address");
        }
        Ok(NameAddr {
            display_name,
            uri,
            params,
        })
    }

    /// The `tag` parameter that identifies a dialog end.
    pub fn tag(&self) -> Option<&'a str> {
        self.params.value("tag")
    }
}

/// Reads `*(token LWS)` when it is followed by `<`; otherwise leaves the
/// cursor where it was (the value is an addr-spec).
fn display_name_tokens<'a>(c: &mut Cursor<'a>) -> Option<&'a str> {
    let start = c.pos;
    while c.token().is_some() {
        let end = c.pos;
        c.skip_lws();
        if c.peek() == Some(b'<') {
            return Some(&c.s[start..end]);
        }
    }
    c.pos = start;
    None
}

/// One Via entry (a header may hold several, comma-separated).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Via<'a> {
    /// Protocol name, `SIP`.
    pub protocol: &'a str,
    /// Protocol version, `2.0`.
    pub version: &'a str,
    /// Transport token as written (`UDP`, `TCP`, `TLS`, `SCTP`, `WS`, …).
    pub transport: &'a str,
    /// sent-by host.
    pub host: Host<'a>,
    /// sent-by port, when written.
    pub port: Option<u16>,
    /// Via parameters.
    pub params: Params<'a>,
    /// The entry exactly as written.
    pub raw: &'a str,
}

/// The RFC 3261 branch prefix that marks transaction-unique branches.
pub const BRANCH_MAGIC_COOKIE: &str = "z9hG4bK";

impl<'a> Via<'a> {
    /// Parses one via-parm.
    pub fn parse(raw: &'a str) -> Result<Via<'a>, &'static str> {
        let mut c = Cursor::new(raw);
        c.skip_lws();
        let protocol = c.token().ok_or("missing protocol name")?;
        if !c.eat_sep(b'/') {
            return Err("expected / after protocol name");
        }
        let version = c.token().ok_or("missing protocol version")?;
        if !c.eat_sep(b'/') {
            return Err("expected / after protocol version");
        }
        let transport = c.token().ok_or("missing transport")?;
        let before = c.pos;
        c.skip_lws();
        if c.pos == before {
            return Err("expected whitespace before sent-by");
        }
        let host = parse_host(&mut c).map_err(|e| e.0)?;
        let port = parse_port(&mut c, true).map_err(|e| e.0)?;
        let params = Params::parse(&mut c).map_err(|_| "malformed parameter")?;
        c.skip_lws();
        if !c.at_end() {
            return Err("unexpected text after parameters");
        }
        Ok(Via {
            protocol,
            version,
            transport,
            host,
            port,
            params,
            raw,
        })
    }

    /// The transaction branch.
    pub fn branch(&self) -> Option<&'a str> {
        self.params.value("branch")
    }

    /// Whether the branch carries the RFC 3261 magic cookie, so it alone
    /// identifies the transaction (§17.2.3).
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch().is_some_and(|b| {
            b.starts_with(BRANCH_MAGIC_COOKIE) && b.len() > BRANCH_MAGIC_COOKIE.len()
        })
    }

    /// The `received` address added by the next hop.
    pub fn received(&self) -> Option<&'a str> {
        self.params.value("received")
    }

    /// RFC 3581 `rport`: `Some(None)` when requested, `Some(Some(p))` when filled in.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.params
            .get("rport")
            .map(|v| v.and_then(|p| p.parse().ok()))
    }

    /// The `maddr` parameter.
    pub fn maddr(&self) -> Option<&'a str> {
        self.params.value("maddr")
    }
}

/// The CSeq header: sequence number and method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CSeq<'a> {
    /// Sequence number, below 2^31 (RFC 3261 §8.1.1.5).
    pub seq: u32,
    /// Method, case-sensitive.
    pub method: &'a str,
}

impl<'a> CSeq<'a> {
    fn parse(s: &'a str) -> Result<CSeq<'a>, &'static str> {
        let mut c = Cursor::new(s);
        let seq = c.digits_u64().ok_or("sequence number is not a number")?;
        if seq >= 1 << 31 {
            return Err("sequence number is 2^31 or larger");
        }
        let before = c.pos;
        c.skip_lws();
        let method = c
            .token()
            .filter(|_| c.pos > before)
            .ok_or("missing method")?;
        c.skip_lws();
        if !c.at_end() {
            return Err("unexpected text after method");
        }
        Ok(CSeq {
            seq: seq as u32,
            method,
        })
    }
}

/// A media type with parameters: Content-Type, and each Accept entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MediaType<'a> {
    /// Top-level type (`application`, `*`).
    pub kind: &'a str,
    /// Subtype (`pidf+xml`, `*`).
    pub subtype: &'a str,
    /// Parameters (`q`, `charset`, `type`, …).
    pub params: Params<'a>,
}

impl<'a> MediaType<'a> {
    /// Parses `type/subtype *(;param)`.
    pub fn parse(s: &'a str) -> Result<MediaType<'a>, &'static str> {
        let mut c = Cursor::new(s);
        c.skip_lws();
        let kind = c.token().ok_or("missing media type")?;
        if !c.eat_sep(b'/') {
            return Err("expected type/subtype");
        }
        let subtype = c.token().ok_or("missing media subtype")?;
        let params = Params::parse(&mut c).map_err(|_| "malformed parameter")?;
        c.skip_lws();
        if !c.at_end() {
            return Err("unexpected text after media type");
        }
        Ok(MediaType {
            kind,
            subtype,
            params,
        })
    }

    /// Whether this (possibly wildcard) range covers `type/subtype`.
    pub fn covers(&self, essence: &str) -> bool {
        let Some((kind, subtype)) = essence.split_once('/') else {
            return false;
        };
        (self.kind == "*" || self.kind.eq_ignore_ascii_case(kind))
            && (self.subtype == "*" || self.subtype.eq_ignore_ascii_case(subtype))
    }

    /// Whether this is exactly `type/subtype` (case-insensitive).
    pub fn is(&self, essence: &str) -> bool {
        essence.split_once('/').is_some_and(|(k, s)| {
            self.kind.eq_ignore_ascii_case(k) && self.subtype.eq_ignore_ascii_case(s)
        })
    }
}

/// A token with parameters: Event (`presence;id=1`) and Subscription-State
/// (`active;expires=600`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenWithParams<'a> {
    /// The leading token.
    pub value: &'a str,
    /// Its parameters.
    pub params: Params<'a>,
}

impl<'a> TokenWithParams<'a> {
    fn parse(s: &'a str) -> Result<TokenWithParams<'a>, &'static str> {
        let mut c = Cursor::new(s);
        let value = c.token().ok_or("missing token")?;
        let params = Params::parse(&mut c).map_err(|_| "malformed parameter")?;
        c.skip_lws();
        if !c.at_end() {
            return Err("unexpected text after parameters");
        }
        Ok(TokenWithParams { value, params })
    }
}

/// A challenge or credentials: `Digest realm="x", nonce="y"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthValue<'a> {
    /// Scheme, e.g. `Digest`.
    pub scheme: &'a str,
    params: &'a str,
}

impl<'a> AuthValue<'a> {
    fn parse(s: &'a str) -> Result<AuthValue<'a>, &'static str> {
        let mut c = Cursor::new(s);
        let scheme = c.token().ok_or("missing scheme")?;
        c.skip_lws();
        let params = c.rest();
        let value = AuthValue { scheme, params };
        // Validate once so that reading can never fail later.
        let mut c = Cursor::new(params);
        while !c.at_end() {
            auth_param(&mut c).ok_or("malformed auth parameter")?;
        }
        Ok(value)
    }

    /// Every `name=value` pair; quoted values without quotes (escapes kept).
    pub fn params(&self) -> impl Iterator<Item = (&'a str, &'a str)> {
        let mut c = Cursor::new(self.params);
        std::iter::from_fn(move || if c.at_end() { None } else { auth_param(&mut c) })
    }

    /// One parameter by (case-insensitive) name.
    pub fn param(&self, name: &str) -> Option<&'a str> {
        self.params()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

fn auth_param<'a>(c: &mut Cursor<'a>) -> Option<(&'a str, &'a str)> {
    c.skip_lws();
    let name = c.token()?;
    if !c.eat_sep(b'=') {
        // token68 form (`Basic abc==`): the whole rest is one value.
        let rest = c.rest().trim();
        c.pos = c.s.len();
        return Some((name, rest));
    }
    let value = if c.peek() == Some(b'"') {
        c.quoted()?
    } else {
        c.token()?
    };
    if !c.eat_sep(b',') {
        c.skip_lws();
        if !c.at_end() {
            return None;
        }
    }
    Some((name, value))
}

/// Retry-After: seconds, optional comment, optional duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryAfter<'a> {
    /// Seconds to wait.
    pub seconds: u32,
    /// The comment in parentheses, without them.
    pub comment: Option<&'a str>,
    /// Parameters (`duration`).
    pub params: Params<'a>,
}

/// One Warning entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Warning<'a> {
    /// Three-digit warning code.
    pub code: u16,
    /// The agent that added it.
    pub agent: &'a str,
    /// The warning text, without quotes.
    pub text: &'a str,
}

impl<'a> Warning<'a> {
    fn parse(s: &'a str) -> Result<Warning<'a>, &'static str> {
        let mut c = Cursor::new(s);
        let code = c.take_while(|b| b.is_ascii_digit());
        if code.len() != 3 {
            return Err("warning code must be three digits");
        }
        c.skip_lws();
        let agent = c.take_while(|b| !is_lws(b));
        if agent.is_empty() {
            return Err("missing warning agent");
        }
        c.skip_lws();
        let text = c.quoted().ok_or("warning text must be a quoted string")?;
        c.skip_lws();
        if !c.at_end() {
            return Err("unexpected text after warning");
        }
        Ok(Warning {
            code: code.parse().map_err(|_| "bad code")?,
            agent,
            text,
        })
    }
}

/// Contact header contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Contacts<'a> {
    /// `Contact: *` (remove all bindings).
    Star,
    /// Zero or more addresses.
    List(Vec<NameAddr<'a>>),
}

/// Iterator over the comma-separated items of every field with one name.
pub struct Items<'a> {
    msg: &'a Message,
    name: HeaderName,
    next_field: usize,
    current: Option<SplitItems<'a>>,
}

impl<'a> Iterator for Items<'a> {
    type Item = Result<&'a str, HeaderError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.current.as_mut().and_then(Iterator::next) {
                return Some(Ok(item));
            }
            self.current = None;
            let headers = self.msg.headers();
            let offset = headers[self.next_field..]
                .iter()
                .position(|h| h.name == self.name)?;
            let field = &headers[self.next_field + offset];
            self.next_field += offset + 1;
            match std::str::from_utf8(self.msg.value_bytes(field)) {
                Ok(s) => self.current = Some(SplitItems::new(s)),
                Err(_) => return Some(Err(HeaderError::NotUtf8(self.name))),
            }
        }
    }
}

fn parse_delta_seconds(s: &str) -> Result<u32, &'static str> {
    let t = s.trim_matches(|c: char| c.is_ascii_whitespace());
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not a number of seconds");
    }
    t.parse().map_err(|_| "number of seconds exceeds 2^32-1")
}

impl Message {
    /// Items of every field with this name, split at top-level commas.
    pub fn items(&self, name: HeaderName) -> Items<'_> {
        Items {
            msg: self,
            name,
            next_field: 0,
            current: None,
        }
    }

    /// The first value of a header as text.
    pub fn text(&self, name: HeaderName) -> Result<Option<&str>, HeaderError> {
        self.first_value(name)
            .map(|v| std::str::from_utf8(v).map_err(|_| HeaderError::NotUtf8(name)))
            .transpose()
    }

    fn required(&self, name: HeaderName) -> Result<&str, HeaderError> {
        self.text(name)?.ok_or(HeaderError::Missing(name))
    }

    fn typed<'a, T>(
        &'a self,
        name: HeaderName,
        parse: impl FnOnce(&'a str) -> Result<T, &'static str>,
    ) -> Result<Option<T>, HeaderError> {
        self.text(name)?
            .map(|s| parse(s).map_err(malformed(name)))
            .transpose()
    }

    fn typed_items<'a, T: 'a>(
        &'a self,
        name: HeaderName,
        parse: impl Fn(&'a str) -> Result<T, &'static str> + 'a,
    ) -> impl Iterator<Item = Result<T, HeaderError>> + 'a {
        self.items(name)
            .map(move |item| item.and_then(|s| parse(s).map_err(malformed(name))))
    }

    /// Every Via entry, topmost first.
    pub fn vias(&self) -> impl Iterator<Item = Result<Via<'_>, HeaderError>> + '_ {
        self.typed_items(HeaderName::Via, Via::parse)
    }

    /// The topmost Via, which identifies the transaction and the response path.
    pub fn top_via(&self) -> Result<Via<'_>, HeaderError> {
        self.vias()
            .next()
            .unwrap_or(Err(HeaderError::Missing(HeaderName::Via)))
    }

    /// The From header.
    pub fn from(&self) -> Result<NameAddr<'_>, HeaderError> {
        NameAddr::parse(self.required(HeaderName::From)?).map_err(malformed(HeaderName::From))
    }

    /// The To header.
    pub fn to(&self) -> Result<NameAddr<'_>, HeaderError> {
        NameAddr::parse(self.required(HeaderName::To)?).map_err(malformed(HeaderName::To))
    }

    /// The Call-ID.
    pub fn call_id(&self) -> Result<&str, HeaderError> {
        let id = self.required(HeaderName::CallId)?;
        if id.is_empty() || id.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(malformed(HeaderName::CallId)(
                "empty or contains whitespace",
            ));
        }
        Ok(id)
    }

    /// The CSeq header.
    pub fn cseq(&self) -> Result<CSeq<'_>, HeaderError> {
        CSeq::parse(self.required(HeaderName::CSeq)?).map_err(malformed(HeaderName::CSeq))
    }

    /// Max-Forwards, when present.
    pub fn max_forwards(&self) -> Result<Option<u8>, HeaderError> {
        self.typed(HeaderName::MaxForwards, |s| {
            let n = parse_delta_seconds(s).map_err(|_| "not a number")?;
            u8::try_from(n).map_err(|_| "larger than 255")
        })
    }

    /// Contact addresses, or `*`.
    pub fn contacts(&self) -> Result<Contacts<'_>, HeaderError> {
        let mut list = Vec::new();
        for item in self.items(HeaderName::Contact) {
            let item = item?;
            if item == "*" {
                if !list.is_empty() || self.items(HeaderName::Contact).count() != 1 {
                    return Err(malformed(HeaderName::Contact)("* must be the only contact"));
                }
                return Ok(Contacts::Star);
            }
            list.push(NameAddr::parse(item).map_err(malformed(HeaderName::Contact))?);
        }
        Ok(Contacts::List(list))
    }

    /// Route entries in order.
    pub fn routes(&self) -> impl Iterator<Item = Result<NameAddr<'_>, HeaderError>> + '_ {
        self.typed_items(HeaderName::Route, NameAddr::parse)
    }

    /// Record-Route entries in order.
    pub fn record_routes(&self) -> impl Iterator<Item = Result<NameAddr<'_>, HeaderError>> + '_ {
        self.typed_items(HeaderName::RecordRoute, NameAddr::parse)
    }

    /// Expires in seconds, when present.
    pub fn expires(&self) -> Result<Option<u32>, HeaderError> {
        self.typed(HeaderName::Expires, parse_delta_seconds)
    }

    /// Min-Expires in seconds, when present.
    pub fn min_expires(&self) -> Result<Option<u32>, HeaderError> {
        self.typed(HeaderName::MinExpires, parse_delta_seconds)
    }

    /// The Event package and its parameters (`id`).
    pub fn event(&self) -> Result<Option<TokenWithParams<'_>>, HeaderError> {
        self.typed(HeaderName::Event, TokenWithParams::parse)
    }

    /// Subscription-State with its parameters (`expires`, `reason`, `retry-after`).
    pub fn subscription_state(&self) -> Result<Option<TokenWithParams<'_>>, HeaderError> {
        self.typed(HeaderName::SubscriptionState, TokenWithParams::parse)
    }

    /// Accept entries in the order the sender listed them.
    pub fn accept(&self) -> impl Iterator<Item = Result<MediaType<'_>, HeaderError>> + '_ {
        self.typed_items(HeaderName::Accept, MediaType::parse)
    }

    /// Content-Type, when present.
    pub fn content_type(&self) -> Result<Option<MediaType<'_>>, HeaderError> {
        self.typed(HeaderName::ContentType, MediaType::parse)
    }

    /// Content-Length as declared (framing has already checked it).
    pub fn content_length(&self) -> Option<usize> {
        self.text(HeaderName::ContentLength)
            .ok()
            .flatten()?
            .parse()
            .ok()
    }

    /// Tokens of a list header: Allow, Supported, Require, Proxy-Require,
    /// Allow-Events, Unsupported.
    pub fn tokens(&self, name: HeaderName) -> impl Iterator<Item = Result<&str, HeaderError>> + '_ {
        self.typed_items(name, |s| {
            if s.bytes().all(is_token_char) {
                Ok(s)
            } else {
                Err("expected a list of tokens")
            }
        })
    }

    /// Whether a list header names this option (case-insensitive).
    pub fn lists_token(&self, name: HeaderName, token: &str) -> bool {
        self.tokens(name)
            .any(|t| t.is_ok_and(|t| t.eq_ignore_ascii_case(token)))
    }

    /// SIP-ETag or SIP-If-Match entity tag.
    pub fn entity_tag(&self, name: HeaderName) -> Result<Option<&str>, HeaderError> {
        self.typed(name, |s| {
            if !s.is_empty() && s.bytes().all(is_token_char) {
                Ok(s)
            } else {
                Err("entity tag must be a token")
            }
        })
    }

    /// Challenges or credentials: WWW-Authenticate, Authorization,
    /// Proxy-Authenticate, Proxy-Authorization (one per field).
    pub fn auth(
        &self,
        name: HeaderName,
    ) -> impl Iterator<Item = Result<AuthValue<'_>, HeaderError>> + '_ {
        self.values(name).map(move |v| {
            let s = std::str::from_utf8(v).map_err(|_| HeaderError::NotUtf8(name))?;
            AuthValue::parse(s).map_err(malformed(name))
        })
    }

    /// Retry-After, when present.
    pub fn retry_after(&self) -> Result<Option<RetryAfter<'_>>, HeaderError> {
        self.typed(HeaderName::RetryAfter, |s| {
            let mut c = Cursor::new(s);
            let digits = c.take_while(|b| b.is_ascii_digit());
            let seconds = parse_delta_seconds(digits)?;
            c.skip_lws();
            let comment = if c.eat(b'(') {
                let rest = c.rest();
                let close = rest.rfind(')').ok_or("unterminated comment")?;
                c.pos += close + 1;
                Some(&rest[..close])
            } else {
                None
            };
            let params = Params::parse(&mut c).map_err(|_| "malformed parameter")?;
            c.skip_lws();
            if !c.at_end() {
                return Err("unexpected text");
            }
            Ok(RetryAfter {
                seconds,
                comment,
                params,
            })
        })
    }

    /// Warning entries.
    pub fn warnings(&self) -> impl Iterator<Item = Result<Warning<'_>, HeaderError>> + '_ {
        self.typed_items(HeaderName::Warning, Warning::parse)
    }

    /// User-Agent, as written.
    pub fn user_agent(&self) -> Result<Option<&str>, HeaderError> {
        self.text(HeaderName::UserAgent)
    }

    /// Server, as written.
    pub fn server(&self) -> Result<Option<&str>, HeaderError> {
        self.text(HeaderName::Server)
    }
}

/// Checks an RFC 1123 date in GMT, the only form RFC 3261 §20.17 allows.
pub(crate) fn is_valid_sip_date(s: &str) -> bool {
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let parts: Vec<&str> = s.split_ascii_whitespace().collect();
    let digits = |p: &str, n: usize| p.len() == n && p.bytes().all(|b| b.is_ascii_digit());
    let time_ok = |t: &str| {
        let f: Vec<&str> = t.split(':').collect();
        f.len() == 3 && f.iter().all(|p| digits(p, 2))
    };
    matches!(parts.as_slice(), [day, dd, mon, yyyy, time, "GMT"]
        if day.strip_suffix(',').is_some_and(|d| DAYS.contains(&d))
            && digits(dd, 2)
            && MONTHS.contains(mon)
            && digits(yyyy, 4)
            && time_ok(time))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse(
            "\"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8",
        )
        .unwrap();
        assert_eq!(n.display_name, Some("J Rosenberg \\\\\\\""));
        assert_eq!(n.tag(), Some("98asjd8"));
        let n = NameAddr::parse("caller<sip:caller@example.com>;tag=323").unwrap();
        assert_eq!(n.display_name, Some("caller"));
        let n = NameAddr::parse("sip:+19725552222@gw1.example.net;unknownparam").unwrap();
        assert_eq!(n.uri.as_str(), "sip:+19725552222@gw1.example.net");
        assert!(n.params.has("unknownparam"));
        assert!(NameAddr::parse("\"Watson, Thomas\" < sip:t.watson@example.org >").is_err());
        assert!(NameAddr::parse("sip:user@example.com?Route=%3Csip:x%3E").is_err());
        assert!(NameAddr::parse("\"Mr. J. User <sip:j.user@example.com>").is_err());
    }

    #[test]
    fn via_with_folding_and_spaces() {
        let v = Via::parse("SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.host, Host::Ipv4("192.0.2.2".parse().unwrap()));
        assert_eq!(v.branch(), Some("390skdjuw"));
        assert!(!v.has_rfc3261_branch());
        let v = Via::parse("SIP/2.0/UDP [2001:db8::9:1]:6050;branch=z9hG4bKas3-111;rport").unwrap();
        assert_eq!(v.port, Some(6050));
        assert_eq!(v.rport(), Some(None));
        assert!(v.has_rfc3261_branch());
        assert!(Via::parse("SIP/2.0/UDP 192.0.2.15;;").is_err());
    }

    #[test]
    fn dates() {
        assert!(is_valid_sip_date("Sat, 13 Nov 2010 23:29:00 GMT"));
        assert!(!is_valid_sip_date("Fri, 01 Jan 2010 16:00:00 EST"));
    }
}
