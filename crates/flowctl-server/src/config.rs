//! The validated configuration of one node.

use flowctl_raft::RaftOptions;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Default gRPC port, as in the original control plane.
pub const DEFAULT_PORT: u16 = 8080;
/// Default metrics/health HTTP port.
pub const DEFAULT_METRICS_PORT: u16 = 9090;
/// Default largest accepted public request.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the gRPC port listens.
    pub listen: SocketAddr,
    /// The `host:port` other nodes and clients use to reach this node.
    pub advertise: String,
    pub data_dir: PathBuf,
    /// Members to ask to admit this node.
    pub join: Vec<String>,
    /// Where `/metrics`, `/livez` and `/readyz` listen; `None` turns them off.
    pub metrics_listen: Option<SocketAddr>,
    /// Use this node id for a fresh data dir (else a random one is generated).
    pub node_id: Option<u64>,
    pub max_request_bytes: usize,
    /// How long a fresh node keeps trying its `--join` addresses.
    pub join_timeout: std::time::Duration,
    /// A component without heartbeats for this long is marked unhealthy.
    pub heartbeat_ttl: std::time::Duration,
    /// A component without heartbeats for this long is unregistered; `None` never.
    pub component_expiry: Option<std::time::Duration>,
    /// A node silent for this long has its pipeline instances placed elsewhere.
    pub node_grace: std::time::Duration,
    /// The Kafka brokers of pipelines whose `spec.bus.brokers` is empty; empty: none.
    pub kafka_brokers: Vec<String>,
    /// DLQ index entries older than this are dropped; `None` keeps them.
    pub dlq_retention: Option<std::time::Duration>,
    pub raft: RaftOptions,
}

impl ServerConfig {
    /// Checks cross-field rules that the argument parser cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.advertise.is_empty() || !self.advertise.contains(':') {
            return Err(format!(
                "--advertise {:?} must be HOST:PORT",
                self.advertise
            ));
        }
        if self.node_id == Some(0) {
            return Err("--node-id must not be 0".into());
        }
        for j in &self.join {
            if !j.contains(':') {
                return Err(format!("--join address {j:?} must be HOST:PORT"));
            }
        }
        for b in &self.kafka_brokers {
            if !b.contains(':') {
                return Err(format!("--kafka-brokers entry {b:?} must be HOST:PORT"));
            }
        }
        if self.max_request_bytes < 1024 {
            return Err("--max-request-bytes must be at least 1024".into());
        }
        Ok(())
    }
}
