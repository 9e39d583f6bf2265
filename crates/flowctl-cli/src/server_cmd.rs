//! `flowctl server`: parse flags into a `ServerConfig`, bind, start tracing, run.

use anyhow::Context;
use clap::Args;
use flowctl_server::config::{DEFAULT_MAX_REQUEST_BYTES, DEFAULT_METRICS_PORT, DEFAULT_PORT};
use flowctl_server::ServerConfig;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

#[derive(Args, Debug)]
pub struct ServerArgs {
    /// gRPC port (all interfaces). Ignored when --listen is given.
    #[arg(long, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// gRPC listen address, HOST:PORT.
    #[arg(long)]
    listen: Option<String>,
    /// The HOST:PORT other nodes and clients use to reach this node (default: the listen
    /// address, with 127.0.0.1 for an unspecified host).
    #[arg(long)]
    advertise: Option<String>,
    /// Where the node keeps its Raft log, state and snapshots.
    #[arg(long, env = "FLOWCTL_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Members to ask to admit this node: HOST:PORT[,HOST:PORT...].
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
    /// Seconds a node may be silent before the leader moves its pipeline instances elsewhere.
    #[arg(long, default_value_t = 10.0)]
    node_grace: f64,
    /// Kafka bootstrap brokers (HOST:PORT,...) for pipelines that do not name their own in
    /// `spec.bus.brokers`.
    #[arg(long, value_delimiter = ',')]
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

pub async fn run(a: ServerArgs) -> anyhow::Result<()> {
    let listen = match &a.listen {
        Some(l) => resolve(l, "--listen")?,
        None => SocketAddr::from(([0, 0, 0, 0], a.port)),
    };
    let advertise = match &a.advertise {
        Some(adv) => adv.clone(),
        None if listen.ip().is_unspecified() => format!("127.0.0.1:{}", listen.port()),
        None => listen.to_string(),
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
    };
    cfg.validate().map_err(anyhow::Error::msg)?;
    if a.print_config {
        println!("{cfg:#?}");
        return Ok(());
    }
    init_tracing(a.log_json);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {} (gRPC)", cfg.listen))?;
    // A port of 0 binds a free port; advertise the real one.
    let mut cfg = cfg;
    if cfg.listen.port() == 0 {
        let real = listener.local_addr()?;
        cfg.listen = real;
        if a.advertise.is_none() {
            cfg.advertise = format!(
                "{}:{}",
                if real.ip().is_unspecified() {
                    "127.0.0.1".into()
                } else {
                    real.ip().to_string()
                },
                real.port()
            );
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
    flowctl_server::run(cfg, listener, metrics_listener, shutdown).await
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
