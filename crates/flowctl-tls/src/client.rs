//! The client side: a tonic TLS configuration from PEM files.

use std::path::Path;

use rustls::sign::CertifiedKey;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::server::HANDSHAKE_TIMEOUT;
use crate::{pem, Error};

/// A tonic client TLS configuration.
///
/// - `ca`: trust only the CA certificates in this PEM file. With `None`, trust the platform's
///   root certificates (the system's CA bundle) instead.
/// - `identity`: a `(certificate, key)` pair of PEM files to present as the client
///   certificate, for servers that want one (mTLS).
///
/// The server name verified is the endpoint's host, so `https://127.0.0.1:PORT` verifies against
/// the certificate's IP SANs and `https://node-1.example:PORT` against its DNS SANs; override it
/// with `ClientTlsConfig::domain_name` when dialing an address that the certificate does not
/// name. The files are read and checked here, so a bad file is reported now rather than at the
/// first connection.
pub fn client_config(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientTlsConfig, Error> {
    let mut config = ClientTlsConfig::new().timeout(HANDSHAKE_TIMEOUT);
    config = match ca {
        Some(ca) => {
            let bytes = pem::read(ca)?;
            pem::roots_from(ca, &bytes)?;
            config.ca_certificate(Certificate::from_pem(bytes))
        }
        None => config.with_native_roots(),
    };
    if let Some((cert, key)) = identity {
        let cert_pem = pem::read(cert)?;
        let chain = pem::certs_from(cert, &cert_pem)?;
        let key_pem = pem::read(key)?;
        let key_der = pem::key_from(key, &key_pem)?;
        // The same check rustls makes when tonic builds the connector (the key is usable and
        // belongs to the certificate), done here so that the error names the files.
        let provider = rustls::crypto::ring::default_provider();
        CertifiedKey::from_der(chain, key_der, &provider).map_err(|source| Error::Identity {
            cert: cert.to_owned(),
            key: key.to_owned(),
            source,
        })?;
        config = config.identity(Identity::from_pem(cert_pem, key_pem));
    }
    Ok(config)
}
