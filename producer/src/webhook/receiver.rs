//! One delivery, from the raw request to its answer (the steps of [`super`]).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use fleet_shared::message::new_chain_token;
use fleet_shared::model::BatchStatus;
use fleet_shared::model::time::rfc3339;
use fleet_shared::queue::{QueueError, send_one};
use fleet_shared::store::StoreError;
use futures::StreamExt;
use serde_json::json;
use tokio::time::Instant;

use super::MAX_BODY_BYTES;
use super::event::{self, Event};
use super::memory::{CacheAnswer, PendingCache, SeenIds};
use super::metrics::Metrics;
use super::signature::{
    HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, SignedHeaders, SigningKey, verify,
};
use crate::Services;
use crate::enqueue::{chain_start_message, schedule_until_ms};
use crate::settings::WebhookSettings;

/// The receiver's tunables; the defaults are the production values, tests shorten them.
#[derive(Debug, Clone)]
pub struct ReceiverOptions {
    /// How long one pending listing answers lookups ([`PendingCache`]).
    pub cache_max_age: Duration,
    /// Shortest interval between two listings caused by unknown batch ids.
    pub cache_min_refresh: Duration,
    /// How long an answered `webhook-id` is remembered. OpenAI's first re-delivery comes
    /// seconds after a failed one; ten minutes covers the ones that matter.
    pub seen_ttl: Duration,
    pub seen_capacity: usize,
    /// Longest handling of one event's DynamoDB and SQS calls before answering 503 (OpenAI
    /// then delivers again later).
    pub handling_timeout: Duration,
}

impl Default for ReceiverOptions {
    fn default() -> Self {
        ReceiverOptions {
            cache_max_age: Duration::from_secs(60),
            cache_min_refresh: Duration::from_secs(2),
            seen_ttl: Duration::from_secs(600),
            seen_capacity: 10_000,
            handling_timeout: Duration::from_secs(10),
        }
    }
}

/// The state every request shares.
#[derive(Debug)]
pub struct Receiver {
    services: Services,
    queue_url: String,
    key: SigningKey,
    horizon_seconds: u64,
    handling_timeout: Duration,
    seen: Mutex<SeenIds>,
    pending: tokio::sync::Mutex<PendingCache>,
    metrics: Metrics,
}

/// A failed DynamoDB or SQS call: answered 503 so that OpenAI delivers again.
#[derive(Debug, thiserror::Error)]
pub enum HandlingError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("no answer from DynamoDB or SQS within {0:?}")]
    TimedOut(Duration),
}

/// The answer to one delivery.
#[derive(Debug)]
struct Verdict {
    status: StatusCode,
    outcome: &'static str,
    detail: Option<String>,
}

impl Verdict {
    fn ok(outcome: &'static str) -> Self {
        Verdict {
            status: StatusCode::OK,
            outcome,
            detail: None,
        }
    }

    fn rejected(outcome: &'static str, detail: impl Into<String>) -> Self {
        Verdict {
            status: StatusCode::BAD_REQUEST,
            outcome,
            detail: Some(detail.into()),
        }
    }

    fn failed(error: &HandlingError) -> Self {
        Verdict {
            status: StatusCode::SERVICE_UNAVAILABLE,
            outcome: "error",
            detail: Some(error.to_string()),
        }
    }

    /// The histogram's `class` label.
    fn class(&self) -> &'static str {
        if self.status.is_success() {
            "ok"
        } else if self.status.is_client_error() {
            "rejected"
        } else {
            "error"
        }
    }
}

/// What the log line of a delivery names (filled in as the steps learn it).
#[derive(Debug, Default)]
struct Delivery {
    type_label: &'static str,
    webhook_id: Option<String>,
    event_type: Option<String>,
    openai_batch_id: Option<String>,
    batch_id: Option<String>,
    chain: Option<String>,
}

enum BodyError {
    TooLarge,
    Read(String),
}

impl Receiver {
    pub fn new(services: Services, settings: &WebhookSettings, options: ReceiverOptions) -> Self {
        Receiver {
            services,
            queue_url: settings.queue_url.clone(),
            key: settings.key.clone(),
            horizon_seconds: settings.schedule_horizon_seconds,
            handling_timeout: options.handling_timeout,
            seen: Mutex::new(SeenIds::new(options.seen_ttl, options.seen_capacity)),
            pending: tokio::sync::Mutex::new(PendingCache::new(
                options.cache_max_age,
                options.cache_min_refresh,
            )),
            metrics: Metrics::default(),
        }
    }

    pub(super) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn seen(&self) -> MutexGuard<'_, SeenIds> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn handle(&self, headers: &HeaderMap, body: Body, d: &mut Delivery) -> Verdict {
        d.type_label = "unknown";
        let body = match read_capped(headers, body).await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => {
                return Verdict::rejected(
                    "too_large",
                    format!("body is larger than {MAX_BODY_BYTES} bytes"),
                );
            }
            Err(BodyError::Read(e)) => return Verdict::rejected("bad_body", e),
        };
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let signed = SignedHeaders {
            id: text(HEADER_ID),
            timestamp: text(HEADER_TIMESTAMP),
            signature: text(HEADER_SIGNATURE),
        };
        if let Err(e) = verify(&self.key, signed, &body, Utc::now().timestamp()) {
            return Verdict::rejected(e.outcome(), e.to_string());
        }
        let webhook_id = signed.id.unwrap_or_default().to_owned();
        d.webhook_id = Some(webhook_id.clone());
        let event = match event::parse(&body) {
            Ok(e) => e,
            Err(e) => return Verdict::rejected(e.outcome(), e.to_string()),
        };
        d.type_label = event.type_label();
        if self.seen().contains(&webhook_id, Instant::now()) {
            return Verdict::ok("duplicate");
        }
        let verdict = match event {
            Event::Other { event_type } => {
                d.event_type = Some(event_type);
                Verdict::ok("ignored_type")
            }
            Event::BatchEnded {
                openai_batch_id, ..
            } => {
                d.openai_batch_id = Some(openai_batch_id.clone());
                let handled = tokio::time::timeout(
                    self.handling_timeout,
                    self.batch_ended(&openai_batch_id, d),
                )
                .await
                .unwrap_or(Err(HandlingError::TimedOut(self.handling_timeout)));
                match handled {
                    Ok(v) => v,
                    Err(e) => Verdict::failed(&e),
                }
            }
        };
        if verdict.status.is_success() {
            self.seen().insert(&webhook_id, Instant::now());
        }
        verdict
    }

    /// Steps 5 to 7 of [`super`] for a batch-end event.
    async fn batch_ended(
        &self,
        openai_batch_id: &str,
        d: &mut Delivery,
    ) -> Result<Verdict, HandlingError> {
        let Some(batch_id) = self.find_pending(openai_batch_id).await? else {
            return Ok(Verdict::ok("unknown_batch"));
        };
        d.batch_id = Some(batch_id.clone());
        let store = &self.services.store;
        let summary = match store.batch_summary(&batch_id).await? {
            Some(s) if s.openai_batch_id == openai_batch_id => s,
            _ => return Ok(Verdict::ok("unknown_batch")),
        };
        if summary.status != BatchStatus::Pending {
            return Ok(Verdict::ok("not_pending"));
        }
        if store.fleet_state(&batch_id).await?.dead_letter.is_some() {
            return Ok(Verdict::ok("dead_lettered"));
        }
        let now = Utc::now();
        let now_ms = now.timestamp_millis();
        let until_ms = schedule_until_ms(now_ms, self.horizon_seconds);
        let chain = new_chain_token();
        store
            .start_chain(&batch_id, &chain, until_ms, now_ms)
            .await?;
        let message = chain_start_message(&summary, &chain, &rfc3339(now));
        if let Err(e) = send_one(
            &self.services.sqs,
            &self.queue_url,
            &message.to_body(),
            0,
            &[],
        )
        .await
        {
            // Give the marker back: the next producer tick then enqueues the batch even if
            // OpenAI never delivers this event again.
            let released = store.unclaim_schedule(&batch_id, until_ms).await;
            tracing::warn!(batch_id = %batch_id, released = ?released.as_ref().map_err(ToString::to_string), "send failed after the chain was started");
            return Err(e.into());
        }
        d.chain = Some(chain);
        Ok(Verdict::ok("enqueued"))
    }

    /// Our batch id for a pending OpenAI batch id, from the cached listing (one Query listing
    /// at most per refresh, whoever waits for it).
    async fn find_pending(&self, openai_batch_id: &str) -> Result<Option<String>, StoreError> {
        let mut cache = self.pending.lock().await;
        match cache.get(openai_batch_id, Instant::now()) {
            CacheAnswer::Hit(batch_id) => Ok(Some(batch_id)),
            CacheAnswer::Unknown => Ok(None),
            CacheAnswer::Refresh => {
                let started = std::time::Instant::now();
                let items = self.services.store.pending_completion_batches().await?;
                let mut bad = 0usize;
                let pairs: Vec<(String, String)> = items
                    .into_iter()
                    .filter_map(|item| match item {
                        Ok(s) => Some((s.openai_batch_id, s.batch_id)),
                        Err(_) => {
                            bad += 1;
                            None
                        }
                    })
                    .collect();
                tracing::debug!(
                    event = "pending_listed",
                    pending = pairs.len(),
                    bad_items = bad,
                    elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    "pending batches listed"
                );
                cache.replace(pairs, Instant::now());
                Ok(cache.after_refresh(openai_batch_id))
            }
        }
    }
}

/// The body, up to [`MAX_BODY_BYTES`]; a declared or actual larger one is refused unread.
async fn read_capped(headers: &HeaderMap, body: Body) -> Result<Vec<u8>, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut buf = Vec::with_capacity(
        usize::try_from(declared.unwrap_or(1024)).map_or(MAX_BODY_BYTES, |n| n.min(MAX_BODY_BYTES)),
    );
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| BodyError::Read(format!("reading the body: {e}")))?;
        if buf.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// `POST /openai/webhook`.
pub(super) async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = std::time::Instant::now();
    let mut d = Delivery::default();
    let verdict = receiver.handle(&headers, body, &mut d).await;
    let elapsed = started.elapsed();
    receiver.metrics.count(d.type_label, verdict.outcome);
    receiver
        .metrics
        .observe(verdict.class(), elapsed.as_secs_f64());
    let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
    let detail = verdict.detail.as_deref().unwrap_or("");
    macro_rules! log {
        ($level:ident, $message:literal) => {
            tracing::$level!(
                event = "webhook",
                status = verdict.status.as_u16(),
                outcome = verdict.outcome,
                event_type = d.event_type.as_deref().unwrap_or(d.type_label),
                webhook_id = d.webhook_id.as_deref(),
                openai_batch_id = d.openai_batch_id.as_deref(),
                batch_id = d.batch_id.as_deref(),
                chain = d.chain.as_deref(),
                detail,
                elapsed_ms,
                $message
            )
        };
    }
    if verdict.status.is_success() {
        log!(info, "webhook answered");
    } else if verdict.status.is_client_error() {
        log!(warn, "webhook refused");
    } else {
        log!(error, "webhook failed; OpenAI will deliver it again");
    }
    let mut body = json!({ "outcome": verdict.outcome });
    if let Some(detail) = &verdict.detail {
        body["error"] = json!(detail);
    }
    (verdict.status, axum::Json(body)).into_response()
}
