//! `producer webhook-server`: OpenAI's batch-end webhooks turned into an immediate check.
//!
//! Without webhooks a finished batch waits for its next scheduled check, up to
//! `RECHECK_MAX_SECONDS`. OpenAI sends a signed `batch.completed` (`failed`, `expired`,
//! `cancelled`) event when a batch ends; on such an event for a batch the table holds as
//! PENDING, the receiver starts a new chain of the batch's messages
//! ([`fleet_shared::store::Store::start_chain`], docs/spec/fleet-design.md) and sends its first message
//! undelayed, so a worker checks and applies the batch within seconds. The chain makes the
//! batch's older, delayed message a stale copy that the worker drops, so a webhook never adds a
//! second live message.
//!
//! Scheduled checks stay the safety net: a lost, late or refused webhook only leaves the batch
//! to its next check. That is why every doubt here ends in "do nothing": unknown batches, other
//! event types, batches no longer pending are answered 2xx and counted, and nothing calls
//! OpenAI on this path (an answer takes a few DynamoDB and SQS calls, milliseconds).
//!
//! # Request handling, in order
//!
//! 1. Body capped at [`MAX_BODY_BYTES`] (OpenAI's events are ~200 bytes) → else 400.
//! 2. Signature of the raw body ([`signature`]: headers, timestamp within 5 minutes, any of
//!    the `v1,` signatures) → else 400. Nothing is parsed before this.
//! 3. The event ([`event`]): not JSON with a `type` → 400; another type → 200, ignored.
//! 4. A `webhook-id` answered lately → 200, nothing done ([`memory::SeenIds`]).
//! 5. OpenAI batch id → our batch ([`memory::PendingCache`] over the GSI1 pending listing,
//!    never a scan) → unknown: 200.
//! 6. Strongly consistent read of the summary (still PENDING?) and the fleet state (not
//!    dead-lettered: a replay is the operator's decision) → else 200, nothing done.
//! 7. `start_chain`, then an undelayed SendMessage → 200 `enqueued`. A failure answers 503 so
//!    OpenAI delivers again later; a failed send gives the schedule marker back first, so the
//!    next producer tick enqueues the batch even if no retry comes.
//!
//! `/healthz` answers 200 while the process serves; `/metrics` has
//! `fleet_webhooks_total{type,outcome}` and `fleet_webhook_handling_seconds`. SIGTERM or SIGINT
//! stops accepting connections, lets the requests in progress finish (at most
//! [`SHUTDOWN_GRACE`]) and exits 0.

pub mod event;
pub mod memory;
mod metrics;
mod receiver;
pub mod signature;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

pub use metrics::{HANDLING_SECONDS, WEBHOOKS_TOTAL};
pub use receiver::{Receiver, ReceiverOptions};

use crate::Services;
use crate::settings::WebhookSettings;

/// The path OpenAI posts to (registered as `https://<host>/openai/webhook`).
pub const WEBHOOK_PATH: &str = "/openai/webhook";

/// Largest body accepted. OpenAI's events are a few hundred bytes; anything near this is not
/// one of them, and a cap keeps a flood of large bodies from costing memory.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// After SIGTERM, requests in progress get this long to finish. Below the pod's
/// `terminationGracePeriodSeconds` (deploy/k8s/base/webhook-deployment.yaml).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The receiver's HTTP routes.
pub fn router(receiver: Arc<Receiver>) -> Router {
    Router::new()
        .route(WEBHOOK_PATH, post(receiver::receive))
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .with_state(receiver)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn render_metrics(State(receiver): State<Arc<Receiver>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        receiver.metrics().render(),
    )
}

/// Serves `listener` until `stop` is cancelled, then lets requests in progress finish for at
/// most [`SHUTDOWN_GRACE`].
pub async fn serve(
    listener: TcpListener,
    receiver: Arc<Receiver>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let graceful = stop.clone();
    let mut server = tokio::spawn(async move {
        axum::serve(listener, router(receiver))
            .with_graceful_shutdown(graceful.cancelled_owned())
            .await
    });
    let joined = tokio::select! {
        joined = &mut server => joined,
        () = stop.cancelled() => match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
            Ok(joined) => joined,
            Err(_) => {
                server.abort();
                tracing::warn!(
                    grace_seconds = SHUTDOWN_GRACE.as_secs(),
                    "requests still open after the grace period; stopping anyway"
                );
                return Ok(());
            }
        },
    };
    joined.map_err(std::io::Error::other)?
}

/// Cancels `token` on the first SIGTERM or SIGINT.
pub fn cancel_on_signal(token: CancellationToken) -> std::io::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
            () = token.cancelled() => return,
        };
        tracing::info!(signal = name, "shutdown requested");
        token.cancel();
    });
    Ok(())
}

/// `producer webhook-server`: bind, serve until SIGTERM/SIGINT; returns the exit code.
pub async fn run(settings: &WebhookSettings, services: &Services) -> i32 {
    let listener = match TcpListener::bind(settings.addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(addr = %settings.addr, error = %e, "cannot listen");
            eprintln!("producer: cannot listen on {}: {e}", settings.addr);
            return crate::EXIT_FAILURE;
        }
    };
    let addr: SocketAddr = listener.local_addr().unwrap_or(settings.addr);
    let receiver = Arc::new(Receiver::new(
        services.clone(),
        settings,
        ReceiverOptions::default(),
    ));
    let stop = CancellationToken::new();
    if let Err(e) = cancel_on_signal(stop.clone()) {
        eprintln!("producer: cannot watch for signals: {e}");
        return crate::EXIT_FAILURE;
    }
    tracing::info!(
        event = "listening",
        http_addr = %addr,
        path = WEBHOOK_PATH,
        queue_url = %settings.queue_url,
        schedule_horizon_seconds = settings.schedule_horizon_seconds,
        max_body_bytes = MAX_BODY_BYTES,
        "webhook server listening"
    );
    match serve(listener, receiver, stop).await {
        Ok(()) => {
            tracing::info!(event = "stopped", "webhook server stopped");
            0
        }
        Err(e) => {
            tracing::error!(error = %e, "webhook server failed");
            eprintln!("producer: webhook server failed: {e}");
            crate::EXIT_FAILURE
        }
    }
}
