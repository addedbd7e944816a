//! Emulator of the part of the OpenAI Batch API the fleet uses (spec: `docs/spec/openai-batch.md`).
//!
//! Endpoints, under `base_url()` = `http://127.0.0.1:PORT/v1`:
//!
//! - `GET /v1/batches/{id}` → the batch object (below). Each answered GET advances the batch's
//!   script by one poll.
//! - `POST /v1/batches/{id}/cancel` → the batch object in `cancelling`; the next GET reports
//!   `cancelled` (after [`BatchSpec::cancelling_polls`] more `cancelling` GETs). Cancelling a
//!   batch whose last reported status is terminal → **409** `invalid_request_error` "Cannot cancel
//!   a batch with status '…'." (the exact code of the real API is not documented; 409 chosen).
//!   Cancelling a batch already cancelling returns it unchanged.
//! - `GET /v1/files/{id}/content` → the raw bytes, `application/octet-stream`, exact
//!   `Content-Length`.
//!
//! Every API call needs `Authorization: Bearer KEY` (any non-empty key, or exactly the key set
//! with [`OpenAiEmulator::set_api_key`]); otherwise 401. Errors use OpenAI's shape
//! `{"error": {"message", "type", "param": null, "code"}}`: 401 (`invalid_request_error`, code
//! `invalid_api_key` for a wrong key, `null` for a missing one), 404 for unknown batches, files
//! and URLs (`invalid_request_error`), 409 as above, and injected faults (429 `requests` /
//! `rate_limit_exceeded`, 500 and 503 `server_error`, 502 as an HTML page).
//!
//! As the real API always does: every answer carries `x-request-id: req_<32 hex>`, and every
//! 429 and 503 carries both `retry-after-ms` and `Retry-After` (whole seconds, rounded up): the
//! fault's `retry_after` when it has one, else the emulator's retry wait
//! ([`OpenAiEmulator::set_retry_wait`], default 50 ms).
//!
//! Deployment faults, for the errors of the deployment (docs/spec/fleet-design.md):
//!
//! - key rejection windows ([`OpenAiEmulator::reject_keys_for`], `/_admin/reject_keys`): every
//!   API call answers 401 `invalid_api_key`, as for a revoked key, until the window ends or is
//!   cleared;
//! - exhausted quota ([`OpenAiEmulator::set_quota_exhausted`], `/_admin/quota`): every API call
//!   answers 429 `insufficient_quota` (billing), until cleared; [`insufficient_quota`] is the
//!   same answer as a one-shot [`FaultSpec`].
//!
//! # Batch object
//!
//! ```json
//! {"id": "batch_1", "object": "batch", "endpoint": "/v1/chat/completions",
//!  "errors": null, "input_file_id": "file-in", "completion_window": "24h",
//!  "status": "completed", "output_file_id": "file-out", "error_file_id": null,
//!  "created_at": 1700000000, "in_progress_at": 1700000060, "expires_at": 1700086400,
//!  "finalizing_at": 1700000120, "completed_at": 1700000180, "failed_at": null,
//!  "expired_at": null, "cancelling_at": null, "cancelled_at": null,
//!  "request_counts": {"total": 2, "completed": 2, "failed": 0}, "metadata": null,
//!  "model": "gpt-4.1-mini", "usage": {"input_tokens": 0, "input_tokens_details":
//!  {"cached_tokens": 0}, "output_tokens": 0, "output_tokens_details": {"reasoning_tokens": 0},
//!  "total_tokens": 0}}
//! ```
//!
//! Every field of openai-python's `Batch` is present (checked by the contract tests in
//! `tests/contract/`). `output_file_id`, `error_file_id` and `errors` (`{"object": "list",
//! "data": [{"code", "message", "param", "line"}]}`) are non-null only once the reported status
//! is terminal (`completed`, `failed`, `expired`, `cancelled` or `canceled`); with
//! [`BatchSpec::errors_data_null`] a terminal batch without errors reports
//! `{"object": "list", "data": null}` instead of `null`, which the API allows.
//!
//! # Admin API (no auth, not logged, never faulted)
//!
//! - `POST /_admin/batches` with a [`BatchSpec`] JSON → 201 (replaces a batch of the same id).
//! - `GET /_admin/batches/{id}` → `{"spec": BatchSpec, "last_status": "…"|null, "gets": N}`.
//! - `POST /_admin/files/{id}` with the raw file bytes → 201; `DELETE /_admin/files/{id}` → 204.
//! - `POST /_admin/faults` with a [`FaultSpec`] JSON → 201; `DELETE /_admin/faults` → 204.
//! - `POST /_admin/outage` with `{"on": true|false}` → 204 (every API call answers 500 while on).
//! - `POST /_admin/latency` with `{"ms": N}` → 204 (added before every API answer).
//! - `POST /_admin/reject_keys` with `{"seconds": N}` or `{"seconds": null}` (until cleared)
//!   → 204; `DELETE /_admin/reject_keys` → 204.
//! - `POST /_admin/quota` with `{"exhausted": bool}` → 204.
//! - `POST /_admin/retry_wait` with `{"ms": N}` → 204 (see above).
//! - `GET /_admin/requests` → `[RequestRecord…]`; `DELETE /_admin/requests` → 204.

pub mod fixtures;
#[cfg(test)]
mod tests;
pub mod webhook; // signed batch-end webhooks: the four `webhook` lines below hook it in

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path as FsPath;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use crate::common::{Fault, FaultSpec, RequestRecord};
use crate::common::{Harness, Server, harness_layer, key_rejection_routes};

/// The model the emulated batches report by default.
pub const DEFAULT_MODEL: &str = "gpt-4.1-mini";
/// Default wait announced by 429 and 503 answers that have none of their own: short, so that
/// tests retrying through a fault stay fast.
pub const DEFAULT_RETRY_WAIT: Duration = Duration::from_millis(50);

/// `usage` of a batch object (tokens; the details are reported as zero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}

impl Usage {
    fn json(self) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.input_tokens.saturating_add(self.output_tokens),
        })
    }
}

/// `request_counts` of a batch object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

/// One entry of `errors.data` (validation errors of a failed batch).
///
/// JSON: `{"code": "…", "message": "…", "param": null, "line": 3}` (`param`, `line` optional).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchErrorEntry {
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub param: Option<String>,
    #[serde(default)]
    pub line: Option<u64>,
}

/// A scripted batch.
///
/// JSON (every field but `id` optional, defaults shown):
///
/// ```json
/// {"id": "batch_1", "input_file_id": "", "output_file_id": null, "error_file_id": null,
///  "endpoint": "/v1/chat/completions", "completion_window": "24h",
///  "created_at": 1700000000, "expires_at": null,
///  "in_progress_at": null, "finalizing_at": null, "completed_at": null, "failed_at": null,
///  "expired_at": null, "cancelling_at": null, "cancelled_at": null,
///  "request_counts": {"total": 0, "completed": 0, "failed": 0},
///  "errors": [], "steps": [["in_progress", 2], ["completed", 1]],
///  "cancelling_polls": 0, "metadata": null, "model": "gpt-4.1-mini",
///  "usage": {"input_tokens": 0, "output_tokens": 0}, "errors_data_null": false}
/// ```
///
/// `model` and `usage` may be `null` (the real API sends `usage: null` for old batches).
///
/// Script: the batch reports `steps[0].0` for `steps[0].1` GETs, then `steps[1].0`, …; the
/// last step sticks whatever its count. A step with 0 polls is passed through without being
/// reported (but its timestamp is still set, as the real batch went through it). No steps at
/// all means `completed` from the first GET. Statuses are free strings.
///
/// Timestamps: the `*_at` field of a status (`in_progress` → `in_progress_at`, `finalizing`,
/// `completed`, `failed`, `expired`, `cancelling`/`canceling` → `cancelling_at`,
/// `cancelled`/`canceled` → `cancelled_at`) is null until the batch first reaches that status,
/// then holds the spec's value, or if the spec leaves it `None`, `created_at + 60 × n` where n
/// counts the timestamps set so far for this batch (1 for the first). `expires_at` `None` means
/// `created_at + 86400`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BatchSpec {
    pub id: String,
    pub input_file_id: String,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub endpoint: String,
    pub completion_window: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub in_progress_at: Option<i64>,
    pub finalizing_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub expired_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub request_counts: RequestCounts,
    pub errors: Vec<BatchErrorEntry>,
    pub steps: Vec<(String, u32)>,
    /// GETs after a cancel that still report `cancelling` before `cancelled` (default 0).
    pub cancelling_polls: u32,
    pub metadata: Option<serde_json::Map<String, Value>>,
    pub model: Option<String>,
    pub usage: Option<Usage>,
    /// A terminal batch without errors reports `"errors": {"object": "list", "data": null}`
    /// instead of `"errors": null`.
    pub errors_data_null: bool,
}

impl Default for BatchSpec {
    fn default() -> Self {
        Self {
            id: String::new(),
            input_file_id: String::new(),
            output_file_id: None,
            error_file_id: None,
            endpoint: "/v1/chat/completions".to_owned(),
            completion_window: "24h".to_owned(),
            created_at: 1_700_000_000,
            expires_at: None,
            in_progress_at: None,
            finalizing_at: None,
            completed_at: None,
            failed_at: None,
            expired_at: None,
            cancelling_at: None,
            cancelled_at: None,
            request_counts: RequestCounts::default(),
            errors: Vec::new(),
            steps: Vec::new(),
            cancelling_polls: 0,
            metadata: None,
            model: Some(DEFAULT_MODEL.to_owned()),
            usage: Some(Usage::default()),
            errors_data_null: false,
        }
    }
}

impl BatchSpec {
    /// A batch with default times and no steps (reports `completed`).
    pub fn new(id: impl Into<String>, input_file_id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            input_file_id: input_file_id.into(),
            ..Self::default()
        }
    }

    /// Sets the script, e.g. `[("validating", 1), ("in_progress", 2), ("completed", 1)]`.
    #[must_use]
    pub fn with_steps<S: Into<String>>(
        mut self,
        steps: impl IntoIterator<Item = (S, u32)>,
    ) -> Self {
        self.steps = steps.into_iter().map(|(s, n)| (s.into(), n)).collect();
        self
    }

    #[must_use]
    pub fn with_output_file(mut self, id: impl Into<String>) -> Self {
        self.output_file_id = Some(id.into());
        self
    }

    #[must_use]
    pub fn with_error_file(mut self, id: impl Into<String>) -> Self {
        self.error_file_id = Some(id.into());
        self
    }

    /// A `completed` batch whose every request failed: no output file, only an error file
    /// (docs/spec/openai-batch.md: every target is reset). `failed` requests, all counted as failed.
    pub fn completed_without_output(
        id: impl Into<String>,
        input_file_id: impl Into<String>,
        error_file_id: impl Into<String>,
        failed: u64,
    ) -> Self {
        Self::new(id, input_file_id)
            .with_error_file(error_file_id)
            .with_request_counts(failed, 0, failed)
    }

    #[must_use]
    pub fn with_request_counts(mut self, total: u64, completed: u64, failed: u64) -> Self {
        self.request_counts = RequestCounts {
            total,
            completed,
            failed,
        };
        self
    }

    fn configured_at(&self, field: &str) -> Option<i64> {
        match field {
            "in_progress_at" => self.in_progress_at,
            "finalizing_at" => self.finalizing_at,
            "completed_at" => self.completed_at,
            "failed_at" => self.failed_at,
            "expired_at" => self.expired_at,
            "cancelling_at" => self.cancelling_at,
            "cancelled_at" => self.cancelled_at,
            _ => None,
        }
    }
}

/// The state file of the `openai-emulator` binary (`--state FILE`), also accepted by
/// [`OpenAiEmulator::load_state`]:
///
/// ```json
/// {"batches": [BatchSpec…], "files": {"file-out": "<file content as a string>"}}
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StateFile {
    pub batches: Vec<BatchSpec>,
    pub files: BTreeMap<String, String>,
}

impl StateFile {
    pub fn load(path: &FsPath) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("parsing {}: {e}", path.display()))
    }
}

/// Whether the API treats this status as final.
pub fn is_terminal(status: &str) -> bool {
    matches!(
        status,
        "completed" | "failed" | "expired" | "cancelled" | "canceled"
    )
}

fn at_field(status: &str) -> Option<&'static str> {
    Some(match status {
        "in_progress" => "in_progress_at",
        "finalizing" => "finalizing_at",
        "completed" => "completed_at",
        "failed" => "failed_at",
        "expired" => "expired_at",
        "cancelling" | "canceling" => "cancelling_at",
        "cancelled" | "canceled" => "cancelled_at",
        _ => return None,
    })
}

struct BatchState {
    spec: BatchSpec,
    step: usize,
    polls_in_step: u32,
    last_status: Option<String>,
    /// `Some(remaining cancelling GETs)` once cancelled.
    cancel: Option<u32>,
    times: BTreeMap<&'static str, i64>,
    gets: u32,
}

impl BatchState {
    fn new(spec: BatchSpec) -> Self {
        Self {
            spec,
            step: 0,
            polls_in_step: 0,
            last_status: None,
            cancel: None,
            times: BTreeMap::new(),
            gets: 0,
        }
    }

    fn mark(&mut self, status: &str) {
        let Some(field) = at_field(status) else {
            return;
        };
        if self.times.contains_key(field) {
            return;
        }
        let n = i64::try_from(self.times.len()).unwrap_or(i64::MAX - 1) + 1;
        let value = self
            .spec
            .configured_at(field)
            .unwrap_or(self.spec.created_at.saturating_add(60 * n));
        self.times.insert(field, value);
    }

    /// The status a GET reports now; advances the script.
    fn poll(&mut self) -> String {
        self.gets += 1;
        let status = if let Some(remaining) = self.cancel.as_mut() {
            if *remaining > 0 {
                *remaining -= 1;
                "cancelling".to_owned()
            } else {
                "cancelled".to_owned()
            }
        } else if self.spec.steps.is_empty() {
            "completed".to_owned()
        } else {
            let last = self.spec.steps.len() - 1;
            while self.step < last && self.polls_in_step >= self.spec.steps[self.step].1 {
                self.step += 1;
                self.polls_in_step = 0;
            }
            self.polls_in_step = self.polls_in_step.saturating_add(1);
            let passed: Vec<String> = self.spec.steps[..=self.step]
                .iter()
                .map(|(s, _)| s.clone())
                .collect();
            for s in &passed {
                self.mark(s);
            }
            self.spec.steps[self.step].0.clone()
        };
        self.mark(&status);
        self.last_status = Some(status.clone());
        status
    }

    /// The status the batch is in for a cancel decision: the last one reported, or the first
    /// step's if never polled.
    fn current_status(&self) -> String {
        self.last_status.clone().unwrap_or_else(|| {
            self.spec
                .steps
                .first()
                .map_or_else(|| "completed".to_owned(), |(s, _)| s.clone())
        })
    }

    fn object(&self, status: &str) -> Value {
        let spec = &self.spec;
        let terminal = is_terminal(status);
        let at = |field: &str| self.times.get(field).copied();
        let errors = if terminal && !spec.errors.is_empty() {
            json!({"object": "list", "data": spec.errors})
        } else if terminal && spec.errors_data_null {
            json!({"object": "list", "data": null})
        } else {
            Value::Null
        };
        json!({
            "id": spec.id,
            "object": "batch",
            "endpoint": spec.endpoint,
            "errors": errors,
            "input_file_id": spec.input_file_id,
            "completion_window": spec.completion_window,
            "status": status,
            "output_file_id": if terminal { spec.output_file_id.clone() } else { None },
            "error_file_id": if terminal { spec.error_file_id.clone() } else { None },
            "created_at": spec.created_at,
            "in_progress_at": at("in_progress_at"),
            "expires_at": spec.expires_at.unwrap_or(spec.created_at.saturating_add(86_400)),
            "finalizing_at": at("finalizing_at"),
            "completed_at": at("completed_at"),
            "failed_at": at("failed_at"),
            "expired_at": at("expired_at"),
            "cancelling_at": at("cancelling_at"),
            "cancelled_at": at("cancelled_at"),
            "request_counts": spec.request_counts,
            "metadata": spec.metadata,
            "model": spec.model,
            "usage": spec.usage.map(Usage::json),
        })
    }
}

struct OpenAiState {
    batches: HashMap<String, BatchState>,
    files: HashMap<String, Bytes>,
    api_key: Option<String>,
    quota_exhausted: bool,
    retry_wait: Duration,
}

impl Default for OpenAiState {
    fn default() -> Self {
        Self {
            batches: HashMap::new(),
            files: HashMap::new(),
            api_key: None,
            quota_exhausted: false,
            retry_wait: DEFAULT_RETRY_WAIT,
        }
    }
}

struct Shared {
    state: Mutex<OpenAiState>,
    harness: Arc<Harness>,
    webhooks: webhook::Webhooks,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, OpenAiState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running OpenAI Batch API emulator. Stops when dropped or on [`OpenAiEmulator::shutdown`].
pub struct OpenAiEmulator {
    shared: Arc<Shared>,
    server: Server,
}

impl OpenAiEmulator {
    /// Starts on `127.0.0.1:0` (a free port).
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<Self> {
        let harness = Arc::new(Harness::new(openai_fault_body));
        let shared = Arc::new(Shared {
            state: Mutex::new(OpenAiState::default()),
            harness: harness.clone(),
            webhooks: webhook::Webhooks::default(),
        });
        let server = Server::bind(addr, router(shared.clone())).await?;
        tracing::info!(addr = %server.addr(), "openai emulator listening");
        Ok(Self { shared, server })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:PORT` (where `/_admin/…` lives).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `http://127.0.0.1:PORT/v1`, the value for `OPENAI_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.url())
    }

    /// `Some(key)`: only `Bearer key` is accepted. `None` (default): any non-empty key.
    pub fn set_api_key(&self, key: Option<String>) {
        self.shared.lock().api_key = key;
    }

    /// Every API call answers 401 `invalid_api_key` for `window` (a revoked key), then keys are
    /// accepted again.
    pub fn reject_keys_for(&self, window: Duration) {
        self.shared.harness.reject_keys(Some(window));
    }

    /// Every API call answers 401 until [`Self::accept_keys`].
    pub fn reject_keys(&self) {
        self.shared.harness.reject_keys(None);
    }

    /// Ends a key rejection window.
    pub fn accept_keys(&self) {
        self.shared.harness.accept_keys();
    }

    /// Whether a key rejection window is open now.
    pub fn keys_rejected(&self) -> bool {
        self.shared.harness.keys_rejected()
    }

    /// While on, every API call (with an accepted key) answers 429 `insufficient_quota`.
    pub fn set_quota_exhausted(&self, on: bool) {
        self.shared.lock().quota_exhausted = on;
    }

    /// The wait announced by 429 and 503 answers without one of their own (default
    /// [`DEFAULT_RETRY_WAIT`]), as `retry-after-ms` and, rounded up, `Retry-After`.
    pub fn set_retry_wait(&self, wait: Duration) {
        self.shared.lock().retry_wait = wait;
    }

    /// Registers (or replaces, restarting its script) a batch.
    pub fn add_batch(&self, spec: BatchSpec) {
        self.shared
            .lock()
            .batches
            .insert(spec.id.clone(), BatchState::new(spec));
    }

    /// The status the batch last reported (GET or cancel), `None` if never asked or unknown.
    pub fn batch_status(&self, id: &str) -> Option<String> {
        self.shared
            .lock()
            .batches
            .get(id)
            .and_then(|b| b.last_status.clone())
    }

    /// How many successful GETs the batch has answered.
    pub fn batch_gets(&self, id: &str) -> u32 {
        self.shared.lock().batches.get(id).map_or(0, |b| b.gets)
    }

    /// Whether a cancel was accepted for the batch.
    pub fn was_cancelled(&self, id: &str) -> bool {
        self.shared
            .lock()
            .batches
            .get(id)
            .is_some_and(|b| b.cancel.is_some())
    }

    pub fn add_file(&self, id: impl Into<String>, content: impl Into<Bytes>) {
        self.shared.lock().files.insert(id.into(), content.into());
    }

    /// Removes a file (its content then answers 404). Returns whether it existed.
    pub fn remove_file(&self, id: &str) -> bool {
        self.shared.lock().files.remove(id).is_some()
    }

    /// Adds every batch and file of a state file.
    pub fn load_state(&self, state: StateFile) {
        for spec in state.batches {
            self.add_batch(spec);
        }
        for (id, content) in state.files {
            self.add_file(id, content);
        }
    }

    /// Queues a fault (see [`FaultSpec`]); paths include `/v1`.
    pub fn fail_next(&self, fault: FaultSpec) {
        self.shared.harness.fail_next(fault);
    }

    pub fn clear_faults(&self) {
        self.shared.harness.clear_faults();
    }

    /// Faults still queued (with their remaining `times`).
    pub fn pending_faults(&self) -> Vec<FaultSpec> {
        self.shared.harness.pending_faults()
    }

    /// While on, every API call answers 500.
    pub fn set_outage(&self, on: bool) {
        self.shared.harness.set_outage(on);
    }

    /// Added before every API answer.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.harness.set_latency(latency);
    }

    /// Every API request so far, in the order their answers were produced.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.harness.requests()
    }

    /// Requests with this method whose path starts with `path_prefix`.
    pub fn count(&self, method: &str, path_prefix: &str) -> usize {
        self.shared.harness.count(method, path_prefix)
    }

    pub fn clear_requests(&self) {
        self.shared.harness.clear_requests();
    }

    /// Stops accepting connections and waits (up to 5 s) for open requests.
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

/// `{"error": {"message", "type", "param": null, "code"}}` with `status`.
pub fn error_response(
    status: StatusCode,
    message: &str,
    kind: &str,
    code: Option<&str>,
) -> Response {
    (
        status,
        axum::Json(json!({
            "error": {"message": message, "type": kind, "param": null, "code": code}
        })),
    )
        .into_response()
}

/// The 429 of exhausted billing, as the real API words it.
pub fn insufficient_quota_response() -> Response {
    error_response(
        StatusCode::TOO_MANY_REQUESTS,
        "You exceeded your current quota, please check your plan and billing details. For more \
         information on this error, read the docs: \
         https://platform.openai.com/docs/guides/error-codes/api-errors.",
        "insufficient_quota",
        Some("insufficient_quota"),
    )
}

/// A one-shot fault answering 429 `insufficient_quota` (add `.times(n)`, `.on_path(…)`).
pub fn insufficient_quota() -> FaultSpec {
    FaultSpec::status(429).with_body(
        json!({"error": {
            "message": "You exceeded your current quota, please check your plan and billing \
                        details. (emulated)",
            "type": "insufficient_quota",
            "param": null,
            "code": "insufficient_quota",
        }})
        .to_string(),
    )
}

fn openai_fault_body(status: StatusCode) -> Response {
    match status.as_u16() {
        429 => error_response(
            status,
            "Rate limit reached for requests (emulated). Please try again later.",
            "requests",
            Some("rate_limit_exceeded"),
        ),
        502 => (
            status,
            [(header::CONTENT_TYPE, "text/html")],
            "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n\
             <center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n",
        )
            .into_response(),
        503 => error_response(
            status,
            "The engine is currently overloaded, please try again later (emulated).",
            "server_error",
            None,
        ),
        s if s >= 500 => error_response(
            status,
            "The server had an error while processing your request. Sorry about that! (emulated)",
            "server_error",
            None,
        ),
        _ => error_response(
            status,
            &format!("Emulated error {status}"),
            "invalid_request_error",
            None,
        ),
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/v1/batches/{id}", get(get_batch))
        .route("/v1/batches/{id}/cancel", post(cancel_batch))
        .route("/v1/files/{id}", get(file_object))
        .route("/v1/files/{id}/content", get(file_content))
        .route_layer(from_fn_with_state(shared.clone(), auth));
    let admin = Router::new()
        .route("/_admin/batches", post(admin_add_batch))
        .route("/_admin/batches/{id}", get(admin_get_batch))
        .route(
            "/_admin/files/{id}",
            post(admin_add_file).delete(admin_remove_file),
        )
        .route(
            "/_admin/faults",
            post(admin_add_fault).delete(admin_clear_faults),
        )
        .merge(webhook::admin_routes())
        .route("/_admin/outage", post(admin_outage))
        .route("/_admin/latency", post(admin_latency))
        .route("/_admin/quota", post(admin_quota))
        .route("/_admin/retry_wait", post(admin_retry_wait))
        .route(
            "/_admin/requests",
            get(admin_requests).delete(admin_clear_requests),
        )
        .layer(DefaultBodyLimit::disable());
    let harness = shared.harness.clone();
    api.merge(admin)
        .merge(key_rejection_routes(harness.clone()))
        .fallback(unknown_url)
        .with_state(shared.clone())
        .layer(from_fn_with_state(harness, harness_layer))
        // Outermost: the headers go on every answer, faults included.
        .layer(from_fn_with_state(shared, answer_headers))
}

/// `x-request-id` on every API answer, and `retry-after-ms` with `Retry-After` on every 429
/// and 503, as the real API sends them.
async fn answer_headers(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    if req.uri().path().starts_with(crate::common::ADMIN_PREFIX) {
        return next.run(req).await;
    }
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    if !headers.contains_key("x-request-id") {
        let id = format!("req_{}", uuid::Uuid::new_v4().simple());
        if let Ok(v) = HeaderValue::from_str(&id) {
            headers.insert("x-request-id", v);
        }
    }
    let status = response.status();
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        let given = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let wait = given.unwrap_or_else(|| shared.lock().retry_wait);
        let headers = response.headers_mut();
        if !headers.contains_key("retry-after-ms") {
            headers.insert("retry-after-ms", HeaderValue::from(wait_ms(wait)));
        }
        if !headers.contains_key(header::RETRY_AFTER) {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
    }
    response
}

fn wait_ms(wait: Duration) -> u64 {
    u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)
}

async fn auth(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let provided = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, key) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
        })
        .filter(|k| !k.is_empty())
        .map(str::to_owned);
    if shared.harness.keys_rejected() {
        return error_response(
            StatusCode::UNAUTHORIZED,
            "Incorrect API key provided: ****. You can find your API key at \
             https://platform.openai.com/account/api-keys. (emulated key rejection)",
            "invalid_request_error",
            Some("invalid_api_key"),
        );
    }
    let (expected, quota_exhausted) = {
        let state = shared.lock();
        (state.api_key.clone(), state.quota_exhausted)
    };
    match (provided, expected) {
        (None, _) => error_response(
            StatusCode::UNAUTHORIZED,
            "You didn't provide an API key. You need to provide your API key in an \
             Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            "invalid_request_error",
            None,
        ),
        (Some(key), Some(expected)) if key != expected => {
            let tail: String = key
                .chars()
                .rev()
                .take(4)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            error_response(
                StatusCode::UNAUTHORIZED,
                &format!("Incorrect API key provided: ****{tail}."),
                "invalid_request_error",
                Some("invalid_api_key"),
            )
        }
        _ if quota_exhausted => insufficient_quota_response(),
        _ => next.run(req).await,
    }
}

async fn unknown_url(method: Method, uri: Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        &format!("Invalid URL ({method} {})", uri.path()),
        "invalid_request_error",
        None,
    )
}

fn no_batch(id: &str) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        &format!("No batch found with id '{id}'."),
        "invalid_request_error",
        None,
    )
}

async fn get_batch(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let mut state = shared.lock();
    let Some(batch) = state.batches.get_mut(&id) else {
        return no_batch(&id);
    };
    let status = batch.poll();
    shared.webhooks.observe(&id, &status);
    axum::Json(batch.object(&status)).into_response()
}

async fn cancel_batch(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let mut state = shared.lock();
    let Some(batch) = state.batches.get_mut(&id) else {
        return no_batch(&id);
    };
    let current = batch.current_status();
    if is_terminal(&current) {
        return error_response(
            StatusCode::CONFLICT,
            &format!("Cannot cancel a batch with status '{current}'."),
            "invalid_request_error",
            None,
        );
    }
    if batch.cancel.is_none() {
        batch.cancel = Some(batch.spec.cancelling_polls);
        batch.mark("cancelling");
        batch.last_status = Some("cancelling".to_owned());
    }
    axum::Json(batch.object("cancelling")).into_response()
}

/// `GET /v1/files/{id}`: the file object, as the real API describes a batch's file.
async fn file_object(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let Some(content) = shared.lock().files.get(&id).cloned() else {
        return error_response(
            StatusCode::NOT_FOUND,
            &format!("No such File object: {id}"),
            "invalid_request_error",
            None,
        );
    };
    axum::Json(json!({
        "id": id,
        "object": "file",
        "bytes": content.len(),
        "created_at": 1_750_000_000,
        "filename": format!("{id}.jsonl"),
        "purpose": "batch_output",
        "status": "processed",
        "status_details": null,
    }))
    .into_response()
}

async fn file_content(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let Some(content) = shared.lock().files.get(&id).cloned() else {
        return error_response(
            StatusCode::NOT_FOUND,
            &format!("No such File object: {id}"),
            "invalid_request_error",
            None,
        );
    };
    let mut response = Response::new(Body::from(content));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

fn bad_admin(message: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": message.to_string()})),
    )
        .into_response()
}

async fn admin_add_batch(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let spec: BatchSpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return bad_admin(format!("invalid BatchSpec: {e}")),
    };
    if spec.id.is_empty() {
        return bad_admin("BatchSpec.id is required");
    }
    shared
        .lock()
        .batches
        .insert(spec.id.clone(), BatchState::new(spec));
    StatusCode::CREATED.into_response()
}

async fn admin_get_batch(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let state = shared.lock();
    match state.batches.get(&id) {
        Some(b) => axum::Json(json!({
            "spec": b.spec,
            "last_status": b.last_status,
            "gets": b.gets,
        }))
        .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn admin_add_file(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
) -> StatusCode {
    shared.lock().files.insert(id, body);
    StatusCode::CREATED
}

async fn admin_remove_file(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> StatusCode {
    if shared.lock().files.remove(&id).is_some() {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

async fn admin_add_fault(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<FaultSpec>(&body) {
        Ok(f) => {
            shared.harness.fail_next(f);
            StatusCode::CREATED.into_response()
        }
        Err(e) => bad_admin(format!("invalid FaultSpec: {e}")),
    }
}

async fn admin_clear_faults(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.harness.clear_faults();
    StatusCode::NO_CONTENT
}

#[derive(Deserialize)]
struct OutageBody {
    on: bool,
}

async fn admin_outage(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<OutageBody>(&body) {
        Ok(b) => {
            shared.harness.set_outage(b.on);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => bad_admin(format!("expected {{\"on\": bool}}: {e}")),
    }
}

#[derive(Deserialize)]
struct LatencyBody {
    ms: u64,
}

async fn admin_latency(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<LatencyBody>(&body) {
        Ok(b) => {
            shared.harness.set_latency(Duration::from_millis(b.ms));
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => bad_admin(format!("expected {{\"ms\": N}}: {e}")),
    }
}

#[derive(Deserialize)]
struct QuotaBody {
    exhausted: bool,
}

async fn admin_quota(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<QuotaBody>(&body) {
        Ok(b) => {
            shared.lock().quota_exhausted = b.exhausted;
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => bad_admin(format!("expected {{\"exhausted\": bool}}: {e}")),
    }
}

async fn admin_retry_wait(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<LatencyBody>(&body) {
        Ok(b) => {
            shared.lock().retry_wait = Duration::from_millis(b.ms);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => bad_admin(format!("expected {{\"ms\": N}}: {e}")),
    }
}

async fn admin_requests(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.harness.requests()).into_response()
}

async fn admin_clear_requests(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.harness.clear_requests();
    StatusCode::NO_CONTENT
}
