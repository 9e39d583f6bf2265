//! A cache of gRPC channels to other nodes, keyed by address.

use flowctl_proto::internal::v1::raft_service_client::RaftServiceClient;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Largest internal message: AppendEntries batches and snapshot chunks stay well below it.
pub const MAX_INTERNAL_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

/// Channels are created lazily and reused; tonic reconnects them as needed.
#[derive(Clone, Default)]
pub struct Peers {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl Peers {
    /// A shared channel to `addr` (`host:port`), for any internal service. Fails only if the
    /// address cannot form a URI.
    pub fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = map.get(addr) {
            return Ok(ch.clone());
        }
        let ep = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("invalid peer address {addr:?}: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10));
        let ch = ep.connect_lazy();
        map.insert(addr.to_owned(), ch.clone());
        Ok(ch)
    }

    /// A Raft-service client for `addr`.
    pub fn client(&self, addr: &str) -> Result<RaftServiceClient<Channel>, String> {
        Ok(RaftServiceClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_INTERNAL_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_INTERNAL_MESSAGE_BYTES))
    }
}
