//! Pieces shared by both emulators: fault injection, the request log, the HTTP server handle,
//! query-string decoding and signal handling for the binaries.
//!
//! # Fault JSON shape (`FaultSpec`)
//!
//! The fault kind is flattened into the spec, tagged by `"type"`:
//!
//! ```json
//! {"type": "status", "status": 503}
//! {"type": "status", "status": 429, "retry_after": 2, "path_prefix": "/v1/batches/", "times": 3}
//! {"type": "status", "status": 502, "body": "<html>bad gateway</html>"}
//! {"type": "truncate", "after_bytes": 100, "path_prefix": "/v1/files/", "method": "GET"}
//! {"type": "delay", "ms": 1500}
//! ```
//!
//! `path_prefix` (absent = every path), `method` (absent = every method, compared
//! case-insensitively), `times` (default 1; 0 counts as 1) and `body` (status faults only: a raw
//! body replacing the emulator's default error JSON) are optional.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Paths starting with this prefix are the emulators' own control API: never faulted, never
/// delayed, never logged, never authenticated.
pub const ADMIN_PREFIX: &str = "/_admin";

/// What an injected fault does to a matching request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Fault {
    /// Answer `status` without running the endpoint. With `retry_after`, a `Retry-After: N`
    /// header (seconds) is added. The body is the emulator's error JSON for that status (OpenAI:
    /// `{"error":{…}}`; Pinecone: `{"code","message","details"}`), except for an OpenAI 502, which
    /// is an HTML page like the real load balancer sends, unless `body` overrides it.
    Status {
        status: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        body: Option<String>,
    },
    /// Run the endpoint, announce its full `Content-Length`, send only the first `after_bytes`
    /// bytes of the body, then abort the connection. Clients see an error while reading the
    /// body (or fewer bytes than announced). `after_bytes` is clamped to `len - 1` so the body
    /// is always short by at least one byte.
    Truncate { after_bytes: usize },
    /// Sleep `ms` milliseconds, then answer normally.
    Delay { ms: u64 },
}

/// A fault queued with `fail_next`. Faults are kept in FIFO order; a request consumes one use of
/// the first queued fault that matches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultSpec {
    #[serde(flatten)]
    pub fault: Fault,
    /// Only requests whose path starts with this (e.g. `/v1/files/`); `None` = every path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Only requests with this method (case-insensitive); `None` = every method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// How many matching requests this fault applies to (default 1; 0 counts as 1).
    #[serde(default = "one")]
    pub times: u32,
}

fn one() -> u32 {
    1
}

impl FaultSpec {
    /// Answer with this status (any path, once).
    pub fn status(status: u16) -> Self {
        Self::from_fault(Fault::Status {
            status,
            retry_after: None,
            body: None,
        })
    }

    /// 429, with `Retry-After: secs` when `Some`.
    pub fn rate_limited(retry_after: Option<u64>) -> Self {
        Self::from_fault(Fault::Status {
            status: 429,
            retry_after,
            body: None,
        })
    }

    /// Send the first `after_bytes` bytes of the real body, then break the connection.
    pub fn truncate(after_bytes: usize) -> Self {
        Self::from_fault(Fault::Truncate { after_bytes })
    }

    /// Sleep before answering normally.
    pub fn delay(ms: u64) -> Self {
        Self::from_fault(Fault::Delay { ms })
    }

    pub fn from_fault(fault: Fault) -> Self {
        Self {
            fault,
            path_prefix: None,
            method: None,
            times: 1,
        }
    }

    /// Restrict to paths starting with `prefix`.
    #[must_use]
    pub fn on_path(mut self, prefix: impl Into<String>) -> Self {
        self.path_prefix = Some(prefix.into());
        self
    }

    /// Restrict to one method (`"GET"`, `"POST"`).
    #[must_use]
    pub fn on_method(mut self, method: impl Into<String>) -> Self {
        self.method = Some(method.into());
        self
    }

    /// Apply to the next `n` matching requests.
    #[must_use]
    pub fn times(mut self, n: u32) -> Self {
        self.times = n;
        self
    }

    /// Replace the default error body of a status fault (no effect on other kinds).
    #[must_use]
    pub fn with_body(mut self, raw: impl Into<String>) -> Self {
        if let Fault::Status { body, .. } = &mut self.fault {
            *body = Some(raw.into());
        }
        self
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.path_prefix
            .as_deref()
            .is_none_or(|prefix| path.starts_with(prefix))
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
    }
}

/// One request as seen by an emulator (admin requests are not logged).
///
/// JSON: `{"method","path","query","status","unix_ms","duration_ms","fault","api_version"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub method: String,
    /// The path without the query string, still percent-encoded as received.
    pub path: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    /// Status code sent (200 for a truncated body: the failure comes after the head).
    pub status: u16,
    /// Arrival time, Unix milliseconds.
    pub unix_ms: u64,
    /// Time from arrival to the response head, in milliseconds (includes injected delays).
    pub duration_ms: u64,
    /// The injected fault that shaped this answer, if any: `"status 503"`, `"truncate"`,
    /// `"delay"`, `"outage"`.
    pub fault: Option<String>,
    /// Pinecone only: the `X-Pinecone-Api-Version` header sent by the client.
    pub api_version: Option<String>,
}

/// Builds an error response for a status, in the emulated API's error shape.
pub(crate) type ErrorBody = fn(StatusCode) -> Response;

#[derive(Default)]
struct HarnessInner {
    faults: VecDeque<FaultSpec>,
    log: Vec<RequestRecord>,
    outage: bool,
    latency: Duration,
    /// `Some(None)`: every key is rejected until cleared; `Some(Some(t))`: until `t`.
    reject_keys: Option<Option<Instant>>,
}

/// Fault queue, outage switch, latency and request log, applied by [`harness_layer`] around
/// every non-admin route.
pub(crate) struct Harness {
    inner: Mutex<HarnessInner>,
    error_body: ErrorBody,
}

impl Harness {
    pub(crate) fn new(error_body: ErrorBody) -> Self {
        Self {
            inner: Mutex::new(HarnessInner::default()),
            error_body,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HarnessInner> {
        // A panic while holding the lock cannot leave the plain data inconsistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn fail_next(&self, fault: FaultSpec) {
        self.lock().faults.push_back(fault);
    }

    pub(crate) fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    pub(crate) fn pending_faults(&self) -> Vec<FaultSpec> {
        self.lock().faults.iter().cloned().collect()
    }

    pub(crate) fn set_outage(&self, on: bool) {
        self.lock().outage = on;
    }

    pub(crate) fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    pub(crate) fn requests(&self) -> Vec<RequestRecord> {
        self.lock().log.clone()
    }

    /// Rejects every API key (401) for `window`, or until [`Self::accept_keys`] with `None`:
    /// a revoked or rotated key, as the real services answer it.
    pub(crate) fn reject_keys(&self, window: Option<Duration>) {
        self.lock().reject_keys = Some(window.map(|w| Instant::now() + w));
    }

    pub(crate) fn accept_keys(&self) {
        self.lock().reject_keys = None;
    }

    /// Whether keys are rejected now (a window that has passed is cleared).
    pub(crate) fn keys_rejected(&self) -> bool {
        let mut inner = self.lock();
        match inner.reject_keys {
            None => false,
            Some(None) => true,
            Some(Some(until)) if Instant::now() < until => true,
            Some(Some(_)) => {
                inner.reject_keys = None;
                false
            }
        }
    }

    pub(crate) fn clear_requests(&self) {
        self.lock().log.clear();
    }

    pub(crate) fn count(&self, method: &str, path_prefix: &str) -> usize {
        self.lock()
            .log
            .iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method) && r.path.starts_with(path_prefix))
            .count()
    }

    /// Takes one use of the first matching fault.
    fn take_fault(&self, method: &str, path: &str) -> (Duration, bool, Option<Fault>) {
        let mut inner = self.lock();
        let latency = inner.latency;
        let outage = inner.outage;
        if outage {
            return (latency, true, None);
        }
        let Some(pos) = inner.faults.iter().position(|f| f.matches(method, path)) else {
            return (latency, false, None);
        };
        let spec = &mut inner.faults[pos];
        let fault = spec.fault.clone();
        spec.times = spec.times.saturating_sub(1);
        if spec.times == 0 {
            inner.faults.remove(pos);
        }
        (latency, false, Some(fault))
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Middleware: latency, outage, faults, and the request log.
pub(crate) async fn harness_layer(
    State(harness): State<Arc<Harness>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_owned();
    if path.starts_with(ADMIN_PREFIX) {
        return next.run(req).await;
    }
    let arrived = SystemTime::now();
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let api_version = req
        .headers()
        .get("x-pinecone-api-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);

    let (latency, outage, fault) = harness.take_fault(&method, &path);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let (response, label) = if outage {
        (
            (harness.error_body)(StatusCode::INTERNAL_SERVER_ERROR),
            Some("outage".to_owned()),
        )
    } else {
        match fault {
            None => (next.run(req).await, None),
            Some(Fault::Delay { ms }) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                (next.run(req).await, Some("delay".to_owned()))
            }
            Some(Fault::Status {
                status,
                retry_after,
                body,
            }) => (
                status_fault(harness.error_body, status, retry_after, body),
                Some(format!("status {status}")),
            ),
            Some(Fault::Truncate { after_bytes }) => {
                let full = next.run(req).await;
                (
                    truncate(full, after_bytes).await,
                    Some("truncate".to_owned()),
                )
            }
        }
    };

    let record = RequestRecord {
        method,
        path,
        query,
        status: response.status().as_u16(),
        unix_ms: unix_ms(arrived),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        fault: label,
        api_version,
    };
    tracing::debug!(
        method = %record.method,
        path = %record.path,
        status = record.status,
        fault = ?record.fault,
        "request"
    );
    harness.lock().log.push(record);
    response
}

fn status_fault(
    error_body: ErrorBody,
    status: u16,
    retry_after: Option<u64>,
    body: Option<String>,
) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = match body {
        Some(raw) => (code, raw).into_response(),
        None => error_body(code),
    };
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// `POST /_admin/reject_keys` with `{"seconds": N}` (fractions allowed) or `{"seconds": null}`
/// / `{}` (until cleared) → 204; `DELETE /_admin/reject_keys` → 204 (keys accepted again).
/// Shared by both emulators: their state is merged in by the caller.
pub(crate) fn key_rejection_routes<S: Clone + Send + Sync + 'static>(
    harness: Arc<Harness>,
) -> Router<S> {
    Router::new()
        .route(
            "/_admin/reject_keys",
            axum::routing::post(admin_reject_keys).delete(admin_accept_keys),
        )
        .with_state(harness)
}

#[derive(Deserialize)]
struct RejectKeysBody {
    #[serde(default)]
    seconds: Option<f64>,
}

async fn admin_reject_keys(State(harness): State<Arc<Harness>>, body: Bytes) -> Response {
    let body: RejectKeysBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(serde_json::json!({
                    "error": format!("expected {{\"seconds\": N|null}}: {e}")
                })),
            )
                .into_response();
        }
    };
    let window = match body.seconds.map(Duration::try_from_secs_f64) {
        None => None,
        Some(Ok(w)) => Some(w),
        Some(Err(e)) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(serde_json::json!({"error": format!("seconds: {e}")})),
            )
                .into_response();
        }
    };
    harness.reject_keys(window);
    StatusCode::NO_CONTENT.into_response()
}

async fn admin_accept_keys(State(harness): State<Arc<Harness>>) -> StatusCode {
    harness.accept_keys();
    StatusCode::NO_CONTENT
}

/// Re-sends `full` with its true Content-Length but only `after_bytes` bytes of body, then an
/// I/O error, which makes hyper abort the connection mid-body.
async fn truncate(full: Response, after_bytes: usize) -> Response {
    let (mut parts, body) = full.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "could not buffer body to truncate");
            return (StatusCode::INTERNAL_SERVER_ERROR, "emulator error").into_response();
        }
    };
    let len = bytes.len();
    let cut = after_bytes.min(len.saturating_sub(1));
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    let head: Bytes = bytes.slice(..cut);
    let stream = futures::stream::iter([Ok::<Bytes, std::io::Error>(head)]).chain(
        futures::stream::once(async {
            // Give hyper a moment to flush the partial body before the abort, so the client
            // really receives the first bytes (an error while data is still buffered would drop
            // it).
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "emulated truncated download",
            ))
        }),
    );
    Response::from_parts(parts, Body::from_stream(stream))
}

/// A running HTTP server on a tokio task. Dropping it starts a graceful shutdown (the listener
/// closes at once; open connections finish their current request).
pub(crate) struct Server {
    addr: SocketAddr,
    token: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Server {
    pub(crate) async fn bind(addr: SocketAddr, router: Router) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let token = CancellationToken::new();
        let stop = token.clone();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::warn!(error = %e, "emulator server ended with an error");
            }
        });
        Ok(Self {
            addr,
            token,
            task: Some(task),
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, waits up to 5 s for open requests, then aborts the rest.
    pub(crate) async fn shutdown(mut self) {
        self.token.cancel();
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// Decodes an `application/x-www-form-urlencoded` query string into ordered pairs, keeping
/// repeated keys (`ids=a&ids=b`). `+` is a space; `%XX` is a byte; the result must be UTF-8.
pub(crate) fn parse_query(raw: &str) -> Result<Vec<(String, String)>, String> {
    raw.split('&')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            Ok((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad percent-encoding in {s:?}"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("query value is not UTF-8: {s:?}"))
}

/// Resolves on Ctrl-C (SIGINT) or, on Unix, SIGTERM. For the emulator binaries.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Logging for the binaries: `RUST_LOG`-style filter (default `info`), to stderr so that stdout
/// carries only the `listening on …` line.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Ignore the error of a second initialisation.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding_keeps_repeats_and_decodes_hash() {
        let pairs = parse_query("ids=IMAGE%23a%23RECEIPT%2300001&ids=b+c&namespace=words&flag")
            .expect("valid");
        assert_eq!(
            pairs,
            vec![
                ("ids".into(), "IMAGE#a#RECEIPT#00001".into()),
                ("ids".into(), "b c".into()),
                ("namespace".into(), "words".into()),
                ("flag".into(), String::new()),
            ]
        );
        assert!(parse_query("ids=%2").is_err());
        assert!(parse_query("ids=%zz").is_err());
        assert!(parse_query("ids=%ff").is_err());
    }

    #[test]
    fn fault_json_shapes() {
        let spec: FaultSpec = serde_json::from_str(
            r#"{"type":"status","status":429,"retry_after":2,"path_prefix":"/v1/","times":3}"#,
        )
        .expect("parse");
        assert_eq!(
            spec,
            FaultSpec::rate_limited(Some(2)).on_path("/v1/").times(3)
        );
        let spec: FaultSpec =
            serde_json::from_str(r#"{"type":"truncate","after_bytes":10}"#).expect("parse");
        assert_eq!(spec, FaultSpec::truncate(10));
        let spec: FaultSpec =
            serde_json::from_str(r#"{"type":"delay","ms":5,"method":"get"}"#).expect("parse");
        assert_eq!(spec, FaultSpec::delay(5).on_method("get"));
        assert!(spec.matches("GET", "/anything"));
        assert!(!spec.matches("POST", "/anything"));
        let back = serde_json::to_value(FaultSpec::status(503)).expect("ser");
        assert_eq!(
            back,
            serde_json::json!({"type": "status", "status": 503, "times": 1})
        );
    }

    #[test]
    fn faults_are_fifo_and_counted() {
        let h = Harness::new(|s| s.into_response());
        h.fail_next(FaultSpec::status(500).on_path("/a").times(2));
        h.fail_next(FaultSpec::status(503));
        let take = |p: &str| h.take_fault("GET", p).2;
        assert_eq!(
            take("/b"),
            Some(Fault::Status {
                status: 503,
                retry_after: None,
                body: None
            })
        );
        assert!(matches!(
            take("/a/x"),
            Some(Fault::Status { status: 500, .. })
        ));
        assert!(matches!(
            take("/a/x"),
            Some(Fault::Status { status: 500, .. })
        ));
        assert_eq!(take("/a/x"), None);
        h.fail_next(FaultSpec::status(500).times(0));
        assert!(take("/z").is_some());
        assert!(take("/z").is_none());
        h.set_outage(true);
        assert!(h.take_fault("GET", "/").1);
    }

    #[test]
    fn key_rejection_windows_end_by_themselves_or_when_cleared() {
        let h = Harness::new(|s| s.into_response());
        assert!(!h.keys_rejected());
        h.reject_keys(None);
        assert!(h.keys_rejected());
        h.accept_keys();
        assert!(!h.keys_rejected());
        h.reject_keys(Some(Duration::from_millis(30)));
        assert!(h.keys_rejected());
        std::thread::sleep(Duration::from_millis(40));
        assert!(!h.keys_rejected());
        h.reject_keys(Some(Duration::ZERO));
        assert!(!h.keys_rejected());
    }
}
