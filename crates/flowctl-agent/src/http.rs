//! The component's HTTP endpoint: `/health` (JSON) and `/metrics` (Prometheus text).

use std::collections::BTreeMap;
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::agent::Shared;
use crate::metrics::{render_prometheus, Value};

/// How long open connections (a scraper's keep-alive) may delay the end of shutdown.
pub const HTTP_SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The JSON body of `/health`.
#[derive(Debug, Serialize)]
struct HealthBody<'a> {
    status: &'static str,
    component: &'a str,
    component_id: Option<&'a str>,
    /// `disabled`, `v1` or `legacy`.
    control_plane: &'static str,
    registered: bool,
    service_id: Option<String>,
    control_plane_endpoint: Option<String>,
    uptime_seconds: u64,
    metrics: BTreeMap<String, serde_json::Value>,
}

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(shared);
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(stop.clone().cancelled_owned())
        .into_future();
    tokio::pin!(server);
    let result = tokio::select! {
        r = &mut server => r,
        () = stop.cancelled() => match tokio::time::timeout(HTTP_SHUTDOWN_GRACE, &mut server).await {
            Ok(r) => r,
            Err(_) => {
                tracing::debug!("health server connections still open after the grace period; closing them");
                Ok(())
            }
        },
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "health server failed");
    }
}

async fn health(State(shared): State<Arc<Shared>>) -> Response {
    let status = shared.health();
    let registration = shared.registration.borrow().clone();
    let metrics = shared
        .metrics
        .snapshot()
        .into_iter()
        .map(|(name, v)| {
            let json = match v {
                Value::Counter(c) => serde_json::Value::from(c),
                // JSON has no NaN or infinity; such a gauge shows as null.
                Value::Gauge(g) => serde_json::Number::from_f64(g)
                    .map_or(serde_json::Value::Null, serde_json::Value::Number),
            };
            (name, json)
        })
        .collect();
    let body = HealthBody {
        status: status.as_str(),
        component: &shared.component.name,
        component_id: shared.config.component_id.as_ref().map(|c| c.as_str()),
        control_plane: if shared.config.enabled {
            shared.config.api.as_str()
        } else {
            "disabled"
        },
        registered: registration.is_some(),
        service_id: registration
            .as_ref()
            .map(|r| r.service_id.as_str().to_owned()),
        control_plane_endpoint: registration.and_then(|r| r.endpoint),
        uptime_seconds: shared.started.elapsed().as_secs(),
        metrics,
    };
    let code = if status.is_serving() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    match serde_json::to_string(&body) {
        Ok(json) => (code, [(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the health body");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let text = render_prometheus(&shared.stats, &shared.metrics.snapshot());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
