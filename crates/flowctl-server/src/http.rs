//! The operations HTTP endpoint: `/metrics`, `/livez`, `/readyz`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use flowctl_raft::RaftNode;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct Ctx {
    node: RaftNode,
    prom: PrometheusHandle,
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    node: RaftNode,
    prom: PrometheusHandle,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Ctx { node, prom });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

async fn metrics(State(ctx): State<Ctx>) -> String {
    ctx.prom.render()
}

/// Ready when this node knows a leader and has applied everything it knows to be committed.
async fn readyz(State(ctx): State<Ctx>) -> (StatusCode, String) {
    let st = ctx.node.status();
    match st.leader {
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no leader known\n".into(),
        ),
        Some(_) if st.applied_index < st.commit_index => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: applied {} of {} committed entries\n",
                st.applied_index, st.commit_index
            ),
        ),
        Some(l) => (
            StatusCode::OK,
            format!("ok: leader {l}, applied {}\n", st.applied_index),
        ),
    }
}
