//! The CLI as a TLS client, without a cluster: `flowctl certs init` writes the certificates, and
//! an in-process tonic server (an `AuthService` that answers `whoami` with the client
//! certificate it saw, behind `flowctl_tls::incoming`) stands in for a node. Checks the files
//! and their modes, that nothing is overwritten, that `--cacert` works over `https://` and bare
//! endpoints, that `--cert`/`--key` present a client certificate, and that a wrong CA or a half
//! identity is one `error:` line that says what is wrong.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;

use flowctl_client::proto::admin::v1 as pb;
use flowctl_client::proto::admin::v1::auth_service_server::{AuthService, AuthServiceServer};
use flowctl_tls::{ClientAuth, ServerTls, TlsFiles};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// What every file `certs init --nodes 2` writes, and whether it is a private key.
const FILES: [(&str, bool); 8] = [
    ("ca.crt", false),
    ("ca.key", true),
    ("node-1.crt", false),
    ("node-1.key", true),
    ("node-2.crt", false),
    ("node-2.key", true),
    ("admin.crt", false),
    ("admin.key", true),
];

/// `flowctl` with `args` and nothing from the caller's environment that would change how it
/// connects.
async fn flowctl(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_flowctl"))
        .args(args)
        .env_remove("FLOWCTL_ENDPOINTS")
        .env_remove("FLOWCTL_TOKEN")
        .env_remove("FLOWCTL_TOKEN_FILE")
        .env_remove("FLOWCTL_CACERT")
        .env_remove("FLOWCTL_CERT")
        .env_remove("FLOWCTL_KEY")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The single `error:` line of a failed command.
fn error_line(o: &Output) -> String {
    assert!(!o.status.success(), "expected a failure: {}", stderr(o));
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    lines[0].to_owned()
}

/// A fresh CA, two node certificates and the admin certificate, written by the CLI.
async fn certs_init(dir: &Path) {
    let out = flowctl(&[
        "certs",
        "init",
        "--dir",
        dir.to_str().unwrap(),
        "--hosts",
        "127.0.0.1, node1.example",
        "--nodes",
        "2",
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
}

/// An AuthService whose `whoami` names the client certificate of the call (or "anonymous").
struct CertEcho;

#[tonic::async_trait]
impl AuthService for CertEcho {
    async fn create_token(
        &self,
        _: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        Err(Status::unimplemented("not used by these tests"))
    }

    async fn list_tokens(
        &self,
        _: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        Err(Status::unimplemented("not used by these tests"))
    }

    async fn revoke_token(
        &self,
        _: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        Err(Status::unimplemented("not used by these tests"))
    }

    async fn who_am_i(
        &self,
        req: Request<pb::WhoAmIRequest>,
    ) -> Result<Response<pb::WhoAmIResponse>, Status> {
        let name = match flowctl_tls::request_identity(&req) {
            Some(id) => format!("cert:{}", id.common_name.unwrap_or_default()),
            None => "anonymous".to_owned(),
        };
        Ok(Response::new(pb::WhoAmIResponse {
            name,
            role: "reader".into(),
            auth_enabled: false,
        }))
    }

    async fn set_auth(
        &self,
        _: Request<pb::SetAuthRequest>,
    ) -> Result<Response<pb::SetAuthResponse>, Status> {
        Err(Status::unimplemented("not used by these tests"))
    }
}

/// The stand-in node: TLS with node-1's certificate, client certificates from the CA verified
/// if presented. It stops when dropped.
struct Node {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Node {
    async fn start(certs: &Path) -> Node {
        let files = TlsFiles {
            cert: certs.join("node-1.crt"),
            key: certs.join("node-1.key"),
            ca: Some(certs.join("ca.crt")),
        };
        let tls = ServerTls::load(files, ClientAuth::Optional).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AuthServiceServer::new(CertEcho))
                .serve_with_incoming_shutdown(
                    flowctl_tls::incoming(listener, tls),
                    stop.clone().cancelled_owned(),
                ),
        );
        Node { addr, stop }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// `flowctl auth whoami -o json` against `endpoint` with `extra` flags: the name it reports.
async fn whoami(endpoint: &str, extra: &[&str]) -> Result<String, String> {
    let mut args = vec!["auth", "whoami", "-o", "json", "--endpoints", endpoint];
    args.extend_from_slice(extra);
    let out = flowctl(&args).await;
    if !out.status.success() {
        return Err(error_line(&out));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Ok(v["name"].as_str().unwrap().to_owned())
}

fn path(dir: &TempDir, name: &str) -> PathBuf {
    dir.path().join(name)
}

#[tokio::test]
async fn certs_init_writes_private_keys_0600_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    certs_init(&certs).await;
    for (name, secret) in FILES {
        let meta = std::fs::metadata(certs.join(name)).unwrap();
        assert!(meta.len() > 0, "{name} is empty");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            assert_eq!(mode, if secret { 0o600 } else { 0o644 }, "{name}");
        }
        #[cfg(not(unix))]
        let _ = secret;
    }
    let ca = std::fs::read(certs.join("ca.crt")).unwrap();

    let again = flowctl(&[
        "certs",
        "init",
        "--dir",
        certs.to_str().unwrap(),
        "--hosts",
        "127.0.0.1",
    ])
    .await;

    let line = error_line(&again);
    assert!(line.contains("refusing to overwrite"), "{line}");
    assert_eq!(std::fs::read(certs.join("ca.crt")).unwrap(), ca);
    assert_eq!(std::fs::read_dir(&certs).unwrap().count(), FILES.len());
}

#[tokio::test]
async fn certs_init_with_a_bad_host_is_one_error_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let out = flowctl(&[
        "certs",
        "init",
        "--dir",
        certs.to_str().unwrap(),
        "--hosts",
        "not a host",
    ])
    .await;
    let line = error_line(&out);
    assert!(line.contains("\"not a host\""), "{line}");
    assert!(!certs.exists());
}

#[tokio::test]
async fn the_cacert_flag_trusts_the_cluster_ca_over_https_and_bare_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    certs_init(dir.path()).await;
    let node = Node::start(dir.path()).await;
    let ca = path(&dir, "ca.crt");
    let ca = ca.to_str().unwrap();

    for endpoint in [format!("https://{}", node.addr), node.addr.to_string()] {
        let name = whoami(&endpoint, &["--cacert", ca]).await;
        assert_eq!(name.as_deref(), Ok("anonymous"), "{endpoint}");
    }
}

#[tokio::test]
async fn cert_and_key_present_the_admin_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    certs_init(dir.path()).await;
    let node = Node::start(dir.path()).await;
    let (ca, cert, key) = (
        path(&dir, "ca.crt"),
        path(&dir, "admin.crt"),
        path(&dir, "admin.key"),
    );
    let flags = [
        "--cacert",
        ca.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];

    let name = whoami(&node.addr.to_string(), &flags).await;

    assert_eq!(name.as_deref(), Ok("cert:flowctl-admin"));
}

#[tokio::test]
async fn another_ca_is_one_error_line_saying_the_tls_handshake_failed() {
    let (dir, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    certs_init(dir.path()).await;
    certs_init(other.path()).await;
    let node = Node::start(dir.path()).await;
    let other_ca = path(&other, "ca.crt");
    let https = format!("https://{}", node.addr);

    let line = whoami(&https, &["--cacert", other_ca.to_str().unwrap()])
        .await
        .unwrap_err();

    assert!(
        line.starts_with(&format!(
            "error: cluster unavailable: {https}: TLS handshake failed: "
        )),
        "{line}"
    );
    assert!(line.contains("certificate"), "{line}");
}

#[tokio::test]
async fn a_certificate_without_its_key_is_one_error_line_naming_both_flags() {
    let dir = tempfile::tempdir().unwrap();
    certs_init(dir.path()).await;
    let cert = path(&dir, "admin.crt");

    let line = whoami("127.0.0.1:1", &["--cert", cert.to_str().unwrap()])
        .await
        .unwrap_err();

    assert_eq!(
        line,
        "error: --cert (FLOWCTL_CERT) is set but --key (FLOWCTL_KEY) is not; \
         a client certificate and its key go together"
    );
}

#[tokio::test]
async fn a_missing_ca_file_is_one_error_line_naming_the_flag_and_the_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = path(&dir, "missing.crt");
    let missing = missing.to_str().unwrap();

    let line = whoami("127.0.0.1:1", &["--cacert", missing])
        .await
        .unwrap_err();

    let prefix = format!("error: cannot use --cacert (FLOWCTL_CACERT): cannot read {missing}: ");
    assert!(line.starts_with(&prefix), "{line}");
    // The OS error is said once, although flowctl-tls puts it in its message and its source.
    let cause = &line[prefix.len()..];
    assert_eq!(line.matches(cause).count(), 1, "{line}");
}
