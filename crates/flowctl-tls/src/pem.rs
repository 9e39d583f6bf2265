//! Reading PEM files into rustls types, with errors that name the file.

use std::path::Path;

use rustls::RootCertStore;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in the PEM file at `path`; at least one.
pub(crate) fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let bytes = read(path)?;
    certs_from(path, &bytes)
}

pub(crate) fn certs_from(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, "certificate", e))?;
    if certs.is_empty() {
        return Err(pem_error(path, "certificate", pem::Error::NoItemsFound));
    }
    Ok(certs)
}

/// The CA certificates in the PEM bytes `bytes` read from `path`, as trust anchors; at least one,
/// and every one usable (a certificate that is not could never verify a peer).
pub(crate) fn roots_from(path: &Path, bytes: &[u8]) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from(path, bytes)? {
        roots.add(cert).map_err(|e| Error::Pem {
            path: path.to_owned(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// The first private key in the PEM file at `path`.
pub(crate) fn key(path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let bytes = read(path)?;
    key_from(path, &bytes)
}

pub(crate) fn key_from(path: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, Error> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| pem_error(path, "private key", e))
}

fn pem_error(path: &Path, what: &str, error: pem::Error) -> Error {
    let reason = match error {
        pem::Error::NoItemsFound => format!("no PEM {what} found"),
        other => format!("invalid PEM {what}: {other}"),
    };
    Error::Pem {
        path: path.to_owned(),
        reason,
    }
}
