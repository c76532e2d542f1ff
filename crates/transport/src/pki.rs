//! Certificate generation: the throw-away certificate a node uses when no
//! TLS files are configured, and the certificates tests issue to model
//! federation partners.

pub use rcgen::Error;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate authority that can issue leaf certificates.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub cert_pem: String,
}

/// A leaf certificate and its key, PEM.
pub struct IssuedCertificate {
    /// Leaf certificate followed by nothing else (the CA is the trust root).
    pub chain_pem: String,
    /// PKCS#8 private key.
    pub key_pem: String,
}

/// A subject alternative name to put in a leaf certificate.
pub enum AltName<'a> {
    /// dNSName.
    Dns(&'a str),
    /// URI, e.g. `sip:contoso.com` (RFC 5922).
    Uri(&'a str),
}

impl CertificateAuthority {
    /// A new self-signed CA.
    pub fn new(common_name: &str) -> Result<CertificateAuthority, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        Ok(CertificateAuthority {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Issues a leaf usable for both TLS server and client authentication.
    /// With no alt names, the identity is only in the subject CN.
    pub fn issue(
        &self,
        common_name: &str,
        alt_names: &[AltName<'_>],
    ) -> Result<IssuedCertificate, rcgen::Error> {
        self.issue_valid_for(common_name, alt_names, None)
    }

    /// [`issue`](Self::issue) with the leaf expiring `valid_for` from now
    /// (None: far in the future), so a certificate about to expire can be
    /// modelled.
    pub fn issue_valid_for(
        &self,
        common_name: &str,
        alt_names: &[AltName<'_>],
        valid_for: Option<std::time::Duration>,
    ) -> Result<IssuedCertificate, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        if let Some(valid_for) = valid_for {
            params.not_after = time::OffsetDateTime::now_utc() + valid_for;
        }
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        for name in alt_names {
            params.subject_alt_names.push(match name {
                AltName::Dns(d) => SanType::DnsName((*d).try_into()?),
                AltName::Uri(u) => SanType::URI((*u).try_into()?),
            });
        }
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCertificate {
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
