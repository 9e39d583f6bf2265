//! The component-side SDK of flowctl: what a source, processor or consumer links to so that the
//! control plane knows it exists and how it is doing.
//!
//! ```no_run
//! # async fn demo() -> Result<(), flowctl_agent::Error> {
//! use flowctl_agent::{Agent, AgentConfig, CancellationToken, ComponentDescription, HealthStatus};
//!
//! let config = AgentConfig::from_env()?; // ENABLE_FLOWCTL, FLOWCTL_ENDPOINT, ...
//! let component = ComponentDescription::processor("ttp-processor")
//!     .with_input_event_type("stellar.ledger.v1.LedgerCloseMeta")
//!     .with_output_event_type("token_transfer.v1.TokenTransferEvent");
//! let agent = Agent::start(config, component, CancellationToken::new()).await?;
//! agent.set_health(HealthStatus::Healthy);
//! agent.counter("events_processed").add(1);
//! agent.shutdown().await; // unregisters
//! # Ok(()) }
//! ```
//!
//! What it does: reads its configuration from the environment the deployer sets
//! ([`AgentConfig::from_env`]), including an optional bearer token (`FLOWCTL_TOKEN`) that every
//! control-plane call carries; registers with any node of a flowctl cluster, retrying with
//! backoff and jitter and failing over across endpoints; heartbeats on a jittered interval with
//! the component's health and counters; registers again when the control plane answers a
//! heartbeat with `NOT_FOUND`; unregisters on shutdown; and serves `/health` (JSON) and
//! `/metrics` (Prometheus text) over HTTP. It speaks both wire-compatible APIs of the original
//! Go flowctl: `flowctl.v1.ControlPlaneService` (default) and the legacy `flowctl.ControlPlane`
//! (`FLOWCTL_API=legacy`).
//!
//! For range replay jobs, [`AgentHandle::chunk_commands`] opens the stream of chunk commands the
//! control plane assigns to this instance and [`AgentHandle::report_chunk`] reports their
//! progress (see [`chunks`]).
//!
//! What it is not: a data-plane client (it moves no events), a metrics library for the whole
//! process (its registry holds the component's own counters; it installs no global recorder),
//! or a supervisor (it never exits or restarts the component).
//!
//! Invariants:
//! - The control plane being down never stops the component: [`Agent::start`] returns once the
//!   health server listens, and registration keeps retrying in the background.
//! - Every control-plane call is bounded by `request_timeout`; every retry loop backs off with
//!   jitter; health changes bring a heartbeat forward, but at most once per
//!   [`MIN_HEARTBEAT_GAP`].
//! - Background work is two tasks (three with chunk commands) owned by a `TaskTracker` under
//!   the caller's `CancellationToken`; [`AgentHandle::shutdown`] returns only after all ended.
//!   The one queue in the agent, of chunk commands, is bounded ([`CHUNK_COMMAND_CAPACITY`]), so
//!   nothing grows without bound (the metric registry is capped at [`MAX_METRICS`] names, the
//!   chunk de-duplication at [`REMEMBERED_ASSIGNMENTS`]).
//! - A re-registration asks for the same service id as the first one, so the component keeps
//!   its identity across a control-plane restart.

mod agent;
pub mod chunks;
mod component;
mod config;
mod control_plane;
mod http;
mod metrics;

pub use agent::{
    Agent, AgentHandle, FIRST_REGISTER_BACKOFF, HEARTBEAT_JITTER, MAX_REGISTER_BACKOFF,
    MIN_HEARTBEAT_GAP,
};
pub use chunks::{
    ChunkAttempt, ChunkCommand, ChunkCommands, ChunkProgress, ChunkReport, ReplayJobId,
    CHUNK_COMMAND_CAPACITY, FIRST_REPORT_BACKOFF, FIRST_WATCH_BACKOFF, MAX_REPORT_BACKOFF,
    MAX_WATCH_BACKOFF, REMEMBERED_ASSIGNMENTS, REPORT_TRIES,
};
pub use component::{ComponentDescription, ComponentKind, HealthStatus};
pub use config::{
    parse_go_duration, AgentConfig, Api, BearerToken, ComponentId, EnvProblem, DEFAULT_ENDPOINT,
    DEFAULT_HEALTH_HOST, DEFAULT_HEARTBEAT_INTERVAL, DEFAULT_REQUEST_TIMEOUT, ENV_API,
    ENV_COMPONENT_ID, ENV_ENABLE, ENV_ENDPOINT, ENV_EPOCH, ENV_HEALTH_HOST, ENV_HEALTH_PORT,
    ENV_HEARTBEAT_INTERVAL, ENV_HEARTBEAT_INTERVAL_MS, ENV_REQUEST_TIMEOUT, ENV_TOKEN, ENV_VARS,
    REDACTED,
};
pub use control_plane::{Registration, ServiceId, HEALTH_ENDPOINT_METADATA_KEY};
pub use http::HTTP_SHUTDOWN_GRACE;
pub use metrics::{sanitize as sanitize_metric_name, Counter, Gauge, MAX_METRICS};
pub use tokio_util::sync::CancellationToken;

use std::net::SocketAddr;
use std::time::Duration;

/// Errors of the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One or more environment variables have bad values; each problem names its variable.
    #[error("invalid agent environment: {}", join(problems))]
    Config { problems: Vec<EnvProblem> },
    #[error("invalid control-plane endpoint list")]
    Endpoints(#[source] flowctl_client::Error),
    /// A TLS file (FLOWCTL_CACERT, FLOWCTL_CERT, FLOWCTL_KEY) cannot be used.
    #[error("invalid control-plane TLS setting")]
    Tls(#[source] flowctl_client::Error),
    /// The control-plane token cannot be sent (the message never contains it).
    #[error("invalid control-plane token ({ENV_TOKEN})")]
    Token(#[source] flowctl_client::Error),
    #[error("cannot bind the health server to {addr}")]
    BindHealth {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Registration was asked for, but `ENABLE_FLOWCTL` is not `true`.
    #[error("the flowctl control plane is disabled (ENABLE_FLOWCTL is not true)")]
    Disabled,
    #[error("not registered with the control plane within {waited:?}")]
    NotRegistered { waited: Duration },
    #[error("the agent has stopped")]
    Stopped,
    /// [`AgentHandle::chunk_commands`] was called before on this agent.
    #[error("this agent's chunk commands are already being watched")]
    ChunksAlreadyWatched,
    /// A chunk report was refused (`NOT_FOUND`, `FAILED_PRECONDITION`, ...) or no node took it
    /// within the tries.
    #[error("reporting {chunk} failed after {tries} tries ({code:?})", code = .source.code())]
    ChunkReport {
        chunk: ChunkAttempt,
        tries: u32,
        #[source]
        source: tonic::Status,
    },
}

fn join(problems: &[EnvProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C): what a component waits on to shut down gracefully.
/// If the signal handlers cannot be installed it logs why and never resolves, since a
/// component that cannot be stopped gracefully can still be killed.
/// Logs to standard error at `RUST_LOG` (default `info`), coloured only when standard error is
/// a terminal: under the supervisor it is a log file, and `flowctl logs` shows it verbatim.
pub fn init_tracing() {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received Ctrl-C; shutting down"),
        () = term => tracing::info!("received SIGTERM; shutting down"),
    }
}
