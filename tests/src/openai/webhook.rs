//! The emulator's webhooks: when a batch it runs ends, it can POST a signed
//! `batch.completed` / `batch.failed` / `batch.expired` / `batch.cancelled` event to a
//! configured URL, the way OpenAI does. Off by default.
//!
//! # What is sent
//!
//! ```text
//! POST <url>
//! content-type: application/json
//! webhook-id: wh_<32 hex>                 (the same for every attempt of one event)
//! webhook-timestamp: <unix seconds>        (of the attempt)
//! webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">
//!
//! {"id":"evt_<32 hex>","object":"event","created_at":<unix seconds>,"type":"batch.completed",
//!  "data":{"id":"<openai batch id>"}}
//! ```
//!
//! The key is the base64 after `whsec_` in the configured secret (Standard Webhooks, as
//! OpenAI signs). This is an independent implementation of the signing (RustCrypto HMAC here,
//! the receiver's own code in `producer::webhook::signature`), checked against the Standard
//! Webhooks reference vector in this module's tests, so a test that passes with both is a test
//! of the scheme, not of one implementation agreeing with itself.
//!
//! # When a batch ends
//!
//! - When a GET first reports a terminal status (the script reached its last step).
//! - When [`OpenAiEmulator::end_batch`] (or `POST /_admin/batches/{id}/end`) ends it now: the
//!   script jumps to its last step, if that step is terminal, without anyone polling. This is
//!   how a real batch ends: on OpenAI's time, not when someone looks.
//! - With `end_after`, each batch ends by itself that long after its first GET (times 1 to 2,
//!   fixed per batch id, so batches do not all end at once): the local run's batches then end
//!   between two of the worker's checks, and the webhook is what makes the fleet notice.
//!
//! Each event is sent once per batch; a delivery that fails (no answer, non-2xx) is attempted
//! up to [`ATTEMPTS`] times, 0.5 s, then 1 s apart, like OpenAI's retries but shorter.
//!
//! # Admin API
//!
//! - `POST /_admin/webhooks` with `{"url": "http://…", "secret": "whsec_…",
//!   "end_after_ms": 2000}` (`end_after_ms` optional) → 204; a bad secret or URL → 400.
//! - `DELETE /_admin/webhooks` → 204 (off).
//! - `GET /_admin/webhooks` → `[WebhookDelivery…]`, every attempt so far.
//! - `POST /_admin/batches/{id}/end` → 200 `{"status": "…"}`; 404 unknown batch; 409 when the
//!   batch cannot end now (already ended, cancelled, or its last step is not terminal).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Sha256;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{BatchState, OpenAiEmulator, Shared, bad_admin, is_terminal};

/// Attempts per event.
pub const ATTEMPTS: u32 = 3;
/// How often `end_after` is looked at.
const TICK: Duration = Duration::from_millis(100);
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how to send webhooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    pub url: String,
    /// `whsec_<base64>`.
    pub secret: String,
    /// End every batch this long (times 1 to 2) after its first GET.
    pub end_after: Option<Duration>,
}

/// One attempt of one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookDelivery {
    pub webhook_id: String,
    pub event_id: String,
    pub event_type: String,
    pub batch_id: String,
    pub attempt: u32,
    /// The receiver's HTTP status; `None` when no answer came.
    pub status: Option<u16>,
    pub error: Option<String>,
}

impl WebhookDelivery {
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// Signs like OpenAI: the key is the base64 after `whsec_`.
#[derive(Clone)]
pub struct WebhookSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for WebhookSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSigner([REDACTED])")
    }
}

impl WebhookSigner {
    pub fn new(secret: &str) -> anyhow::Result<Self> {
        let encoded = secret
            .trim()
            .strip_prefix("whsec_")
            .ok_or_else(|| anyhow::anyhow!("a webhook secret starts with whsec_"))?;
        let key = BASE64
            .decode(encoded)
            .map_err(|_| anyhow::anyhow!("the part after whsec_ is not base64"))?;
        anyhow::ensure!(!key.is_empty(), "the webhook secret's key is empty");
        Ok(WebhookSigner { key })
    }

    /// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
    pub fn sign(&self, webhook_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(format!("{webhook_id}.{timestamp}.").as_bytes());
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }

    /// The three Standard Webhooks headers of `body`, signed at `timestamp`.
    pub fn headers(
        &self,
        webhook_id: &str,
        timestamp: i64,
        body: &[u8],
    ) -> [(&'static str, String); 3] {
        [
            ("webhook-id", webhook_id.to_owned()),
            ("webhook-timestamp", timestamp.to_string()),
            ("webhook-signature", self.sign(webhook_id, timestamp, body)),
        ]
    }
}

/// A new random `whsec_` secret (32 random bytes), for tests and the local run.
pub fn new_secret() -> String {
    let mut bytes = Vec::with_capacity(32);
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    format!("whsec_{}", BASE64.encode(bytes))
}

/// The event type OpenAI sends when a batch ends in `status`.
pub fn event_type(status: &str) -> Option<&'static str> {
    Some(match status {
        "completed" => "batch.completed",
        "failed" => "batch.failed",
        "expired" => "batch.expired",
        "cancelled" | "canceled" => "batch.cancelled",
        _ => return None,
    })
}

/// An event body as OpenAI sends it.
pub fn event_body(event_id: &str, event_type: &str, batch_id: &str, created_at: i64) -> String {
    json!({
        "id": event_id,
        "object": "event",
        "created_at": created_at,
        "type": event_type,
        "data": {"id": batch_id},
    })
    .to_string()
}

fn random_id(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

struct Target {
    url: String,
    signer: WebhookSigner,
    end_after: Option<Duration>,
    stop: CancellationToken,
    runtime: tokio::runtime::Handle,
}

#[derive(Default)]
struct Inner {
    target: Option<Target>,
    first_get: HashMap<String, Instant>,
    /// Batches whose end event was sent.
    done: HashSet<String>,
    /// Batches `end_after` already tried to end (each is tried once).
    timed: HashSet<String>,
    deliveries: Arc<Mutex<Vec<WebhookDelivery>>>,
}

/// The emulator's webhook state (a field of its shared state).
#[derive(Default)]
pub(super) struct Webhooks {
    inner: Mutex<Inner>,
}

impl Webhooks {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called with every answered GET (the batch state may be locked: this never locks it).
    pub(super) fn observe(&self, batch_id: &str, status: &str) {
        self.lock()
            .first_get
            .entry(batch_id.to_owned())
            .or_insert_with(Instant::now);
        if is_terminal(status) {
            self.notify(batch_id, status);
        }
    }

    /// Sends the end event of `batch_id` once, if webhooks are on.
    fn notify(&self, batch_id: &str, status: &str) {
        let Some(event_type) = event_type(status) else {
            return;
        };
        let mut inner = self.lock();
        if inner.target.is_none() || !inner.done.insert(batch_id.to_owned()) {
            return;
        }
        let target = inner.target.as_ref().expect("checked");
        let delivery = deliver(
            target.url.clone(),
            target.signer.clone(),
            event_type,
            batch_id.to_owned(),
            inner.deliveries.clone(),
            target.stop.clone(),
        );
        target.runtime.spawn(delivery);
    }

    fn deliveries(&self) -> Vec<WebhookDelivery> {
        let list = self.lock().deliveries.clone();
        let list = list.lock().unwrap_or_else(|e| e.into_inner());
        list.clone()
    }

    /// Batches due to end by `end_after` at `now` (each returned once).
    fn due(&self, now: Instant) -> Vec<String> {
        let mut inner = self.lock();
        let Some(end_after) = inner.target.as_ref().and_then(|t| t.end_after) else {
            return Vec::new();
        };
        let due: Vec<String> = inner
            .first_get
            .iter()
            .filter(|(id, first)| {
                !inner.done.contains(*id)
                    && !inner.timed.contains(*id)
                    && now.duration_since(**first) >= spread(end_after, id)
            })
            .map(|(id, _)| id.clone())
            .collect();
        inner.timed.extend(due.iter().cloned());
        due
    }
}

/// `base × (1 + h/1000)` for a hash `h` of the id in 0..1000: the same batch always gets the
/// same time, and a set of batches spreads over `[base, 2 × base)`.
fn spread(base: Duration, id: &str) -> Duration {
    let h = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }) % 1000;
    base + base.mul_f64(h as f64 / 1000.0)
}

/// Jumps a batch's script to its last step, if that is terminal and the batch has not ended or
/// been cancelled; returns the status it now has.
fn end_now(batch: &mut BatchState) -> Option<String> {
    if batch.cancel.is_some() || batch.last_status.as_deref().is_some_and(is_terminal) {
        return None;
    }
    let (last, _) = batch.spec.steps.last()?.clone();
    if !is_terminal(&last) {
        return None;
    }
    batch.step = batch.spec.steps.len() - 1;
    batch.polls_in_step = 0;
    let passed: Vec<String> = batch.spec.steps.iter().map(|(s, _)| s.clone()).collect();
    for s in &passed {
        batch.mark(s);
    }
    batch.last_status = Some(last.clone());
    Some(last)
}

fn end_batch_in(shared: &Shared, batch_id: &str) -> Result<String, StatusCode> {
    let status = {
        let mut state = shared.lock();
        let batch = state
            .batches
            .get_mut(batch_id)
            .ok_or(StatusCode::NOT_FOUND)?;
        end_now(batch).ok_or(StatusCode::CONFLICT)?
    };
    shared.webhooks.notify(batch_id, &status);
    Ok(status)
}

async fn deliver(
    url: String,
    signer: WebhookSigner,
    event_type: &'static str,
    batch_id: String,
    deliveries: Arc<Mutex<Vec<WebhookDelivery>>>,
    stop: CancellationToken,
) {
    let webhook_id = random_id("wh_");
    let event_id = random_id("evt_");
    let body = event_body(&event_id, event_type, &batch_id, unix_now());
    let client = reqwest::Client::new();
    for attempt in 1..=ATTEMPTS {
        let mut request = client
            .post(&url)
            .timeout(DELIVERY_TIMEOUT)
            .header("content-type", "application/json")
            .body(body.clone());
        for (name, value) in signer.headers(&webhook_id, unix_now(), body.as_bytes()) {
            request = request.header(name, value);
        }
        let result = tokio::select! {
            r = request.send() => r,
            () = stop.cancelled() => return,
        };
        let (status, error) = match result {
            Ok(r) => (Some(r.status().as_u16()), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let record = WebhookDelivery {
            webhook_id: webhook_id.clone(),
            event_id: event_id.clone(),
            event_type: event_type.to_owned(),
            batch_id: batch_id.clone(),
            attempt,
            status,
            error,
        };
        let ok = record.succeeded();
        tracing::info!(batch_id = %batch_id, event_type, attempt, status = ?record.status, "webhook sent");
        deliveries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record);
        if ok || attempt == ATTEMPTS {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500 << (attempt - 1))) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Ends batches by `end_after` until stopped or the emulator is gone.
async fn end_after_loop(shared: Weak<Shared>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = stop.cancelled() => return,
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        for id in shared.webhooks.due(Instant::now()) {
            if let Ok(status) = end_batch_in(&shared, &id) {
                tracing::info!(batch_id = %id, status = %status, "batch ended by end_after");
            }
        }
    }
}

/// Turns webhooks on (replacing the previous target) or off. Must run inside a tokio runtime.
fn configure(shared: &Arc<Shared>, config: Option<WebhookConfig>) -> anyhow::Result<()> {
    let target = match config {
        None => None,
        Some(c) => {
            let parsed = reqwest::Url::parse(&c.url)
                .map_err(|e| anyhow::anyhow!("webhook url {:?}: {e}", c.url))?;
            anyhow::ensure!(
                matches!(parsed.scheme(), "http" | "https"),
                "webhook url {:?} is not http(s)",
                c.url
            );
            Some(Target {
                url: c.url,
                signer: WebhookSigner::new(&c.secret)?,
                end_after: c.end_after,
                stop: CancellationToken::new(),
                runtime: tokio::runtime::Handle::try_current()
                    .map_err(|_| anyhow::anyhow!("webhooks need a tokio runtime"))?,
            })
        }
    };
    let mut inner = shared.webhooks.lock();
    if let Some(old) = inner.target.take() {
        old.stop.cancel();
    }
    if let Some(t) = &target
        && t.end_after.is_some()
    {
        t.runtime
            .spawn(end_after_loop(Arc::downgrade(shared), t.stop.clone()));
    }
    inner.target = target;
    Ok(())
}

impl OpenAiEmulator {
    /// Turns webhooks on (`Some`) or off (`None`). Call inside a tokio runtime.
    pub fn set_webhook(&self, config: Option<WebhookConfig>) -> anyhow::Result<()> {
        configure(&self.shared, config)
    }

    /// Ends the batch now (see the module docs) and sends its webhook; `None` when it cannot
    /// end (unknown, already ended, cancelled, or its last step is not terminal).
    pub fn end_batch(&self, batch_id: &str) -> Option<String> {
        end_batch_in(&self.shared, batch_id).ok()
    }

    /// Every delivery attempt so far.
    pub fn webhook_deliveries(&self) -> Vec<WebhookDelivery> {
        self.shared.webhooks.deliveries()
    }
}

#[derive(Deserialize)]
struct ConfigBody {
    url: String,
    secret: String,
    #[serde(default)]
    end_after_ms: Option<u64>,
}

async fn admin_set(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let body: ConfigBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return bad_admin(format!(
                "expected {{\"url\", \"secret\", \"end_after_ms\"}}: {e}"
            ));
        }
    };
    let config = WebhookConfig {
        url: body.url,
        secret: body.secret,
        end_after: body.end_after_ms.map(Duration::from_millis),
    };
    match configure(&shared, Some(config)) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => bad_admin(e),
    }
}

async fn admin_off(State(shared): State<Arc<Shared>>) -> Response {
    match configure(&shared, None) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => bad_admin(e),
    }
}

async fn admin_deliveries(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.webhooks.deliveries()).into_response()
}

async fn admin_end(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match end_batch_in(&shared, &id) {
        Ok(status) => axum::Json(json!({"status": status})).into_response(),
        Err(code) => code.into_response(),
    }
}

/// The admin routes above (merged into the emulator's admin router).
pub(super) fn admin_routes() -> Router<Arc<Shared>> {
    Router::new()
        .route(
            "/_admin/webhooks",
            post(admin_set).delete(admin_off).get(admin_deliveries),
        )
        .route("/_admin/batches/{id}/end", post(admin_end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_standard_webhooks_reference_vector() {
        let signer = WebhookSigner::new("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            signer.sign(
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1_649_367_553,
                br#"{"email":"test@example.com","username":"test_user"}"#
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
        assert!(!format!("{signer:?}").contains("C2FVsBQ"));
    }

    #[test]
    fn secrets_and_event_types() {
        assert!(WebhookSigner::new("C2FVsBQIhrscChlQIMV+b5sSYspob7oD").is_err());
        assert!(WebhookSigner::new("whsec_***").is_err());
        let fresh = new_secret();
        assert!(fresh.starts_with("whsec_"));
        assert_eq!(BASE64.decode(&fresh[6..]).unwrap().len(), 32);
        assert_ne!(fresh, new_secret());
        assert_eq!(event_type("completed"), Some("batch.completed"));
        assert_eq!(event_type("canceled"), Some("batch.cancelled"));
        assert_eq!(event_type("in_progress"), None);
        let body: serde_json::Value =
            serde_json::from_str(&event_body("evt_1", "batch.failed", "batch_9", 5)).unwrap();
        assert_eq!(body["data"]["id"], "batch_9");
        assert_eq!(body["object"], "event");
    }

    #[test]
    fn end_after_spreads_batches_over_one_to_two_times() {
        let base = Duration::from_secs(2);
        let times: Vec<Duration> = (0..50)
            .map(|i| spread(base, &format!("batch_{i}")))
            .collect();
        assert!(times.iter().all(|t| *t >= base && *t < base * 2));
        assert_eq!(spread(base, "batch_7"), spread(base, "batch_7"));
        let distinct: HashSet<Duration> = times.into_iter().collect();
        assert!(distinct.len() > 40, "spread out: {}", distinct.len());
    }
}
