//! Who a peer is, read from the names in its (already verified) certificate.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use x509_parser::extensions::GeneralName;

/// The names in a certificate's subject and subject alternative names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertIdentity {
    /// The subject's first common name (CN), if it has one that is a string.
    pub common_name: Option<String>,
    /// The DNS names among the subject alternative names, in certificate order.
    pub dns_names: Vec<String>,
    /// The IP addresses among the subject alternative names, in certificate order.
    pub ip_addresses: Vec<IpAddr>,
}

/// The names in the DER certificate `der`, or `None` if it is not a parsable X.509 certificate.
///
/// This does not verify anything: pass it only a certificate that TLS has verified, such as
/// the ones [`request_identity`] reads.
pub fn cert_identity(der: &[u8]) -> Option<CertIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let mut identity = CertIdentity {
        common_name,
        ..CertIdentity::default()
    };
    // A malformed or duplicated SAN extension would have failed verification; reading it as
    // "no SANs" here is only a fallback for unverified input.
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => identity.dns_names.push((*dns).to_owned()),
                GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_from_bytes(bytes) {
                        identity.ip_addresses.push(ip);
                    }
                }
                _ => {}
            }
        }
    }
    Some(identity)
}

/// The identity in the client certificate of the TLS connection that `req` arrived on: `None`
/// for a plaintext connection, a client that presented no certificate
/// ([`crate::ClientAuth::Optional`]), or a server not fed by [`crate::incoming`] (or another
/// stream of `tokio_rustls::server::TlsStream<TcpStream>`).
pub fn request_identity<T>(req: &tonic::Request<T>) -> Option<CertIdentity> {
    let certs = req.peer_certs()?;
    cert_identity(certs.first()?.as_ref())
}

fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Some(IpAddr::V4(Ipv4Addr::from(v4)));
    }
    if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        return Some(IpAddr::V6(Ipv6Addr::from(v6)));
    }
    None
}
