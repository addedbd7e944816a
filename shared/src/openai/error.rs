//! What can go wrong calling OpenAI, and what the caller should do about it
//! ([`OpenAiError::error_class`], docs/spec/openai-batch.md "Errors").

use std::fmt;
use std::io;

use secrecy::SecretString;
use serde_json::Value;

use crate::error_class::{DeploymentCause, ErrorClass};
use crate::http::{
    AnswerMeta, CallError, CallName, EXCERPT_CHARS, Failure, TransportKind, body_excerpt,
    status_class, status_is_transient,
};
use crate::secret::scrub;

/// The calls the fleet makes. A 403 means something else on each: on the batch object the key
/// lacks access to the project's batches (an error of the deployment), on a file download the
/// file is not (yet) readable (retried later with the batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    GetBatch,
    CancelBatch,
    DownloadFile,
    /// `GET /files/{id}`: the file object (its size, before a download).
    GetFile,
}

impl Endpoint {
    /// Whether the call reads or changes the batch object (not a file).
    pub fn is_batch_object(self) -> bool {
        matches!(self, Endpoint::GetBatch | Endpoint::CancelBatch)
    }
}

impl CallName for Endpoint {
    fn as_str(self) -> &'static str {
        match self {
            Endpoint::GetBatch => "get_batch",
            Endpoint::CancelBatch => "cancel_batch",
            Endpoint::DownloadFile => "download_file",
            Endpoint::GetFile => "get_file",
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `error.code` of a 429 that is billing, not a rate limit.
pub const INSUFFICIENT_QUOTA: &str = "insufficient_quota";

/// `{"error": {"message", "type", "code"}}` of a failed call, or the start of a non-JSON body
/// (a load balancer's HTML page) as `message`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiErrorDetail {
    pub message: String,
    pub error_type: Option<String>,
    pub code: Option<String>,
}

impl ApiErrorDetail {
    /// Parses an error body; every text is scrubbed of `secret`.
    pub fn parse(body: &[u8], secret: &SecretString) -> Self {
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
                message: scrub(&body_excerpt(body, EXCERPT_CHARS), secret),
                ..Self::default()
            },
        }
    }

    /// The 429 of exhausted billing (`insufficient_quota`, as `code` or, from some gateways,
    /// as `type`).
    pub fn is_insufficient_quota(&self) -> bool {
        self.code.as_deref() == Some(INSUFFICIENT_QUOTA)
            || self.error_type.as_deref() == Some(INSUFFICIENT_QUOTA)
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
    #[error("OpenAI {endpoint}: HTTP {}: {detail}{}", answer.status, answer.notes())]
    Api {
        endpoint: Endpoint,
        /// Boxed: it is the bulk of the error, which travels in every `Result` of an apply.
        detail: Box<ApiErrorDetail>,
        /// The status, the server's `retry-after-ms` or `Retry-After` (a 429 or 503) for the
        /// caller to re-schedule by, and `x-request-id` for OpenAI's support.
        answer: AnswerMeta,
    },
    /// No complete answer: connect failure, timeout, connection reset.
    #[error("OpenAI {endpoint}: {kind} error: {message}")]
    Transport {
        endpoint: Endpoint,
        kind: TransportKind,
        message: String,
    },
    /// A 2xx answer whose body is not the expected JSON (the message names the request id).
    #[error("OpenAI {endpoint}: undecodable response: {message}")]
    Decode { endpoint: Endpoint, message: String },
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
    /// What the caller should do (docs/spec/openai-batch.md "Errors", docs/spec/fleet-design.md):
    ///
    /// - 401, and 403 on the batch object: the key is rejected: an error of the deployment.
    /// - 429 `insufficient_quota`: billing, an error of the deployment (never a rate limit).
    /// - other 429, 408, 5xx, broken connections and downloads, local disk trouble, and a 403
    ///   on a file download (the file may become readable; the apply is retried): transient.
    /// - 404 (unknown batch or file), other 4xx, an undecodable answer, configuration:
    ///   permanent.
    pub fn error_class(&self) -> ErrorClass {
        match self {
            Self::Api {
                endpoint,
                detail,
                answer,
            } => match answer.status {
                401 => ErrorClass::Deployment(DeploymentCause::OpenAiKey),
                403 if endpoint.is_batch_object() => {
                    ErrorClass::Deployment(DeploymentCause::OpenAiKey)
                }
                403 => ErrorClass::Transient,
                429 if detail.is_insufficient_quota() => {
                    ErrorClass::Deployment(DeploymentCause::OpenAiQuota)
                }
                status if status_is_transient(status) => ErrorClass::Transient,
                _ => ErrorClass::Permanent,
            },
            Self::Decode { .. } | Self::Config(_) => ErrorClass::Permanent,
            Self::Transport { .. } | Self::TruncatedDownload { .. } | Self::Io { .. } => {
                ErrorClass::Transient
            }
        }
    }

    /// 404: the batch or file does not exist (for a batch id, a permanent error of that batch).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    fn is_insufficient_quota(&self) -> bool {
        matches!(self, Self::Api { detail, answer, .. }
            if answer.status == 429 && detail.is_insufficient_quota())
    }

    /// A short, bounded label for metrics (`fleet_openai_requests_total{outcome}`).
    pub fn label(&self) -> &'static str {
        match self {
            _ if self.is_insufficient_quota() => INSUFFICIENT_QUOTA,
            Self::Api { answer, .. } => status_class(answer.status),
            Self::Transport { kind, .. } => kind.as_str(),
            Self::Decode { .. } => "decode",
            Self::TruncatedDownload { .. } => "truncated",
            Self::Io { .. } => "io",
            Self::Config(_) => "config",
        }
    }

    /// A bounded name for the dead-letter `reason` attribute and metrics of the worker.
    pub fn reason(&self) -> &'static str {
        match (self, self.error_class()) {
            (Self::Api { endpoint, .. }, _) if self.is_not_found() => {
                if endpoint.is_batch_object() {
                    "openai_batch_not_found"
                } else {
                    "openai_file_not_found"
                }
            }
            (_, ErrorClass::Deployment(DeploymentCause::OpenAiQuota)) => {
                "openai_insufficient_quota"
            }
            (_, ErrorClass::Deployment(_)) => "openai_unauthorized",
            (Self::TruncatedDownload { .. }, _) => "openai_truncated_download",
            _ => match self.status() {
                Some(429) => "openai_rate_limited",
                Some(500..) => "openai_server_error",
                _ => "openai_error",
            },
        }
    }
}

impl CallError for OpenAiError {
    type Call = Endpoint;

    fn from_failure(endpoint: Endpoint, failure: Failure, secret: &SecretString) -> Self {
        match failure {
            // Request URLs hold only ids, never the key (it travels in a header).
            Failure::Transport { kind, message } => Self::Transport {
                endpoint,
                kind,
                message,
            },
            Failure::Status { meta, body } => Self::Api {
                endpoint,
                detail: Box::new(ApiErrorDetail::parse(&body, secret)),
                answer: meta,
            },
            Failure::Decode { message } => Self::Decode { endpoint, message },
        }
    }

    fn error_class(&self) -> ErrorClass {
        OpenAiError::error_class(self)
    }

    /// Only transient errors are tried again at once, and not all: a 403 on a file will not
    /// pass a second later, and local disk trouble is not fixed by downloading again.
    fn retry_reason(&self) -> Option<&'static str> {
        match self {
            Self::Api { answer, .. } if self.is_transient() && answer.status != 403 => {
                Some(self.label())
            }
            Self::Transport { kind, .. } => Some(kind.as_str()),
            Self::TruncatedDownload { .. } => Some("truncated"),
            _ => None,
        }
    }

    fn label(&self) -> &'static str {
        OpenAiError::label(self)
    }

    fn answer(&self) -> Option<&AnswerMeta> {
        match self {
            Self::Api { answer, .. } => Some(answer),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const KEY: &str = "sk-proj-SECRET0123456789abcdef";

    fn api(endpoint: Endpoint, status: u16, code: Option<&str>) -> OpenAiError {
        OpenAiError::Api {
            endpoint,
            detail: Box::new(ApiErrorDetail {
                message: "m".into(),
                error_type: None,
                code: code.map(str::to_owned),
            }),
            answer: AnswerMeta::status(status),
        }
    }

    /// Every row of the classification, with whether the client retries it at once.
    #[test]
    fn every_status_has_its_class() {
        use DeploymentCause::{OpenAiKey, OpenAiQuota};
        use Endpoint::{CancelBatch, DownloadFile, GetBatch};
        use ErrorClass::{Deployment, Permanent, Transient};
        let rows: &[(Endpoint, u16, Option<&str>, ErrorClass, bool)] = &[
            (GetBatch, 401, None, Deployment(OpenAiKey), false),
            (
                CancelBatch,
                401,
                Some("invalid_api_key"),
                Deployment(OpenAiKey),
                false,
            ),
            (DownloadFile, 401, None, Deployment(OpenAiKey), false),
            (GetBatch, 403, None, Deployment(OpenAiKey), false),
            (CancelBatch, 403, None, Deployment(OpenAiKey), false),
            (DownloadFile, 403, None, Transient, false),
            (
                GetBatch,
                429,
                Some("insufficient_quota"),
                Deployment(OpenAiQuota),
                false,
            ),
            (
                DownloadFile,
                429,
                Some("insufficient_quota"),
                Deployment(OpenAiQuota),
                false,
            ),
            (GetBatch, 429, Some("rate_limit_exceeded"), Transient, true),
            (GetBatch, 429, None, Transient, true),
            (GetBatch, 408, None, Transient, true),
            (GetBatch, 500, None, Transient, true),
            (DownloadFile, 502, None, Transient, true),
            (GetBatch, 503, None, Transient, true),
            (GetBatch, 404, None, Permanent, false),
            (DownloadFile, 404, None, Permanent, false),
            (GetBatch, 400, None, Permanent, false),
            (CancelBatch, 409, None, Permanent, false),
            (GetBatch, 422, None, Permanent, false),
        ];
        for (endpoint, status, code, class, hot) in rows {
            let e = api(*endpoint, *status, *code);
            assert_eq!(e.error_class(), *class, "{endpoint} {status} {code:?}");
            assert_eq!(
                CallError::retry_reason(&e).is_some(),
                *hot,
                "{endpoint} {status} {code:?}"
            );
            assert_eq!(e.is_transient(), *class == Transient);
            assert_eq!(e.is_permanent(), *class == Permanent);
        }
    }

    #[test]
    fn other_variants_have_their_class() {
        let transport = OpenAiError::Transport {
            endpoint: Endpoint::GetBatch,
            kind: TransportKind::Timeout,
            message: "timed out".into(),
        };
        assert_eq!(transport.error_class(), ErrorClass::Transient);
        assert_eq!(CallError::retry_reason(&transport), Some("timeout"));
        assert_eq!(transport.label(), "timeout");
        let truncated = OpenAiError::TruncatedDownload {
            file_id: "file-1".into(),
            attempts: 5,
            received: 10,
            expected: Some(20),
            message: "closed".into(),
        };
        assert_eq!(truncated.error_class(), ErrorClass::Transient);
        assert_eq!(CallError::retry_reason(&truncated), Some("truncated"));
        assert!(truncated.to_string().contains("received 10 of 20 bytes"));
        assert_eq!(truncated.reason(), "openai_truncated_download");
        let io = OpenAiError::Io {
            file_id: "file-1".into(),
            source: io::Error::other("disk full"),
        };
        assert_eq!(io.error_class(), ErrorClass::Transient);
        assert_eq!(CallError::retry_reason(&io), None);
        let decode = OpenAiError::Decode {
            endpoint: Endpoint::GetBatch,
            message: "expected value".into(),
        };
        assert_eq!(decode.error_class(), ErrorClass::Permanent);
        assert_eq!(
            OpenAiError::Config("x".into()).error_class(),
            ErrorClass::Permanent
        );
    }

    #[test]
    fn labels_and_reasons_come_from_the_variants() {
        let quota = api(Endpoint::GetBatch, 429, Some("insufficient_quota"));
        assert_eq!(quota.label(), "insufficient_quota");
        assert_eq!(quota.reason(), "openai_insufficient_quota");
        let limited = api(Endpoint::GetBatch, 429, None);
        assert_eq!(limited.label(), "rate_limited");
        assert_eq!(limited.reason(), "openai_rate_limited");
        assert_eq!(api(Endpoint::GetBatch, 401, None).label(), "unauthorized");
        assert_eq!(
            api(Endpoint::GetBatch, 401, None).reason(),
            "openai_unauthorized"
        );
        assert_eq!(
            api(Endpoint::CancelBatch, 403, None).reason(),
            "openai_unauthorized"
        );
        assert_eq!(
            api(Endpoint::GetBatch, 404, None).reason(),
            "openai_batch_not_found"
        );
        assert_eq!(
            api(Endpoint::DownloadFile, 404, None).reason(),
            "openai_file_not_found"
        );
        assert_eq!(
            api(Endpoint::GetBatch, 503, None).reason(),
            "openai_server_error"
        );
        assert_eq!(api(Endpoint::GetBatch, 400, None).reason(), "openai_error");
        assert_eq!(
            api(Endpoint::DownloadFile, 403, None).reason(),
            "openai_error"
        );
    }

    #[test]
    fn messages_carry_the_request_id_and_retry_after() {
        let limited = OpenAiError::Api {
            endpoint: Endpoint::GetBatch,
            detail: Box::default(),
            answer: AnswerMeta {
                status: 429,
                retry_after: Some(Duration::from_secs(120)),
                request_id: Some("req_abc".into()),
            },
        };
        assert_eq!(limited.retry_after(), Some(Duration::from_secs(120)));
        assert_eq!(limited.request_id(), Some("req_abc"));
        let text = limited.to_string();
        assert!(text.contains("retry after 120.000s"), "{text}");
        assert!(text.contains("[request req_abc]"), "{text}");
    }

    #[test]
    fn errors_never_show_the_key() {
        let secret = SecretString::from(KEY);
        let echoed = format!(
            r#"{{"error":{{"message":"Incorrect API key provided: {KEY}.","type":"invalid_request_error","code":"invalid_api_key"}}}}"#
        );
        let err = OpenAiError::from_failure(
            Endpoint::GetBatch,
            Failure::Status {
                meta: AnswerMeta::status(401),
                body: echoed.into_bytes(),
            },
            &secret,
        );
        let text = format!("{err} {err:?}");
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("invalid_api_key"));
        assert_eq!(err.label(), "unauthorized");

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
        let d = ApiErrorDetail::parse(
            br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#,
            &secret,
        );
        assert!(d.is_insufficient_quota());
        // A long HTML page is quoted, not copied.
        let page = format!("<html>{}</html>", "x ".repeat(5_000));
        let d = ApiErrorDetail::parse(page.as_bytes(), &secret);
        assert!(
            d.message.chars().count() <= EXCERPT_CHARS + 1,
            "{}",
            d.message
        );
    }
}
