//! `flowctl server`: parse flags into a `ServerConfig`, bind, start tracing, run.

use anyhow::Context;
use clap::Args;
use flowctl_server::config::{
    DEFAULT_KAFKA_BROKERS, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_METRICS_PORT, DEFAULT_PORT,
};
use flowctl_server::deploy::{AllowedCommands, AllowedImages, RunAs};
use flowctl_server::ServerConfig;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// gRPC port, on loopback (127.0.0.1) only. Ignored when --listen is given.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// gRPC listen address, HOST:PORT. A non-loopback address needs TLS (--cert-file,
    /// --key-file) and authentication (--auth, or --peer-token-file on a joining node), or
    /// --insecure.
    #[arg(long)]
    listen: Option<String>,
    /// Allow listening on a non-loopback address without TLS and authentication (peer port:
    /// without peer TLS), warned about at every start.
    #[arg(long)]
    insecure: bool,
    /// The public port's TLS certificate (PEM, leaf first); with --key-file.
    #[arg(long)]
    cert_file: Option<PathBuf>,
    /// The public port's TLS private key (PEM).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// The CA that client certificates must come from. A verified client certificate whose
    /// CN (or a DNS name) is flowctl-admin, flowctl-operator, flowctl-reader or flowctl-agent
    /// authenticates its holder with that role.
    #[arg(long)]
    trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate from --trusted-ca-file on the public port (mTLS).
    #[arg(long)]
    client_cert_auth: bool,
    /// The peer port's certificate (PEM), both served and presented to other nodes; it must
    /// name this node's peer address (IP or DNS SAN).
    #[arg(long)]
    peer_cert_file: Option<PathBuf>,
    /// The peer port's private key (PEM).
    #[arg(long)]
    peer_key_file: Option<PathBuf>,
    /// The CA that other nodes' peer certificates must come from; peers then require and
    /// verify each other's certificates (mTLS).
    #[arg(long)]
    peer_trusted_ca_file: Option<PathBuf>,
    /// Serve gRPC server reflection (v1 and v1alpha); off by default.
    #[arg(long)]
    enable_reflection: bool,
    /// Programs the process driver may start, as glob patterns over their canonical paths
    /// (`*` matches anything, `/` included; `*` alone allows every program). Default: the
    /// directory of this flowctl binary.
    #[arg(long, value_delimiter = ',')]
    allowed_commands: Vec<String>,
    /// Images the docker driver may run, as glob patterns over the image reference as the
    /// pipeline writes it (`flowctl/*`; `*` allows every image). Default: none, so this node
    /// runs no containers.
    #[arg(long, value_delimiter = ',')]
    allowed_images: Vec<String>,
    /// Run component instances as this user (NAME or UID[:GID]); needs root.
    #[arg(long)]
    run_as: Option<String>,
    /// Create the cluster with authentication on: the first node writes an admin token to
    /// <data-dir>/admin.token and the peer secret to <data-dir>/peer.token (both mode 0600).
    #[arg(long)]
    auth: bool,
    /// The cluster's peer secret, for a node joining a cluster created with --auth: a copy
    /// of the first node's <data-dir>/peer.token.
    #[arg(long)]
    peer_token_file: Option<PathBuf>,
    /// Let callers without credentials use the component APIs (register, heartbeat,
    /// discover, chunk streams) and nothing else, for components that send no token.
    #[arg(long)]
    allow_anonymous_agents: bool,
    /// Audit records (accepted writes: who, which method, when, through which node) the
    /// cluster keeps; the oldest go first. `flowctl audit ls` shows them.
    #[arg(long, default_value_t = flowctl_server::audit::DEFAULT_AUDIT_KEEP)]
    audit_keep: u32,
    /// The encoding this node writes to its log, its state and other nodes: 2 (MessagePack,
    /// this release's) or 1 (JSON, what releases before it wrote and all they can read).
    /// Use 1 on upgraded nodes while a cluster still has members of an earlier release, then
    /// restart them with 2. Every node reads both.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    codec_version: u8,
    /// The HOST:PORT clients and components use to reach this node (default: the listen
    /// address, with 127.0.0.1 for an unspecified host).
    #[arg(long)]
    advertise: Option<String>,
    /// Where node-to-node RPCs (Raft, forwarding, membership, relays) listen, HOST:PORT
    /// (default: the listen host and the next port, e.g. 127.0.0.1:8081). They are not
    /// served on the public port.
    #[arg(long)]
    peer_listen: Option<String>,
    /// The HOST:PORT other nodes use to reach the peer port (default: the advertised host
    /// with the peer port).
    #[arg(long)]
    peer_advertise: Option<String>,
    /// Where the node keeps its Raft log, state and snapshots.
    #[arg(long, env = "FLOWCTL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Members to ask to admit this node, by their peer addresses (the public port + 1 by
    /// default): HOST:PORT[,HOST:PORT...].
    #[arg(long, value_delimiter = ',')]
    join: Vec<String>,
    /// HTTP port for /metrics, /livez and /readyz; 0 turns it off.
    #[arg(long, default_value_t = DEFAULT_METRICS_PORT)]
    metrics_port: u16,
    /// Host the metrics port binds to (default: the gRPC listen host).
    #[arg(long)]
    metrics_host: Option<String>,
    /// Node id for a new data dir (default: generated once and kept in the data dir).
    #[arg(long)]
    node_id: Option<u64>,
    /// Largest public request accepted, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_REQUEST_BYTES)]
    max_request_bytes: usize,
    /// Seconds a new node keeps trying its --join addresses before it gives up.
    #[arg(long, default_value_t = 30)]
    join_timeout: u64,
    /// Mark a component unhealthy after this many seconds without a heartbeat.
    #[arg(long, default_value_t = 30.0)]
    heartbeat_ttl: f64,
    /// Unregister a component after this many hours without a heartbeat (0 = never).
    #[arg(long, default_value_t = 24.0)]
    component_expiry: f64,
    /// Seconds without a quorum after which a node stops its pipeline instances (fencing); the
    /// leader moves a silent node's instances 9 s after that.
    #[arg(long, default_value_t = 10.0)]
    node_grace: f64,
    /// Kafka bootstrap brokers (HOST:PORT,...) for pipelines that do not name their own in
    /// `spec.bus.brokers`; Kafka's own default, localhost:9092, unless given. An empty value
    /// (`--kafka-brokers=`) means none: pipelines without brokers then run with no topics.
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_KAFKA_BROKERS)]
    kafka_brokers: Vec<String>,
    /// Drop DLQ index entries older than this many hours (0 = keep them).
    #[arg(long, default_value_t = 168.0)]
    dlq_retention: f64,
    /// Build a snapshot and purge the log every this many applied entries.
    #[arg(long, default_value_t = 10_000)]
    snapshot_threshold: u64,
    /// Entries kept in the log behind a snapshot.
    #[arg(long, default_value_t = 1_000)]
    snapshot_keep_logs: u64,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
    /// Print the resolved configuration and exit.
    #[arg(long)]
    print_config: bool,
}

fn resolve(addr: &str, what: &str) -> anyhow::Result<SocketAddr> {
    addr.to_socket_addrs()
        .with_context(|| format!("{what} {addr:?} is not a valid HOST:PORT"))?
        .next()
        .with_context(|| format!("{what} {addr:?} does not resolve"))
}

/// A certificate and key given together (or neither), with an optional CA.
fn tls_files(
    (cert_flag, cert): (&str, &Option<PathBuf>),
    (key_flag, key): (&str, &Option<PathBuf>),
    ca: &Option<PathBuf>,
) -> anyhow::Result<Option<flowctl_tls::TlsFiles>> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(flowctl_tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            ca: ca.clone(),
        })),
        (None, None) if ca.is_none() => Ok(None),
        (None, None) => anyhow::bail!("a trusted CA file needs {cert_flag} and {key_flag}"),
        (Some(_), None) => anyhow::bail!("{cert_flag} needs {key_flag}"),
        (None, Some(_)) => anyhow::bail!("{key_flag} needs {cert_flag}"),
    }
}

/// The address others use for a bound address: 127.0.0.1 for an unspecified host.
fn advertised(l: SocketAddr) -> String {
    if l.ip().is_unspecified() {
        format!("127.0.0.1:{}", l.port())
    } else {
        l.to_string()
    }
}

fn seconds(flag: &str, v: f64) -> anyhow::Result<std::time::Duration> {
    if !v.is_finite() || v <= 0.0 {
        anyhow::bail!("{flag} must be a positive number, got {v}");
    }
    Ok(std::time::Duration::from_secs_f64(v))
}

fn default_data_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".flowctl").join("data"),
        None => PathBuf::from(".flowctl/data"),
    }
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLOWCTL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    // Colour only on a terminal: a log file (flowctl dev up, systemd) gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

pub async fn run(a: ServerArgs) -> anyhow::Result<()> {
    let listen = match &a.listen {
        Some(l) => resolve(l, "--listen")?,
        None => SocketAddr::from(([127, 0, 0, 1], a.port)),
    };
    let peer_listen = match &a.peer_listen {
        Some(l) => resolve(l, "--peer-listen")?,
        None if listen.port() == 0 => SocketAddr::new(listen.ip(), 0),
        None => SocketAddr::new(
            listen.ip(),
            listen
                .port()
                .checked_add(1)
                .context("--listen uses the last port; give --peer-listen")?,
        ),
    };
    let tls = tls_files(
        ("--cert-file", &a.cert_file),
        ("--key-file", &a.key_file),
        &a.trusted_ca_file,
    )?;
    let peer_tls = tls_files(
        ("--peer-cert-file", &a.peer_cert_file),
        ("--peer-key-file", &a.peer_key_file),
        &a.peer_trusted_ca_file,
    )?;
    let authenticated = a.auth || a.peer_token_file.is_some();
    let secured = tls.is_some() && authenticated;
    if !(listen.ip().is_loopback() || a.insecure || secured) {
        anyhow::bail!(
            "--listen {listen} is not a loopback address: it needs TLS (--cert-file, --key-file) and authentication (--auth, or --peer-token-file when joining), or --insecure to serve it anyway"
        );
    }
    if !peer_listen.ip().is_loopback() && !a.insecure && peer_tls.is_none() {
        anyhow::bail!(
            "--peer-listen {peer_listen} is not a loopback address: it needs peer TLS (--peer-cert-file, --peer-key-file, --peer-trusted-ca-file), or --insecure to serve it anyway"
        );
    }
    let advertise = match &a.advertise {
        Some(adv) => adv.clone(),
        None => advertised(listen),
    };
    let peer_advertise = match (&a.peer_advertise, &a.advertise) {
        (Some(adv), _) => adv.clone(),
        (None, Some(adv)) if peer_listen.port() != 0 => {
            let host = flowctl_raft::split_host_port(adv)
                .map(|(h, _)| h.to_owned())
                .with_context(|| format!("--advertise {adv:?} must be HOST:PORT"))?;
            format!("{host}:{}", peer_listen.port())
        }
        _ => advertised(peer_listen),
    };
    let metrics_listen = if a.metrics_port == 0 {
        None
    } else {
        let host = a
            .metrics_host
            .clone()
            .unwrap_or_else(|| listen.ip().to_string());
        Some(resolve(
            &format!("{host}:{}", a.metrics_port),
            "metrics address",
        )?)
    };
    let cfg = ServerConfig {
        listen,
        advertise,
        peer_listen,
        peer_advertise,
        data_dir: a.data_dir.clone().unwrap_or_else(default_data_dir),
        join: a
            .join
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        metrics_listen,
        node_id: a.node_id,
        max_request_bytes: a.max_request_bytes,
        join_timeout: std::time::Duration::from_secs(a.join_timeout),
        heartbeat_ttl: seconds("--heartbeat-ttl", a.heartbeat_ttl)?,
        node_grace: seconds("--node-grace", a.node_grace)?,
        kafka_brokers: a
            .kafka_brokers
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        dlq_retention: if a.dlq_retention == 0.0 {
            None
        } else {
            Some(seconds("--dlq-retention", a.dlq_retention * 3600.0)?)
        },
        component_expiry: if a.component_expiry == 0.0 {
            None
        } else {
            Some(seconds("--component-expiry", a.component_expiry * 3600.0)?)
        },
        raft: flowctl_raft::RaftOptions {
            snapshot_threshold: a.snapshot_threshold,
            keep_logs_after_snapshot: a.snapshot_keep_logs,
            ..Default::default()
        },
        allowed_commands: if a.allowed_commands.is_empty() {
            AllowedCommands::beside_flowctl()
        } else {
            AllowedCommands::new(a.allowed_commands.clone())
        }
        .map_err(anyhow::Error::msg)?,
        allowed_images: AllowedImages::new(a.allowed_images.clone()).map_err(anyhow::Error::msg)?,
        run_as: a
            .run_as
            .as_deref()
            .map(RunAs::parse)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        enable_reflection: a.enable_reflection,
        auth: a.auth,
        peer_token_file: a.peer_token_file.clone(),
        allow_anonymous_agents: a.allow_anonymous_agents,
        audit_keep: a.audit_keep,
        tls,
        client_cert_auth: a.client_cert_auth,
        peer_tls,
    };
    cfg.validate().map_err(anyhow::Error::msg)?;
    flowctl_state::codec::set_write_version(a.codec_version).map_err(anyhow::Error::msg)?;
    if a.print_config {
        println!("{cfg:#?}");
        println!(
            "codec version written: {}",
            flowctl_state::codec::write_version()
        );
        return Ok(());
    }
    init_tracing(a.log_json);
    if !(cfg.listen.ip().is_loopback() || secured) {
        tracing::warn!(listen = %cfg.listen, "serving a non-loopback address without TLS and authentication (--insecure): anyone on the network can read tokens off the wire, or change the cluster when authentication is off");
    }
    if !cfg.peer_listen.ip().is_loopback() && cfg.peer_tls.is_none() {
        tracing::warn!(peer_listen = %cfg.peer_listen, "serving the peer port on a non-loopback address without peer TLS (--insecure): anyone on the network can read the peer secret off the wire");
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {} (gRPC)", cfg.listen))?;
    let peer_listener = tokio::net::TcpListener::bind(cfg.peer_listen)
        .await
        .with_context(|| format!("cannot listen on {} (peer port)", cfg.peer_listen))?;
    // A port of 0 binds a free port; advertise the real one.
    let mut cfg = cfg;
    if cfg.listen.port() == 0 {
        cfg.listen = listener.local_addr()?;
        if a.advertise.is_none() {
            cfg.advertise = advertised(cfg.listen);
        }
    }
    if cfg.peer_listen.port() == 0 {
        cfg.peer_listen = peer_listener.local_addr()?;
        if a.peer_advertise.is_none() {
            cfg.peer_advertise = match flowctl_raft::split_host_port(&cfg.advertise) {
                Some((host, _)) if a.advertise.is_some() => {
                    format!("{host}:{}", cfg.peer_listen.port())
                }
                _ => advertised(cfg.peer_listen),
            };
        }
    }
    let metrics_listener = match cfg.metrics_listen {
        Some(m) => Some(
            tokio::net::TcpListener::bind(m)
                .await
                .with_context(|| format!("cannot listen on {m} (metrics)"))?,
        ),
        None => None,
    };
    let shutdown = CancellationToken::new();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received");
            shutdown.cancel();
        });
    }
    let listeners = flowctl_server::Listeners {
        public: listener,
        peer: peer_listener,
        metrics: metrics_listener,
    };
    flowctl_server::run(cfg, listeners, shutdown).await
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
