//! Mutual TLS between two transports on loopback, with certificates issued
//! in the test: identity reaches the upper layer, verified connections are
//! reused toward the peer's domain, and unauthenticated peers are refused.

use std::time::Duration;

use bytes::Bytes;
use porchlight_sip::MessageWriter;
use porchlight_transport::pki::{AltName, CertificateAuthority};
use porchlight_transport::{
    ClientAuth, IdentitySource, Protocol, Received, Target, TlsSettings, Transport, TransportConfig,
};
use tokio::sync::mpsc::Receiver;

fn settings(
    ca: &CertificateAuthority,
    name: &str,
    alt: &[AltName<'_>],
    trusted: &CertificateAuthority,
) -> TlsSettings {
    let leaf = ca.issue(name, alt).unwrap();
    TlsSettings::from_pem(
        leaf.chain_pem.as_bytes(),
        leaf.key_pem.as_bytes(),
        trusted.cert_pem.as_bytes(),
        ClientAuth::Required,
    )
    .unwrap()
}

async fn node(tls: TlsSettings, listen: bool) -> (Transport, Receiver<Received>) {
    Transport::bind(TransportConfig {
        tls: if listen {
            vec!["127.0.0.1:0".parse().unwrap()]
        } else {
            Vec::new()
        },
        tls_settings: Some(tls),
        ..TransportConfig::default()
    })
    .await
    .unwrap()
}

fn options(from_domain: &str) -> Bytes {
    let mut w = MessageWriter::request("OPTIONS", "sip:contoso.com");
    w.header("Via", "SIP/2.0/TLS edge.invalid;branch=z9hG4bK-tls")
        .header("From", format!("<sip:alice@{from_domain}>;tag=1"))
        .header("To", "<sip:contoso.com>")
        .header("Call-ID", "tls-test")
        .header("CSeq", "1 OPTIONS");
    w.finish(b"")
}

async fn next(rx: &mut Receiver<Received>) -> Option<Received> {
    tokio::time::timeout(Duration::from_secs(3), rx.recv())
        .await
        .ok()
        .flatten()
}

#[tokio::test]
async fn identity_reaches_upper_layer_and_verified_connection_is_reused() {
    let ca = CertificateAuthority::new("federation CA").unwrap();
    let contoso = settings(
        &ca,
        "sip.contoso.com",
        &[
            AltName::Dns("sip.contoso.com"),
            AltName::Uri("sip:contoso.com"),
        ],
        &ca,
    );
    let fabrikam = settings(
        &ca,
        "edge.fabrikam.com",
        &[
            AltName::Dns("edge.fabrikam.com"),
            AltName::Uri("sip:fabrikam.com"),
        ],
        &ca,
    );
    let (server, mut server_rx) = node(contoso, true).await;
    let (client, mut client_rx) = node(fabrikam, false).await;
    let addr = server.local_addr(Protocol::Tls).unwrap();

    let to_server = Target::Address {
        protocol: Protocol::Tls,
        addr,
        domain: Some("sip.contoso.com".into()),
    };
    client
        .send(&to_server, options("fabrikam.com"))
        .await
        .unwrap();
    let Some(Received::Message(msg, origin)) = next(&mut server_rx).await else {
        panic!("server receives the request")
    };
    assert_eq!(msg.method(), Some("OPTIONS"));
    let peer = origin.peer.expect("mutual TLS identity");
    assert_eq!(peer.source, IdentitySource::SanUri);
    assert!(peer.covers("fabrikam.com"));
    assert!(!peer.covers("edge.fabrikam.com"));

    // A request toward fabrikam.com reuses the verified inbound connection
    // (RFC 5923): the address given is unreachable and never dialled.
    let unreachable = "127.0.0.1:9".parse().unwrap();
    let back = Target::Address {
        protocol: Protocol::Tls,
        addr: unreachable,
        domain: Some("fabrikam.com".into()),
    };
    server.send(&back, options("contoso.com")).await.unwrap();
    let Some(Received::Message(msg, origin)) = next(&mut client_rx).await else {
        panic!("client receives the request on the same connection")
    };
    assert_eq!(msg.method(), Some("OPTIONS"));
    assert_eq!(origin.source, addr);
    assert!(origin.peer.unwrap().covers("contoso.com"));
    assert_eq!(server.connection_count(), 1);
    assert_eq!(client.connection_count(), 1);
}

#[tokio::test]
async fn peers_without_a_trusted_certificate_are_refused() {
    let ca = CertificateAuthority::new("federation CA").unwrap();
    let stranger_ca = CertificateAuthority::new("stranger CA").unwrap();
    let contoso = settings(
        &ca,
        "sip.contoso.com",
        &[AltName::Dns("sip.contoso.com")],
        &ca,
    );
    let (server, mut server_rx) = node(contoso, true).await;
    let addr = server.local_addr(Protocol::Tls).unwrap();
    let target = Target::Address {
        protocol: Protocol::Tls,
        addr,
        domain: Some("sip.contoso.com".into()),
    };

    // Signed by a CA the server does not trust (but trusting the server's CA).
    let stranger = settings(
        &stranger_ca,
        "evil.example",
        &[AltName::Dns("evil.example")],
        &ca,
    );
    let (client, _rx) = node(stranger, false).await;
    let _ = client.send(&target, options("evil.example")).await;
    assert!(
        next(&mut server_rx).await.is_none(),
        "untrusted client certificate refused"
    );

    // No client certificate at all.
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        use rustls::pki_types::pem::PemObject;
        r.add(rustls::pki_types::CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
            .unwrap();
        r
    };
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("sip.contoso.com").unwrap();
    let result = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await;
    if let Ok(mut tls) = result {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = tls.write_all(&options("anonymous.example")).await;
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(3), tls.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "server ends the session"
        );
    }
    assert!(
        next(&mut server_rx).await.is_none(),
        "nothing from an unauthenticated peer reaches the core"
    );
}
