//! One flowctl node: it opens the store, starts Raft, joins or bootstraps a cluster, serves the
//! public and internal gRPC services on one port and `/metrics`, `/livez`, `/readyz` on the
//! metrics port, and shuts down in a fixed order.
//!
//! It is not the CLI: `flowctl-cli` parses flags into a [`ServerConfig`], binds the listeners
//! and calls [`run`]. `run` takes its listeners and a cancellation token, so tests can drive it.
//!
//! Shutdown order: stop loops → hand leadership to another voter (if leader) → stop serving
//! gRPC → `raft.shutdown()` → the store closes when the last handle drops.
//!
//! Bootstrap (see ARCHITECTURE.md "Membership"):
//! ```text
//! empty data dir, no --join   → initialize a one-node cluster, new cluster id
//! empty data dir, --join A,B  → Join(A or B) → leader: add learner, wait catch-up, promote
//! existing data dir           → resume; with --join, re-check membership (idempotent)
//! ```

pub mod api;
pub mod audit;
pub mod auth;
pub mod auth_api;
mod clock;
pub mod cluster;
pub mod components;
pub mod config;
pub mod deploy;
pub mod dlq;
pub mod docker;
pub mod errors;
mod grpc_metrics;
mod http;
pub mod liveness;
pub mod logs;
pub mod node_meta;
pub mod pipelines;
pub mod replay;
pub mod schemas;
pub mod spec_cache;
pub mod wire;

pub use config::ServerConfig;

use anyhow::{bail, Context};
use flowctl_proto::admin::v1::cluster_service_server::ClusterServiceServer;
use flowctl_proto::admin::v1::pipeline_service_server::PipelineServiceServer;
use flowctl_proto::internal::v1 as ipb;
use flowctl_proto::internal::v1::raft_service_server::RaftServiceServer;
use flowctl_raft::{InternalService, RaftNode, MAX_INTERNAL_MESSAGE_BYTES};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use node_meta::NodeMeta;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const METRICS_INTERVAL: Duration = Duration::from_millis(500);
/// Requests in flight on one client connection (HTTP/2 streams).
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn prometheus() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ])
                .expect("the bucket list is not empty")
                // The write path's stages take from tens of microseconds to milliseconds.
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(
                        flowctl_store::WRITE_STAGE_SECONDS.to_owned(),
                    ),
                    &[
                        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                        0.1, 0.25, 1.0,
                    ],
                )
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first, e.g. by an embedding test.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// The sockets a node serves, bound by the caller.
pub struct Listeners {
    /// The public API (`--listen`).
    pub public: TcpListener,
    /// Node-to-node RPCs (`--peer-listen`).
    pub peer: TcpListener,
    /// `/metrics`, `/livez`, `/readyz`; `None` turns them off.
    pub metrics: Option<TcpListener>,
}

/// Runs one node until `shutdown` is cancelled.
pub async fn run(
    cfg: ServerConfig,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Listeners {
        public: listener,
        peer: peer_listener,
        metrics: metrics_listener,
    } = listeners;
    cfg.validate().map_err(anyhow::Error::msg)?;
    let prom = prometheus();
    let meta = NodeMeta::load_or_create(&cfg.data_dir, cfg.node_id)?;
    let node_id = meta.node_id;
    tracing::info!(node_id, data_dir = %cfg.data_dir.display(), listen = %cfg.listen, advertise = %cfg.advertise, peer_listen = %cfg.peer_listen, peer_advertise = %cfg.peer_advertise, "starting node");

    let peer = peer_secret(&cfg, &meta)?;
    let dir = cfg.data_dir.clone();
    let (log, sm) =
        tokio::task::spawn_blocking(move || flowctl_store::open(&dir, Default::default()))
            .await
            .context("while opening the store")??;
    let (public_tls, peer_tls) = load_tls(&cfg)?;
    let mut raft_options = cfg.raft.clone();
    if let Some(files) = &cfg.peer_tls {
        raft_options.peer_tls = Some(
            flowctl_tls::client_config(files.ca.as_deref(), Some((&files.cert, &files.key)))
                .context("peer TLS")?,
        );
    }
    raft_options.peer_bearer =
        flowctl_proto::auth::Bearer::new(peer.as_ref().map(auth::Secret::expose))
            .map_err(anyhow::Error::msg)?;
    // Calls to other nodes leave from the address this node listens on for them, when that
    // is one address: the other nodes see the same host either way.
    let peer_ip = cfg.peer_listen.ip();
    raft_options.peer_local_ip = (!peer_ip.is_unspecified()).then_some(peer_ip);
    let node = RaftNode::start(
        node_id,
        flowctl_raft::Member::new(cfg.advertise.clone(), cfg.peer_advertise.clone()),
        meta.cluster_id.clone(),
        log,
        sm,
        raft_options,
    )
    .await?;
    let gate = auth::Gate::new(node.clone(), peer.clone(), cfg.allow_anonymous_agents)
        .with_peer_certificates(peer_tls.is_some());

    let tracker = TaskTracker::new();
    let loops = CancellationToken::new();
    reload_on_sighup(
        [public_tls.clone(), peer_tls.clone()]
            .into_iter()
            .flatten()
            .collect(),
        &tracker,
        loops.clone(),
    );
    let grpc_stop = CancellationToken::new();

    let live = liveness::start(
        node.clone(),
        liveness::LivenessOptions {
            ttl: cfg.heartbeat_ttl,
            expiry: cfg.component_expiry,
            sweep: (cfg.heartbeat_ttl / 4)
                .clamp(Duration::from_millis(100), Duration::from_secs(1)),
            clock: liveness::system_clock(),
            mono: liveness::monotonic_clock(),
        },
        loops.clone(),
        &tracker,
    );

    let specs = spec_cache::SpecCache::default();
    deploy::start(
        node.clone(),
        specs.clone(),
        deploy::DeployOptions {
            data_dir: cfg.data_dir.clone(),
            node_grace: cfg.node_grace,
            heartbeat_interval: (cfg.heartbeat_ttl / 6).max(Duration::from_millis(200)),
            kafka_brokers: cfg.kafka_brokers.clone(),
            allowed: cfg.allowed_commands.clone(),
            run_as: cfg.run_as,
            docker: deploy::DockerAccess::new(cfg.allowed_images.clone()),
            node_id: node.id(),
            cluster_id: String::new(),
            run_id: String::new(),
            peer: peer.clone(),
            cacert: cfg.tls.as_ref().and_then(|t| t.ca.clone()),
        },
        loops.clone(),
        &tracker,
    );
    replay::start(node.clone(), specs.clone(), loops.clone(), &tracker);
    dlq::start(
        node.clone(),
        specs.clone(),
        cfg.kafka_brokers.clone(),
        cfg.dlq_retention,
        loops.clone(),
        &tracker,
    );

    // gRPC first: a joining node must already answer the leader's AppendEntries.
    let grpc = {
        let node = node.clone();
        let stop = grpc_stop.clone();
        let max = cfg.max_request_bytes;
        let data_dir = cfg.data_dir.clone();
        let dlq_api = dlq::DlqApi {
            node: node.clone(),
            specs: specs.clone(),
            brokers: Arc::new(cfg.kafka_brokers.clone()),
        };
        let reflection = cfg.enable_reflection;
        let gate = gate.clone();
        let audit = audit::start(node.clone(), cfg.audit_keep, loops.clone(), &tracker);
        let peer_port = {
            let (node, live, gate, stop) = (node.clone(), live.clone(), gate.clone(), stop.clone());
            let (audit, data_dir) = (audit.clone(), data_dir.clone());
            tracker.spawn(async move {
                serve_peer(
                    (peer_listener, peer_tls),
                    node,
                    live,
                    data_dir,
                    gate,
                    audit,
                    stop,
                )
                .await
            })
        };
        let public = tracker.spawn(async move {
            serve_grpc(
                (listener, public_tls),
                node,
                live,
                specs,
                data_dir,
                max,
                dlq_api,
                reflection,
                gate,
                audit,
                stop,
            )
            .await
        });
        // Either server stopping on its own (an I/O error on its listener) stops the node.
        async move {
            tokio::select! {
                r = public => r,
                r = peer_port => r,
            }
        }
    };
    if let Some(l) = metrics_listener {
        let node = node.clone();
        let cancel = loops.clone();
        tracker.spawn(async move {
            if let Err(e) = http::serve(l, node, prom, cancel).await {
                tracing::error!(error = %e, "metrics endpoint failed");
            }
        });
    }
    {
        let node = node.clone();
        let cancel = loops.clone();
        tracker.spawn(async move { metrics_loop(node, cancel).await });
    }

    let boot = bootstrap(&cfg, &node, meta);
    let boot_result = tokio::select! {
        r = boot => r,
        _ = shutdown.cancelled() => Ok(()),
    };
    if let Err(e) = boot_result {
        loops.cancel();
        grpc_stop.cancel();
        node.shutdown().await;
        tracker.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
        return Err(e);
    }
    tracing::info!(node_id, "node is up");

    tokio::select! {
        _ = shutdown.cancelled() => {}
        fatal = node.stopped() => {
            tracing::error!(error = %fatal, "Raft stopped; exiting so that a supervisor restarts this node");
            loops.cancel();
            grpc_stop.cancel();
            tracker.close();
            let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
            anyhow::bail!("Raft stopped: {fatal}");
        }
        r = grpc => {
            // The gRPC server stopped on its own: an I/O error on the listener.
            loops.cancel();
            node.shutdown().await;
            return match r {
                Ok(Err(e)) => Err(e),
                _ => Err(anyhow::anyhow!("the gRPC server stopped")),
            };
        }
    }

    tracing::info!(node_id, "shutting down");
    loops.cancel();
    if node.is_leader() && node.status().voters.len() > 1 {
        match tokio::time::timeout(Duration::from_secs(10), node.transfer_leadership(None)).await {
            Ok(Ok(to)) => tracing::info!(to, "handed leadership over"),
            Ok(Err(e)) => tracing::warn!(error = %e, "leadership transfer failed"),
            Err(_) => tracing::warn!("leadership transfer timed out"),
        }
    }
    grpc_stop.cancel();
    node.shutdown().await;
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(5), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop within 5s");
    }
    Ok(())
}

/// Serves `router` on `listener` until `stop`: over TLS (handshakes off the accept loop, see
/// `flowctl_tls::incoming`) or plaintext. A macro, as the router's layered type is unnameable.
macro_rules! serve {
    ($router:expr, $listener:expr, $tls:expr, $stop:expr) => {
        match $tls {
            Some(tls) => {
                $router
                    .serve_with_incoming_shutdown(
                        flowctl_tls::incoming($listener, tls),
                        $stop.cancelled(),
                    )
                    .await
            }
            None => {
                // `serve_with_incoming` ignores the builder's TCP options, so set them on the
                // incoming stream: without TCP_NODELAY every reply waits ~40 ms for a delayed
                // ACK.
                let incoming = tonic::transport::server::TcpIncoming::from($listener)
                    .with_nodelay(Some(true))
                    .with_keepalive(Some(Duration::from_secs(30)));
                $router
                    .serve_with_incoming_shutdown(incoming, $stop.cancelled())
                    .await
            }
        }
    };
}

// Every argument is a distinct piece the services need; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
async fn serve_grpc(
    listener: (TcpListener, Option<flowctl_tls::ServerTls>),
    node: RaftNode,
    live: liveness::LivenessHandle,
    specs: spec_cache::SpecCache,
    data_dir: std::path::PathBuf,
    max_request_bytes: usize,
    dlq_api: dlq::DlqApi,
    enable_reflection: bool,
    gate: auth::Gate,
    audit: audit::AuditHandle,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let api = api::Api {
        node: node.clone(),
        specs,
    };
    let pipelines =
        PipelineServiceServer::new(api.clone()).max_decoding_message_size(max_request_bytes);
    let clusters = ClusterServiceServer::new(api).max_decoding_message_size(max_request_bytes);
    let schema_api = flowctl_proto::admin::v1::schema_service_server::SchemaServiceServer::new(
        schemas::SchemaApi { node: node.clone() },
    )
    .max_decoding_message_size(max_request_bytes)
    .max_encoding_message_size(64 * 1024 * 1024);
    let dlq_svc =
        flowctl_proto::admin::v1::dlq_service_server::DlqServiceServer::new(dlq_api.clone())
            .max_decoding_message_size(max_request_bytes)
            .max_encoding_message_size(64 * 1024 * 1024);
    let replay_svc = flowctl_proto::admin::v1::replay_service_server::ReplayServiceServer::new(
        replay::ReplayApi {
            node: node.clone(),
            specs: dlq_api.specs.clone(),
        },
    )
    .max_decoding_message_size(max_request_bytes)
    .max_encoding_message_size(64 * 1024 * 1024);
    let apis = wire::ComponentApis {
        node: node.clone(),
        live: live.clone(),
        data: Arc::new(components::DataPlane {
            specs: dlq_api.specs.clone(),
            brokers: dlq_api.brokers.clone(),
        }),
    };
    let legacy_api =
        flowctl_proto::legacy::control_plane_server::ControlPlaneServer::new(apis.clone())
            .max_decoding_message_size(max_request_bytes);
    let v1_api = flowctl_proto::v1::control_plane_service_server::ControlPlaneServiceServer::new(
        apis.clone(),
    )
    .max_decoding_message_size(max_request_bytes);
    let components_api =
        flowctl_proto::admin::v1::component_service_server::ComponentServiceServer::new(apis)
            .max_decoding_message_size(max_request_bytes)
            .max_encoding_message_size(64 * 1024 * 1024);
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<PipelineServiceServer<api::Api>>()
        .await;
    reporter
        .set_serving::<ClusterServiceServer<api::Api>>()
        .await;
    reporter
        .set_serving::<flowctl_proto::admin::v1::schema_service_server::SchemaServiceServer<schemas::SchemaApi>>()
        .await;
    // Off unless asked for: it hands any caller the full API description. Both versions,
    // since many clients (grpcio-reflection, older grpcurl) speak only v1alpha.
    fn reflection() -> tonic_reflection::server::Builder<'static> {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(flowctl_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    }
    let (reflection_v1, reflection_v1alpha) = if enable_reflection {
        (
            Some(
                reflection()
                    .build_v1()
                    .context("while building gRPC reflection")?,
            ),
            Some(
                reflection()
                    .build_v1alpha()
                    .context("while building gRPC reflection")?,
            ),
        )
    } else {
        (None, None)
    };
    let (listener, tls) = listener;
    // Bounded work per connection: at most this many requests in flight on one HTTP/2
    // connection; a client that opens more streams waits for HTTP/2 flow control.
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .layer(grpc_metrics::GrpcMetricsLayer)
        .layer(auth::AuthLayer {
            gate: gate.clone(),
            audit,
            port: auth::Port::Public,
        })
        .add_service(
            flowctl_proto::admin::v1::audit_service_server::AuditServiceServer::new(
                audit::AuditApi { node: node.clone() },
            ),
        )
        .add_service(
            flowctl_proto::admin::v1::auth_service_server::AuthServiceServer::new(
                auth_api::AuthApi {
                    node: node.clone(),
                    gate,
                },
            ),
        )
        .add_service(pipelines)
        .add_service(clusters)
        .add_service(schema_api)
        .add_service(dlq_svc)
        .add_service(replay_svc)
        .add_service(legacy_api)
        .add_service(v1_api)
        .add_service(components_api)
        .add_service(
            flowctl_proto::admin::v1::log_service_server::LogServiceServer::new(logs::LogApi {
                node: node.clone(),
                data_dir,
            }),
        )
        .add_service(health)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha);
    serve!(router, listener, tls, stop).context("gRPC server failed")
}

/// The public port's and the peer port's TLS, from the configured files.
fn load_tls(
    cfg: &ServerConfig,
) -> anyhow::Result<(
    Option<flowctl_tls::ServerTls>,
    Option<flowctl_tls::ServerTls>,
)> {
    use flowctl_tls::{ClientAuth, ServerTls};
    let public = match &cfg.tls {
        None => None,
        Some(files) => {
            let mode = match (cfg.client_cert_auth, files.ca.is_some()) {
                (true, _) => ClientAuth::Required,
                (false, true) => ClientAuth::Optional,
                (false, false) => ClientAuth::None,
            };
            Some(ServerTls::load(files.clone(), mode).context("TLS (public port)")?)
        }
    };
    let peer = match &cfg.peer_tls {
        None => None,
        Some(files) => {
            Some(ServerTls::load(files.clone(), ClientAuth::Required).context("TLS (peer port)")?)
        }
    };
    Ok((public, peer))
}

/// Re-reads every certificate, key and CA file on SIGHUP, for connections accepted from then
/// on; a file that does not load leaves the previous configuration in place. (Calls this node
/// makes to its peers keep the client certificate they started with.)
fn reload_on_sighup(
    tls: Vec<flowctl_tls::ServerTls>,
    tracker: &TaskTracker,
    cancel: CancellationToken,
) {
    if tls.is_empty() {
        return;
    }
    let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP; certificates reload only on restart");
            return;
        }
    };
    tracker.spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            for t in &tls {
                match t.reload() {
                    Ok(()) => tracing::info!(cert = %t.files().cert.display(), "reloaded TLS certificate"),
                    Err(e) => tracing::error!(error = %e, "TLS reload failed; keeping the previous certificate"),
                }
            }
        }
    });
}

/// The peer port: Raft, forwarding, read index, membership, liveness relays and log proxying,
/// for other nodes only (the peer secret, and a sender that names a member: see
/// [`auth::Gate::admit_peer`]). None of it is served on the public port.
async fn serve_peer(
    (listener, tls): (TcpListener, Option<flowctl_tls::ServerTls>),
    node: RaftNode,
    live: liveness::LivenessHandle,
    data_dir: std::path::PathBuf,
    gate: auth::Gate,
    audit: audit::AuditHandle,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let internal = RaftServiceServer::new(InternalService::new(node.clone()))
        .max_decoding_message_size(MAX_INTERNAL_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_INTERNAL_MESSAGE_BYTES);
    let liveness_internal =
        flowctl_proto::internal::v1::liveness_service_server::LivenessServiceServer::new(
            liveness::LivenessService { handle: live },
        )
        .max_decoding_message_size(MAX_INTERNAL_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_INTERNAL_MESSAGE_BYTES);
    let logs = flowctl_proto::admin::v1::log_service_server::LogServiceServer::new(logs::LogApi {
        node: node.clone(),
        data_dir,
    });
    let router = tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .layer(grpc_metrics::GrpcMetricsLayer)
        .layer(auth::AuthLayer {
            gate,
            audit,
            port: auth::Port::Peer,
        })
        .add_service(internal)
        .add_service(liveness_internal)
        .add_service(logs);
    serve!(router, listener, tls, stop).context("gRPC server (peer port) failed")
}

async fn bootstrap(cfg: &ServerConfig, node: &RaftNode, mut meta: NodeMeta) -> anyhow::Result<()> {
    let initialized = node.is_initialized().await?;
    match (initialized, cfg.join.is_empty()) {
        (false, true) => {
            if !meta.cluster_id.is_empty() {
                bail!(
                    "data dir {} was joining cluster {} but never completed; start it with --join, or use an empty data dir",
                    cfg.data_dir.display(),
                    meta.cluster_id
                );
            }
            node.initialize_single().await?;
            meta.cluster_id = format!("{:016x}", rand::random::<u64>());
            meta.save(&cfg.data_dir)?;
            node.set_cluster_id(&meta.cluster_id);
            tracing::info!(cluster_id = %meta.cluster_id, "initialized a new single-node cluster");
            if cfg.auth {
                enable_auth(cfg, node).await?;
            }
            Ok(())
        }
        (false, false) => {
            let resp = join(cfg, node, &meta, cfg.join_timeout).await?;
            meta.cluster_id = resp.cluster_id.clone();
            meta.save(&cfg.data_dir)?;
            node.set_cluster_id(&resp.cluster_id);
            tracing::info!(leader = resp.leader_id, "joined the cluster as a voter");
            Ok(())
        }
        (true, true) => {
            // A node's own applied state is on disk: a cluster created without --auth still
            // shows it here, and the flag cannot turn it on now.
            if cfg.auth && !node.read_stale(|s| s.auth.enabled).0 {
                bail!(
                    "--auth only creates a new cluster with authentication on; the cluster in {} was created without it: give every node the same --peer-token-file, then run `flowctl auth enable`",
                    cfg.data_dir.display()
                );
            }
            Ok(())
        }
        (true, false) => {
            // Resuming with --join: confirm membership (a no-op for a voter), and refuse a data
            // dir of another cluster. If no member answers now, resume from the data dir.
            match join(cfg, node, &meta, Duration::from_secs(3)).await {
                Ok(_) => Ok(()),
                Err(e) if e.downcast_ref::<JoinRefused>().is_some() => Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "could not confirm membership; resuming from the data dir");
                    Ok(())
                }
            }
        }
    }
}

/// The cluster's peer secret: `--peer-token-file` (kept as `<data-dir>/peer.token` too), else
/// `<data-dir>/peer.token`, else a new one when `--auth` creates a cluster; `None` runs the
/// node-to-node RPCs open, as before authentication existed.
fn peer_secret(cfg: &ServerConfig, meta: &NodeMeta) -> anyhow::Result<Option<auth::Secret>> {
    let kept = cfg.data_dir.join(PEER_TOKEN_FILE);
    if let Some(f) = &cfg.peer_token_file {
        let s = auth::Secret::read(f).map_err(anyhow::Error::msg)?;
        if !kept.exists() {
            s.write_new(&kept).map_err(anyhow::Error::msg)?;
        }
        return Ok(Some(s));
    }
    if kept.exists() {
        return Ok(Some(auth::Secret::read(&kept).map_err(anyhow::Error::msg)?));
    }
    if !cfg.auth {
        return Ok(None);
    }
    if !meta.cluster_id.is_empty() {
        bail!(
            "--auth only creates a new cluster with authentication on; the cluster in {} was created without it: give every node the same --peer-token-file, then run `flowctl auth enable`",
            cfg.data_dir.display()
        );
    }
    let s = auth::Secret::generate();
    s.write_new(&kept).map_err(anyhow::Error::msg)?;
    tracing::info!(path = %kept.display(), "wrote the cluster's peer secret; give a copy to joining nodes with --peer-token-file");
    Ok(Some(s))
}

/// The peer secret's file in a data dir.
pub const PEER_TOKEN_FILE: &str = "peer.token";
/// The bootstrap admin token's file in the first node's data dir.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Turns authentication on for a new cluster, with one admin token written to
/// `<data-dir>/admin.token` (mode 0600). The token is never logged.
async fn enable_auth(cfg: &ServerConfig, node: &RaftNode) -> anyhow::Result<()> {
    use flowctl_state::auth::{CreateToken, SetAuth, TokenRecord};
    let path = cfg.data_dir.join(ADMIN_TOKEN_FILE);
    let secret = auth::Secret::generate();
    let token = TokenRecord {
        name: "admin".into(),
        role: flowctl_state::auth::Role::Admin,
        hash: auth::token_hash(secret.expose()),
        created_ms: clock::now_ms(),
        expires_ms: None,
    };
    // The file first: a crash before the commit leaves a file and no token, never a cluster
    // with authentication on and no admin token anywhere.
    secret.write_new(&path).map_err(anyhow::Error::msg)?;
    // The token first, and authentication on only once it is there.
    match node
        .propose(flowctl_state::Command::CreateToken(CreateToken { token }))
        .await
        .context("while creating the admin token")?
        .outcome
    {
        flowctl_state::Outcome::TokenCreated { .. } => {}
        other => bail!("cannot create the admin token: {other:?}"),
    }
    node.propose(flowctl_state::Command::SetAuth(SetAuth { enabled: true }))
        .await
        .context("while turning authentication on")?;
    tracing::info!(path = %path.display(), "authentication is on; the admin token is in this file");
    Ok(())
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct JoinRefused(String);

async fn join(
    cfg: &ServerConfig,
    node: &RaftNode,
    meta: &NodeMeta,
    deadline: Duration,
) -> anyhow::Result<ipb::JoinResponse> {
    let until = Instant::now() + deadline;
    let mut backoff = Duration::from_millis(200);
    let mut errors: Vec<String>;
    loop {
        errors = Vec::new();
        for addr in &cfg.join {
            let mut client = node.peers().client(addr).map_err(anyhow::Error::msg)?;
            let mut req = tonic::Request::new(ipb::JoinRequest {
                node_id: node.id(),
                addr: cfg.advertise.clone(),
                cluster_id: meta.cluster_id.clone(),
                peer_addr: cfg.peer_advertise.clone(),
            });
            req.set_timeout(Duration::from_secs(120));
            match client.join(req).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::FailedPrecondition
                            | tonic::Code::InvalidArgument
                            | tonic::Code::PermissionDenied
                    ) =>
                {
                    return Err(JoinRefused(format!(
                        "{addr} refused to admit this node: {}",
                        s.message()
                    ))
                    .into());
                }
                Err(s) => errors.push(format!("{addr}: {}", s.message())),
            }
        }
        if Instant::now() + backoff > until {
            break;
        }
        tokio::time::sleep(flowctl_raft::jitter(backoff, 0.5)).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    bail!(
        "cannot join the cluster: no member answered within {}s ({})",
        deadline.as_secs(),
        errors.join("; ")
    )
}

/// Registers every metric with its help text, so that `/metrics` lists them (at zero) before
/// the first event.
fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    let counters = [
        (
            "flowctl_raft_leader_changes_total",
            "Times this node saw a new leader.",
        ),
        (
            "flowctl_raft_proposals_committed_total",
            "Proposals this node, as leader, committed and applied.",
        ),
        (
            "flowctl_raft_proposals_failed_total",
            "Proposals this node, as leader, failed to commit.",
        ),
        (
            "flowctl_raft_forwarded_total",
            "Writes this node forwarded to the leader.",
        ),
        (
            "flowctl_store_snapshots_built_total",
            "Snapshots this node built.",
        ),
        (
            "flowctl_store_snapshots_installed_total",
            "Snapshots this node installed from a leader.",
        ),
        (
            "flowctl_store_log_fsyncs_total",
            "WAL fsyncs of the Raft log (group commit).",
        ),
    ];
    for (name, help) in counters {
        describe_counter!(name, help);
        metrics::counter!(name).increment(0);
    }
    describe_gauge!("flowctl_raft_term", "Current Raft term.");
    describe_gauge!("flowctl_raft_is_leader", "1 when this node is the leader.");
    describe_gauge!(
        "flowctl_supervisor_fenced",
        "1 while this node reaches no quorum for the node grace and runs no instances."
    );
    metrics::gauge!("flowctl_supervisor_fenced").set(0.0);
    describe_gauge!(
        "flowctl_raft_commit_index",
        "Last committed log index known to this node."
    );
    describe_gauge!(
        "flowctl_raft_applied_index",
        "Last log index applied to the state machine."
    );
    describe_histogram!(
        flowctl_store::WRITE_STAGE_SECONDS,
        Unit::Seconds,
        "Write path latency by stage (validate, forward, batch_wait, commit, replicate, \
         follower_append, log_write, apply, apply_write)."
    );
    describe_histogram!(
        "flowctl_raft_propose_to_apply_seconds",
        Unit::Seconds,
        "Time from proposal on the leader to applied."
    );
    describe_histogram!(
        "flowctl_grpc_request_duration_seconds",
        Unit::Seconds,
        "gRPC request latency."
    );
    describe_counter!(
        "flowctl_grpc_requests_total",
        "gRPC requests by method and status code."
    );
}

async fn metrics_loop(node: RaftNode, cancel: CancellationToken) {
    describe_metrics();
    let mut last_leader = None;
    let mut tick = tokio::time::interval(METRICS_INTERVAL);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let st = node.status();
        if st.leader != last_leader {
            if st.leader.is_some() {
                metrics::counter!("flowctl_raft_leader_changes_total").increment(1);
            }
            last_leader = st.leader;
        }
        metrics::gauge!("flowctl_raft_term").set(st.term as f64);
        metrics::gauge!("flowctl_raft_is_leader").set(if st.leader == Some(st.node_id) {
            1.0
        } else {
            0.0
        });
        metrics::gauge!("flowctl_raft_commit_index").set(st.commit_index as f64);
        metrics::gauge!("flowctl_raft_applied_index").set(st.applied_index as f64);
        metrics::gauge!("flowctl_raft_last_log_index").set(st.last_log_index as f64);
        metrics::gauge!("flowctl_raft_voters").set(st.voters.len() as f64);
    }
}
