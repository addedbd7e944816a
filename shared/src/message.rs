//! The work-queue message, schema v1 (docs/spec/fleet-design.md): small versioned JSON naming one batch.
//! Required: `"v": 1` and `"batch_id"`; everything else is optional so an operator can
//! enqueue a batch by hand with just the two. Unknown fields are ignored, for forward
//! compatibility within a version.

use serde::{Deserialize, Serialize};

pub const SCHEMA_VERSION: u64 = 1;

/// Longest body the worker will try to parse; SQS allows 256 KiB, our bodies are ~200 bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchMessage {
    pub v: u64,
    pub batch_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openai_batch_id: Option<String>,
    /// Status checks made so far (re-check messages count up; a replay resets it).
    #[serde(default)]
    pub checks: u32,
    /// RFC 3339; when the producer first enqueued this batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_enqueued_at: Option<String>,
    /// How often an operator replayed it from the dead-letter queue.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub replays: u32,
    /// Remaining hops of a wait longer than SQS's 15-minute maximum delay; the worker re-sends
    /// without checking while this is in the future (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    /// The token of the batch's chain of messages (docs/spec/fleet-design.md: one chain per batch). The
    /// fleet state holds the current one; a message with another token is a stale copy. A
    /// message without one (written by hand) starts a new chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    /// Errors of the deployment met in a row by this batch's handlings (a rejected key, a
    /// missing table): the back-off of the next try grows with it. A fresh copy of the message
    /// carries it, so the receive count never climbs towards the redrive policy meanwhile.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deferrals: u32,
}

/// A fresh chain token: random, short, safe in a message body and a DynamoDB string.
pub fn new_chain_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Why a body is poison: it goes to the dead-letter queue at once, never into a retry loop.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoisonReason {
    #[error("body is {0} bytes, more than {MAX_BODY_BYTES}")]
    TooLarge(usize),
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("body is not a JSON object")]
    NotAnObject,
    #[error("body has no \"v\"")]
    MissingVersion,
    #[error("unknown schema version {0}")]
    UnknownVersion(String),
    #[error("body is missing or has a bad field: {0}")]
    BadField(String),
}

impl PoisonReason {
    /// A bounded name for metrics and the `reason` message attribute.
    pub fn code(&self) -> &'static str {
        match self {
            PoisonReason::TooLarge(_) => "body_too_large",
            PoisonReason::NotJson(_) => "not_json",
            PoisonReason::NotAnObject => "not_an_object",
            PoisonReason::MissingVersion => "missing_version",
            PoisonReason::UnknownVersion(_) => "unknown_version",
            PoisonReason::BadField(_) => "bad_field",
        }
    }
}

impl BatchMessage {
    pub fn new(batch_id: impl Into<String>) -> Self {
        BatchMessage {
            v: SCHEMA_VERSION,
            batch_id: batch_id.into(),
            openai_batch_id: None,
            checks: 0,
            first_enqueued_at: None,
            replays: 0,
            not_before: None,
            chain: None,
            deferrals: 0,
        }
    }

    pub fn parse(body: &str) -> Result<Self, PoisonReason> {
        if body.len() > MAX_BODY_BYTES {
            return Err(PoisonReason::TooLarge(body.len()));
        }
        let value: serde_json::Value =
            serde_json::from_str(body).map_err(|e| PoisonReason::NotJson(e.to_string()))?;
        let obj = value.as_object().ok_or(PoisonReason::NotAnObject)?;
        match obj.get("v") {
            None => return Err(PoisonReason::MissingVersion),
            Some(v) if v.as_u64() == Some(SCHEMA_VERSION) => {}
            Some(v) => return Err(PoisonReason::UnknownVersion(v.to_string())),
        }
        let msg: BatchMessage =
            serde_json::from_value(value).map_err(|e| PoisonReason::BadField(e.to_string()))?;
        if msg.batch_id.trim().is_empty() || msg.batch_id.len() > 256 {
            return Err(PoisonReason::BadField(
                "batch_id must be a non-empty string of at most 256 characters".into(),
            ));
        }
        if let Some(chain) = &msg.chain
            && (chain.is_empty()
                || chain.len() > 64
                || !chain
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return Err(PoisonReason::BadField(
                "chain must be 1 to 64 letters, digits, '-' or '_'".into(),
            ));
        }
        Ok(msg)
    }

    pub fn to_body(&self) -> String {
        serde_json::to_string(self).expect("a message always serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_hand_written_body() {
        let m = BatchMessage::parse(r#"{"v":1,"batch_id":"b-1"}"#).unwrap();
        assert_eq!(m, BatchMessage::new("b-1"));
        assert_eq!(m.to_body(), r#"{"v":1,"batch_id":"b-1","checks":0}"#);
    }

    #[test]
    fn full_body_round_trips_and_ignores_unknown_fields() {
        let body = r#"{"v":1,"batch_id":"b","openai_batch_id":"batch_x","checks":3,"first_enqueued_at":"2025-01-01T00:00:00Z","replays":1,"future":true}"#;
        let m = BatchMessage::parse(body).unwrap();
        assert_eq!(m.checks, 3);
        assert_eq!(m.replays, 1);
        assert_eq!(BatchMessage::parse(&m.to_body()).unwrap(), m);
        assert_eq!(m.chain, None);
        let chained = BatchMessage {
            chain: Some(new_chain_token()),
            ..m
        };
        let body = chained.to_body();
        assert!(body.contains("\"chain\":\""), "{body}");
        assert_eq!(BatchMessage::parse(&body).unwrap(), chained);
    }

    #[test]
    fn poison_bodies() {
        let cases: &[(&str, &str)] = &[
            ("", "not_json"),
            ("hello", "not_json"),
            ("[1,2]", "not_an_object"),
            ("{}", "missing_version"),
            (r#"{"batch_id":"b"}"#, "missing_version"),
            (r#"{"v":2,"batch_id":"b"}"#, "unknown_version"),
            (r#"{"v":"1","batch_id":"b"}"#, "unknown_version"),
            (r#"{"v":1}"#, "bad_field"),
            (r#"{"v":1,"batch_id":""}"#, "bad_field"),
            (r#"{"v":1,"batch_id":7}"#, "bad_field"),
            (r#"{"v":1,"batch_id":"b","checks":-1}"#, "bad_field"),
            (r#"{"v":1,"batch_id":"b","chain":""}"#, "bad_field"),
            (r#"{"v":1,"batch_id":"b","chain":"a b"}"#, "bad_field"),
            (r#"{"v":1,"batch_id":"b","chain":7}"#, "bad_field"),
        ];
        for (body, code) in cases {
            assert_eq!(
                BatchMessage::parse(body).unwrap_err().code(),
                *code,
                "{body}"
            );
        }
        let garbage = "x".repeat(1024 * 1024);
        assert_eq!(
            BatchMessage::parse(&garbage).unwrap_err().code(),
            "body_too_large"
        );
    }
}
