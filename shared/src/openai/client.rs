//! HTTP client of the OpenAI Batch API calls the fleet makes (docs/spec/openai-batch.md): read a batch,
//! cancel it, download a file.
//!
//! Retries happen here ([`Http::call`]), bounded by [`RetryPolicy`], so that a brief throttle
//! or a load balancer hiccup does not cost a whole queue round-trip; what is still failing
//! afterwards is returned as an [`OpenAiError`] whose [`OpenAiError::error_class`] tells the
//! worker whether to re-schedule the message, wait for the deployment to be fixed, or
//! dead-letter it.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Url};
use secrecy::SecretString;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};

use super::batch::BatchObject;
pub use super::error::{ApiErrorDetail, Endpoint, OpenAiError};
use crate::http::{CallError, Http, JSON_BODY_CAP, Service, error_chain};
use crate::retry::RetryPolicy;
use crate::secret::sensitive_header;

/// `OPENAI_BASE_URL`'s default, as the official SDKs spell it (it includes `/v1`).
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";

/// Output files reach hundreds of MB: write in large pieces.
const DOWNLOAD_BUFFER: usize = 256 * 1024;
/// Output lines can be long (a whole chat completion); a bigger buffer saves syscalls.
const READ_BUFFER: usize = 64 * 1024;
/// A download is progress of the handling every this many bytes written
/// ([`crate::progress::tick`]): a long download is not a hang.
const PROGRESS_EVERY: u64 = 1024 * 1024;

/// How the client appears in logs and metrics.
const SERVICE: Service = Service {
    name: "OpenAI",
    requests_metric: "fleet_openai_requests_total",
    retries_metric: "fleet_openai_retries_total",
    call_label: "endpoint",
};

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

/// The OpenAI Batch API client. Cheap to clone: clones share the connection pool and the
/// pacing of calls while the key is rejected.
#[derive(Clone)]
pub struct OpenAiClient {
    http: Http,
    base: Url,
    organization: Option<String>,
    project: Option<String>,
    request_timeout: Duration,
    download_dir: Option<PathBuf>,
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
            .field("http", &self.http)
            .finish_non_exhaustive()
    }
}

impl OpenAiClient {
    pub fn new(config: OpenAiConfig) -> Result<Self, OpenAiError> {
        let mut base = crate::http::service_url(&config.base_url)
            .map_err(|e| OpenAiError::Config(format!("base URL: {e}")))?;
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

        let client = crate::http::client_builder(headers)
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.download_idle_timeout)
            .build()
            .map_err(|e| OpenAiError::Config(error_chain(&e)))?;
        Ok(Self {
            http: Http::new(SERVICE, client, config.api_key, config.retry),
            base,
            organization: config.organization,
            project: config.project,
            request_timeout: config.request_timeout,
            download_dir: config.download_dir,
        })
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// Whether calls are paced because OpenAI rejected the deployment (key or quota) and no
    /// call has succeeded since.
    pub fn is_paced(&self) -> bool {
        self.http.pacer().is_pacing()
    }

    /// `GET /batches/{id}`. A 404 is permanent for that batch.
    pub async fn get_batch(&self, batch_id: &str) -> Result<BatchObject, OpenAiError> {
        let url = self.url(&["batches", batch_id]);
        let batch = self.json_call(Endpoint::GetBatch, Method::GET, url).await?;
        same_batch(Endpoint::GetBatch, batch_id, batch)
    }

    /// `POST /batches/{id}/cancel`. The batch moves to `cancelling`; a batch already terminal
    /// answers an error status (a permanent error: read the batch again to see how it ended).
    pub async fn cancel_batch(&self, batch_id: &str) -> Result<BatchObject, OpenAiError> {
        let url = self.url(&["batches", batch_id, "cancel"]);
        let batch = self
            .json_call(Endpoint::CancelBatch, Method::POST, url)
            .await?;
        same_batch(Endpoint::CancelBatch, batch_id, batch)
    }

    /// `GET /files/{id}`: the file's size in bytes (`bytes`), which its download announces as
    /// `Content-Length`; `None` when the answer does not say.
    pub async fn file_size(&self, file_id: &str) -> Result<Option<u64>, OpenAiError> {
        #[derive(serde::Deserialize)]
        struct FileObject {
            #[serde(default)]
            bytes: Option<u64>,
        }
        let url = self.url(&["files", file_id]);
        let file: FileObject = self.json_call(Endpoint::GetFile, Method::GET, url).await?;
        Ok(file.bytes)
    }

    /// `GET /files/{id}/content`, streamed to a temporary file in the configured directory.
    pub async fn download_file(&self, file_id: &str) -> Result<DownloadedFile, OpenAiError> {
        let dir = self.download_dir.clone().unwrap_or_else(std::env::temp_dir);
        self.download_file_in(file_id, &dir).await
    }

    /// [`Self::download_file`] into `dir`.
    ///
    /// The body goes to disk as it arrives (never whole in memory), each MiB counting as
    /// progress of the handling. A download that breaks off, or delivers fewer bytes than its
    /// `Content-Length`, is thrown away and started again, up to the retry policy's attempts;
    /// then [`OpenAiError::TruncatedDownload`] (transient).
    pub async fn download_file_in(
        &self,
        file_id: &str,
        dir: &Path,
    ) -> Result<DownloadedFile, OpenAiError> {
        let url = self.url(&["files", file_id, "content"]);
        let tries = std::sync::atomic::AtomicU32::new(0);
        self.http
            .call(Endpoint::DownloadFile, |n| {
                tries.store(n, std::sync::atomic::Ordering::Relaxed);
                self.download_attempt(file_id, url.clone(), dir)
            })
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
        endpoint: Endpoint,
        method: Method,
        url: Url,
    ) -> Result<T, OpenAiError> {
        self.http
            .call(endpoint, |_| {
                let request = self
                    .http
                    .client()
                    .request(method.clone(), url.clone())
                    .timeout(self.request_timeout);
                self.http.send_json_as(endpoint, request, JSON_BODY_CAP)
            })
            .await
    }

    async fn download_attempt(
        &self,
        file_id: &str,
        url: Url,
        dir: &Path,
    ) -> Result<DownloadedFile, OpenAiError> {
        const ENDPOINT: Endpoint = Endpoint::DownloadFile;
        let response = self
            .http
            .send(self.http.client().get(url))
            .await
            .map_err(|f| OpenAiError::from_failure(ENDPOINT, f, self.http.secret()))?;
        let expected = response.content_length();

        let io_error = |source: io::Error| OpenAiError::Io {
            file_id: file_id.to_owned(),
            source,
        };
        let dir_owned = dir.to_owned();
        let (std_file, path) = tokio::task::spawn_blocking(move || {
            tempfile::Builder::new()
                .prefix("openai-file-")
                .tempfile_in(dir_owned)
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
        .map_err(io_error)?
        .into_parts();
        let mut writer =
            BufWriter::with_capacity(DOWNLOAD_BUFFER, tokio::fs::File::from_std(std_file));

        let mut received: u64 = 0;
        let mut broke_off: Option<String> = None;
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    writer.write_all(&bytes).await.map_err(io_error)?;
                    let before = received;
                    received += bytes.len() as u64;
                    if received / PROGRESS_EVERY > before / PROGRESS_EVERY {
                        crate::progress::tick();
                    }
                }
                Err(e) => {
                    broke_off = Some(error_chain(&e));
                    break;
                }
            }
        }
        writer.flush().await.map_err(io_error)?;
        drop(writer);

        let short = expected.is_some_and(|n| n != received);
        if broke_off.is_some() || short {
            // `path` is dropped here: the partial file is deleted.
            return Err(OpenAiError::TruncatedDownload {
                file_id: file_id.to_owned(),
                attempts: 1,
                received,
                expected,
                message: broke_off.unwrap_or_else(|| "body shorter than Content-Length".into()),
            });
        }
        metrics::counter!("fleet_openai_download_bytes_total").increment(received);
        Ok(DownloadedFile {
            file_id: file_id.to_owned(),
            path,
            len: received,
        })
    }
}

/// The batch object must be the one asked for: an answer about another batch (a misrouted or
/// cached response) would otherwise be applied to ours.
fn same_batch(
    endpoint: Endpoint,
    asked: &str,
    batch: BatchObject,
) -> Result<BatchObject, OpenAiError> {
    if batch.id == asked {
        Ok(batch)
    } else {
        Err(OpenAiError::Decode {
            endpoint,
            message: format!(
                "asked for batch {}, the answer is about batch {}",
                crate::http::quote(asked),
                crate::http::quote(&batch.id)
            ),
        })
    }
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
        assert!(
            !c.is_paced(),
            "a transport error says nothing about the key"
        );
        assert!(matches!(err, OpenAiError::Transport { .. }), "{err:?}");
        assert!(!format!("{err} {err:?}").contains("SECRET"));
    }

    #[test]
    fn the_batch_object_must_be_the_one_asked_for() {
        let batch: BatchObject = serde_json::from_str(
            r#"{"id":"batch_other","status":"completed","input_file_id":"f","created_at":1}"#,
        )
        .unwrap();
        let err = same_batch(Endpoint::GetBatch, "batch_mine", batch.clone()).unwrap_err();
        assert!(err.to_string().contains("\"batch_other\""), "{err}");
        assert!(same_batch(Endpoint::GetBatch, "batch_other", batch).is_ok());
    }
}
