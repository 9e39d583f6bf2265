//! A typed flowctl client: a list of endpoints, failover to the next endpoint when one is
//! down, and retries with exponential backoff, jitter and an overall deadline.
//!
//! It is not a cache or a leader tracker: any node serves any request (followers forward
//! writes), so the client only needs one node that answers.
//!
//! Credentials: a client built with [`Client::with_token`] sends `authorization: Bearer
//! <token>` on every call, because [`Client::call`] hands its closure an [`AuthChannel`] (a
//! channel wrapped in the [`Bearer`] interceptor) rather than a bare channel, so no typed
//! client built from it can forget the header. A client without a token sends no credentials,
//! exactly as before. Authentication failures (`UNAUTHENTICATED`, `PERMISSION_DENIED`) are not
//! retried: another node would give the same answer.
//!
//! TLS: an `https://host:port` endpoint is dialed over TLS, with the configuration given to
//! [`Client::new_with_tls`] or, without one, trusting the platform's root certificates. A bare
//! `host:port` is dialed over TLS exactly when a configuration is given, so a CA file alone
//! (`flowctl --cacert`) switches a list of bare endpoints to TLS, as etcdctl does with
//! `https://` endpoints. An `http://` endpoint is always plaintext, configuration or not.
//! [`tls_from_env`] and [`tls_config`] build configurations from PEM files; the server name
//! verified is the endpoint's host (an IP address against the certificate's IP SANs). A failed
//! handshake is reported as `<endpoint>: TLS handshake failed: <reason>` and, like an
//! authentication failure, not retried after the first round of endpoints.

use std::error::Error as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

pub use flowctl_proto as proto;
pub use flowctl_proto::auth::{AuthChannel, Bearer};

/// The default endpoint, as in the original control plane.
pub const DEFAULT_ENDPOINT: &str = "localhost:8080";
/// Largest reply the client accepts (large pipeline lists).
pub const MAX_REPLY_BYTES: usize = 64 * 1024 * 1024;
/// How often an idle connection is pinged, and how long a ping may go unanswered.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The variable naming a PEM file of the CA certificates the client trusts ([`tls_from_env`]).
pub const ENV_CACERT: &str = "FLOWCTL_CACERT";
/// The variable naming the PEM file of the client certificate (mTLS), set with [`ENV_KEY`].
pub const ENV_CERT: &str = "FLOWCTL_CERT";
/// The variable naming the PEM file of the client certificate's private key.
pub const ENV_KEY: &str = "FLOWCTL_KEY";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no endpoints given")]
    NoEndpoints,
    #[error("invalid endpoint {endpoint:?}: {message}")]
    BadEndpoint { endpoint: String, message: String },
    /// The message never contains the token.
    #[error("invalid token: {message}")]
    BadToken { message: String },
    /// A client certificate without its key, or a key without its certificate.
    #[error("{given} is set but {missing} is not; a client certificate and its key go together")]
    TlsPair {
        given: &'static str,
        missing: &'static str,
    },
    /// A TLS file that cannot be used (missing, unreadable, not PEM, a key that does not
    /// belong to its certificate). `setting` names the setting that gave it; the source names
    /// the file.
    #[error("cannot use {setting}")]
    TlsFile {
        setting: String,
        // Boxed: it is large, and every `Result` of this crate would carry its size.
        #[source]
        source: Box<flowctl_tls::Error>,
    },
    /// An endpoint that TLS cannot be set up for, such as `https://` without a CA file on a
    /// machine without root certificates.
    #[error("cannot set up TLS for endpoint {endpoint:?}")]
    Tls {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
}

/// One TLS file setting: its name (a variable or a flag, for error messages) and the PEM file it
/// names, if it is set. An empty path counts as unset, so that `--cacert ""` can override an
/// exported variable.
#[derive(Debug, Clone, Copy)]
pub struct TlsSetting<'a> {
    pub name: &'static str,
    pub path: Option<&'a Path>,
}

impl TlsSetting<'_> {
    fn file(&self) -> Option<&Path> {
        self.path.filter(|p| !p.as_os_str().is_empty())
    }
}

/// A client TLS configuration from PEM files, or `None` if none of the settings is set:
/// trust the CA certificates in `ca` (unset: the platform's root certificates), and present
/// `cert` with its private key `key` as the client certificate (mTLS); `cert` and `key` are
/// set together or not at all. The files are read and checked now, so a bad one is reported,
/// naming its setting and path, before any connection is tried.
pub fn tls_config(
    ca: TlsSetting<'_>,
    cert: TlsSetting<'_>,
    key: TlsSetting<'_>,
) -> Result<Option<ClientTlsConfig>, Error> {
    let identity = match (cert.file(), key.file()) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (Some(_), None) => {
            return Err(Error::TlsPair {
                given: cert.name,
                missing: key.name,
            })
        }
        (None, Some(_)) => {
            return Err(Error::TlsPair {
                given: key.name,
                missing: cert.name,
            })
        }
    };
    if ca.file().is_none() && identity.is_none() {
        return Ok(None);
    }
    flowctl_tls::client_config(ca.file(), identity)
        .map(Some)
        .map_err(|source| Error::TlsFile {
            setting: culprit(&source, [ca, cert, key]),
            source: Box::new(source),
        })
}

/// The client TLS configuration that [`ENV_CACERT`], [`ENV_CERT`] and [`ENV_KEY`] describe (see
/// [`tls_config`]), or `None` if none of them is set (an empty one counts as unset).
pub fn tls_from_env() -> Result<Option<ClientTlsConfig>, Error> {
    tls_from_vars(|var| std::env::var_os(var).map(PathBuf::from))
}

fn tls_from_vars(
    var: impl Fn(&'static str) -> Option<PathBuf>,
) -> Result<Option<ClientTlsConfig>, Error> {
    let (ca, cert, key) = (var(ENV_CACERT), var(ENV_CERT), var(ENV_KEY));
    fn setting<'a>(name: &'static str, path: &'a Option<PathBuf>) -> TlsSetting<'a> {
        TlsSetting {
            name,
            path: path.as_deref(),
        }
    }
    tls_config(
        setting(ENV_CACERT, &ca),
        setting(ENV_CERT, &cert),
        setting(ENV_KEY, &key),
    )
}

/// The name of the setting whose file `error` is about, or of every set one when the error is
/// about several (a certificate and a key that do not match).
fn culprit(error: &flowctl_tls::Error, settings: [TlsSetting<'_>; 3]) -> String {
    let path = match error {
        flowctl_tls::Error::Read { path, .. } | flowctl_tls::Error::Pem { path, .. } => {
            Some(path.as_path())
        }
        _ => None,
    };
    if let Some(s) = path.and_then(|p| settings.iter().find(|s| s.file() == Some(p))) {
        return s.name.to_owned();
    }
    if let flowctl_tls::Error::Identity { .. } = error {
        let [_, cert, key] = settings;
        return format!("{} and {}", cert.name, key.name);
    }
    let set: Vec<&str> = settings
        .iter()
        .filter(|s| s.file().is_some())
        .map(|s| s.name)
        .collect();
    set.join(" and ")
}

/// A client for a flowctl cluster.
pub struct Client {
    endpoints: Vec<Target>,
    /// Credentials added to every call; none by default.
    bearer: Bearer,
    preferred: AtomicUsize,
    deadline: Duration,
    last_used: Mutex<Option<String>>,
}

/// One endpoint and its channel.
struct Target {
    /// The endpoint as given, reported by [`Client::last_endpoint`].
    name: String,
    /// The endpoint as errors name it: as given, except that a bare `host:port` dialed over
    /// TLS is shown as `https://host:port`, so that a failure says TLS was used.
    label: String,
    channel: Channel,
}

/// Splits a comma list of `host:port` endpoints.
pub fn parse_endpoints(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Client {
    /// Builds a client. `deadline` bounds each call including its retries. Endpoints are
    /// plaintext except `https://` ones, which trust the platform's root certificates; see
    /// [`Client::new_with_tls`].
    pub fn new(endpoints: &[String], deadline: Duration) -> Result<Self, Error> {
        Client::new_with_tls(endpoints, deadline, None)
    }

    /// Builds a client that dials `https://` endpoints over TLS with `tls` (without it, trusting
    /// the platform's root certificates), bare `host:port` endpoints over TLS exactly when
    /// `tls` is given, and `http://` endpoints in plaintext. `deadline` bounds each call
    /// including its retries.
    pub fn new_with_tls(
        endpoints: &[String],
        deadline: Duration,
        tls: Option<ClientTlsConfig>,
    ) -> Result<Self, Error> {
        if endpoints.is_empty() {
            return Err(Error::NoEndpoints);
        }
        let tls_given = tls.is_some();
        // Without a configuration, one trusting the platform's roots is made for the first
        // `https://` endpoint, and only then: a plaintext client reads no certificate files.
        let mut tls = tls;
        let mut out = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            let (uri, transport) = dial(e, tls_given);
            let label = if transport == Transport::Tls && !e.starts_with("https://") {
                uri.clone()
            } else {
                e.clone()
            };
            let mut ep = Endpoint::from_shared(uri).map_err(|err| Error::BadEndpoint {
                endpoint: e.clone(),
                message: err.to_string(),
            })?;
            if transport == Transport::Tls {
                let config = tls.get_or_insert_with(platform_roots).clone();
                ep = ep.tls_config(config).map_err(|source| Error::Tls {
                    endpoint: e.clone(),
                    source,
                })?;
            }
            // HTTP/2 pings find a peer that vanished without closing the connection (a
            // partition, a host crash), so long streams (chunk commands, `logs --follow`) fail
            // over instead of hanging.
            let ch = ep
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true)
                .connect_lazy();
            out.push(Target {
                name: e.clone(),
                label,
                channel: ch,
            });
        }
        Ok(Client {
            endpoints: out,
            bearer: Bearer::default(),
            preferred: AtomicUsize::new(0),
            deadline,
            last_used: Mutex::new(None),
        })
    }

    /// Sends `token` as `authorization: Bearer <token>` on every call. `None` or a blank
    /// token means no credentials. A token that cannot be sent in a header is an error that
    /// does not repeat it.
    pub fn with_token(mut self, token: Option<&str>) -> Result<Self, Error> {
        self.bearer = Bearer::new(token).map_err(|message| Error::BadToken { message })?;
        Ok(self)
    }

    /// The endpoint that answered the last call.
    pub fn last_endpoint(&self) -> Option<String> {
        self.last_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs `f` against one endpoint after another until one answers. `UNAVAILABLE` (node down,
    /// no leader yet, leadership moving) moves on to the next endpoint; after a full round the
    /// client backs off with jitter. A TLS failure (an untrusted or misnamed certificate, a
    /// server that does not speak TLS) also moves on, but is not retried after a full round:
    /// the nodes of a cluster share one CA, so waiting would not change the answer. Any other
    /// status is returned at once.
    ///
    /// `f` gets a channel that carries this client's credentials on every call.
    pub async fn call<T, F, Fut>(&self, mut f: F) -> Result<T, Status>
    where
        F: FnMut(AuthChannel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let until = Instant::now() + self.deadline;
        // One id for this operation and all its tries: a retried write answers what the
        // first try answered, also when that answer was lost on the way.
        let bearer = self
            .bearer
            .clone()
            .with_request_id(&format!("{:032x}", rand::random::<u128>()));
        let n = self.endpoints.len();
        let mut backoff = FIRST_BACKOFF;
        let mut tried = 0usize;
        // The first TLS failure: it says more than a later "connection refused" would.
        let mut tls_failure: Option<Status> = None;
        loop {
            let i = self.preferred.load(Ordering::Relaxed) % n;
            let target = &self.endpoints[i];
            let left = until.saturating_duration_since(Instant::now());
            let ch = proto::auth::with_bearer(target.channel.clone(), bearer.clone());
            let result = tokio::time::timeout(left.max(Duration::from_millis(1)), f(ch)).await;
            let status = match result {
                Ok(Ok(v)) => {
                    *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(target.name.clone());
                    return Ok(v);
                }
                Ok(Err(s)) => match tls_cause(&s) {
                    Some(tls) => {
                        let message = format!("{}: TLS handshake failed: {tls}", target.label);
                        let failure = Status::new(s.code(), message);
                        tls_failure.get_or_insert(failure).clone()
                    }
                    None if retryable(&s) => annotate(s, &target.label),
                    // A status made on this side from a transport error (a client certificate
                    // refused after the handshake, a reset connection) says only "transport
                    // error"; the endpoint and the causes say what went wrong.
                    None if s.source().is_some() => return Err(annotate(s, &target.label)),
                    None => return Err(s),
                },
                Err(_) => annotate(
                    Status::deadline_exceeded(format!(
                        "no answer from {} within the deadline",
                        target.label
                    )),
                    &target.label,
                ),
            };
            self.preferred.store((i + 1) % n, Ordering::Relaxed);
            tried += 1;
            let round_done = tried.is_multiple_of(n);
            if Instant::now() >= until || (round_done && tls_failure.is_some()) {
                return Err(tls_failure.unwrap_or(status));
            }
            if round_done {
                let sleep = flowctl_proto::retry::jitter(backoff, 0.5)
                    .min(until.saturating_duration_since(Instant::now()));
                tokio::time::sleep(sleep).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                // A try started with no time left would only report the deadline, hiding
                // the error the servers gave.
                if Instant::now() >= until {
                    return Err(status);
                }
            }
        }
    }
}

/// How an endpoint is dialed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Plaintext,
    Tls,
}

/// The URI to dial for `endpoint` and how: `http://` in plaintext, `https://` over TLS, and a
/// bare `host:port` over TLS exactly when a TLS configuration is given.
fn dial(endpoint: &str, tls_given: bool) -> (String, Transport) {
    if endpoint.starts_with("https://") {
        (endpoint.to_owned(), Transport::Tls)
    } else if endpoint.starts_with("http://") {
        (endpoint.to_owned(), Transport::Plaintext)
    } else if tls_given {
        (format!("https://{endpoint}"), Transport::Tls)
    } else {
        (format!("http://{endpoint}"), Transport::Plaintext)
    }
}

/// The configuration of an `https://` endpoint given none: the platform's root certificates.
fn platform_roots() -> ClientTlsConfig {
    flowctl_tls::client_config(None, None)
        .expect("a TLS configuration without files reads none, so it cannot fail")
}

fn retryable(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable)
}

/// `s` with the endpoint it came from and, for a status made on this side from a transport
/// error, that error's chain of causes (each said once) instead of tonic's copy of one of them.
fn annotate(s: Status, endpoint: &str) -> Status {
    let mut parts: Vec<String> = Vec::new();
    let mut cause = s.source();
    while let Some(e) = cause {
        let text = e.to_string();
        if !text.is_empty() && !parts.contains(&text) {
            parts.push(text);
        }
        cause = e.source();
    }
    if parts.is_empty() {
        parts.push(s.message().to_owned());
    }
    Status::new(s.code(), format!("{endpoint}: {}", parts.join(": ")))
}

/// The rustls error that `s` was made from, if any: the TLS handshake itself failed. It sits in
/// an `io::Error` (tokio-rustls's), whose `source` skips it, so each `io::Error` is opened.
fn tls_cause(s: &Status) -> Option<&rustls::Error> {
    let mut cause = s.source();
    while let Some(e) = cause {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref);
        if let Some(tls) = inner.and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return Some(tls);
        }
        cause = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_split_and_trimmed() {
        assert_eq!(parse_endpoints(" a:1, b:2,,"), vec!["a:1", "b:2"]);
    }

    #[tokio::test]
    async fn fails_over_to_the_next_endpoint() {
        let c = Client::new(&["a:1".into(), "b:2".into()], Duration::from_secs(5)).unwrap();
        let mut calls = Vec::new();
        let r = c
            .call(|_ch| {
                calls.push(c.preferred.load(Ordering::Relaxed));
                let n = calls.len();
                async move {
                    if n == 1 {
                        Err(Status::unavailable("down"))
                    } else {
                        Ok(n)
                    }
                }
            })
            .await
            .unwrap();
        assert_eq!(r, 2);
        assert_eq!(calls, [0, 1]);
        assert_eq!(c.last_endpoint().as_deref(), Some("b:2"));
    }

    #[tokio::test]
    async fn non_retryable_errors_return_at_once() {
        let c = Client::new(&["a:1".into()], Duration::from_secs(5)).unwrap();
        let mut n = 0;
        let r: Result<(), _> = c
            .call(|_| {
                n += 1;
                async { Err(Status::invalid_argument("bad")) }
            })
            .await;
        assert_eq!(r.unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(n, 1);
    }

    /// What the client's interceptor does to an outgoing request's metadata.
    fn outgoing_authorization(c: &Client) -> Option<String> {
        use tonic::service::Interceptor as _;
        let req = c.bearer.clone().call(tonic::Request::new(())).unwrap();
        req.metadata()
            .get(proto::auth::AUTHORIZATION)
            .map(|v| v.to_str().unwrap().to_owned())
    }

    // `Client::new` connects lazily, which needs a runtime.
    #[tokio::test]
    async fn a_client_with_a_token_puts_the_bearer_header_on_requests() {
        let c = Client::new(&["a:1".into()], Duration::from_secs(5))
            .unwrap()
            .with_token(Some(" s3cret\n"))
            .unwrap();
        assert_eq!(outgoing_authorization(&c).as_deref(), Some("Bearer s3cret"));
    }

    #[tokio::test]
    async fn a_client_without_a_token_sends_no_credentials() {
        let c = Client::new(&["a:1".into()], Duration::from_secs(5)).unwrap();
        assert_eq!(outgoing_authorization(&c), None);
        let c = c.with_token(Some("  ")).unwrap();
        assert_eq!(outgoing_authorization(&c), None);
        let c = c.with_token(None).unwrap();
        assert_eq!(outgoing_authorization(&c), None);
    }

    #[tokio::test]
    async fn a_token_that_cannot_be_a_header_is_rejected_without_repeating_it() {
        let Err(e) = Client::new(&["a:1".into()], Duration::from_secs(5))
            .unwrap()
            .with_token(Some("s3cr\u{1}t"))
        else {
            panic!("a token with a control character was accepted");
        };
        assert!(matches!(e, Error::BadToken { .. }), "{e:?}");
        assert!(!e.to_string().contains("s3cr"), "{e}");
    }

    #[tokio::test]
    async fn authentication_errors_are_not_retried() {
        let c = Client::new(&["a:1".into(), "b:2".into()], Duration::from_secs(5)).unwrap();
        for status in [
            Status::unauthenticated("no token"),
            Status::permission_denied("reader"),
        ] {
            let mut n = 0;
            let r: Result<(), _> = c
                .call(|_| {
                    n += 1;
                    let s = status.clone();
                    async move { Err(s) }
                })
                .await;
            assert_eq!(r.unwrap_err().code(), status.code());
            assert_eq!(n, 1);
        }
    }

    #[tokio::test]
    async fn gives_up_at_the_deadline() {
        let c = Client::new(&["a:1".into()], Duration::from_millis(300)).unwrap();
        let r: Result<(), _> = c.call(|_| async { Err(Status::unavailable("down")) }).await;
        let e = r.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
        assert!(e.message().starts_with("a:1: "), "{}", e.message());
    }

    #[test]
    fn http_is_never_tls_https_always_and_bare_only_with_a_tls_configuration() {
        use Transport::{Plaintext, Tls};
        let cases = [
            ("http://a:1", false, "http://a:1", Plaintext),
            ("http://a:1", true, "http://a:1", Plaintext),
            ("https://a:1", false, "https://a:1", Tls),
            ("https://a:1", true, "https://a:1", Tls),
            ("a:1", false, "http://a:1", Plaintext),
            ("a:1", true, "https://a:1", Tls),
        ];
        for (endpoint, tls_given, uri, transport) in cases {
            assert_eq!(
                dial(endpoint, tls_given),
                (uri.to_owned(), transport),
                "{endpoint} with a TLS configuration: {tls_given}"
            );
        }
    }

    #[tokio::test]
    async fn a_bare_endpoint_dialed_over_tls_is_named_by_its_https_uri_in_errors() {
        let endpoints = ["a:1".into(), "http://b:2".into(), "https://c:3".into()];
        // No roots at all: enough to build the connectors, which is all this test needs.
        let c = Client::new_with_tls(
            &endpoints,
            Duration::from_secs(5),
            Some(ClientTlsConfig::new()),
        )
        .unwrap();
        let labels: Vec<&str> = c.endpoints.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["https://a:1", "http://b:2", "https://c:3"]);
        let names: Vec<&str> = c.endpoints.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a:1", "http://b:2", "https://c:3"]);
        let c = Client::new(&endpoints[..2], Duration::from_secs(5)).unwrap();
        let labels: Vec<&str> = c.endpoints.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["a:1", "http://b:2"]);
    }

    /// `tls_from_vars` over a fixed set of variables.
    fn tls_from(vars: &[(&str, &Path)]) -> Result<Option<ClientTlsConfig>, Error> {
        tls_from_vars(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, p)| p.to_path_buf())
        })
    }

    fn certs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        flowctl_tls::generate(dir.path(), &["127.0.0.1".to_owned()], 1).unwrap();
        dir
    }

    #[test]
    fn no_tls_variable_means_no_tls_configuration() {
        assert!(tls_from(&[]).unwrap().is_none());
        let empty = Path::new("");
        let vars = [(ENV_CACERT, empty), (ENV_CERT, empty), (ENV_KEY, empty)];
        assert!(tls_from(&vars).unwrap().is_none());
    }

    #[test]
    fn tls_variables_give_a_configuration_with_a_ca_and_optionally_an_identity() {
        let dir = certs();
        let (ca, cert, key) = (
            dir.path().join("ca.crt"),
            dir.path().join("admin.crt"),
            dir.path().join("admin.key"),
        );
        assert!(tls_from(&[(ENV_CACERT, &ca)]).unwrap().is_some());
        let all = [(ENV_CACERT, &*ca), (ENV_CERT, &*cert), (ENV_KEY, &*key)];
        assert!(tls_from(&all).unwrap().is_some());
    }

    #[test]
    fn a_client_certificate_without_its_key_or_a_key_without_its_certificate_is_an_error() {
        let dir = certs();
        let cert = dir.path().join("admin.crt");
        let e = tls_from(&[(ENV_CERT, &cert)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "FLOWCTL_CERT is set but FLOWCTL_KEY is not; a client certificate and its key go together"
        );
        let key = dir.path().join("admin.key");
        let e = tls_from(&[(ENV_KEY, &key), (ENV_CERT, Path::new(""))]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "FLOWCTL_KEY is set but FLOWCTL_CERT is not; a client certificate and its key go together"
        );
    }

    #[test]
    fn a_bad_tls_file_is_reported_with_its_variable_and_path() {
        let dir = certs();
        let missing = dir.path().join("missing.crt");
        let e = tls_from(&[(ENV_CACERT, &missing)]).unwrap_err();
        assert!(
            matches!(&e, Error::TlsFile { setting, .. } if setting == ENV_CACERT),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "cannot use FLOWCTL_CACERT");
        let source = std::error::Error::source(&e).unwrap().to_string();
        assert!(source.contains(&missing.display().to_string()), "{source}");

        // A key as the CA: not a certificate.
        let key = dir.path().join("admin.key");
        let e = tls_from(&[(ENV_CACERT, &key)]).unwrap_err();
        assert_eq!(e.to_string(), "cannot use FLOWCTL_CACERT");

        // The key of another certificate.
        let vars = [
            (ENV_CERT, &*dir.path().join("node-1.crt")),
            (ENV_KEY, &*dir.path().join("admin.key")),
        ];
        let e = tls_from(&vars).unwrap_err();
        assert_eq!(e.to_string(), "cannot use FLOWCTL_CERT and FLOWCTL_KEY");

        // A missing key file is the key's fault.
        let vars = [
            (ENV_CERT, &*dir.path().join("admin.crt")),
            (ENV_KEY, &*missing),
        ];
        assert_eq!(
            tls_from(&vars).unwrap_err().to_string(),
            "cannot use FLOWCTL_KEY"
        );
    }
}
