//! One home for the HTTP plumbing of the OpenAI and Pinecone clients.
//!
//! Both clients send JSON requests with their own auth headers and read answers the same way:
//! a transport failure, an error status (with `Retry-After`/`retry-after-ms`, `x-request-id` and
//! a capped, scrubbed body), or a 2xx body decoded as JSON. They differ only in the shape of
//! their error bodies and in how a status is classified, so this module does the sending,
//! reading, retrying, pacing, counting and logging ([`Http`]), and each client supplies its
//! error type through [`CallError`].
//!
//! - [`Http::send`] / [`Http::send_json`]: one attempt, up to a [`Failure`] or an answer.
//! - [`Http::call`]: the attempts of one call under the [`RetryPolicy`], paced while the service
//!   rejects the deployment ([`DeploymentPacer`]), ticking [`crate::progress`] on success.
//! - The header and body helpers: [`retry_after`], [`request_id`], [`read_body_capped`],
//!   [`body_excerpt`], [`error_chain`], [`TransportKind`].

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{RequestBuilder, Response, StatusCode};
use secrecy::SecretString;
use serde::de::DeserializeOwned;

use crate::error_class::ErrorClass;
use crate::pinecone::bucket::TokenBucket;
use crate::retry::{self, Attempt, RetryEvent, RetryPolicy};
use crate::secret::scrub;

/// Error bodies are JSON of a few hundred bytes; anything longer is a proxy page, of which the
/// start is enough.
pub const ERROR_BODY_CAP: usize = 16 * 1024;
/// The default cap of a 2xx JSON body read whole: a batch object or an update answer is a few
/// KB, so a larger answer is a broken server or proxy, not something to buffer without limit.
pub const JSON_BODY_CAP: usize = 1024 * 1024;
/// Characters of a body quoted in an error message.
pub const EXCERPT_CHARS: usize = 200;
/// Calls per second let through while the service rejects the deployment (a rotated key,
/// exhausted billing): enough to notice the fix within a second, few enough not to hammer an
/// API that answers every call with 401, once per message of a full queue.
pub const REJECTED_CALLS_PER_SECOND: f64 = 2.0;

/// Names of one service, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Service {
    /// For log lines: `OpenAI`, `Pinecone`.
    pub name: &'static str,
    /// Counter of attempts by call and outcome (`ok` or the error's label).
    pub requests_metric: &'static str,
    /// Counter of retries by reason.
    pub retries_metric: &'static str,
    /// Label name of the call in `requests_metric` (`endpoint`, `op`).
    pub call_label: &'static str,
}

/// The calls of one client (an enum), as bounded metric labels.
pub trait CallName: Copy + fmt::Display + Send + Sync + 'static {
    fn as_str(self) -> &'static str;
}

/// What a client's error type tells [`Http::call`] and the client's callers. Import it
/// (`use fleet_shared::http::CallError as _`) for the provided accessors.
pub trait CallError: std::error::Error + Send + Sized {
    type Call: CallName;

    /// The client's error for a failed attempt. Body text must be scrubbed of `secret`.
    fn from_failure(call: Self::Call, failure: Failure, secret: &SecretString) -> Self;
    /// What the caller should do about it.
    fn error_class(&self) -> ErrorClass;
    /// `Some(reason)` (a bounded metric label) when trying the same call again at once may
    /// succeed; `None` ends the call with this error.
    fn retry_reason(&self) -> Option<&'static str>;
    /// A bounded metric label of the outcome.
    fn label(&self) -> &'static str;
    /// The error answer, when the server sent one.
    fn answer(&self) -> Option<&AnswerMeta>;

    /// The HTTP status of an error answer.
    fn status(&self) -> Option<u16> {
        self.answer().map(|a| a.status)
    }

    /// The server's requested wait, if it sent one: the caller should not call again sooner.
    fn retry_after(&self) -> Option<Duration> {
        self.answer().and_then(|a| a.retry_after)
    }

    /// The server's id of the request (`x-request-id`), for support tickets and logs.
    fn request_id(&self) -> Option<&str> {
        self.answer().and_then(|a| a.request_id.as_deref())
    }

    /// [`Self::error_class`] is [`ErrorClass::Transient`]: the same call may succeed later.
    /// Errors of the deployment are neither transient nor permanent.
    fn is_transient(&self) -> bool {
        self.error_class() == ErrorClass::Transient
    }

    /// [`Self::error_class`] is [`ErrorClass::Permanent`]: the same call fails the same way.
    fn is_permanent(&self) -> bool {
        self.error_class() == ErrorClass::Permanent
    }
}

/// What an error answer said besides its body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnswerMeta {
    pub status: u16,
    /// From `retry-after-ms` or `Retry-After`.
    pub retry_after: Option<Duration>,
    /// `x-request-id`.
    pub request_id: Option<String>,
}

impl AnswerMeta {
    /// An error status without headers (tests, hand-made errors).
    pub fn status(status: u16) -> Self {
        Self {
            status,
            ..Self::default()
        }
    }

    /// ` (retry after 1.500s) [request req_1]` for error messages: what is known of both.
    pub fn notes(&self) -> String {
        format!(
            "{}{}",
            fmt_retry_after(self.retry_after),
            fmt_request_id(self.request_id.as_deref())
        )
    }
}

/// Why one attempt got no usable answer, before the client turns it into its own error.
#[derive(Debug)]
pub enum Failure {
    /// No complete answer: connect failure, timeout, reset, a body that broke off.
    Transport {
        kind: TransportKind,
        message: String,
    },
    /// An error status; `body` holds at most [`ERROR_BODY_CAP`] bytes (not yet scrubbed).
    Status { meta: AnswerMeta, body: Vec<u8> },
    /// A 2xx answer whose body is not the expected JSON, or is larger than its cap. `message`
    /// is scrubbed, quotes at most [`EXCERPT_CHARS`] characters of the body and names the
    /// request id.
    Decode { message: String },
}

impl Failure {
    fn transport(error: reqwest::Error) -> Self {
        // Fetch URLs are kilobytes of ids, and no URL holds anything a message needs (the call
        // names the endpoint).
        let error = error.without_url();
        Failure::Transport {
            kind: TransportKind::of(&error),
            message: error_chain(&error),
        }
    }
}

/// Paces calls while the service rejects the deployment.
///
/// Once a call ends in an error of the deployment (a rejected key, exhausted quota), at most
/// [`REJECTED_CALLS_PER_SECOND`] calls go out until one succeeds again. Every message in the
/// queue would otherwise make its own call with the same rejected key, as fast as the worker
/// can receive them.
#[derive(Debug)]
pub struct DeploymentPacer {
    rejected: AtomicBool,
    bucket: TokenBucket,
}

impl Default for DeploymentPacer {
    fn default() -> Self {
        Self::new(REJECTED_CALLS_PER_SECOND)
    }
}

impl DeploymentPacer {
    pub fn new(calls_per_second: f64) -> Self {
        Self {
            rejected: AtomicBool::new(false),
            bucket: TokenBucket::new(calls_per_second, 1.0),
        }
    }

    /// Whether calls are being paced now.
    pub fn is_pacing(&self) -> bool {
        self.rejected.load(Ordering::Relaxed)
    }

    /// Waits for a turn while pacing; returns at once otherwise.
    pub async fn wait(&self) {
        if self.is_pacing() {
            self.bucket.acquire().await;
        }
    }

    /// Records how an attempt ended: an error of the deployment starts the pacing, a success
    /// ends it, anything else leaves it as it is.
    pub fn record(&self, class: Option<ErrorClass>) {
        match class {
            None => self.rejected.store(false, Ordering::Relaxed),
            Some(ErrorClass::Deployment(_)) => self.rejected.store(true, Ordering::Relaxed),
            Some(_) => {}
        }
    }
}

/// A reqwest client with the plumbing one service's client needs. Cheap to clone; clones share
/// the connection pool and the [`DeploymentPacer`].
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    secret: SecretString,
    service: Service,
    retry: RetryPolicy,
    pacer: Arc<DeploymentPacer>,
}

impl fmt::Debug for Http {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Http")
            .field("service", &self.service.name)
            .field("retry", &self.retry)
            .field("pacing", &self.pacer.is_pacing())
            .finish_non_exhaustive()
    }
}

impl Http {
    /// `client` carries the service's auth headers; `secret` is scrubbed from every error text.
    pub fn new(
        service: Service,
        client: reqwest::Client,
        secret: SecretString,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            client,
            secret,
            service,
            retry,
            pacer: Arc::new(DeploymentPacer::default()),
        }
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn secret(&self) -> &SecretString {
        &self.secret
    }

    pub fn retry_policy(&self) -> &RetryPolicy {
        &self.retry
    }

    pub fn pacer(&self) -> &DeploymentPacer {
        &self.pacer
    }

    /// Sends one request and reads the answer's head: a 2xx answer is returned for the caller
    /// to read; an error status becomes [`Failure::Status`] with its capped body.
    /// Behind a closed lease fence ([`crate::fence`]) nothing is sent.
    pub async fn send(&self, request: RequestBuilder) -> Result<Response, Failure> {
        crate::fence::check().map_err(|e| Failure::Transport {
            kind: TransportKind::Fenced,
            message: e.to_string(),
        })?;
        let response = request.send().await.map_err(Failure::transport)?;
        if response.status().is_success() {
            return Ok(response);
        }
        let meta = AnswerMeta {
            status: response.status().as_u16(),
            retry_after: retry_after(response.headers()),
            request_id: request_id(response.headers()),
        };
        // A body that cannot be read still leaves the status to decide by.
        let body = read_body_capped(response, ERROR_BODY_CAP)
            .await
            .map(|(body, _)| body)
            .unwrap_or_default();
        Err(Failure::Status { meta, body })
    }

    /// [`Self::send`], then the whole body (at most `cap` bytes) decoded as JSON.
    pub async fn send_json<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
        cap: usize,
    ) -> Result<T, Failure> {
        let response = self.send(request).await?;
        let id = request_id(response.headers());
        let (body, complete) = read_body_capped(response, cap)
            .await
            .map_err(Failure::transport)?;
        let decode = |problem: String| Failure::Decode {
            message: format!(
                "{problem}: {}{}",
                scrub(&body_excerpt(&body, EXCERPT_CHARS), &self.secret),
                fmt_request_id(id.as_deref())
            ),
        };
        if !complete {
            return Err(decode(format!("answer larger than {cap} bytes")));
        }
        serde_json::from_slice(&body).map_err(|e| decode(e.to_string()))
    }

    /// [`Self::send_json`] with the client's own error type.
    pub async fn send_json_as<T: DeserializeOwned, E: CallError>(
        &self,
        call: E::Call,
        request: RequestBuilder,
        cap: usize,
    ) -> Result<T, E> {
        self.send_json(request, cap)
            .await
            .map_err(|f| E::from_failure(call, f, &self.secret))
    }

    /// Runs the attempts of one call: each waits its turn while the deployment is rejected
    /// ([`DeploymentPacer`]), is counted, and is retried as the error and the policy allow
    /// ([`retry::retry`]). A success is progress of the current handling
    /// ([`crate::progress::tick`]). A call that ends in an error is logged once, with the
    /// server's request id.
    pub async fn call<T, E, F, Fut>(&self, call: E::Call, mut attempt: F) -> Result<T, E>
    where
        E: CallError,
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let service = self.service;
        let result = retry::retry(
            &self.retry,
            |n| {
                let attempt = attempt(n);
                async move {
                    self.pacer.wait().await;
                    let outcome = attempt.await;
                    self.judge(call, outcome)
                }
            },
            |event, error: &E| on_retry(service, call, event, error),
        )
        .await;
        if let Err(error) = &result {
            let class = error.error_class();
            tracing::warn!(
                service = service.name,
                call = call.as_str(),
                class = class.as_str(),
                status = error.label(),
                request_id = error.request_id().unwrap_or(""),
                error = %error,
                "{} call failed",
                service.name
            );
        }
        result
    }

    fn judge<T, E: CallError>(&self, call: E::Call, outcome: Result<T, E>) -> Attempt<T, E> {
        let service = self.service;
        match outcome {
            Ok(value) => {
                count_request(service, call, "ok");
                self.pacer.record(None);
                crate::progress::tick();
                Attempt::Done(value)
            }
            Err(error) => {
                count_request(service, call, error.label());
                self.pacer.record(Some(error.error_class()));
                match error.retry_reason() {
                    Some(reason) => Attempt::Retry {
                        retry_after: error.retry_after(),
                        error,
                        reason,
                    },
                    None => Attempt::Fail(error),
                }
            }
        }
    }
}

fn count_request<C: CallName>(service: Service, call: C, outcome: &'static str) {
    metrics::counter!(service.requests_metric, service.call_label => call.as_str(), "outcome" => outcome)
        .increment(1);
}

fn on_retry<E: CallError>(service: Service, call: E::Call, event: &RetryEvent, error: &E) {
    metrics::counter!(service.retries_metric, "reason" => event.reason).increment(1);
    tracing::warn!(
        service = service.name,
        call = call.as_str(),
        reason = event.reason,
        attempt = event.attempt,
        delay_ms = u64::try_from(event.delay.as_millis()).unwrap_or(u64::MAX),
        from_retry_after = event.from_retry_after,
        request_id = error.request_id().unwrap_or(""),
        error = %error,
        "{} call failed; retrying",
        service.name
    );
}

/// The server's id of the request (`x-request-id`, sent by OpenAI and Pinecone), if any.
pub fn request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        // Bounded: it goes into logs and error text.
        .map(|v| v.chars().take(128).collect())
}

/// The server's requested wait from `retry-after-ms` (milliseconds, sent by OpenAI and read
/// first by its official SDKs) or `Retry-After` (seconds, or an HTTP-date), if any.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    retry_after_at(headers, SystemTime::now())
}

/// [`retry_after`] with an explicit clock, for HTTP-date values.
pub fn retry_after_at(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let millis = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_seconds(v.trim()))
        .map(|ms| ms / 1000);
    millis.or_else(|| {
        headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, now))
    })
}

/// Parses a `Retry-After` value: delta-seconds (`120`; a fractional `1.5` is accepted too,
/// as some gateways send it) or an HTTP-date (`Wed, 21 Oct 2015 07:28:00 GMT`), which becomes
/// the time left until then (zero if already past). Anything else is ignored (`None`), and
/// the caller falls back to its own backoff.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Some(secs) = parse_seconds(value) {
        return Some(secs);
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let at = SystemTime::from(at.with_timezone(&chrono::Utc));
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A non-negative decimal number of seconds (or milliseconds, by the caller's reading).
fn parse_seconds(value: &str) -> Option<Duration> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    if let Ok(whole) = value.parse::<u64>() {
        return Some(Duration::from_secs(whole));
    }
    let secs: f64 = value.parse().ok()?;
    Duration::try_from_secs_f64(secs).ok()
}

/// Statuses worth retrying: request timeout, rate limiting, and server-side failures.
pub fn is_retryable_status(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// Whether an HTTP error status is worth trying again (429, 408, 5xx).
pub fn status_is_transient(status: u16) -> bool {
    is_retryable_status(StatusCode::from_u16(status).unwrap_or(StatusCode::OK))
}

/// A bounded name of an HTTP error status, for metrics.
pub fn status_class(status: u16) -> &'static str {
    match status {
        401 | 403 => "unauthorized",
        404 => "not_found",
        408 => "timeout",
        414 => "uri_too_long",
        429 => "rate_limited",
        500..=599 => "server_error",
        _ => "client_error",
    }
}

/// Why a request failed before a complete answer arrived. Every kind is transient: the same
/// request may well succeed on another connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    Timeout,
    Connect,
    /// The answer's body broke off or could not be read.
    Body,
    /// Not sent: the handling's lease may belong to another worker by now.
    Fenced,
    Other,
}

impl TransportKind {
    pub fn of(error: &reqwest::Error) -> Self {
        if error.is_timeout() {
            Self::Timeout
        } else if error.is_connect() {
            Self::Connect
        } else if error.is_body() || error.is_decode() {
            Self::Body
        } else {
            Self::Other
        }
    }

    /// A bounded metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Fenced => "fenced",
            Self::Body => "body",
            Self::Other => "transport",
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error and its sources on one line: reqwest's own message ("error sending request") says
/// little; the cause ("Connection refused", "connection closed before message completed") is
/// in the chain.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

/// Reads at most `cap` bytes of an answer's body, without trusting a misbehaving server or
/// proxy to send a small one. Returns the bytes and whether they are the whole body.
pub async fn read_body_capped(
    mut response: Response,
    cap: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = cap.saturating_sub(out.len());
        if chunk.len() > room {
            out.extend_from_slice(&chunk[..room]);
            return Ok((out, false));
        }
        out.extend_from_slice(&chunk);
    }
    Ok((out, true))
}

/// Outside input quoted in a message or a log line: at most [`EXCERPT_CHARS`] characters,
/// escaped (a bad id can carry megabytes, control characters or fake log lines).
pub fn quote(text: &str) -> String {
    let mut out: String = text.chars().take(EXCERPT_CHARS).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    format!("{out:?}")
}

/// A service's base URL from configuration: `https://`, or `http://` only for a loopback
/// address (an emulator on this machine): an API key must never travel in clear over a
/// network.
pub fn service_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text.trim()).map_err(|e| e.to_string())?;
    if url.cannot_be_a_base() {
        return Err(format!("{url} is not a base URL"));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" => Err(format!(
            "{url}: http:// is accepted only for loopback addresses (127.0.0.0/8, ::1, localhost); use https://"
        )),
        other => Err(format!("{url}: scheme {other} is not http(s)")),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    use std::net::IpAddr;
    match url
        .host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
    {
        Some(host) if host.eq_ignore_ascii_case("localhost") => true,
        Some(host) => host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// The reqwest client both services use: their headers, our user agent, and no redirects (a
/// redirect would carry the `Authorization` / `Api-Key` header to another host).
pub fn client_builder(headers: reqwest::header::HeaderMap) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .default_headers(headers)
        .user_agent(concat!("fleet/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
}

/// A short, single-line excerpt of a body (an HTML error page), for error messages.
pub fn body_excerpt(body: &[u8], max_chars: usize) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out = String::new();
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
        if out.chars().count() >= max_chars {
            let cut: String = out.chars().take(max_chars).collect();
            return format!("{cut}…");
        }
    }
    out
}

/// ` (retry after 1.500s)` for error messages, empty without a suggestion.
pub fn fmt_retry_after(d: Option<Duration>) -> String {
    d.map_or_else(String::new, |d| {
        format!(" (retry after {:.3}s)", d.as_secs_f64())
    })
}

/// ` [request req_123]` for error messages, empty without an id.
pub fn fmt_request_id(id: Option<&str>) -> String {
    id.map_or_else(String::new, |id| format!(" [request {id}]"))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use reqwest::header::HeaderValue;
    use tokio::time::Instant;

    use super::*;
    use crate::error_class::DeploymentCause;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("valid"));
        }
        h
    }

    #[test]
    fn retry_after_seconds_dates_and_garbage() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_470); // 07:27:50 GMT
        let p = |v: &str| parse_retry_after(v, now);
        assert_eq!(p("0"), Some(Duration::ZERO));
        assert_eq!(p(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(p("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(
            p("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::from_secs(10))
        );
        assert_eq!(p("Wed, 21 Oct 2015 07:00:00 GMT"), Some(Duration::ZERO));
        for bad in ["", "-1", "soon", "1e3", "NaN", "inf", "1.2.3"] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn retry_after_header_prefers_milliseconds() {
        let now = SystemTime::now();
        assert_eq!(retry_after_at(&headers(&[]), now), None);
        assert_eq!(
            retry_after_at(&headers(&[("retry-after", "3")]), now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after_at(
                &headers(&[("retry-after", "3"), ("retry-after-ms", "250")]),
                now
            ),
            Some(Duration::from_millis(250))
        );
        // An unreadable millisecond header falls back to Retry-After.
        assert_eq!(
            retry_after_at(
                &headers(&[("retry-after", "3"), ("retry-after-ms", "x")]),
                now
            ),
            Some(Duration::from_secs(3))
        );
    }

    #[test]
    fn request_ids_are_trimmed_and_bounded() {
        assert_eq!(request_id(&headers(&[])), None);
        assert_eq!(request_id(&headers(&[("x-request-id", "  ")])), None);
        assert_eq!(
            request_id(&headers(&[("x-request-id", " req_abc ")])).as_deref(),
            Some("req_abc")
        );
        let long = "r".repeat(500);
        assert_eq!(
            request_id(&headers(&[("x-request-id", &long)])).map(|s| s.len()),
            Some(128)
        );
        assert_eq!(fmt_request_id(Some("req_1")), " [request req_1]");
        assert_eq!(fmt_request_id(None), "");
    }

    #[test]
    fn retryable_statuses() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(is_retryable_status(StatusCode::from_u16(s).unwrap()), "{s}");
            assert!(status_is_transient(s), "{s}");
        }
        for s in [200, 400, 401, 403, 404, 409, 414, 422] {
            assert!(
                !is_retryable_status(StatusCode::from_u16(s).unwrap()),
                "{s}"
            );
        }
        assert_eq!(status_class(403), "unauthorized");
        assert_eq!(status_class(414), "uri_too_long");
        assert_eq!(status_class(418), "client_error");
    }

    #[test]
    fn excerpts_are_short_and_single_line() {
        let html = b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n</html>";
        assert_eq!(
            body_excerpt(html, 200),
            "<html> <head><title>502 Bad Gateway</title></head> </html>"
        );
        assert_eq!(body_excerpt(b"abcdef", 3), "abc…");
        assert_eq!(body_excerpt(b"", 3), "");
    }

    // --- Http::call, with attempts that need no server -----------------------------------

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Probe;

    impl fmt::Display for Probe {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("probe")
        }
    }

    impl CallName for Probe {
        fn as_str(self) -> &'static str {
            "probe"
        }
    }

    /// A test error: its class, and whether to retry it at once.
    #[derive(Debug, thiserror::Error)]
    #[error("probe failed: {class:?}")]
    struct ProbeError {
        class: ErrorClass,
        hot: bool,
    }

    impl CallError for ProbeError {
        type Call = Probe;
        fn from_failure(_: Probe, _: Failure, _: &SecretString) -> Self {
            ProbeError {
                class: ErrorClass::Transient,
                hot: true,
            }
        }
        fn error_class(&self) -> ErrorClass {
            self.class
        }
        fn retry_reason(&self) -> Option<&'static str> {
            self.hot.then_some("probe")
        }
        fn label(&self) -> &'static str {
            "probe"
        }
        fn answer(&self) -> Option<&AnswerMeta> {
            None
        }
    }

    const SERVICE: Service = Service {
        name: "Probe",
        requests_metric: "probe_requests_total",
        retries_metric: "probe_retries_total",
        call_label: "call",
    };

    fn http(retry: RetryPolicy) -> Http {
        Http::new(
            SERVICE,
            reqwest::Client::new(),
            SecretString::from("sk-probe-0123456789"),
            retry,
        )
    }

    fn rejected() -> ProbeError {
        ProbeError {
            class: ErrorClass::Deployment(DeploymentCause::OpenAiKey),
            hot: false,
        }
    }

    /// Calls `n` times at once (as many messages would) and returns when each attempt ran,
    /// in seconds after the start.
    async fn burst(http: &Http, n: usize, answer: impl Fn() -> Result<(), ProbeError>) -> Vec<f64> {
        let start = Instant::now();
        // Recorded inside the attempt future, which runs after the pacer's wait.
        let times = Mutex::new(Vec::new());
        let calls = (0..n).map(|_| {
            http.call(Probe, |_| {
                let times = &times;
                let out = answer();
                async move {
                    times.lock().unwrap().push(start.elapsed().as_secs_f64());
                    out
                }
            })
        });
        let _ = futures::future::join_all(calls).await;
        let mut t = times.into_inner().unwrap();
        t.sort_by(f64::total_cmp);
        t
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejected_deployment_paces_calls_until_one_succeeds() {
        let http = http(RetryPolicy::none());
        // Unpaced: ten calls at once all go out at once.
        let t = burst(&http, 10, || Ok(())).await;
        assert!(t.iter().all(|s| *s == 0.0), "{t:?}");
        assert!(!http.pacer().is_pacing());

        // The first rejection starts the pacing, shared by every clone of the client.
        let err = http
            .call(Probe, |_| async { Err::<(), _>(rejected()) })
            .await
            .expect_err("rejected");
        assert!(matches!(err.class, ErrorClass::Deployment(_)));
        let clone = http.clone();
        assert!(clone.pacer().is_pacing());
        let t = burst(&clone, 10, || Err(rejected())).await;
        // At most 2 per second: 10 calls spread over 4.5 s, 0.5 s apart.
        for (i, s) in t.iter().enumerate() {
            assert!((s - 0.5 * i as f64).abs() < 0.01, "call {i} at {s}: {t:?}");
        }
        for w in t.windows(3) {
            assert!(w[2] - w[0] >= 0.99, "three calls within a second: {t:?}");
        }

        // A success ends the pacing: the next burst goes out at once again.
        tokio::time::sleep(Duration::from_secs(1)).await;
        http.call(Probe, |_| async { Ok::<_, ProbeError>(()) })
            .await
            .expect("accepted again");
        assert!(!http.pacer().is_pacing());
        let t = burst(&http, 10, || Ok(())).await;
        assert!(t.iter().all(|s| *s == 0.0), "{t:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn transient_errors_neither_start_nor_end_the_pacing() {
        let http = http(RetryPolicy::none());
        let transient = || {
            Err(ProbeError {
                class: ErrorClass::Transient,
                hot: false,
            })
        };
        let t = burst(&http, 4, transient).await;
        assert!(t.iter().all(|s| *s == 0.0), "{t:?}");
        http.pacer().record(Some(rejected().class));
        let t = burst(&http, 4, transient).await;
        assert_eq!(t, vec![0.0, 0.5, 1.0, 1.5]);
        assert!(http.pacer().is_pacing());
    }

    #[tokio::test(start_paused = true)]
    async fn hot_retries_follow_the_policy_and_deployment_errors_are_never_retried() {
        let policy = RetryPolicy {
            max_attempts: 3,
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(1),
            jitter: false,
            ..RetryPolicy::default()
        };
        let http = http(policy);
        let tries = std::sync::atomic::AtomicU32::new(0);
        let err = http
            .call(Probe, |_| {
                tries.fetch_add(1, Ordering::Relaxed);
                async {
                    Err::<(), _>(ProbeError {
                        class: ErrorClass::Transient,
                        hot: true,
                    })
                }
            })
            .await
            .expect_err("always failing");
        assert!(err.hot);
        assert_eq!(tries.swap(0, Ordering::Relaxed), 3);

        let _ = http
            .call(Probe, |_| {
                tries.fetch_add(1, Ordering::Relaxed);
                async { Err::<(), _>(rejected()) }
            })
            .await;
        assert_eq!(
            tries.load(Ordering::Relaxed),
            1,
            "no hot retry of a rejection"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_is_progress_of_the_handling() {
        let http = http(RetryPolicy::none());
        let progress = crate::progress::Progress::new();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(progress.idle_for().as_secs(), 30);
        progress
            .scope(async {
                let _ = http
                    .call(Probe, |_| async { Err::<(), _>(rejected()) })
                    .await;
            })
            .await;
        assert_eq!(
            progress.idle_for().as_secs(),
            30,
            "a failure is no progress"
        );
        progress
            .scope(http.call(Probe, |_| async { Ok::<_, ProbeError>(()) }))
            .await
            .expect("ok");
        assert_eq!(progress.idle_for(), Duration::ZERO);
    }

    #[test]
    fn debug_output_names_no_secret() {
        let text = format!("{:?}", http(RetryPolicy::none()));
        assert!(!text.contains("sk-probe"), "{text}");
    }

    #[test]
    fn outside_input_is_quoted_short_and_escaped() {
        assert_eq!(quote("batch_1"), "\"batch_1\"");
        let huge = "x".repeat(5_000_000);
        let q = quote(&huge);
        assert!(q.chars().count() <= EXCERPT_CHARS + 3, "{}", q.len());
        assert!(q.ends_with("…\""));
        assert_eq!(quote("a\nlevel=ERROR fake"), "\"a\\nlevel=ERROR fake\"");
    }

    #[test]
    fn clear_text_only_to_loopback() {
        for ok in [
            "https://api.openai.com/v1",
            "http://127.0.0.1:8080/v1",
            "http://127.9.9.9",
            "http://localhost:9000",
            "http://[::1]:5000",
        ] {
            assert!(service_url(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("http://api.openai.com/v1", "loopback"),
            ("http://10.0.0.5/v1", "loopback"),
            ("http://localhost.evil.com/", "loopback"),
            ("ftp://127.0.0.1/", "scheme"),
            ("mailto:someone@example.com", "base URL"),
            ("not a url", "relative URL"),
        ] {
            let e = service_url(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        use axum::response::Redirect;
        let app = axum::Router::new()
            .route(
                "/start",
                axum::routing::get(|| async { Redirect::temporary("/elsewhere") }),
            )
            .route("/elsewhere", axum::routing::get(|| async { "followed" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = client_builder(reqwest::header::HeaderMap::new())
            .build()
            .unwrap();
        let answer = client
            .get(format!("http://{addr}/start"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            answer.status().as_u16(),
            307,
            "the redirect itself, not its target"
        );
    }
}
