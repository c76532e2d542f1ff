//! rustls configurations for both directions of a federation link: the
//! listener asks for (and by default requires) a client certificate from a
//! trusted CA, and outbound connections present ours and verify the server
//! name.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Why TLS could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM input held nothing usable.
    #[error("{what}: {reason}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// rustls refused the combination.
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built (e.g. no trust roots).
    #[error("client certificate verification: {0}")]
    Verifier(String),
}

/// Whether inbound TLS peers must present a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Mutual TLS: connections without a trusted client certificate fail.
    Required,
    /// Certificates are verified when offered; peers without one have no identity.
    Optional,
}

/// Both TLS configurations a node needs.
#[derive(Clone)]
pub struct TlsSettings {
    /// For the listener.
    pub server: Arc<ServerConfig>,
    /// For outbound connections.
    pub client: Arc<ClientConfig>,
    /// When our certificate (the chain's first) expires, in Unix seconds:
    /// every partner refuses us after that.
    pub not_after: i64,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsSettings {
    /// Builds both configurations from PEM: our chain and key, and the CAs
    /// whose certificates we accept from peers.
    pub fn from_pem(
        chain_pem: &[u8],
        key_pem: &[u8],
        trusted_ca_pem: &[u8],
        client_auth: ClientAuth,
    ) -> Result<TlsSettings, TlsError> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Pem {
                what: "certificate chain",
                reason: e.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::Pem {
                what: "certificate chain",
                reason: "no CERTIFICATE block".into(),
            });
        }
        let not_after =
            porchlight_link::certificate_not_after(&chain[0]).map_err(|e| TlsError::Pem {
                what: "certificate chain",
                reason: e.to_string(),
            })?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Pem {
            what: "private key",
            reason: e.to_string(),
        })?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_slice_iter(trusted_ca_pem) {
            let ca = ca.map_err(|e| TlsError::Pem {
                what: "trusted CAs",
                reason: e.to_string(),
            })?;
            roots.add(ca)?;
        }
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
        let verifier = match client_auth {
            ClientAuth::Required => verifier,
            ClientAuth::Optional => verifier.allow_unauthenticated(),
        }
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())?;
        let client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        Ok(TlsSettings {
            server: Arc::new(server),
            client: Arc::new(client),
            not_after,
        })
    }
}
