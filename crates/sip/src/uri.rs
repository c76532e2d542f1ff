//! URIs: `sip:` and `sips:` are taken apart; every other scheme (`tel:`,
//! `http:`, …) is kept opaque, as RFC 3261 asks of elements that do not
//! understand it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use crate::cursor::Cursor;

/// Why a URI could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed URI: {0}")]
pub struct UriError(pub &'static str);

/// The host part of a SIP URI or Via.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Host<'a> {
    /// A domain name, as written (compare case-insensitively).
    Name(&'a str),
    /// A dotted IPv4 address.
    Ipv4(Ipv4Addr),
    /// An IPv6 reference without its brackets, kept as text because RFC
    /// 5118 §4.10 asks us to accept forms the standard library refuses.
    Ipv6(&'a str),
}

impl Host<'_> {
    /// The address, when the host is a literal one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::Name(_) => None,
            Host::Ipv4(a) => Some(IpAddr::V4(*a)),
            Host::Ipv6(s) => s.parse().ok().map(IpAddr::V6),
        }
    }

    /// Whether two hosts name the same thing (case-insensitive names, equal addresses).
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Host::Name(n) => n.eq_ignore_ascii_case(name.trim_end_matches('.')),
            _ => self.ip().is_some_and(|ip| {
                name.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<IpAddr>()
                    .is_ok_and(|other| other == ip)
            }),
        }
    }
}

impl fmt::Display for Host<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ipv4(a) => write!(f, "{a}"),
            Host::Ipv6(s) => write!(f, "[{s}]"),
        }
    }
}

fn is_host_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_')
}

/// Reads a host at the cursor: `[v6]`, dotted IPv4, or a domain name.
pub(crate) fn parse_host<'a>(c: &mut Cursor<'a>) -> Result<Host<'a>, UriError> {
    if c.eat(b'[') {
        let v6 = c.take_while(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !c.eat(b']') || !v6.contains(':') {
            return Err(UriError("unterminated or empty IPv6 reference"));
        }
        return Ok(Host::Ipv6(v6));
    }
    let name = c.take_while(is_host_char);
    if name.is_empty() {
        return Err(UriError("missing host"));
    }
    Ok(match name.parse::<Ipv4Addr>() {
        Ok(a) => Host::Ipv4(a),
        Err(_) => Host::Name(name),
    })
}

/// Reads `[":" port]` at the cursor.
pub(crate) fn parse_port(c: &mut Cursor<'_>, allow_lws: bool) -> Result<Option<u16>, UriError> {
    let found = if allow_lws {
        c.eat_sep(b':')
    } else {
        c.eat(b':')
    };
    if !found {
        return Ok(None);
    }
    let digits = c.take_while(|b| b.is_ascii_digit());
    digits
        .parse::<u16>()
        .map(Some)
        .map_err(|_| UriError("port is not a number from 0 to 65535"))
}

/// A SIP or SIPS URI, taken apart without copying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SipUri<'a> {
    /// True for `sips:`.
    pub secure: bool,
    /// The user part, still %-escaped.
    pub user: Option<&'a str>,
    /// The password part, still %-escaped (deprecated but legal).
    pub password: Option<&'a str>,
    /// The host.
    pub host: Host<'a>,
    /// The port, when written.
    pub port: Option<u16>,
    params: &'a str,
    headers: Option<&'a str>,
}

impl<'a> SipUri<'a> {
    /// URI parameters in order; `Some(None)` for a flag like `lr`.
    pub fn params(&self) -> impl Iterator<Item = (&'a str, Option<&'a str>)> {
        self.params
            .split(';')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (p, None),
            })
    }

    /// A URI parameter by (case-insensitive) name.
    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        self.params()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The `?headers` part, still escaped. Never legal in a Request-URI.
    pub fn headers(&self) -> Option<&'a str> {
        self.headers
    }
}

/// Any URI in a SIP message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uri<'a> {
    /// `sip:` or `sips:`.
    Sip(SipUri<'a>, &'a str),
    /// Any other scheme, kept opaque.
    Other {
        /// The scheme, e.g. `tel`.
        scheme: &'a str,
        /// The whole URI as written.
        raw: &'a str,
    },
}

impl<'a> Uri<'a> {
    /// Parses a URI with no surrounding whitespace.
    pub fn parse(raw: &'a str) -> Result<Uri<'a>, UriError> {
        let Some((scheme, rest)) = raw.split_once(':') else {
            return Err(UriError("no scheme"));
        };
        let valid_scheme = scheme
            .as_bytes()
            .first()
            .is_some_and(u8::is_ascii_alphabetic)
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        if !valid_scheme {
            return Err(UriError("invalid scheme"));
        }
        if rest.is_empty() || raw.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(UriError("empty, or contains unescaped whitespace"));
        }
        let secure = if scheme.eq_ignore_ascii_case("sip") {
            false
        } else if scheme.eq_ignore_ascii_case("sips") {
            true
        } else {
            return Ok(Uri::Other { scheme, raw });
        };
        Ok(Uri::Sip(parse_sip(rest, secure)?, raw))
    }

    /// The URI exactly as written.
    pub fn as_str(&self) -> &'a str {
        match self {
            Uri::Sip(_, raw) => raw,
            Uri::Other { raw, .. } => raw,
        }
    }

    /// The SIP view, when the scheme is `sip` or `sips`.
    pub fn sip(&self) -> Option<&SipUri<'a>> {
        match self {
            Uri::Sip(u, _) => Some(u),
            Uri::Other { .. } => None,
        }
    }
}

impl fmt::Display for Uri<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn parse_sip(rest: &str, secure: bool) -> Result<SipUri<'_>, UriError> {
    // The user part may hold ';', '?', '/' and ',' (RFC 4475 §3.1.1.2 and
    // §3.1.1.9) but never an unescaped '@', so the first '@' ends it.
    let (userinfo, hostpart) = match memchr::memchr(b'@', rest.as_bytes()) {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let (user, password) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((user, pw)) => (Some(user), Some(pw)),
            None => (Some(u), None),
        },
        None => (None, None),
    };
    if user.is_some_and(str::is_empty) {
        return Err(UriError("empty user part"));
    }
    let mut c = Cursor::new(hostpart);
    let host = parse_host(&mut c)?;
    let port = parse_port(&mut c, false)?;
    let tail = c.rest();
    let (params, headers) = match tail.split_once('?') {
        Some((p, h)) => (p, Some(h)),
        None => (tail, None),
    };
    if !params.is_empty() && !params.starts_with(';') {
        return Err(UriError("unexpected characters after host"));
    }
    if params.split(';').skip(1).any(str::is_empty) {
        return Err(UriError("empty URI parameter"));
    }
    Ok(SipUri {
        secure,
        user,
        password,
        host,
        port,
        params,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_sip_uris_apart() {
        let u =
            Uri::parse("sip:user;par=u%40example.net@example.com:5070;lr;transport=tcp?subject=x")
                .unwrap();
        let s = u.sip().unwrap();
        assert_eq!(s.user, Some("user;par=u%40example.net"));
        assert_eq!(s.host, Host::Name("example.com"));
        assert_eq!(s.port, Some(5070));
        assert_eq!(s.param("LR"), Some(None));
        assert_eq!(s.param("transport"), Some(Some("tcp")));
        assert_eq!(s.headers(), Some("subject=x"));
    }

    #[test]
    fn ipv6_references_and_ports() {
        let u = Uri::parse("sip:[2001:db8::10:5070]").unwrap();
        assert_eq!(u.sip().unwrap().host, Host::Ipv6("2001:db8::10:5070"));
        assert_eq!(u.sip().unwrap().port, None);
        let u = Uri::parse("sip:[2001:db8::10]:5070").unwrap();
        assert_eq!(u.sip().unwrap().port, Some(5070));
        assert!(Uri::parse("sip:2001:db8::10").is_err());
    }

    #[test]
    fn other_schemes_stay_opaque() {
        let u = Uri::parse("soap.beep://192.0.2.103:3002").unwrap();
        assert!(matches!(
            u,
            Uri::Other {
                scheme: "soap.beep",
                ..
            }
        ));
        assert!(Uri::parse("nodelimiter").is_err());
        assert!(Uri::parse("sip:a b@example.com").is_err());
    }
}
