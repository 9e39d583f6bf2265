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
    /// A client for `addr` (`host:port`). Fails only if the address cannot form a URI.
    pub fn client(&self, addr: &str) -> Result<RaftServiceClient<Channel>, String> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let ch = match map.get(addr) {
            Some(ch) => ch.clone(),
            None => {
                let ep = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| format!("invalid peer address {addr:?}: {e}"))?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(10));
                let ch = ep.connect_lazy();
                map.insert(addr.to_owned(), ch.clone());
                ch
            }
        };
        Ok(RaftServiceClient::new(ch)
            .max_decoding_message_size(MAX_INTERNAL_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_INTERNAL_MESSAGE_BYTES))
    }
}
