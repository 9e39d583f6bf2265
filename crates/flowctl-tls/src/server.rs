//! The server side: a reloadable rustls configuration and the TLS accept stream for tonic.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::{pem, Error, TlsFiles};

/// How long a client may take to complete its TLS handshake before its connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many TLS handshakes may be in flight at once; beyond that, [`incoming`] stops accepting
/// until one finishes.
pub const MAX_PENDING_HANDSHAKES: usize = 256;
/// How many established TLS connections may wait for the server to take them.
pub const INCOMING_CHANNEL_CAPACITY: usize = 64;

/// The first and the longest pause after a failed `accept` (such as `EMFILE`); the pause doubles
/// on each consecutive failure so that an exhausted process does not spin.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(50);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The only application protocol a flowctl TLS server speaks: HTTP/2, for gRPC.
const ALPN_H2: &[u8] = b"h2";

/// Whether a TLS server asks its clients for certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate is requested.
    None,
    /// A client certificate is requested and, if presented, must be issued by the CA; a client
    /// without one is let in, and the application authenticates it some other way (a token).
    Optional,
    /// Mutual TLS: a client without a certificate issued by the CA fails the handshake.
    Required,
}

/// A TLS server configuration loaded from PEM files, shared by every listener that uses it.
///
/// Cloning is cheap (an `Arc`). [`ServerTls::reload`] swaps the configuration for connections
/// accepted afterwards; connections already established keep the one they were accepted with.
#[derive(Clone)]
pub struct ServerTls {
    inner: Arc<Inner>,
}

struct Inner {
    files: TlsFiles,
    client_auth: ClientAuth,
    /// Held only to clone or replace the `Arc`, never across an `.await`.
    config: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    /// Reads the certificate chain, key and (for [`ClientAuth::Optional`] and
    /// [`ClientAuth::Required`]) the CA from `files`.
    ///
    /// This does blocking file I/O, like [`ServerTls::reload`]; the files are small.
    pub fn load(files: TlsFiles, client_auth: ClientAuth) -> Result<ServerTls, Error> {
        let config = build_config(&files, client_auth)?;
        Ok(ServerTls {
            inner: Arc::new(Inner {
                files,
                client_auth,
                config: RwLock::new(Arc::new(config)),
            }),
        })
    }

    /// Re-reads the same files and, if they make a valid configuration, uses it for every
    /// connection accepted from now on. On error the previous configuration stays in use.
    pub fn reload(&self) -> Result<(), Error> {
        let config = Arc::new(build_config(&self.inner.files, self.inner.client_auth)?);
        // The lock guards only an `Arc`, which is valid even if a writer panicked.
        *self
            .inner
            .config
            .write()
            .unwrap_or_else(PoisonError::into_inner) = config;
        Ok(())
    }

    /// The files this configuration is loaded from.
    pub fn files(&self) -> &TlsFiles {
        &self.inner.files
    }

    /// The client authentication mode this configuration was loaded with.
    pub fn client_auth(&self) -> ClientAuth {
        self.inner.client_auth
    }

    /// The configuration in use now, for a server other than [`incoming`] (such as an HTTP one).
    pub fn current(&self) -> Arc<ServerConfig> {
        self.inner
            .config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.inner.files)
            .field("client_auth", &self.inner.client_auth)
            .finish_non_exhaustive()
    }
}

fn build_config(files: &TlsFiles, client_auth: ClientAuth) -> Result<ServerConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = pem::certs(&files.cert)?;
    let key = pem::key(&files.key)?;

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| Error::Config { source })?;
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional | ClientAuth::Required => {
            let ca = files
                .ca
                .as_deref()
                .ok_or(Error::MissingCa { client_auth })?;
            let roots = pem::roots_from(ca, &pem::read(ca)?)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match client_auth {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            let verifier = verifier.build().map_err(|source| Error::ClientVerifier {
                path: ca.to_owned(),
                source,
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|source| Error::Identity {
            cert: files.cert.clone(),
            key: files.key.clone(),
            source,
        })?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// The TLS connections accepted on `listener`, for
/// `tonic::transport::Server::serve_with_incoming_shutdown`.
///
/// Accepted sockets get `TCP_NODELAY`. Handshakes run concurrently in their own tasks, at most
/// [`MAX_PENDING_HANDSHAKES`] at once and each for at most [`HANDSHAKE_TIMEOUT`], so a slow or
/// silent client delays nobody else. A connection whose handshake fails is dropped and logged at
/// debug level; a failed `accept` (such as `EMFILE`) is logged and retried after a short
/// backoff. Neither ends the stream: it never yields an error and ends only when dropped.
///
/// Each connection uses the configuration that `tls` holds when it is accepted, so a
/// [`ServerTls::reload`] takes effect for the next connection.
///
/// The tasks behind the stream belong to it: dropping the stream stops accepting, closes the
/// listener and aborts the handshakes in flight. Must be called within a Tokio runtime.
pub fn incoming(
    listener: TcpListener,
    tls: ServerTls,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, io::Error>> + Send + Unpin + 'static {
    let (tx, rx) = mpsc::channel(INCOMING_CHANNEL_CAPACITY);
    let span = tracing::debug_span!(
        "tls_incoming",
        local_addr = %listener
            .local_addr()
            .map_or_else(|e| e.to_string(), |a| a.to_string()),
    );
    let accept = tokio::spawn(accept_loop(listener, tls, tx).instrument(span));
    Incoming { rx, accept }
}

/// The stream returned by [`incoming`]; it owns the accept task.
struct Incoming {
    rx: mpsc::Receiver<Result<TlsStream<TcpStream>, io::Error>>,
    accept: JoinHandle<()>,
}

impl Stream for Incoming {
    type Item = Result<TlsStream<TcpStream>, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

type Sender = mpsc::Sender<Result<TlsStream<TcpStream>, io::Error>>;

async fn accept_loop(listener: TcpListener, tls: ServerTls, tx: Sender) {
    // Dropping the set (when this task ends or is aborted) aborts the handshakes in flight.
    let mut handshakes = JoinSet::new();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        tokio::select! {
            () = tx.closed() => return,
            Some(joined) = handshakes.join_next() => {
                if let Err(error) = joined {
                    if error.is_panic() {
                        tracing::error!(%error, "TLS handshake task panicked");
                    }
                }
            }
            accepted = listener.accept(), if handshakes.len() < MAX_PENDING_HANDSHAKES => {
                match accepted {
                    Ok((stream, peer)) => {
                        backoff = ACCEPT_BACKOFF_MIN;
                        let acceptor = TlsAcceptor::from(tls.current());
                        handshakes.spawn(
                            handshake(stream, peer, acceptor, tx.clone()).in_current_span(),
                        );
                    }
                    Err(error) => {
                        tracing::warn!(%error, ?backoff, "accepting a TCP connection failed; backing off");
                        tokio::select! {
                            () = tx.closed() => return,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    }
                }
            }
        }
    }
}

async fn handshake(stream: TcpStream, peer: SocketAddr, acceptor: TlsAcceptor, tx: Sender) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%peer, %error, "cannot set TCP_NODELAY");
    }
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => {
            // A closed channel means the server is shutting down; the connection is dropped.
            let _ = tx.send(Ok(tls)).await;
        }
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "TLS handshake failed; connection dropped");
        }
        Err(_elapsed) => {
            tracing::debug!(%peer, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out; connection dropped");
        }
    }
}
