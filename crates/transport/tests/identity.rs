//! RFC 5922 identity extraction over certificates generated in the test.

use porchlight_transport::pki::{AltName, CertificateAuthority};
use porchlight_transport::{identity_from_certificate, IdentityError, IdentitySource};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

fn der(chain_pem: &str) -> Vec<u8> {
    CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

#[test]
fn sip_uri_san_wins_over_dns_names() {
    let ca = CertificateAuthority::new("test CA").unwrap();
    let leaf = ca
        .issue(
            "edge.fabrikam.com",
            &[
                AltName::Dns("edge.fabrikam.com"),
                AltName::Uri("sip:Fabrikam.com"),
            ],
        )
        .unwrap();
    let id = identity_from_certificate(&der(&leaf.chain_pem)).unwrap();
    assert_eq!(id.source, IdentitySource::SanUri);
    assert_eq!(id.domains, ["fabrikam.com"]);
    assert!(id.covers("FABRIKAM.COM"));
    assert!(
        !id.covers("edge.fabrikam.com"),
        "dNSName is ignored when a SIP URI is present"
    );
}

#[test]
fn dns_names_when_no_sip_uri_and_cn_only_without_san() {
    let ca = CertificateAuthority::new("test CA").unwrap();
    let leaf = ca
        .issue(
            "ignored.example",
            &[
                AltName::Dns("sip.contoso.com"),
                AltName::Uri("https://contoso.com/"),
            ],
        )
        .unwrap();
    let id = identity_from_certificate(&der(&leaf.chain_pem)).unwrap();
    assert_eq!(
        (id.source, id.domains.clone()),
        (IdentitySource::SanDns, vec!["sip.contoso.com".to_owned()])
    );
    assert!(
        !id.covers("ignored.example"),
        "CN is not used when a SAN exists"
    );

    let leaf = ca.issue("provider.example", &[]).unwrap();
    let id = identity_from_certificate(&der(&leaf.chain_pem)).unwrap();
    assert_eq!(
        (id.source, id.domains),
        (
            IdentitySource::CommonName,
            vec!["provider.example".to_owned()]
        )
    );
}

#[test]
fn wildcards_are_never_an_identity() {
    let ca = CertificateAuthority::new("test CA").unwrap();
    let leaf = ca
        .issue("*.example.net", &[AltName::Dns("*.example.net")])
        .unwrap();
    assert_eq!(
        identity_from_certificate(&der(&leaf.chain_pem)),
        Err(IdentityError::NoIdentity)
    );
    assert_eq!(
        identity_from_certificate(b"not a certificate"),
        Err(IdentityError::Unparseable)
    );
}
