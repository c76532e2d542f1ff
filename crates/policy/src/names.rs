//! The names an admin writes into the policy — partner domains and pinned
//! proxies — checked and put in one canonical form, so the lists compare
//! exactly what the wire compares (RFC 5922 §7.2: case-insensitive, no
//! trailing dot, internationalised names as A-labels) and nothing that is
//! not a name (a URI, an address, a wildcard, a path) can become an entry.

use std::fmt;
use std::net::IpAddr;

/// Why a text is not a usable name; the message says what to write instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Not a DNS domain name.
    #[error("{text:?} is not a domain name: {why}; write a DNS name like fabrikam.com")]
    NotADomain {
        /// What was written.
        text: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// Not a way to reach a proxy.
    #[error("{text:?} is not a proxy: {why}; write a host (sip.fabrikam.com), host:port (sip.fabrikam.com:5061), an address (192.0.2.7 or 192.0.2.7:5061, [2001:db8::7]:5061) or a sip:/sips: URI")]
    NotAProxy {
        /// What was written.
        text: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

const LONGEST_NAME: usize = 253;
const LONGEST_LABEL: usize = 63;

/// A partner or provider domain in canonical form: lower case, no
/// trailing dot, A-labels for internationalised names. Refuses anything
/// but a DNS name of at least two labels — addresses, URIs, user parts,
/// wildcards, whitespace and paths say what to write instead.
pub fn domain_name(text: &str) -> Result<String, NameError> {
    let refuse = |why| NameError::NotADomain {
        text: text.to_owned(),
        why,
    };
    host_name(text).map_err(refuse).and_then(|name| {
        if !name.contains('.') {
            Err(refuse("a federated domain has at least two labels"))
        } else {
            Ok(name)
        }
    })
}

/// A host name in canonical form, one label allowed (a proxy on the
/// inside may be `edge`); the reason it is not one otherwise.
fn host_name(text: &str) -> Result<String, &'static str> {
    if text.trim() != text || text.chars().any(char::is_whitespace) {
        return Err("it contains white space");
    }
    if text.is_empty() || text == "." {
        return Err("it is empty");
    }
    if text.contains("://") || text.starts_with("sip:") || text.starts_with("sips:") {
        return Err("it is a URI, not a name");
    }
    if text.contains('@') {
        return Err("it names a user; a domain is what follows the @");
    }
    if text.contains('*') {
        return Err("wildcards are not names (a blocked domain covers its subdomains already)");
    }
    if text.contains('/') || text.contains('\\') {
        return Err("it contains a path separator");
    }
    if text.parse::<IpAddr>().is_ok() || text.starts_with('[') {
        return Err("it is an address, and federation is between named domains");
    }
    let name = text.strip_suffix('.').unwrap_or(text);
    let name = if name.is_ascii() {
        name.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii_strict(name)
            .map_err(|_| "it is not a valid internationalised name")?
    };
    if name.len() > LONGEST_NAME {
        return Err("it is longer than 253 characters");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("it has an empty label (two dots in a row, or a leading dot)");
        }
        if label.len() > LONGEST_LABEL {
            return Err("a label is longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err("labels hold only letters, digits and hyphens");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label starts or ends with a hyphen");
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("it is an address, and federation is between named domains");
    }
    Ok(name)
}

/// Where a pinned proxy is: a host name or address, and a port when one
/// was written (5061, SIP over TLS, otherwise). Written any way a SIP
/// admin writes one: `host`, `host:port`, `192.0.2.7`, `192.0.2.7:5061`,
/// `[2001:db8::7]:5061`, or a `sip:`/`sips:` URI (its user part and
/// parameters are ignored: federation is always mutual TLS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyAddress {
    /// A canonical host name, or an address literal.
    pub host: ProxyHost,
    /// The port, when written.
    pub port: Option<u16>,
}

/// The host part of a [`ProxyAddress`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProxyHost {
    /// A host name, canonical, to be resolved (A/AAAA).
    Name(String),
    /// An address: no lookup.
    Ip(IpAddr),
}

impl ProxyAddress {
    /// Parses a pinned proxy as an admin wrote it.
    pub fn parse(text: &str) -> Result<ProxyAddress, NameError> {
        let refuse = |why| NameError::NotAProxy {
            text: text.to_owned(),
            why,
        };
        let mut rest = text;
        for scheme in ["sips:", "sip:"] {
            if let Some(r) = rest.strip_prefix(scheme) {
                rest = r;
            }
        }
        if rest.len() != text.len() {
            // A URI: drop the user part, parameters and headers.
            rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            rest = rest.split([';', '?']).next().unwrap_or_default();
        }
        if rest.is_empty() {
            return Err(refuse("it is empty"));
        }
        if let Ok(ip) = rest.parse::<IpAddr>() {
            return Ok(ProxyAddress {
                host: ProxyHost::Ip(ip),
                port: None,
            });
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (addr, after) = v6.split_once(']').ok_or_else(|| refuse("a [ without ]"))?;
            let port = match after {
                "" => None,
                p => Some(
                    port_of(p.strip_prefix(':').ok_or_else(|| refuse("text after ]"))?)
                        .ok_or_else(|| refuse("the port is not a number from 1 to 65535"))?,
                ),
            };
            let ip = addr
                .parse::<IpAddr>()
                .map_err(|_| refuse("the address in [ ] is not IPv6"))?;
            return Ok(ProxyAddress {
                host: ProxyHost::Ip(ip),
                port,
            });
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (
                    host,
                    Some(
                        port_of(port)
                            .ok_or_else(|| refuse("the port is not a number from 1 to 65535"))?,
                    ),
                ),
                None => (rest, None),
            }
        };
        let host = match host.parse::<IpAddr>() {
            Ok(ip) => ProxyHost::Ip(ip),
            Err(_) => ProxyHost::Name(host_name(host).map_err(refuse)?),
        };
        Ok(ProxyAddress { host, port })
    }

    /// The host's text: the name, or the address.
    pub fn host_text(&self) -> String {
        match &self.host {
            ProxyHost::Name(name) => name.clone(),
            ProxyHost::Ip(ip) => ip.to_string(),
        }
    }
}

fn port_of(text: &str) -> Option<u16> {
    text.parse::<u16>().ok().filter(|&p| p > 0)
}

impl fmt::Display for ProxyAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.host, self.port) {
            (ProxyHost::Ip(IpAddr::V6(ip)), Some(port)) => write!(f, "[{ip}]:{port}"),
            (_, Some(port)) => write!(f, "{}:{port}", self.host_text()),
            (_, None) => f.write_str(&self.host_text()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_dns_names_in_one_form() {
        for (written, canonical) in [
            ("fabrikam.com", "fabrikam.com"),
            ("FABRIKAM.COM", "fabrikam.com"),
            ("fabrikam.com.", "fabrikam.com"),
            ("sub-1.fabrikam.co.uk", "sub-1.fabrikam.co.uk"),
            ("bücher.example", "xn--bcher-kva.example"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ] {
            assert_eq!(domain_name(written).as_deref(), Ok(canonical), "{written}");
        }
        for (written, says) in [
            ("", "empty"),
            ("not_a..domain", "letters, digits and hyphens"),
            ("not.a..domain", "empty label"),
            ("https://fabrikam.com", "URI"),
            ("sip:fabrikam.com", "URI"),
            ("a@b.com", "user"),
            ("fab rikam.com", "white space"),
            ("fabrikam.com\n", "white space"),
            ("127.0.0.1", "address"),
            ("::1", "address"),
            ("[::1]", "address"),
            ("../../etc/passwd", "path"),
            ("*", "wildcard"),
            ("*.fabrikam.com", "wildcard"),
            ("localhost", "two labels"),
            ("fab_rikam.com", "letters, digits and hyphens"),
            ("-fabrikam.com", "hyphen"),
        ] {
            let error = domain_name(written).unwrap_err().to_string();
            assert!(error.contains(says), "{written:?}: {error}");
            assert!(error.contains("write a DNS name like"), "{error}");
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(domain_name(&long).is_err());
    }

    #[test]
    fn a_pinned_proxy_is_written_any_way_a_sip_admin_writes_one() {
        let name = |n: &str, port| ProxyAddress {
            host: ProxyHost::Name(n.into()),
            port,
        };
        let ip = |a: &str, port| ProxyAddress {
            host: ProxyHost::Ip(a.parse().unwrap()),
            port,
        };
        for (written, parsed) in [
            ("sip.fabrikam.com", name("sip.fabrikam.com", None)),
            ("SIP.Fabrikam.com.", name("sip.fabrikam.com", None)),
            (
                "sip.fabrikam.com:16071",
                name("sip.fabrikam.com", Some(16071)),
            ),
            ("edge", name("edge", None)),
            ("127.0.0.1", ip("127.0.0.1", None)),
            ("127.0.0.1:5061", ip("127.0.0.1", Some(5061))),
            ("2001:db8::7", ip("2001:db8::7", None)),
            ("[2001:db8::7]", ip("2001:db8::7", None)),
            ("[2001:db8::7]:5062", ip("2001:db8::7", Some(5062))),
            (
                "sip:sip.fabrikam.com:5071;transport=tls",
                name("sip.fabrikam.com", Some(5071)),
            ),
            ("sips:edge@10.0.0.9", ip("10.0.0.9", None)),
        ] {
            assert_eq!(
                ProxyAddress::parse(written).as_ref(),
                Ok(&parsed),
                "{written}"
            );
        }
        assert_eq!(
            ip("2001:db8::7", Some(5062)).to_string(),
            "[2001:db8::7]:5062"
        );
        assert_eq!(
            name("sip.fabrikam.com", Some(16071)).to_string(),
            "sip.fabrikam.com:16071"
        );
        for written in [
            "",
            "sip:",
            "host:0",
            "host:99999",
            "host:port",
            "[::1",
            "a b",
            "https://x.com",
        ] {
            let error = ProxyAddress::parse(written).unwrap_err().to_string();
            assert!(error.contains("write a host"), "{written:?}: {error}");
        }
    }
}
