//! The client over real TLS on loopback: a tonic server with the gRPC health service behind
//! `flowctl_tls::incoming`, with certificates from `flowctl_tls::generate`. Which endpoints use
//! TLS, what a failed handshake says, and that it is not retried until the deadline.
#![allow(clippy::unwrap_used)] // Test helpers outside #[test] functions unwrap too.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use flowctl_client::Client;
use flowctl_tls::{ClientAuth, ServerTls, TlsFiles};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{ClientTlsConfig, Server};
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Long enough never to be reached in a passing test: a call that waits for it is a failure.
const DEADLINE: Duration = Duration::from_secs(60);

/// A CA with one node certificate and the admin certificate, in a temporary directory.
struct Certs(TempDir);

impl Certs {
    fn new() -> Certs {
        let dir = tempfile::tempdir().unwrap();
        flowctl_tls::generate(dir.path(), &["127.0.0.1".to_owned()], 1).unwrap();
        Certs(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    /// A client configuration trusting this CA, presenting `identity` ("admin") if given.
    fn client(&self, identity: Option<&str>) -> ClientTlsConfig {
        let files = identity.map(|n| {
            (
                self.path(&format!("{n}.crt")),
                self.path(&format!("{n}.key")),
            )
        });
        flowctl_tls::client_config(
            Some(&self.path("ca.crt")),
            files.as_ref().map(|(c, k)| (Path::new(c), Path::new(k))),
        )
        .unwrap()
    }
}

/// A health server on a loopback port, over TLS with node-1's certificate or in plaintext;
/// it stops when dropped.
struct HealthServer {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl HealthServer {
    async fn start(tls: Option<(&Certs, ClientAuth)>) -> HealthServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let stop = CancellationToken::new();
        let router = Server::builder().add_service(health);
        let shutdown = stop.clone().cancelled_owned();
        match tls {
            Some((certs, client_auth)) => {
                let files = TlsFiles {
                    cert: certs.path("node-1.crt"),
                    key: certs.path("node-1.key"),
                    ca: Some(certs.path("ca.crt")),
                };
                let tls = ServerTls::load(files, client_auth).unwrap();
                let incoming = flowctl_tls::incoming(listener, tls);
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown));
            }
            None => {
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                tokio::spawn(router.serve_with_incoming_shutdown(incoming, shutdown));
            }
        }
        HealthServer { addr, stop }
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One health check through `client`, and how many times the client called the server.
async fn check(client: &Client) -> (Result<(), tonic::Status>, usize) {
    let calls = AtomicUsize::new(0);
    let result = client
        .call(|ch| {
            calls.fetch_add(1, Ordering::Relaxed);
            async move {
                HealthClient::new(ch)
                    .check(HealthCheckRequest::default())
                    .await
                    .map(drop)
            }
        })
        .await;
    (result, calls.into_inner())
}

fn client(endpoints: &[String], tls: Option<ClientTlsConfig>) -> Client {
    Client::new_with_tls(endpoints, DEADLINE, tls).unwrap()
}

#[tokio::test]
async fn https_and_bare_endpoints_use_the_given_ca() {
    let certs = Certs::new();
    let server = HealthServer::start(Some((&certs, ClientAuth::Optional))).await;
    for endpoint in [format!("https://{}", server.addr), server.addr.to_string()] {
        let c = client(std::slice::from_ref(&endpoint), Some(certs.client(None)));
        let (result, _) = check(&c).await;
        assert!(result.is_ok(), "{endpoint}: {result:?}");
    }
}

#[tokio::test]
async fn a_bare_endpoint_without_a_tls_configuration_stays_plaintext() {
    let server = HealthServer::start(None).await;
    let c = Client::new(&[server.addr.to_string()], DEADLINE).unwrap();
    assert!(check(&c).await.0.is_ok());
}

#[tokio::test]
async fn an_http_endpoint_stays_plaintext_even_with_a_tls_configuration() {
    let certs = Certs::new();
    let server = HealthServer::start(None).await;
    let c = client(
        &[format!("http://{}", server.addr)],
        Some(certs.client(None)),
    );
    assert!(check(&c).await.0.is_ok());
}

#[tokio::test]
async fn another_ca_fails_the_handshake_once_per_endpoint_with_a_message_saying_so() {
    let (certs, other) = (Certs::new(), Certs::new());
    let server = HealthServer::start(Some((&certs, ClientAuth::Optional))).await;
    let endpoints = [format!("https://{}", server.addr), server.addr.to_string()];
    let c = client(&endpoints, Some(other.client(None)));

    let (result, calls) = check(&c).await;

    let status = result.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let message = status.message();
    assert!(
        message.starts_with(&format!("https://{}: TLS handshake failed: ", server.addr)),
        "{message}"
    );
    assert!(message.contains("certificate"), "{message}");
    assert_eq!(calls, 2, "each endpoint once, no retry after a backoff");
}

#[tokio::test]
async fn tls_to_a_plaintext_server_is_a_tls_failure() {
    let certs = Certs::new();
    let server = HealthServer::start(None).await;
    let c = client(
        &[format!("https://{}", server.addr)],
        Some(certs.client(None)),
    );
    let (result, calls) = check(&c).await;
    let message = result.unwrap_err().message().to_owned();
    assert!(message.contains(": TLS handshake failed: "), "{message}");
    assert_eq!(calls, 1);
}

#[tokio::test]
async fn a_required_client_certificate_is_presented_and_its_absence_explained() {
    let certs = Certs::new();
    let server = HealthServer::start(Some((&certs, ClientAuth::Required))).await;
    let endpoint = [format!("https://{}", server.addr)];

    let (result, _) = check(&client(&endpoint, Some(certs.client(Some("admin"))))).await;
    assert!(result.is_ok(), "{result:?}");

    // TLS 1.3 refuses a missing client certificate after the client's side of the handshake,
    // so tonic reports a bare "transport error"; the client adds the endpoint and the causes.
    let (result, calls) = check(&client(&endpoint, Some(certs.client(None)))).await;
    let message = result.unwrap_err().message().to_owned();
    assert!(message.starts_with(&endpoint[0]), "{message}");
    assert!(message.contains("CertificateRequired"), "{message}");
    assert_eq!(calls, 1);
}
