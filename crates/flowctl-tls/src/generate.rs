//! Certificate generation for `flowctl certs init`: a private CA, one certificate per node and
//! one for the administrator.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::DnsName;
use time::{Duration, OffsetDateTime};

use crate::Error;

/// The most node certificates [`generate`] writes in one go.
pub const MAX_NODES: usize = 100;

const CA_VALIDITY: Duration = Duration::days(10 * 365);
const LEAF_VALIDITY: Duration = Duration::days(365);
/// Certificates are valid from a little before now, so that a peer whose clock lags behind the
/// generating machine's accepts them at once.
const BACKDATE: Duration = Duration::hours(1);

/// The names every node certificate carries besides `hosts`, so that a node is reachable as
/// itself on loopback.
const LOOPBACK_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// Writes a new CA and the certificates signed by it into `dir` (created if missing), and
/// returns the paths written:
///
/// - `ca.crt`, `ca.key`: the CA (CN `flowctl-ca-` and 8 hex digits of its key identifier,
///   valid 10 years), which may sign only leaf certificates;
/// - `node-{i}.crt`, `node-{i}.key` for `i` in `1..=nodes`: CN `flowctl-node-{i}`, for both TLS
///   server and client use (a node is the server of its API and the client of its peers), with
///   every entry of `hosts` (IP addresses as IP SANs, names as DNS SANs) plus `localhost` and
///   `127.0.0.1` as subject alternative names;
/// - `admin.crt`, `admin.key`: CN `flowctl-admin`, for client use only.
///
/// Keys are ECDSA P-256 in PKCS#8 PEM, written with mode 0600; leaf certificates are valid for
/// one year. Nothing is written if any of these files already exists, or if `nodes` is not in
/// `1..=`[`MAX_NODES`], or if `hosts` is empty or has an entry that is neither an IP address
/// nor a DNS name. If writing fails part way, the files already written are removed.
pub fn generate(dir: &Path, hosts: &[String], nodes: usize) -> Result<Vec<PathBuf>, Error> {
    if !(1..=MAX_NODES).contains(&nodes) {
        return Err(Error::InvalidNodeCount { nodes });
    }
    let sans = node_sans(hosts)?;

    let mut names = vec!["ca".to_owned()];
    names.extend((1..=nodes).map(|i| format!("node-{i}")));
    names.push("admin".to_owned());
    let mut files = Vec::with_capacity(names.len() * 2);
    for name in &names {
        files.push(dir.join(format!("{name}.crt")));
        files.push(dir.join(format!("{name}.key")));
    }
    // Checked before any key is generated so that a second `certs init` fails without side
    // effects; `create_new` below closes the race with another writer.
    if let Some(existing) = files.iter().find(|p| p.symlink_metadata().is_ok()) {
        return Err(Error::AlreadyExists {
            path: existing.clone(),
        });
    }

    let now = OffsetDateTime::now_utc();
    let mut contents = Vec::with_capacity(files.len());

    let ca_cert_path = dir.join("ca.crt");
    let ca_key = new_key(&ca_cert_path)?;
    // Each CA gets its own name, from its key, so that a certificate from another flowctl
    // cluster fails as "unknown issuer" rather than as a bad signature from a same-named CA.
    let ca_id: String = CertificateParams::default()
        .key_identifier(&ca_key)
        .iter()
        .take(4)
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut ca_params = params(&format!("flowctl-ca-{ca_id}"), now, CA_VALIDITY);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|source| Error::Generate {
            path: ca_cert_path.clone(),
            source,
        })?;
    contents.push(ca_cert.pem());
    contents.push(ca_key.serialize_pem());
    let ca = Issuer::new(ca_params, ca_key);

    for name in &names[1..] {
        let path = dir.join(format!("{name}.crt"));
        let mut leaf = if name == "admin" {
            let mut leaf = params("flowctl-admin", now, LEAF_VALIDITY);
            leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            leaf
        } else {
            let mut leaf = params(&format!("flowctl-{name}"), now, LEAF_VALIDITY);
            leaf.subject_alt_names = sans.clone();
            leaf.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            leaf
        };
        leaf.is_ca = IsCa::ExplicitNoCa;
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.use_authority_key_identifier_extension = true;
        let key = new_key(&path)?;
        let cert = leaf
            .signed_by(&key, &ca)
            .map_err(|source| Error::Generate { path, source })?;
        contents.push(cert.pem());
        contents.push(key.serialize_pem());
    }

    std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
        path: dir.to_owned(),
        source,
    })?;
    for (i, (path, content)) in files.iter().zip(&contents).enumerate() {
        let secret = path.extension().is_some_and(|e| e == "key");
        if let Err(error) = write_new(path, content, secret) {
            // Best effort: a partial set of certificates is worse than none, and the error
            // being returned is the one that matters.
            for written in &files[..i] {
                let _ = std::fs::remove_file(written);
            }
            return Err(error);
        }
    }
    Ok(files)
}

/// The subject alternative names of a node certificate: `hosts`, then the loopback names that
/// `hosts` does not already have.
fn node_sans(hosts: &[String]) -> Result<Vec<SanType>, Error> {
    if hosts.is_empty() {
        return Err(Error::NoHosts);
    }
    let mut sans = Vec::with_capacity(hosts.len() + LOOPBACK_NAMES.len());
    for host in hosts.iter().map(String::as_str).chain(LOOPBACK_NAMES) {
        let san = parse_host(host)?;
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

fn parse_host(host: &str) -> Result<SanType, Error> {
    let invalid = || Error::InvalidHost {
        host: host.to_owned(),
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    // rcgen checks only that a DNS name is ASCII; rustls's parser checks the name's syntax,
    // which is what a client will verify the certificate against.
    DnsName::try_from(host).map_err(|_| invalid())?;
    Ok(SanType::DnsName(host.try_into().map_err(|_| invalid())?))
}

fn params(common_name: &str, now: OffsetDateTime, validity: Duration) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.not_before = now - BACKDATE;
    params.not_after = now + validity;
    params
}

fn new_key(cert_path: &Path) -> Result<KeyPair, Error> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| Error::Generate {
        path: cert_path.with_extension("key"),
        source,
    })
}

fn write_new(path: &Path, content: &str, secret: bool) -> Result<(), Error> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let result = options.open(path).and_then(|mut file: File| {
        file.write_all(content.as_bytes())?;
        file.sync_all()
    });
    result.map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => Error::AlreadyExists {
            path: path.to_owned(),
        },
        _ => Error::Write {
            path: path.to_owned(),
            source,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(list: &[&str]) -> Vec<String> {
        list.iter().map(|h| (*h).to_owned()).collect()
    }

    #[test]
    fn hosts_become_ip_and_dns_sans_plus_loopback_without_duplicates() {
        let sans = node_sans(&hosts(&[
            "10.0.0.1",
            "node-1.example.com",
            "localhost",
            "::1",
        ]))
        .unwrap();
        let expected = vec![
            SanType::IpAddress("10.0.0.1".parse().unwrap()),
            SanType::DnsName("node-1.example.com".try_into().unwrap()),
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::IpAddress("::1".parse().unwrap()),
            SanType::IpAddress("127.0.0.1".parse().unwrap()),
        ];
        assert_eq!(sans, expected);
    }

    #[test]
    fn invalid_hosts_are_rejected() {
        for bad in [
            "",
            "not a host",
            "under_score..example",
            "-leading.example",
            "a/b",
        ] {
            match node_sans(&hosts(&[bad])) {
                Err(Error::InvalidHost { host }) => assert_eq!(host, bad),
                other => panic!("{bad:?}: expected InvalidHost, got {other:?}"),
            }
        }
    }

    #[test]
    fn empty_hosts_and_bad_node_counts_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(generate(dir.path(), &[], 1), Err(Error::NoHosts)));
        for nodes in [0, MAX_NODES + 1] {
            assert!(matches!(
                generate(dir.path(), &hosts(&["127.0.0.1"]), nodes),
                Err(Error::InvalidNodeCount { nodes: n }) if n == nodes
            ));
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
