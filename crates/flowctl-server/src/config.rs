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
/// Default Kafka bootstrap brokers: Kafka's own default listener.
pub const DEFAULT_KAFKA_BROKERS: &str = "localhost:9092";

#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Where the gRPC port listens.
    pub listen: SocketAddr,
    /// The `host:port` clients and components use to reach this node.
    pub advertise: String,
    /// Where the peer port (node-to-node RPCs) listens.
    pub peer_listen: SocketAddr,
    /// The `host:port` other nodes use to reach this node's peer port.
    pub peer_advertise: String,
    pub data_dir: PathBuf,
    /// Members' peer addresses to ask to admit this node.
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
    /// The programs the process driver may start (`--allowed-commands`).
    pub allowed_commands: crate::deploy::AllowedCommands,
    /// The images the docker driver may run (`--allowed-images`); none by default.
    pub allowed_images: crate::deploy::AllowedImages,
    /// The user instances run as (`--run-as`).
    pub run_as: Option<crate::deploy::RunAs>,
    /// Serve gRPC server reflection (`--enable-reflection`), both v1 and v1alpha.
    pub enable_reflection: bool,
    /// Create the cluster with authentication on (`--auth`): an admin token in
    /// `<data-dir>/admin.token` and a peer secret in `<data-dir>/peer.token`.
    pub auth: bool,
    /// The cluster's peer secret, for a node joining a cluster that has one
    /// (`--peer-token-file`: a copy of the first node's `peer.token`).
    pub peer_token_file: Option<PathBuf>,
    /// Let callers without credentials use the component APIs (`--allow-anonymous-agents`).
    pub allow_anonymous_agents: bool,
    /// Audit records the cluster keeps (`--audit-keep`).
    pub audit_keep: u32,
    /// TLS on the public port (`--cert-file`, `--key-file`, `--trusted-ca-file`); `None`
    /// serves plaintext.
    pub tls: Option<flowctl_tls::TlsFiles>,
    /// Require a client certificate from `--trusted-ca-file` on the public port
    /// (`--client-cert-auth`). Without it, a certificate a client presents is still verified
    /// and authenticates it.
    pub client_cert_auth: bool,
    /// Mutual TLS on the peer port (`--peer-cert-file`, `--peer-key-file`,
    /// `--peer-trusted-ca-file`); `None` serves and calls peers in plaintext.
    pub peer_tls: Option<flowctl_tls::TlsFiles>,
}

impl ServerConfig {
    /// Checks cross-field rules that the argument parser cannot.
    pub fn validate(&self) -> Result<(), String> {
        for (flag, a) in [
            ("--advertise", &self.advertise),
            ("--peer-advertise", &self.peer_advertise),
        ] {
            // Port 0 (bind a free one) is resolved once bound.
            let zero = a.strip_suffix(":0").map(|h| format!("{h}:1"));
            if flowctl_raft::split_host_port(zero.as_deref().unwrap_or(a)).is_none() {
                return Err(format!("{flag} {a:?} must be HOST:PORT"));
            }
        }
        if self.peer_listen == self.listen && self.listen.port() != 0 {
            return Err(format!(
                "--peer-listen {} is the public address; node-to-node RPCs need a port of their own",
                self.peer_listen
            ));
        }
        if self.node_id == Some(0) {
            return Err("--node-id must not be 0".into());
        }
        for j in &self.join {
            if flowctl_raft::split_host_port(j).is_none() {
                return Err(format!(
                    "--join address {j:?} must be HOST:PORT (a member's peer address)"
                ));
            }
        }
        for b in &self.kafka_brokers {
            if !b.contains(':') {
                return Err(format!("--kafka-brokers entry {b:?} must be HOST:PORT"));
            }
        }
        if self.auth && !self.join.is_empty() {
            return Err(
                "--auth is for the first node of a new cluster; a joining node takes the cluster's setting (give it --peer-token-file)".into(),
            );
        }
        if self.audit_keep == 0 || self.audit_keep > flowctl_state::audit::MAX_AUDIT_KEEP {
            return Err(format!(
                "--audit-keep must be between 1 and {}",
                flowctl_state::audit::MAX_AUDIT_KEEP
            ));
        }
        if self.client_cert_auth && self.tls.as_ref().is_none_or(|t| t.ca.is_none()) {
            return Err(
                "--client-cert-auth needs --cert-file, --key-file and --trusted-ca-file".into(),
            );
        }
        if self.peer_tls.as_ref().is_some_and(|t| t.ca.is_none()) {
            return Err("peer TLS is mutual: --peer-trusted-ca-file is required".into());
        }
        if self.max_request_bytes < 1024 {
            return Err("--max-request-bytes must be at least 1024".into());
        }
        Ok(())
    }
}
