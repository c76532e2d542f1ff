//! A TLS peer's SIP domain identity, read from its certificate as RFC 5922
//! §7.1 says: SAN URIs of scheme `sip` first, else SAN dNSNames, and the
//! subject CN only when there is no SAN at all. Wildcards never count.

use x509_parser::prelude::*;

/// Where in the certificate the identity was found; the admin sees this
/// when a federation decision is explained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentitySource {
    /// subjectAltName URI `sip:domain`.
    SanUri,
    /// subjectAltName dNSName.
    SanDns,
    /// Subject common name (no subjectAltName present).
    CommonName,
}

/// The SIP domains a verified peer certificate speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Lower-cased domains, in certificate order.
    pub domains: Vec<String>,
    /// Which certificate field they came from.
    pub source: IdentitySource,
    /// When the certificate expires (Unix seconds): a partner's lapsing
    /// certificate ends the federation, so the admin is told ahead.
    pub not_after: i64,
}

impl PeerIdentity {
    /// Whether the peer speaks for this domain (exact, case-insensitive).
    pub fn covers(&self, domain: &str) -> bool {
        let domain = domain.trim_end_matches('.');
        self.domains.iter().any(|d| d.eq_ignore_ascii_case(domain))
    }
}

/// Why no identity could be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The certificate is not valid DER X.509.
    #[error("certificate could not be parsed")]
    Unparseable,
    /// Nothing usable: no SIP URI, dNSName or CN without wildcards.
    #[error("certificate names no SIP domain (wildcards are not accepted)")]
    NoIdentity,
}

fn usable(name: &str) -> Option<String> {
    let name = name.trim_end_matches('.');
    (!name.is_empty() && !name.contains('*')).then(|| name.to_ascii_lowercase())
}

/// When a certificate (DER) expires, in Unix seconds.
pub fn certificate_not_after(der: &[u8]) -> Result<i64, IdentityError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Unparseable)?;
    Ok(cert.validity().not_after.timestamp())
}

/// Reads the identity of an end-entity certificate (DER).
pub fn identity_from_certificate(der: &[u8]) -> Result<PeerIdentity, IdentityError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| IdentityError::Unparseable)?;
    let not_after = cert.validity().not_after.timestamp();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        let (mut uris, mut dns) = (Vec::new(), Vec::new());
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) => {
                    let Some(rest) = uri
                        .get(..4)
                        .filter(|s| s.eq_ignore_ascii_case("sip:"))
                        .map(|_| &uri[4..])
                    else {
                        continue;
                    };
                    // sip:domain — no user part, no port or parameters.
                    if !rest.contains('@') {
                        let host = rest.split([';', '?']).next().unwrap_or("");
                        uris.extend(usable(host));
                    }
                }
                GeneralName::DNSName(d) => dns.extend(usable(d)),
                _ => {}
            }
        }
        return match (uris.is_empty(), dns.is_empty()) {
            (false, _) => Ok(PeerIdentity {
                domains: uris,
                source: IdentitySource::SanUri,
                not_after,
            }),
            (true, false) => Ok(PeerIdentity {
                domains: dns,
                source: IdentitySource::SanDns,
                not_after,
            }),
            (true, true) => Err(IdentityError::NoIdentity),
        };
    }
    let cn = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .filter_map(usable)
        .collect::<Vec<_>>();
    if cn.is_empty() {
        return Err(IdentityError::NoIdentity);
    }
    Ok(PeerIdentity {
        domains: cn,
        source: IdentitySource::CommonName,
        not_after,
    })
}
