//! `/metrics`, `/healthz` and `/readyz`. The server outlives the receive loop: it keeps
//! answering while the worker drains, so the orchestrator sees `/readyz` turn 503.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::health::Health;

#[derive(Clone)]
struct HttpState {
    metrics: PrometheusHandle,
    health: Arc<Health>,
}

pub fn router(metrics: PrometheusHandle, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(HttpState { metrics, health })
}

/// Serves until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    metrics: PrometheusHandle,
    health: Arc<Health>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, health))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

async fn render_metrics(State(state): State<HttpState>) -> impl IntoResponse {
    state.metrics.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

async fn healthz(State(state): State<HttpState>) -> impl IntoResponse {
    if state.health.is_live() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "receive loop stalled\n")
    }
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    if state.health.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if !state.health.is_ready() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "error of the deployment seen recently (key, permissions, table or queue); see fleet_deployment_errors_total\n",
        )
    } else {
        (StatusCode::OK, "ready\n")
    }
}
