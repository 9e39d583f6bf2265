//! Real TLS over loopback sockets: a tonic server with the gRPC health service, fed by
//! `flowctl_tls::incoming`, and tonic clients built by `flowctl_tls::client_config`, all with
//! certificates from `flowctl_tls::generate`.
#![allow(clippy::unwrap_used)] // Test helpers outside #[test] functions unwrap too.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use flowctl_tls::{
    cert_identity, client_config, generate, incoming, request_identity, CertIdentity, ClientAuth,
    Error, ServerTls, TlsFiles,
};
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{ClientTlsConfig, Endpoint, Server};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Bounds every connect and RPC, so that a broken handshake fails the test instead of hanging.
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// A CA with two node certificates and an admin certificate in a temporary directory.
struct Certs {
    dir: TempDir,
}

impl Certs {
    fn new() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        generate(
            dir.path(),
            &["127.0.0.1".to_owned(), "flowctl.test".to_owned()],
            2,
        )
        .unwrap();
        Certs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn node_files(&self, ca: bool) -> TlsFiles {
        TlsFiles {
            cert: self.path("node-1.crt"),
            key: self.path("node-1.key"),
            ca: ca.then(|| self.path("ca.crt")),
        }
    }

    /// A client trusting only this CA, presenting `identity` (such as "node-2" or "admin").
    fn client(&self, identity: Option<&str>) -> ClientTlsConfig {
        let cert = identity.map(|name| {
            (
                self.path(&format!("{name}.crt")),
                self.path(&format!("{name}.key")),
            )
        });
        client_config(
            Some(&self.path("ca.crt")),
            cert.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
        )
        .unwrap()
    }
}

/// A tonic server on a loopback port that records the identity every request arrived with.
struct TestServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Option<CertIdentity>>>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl TestServer {
    async fn start(tls: ServerTls) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorder = seen.clone();
        let health = InterceptedService::new(health, move |req: tonic::Request<()>| {
            recorder.lock().unwrap().push(request_identity(&req));
            Ok(req)
        });
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(
            Server::builder()
                .add_service(health)
                .serve_with_incoming_shutdown(incoming(listener, tls), async {
                    let _ = stop.await;
                }),
        );
        TestServer {
            addr,
            seen,
            shutdown: Some(shutdown),
            task,
        }
    }

    fn https(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    fn seen(&self) -> Vec<Option<CertIdentity>> {
        self.seen.lock().unwrap().clone()
    }

    async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        tokio::time::timeout(RPC_TIMEOUT, &mut self.task)
            .await
            .expect("server stops within the deadline")
            .unwrap()
            .unwrap();
    }
}

async fn connect(
    url: &str,
    tls: Option<ClientTlsConfig>,
) -> anyhow::Result<HealthClient<tonic::transport::Channel>> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())?
        .connect_timeout(RPC_TIMEOUT)
        .timeout(RPC_TIMEOUT);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).context("while configuring TLS")?;
    }
    let channel = endpoint.connect().await.context("while connecting")?;
    Ok(HealthClient::new(channel))
}

async fn check_with(
    client: &mut HealthClient<tonic::transport::Channel>,
) -> anyhow::Result<ServingStatus> {
    let response = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .context("while calling Health/Check")?;
    Ok(response.into_inner().status())
}

/// One health check on a new connection.
async fn check(url: &str, tls: Option<ClientTlsConfig>) -> anyhow::Result<ServingStatus> {
    check_with(&mut connect(url, tls).await?).await
}

/// Asserts that `result` failed and that its error chain mentions `reason`.
fn assert_refused<T: std::fmt::Debug>(result: anyhow::Result<T>, reason: &str) {
    match result {
        Ok(value) => panic!("expected a failure mentioning {reason:?}, got Ok({value:?})"),
        Err(error) => {
            let chain = format!("{error:#}");
            assert!(chain.contains(reason), "expected {reason:?} in: {chain}");
        }
    }
}

#[tokio::test]
async fn client_trusting_the_ca_gets_a_health_answer_over_ip() {
    let certs = Certs::new();
    let server =
        TestServer::start(ServerTls::load(certs.node_files(false), ClientAuth::None).unwrap())
            .await;

    let status = check(&server.https(), Some(certs.client(None)))
        .await
        .unwrap();

    assert_eq!(status, ServingStatus::Serving);
    assert_eq!(
        server.seen(),
        vec![None],
        "no client certificate, no identity"
    );
    server.stop().await;
}

#[tokio::test]
async fn client_trusting_another_ca_is_refused() {
    let certs = Certs::new();
    let other = Certs::new();
    let server =
        TestServer::start(ServerTls::load(certs.node_files(false), ClientAuth::None).unwrap())
            .await;

    let result = check(&server.https(), Some(other.client(None))).await;

    assert_refused(result, "UnknownIssuer");
    assert!(server.seen().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn plaintext_client_is_refused() {
    let certs = Certs::new();
    let server =
        TestServer::start(ServerTls::load(certs.node_files(false), ClientAuth::None).unwrap())
            .await;

    let result = check(&format!("http://{}", server.addr), None).await;

    assert!(result.is_err(), "plaintext must not be served: {result:?}");
    assert!(server.seen().is_empty());
    // The failed handshake dropped one connection, not the listener.
    assert_eq!(
        check(&server.https(), Some(certs.client(None)))
            .await
            .unwrap(),
        ServingStatus::Serving
    );
    server.stop().await;
}

#[tokio::test]
async fn required_client_auth_refuses_a_client_without_a_certificate() {
    let certs = Certs::new();
    let server =
        TestServer::start(ServerTls::load(certs.node_files(true), ClientAuth::Required).unwrap())
            .await;

    let result = check(&server.https(), Some(certs.client(None))).await;

    assert_refused(result, "CertificateRequired");
    assert!(server.seen().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn required_client_auth_refuses_a_certificate_from_another_ca() {
    let certs = Certs::new();
    let other = Certs::new();
    let server =
        TestServer::start(ServerTls::load(certs.node_files(true), ClientAuth::Required).unwrap())
            .await;
    // Trusts the right server CA, but presents a certificate that the server's CA did not sign.
    let tls = client_config(
        Some(&certs.path("ca.crt")),
        Some((&other.path("node-1.crt"), &other.path("node-1.key"))),
    )
    .unwrap();

    let result = check(&server.https(), Some(tls)).await;

    assert_refused(result, "UnknownCA");
    assert!(server.seen().is_empty());
    server.stop().await;
}

#[tokio::test]
async fn required_client_auth_admits_a_node_and_the_handler_sees_its_identity() {
    let certs = Certs::new();
    let server =
        TestServer::start(ServerTls::load(certs.node_files(true), ClientAuth::Required).unwrap())
            .await;
    // The node's own certificate, presented as a client certificate (as a peer would).
    let tls = client_config(
        Some(&certs.path("ca.crt")),
        Some((&certs.path("node-1.crt"), &certs.path("node-1.key"))),
    )
    .unwrap();

    let status = check(&server.https(), Some(tls)).await.unwrap();

    assert_eq!(status, ServingStatus::Serving);
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    let identity = seen[0]
        .clone()
        .expect("the request carries the client certificate");
    assert_eq!(identity.common_name.as_deref(), Some("flowctl-node-1"));
    assert_eq!(identity.dns_names, vec!["flowctl.test", "localhost"]);
    assert_eq!(
        identity.ip_addresses,
        vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
    );
    server.stop().await;
}

#[tokio::test]
async fn optional_client_auth_admits_clients_with_and_without_certificates() {
    let certs = Certs::new();
    let other = Certs::new();
    let server =
        TestServer::start(ServerTls::load(certs.node_files(true), ClientAuth::Optional).unwrap())
            .await;

    let anonymous = check(&server.https(), Some(certs.client(None)))
        .await
        .unwrap();
    let admin = check(&server.https(), Some(certs.client(Some("admin"))))
        .await
        .unwrap();
    let foreign = client_config(
        Some(&certs.path("ca.crt")),
        Some((&other.path("admin.crt"), &other.path("admin.key"))),
    )
    .unwrap();
    let foreign = check(&server.https(), Some(foreign)).await;

    assert_eq!(anonymous, ServingStatus::Serving);
    assert_eq!(admin, ServingStatus::Serving);
    // A presented certificate is still verified.
    assert_refused(foreign, "UnknownCA");
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0], None);
    let admin = seen[1].clone().expect("the admin presented a certificate");
    assert_eq!(admin.common_name.as_deref(), Some("flowctl-admin"));
    assert!(admin.dns_names.is_empty() && admin.ip_addresses.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn reload_serves_new_connections_with_the_new_files_and_keeps_old_ones() {
    let a = Certs::new();
    let b = Certs::new();
    let live = tempfile::tempdir().unwrap();
    let files = TlsFiles {
        cert: live.path().join("server.crt"),
        key: live.path().join("server.key"),
        ca: None,
    };
    std::fs::copy(a.path("node-1.crt"), &files.cert).unwrap();
    std::fs::copy(a.path("node-1.key"), &files.key).unwrap();
    let tls = ServerTls::load(files.clone(), ClientAuth::None).unwrap();
    let server = TestServer::start(tls.clone()).await;
    let mut before = connect(&server.https(), Some(a.client(None)))
        .await
        .unwrap();
    assert_eq!(
        check_with(&mut before).await.unwrap(),
        ServingStatus::Serving
    );
    assert_refused(
        check(&server.https(), Some(b.client(None))).await,
        "UnknownIssuer",
    );

    // Overwritten in place, as a certificate rotation would.
    std::fs::copy(b.path("node-1.crt"), &files.cert).unwrap();
    std::fs::copy(b.path("node-1.key"), &files.key).unwrap();
    tls.reload().unwrap();

    assert_eq!(
        check(&server.https(), Some(b.client(None))).await.unwrap(),
        ServingStatus::Serving
    );
    // New connections get B's certificate.
    assert_refused(
        check(&server.https(), Some(a.client(None))).await,
        "UnknownIssuer",
    );
    assert_eq!(
        check_with(&mut before).await.unwrap(),
        ServingStatus::Serving,
        "a connection established before the reload keeps working"
    );

    // A broken file fails the reload and leaves B's configuration in use.
    std::fs::write(&files.key, "not a key").unwrap();
    let error = tls.reload().unwrap_err();
    assert!(
        error.to_string().contains(&files.key.display().to_string()),
        "{error}"
    );
    assert_eq!(
        check(&server.https(), Some(b.client(None))).await.unwrap(),
        ServingStatus::Serving
    );
    server.stop().await;
}

#[tokio::test]
async fn a_silent_client_does_not_block_other_handshakes() {
    let certs = Certs::new();
    let server =
        TestServer::start(ServerTls::load(certs.node_files(false), ClientAuth::None).unwrap())
            .await;
    // Connected but never sends a ClientHello: its handshake waits for the timeout.
    let _silent = TcpStream::connect(server.addr).await.unwrap();

    let status = tokio::time::timeout(
        Duration::from_secs(5),
        check(&server.https(), Some(certs.client(None))),
    )
    .await
    .expect("a handshake is not held up by a silent client")
    .unwrap();

    assert_eq!(status, ServingStatus::Serving);
    server.stop().await;
}

#[test]
fn generate_writes_the_files_with_private_keys() {
    let dir = tempfile::tempdir().unwrap();
    let written = generate(
        dir.path(),
        &["10.1.2.3".to_owned(), "node.flowctl.test".to_owned()],
        3,
    )
    .unwrap();

    let names: Vec<_> = written
        .iter()
        .map(|p| {
            p.strip_prefix(dir.path())
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        names,
        [
            "ca.crt",
            "ca.key",
            "node-1.crt",
            "node-1.key",
            "node-2.crt",
            "node-2.key",
            "node-3.crt",
            "node-3.key",
            "admin.crt",
            "admin.key",
        ]
    );
    #[cfg(unix)]
    for path in &written {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        if path.extension().unwrap() == "key" {
            assert_eq!(mode, 0o600, "{}", path.display());
        } else {
            assert_eq!(mode & 0o022, 0, "{} is {mode:o}", path.display());
        }
    }
    let node3 = der(&dir.path().join("node-3.crt"));
    let identity = cert_identity(&node3).unwrap();
    assert_eq!(identity.common_name.as_deref(), Some("flowctl-node-3"));
    assert_eq!(identity.dns_names, vec!["node.flowctl.test", "localhost"]);
    assert_eq!(
        identity.ip_addresses,
        vec![
            "10.1.2.3".parse::<IpAddr>().unwrap(),
            "127.0.0.1".parse().unwrap()
        ]
    );
}

#[test]
fn generated_certificates_have_the_intended_usages_and_validity() {
    use x509_parser::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path(), &["127.0.0.1".to_owned()], 1).unwrap();
    let days = |cert: &X509Certificate<'_>| {
        let v = cert.validity();
        (v.not_after.timestamp() - v.not_before.timestamp()) / 86_400
    };

    let ca_der = der(&dir.path().join("ca.crt"));
    let (_, ca) = parse_x509_certificate(&ca_der).unwrap();
    assert!(ca.is_ca());
    assert_eq!(days(&ca), 3650);
    assert!(ca.key_usage().unwrap().unwrap().value.key_cert_sign());

    let node_der = der(&dir.path().join("node-1.crt"));
    let (_, node) = parse_x509_certificate(&node_der).unwrap();
    assert!(!node.is_ca());
    assert_eq!(days(&node), 365);
    let eku = node.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert_eq!(node.issuer(), ca.subject());

    let admin_der = der(&dir.path().join("admin.crt"));
    let (_, admin) = parse_x509_certificate(&admin_der).unwrap();
    let eku = admin.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert_eq!(days(&admin), 365);

    let key = std::fs::read_to_string(dir.path().join("node-1.key")).unwrap();
    let key = rcgen::KeyPair::from_pem(&key).unwrap();
    assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
}

#[test]
fn generate_refuses_to_overwrite_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = ["127.0.0.1".to_owned()];
    generate(dir.path(), &hosts, 1).unwrap();
    let ca_before = std::fs::read(dir.path().join("ca.crt")).unwrap();

    let error = generate(dir.path(), &hosts, 1).unwrap_err();

    assert!(
        matches!(&error, Error::AlreadyExists { path } if path == &dir.path().join("ca.crt")),
        "{error:?}"
    );
    assert!(error.to_string().contains("ca.crt"), "{error}");
    assert_eq!(std::fs::read(dir.path().join("ca.crt")).unwrap(), ca_before);

    // Only a later file exists: still nothing is written.
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("node-2.key"), "mine").unwrap();
    let error = generate(other.path(), &hosts, 2).unwrap_err();
    assert!(
        matches!(&error, Error::AlreadyExists { path } if path == &other.path().join("node-2.key")),
        "{error:?}"
    );
    assert_eq!(std::fs::read_dir(other.path()).unwrap().count(), 1);
}

#[test]
fn generate_rejects_a_bad_host_name() {
    let dir = tempfile::tempdir().unwrap();

    let error = generate(
        dir.path(),
        &["127.0.0.1".to_owned(), "bad host!".to_owned()],
        1,
    )
    .unwrap_err();

    assert!(
        matches!(&error, Error::InvalidHost { host } if host == "bad host!"),
        "{error:?}"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn load_errors_name_the_file() {
    let certs = Certs::new();
    let missing = certs.path("missing.crt");

    let error = ServerTls::load(
        TlsFiles {
            cert: missing.clone(),
            ..certs.node_files(false)
        },
        ClientAuth::None,
    )
    .unwrap_err();
    assert!(
        error.to_string().contains(&missing.display().to_string()),
        "{error}"
    );

    let error = ServerTls::load(certs.node_files(false), ClientAuth::Required).unwrap_err();
    assert!(
        matches!(
            error,
            Error::MissingCa {
                client_auth: ClientAuth::Required
            }
        ),
        "{error:?}"
    );

    // A key that does not belong to the certificate.
    let error = ServerTls::load(
        TlsFiles {
            key: certs.path("node-2.key"),
            ..certs.node_files(false)
        },
        ClientAuth::None,
    )
    .unwrap_err();
    assert!(matches!(error, Error::Identity { .. }), "{error:?}");
    assert!(error.to_string().contains("node-2.key"), "{error}");

    // A key file given as the CA.
    let error = ServerTls::load(
        TlsFiles {
            ca: Some(certs.path("ca.key")),
            ..certs.node_files(false)
        },
        ClientAuth::Optional,
    )
    .unwrap_err();
    assert!(error.to_string().contains("ca.key"), "{error}");
    assert!(!error.to_string().contains('\n'), "one line: {error}");
}

#[test]
fn client_config_errors_name_the_file() {
    let certs = Certs::new();
    let ca = certs.path("ca.crt");

    let missing = certs.path("nope.crt");
    let error = client_config(Some(&missing), None).unwrap_err();
    assert!(error.to_string().contains("nope.crt"), "{error}");

    let error = client_config(Some(&certs.path("ca.key")), None).unwrap_err();
    assert!(error.to_string().contains("ca.key"), "{error}");

    let error = client_config(
        Some(&ca),
        Some((&certs.path("node-1.crt"), &certs.path("node-2.key"))),
    )
    .unwrap_err();
    assert!(matches!(error, Error::Identity { .. }), "{error:?}");

    let error = client_config(
        Some(&ca),
        Some((&certs.path("node-1.crt"), &certs.path("node-1.crt"))),
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("node-1.crt") && error.to_string().contains("private key"),
        "{error}"
    );
}

#[test]
fn client_config_without_a_ca_uses_the_platform_roots() {
    // Whether the platform has roots is only known when tonic builds the connector; here the
    // configuration is only assembled, and the identity files are still checked.
    let certs = Certs::new();
    client_config(None, None).unwrap();
    client_config(
        None,
        Some((&certs.path("admin.crt"), &certs.path("admin.key"))),
    )
    .unwrap();
}

#[test]
fn cert_identity_of_garbage_is_none() {
    assert_eq!(cert_identity(b"not a certificate"), None);
}

fn der(path: &Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_file(path)
        .unwrap()
        .as_ref()
        .to_vec()
}
