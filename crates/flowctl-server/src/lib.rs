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
mod clock;
pub mod cluster;
pub mod components;
pub mod config;
pub mod deploy;
pub mod dlq;
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
use std::sync::{Arc, OnceLock, RwLock};
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
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first, e.g. by an embedding test.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Runs one node until `shutdown` is cancelled.
pub async fn run(
    cfg: ServerConfig,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    cfg.validate().map_err(anyhow::Error::msg)?;
    let prom = prometheus();
    let meta = NodeMeta::load_or_create(&cfg.data_dir, cfg.node_id)?;
    let node_id = meta.node_id;
    tracing::info!(node_id, data_dir = %cfg.data_dir.display(), listen = %cfg.listen, advertise = %cfg.advertise, "starting node");

    let dir = cfg.data_dir.clone();
    let (log, sm) =
        tokio::task::spawn_blocking(move || flowctl_store::open(&dir, Default::default()))
            .await
            .context("while opening the store")??;
    let node = RaftNode::start(node_id, cfg.advertise.clone(), log, sm, cfg.raft.clone()).await?;
    let cluster_id = Arc::new(RwLock::new(meta.cluster_id.clone()));

    let tracker = TaskTracker::new();
    let loops = CancellationToken::new();
    let grpc_stop = CancellationToken::new();

    let live = liveness::start(
        node.clone(),
        liveness::LivenessOptions {
            ttl: cfg.heartbeat_ttl,
            expiry: cfg.component_expiry,
            sweep: (cfg.heartbeat_ttl / 4)
                .clamp(Duration::from_millis(100), Duration::from_secs(1)),
            clock: liveness::system_clock(),
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
        let cluster_id = cluster_id.clone();
        let stop = grpc_stop.clone();
        let max = cfg.max_request_bytes;
        let data_dir = cfg.data_dir.clone();
        let dlq_api = dlq::DlqApi {
            node: node.clone(),
            specs: specs.clone(),
            brokers: Arc::new(cfg.kafka_brokers.clone()),
        };
        tracker.spawn(async move {
            serve_grpc(
                listener, node, live, specs, data_dir, cluster_id, max, dlq_api, stop,
            )
            .await
        })
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

    let boot = bootstrap(&cfg, &node, &cluster_id, meta);
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

// Every argument is a distinct piece the services need; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
async fn serve_grpc(
    listener: TcpListener,
    node: RaftNode,
    live: liveness::LivenessHandle,
    specs: spec_cache::SpecCache,
    data_dir: std::path::PathBuf,
    cluster_id: Arc<RwLock<String>>,
    max_request_bytes: usize,
    dlq_api: dlq::DlqApi,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let api = api::Api {
        node: node.clone(),
        cluster_id: cluster_id.clone(),
        specs,
    };
    let internal = RaftServiceServer::new(InternalService::new(node.clone(), cluster_id))
        .max_decoding_message_size(MAX_INTERNAL_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_INTERNAL_MESSAGE_BYTES);
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
    let liveness_internal =
        flowctl_proto::internal::v1::liveness_service_server::LivenessServiceServer::new(
            liveness::LivenessService { handle: live },
        )
        .max_decoding_message_size(MAX_INTERNAL_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_INTERNAL_MESSAGE_BYTES);
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
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(flowctl_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("while building gRPC reflection")?;
    // `serve_with_incoming` ignores the builder's TCP options, so set them on the incoming
    // stream: without TCP_NODELAY every reply waits ~40 ms for a delayed ACK.
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(30)));
    // Bounded work per connection: at most this many requests in flight on one HTTP/2
    // connection; a client that opens more streams waits for HTTP/2 flow control.
    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .layer(grpc_metrics::GrpcMetricsLayer)
        .add_service(internal)
        .add_service(pipelines)
        .add_service(clusters)
        .add_service(schema_api)
        .add_service(dlq_svc)
        .add_service(replay_svc)
        .add_service(legacy_api)
        .add_service(v1_api)
        .add_service(components_api)
        .add_service(liveness_internal)
        .add_service(
            flowctl_proto::admin::v1::log_service_server::LogServiceServer::new(logs::LogApi {
                node: node.clone(),
                data_dir,
            }),
        )
        .add_service(health)
        .add_service(reflection)
        .serve_with_incoming_shutdown(incoming, stop.cancelled())
        .await
        .context("gRPC server failed")
}

async fn bootstrap(
    cfg: &ServerConfig,
    node: &RaftNode,
    cluster_id: &Arc<RwLock<String>>,
    mut meta: NodeMeta,
) -> anyhow::Result<()> {
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
            *cluster_id.write().unwrap_or_else(|p| p.into_inner()) = meta.cluster_id.clone();
            tracing::info!(cluster_id = %meta.cluster_id, "initialized a new single-node cluster");
            Ok(())
        }
        (false, false) => {
            let resp = join(cfg, node, &meta, cfg.join_timeout).await?;
            meta.cluster_id = resp.cluster_id.clone();
            meta.save(&cfg.data_dir)?;
            *cluster_id.write().unwrap_or_else(|p| p.into_inner()) = resp.cluster_id;
            tracing::info!(leader = resp.leader_id, "joined the cluster as a voter");
            Ok(())
        }
        (true, true) => Ok(()),
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
            });
            req.set_timeout(Duration::from_secs(120));
            match client.join(req).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s)
                    if matches!(
                        s.code(),
                        tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument
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
        tokio::time::sleep(flowctl_raft::jitter(backoff)).await;
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
        "flowctl_raft_commit_index",
        "Last committed log index known to this node."
    );
    describe_gauge!(
        "flowctl_raft_applied_index",
        "Last log index applied to the state machine."
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
