//! A cache of gRPC channels to other nodes, keyed by address.

use flowctl_proto::auth::{Bearer, PEER_CLUSTER_ID, PEER_NODE_ID};
use flowctl_proto::internal::v1::raft_service_client::RaftServiceClient;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// Largest internal message: AppendEntries batches and snapshot chunks stay well below it.
pub const MAX_INTERNAL_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

/// A channel to another node's peer port that names this node on every call.
pub type PeerChannel = InterceptedService<Channel, PeerCredentials>;

/// What every node-to-node call carries: the peer secret (with `--auth`), this node's id and
/// its cluster id, which the receiver checks (see `flowctl-server`'s peer guard).
#[derive(Clone)]
pub struct PeerCredentials {
    bearer: Bearer,
    node_id: AsciiMetadataValue,
    cluster_id: Arc<RwLock<String>>,
}

impl Interceptor for PeerCredentials {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut req = self.bearer.call(req)?;
        req.metadata_mut()
            .insert(PEER_NODE_ID, self.node_id.clone());
        let cluster = self
            .cluster_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        // Cluster ids are generated hex strings; anything else is never sent.
        if let Ok(v) = cluster.parse::<AsciiMetadataValue>() {
            req.metadata_mut().insert(PEER_CLUSTER_ID, v);
        }
        Ok(req)
    }
}

/// Channels are created lazily and reused; tonic reconnects them as needed. Every call carries
/// [`PeerCredentials`].
#[derive(Clone)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    credentials: PeerCredentials,
    tls: Option<ClientTlsConfig>,
    local_ip: Option<std::net::IpAddr>,
}

impl Peers {
    pub fn new(bearer: Bearer, node_id: u64, cluster_id: Arc<RwLock<String>>) -> Self {
        Peers {
            channels: Arc::default(),
            credentials: PeerCredentials {
                bearer,
                node_id: AsciiMetadataValue::from(node_id),
                cluster_id,
            },
            tls: None,
            local_ip: None,
        }
    }

    /// Calls other nodes from `ip` (this node's peer listen address), `None` for the
    /// system's choice.
    pub fn with_local_ip(mut self, ip: Option<std::net::IpAddr>) -> Self {
        self.local_ip = ip;
        self
    }

    /// Calls other nodes over TLS with `tls` (the peer CA, and this node's certificate for
    /// their mTLS check).
    pub fn with_tls(mut self, tls: Option<ClientTlsConfig>) -> Self {
        self.tls = tls;
        self
    }

    /// A shared channel to `addr` (`host:port`, a peer address), for any internal service,
    /// with this node's [`PeerCredentials`]. Fails only if the address cannot form a URI.
    pub fn channel(&self, addr: &str) -> Result<PeerChannel, String> {
        Ok(InterceptedService::new(
            self.raw_channel(addr)?,
            self.credentials.clone(),
        ))
    }

    fn raw_channel(&self, addr: &str) -> Result<Channel, String> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = map.get(addr) {
            return Ok(ch.clone());
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("invalid peer address {addr:?}: {e}"))?;
        if let Some(tls) = &self.tls {
            ep = ep
                .tls_config(tls.clone())
                .map_err(|e| format!("TLS for peer {addr}: {e}"))?;
        }
        let ep = ep
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .local_address(self.local_ip)
            .http2_keep_alive_interval(Duration::from_secs(10));
        let ch = ep.connect_lazy();
        map.insert(addr.to_owned(), ch.clone());
        Ok(ch)
    }

    /// A Raft-service client for `addr`.
    pub fn client(&self, addr: &str) -> Result<RaftServiceClient<PeerChannel>, String> {
        Ok(RaftServiceClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_INTERNAL_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_INTERNAL_MESSAGE_BYTES))
    }
}
