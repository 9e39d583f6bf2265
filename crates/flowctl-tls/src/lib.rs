//! TLS for flowctl: everything the control plane, its peers and its clients need to speak gRPC
//! over TLS, built on rustls with the `ring` provider (no OpenSSL, no aws-lc).
//!
//! - [`ServerTls`]: a rustls server configuration loaded from PEM files ([`TlsFiles`]), with a
//!   [`ClientAuth`] mode (none, optional or required client certificates) and an atomic
//!   [`ServerTls::reload`] for certificate rotation.
//! - [`incoming`]: turns a `TcpListener` into the stream of TLS connections that
//!   `tonic::transport::Server::serve_with_incoming_shutdown` takes.
//! - [`cert_identity`] and [`request_identity`]: the names (CN, DNS and IP SANs) in a verified
//!   client certificate, for authorization.
//! - [`client_config`]: a tonic `ClientTlsConfig` trusting one CA, optionally presenting a
//!   client certificate (mTLS).
//! - [`generate`]: the CA, node and admin certificates written by `flowctl certs init`.
//!
//! What it is not: a certificate authority service (no CSRs, no revocation lists, no renewal),
//! nor an authorization policy: it reports who a peer is, the application decides what the
//! peer may do.
//!
//! Invariants:
//! - Only the `ring` crypto provider is used, and it is passed explicitly, so nothing depends on
//!   a process-wide default provider being installed.
//! - A TLS server always offers ALPN `h2` and nothing else: it serves gRPC only.
//! - A failed reload leaves the previous configuration in place; a successful one affects only
//!   connections accepted afterwards.
//! - One bad or slow client cannot stop the accept loop: handshakes run concurrently, bounded in
//!   number and in time, and a failed one drops only its own connection.
//! - Errors name the file they are about.
//!
//! ```text
//!  client                 incoming() accept task           tonic server
//!    | --- TCP connect ---> | accept, TCP_NODELAY              |
//!    | <== TLS handshake ==> | (own task, 10 s limit)          |
//!    |                       | --- TlsStream (bounded chan) --> | peer_certs() in requests
//!    | <================== HTTP/2 (gRPC) ======================> |
//! ```

mod client;
mod generate;
mod identity;
mod pem;
mod server;

use std::path::PathBuf;

pub use client::client_config;
pub use generate::{generate, MAX_NODES};
pub use identity::{cert_identity, request_identity, CertIdentity};
pub use server::{
    incoming, ClientAuth, ServerTls, HANDSHAKE_TIMEOUT, INCOMING_CHANNEL_CAPACITY,
    MAX_PENDING_HANDSHAKES,
};

/// The PEM files of one TLS identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key of the leaf certificate (PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// The CA certificates that client certificates are verified against; required unless the
    /// server's [`ClientAuth`] is [`ClientAuth::None`].
    pub ca: Option<PathBuf>,
}

/// Why a TLS configuration could not be loaded, or certificates could not be generated.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("client authentication {client_auth:?} needs a CA file, and none was given")]
    MissingCa { client_auth: ClientAuth },
    #[error("cannot use certificate {cert} with key {key}: {source}")]
    Identity {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot verify client certificates with CA {path}: {source}")]
    ClientVerifier {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    #[error("cannot build a TLS configuration: {source}")]
    Config {
        #[source]
        source: rustls::Error,
    },
    #[error("invalid node count {nodes}: must be between 1 and {MAX_NODES}")]
    InvalidNodeCount { nodes: usize },
    #[error("no hosts given: a node certificate needs at least one host name or IP address")]
    NoHosts,
    #[error("invalid host {host:?}: neither an IP address nor a DNS name")]
    InvalidHost { host: String },
    #[error("refusing to overwrite existing file {path}")]
    AlreadyExists { path: PathBuf },
    #[error("cannot create directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot generate {path}: {source}")]
    Generate {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
