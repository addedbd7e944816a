//! What can go wrong calling Pinecone, and what the caller should do about it
//! ([`PineconeError::error_class`]).

use std::fmt;

use secrecy::SecretString;
use serde_json::Value;

use crate::error_class::{DeploymentCause, ErrorClass};
use crate::http::{
    AnswerMeta, CallError, CallName, EXCERPT_CHARS, Failure, TransportKind, body_excerpt,
    status_class, status_is_transient,
};
use crate::secret::scrub;

/// The data-plane calls the fleet makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Fetch,
    Update,
}

impl CallName for Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Fetch => "fetch",
            Op::Update => "update",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything that can go wrong calling Pinecone, after the client's own retries. Never holds
/// the API key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PineconeError {
    #[error("Pinecone {op}: HTTP {}: {message}{}", answer.status, answer.notes())]
    Api {
        op: Op,
        message: String,
        answer: AnswerMeta,
    },
    #[error("Pinecone {op}: {kind} error: {message}")]
    Transport {
        op: Op,
        kind: TransportKind,
        message: String,
    },
    /// A 2xx answer whose body is not the expected JSON (the message names the request id).
    #[error("Pinecone {op}: undecodable response: {message}")]
    Decode { op: Op, message: String },
    #[error("Pinecone client configuration: {0}")]
    Config(String),
}

impl PineconeError {
    /// What the caller should do: 401/403 is a rejected key, an error of the deployment;
    /// throttling, server errors, timeouts and broken connections are transient; bad requests
    /// (a null value, metadata over 40 KB, a URL too long), undecodable answers and
    /// configuration are permanent.
    pub fn error_class(&self) -> ErrorClass {
        match self {
            Self::Api { answer, .. } => match answer.status {
                401 | 403 => ErrorClass::Deployment(DeploymentCause::PineconeKey),
                status if status_is_transient(status) => ErrorClass::Transient,
                _ => ErrorClass::Permanent,
            },
            Self::Transport { .. } => ErrorClass::Transient,
            Self::Decode { .. } | Self::Config(_) => ErrorClass::Permanent,
        }
    }

    /// A short, bounded label for metrics (`fleet_pinecone_requests_total{outcome}`).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Api { answer, .. } => status_class(answer.status),
            Self::Transport { kind, .. } => kind.as_str(),
            Self::Decode { .. } => "decode",
            Self::Config(_) => "config",
        }
    }

    /// A bounded name for the dead-letter `reason` attribute and metrics of the worker.
    pub fn reason(&self) -> &'static str {
        match self.error_class() {
            ErrorClass::Deployment(_) => "pinecone_unauthorized",
            _ if self.status() == Some(429) => "pinecone_rate_limited",
            _ => "pinecone_error",
        }
    }
}

impl CallError for PineconeError {
    type Call = Op;

    fn from_failure(op: Op, failure: Failure, secret: &SecretString) -> Self {
        match failure {
            Failure::Transport { kind, message } => Self::Transport { op, kind, message },
            Failure::Status { meta, body } => Self::Api {
                op,
                message: scrub(&error_message(&body), secret),
                answer: meta,
            },
            Failure::Decode { message } => Self::Decode { op, message },
        }
    }

    fn error_class(&self) -> ErrorClass {
        PineconeError::error_class(self)
    }

    /// Every transient error is tried again at once (within the policy).
    fn retry_reason(&self) -> Option<&'static str> {
        self.is_transient().then(|| self.label())
    }

    fn label(&self) -> &'static str {
        PineconeError::label(self)
    }

    fn answer(&self) -> Option<&AnswerMeta> {
        match self {
            Self::Api { answer, .. } => Some(answer),
            _ => None,
        }
    }
}

/// The data plane answers `{"code": N, "message": "…", "details": []}`; the control plane
/// `{"error": {"code": "…", "message": "…"}}`; a gateway may send anything.
pub(crate) fn error_message(body: &[u8]) -> String {
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return body_excerpt(body, EXCERPT_CHARS);
    };
    let inner = value
        .get("error")
        .filter(|e| e.is_object())
        .unwrap_or(&value);
    let message = inner.get("message").and_then(Value::as_str);
    let code = inner.get("code").filter(|c| !c.is_null()).map(|c| match c {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    match (message, code) {
        (Some(m), Some(c)) => format!("{m} [code {c}]"),
        (Some(m), None) => m.to_owned(),
        _ => body_excerpt(body, EXCERPT_CHARS),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const KEY: &str = "pcsk_SECRET_0123456789abcdef";

    fn api(op: Op, status: u16) -> PineconeError {
        PineconeError::Api {
            op,
            message: String::new(),
            answer: AnswerMeta::status(status),
        }
    }

    #[test]
    fn every_status_has_its_class() {
        use ErrorClass::{Deployment, Permanent, Transient};
        let key = Deployment(DeploymentCause::PineconeKey);
        let rows: &[(Op, u16, ErrorClass)] = &[
            (Op::Fetch, 401, key),
            (Op::Update, 401, key),
            (Op::Fetch, 403, key),
            (Op::Update, 403, key),
            (Op::Update, 429, Transient),
            (Op::Fetch, 429, Transient),
            (Op::Fetch, 408, Transient),
            (Op::Fetch, 500, Transient),
            (Op::Update, 503, Transient),
            (Op::Update, 400, Permanent),
            (Op::Fetch, 404, Permanent),
            (Op::Fetch, 414, Permanent),
        ];
        for (op, status, class) in rows {
            let e = api(*op, *status);
            assert_eq!(e.error_class(), *class, "{op} {status}");
            assert_eq!(
                CallError::retry_reason(&e).is_some(),
                *class == Transient,
                "{op} {status}"
            );
        }
        assert_eq!(api(Op::Update, 429).label(), "rate_limited");
        assert_eq!(api(Op::Update, 429).reason(), "pinecone_rate_limited");
        assert_eq!(api(Op::Fetch, 403).reason(), "pinecone_unauthorized");
        assert_eq!(api(Op::Fetch, 414).reason(), "pinecone_error");
        assert_eq!(api(Op::Fetch, 414).label(), "uri_too_long");
        let transport = PineconeError::Transport {
            op: Op::Fetch,
            kind: TransportKind::Connect,
            message: String::new(),
        };
        assert_eq!(transport.error_class(), Transient);
        let decode = PineconeError::Decode {
            op: Op::Fetch,
            message: String::new(),
        };
        assert_eq!(decode.error_class(), Permanent);
        assert!(decode.is_permanent());
    }

    #[test]
    fn error_bodies_of_both_planes() {
        assert_eq!(
            error_message(br#"{"code":8,"message":"TOO_MANY_REQUESTS: slow down","details":[]}"#),
            "TOO_MANY_REQUESTS: slow down [code 8]"
        );
        assert_eq!(
            error_message(br#"{"error":{"code":"UNAUTHENTICATED","message":"Invalid API Key"}}"#),
            "Invalid API Key [code UNAUTHENTICATED]"
        );
        assert_eq!(error_message(b"<html>oops</html>"), "<html>oops</html>");
    }

    #[test]
    fn error_text_is_scrubbed_and_carries_the_request_id() {
        let secret = SecretString::from(KEY);
        let body = format!(r#"{{"code":16,"message":"Invalid API Key {KEY}","details":[]}}"#);
        let err = PineconeError::from_failure(
            Op::Fetch,
            Failure::Status {
                meta: AnswerMeta {
                    status: 401,
                    retry_after: Some(Duration::from_secs(2)),
                    request_id: Some("pc-req-1".into()),
                },
                body: body.into_bytes(),
            },
            &secret,
        );
        let text = format!("{err} {err:?}");
        assert!(!text.contains("SECRET"), "{text}");
        assert!(err.to_string().contains("[request pc-req-1]"), "{err}");
        assert_eq!(err.request_id(), Some("pc-req-1"));
        assert_eq!(err.retry_after(), Some(Duration::from_secs(2)));
    }
}
