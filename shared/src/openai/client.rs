//! HTTP client of the OpenAI Batch API calls the fleet makes (openai-batch.md): read a batch,
//! cancel it, download a file.
//!
//! Retries happen here, bounded by [`RetryPolicy`], so that a brief throttle or a load
//! balancer hiccup does not cost a whole queue round-trip; what is still failing afterwards is
//! returned as an [`OpenAiError`] whose [`OpenAiError::is_transient`] tells the worker whether
//! to re-schedule the message or dead-letter it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Url};
use secrecy::SecretString;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};

use super::batch::BatchObject;
use crate::retry::{
    self, Attempt, RetryEvent, RetryPolicy, TransportKind, body_excerpt, error_chain,
    fmt_retry_after, is_retryable_status, read_body_capped, status_class, status_is_transient,
};
use crate::secret::{scrub, sensitive_header};

/// `OPENAI_BASE_URL`'s default, as the official SDKs spell it (it includes `/v1`).
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// Error bodies are JSON of a few hundred bytes; anything longer is a proxy page, of which the
/// start is enough.
const ERROR_BODY_CAP: usize = 16 * 1024;
/// Output files reach hundreds of MB: write in large pieces.
const DOWNLOAD_BUFFER: usize = 256 * 1024;
/// Output lines can be long (a whole chat completion); a bigger buffer saves syscalls.
const READ_BUFFER: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// Includes `/v1`; an emulator is `http://127.0.0.1:PORT/v1`.
    pub base_url: String,
    pub api_key: SecretString,
    /// Sent as `OpenAI-Organization` when set.
    pub organization: Option<String>,
    /// Sent as `OpenAI-Project` when set.
    pub project: Option<String>,
    pub connect_timeout: Duration,
    /// Whole-call limit of the JSON calls (batch read, cancel). Not applied to downloads,
    /// whose duration grows with the file.
    pub request_timeout: Duration,
    /// Longest silence while a download streams before it counts as broken off (then retried).
    pub download_idle_timeout: Duration,
    /// Where downloads are written; `None` = the system temporary directory.
    pub download_dir: Option<PathBuf>,
    pub retry: RetryPolicy,
}

impl OpenAiConfig {
    /// The defaults of the real API, with this key.
    pub fn new(api_key: SecretString) -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_key,
            organization: None,
            project: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            download_idle_timeout: Duration::from_secs(60),
            download_dir: None,
            retry: RetryPolicy::default(),
        }
    }
}

/// `{"error": {"message", "type", "code"}}` of a failed call, or the start of a non-JSON body
/// (a load balancer's HTML page) as `message`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiErrorDetail {
    pub message: String,
    pub error_type: Option<String>,
    pub code: Option<String>,
}

impl ApiErrorDetail {
    fn parse(body: &[u8], secret: &SecretString) -> Self {
        let parsed = serde_json::from_slice::<Value>(body).ok();
        let error = parsed.as_ref().and_then(|v| v.get("error"));
        let text = |key: &str| -> Option<String> {
            match error?.get(key)? {
                Value::Null => None,
                Value::String(s) => Some(scrub(s, secret)),
                other => Some(scrub(&other.to_string(), secret)),
            }
        };
        match error {
            Some(Value::Object(_)) => Self {
                message: text("message").unwrap_or_default(),
                error_type: text("type"),
                code: text("code"),
            },
            // Some gateways answer `{"error": "text"}`.
            Some(Value::String(s)) => Self {
                message: scrub(s, secret),
                ..Self::default()
            },
            _ => Self {
                message: scrub(&body_excerpt(body, 300), secret),
                ..Self::default()
            },
        }
    }
}

impl fmt::Display for ApiErrorDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.message.is_empty() {
            "(no message)"
        } else {
            &self.message
        })?;
        match (&self.error_type, &self.code) {
            (Some(t), Some(c)) => write!(f, " [{t}/{c}]"),
            (Some(t), None) => write!(f, " [{t}]"),
            (None, Some(c)) => write!(f, " [{c}]"),
            (None, None) => Ok(()),
        }
    }
}

/// Everything that can go wrong calling OpenAI, after the client's own retries.
///
/// No variant ever holds the API key: error bodies are scrubbed and headers are never copied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenAiError {
    /// The API answered with an error status.
    #[error("OpenAI {endpoint}: HTTP {status}: {detail}{}", fmt_retry_after(*retry_after))]
    Api {
        endpoint: &'static str,
        status: u16,
        detail: ApiErrorDetail,
        /// The server's `Retry-After` (a 429 or 503), for the caller to re-schedule by.
        retry_after: Option<Duration>,
    },
    /// No complete answer: connect failure, timeout, connection reset.
    #[error("OpenAI {endpoint}: {kind} error: {message}")]
    Transport {
        endpoint: &'static str,
        kind: TransportKind,
        message: String,
    },
    /// A 2xx answer whose body is not the expected JSON.
    #[error("OpenAI {endpoint}: undecodable response: {message}")]
    Decode {
        endpoint: &'static str,
        message: String,
    },
    /// Every try of a download broke off before the announced length arrived.
    #[error(
        "OpenAI download of {file_id}: broke off {attempts} times; last try received {received} of {} bytes: {message}",
        expected.map_or_else(|| "unknown".to_owned(), |n| n.to_string())
    )]
    TruncatedDownload {
        file_id: String,
        attempts: u32,
        received: u64,
        expected: Option<u64>,
        message: String,
    },
    /// Writing the downloaded file to local disk failed.
    #[error("OpenAI download of {file_id}: local file: {source}")]
    Io {
        file_id: String,
        #[source]
        source: io::Error,
    },
    #[error("OpenAI client configuration: {0}")]
    Config(String),
}

impl OpenAiError {
    /// Transient: try again later (throttling, server errors, timeouts, broken connections and
    /// downloads, local disk trouble). Permanent: the same call will fail the same way (auth,
    /// unknown batch or file, other client errors, an answer we cannot decode).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Api { status, .. } => status_is_transient(*status),
            Self::Transport { .. } | Self::TruncatedDownload { .. } | Self::Io { .. } => true,
            Self::Decode { .. } | Self::Config(_) => false,
        }
    }

    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// 404: the batch or file does not exist (for a batch id, a permanent error of that batch).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// The delay the server asked for, when it did: the worker should not re-check sooner.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short, bounded label for metrics and dead-letter attributes.
    pub fn class(&self) -> &'static str {
        match self {
            Self::Api { status, .. } => status_class(*status),
            Self::Transport { kind, .. } => kind.as_str(),
            Self::Decode { .. } => "decode",
            Self::TruncatedDownload { .. } => "truncated",
            Self::Io { .. } => "io",
            Self::Config(_) => "config",
        }
    }
}

/// A downloaded file on local disk, deleted when this is dropped.
#[derive(Debug)]
pub struct DownloadedFile {
    file_id: String,
    path: tempfile::TempPath,
    len: u64,
}

impl DownloadedFile {
    pub fn file_id(&self) -> &str {
        &self.file_id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes on disk (equal to the announced `Content-Length` when there was one).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A fresh reader from the start, for the line parsers. The file can be read several
    /// times (targets from the input file, then the output).
    pub async fn open(&self) -> io::Result<BufReader<tokio::fs::File>> {
        let file = tokio::fs::File::open(&self.path).await?;
        Ok(BufReader::with_capacity(READ_BUFFER, file))
    }
}

/// The OpenAI Batch API client. Cheap to clone (one connection pool).
#[derive(Clone)]
pub struct OpenAiClient {
    http: reqwest::Client,
    base: Url,
    api_key: SecretString,
    organization: Option<String>,
    project: Option<String>,
    request_timeout: Duration,
    download_dir: Option<PathBuf>,
    retry: RetryPolicy,
}

impl fmt::Debug for OpenAiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiClient")
            .field("base_url", &self.base.as_str())
            .field("api_key", &"[REDACTED]")
            .field("organization", &self.organization)
            .field("project", &self.project)
            .field("request_timeout", &self.request_timeout)
            .field("download_dir", &self.download_dir)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl OpenAiClient {
    pub fn new(config: OpenAiConfig) -> Result<Self, OpenAiError> {
        let mut base = Url::parse(config.base_url.trim())
            .map_err(|e| OpenAiError::Config(format!("base URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(OpenAiError::Config(format!(
                "base URL must be http(s): {base}"
            )));
        }
        // `…/v1/` and `…/v1` both mean the same base; segments are appended to it.
        if base.path().ends_with('/') {
            let trimmed = base.path().trim_end_matches('/').to_owned();
            base.set_path(&trimmed);
        }

        let mut headers = HeaderMap::new();
        let auth = sensitive_header("Bearer ", &config.api_key).map_err(|_| {
            OpenAiError::Config("API key contains characters invalid in a header".into())
        })?;
        headers.insert(header::AUTHORIZATION, auth);
        for (name, value) in [
            ("openai-organization", &config.organization),
            ("openai-project", &config.project),
        ] {
            if let Some(value) = value {
                let v = HeaderValue::from_str(value)
                    .map_err(|_| OpenAiError::Config(format!("invalid {name} header value")))?;
                headers.insert(name, v);
            }
        }

        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(concat!("fleet/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.download_idle_timeout)
            .build()
            .map_err(|e| OpenAiError::Config(error_chain(&e)))?;
        Ok(Self {
            http,
            base,
            api_key: config.api_key,
            organization: config.organization,
            project: config.project,
            request_timeout: config.request_timeout,
            download_dir: config.download_dir,
            retry: config.retry,
        })
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// `GET /batches/{id}`. A 404 is permanent for that batch.
    pub async fn get_batch(&self, batch_id: &str) -> Result<BatchObject, OpenAiError> {
        let url = self.url(&["batches", batch_id]);
        self.json_call("get_batch", Method::GET, url).await
    }

    /// `POST /batches/{id}/cancel`. The batch moves to `cancelling`; a batch already terminal
    /// answers an error status (a permanent error: read the batch again to see how it ended).
    pub async fn cancel_batch(&self, batch_id: &str) -> Result<BatchObject, OpenAiError> {
        let url = self.url(&["batches", batch_id, "cancel"]);
        self.json_call("cancel_batch", Method::POST, url).await
    }

    /// `GET /files/{id}/content`, streamed to a temporary file in the configured directory.
    pub async fn download_file(&self, file_id: &str) -> Result<DownloadedFile, OpenAiError> {
        let dir = self.download_dir.clone().unwrap_or_else(std::env::temp_dir);
        self.download_file_in(file_id, &dir).await
    }

    /// [`Self::download_file`] into `dir`.
    ///
    /// The body goes to disk as it arrives (never whole in memory). A download that breaks off,
    /// or delivers fewer bytes than its `Content-Length`, is thrown away and started again, up
    /// to the retry policy's attempts; then [`OpenAiError::TruncatedDownload`] (transient).
    pub async fn download_file_in(
        &self,
        file_id: &str,
        dir: &Path,
    ) -> Result<DownloadedFile, OpenAiError> {
        const ENDPOINT: &str = "download_file";
        let url = self.url(&["files", file_id, "content"]);
        let tries = std::sync::atomic::AtomicU32::new(0);
        retry::retry(
            &self.retry,
            |n| {
                tries.store(n, std::sync::atomic::Ordering::Relaxed);
                self.download_attempt(file_id, url.clone(), dir)
            },
            |event, error| on_retry(ENDPOINT, event, error),
        )
        .await
        .map_err(|e| match e {
            // Only now, with the tries spent, does the count mean anything to the caller.
            OpenAiError::TruncatedDownload {
                file_id,
                received,
                expected,
                message,
                ..
            } => OpenAiError::TruncatedDownload {
                file_id,
                attempts: tries.load(std::sync::atomic::Ordering::Relaxed),
                received,
                expected,
                message,
            },
            other => other,
        })
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        // Percent-encodes each id as one path segment, whatever characters it holds.
        if let Ok(mut path) = url.path_segments_mut() {
            path.extend(segments);
        }
        url
    }

    async fn json_call<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        method: Method,
        url: Url,
    ) -> Result<T, OpenAiError> {
        retry::retry(
            &self.retry,
            |_| self.json_attempt(endpoint, method.clone(), url.clone()),
            |event, error| on_retry(endpoint, event, error),
        )
        .await
    }

    async fn json_attempt<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        method: Method,
        url: Url,
    ) -> Attempt<T, OpenAiError> {
        let sent = self
            .http
            .request(method, url)
            .timeout(self.request_timeout)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => return transport_attempt(endpoint, &e),
        };
        if !response.status().is_success() {
            return self.status_attempt(endpoint, response).await;
        }
        let body = match response.bytes().await {
            Ok(b) => b,
            Err(e) => return transport_attempt(endpoint, &e),
        };
        match serde_json::from_slice::<T>(&body) {
            Ok(value) => {
                count_request(endpoint, "ok");
                Attempt::Done(value)
            }
            Err(e) => {
                count_request(endpoint, "decode");
                Attempt::Fail(OpenAiError::Decode {
                    endpoint,
                    message: format!("{e}: {}", scrub(&body_excerpt(&body, 200), &self.api_key)),
                })
            }
        }
    }

    /// Turns an error status into an error, retryable or not.
    async fn status_attempt<T>(
        &self,
        endpoint: &'static str,
        response: reqwest::Response,
    ) -> Attempt<T, OpenAiError> {
        let status = response.status();
        let retry_after = retry::retry_after(response.headers());
        // A body that cannot be read still leaves the status to decide by.
        let body = read_body_capped(response, ERROR_BODY_CAP)
            .await
            .unwrap_or_default();
        let class = status_class(status.as_u16());
        count_request(endpoint, class);
        let error = OpenAiError::Api {
            endpoint,
            status: status.as_u16(),
            detail: ApiErrorDetail::parse(&body, &self.api_key),
            retry_after,
        };
        if is_retryable_status(status) {
            Attempt::Retry {
                error,
                reason: class,
                retry_after,
            }
        } else {
            Attempt::Fail(error)
        }
    }

    async fn download_attempt(
        &self,
        file_id: &str,
        url: Url,
        dir: &Path,
    ) -> Attempt<DownloadedFile, OpenAiError> {
        const ENDPOINT: &str = "download_file";
        let response = match self.http.get(url).send().await {
            Ok(r) => r,
            Err(e) => return transport_attempt(ENDPOINT, &e),
        };
        if !response.status().is_success() {
            return self.status_attempt(ENDPOINT, response).await;
        }
        let expected = response.content_length();

        let io_error = |source: io::Error| {
            count_request(ENDPOINT, "io");
            OpenAiError::Io {
                file_id: file_id.to_owned(),
                source,
            }
        };
        let dir_owned = dir.to_owned();
        let created = tokio::task::spawn_blocking(move || {
            tempfile::Builder::new()
                .prefix("openai-file-")
                .tempfile_in(dir_owned)
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)));
        let (std_file, path) = match created {
            Ok(f) => f.into_parts(),
            // Local disk trouble is not fixed by downloading again right away.
            Err(e) => return Attempt::Fail(io_error(e)),
        };
        let mut writer =
            BufWriter::with_capacity(DOWNLOAD_BUFFER, tokio::fs::File::from_std(std_file));

        let mut received: u64 = 0;
        let mut broke_off: Option<String> = None;
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    if let Err(e) = writer.write_all(&bytes).await {
                        return Attempt::Fail(io_error(e));
                    }
                    received += bytes.len() as u64;
                }
                Err(e) => {
                    broke_off = Some(error_chain(&e));
                    break;
                }
            }
        }
        if let Err(e) = writer.flush().await {
            return Attempt::Fail(io_error(e));
        }
        drop(writer);

        let short = expected.is_some_and(|n| n != received);
        if broke_off.is_some() || short {
            count_request(ENDPOINT, "truncated");
            // `path` is dropped here: the partial file is deleted.
            return Attempt::Retry {
                error: OpenAiError::TruncatedDownload {
                    file_id: file_id.to_owned(),
                    attempts: 1,
                    received,
                    expected,
                    message: broke_off.unwrap_or_else(|| "body shorter than Content-Length".into()),
                },
                reason: "truncated",
                retry_after: None,
            };
        }
        count_request(ENDPOINT, "ok");
        metrics::counter!("fleet_openai_download_bytes_total").increment(received);
        Attempt::Done(DownloadedFile {
            file_id: file_id.to_owned(),
            path,
            len: received,
        })
    }
}

fn transport_attempt<T>(endpoint: &'static str, error: &reqwest::Error) -> Attempt<T, OpenAiError> {
    let kind = TransportKind::of(error);
    count_request(endpoint, kind.as_str());
    Attempt::Retry {
        error: OpenAiError::Transport {
            endpoint,
            kind,
            // Request URLs hold only ids, never the key (it travels in a header).
            message: error_chain(error),
        },
        reason: kind.as_str(),
        retry_after: None,
    }
}

fn count_request(endpoint: &'static str, outcome: &'static str) {
    metrics::counter!("fleet_openai_requests_total", "endpoint" => endpoint, "outcome" => outcome)
        .increment(1);
}

fn on_retry(endpoint: &'static str, event: &RetryEvent, error: &OpenAiError) {
    metrics::counter!("fleet_openai_retries_total", "reason" => event.reason).increment(1);
    tracing::warn!(
        endpoint,
        reason = event.reason,
        attempt = event.attempt,
        delay_ms = u64::try_from(event.delay.as_millis()).unwrap_or(u64::MAX),
        from_retry_after = event.from_retry_after,
        error = %error,
        "OpenAI call failed; retrying"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-proj-SECRET0123456789abcdef";

    fn client() -> OpenAiClient {
        let mut config = OpenAiConfig::new(SecretString::from(KEY));
        config.base_url = "http://127.0.0.1:9/v1/".into();
        config.organization = Some("org-1".into());
        OpenAiClient::new(config).expect("valid config")
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let mut config = OpenAiConfig::new(SecretString::from(KEY));
        config.project = Some("proj".into());
        assert!(!format!("{config:?}").contains("SECRET"));
        let c = client();
        let text = format!("{c:?} {c:#?}");
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("[REDACTED]"));
    }

    #[test]
    fn errors_never_show_the_key() {
        let secret = SecretString::from(KEY);
        let echoed = format!(
            r#"{{"error":{{"message":"Incorrect API key provided: {KEY}.","type":"invalid_request_error","code":"invalid_api_key"}}}}"#
        );
        let err = OpenAiError::Api {
            endpoint: "get_batch",
            status: 401,
            detail: ApiErrorDetail::parse(echoed.as_bytes(), &secret),
            retry_after: None,
        };
        let text = format!("{err} {err:?}");
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("invalid_api_key"));
        assert!(!err.is_transient());
        assert_eq!(err.class(), "unauthorized");

        let html = format!("<html>Authorization: Bearer {KEY}</html>");
        let detail = ApiErrorDetail::parse(html.as_bytes(), &secret);
        assert!(!detail.message.contains("SECRET"));
        assert!(detail.message.contains("[REDACTED]"));
    }

    #[test]
    fn error_bodies_are_parsed() {
        let secret = SecretString::from(KEY);
        let d = ApiErrorDetail::parse(
            br#"{"error":{"message":"No batch found with id 'b'.","type":"invalid_request_error","param":null,"code":null}}"#,
            &secret,
        );
        assert_eq!(d.message, "No batch found with id 'b'.");
        assert_eq!(d.error_type.as_deref(), Some("invalid_request_error"));
        assert_eq!(d.code, None);
        assert_eq!(
            d.to_string(),
            "No batch found with id 'b'. [invalid_request_error]"
        );
        let d = ApiErrorDetail::parse(br#"{"error":{"message":"x","code":42}}"#, &secret);
        assert_eq!(d.code.as_deref(), Some("42"));
        let d = ApiErrorDetail::parse(br#"{"error":"plain"}"#, &secret);
        assert_eq!(d.message, "plain");
        let d = ApiErrorDetail::parse(b"", &secret);
        assert_eq!(d.to_string(), "(no message)");
    }

    #[test]
    fn classification() {
        let api = |status: u16| OpenAiError::Api {
            endpoint: "get_batch",
            status,
            detail: ApiErrorDetail::default(),
            retry_after: None,
        };
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(api(s).is_transient(), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 422] {
            assert!(!api(s).is_transient(), "{s}");
        }
        assert!(api(404).is_not_found());
        assert_eq!(api(404).class(), "not_found");
        assert_eq!(api(503).class(), "server_error");
        let transport = OpenAiError::Transport {
            endpoint: "get_batch",
            kind: TransportKind::Timeout,
            message: "timed out".into(),
        };
        assert!(transport.is_transient());
        assert_eq!(transport.class(), "timeout");
        let truncated = OpenAiError::TruncatedDownload {
            file_id: "file-1".into(),
            attempts: 5,
            received: 10,
            expected: Some(20),
            message: "closed".into(),
        };
        assert!(truncated.is_transient());
        assert!(truncated.to_string().contains("received 10 of 20 bytes"));
        let decode = OpenAiError::Decode {
            endpoint: "get_batch",
            message: "expected value".into(),
        };
        assert!(!decode.is_transient());
        let limited = OpenAiError::Api {
            endpoint: "get_batch",
            status: 429,
            detail: ApiErrorDetail::default(),
            retry_after: Some(Duration::from_secs(120)),
        };
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(120)));
        assert!(limited.to_string().contains("retry after 120.000s"));
    }

    #[test]
    fn urls_are_built_per_segment() {
        let c = client();
        assert_eq!(c.base_url().as_str(), "http://127.0.0.1:9/v1");
        assert_eq!(
            c.url(&["batches", "batch_1", "cancel"]).as_str(),
            "http://127.0.0.1:9/v1/batches/batch_1/cancel"
        );
        assert_eq!(
            c.url(&["files", "a/b#c", "content"]).as_str(),
            "http://127.0.0.1:9/v1/files/a%2Fb%23c/content"
        );
    }

    #[test]
    fn bad_configuration_is_rejected_without_echoing_the_key() {
        let mut config = OpenAiConfig::new(SecretString::from("sk-SECRET\n0123456789"));
        config.base_url = "http://localhost/v1".into();
        let err = OpenAiClient::new(config).expect_err("newline in key");
        assert!(!format!("{err} {err:?}").contains("SECRET"));
        let mut config = OpenAiConfig::new(SecretString::from(KEY));
        config.base_url = "ftp://example.com".into();
        assert!(matches!(
            OpenAiClient::new(config),
            Err(OpenAiError::Config(_))
        ));
    }

    #[tokio::test]
    async fn connection_refused_is_transient_after_retries() {
        // A port that was just free: nothing listens there now.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port");
        let mut config = OpenAiConfig::new(SecretString::from(KEY));
        config.base_url = format!("http://{addr}/v1");
        config.retry = RetryPolicy {
            max_attempts: 2,
            min_delay: Duration::from_millis(10),
            ..RetryPolicy::default()
        };
        let c = OpenAiClient::new(config).expect("valid");
        let err = c.get_batch("batch_1").await.expect_err("nothing listens");
        assert!(err.is_transient(), "{err}");
        assert!(matches!(err, OpenAiError::Transport { .. }), "{err:?}");
        assert!(!format!("{err} {err:?}").contains("SECRET"));
    }
}
