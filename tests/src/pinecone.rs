//! Emulator of the part of the Pinecone data plane the fleet uses (spec: end of
//! `docs/spec/openai-batch.md`).
//!
//! Endpoints, under `base_url()` = `http://127.0.0.1:PORT` (the `PINECONE_INDEX_HOST`):
//!
//! - `GET /vectors/fetch?ids=A&ids=B&namespace=words` →
//!   `{"vectors": {"A": {"id": "A", "values": [..], "metadata": {..}}}, "namespace": "words",
//!   "usage": {"readUnits": 1}}`. Ids are percent-decoded (`%23` → `#`); ids absent from the
//!   namespace are absent from `vectors`; `metadata` is omitted for a vector without metadata.
//!   No `namespace` means the default namespace `""`. No ids, or more than 1000 → 400.
//! - `POST /vectors/update` with `{"id": "A", "setMetadata": {..}, "values": [..]?,
//!   "namespace": "words"}` → 200 `{}`. `setMetadata` overwrites only the keys it names. An id
//!   absent from the namespace still answers 200 `{}` and stores nothing. 400 when: the body is
//!   not a JSON object, `id` is missing/empty, a `setMetadata` value is `null` or not a string,
//!   number, boolean or list of strings, or the resulting metadata exceeds 40 KB (40,960 bytes
//!   of compact JSON).
//!
//! Every call needs an `Api-Key` header (any non-empty value, or exactly the key set with
//! [`PineconeEmulator::set_api_key`]), else 401, and an `X-Pinecone-Api-Version` header naming
//! one of [`API_VERSIONS`], else 400 (recorded in the request log,
//! [`RequestRecord::api_version`]). A request whose URL (path and query) is longer than 8 KB
//! answers 414, as the proxies in front of the real service do
//! ([`PineconeEmulator::set_max_url_bytes`]). Every answer carries an `x-request-id`.
//!
//! Errors use the data plane's gRPC-style shape `{"code": N, "message": "…", "details": []}`
//! with N the gRPC code of the status (400 → 3 INVALID_ARGUMENT, 401 → 16 UNAUTHENTICATED,
//! 404 → 5, 429 → 8 RESOURCE_EXHAUSTED, 500 → 13 INTERNAL, 503 → 14 UNAVAILABLE; others → 2).
//! A 429 message starts with `TOO_MANY_REQUESTS`.
//!
//! Rate limits: updates ([`PineconeEmulator::set_rate_limit`], off by default) take a token
//! of a bucket per namespace (like the real per-namespace write limit); fetches
//! ([`PineconeEmulator::set_fetch_rate_limit`], on by default at [`DEFAULT_FETCH_RATE`] per
//! second) a token of one bucket for the whole index. A bucket holds at most one second's
//! worth of tokens (or the burst given to [`PineconeEmulator::set_rate_limit_with_burst`]);
//! a call over it answers 429 `TOO_MANY_REQUESTS` with `Retry-After: 1` and changes nothing.
//! Every 429 answered (limits and injected faults) is counted
//! ([`PineconeEmulator::answered_429`]); accepted updates are counted, and recorded unless
//! [`PineconeEmulator::set_record_updates`] turned that off.
//!
//! Eventual consistency ([`PineconeEmulator::set_consistency_delay`], 0 by default): a change
//! made by `/vectors/update` becomes visible to `/vectors/fetch` only after the delay; until
//! then a fetch returns the vector as it was before. Updates themselves apply to the latest
//! state, in order, like the real service's write path. [`PineconeEmulator::metadata`] and the
//! admin API show the latest state; [`PineconeEmulator::visible_metadata`] what a fetch sees.
//!
//! Key rejection windows ([`PineconeEmulator::reject_keys_for`], `/_admin/reject_keys`): every
//! API call answers 401, as for a revoked key, until the window ends or is cleared.
//!
//! # Admin API (no auth, not logged, never faulted)
//!
//! - `POST /_admin/upsert` with `{"namespace": "words", "id": "A", "values": [..],
//!   "metadata": {..}}` (or an array of those; `namespace` default `""`, `values` default `[]`,
//!   `metadata` default `{}`) → 201. Replaces the whole vector.
//! - `GET /_admin/vectors?namespace=words` → `{"namespace": "words", "vectors": {"A": {"id",
//!   "values", "metadata"}}}` (every vector, metadata always present).
//! - `POST /_admin/faults` with a [`FaultSpec`] → 201; `DELETE /_admin/faults` → 204.
//! - `POST /_admin/rate_limit` with `{"per_second": 100}` or `{"per_second": null}` → 204.
//! - `POST /_admin/fetch_rate_limit`, same body, for fetches → 204.
//! - `POST /_admin/consistency` with `{"delay_ms": N}` → 204.
//! - `POST /_admin/reject_keys` with `{"seconds": N}` or `{"seconds": null}` (until cleared)
//!   → 204; `DELETE /_admin/reject_keys` → 204.
//! - `POST /_admin/outage` with `{"on": bool}` → 204; `POST /_admin/latency` with `{"ms": N}`.
//! - `GET /_admin/requests` → `[RequestRecord…]`; `DELETE /_admin/requests` → 204.
//! - `GET /_admin/updates` → `[UpdateRecord…]`.

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

pub use crate::common::{Fault, FaultSpec, RequestRecord};
use crate::common::{Harness, Server, harness_layer, key_rejection_routes, parse_query};

/// Most ids one fetch accepts.
pub const MAX_FETCH_IDS: usize = 1000;
/// The `X-Pinecone-Api-Version` values accepted: the released data-plane versions, from the
/// one the fleet pins (`2025-10`) and the one the pinned Python SDK sends (`2026-07`) back.
pub const API_VERSIONS: &[&str] = &[
    "2024-07", "2024-10", "2025-01", "2025-04", "2025-10", "2026-07",
];
/// Fetches per second of the whole index before 429, by default (the real limit is about 100).
pub const DEFAULT_FETCH_RATE: u32 = 100;
/// Longest URL (path and query) answered; proxies commonly refuse request lines past 8 KB.
pub const DEFAULT_MAX_URL_BYTES: usize = 8 * 1024;
/// Largest metadata of one vector, in bytes of compact JSON.
pub const MAX_METADATA_BYTES: usize = 40 * 1024;

/// A stored vector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredVector {
    pub values: Vec<f32>,
    pub metadata: Map<String, Value>,
}

/// One accepted `/vectors/update` call (200), whether or not the id existed.
///
/// JSON: `{"namespace", "id", "set_metadata": {..}|null, "values": [..]|null, "existed": bool,
/// "changed": bool, "unix_ms": N}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateRecord {
    pub namespace: String,
    pub id: String,
    pub set_metadata: Option<Map<String, Value>>,
    pub values: Option<Vec<f32>>,
    /// The id existed in the namespace (otherwise nothing was stored).
    pub existed: bool,
    /// The stored vector differs after the update.
    pub changed: bool,
    pub unix_ms: u64,
}

struct RateLimiter {
    per_second: f64,
    /// Most tokens a bucket holds (one second's worth unless set otherwise).
    burst: f64,
    buckets: HashMap<String, (f64, Instant)>,
}

impl RateLimiter {
    fn new(per_second: u32) -> Self {
        Self::with_burst(per_second, per_second)
    }

    fn with_burst(per_second: u32, burst: u32) -> Self {
        Self {
            per_second: f64::from(per_second.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
        }
    }

    fn allow(&mut self, namespace: &str) -> bool {
        let now = Instant::now();
        let (rate, cap) = (self.per_second, self.burst);
        let (tokens, last) = self
            .buckets
            .entry(namespace.to_owned())
            .or_insert((cap, now));
        let refilled = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(cap);
        *last = now;
        if refilled >= 1.0 {
            *tokens = refilled - 1.0;
            true
        } else {
            *tokens = refilled;
            false
        }
    }
}

/// The state of one vector before a change fetches cannot see yet.
struct Hidden {
    visible_at: Instant,
    before: Option<StoredVector>,
}

struct PineconeState {
    /// The latest state: what updates apply to.
    namespaces: BTreeMap<String, BTreeMap<String, StoredVector>>,
    /// Changes not yet visible to fetches, oldest first, by namespace and id.
    hidden: HashMap<(String, String), VecDeque<Hidden>>,
    consistency_delay: Duration,
    updates: Vec<UpdateRecord>,
    /// Accepted update calls, also those not kept in `updates`.
    update_total: usize,
    /// Whether accepted updates are kept in `updates` (a long simulation only counts them).
    record_updates: bool,
    rate: Option<RateLimiter>,
    fetch_rate: Option<RateLimiter>,
    max_url_bytes: Option<usize>,
    api_key: Option<String>,
    /// The wait a rate-limit 429 asks for (`None`: `Retry-After: 1`).
    rate_retry_after: Option<Duration>,
}

impl Default for PineconeState {
    fn default() -> Self {
        Self {
            namespaces: BTreeMap::new(),
            hidden: HashMap::new(),
            consistency_delay: Duration::ZERO,
            updates: Vec::new(),
            update_total: 0,
            record_updates: true,
            rate: None,
            fetch_rate: Some(RateLimiter::new(DEFAULT_FETCH_RATE)),
            max_url_bytes: Some(DEFAULT_MAX_URL_BYTES),
            api_key: None,
            rate_retry_after: None,
        }
    }
}

impl PineconeState {
    /// Replaces a whole vector, visible at once (the seeding of tests).
    fn upsert(
        &mut self,
        namespace: &str,
        id: &str,
        values: Vec<f32>,
        metadata: Map<String, Value>,
    ) {
        self.hidden.remove(&(namespace.to_owned(), id.to_owned()));
        self.namespaces
            .entry(namespace.to_owned())
            .or_default()
            .insert(id.to_owned(), StoredVector { values, metadata });
    }

    /// Stores the new state of an existing vector written by `/vectors/update`; fetches see
    /// it after the consistency delay.
    fn write(&mut self, namespace: &str, id: &str, new: StoredVector) {
        let ns = self.namespaces.entry(namespace.to_owned()).or_default();
        let before = ns.insert(id.to_owned(), new);
        if !self.consistency_delay.is_zero() {
            self.hidden
                .entry((namespace.to_owned(), id.to_owned()))
                .or_default()
                .push_back(Hidden {
                    visible_at: Instant::now() + self.consistency_delay,
                    before,
                });
        }
    }

    /// The vector as a fetch sees it now: the state before the oldest change not yet visible.
    fn visible(&mut self, namespace: &str, id: &str) -> Option<StoredVector> {
        let key = (namespace.to_owned(), id.to_owned());
        if let Some(queue) = self.hidden.get_mut(&key) {
            let now = Instant::now();
            while queue.front().is_some_and(|h| h.visible_at <= now) {
                queue.pop_front();
            }
            match queue.front() {
                Some(oldest) => return oldest.before.clone(),
                None => {
                    self.hidden.remove(&key);
                }
            }
        }
        self.namespaces
            .get(namespace)
            .and_then(|ns| ns.get(id).cloned())
    }
}

struct Shared {
    state: Mutex<PineconeState>,
    harness: Arc<Harness>,
    /// API answers with status 429 (rate limits and injected faults alike), counted where
    /// every answer passes, so that a caller need not keep the request log.
    answered_429: std::sync::atomic::AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, PineconeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running Pinecone data-plane emulator. Stops when dropped or on
/// [`PineconeEmulator::shutdown`].
pub struct PineconeEmulator {
    shared: Arc<Shared>,
    server: Server,
}

impl PineconeEmulator {
    /// Starts on `127.0.0.1:0` (a free port).
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<Self> {
        let harness = Arc::new(Harness::new(pinecone_fault_body));
        let shared = Arc::new(Shared {
            state: Mutex::new(PineconeState::default()),
            harness,
            answered_429: std::sync::atomic::AtomicU64::new(0),
        });
        let server = Server::bind(addr, router(shared.clone())).await?;
        tracing::info!(addr = %server.addr(), "pinecone emulator listening");
        Ok(Self { shared, server })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:PORT`, the value for `PINECONE_INDEX_HOST`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `Some(key)`: only `Api-Key: key` is accepted. `None` (default): any non-empty key.
    pub fn set_api_key(&self, key: Option<String>) {
        self.shared.lock().api_key = key;
    }

    /// Stores (replaces) a whole vector.
    pub fn upsert(
        &self,
        namespace: &str,
        id: &str,
        values: Vec<f32>,
        metadata: Map<String, Value>,
    ) {
        self.shared.lock().upsert(namespace, id, values, metadata);
    }

    pub fn delete(&self, namespace: &str, id: &str) -> bool {
        let mut state = self.shared.lock();
        state.hidden.remove(&(namespace.to_owned(), id.to_owned()));
        state
            .namespaces
            .get_mut(namespace)
            .is_some_and(|ns| ns.remove(id).is_some())
    }

    pub fn vector(&self, namespace: &str, id: &str) -> Option<StoredVector> {
        self.shared
            .lock()
            .namespaces
            .get(namespace)
            .and_then(|ns| ns.get(id).cloned())
    }

    /// The latest metadata (every accepted update applied).
    pub fn metadata(&self, namespace: &str, id: &str) -> Option<Map<String, Value>> {
        self.vector(namespace, id).map(|v| v.metadata)
    }

    /// The metadata a fetch would return now (under a consistency delay, possibly older than
    /// [`Self::metadata`]).
    pub fn visible_metadata(&self, namespace: &str, id: &str) -> Option<Map<String, Value>> {
        self.shared
            .lock()
            .visible(namespace, id)
            .map(|v| v.metadata)
    }

    /// Changes made by `/vectors/update` become visible to fetches only `delay` later
    /// (default 0: at once). The real index is eventually consistent.
    pub fn set_consistency_delay(&self, delay: Duration) {
        let mut state = self.shared.lock();
        state.consistency_delay = delay;
        if delay.is_zero() {
            state.hidden.clear();
        }
    }

    /// `Some(n)`: about n fetches per second for the whole index, more answer 429 (default
    /// [`DEFAULT_FETCH_RATE`]). `None`: unlimited.
    pub fn set_fetch_rate_limit(&self, per_second: Option<u32>) {
        self.shared.lock().fetch_rate = per_second.map(RateLimiter::new);
    }

    /// `Some(n)`: a URL (path and query) over n bytes answers 414 (default
    /// [`DEFAULT_MAX_URL_BYTES`]). `None`: no limit.
    pub fn set_max_url_bytes(&self, max: Option<usize>) {
        self.shared.lock().max_url_bytes = max;
    }

    /// Every API call answers 401 for `window` (a revoked key), then keys are accepted again.
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

    /// Every vector's metadata in the namespace, by id (for whole-state comparisons).
    pub fn all(&self, namespace: &str) -> BTreeMap<String, Map<String, Value>> {
        self.shared
            .lock()
            .namespaces
            .get(namespace)
            .map(|ns| {
                ns.iter()
                    .map(|(id, v)| (id.clone(), v.metadata.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `Some(n)`: at most about n updates per second per namespace (token bucket, burst n);
    /// more answer 429. `None` (default): unlimited.
    pub fn set_rate_limit(&self, per_second: Option<u32>) {
        self.shared.lock().rate = per_second.map(RateLimiter::new);
    }

    /// [`Self::set_rate_limit`] with a bucket of `burst` tokens instead of one second's worth:
    /// a simulation that compresses time `K`-fold sets `per_second` to `100·K` and `burst` to
    /// 100, one simulated second's worth (one real second's would be `K` simulated ones).
    pub fn set_rate_limit_with_burst(&self, per_second: u32, burst: u32) {
        self.shared.lock().rate = Some(RateLimiter::with_burst(per_second, burst));
    }

    /// [`Self::set_fetch_rate_limit`] with a bucket of `burst` tokens.
    pub fn set_fetch_rate_limit_with_burst(&self, per_second: u32, burst: u32) {
        self.shared.lock().fetch_rate = Some(RateLimiter::with_burst(per_second, burst));
    }

    /// The wait the emulator's own rate-limit 429s ask for: `Some(d)` sends `retry-after-ms`
    /// (and `Retry-After` in whole seconds, at least 1); `None` (default) `Retry-After: 1`.
    /// A simulation that compresses time scales the wait with everything else.
    pub fn set_rate_limit_retry_after(&self, wait: Option<Duration>) {
        self.shared.lock().rate_retry_after = wait;
    }

    /// Accepted (200) update calls so far, including those for absent ids (also when they
    /// are not recorded, see [`Self::set_record_updates`]).
    pub fn update_count(&self) -> usize {
        self.shared.lock().update_total
    }

    /// The accepted update calls, as recorded.
    pub fn updates(&self) -> Vec<UpdateRecord> {
        self.shared.lock().updates.clone()
    }

    /// Forgets the recorded updates and sets the count back to 0.
    pub fn clear_updates(&self) {
        let mut state = self.shared.lock();
        state.updates.clear();
        state.update_total = 0;
    }

    /// Whether each accepted update is recorded for [`Self::updates`] (default on). A long
    /// simulation turns it off: it needs only the count, and 200,000 records with their
    /// metadata cost hundreds of MB.
    pub fn set_record_updates(&self, on: bool) {
        self.shared.lock().record_updates = on;
    }

    /// API calls answered 429 so far (the emulator's rate limits and injected faults), kept
    /// also when the request log is cleared.
    pub fn answered_429(&self) -> u64 {
        self.shared
            .answered_429
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Vectors in a namespace.
    pub fn vector_count(&self, namespace: &str) -> usize {
        self.shared
            .lock()
            .namespaces
            .get(namespace)
            .map_or(0, BTreeMap::len)
    }

    /// Drops a namespace and every vector in it.
    pub fn drop_namespace(&self, namespace: &str) -> bool {
        let mut state = self.shared.lock();
        state.hidden.retain(|(ns, _), _| ns != namespace);
        state.namespaces.remove(namespace).is_some()
    }

    /// Queues a fault (see [`FaultSpec`]), e.g. `FaultSpec::status(429).times(3)`.
    pub fn fail_next(&self, fault: FaultSpec) {
        self.shared.harness.fail_next(fault);
    }

    pub fn clear_faults(&self) {
        self.shared.harness.clear_faults();
    }

    pub fn pending_faults(&self) -> Vec<FaultSpec> {
        self.shared.harness.pending_faults()
    }

    /// While on, every call answers 500.
    pub fn set_outage(&self, on: bool) {
        self.shared.harness.set_outage(on);
    }

    pub fn set_latency(&self, latency: Duration) {
        self.shared.harness.set_latency(latency);
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.harness.requests()
    }

    pub fn count(&self, method: &str, path_prefix: &str) -> usize {
        self.shared.harness.count(method, path_prefix)
    }

    pub fn clear_requests(&self) {
        self.shared.harness.clear_requests();
    }

    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}

fn grpc_code(status: StatusCode) -> u8 {
    match status.as_u16() {
        400 => 3,
        401 => 16,
        403 => 7,
        404 => 5,
        409 => 6,
        429 => 8,
        500 => 13,
        501 => 12,
        503 => 14,
        504 => 4,
        _ => 2,
    }
}

/// `{"code": <gRPC code>, "message", "details": []}` with `status`.
pub fn error_response(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"code": grpc_code(status), "message": message, "details": []})),
    )
        .into_response()
}

/// A 429 of one of the emulator's own rate limits, with `Retry-After: 1` (or the wait set by
/// [`PineconeEmulator::set_rate_limit_retry_after`]).
fn rate_limited(message: &str, wait: Option<Duration>) -> Response {
    let mut response = error_response(StatusCode::TOO_MANY_REQUESTS, message);
    let headers = response.headers_mut();
    match wait {
        None => {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        Some(wait) => {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            headers.insert("retry-after-ms", HeaderValue::from(ms));
        }
    }
    response
}

fn pinecone_fault_body(status: StatusCode) -> Response {
    let message = match status.as_u16() {
        429 => "TOO_MANY_REQUESTS: Request failed. You've reached the max request rate \
                (emulated)."
            .to_owned(),
        s if s >= 500 => format!("Internal error (emulated {s})"),
        s => format!("Emulated error {s}"),
    };
    error_response(status, &message)
}

fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/vectors/fetch", get(fetch))
        .route("/vectors/update", post(update))
        .route_layer(from_fn_with_state(shared.clone(), auth));
    let admin = Router::new()
        .route("/_admin/upsert", post(admin_upsert))
        .route("/_admin/vectors", get(admin_vectors))
        .route(
            "/_admin/faults",
            post(admin_add_fault).delete(admin_clear_faults),
        )
        .route("/_admin/rate_limit", post(admin_rate_limit))
        .route("/_admin/fetch_rate_limit", post(admin_fetch_rate_limit))
        .route("/_admin/consistency", post(admin_consistency))
        .route("/_admin/outage", post(admin_outage))
        .route("/_admin/latency", post(admin_latency))
        .route(
            "/_admin/requests",
            get(admin_requests).delete(admin_clear_requests),
        )
        .route("/_admin/updates", get(admin_updates))
        .layer(axum::extract::DefaultBodyLimit::disable());
    let harness = shared.harness.clone();
    api.merge(admin)
        .merge(key_rejection_routes(harness.clone()))
        .fallback(unknown_url)
        .with_state(shared.clone())
        .layer(from_fn_with_state(harness, harness_layer))
        // Outermost: on every answer, faults included.
        .layer(from_fn_with_state(shared, request_id))
}

/// `x-request-id` on every API answer, as the real service sends it; counts the 429s.
async fn request_id(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let admin = req.uri().path().starts_with(crate::common::ADMIN_PREFIX);
    let mut response = next.run(req).await;
    if !admin && response.status() == StatusCode::TOO_MANY_REQUESTS {
        shared
            .answered_429
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    if !admin && !response.headers().contains_key("x-request-id") {
        let id = uuid::Uuid::new_v4().simple().to_string();
        if let Ok(v) = HeaderValue::from_str(&id) {
            response.headers_mut().insert("x-request-id", v);
        }
    }
    response
}

/// The gateway in front of the API: URL length, then the key, then the API version.
async fn auth(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let url_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    let max_url = shared.lock().max_url_bytes;
    if max_url.is_some_and(|max| url_len > max) {
        return (
            StatusCode::URI_TOO_LONG,
            [(header::CONTENT_TYPE, "text/html")],
            "<html>\r\n<head><title>414 Request-URI Too Large</title></head>\r\n<body>\r\n\
             <center><h1>414 Request-URI Too Large</h1></center>\r\n</body>\r\n</html>\r\n",
        )
            .into_response();
    }
    if shared.harness.keys_rejected() {
        return error_response(
            StatusCode::UNAUTHORIZED,
            "Invalid API Key (emulated key rejection)",
        );
    }
    let version = req
        .headers()
        .get("x-pinecone-api-version")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .map(str::to_owned);
    let provided = req
        .headers()
        .get("api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(str::to_owned);
    let expected = shared.lock().api_key.clone();
    match (provided, expected) {
        (None, _) => error_response(StatusCode::UNAUTHORIZED, "Api-Key header is missing"),
        (Some(key), Some(expected)) if key != expected => {
            error_response(StatusCode::UNAUTHORIZED, "Invalid API Key")
        }
        _ => match version {
            Some(v) if API_VERSIONS.contains(&v.as_str()) => next.run(req).await,
            Some(v) => bad_request(&format!(
                "Unsupported API version '{v}' in X-Pinecone-Api-Version. Supported versions: {}",
                API_VERSIONS.join(", ")
            )),
            None => bad_request(&format!(
                "Missing X-Pinecone-Api-Version header. Supported versions: {}",
                API_VERSIONS.join(", ")
            )),
        },
    }
}

async fn unknown_url(method: Method, uri: Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        &format!("Not found: {method} {}", uri.path()),
    )
}

fn bad_request(message: &str) -> Response {
    error_response(StatusCode::BAD_REQUEST, message)
}

/// An f32 as the JSON number with its shortest decimal form (`0.1`, not `0.10000000149011612`),
/// as Pinecone prints it.
fn f32_json(x: f32) -> Value {
    x.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

fn vector_json(id: &str, v: &StoredVector, always_metadata: bool) -> Value {
    let values: Vec<Value> = v.values.iter().copied().map(f32_json).collect();
    let mut out = json!({"id": id, "values": values});
    if always_metadata || !v.metadata.is_empty() {
        out["metadata"] = Value::Object(v.metadata.clone());
    }
    out
}

async fn fetch(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    let pairs = match parse_query(query.as_deref().unwrap_or("")) {
        Ok(p) => p,
        Err(e) => return bad_request(&e),
    };
    let mut ids = Vec::new();
    let mut namespace = String::new();
    for (k, v) in pairs {
        match k.as_str() {
            "ids" => ids.push(v),
            "namespace" => namespace = v,
            _ => {}
        }
    }
    if ids.is_empty() {
        return bad_request("No IDs provided for fetch query");
    }
    if ids.len() > MAX_FETCH_IDS {
        return bad_request(&format!(
            "Too many IDs: {} provided, at most {MAX_FETCH_IDS} per fetch request",
            ids.len()
        ));
    }
    let mut state = shared.lock();
    let wait = state.rate_retry_after;
    if let Some(rate) = state.fetch_rate.as_mut()
        && !rate.allow("")
    {
        let limit = rate.per_second;
        return rate_limited(
            &format!(
                "TOO_MANY_REQUESTS: Request failed. You've reached the max fetch rate of \
                 {limit} per second for this index (emulated)."
            ),
            wait,
        );
    }
    let mut vectors = Map::new();
    for id in &ids {
        if let Some(v) = state.visible(&namespace, id) {
            vectors.insert(id.clone(), vector_json(id, &v, false));
        }
    }
    axum::Json(json!({
        "vectors": vectors,
        "namespace": namespace,
        "usage": {"readUnits": 1},
    }))
    .into_response()
}

fn valid_metadata_value(v: &Value) -> bool {
    match v {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => true,
        Value::Array(items) => items.iter().all(Value::is_string),
        Value::Null | Value::Object(_) => false,
    }
}

fn metadata_size(m: &Map<String, Value>) -> usize {
    serde_json::to_vec(m).map_or(usize::MAX, |b| b.len())
}

async fn update(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let Ok(Value::Object(req)) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("Request body must be a JSON object");
    };
    let Some(id) = req
        .get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    else {
        return bad_request("Vector id must be a non-empty string");
    };
    let namespace = match req.get("namespace") {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return bad_request("namespace must be a string"),
    };
    let set_metadata = match req.get("setMetadata") {
        None => None,
        Some(Value::Object(m)) => Some(m.clone()),
        Some(_) => return bad_request("setMetadata must be an object"),
    };
    let values = match req.get("values") {
        None => None,
        Some(v) => match serde_json::from_value::<Vec<f32>>(v.clone()) {
            Ok(v) => Some(v),
            Err(_) => return bad_request("values must be an array of numbers"),
        },
    };
    if let Some(m) = &set_metadata {
        for (key, value) in m {
            if value.is_null() {
                return bad_request(&format!(
                    "Metadata value for key '{key}' is null: null values are not supported"
                ));
            }
            if !valid_metadata_value(value) {
                return bad_request(&format!(
                    "Metadata value for key '{key}' must be a string, number, boolean or \
                     list of strings"
                ));
            }
        }
        let size = metadata_size(m);
        if size > MAX_METADATA_BYTES {
            return bad_request(&format!(
                "Metadata size is {size} bytes, which exceeds the limit of \
                 {MAX_METADATA_BYTES} bytes per vector"
            ));
        }
    }

    let mut state = shared.lock();
    let wait = state.rate_retry_after;
    if let Some(rate) = state.rate.as_mut()
        && !rate.allow(namespace)
    {
        return rate_limited(
            &format!(
                "TOO_MANY_REQUESTS: Request failed. You've reached the max update rate \
                     of {} per second for namespace '{namespace}' (emulated).",
                rate.per_second
            ),
            wait,
        );
    }
    let existing = state
        .namespaces
        .get(namespace)
        .and_then(|ns| ns.get(id))
        .cloned();
    let existed = existing.is_some();
    let mut changed = false;
    if let Some(old) = existing {
        let mut new = old.clone();
        if let Some(m) = &set_metadata {
            for (k, v) in m {
                new.metadata.insert(k.clone(), v.clone());
            }
        }
        if let Some(v) = &values {
            new.values.clone_from(v);
        }
        let size = metadata_size(&new.metadata);
        if size > MAX_METADATA_BYTES {
            return bad_request(&format!(
                "Metadata size is {size} bytes, which exceeds the limit of \
                 {MAX_METADATA_BYTES} bytes per vector"
            ));
        }
        changed = new != old;
        if changed {
            state.write(namespace, id, new);
        }
    }
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    state.update_total += 1;
    if state.record_updates {
        state.updates.push(UpdateRecord {
            namespace: namespace.to_owned(),
            id: id.to_owned(),
            set_metadata,
            values,
            existed,
            changed,
            unix_ms,
        });
    }
    axum::Json(json!({})).into_response()
}

#[derive(Deserialize)]
struct AdminVector {
    #[serde(default)]
    namespace: String,
    id: String,
    #[serde(default)]
    values: Vec<f32>,
    #[serde(default)]
    metadata: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum AdminUpsert {
    One(AdminVector),
    Many(Vec<AdminVector>),
}

fn bad_admin(message: impl std::fmt::Display) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": message.to_string()})),
    )
        .into_response()
}

async fn admin_upsert(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let vectors = match serde_json::from_slice::<AdminUpsert>(&body) {
        Ok(AdminUpsert::One(v)) => vec![v],
        Ok(AdminUpsert::Many(v)) => v,
        Err(e) => {
            return bad_admin(format!(
                "expected {{namespace, id, values, metadata}} or a list of them: {e}"
            ));
        }
    };
    let mut state = shared.lock();
    for v in vectors {
        state.upsert(&v.namespace, &v.id, v.values, v.metadata);
    }
    StatusCode::CREATED.into_response()
}

async fn admin_vectors(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    let pairs = match parse_query(query.as_deref().unwrap_or("")) {
        Ok(p) => p,
        Err(e) => return bad_admin(e),
    };
    let namespace = pairs
        .into_iter()
        .find(|(k, _)| k == "namespace")
        .map(|(_, v)| v)
        .unwrap_or_default();
    let state = shared.lock();
    let vectors: Map<String, Value> = state
        .namespaces
        .get(&namespace)
        .map(|ns| {
            ns.iter()
                .map(|(id, v)| (id.clone(), vector_json(id, v, true)))
                .collect()
        })
        .unwrap_or_default();
    axum::Json(json!({"namespace": namespace, "vectors": vectors})).into_response()
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
struct RateLimitBody {
    per_second: Option<u32>,
}

async fn admin_rate_limit(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<RateLimitBody>(&body) {
        Ok(b) => {
            shared.lock().rate = b.per_second.map(RateLimiter::new);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => bad_admin(format!("expected {{\"per_second\": N|null}}: {e}")),
    }
}

async fn admin_fetch_rate_limit(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<RateLimitBody>(&body) {
        Ok(b) => {
            shared.lock().fetch_rate = b.per_second.map(RateLimiter::new);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => bad_admin(format!("expected {{\"per_second\": N|null}}: {e}")),
    }
}

#[derive(Deserialize)]
struct ConsistencyBody {
    delay_ms: u64,
}

async fn admin_consistency(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match serde_json::from_slice::<ConsistencyBody>(&body) {
        Ok(b) => {
            let mut state = shared.lock();
            state.consistency_delay = Duration::from_millis(b.delay_ms);
            if b.delay_ms == 0 {
                state.hidden.clear();
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => bad_admin(format!("expected {{\"delay_ms\": N}}: {e}")),
    }
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

async fn admin_requests(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.harness.requests()).into_response()
}

async fn admin_clear_requests(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.harness.clear_requests();
    StatusCode::NO_CONTENT
}

async fn admin_updates(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(shared.lock().updates.clone()).into_response()
}
