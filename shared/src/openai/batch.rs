//! The OpenAI batch object: the fields the fleet reads (docs/spec/openai-batch.md).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A batch's status. Strings not in the API's table are kept as `Unknown`: not terminal,
/// reported, never a crash.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OpenAiStatus {
    Validating,
    InProgress,
    Finalizing,
    Cancelling,
    Completed,
    Failed,
    Expired,
    Cancelled,
    Unknown(String),
}

impl OpenAiStatus {
    pub fn parse(s: &str) -> Self {
        match s {
            "validating" => Self::Validating,
            "in_progress" => Self::InProgress,
            "finalizing" => Self::Finalizing,
            "cancelling" | "canceling" => Self::Cancelling,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "expired" => Self::Expired,
            "cancelled" | "canceled" => Self::Cancelled,
            other => Self::Unknown(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Validating => "validating",
            Self::InProgress => "in_progress",
            Self::Finalizing => "finalizing",
            Self::Cancelling => "cancelling",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
            Self::Unknown(s) => s,
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Expired | Self::Cancelled
        )
    }

    /// A bounded label for metrics: unknown strings collapse to `unknown`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Validating => "validating",
            Self::InProgress => "in_progress",
            Self::Finalizing => "finalizing",
            Self::Cancelling => "cancelling",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
            Self::Unknown(_) => "unknown",
        }
    }
}

impl fmt::Display for OpenAiStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for OpenAiStatus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for OpenAiStatus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(Self::parse(&s))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    #[serde(default)]
    pub total: u64,
    #[serde(default)]
    pub completed: u64,
    #[serde(default)]
    pub failed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchError {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub line: Option<u64>,
}

/// `errors` of a batch object. The API may send `"errors": null` (decoded as `None` on
/// [`BatchObject::errors`]) and `"errors": {"data": null}` (decoded as no errors).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchErrors {
    #[serde(default, deserialize_with = "null_as_empty")]
    pub data: Vec<BatchError>,
}

/// A list that may be sent as `null`.
fn null_as_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// Unix-second timestamps are `Option<i64>`: null until the batch reaches that stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchObject {
    pub id: String,
    pub status: OpenAiStatus,
    #[serde(default)]
    pub input_file_id: Option<String>,
    #[serde(default)]
    pub output_file_id: Option<String>,
    #[serde(default)]
    pub error_file_id: Option<String>,
    #[serde(default)]
    pub created_at: Option<i64>,
    #[serde(default)]
    pub in_progress_at: Option<i64>,
    #[serde(default)]
    pub finalizing_at: Option<i64>,
    #[serde(default)]
    pub completed_at: Option<i64>,
    #[serde(default)]
    pub failed_at: Option<i64>,
    #[serde(default)]
    pub expired_at: Option<i64>,
    #[serde(default)]
    pub cancelling_at: Option<i64>,
    #[serde(default)]
    pub cancelled_at: Option<i64>,
    #[serde(default)]
    pub expires_at: Option<i64>,
    #[serde(default)]
    pub request_counts: Option<RequestCounts>,
    #[serde(default)]
    pub errors: Option<BatchErrors>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_alternate_spellings() {
        assert_eq!(OpenAiStatus::parse("canceling"), OpenAiStatus::Cancelling);
        let odd = OpenAiStatus::parse("paused");
        assert!(!odd.is_terminal());
        assert_eq!(odd.metric_label(), "unknown");
        assert_eq!(odd.as_str(), "paused");
        for s in ["completed", "failed", "expired", "cancelled"] {
            assert!(OpenAiStatus::parse(s).is_terminal(), "{s}");
        }
    }

    #[test]
    fn decodes_a_minimal_and_a_full_object() {
        let b: BatchObject = serde_json::from_str(
            r#"{"id":"batch_1","status":"in_progress","output_file_id":null}"#,
        )
        .unwrap();
        assert_eq!(b.status, OpenAiStatus::InProgress);
        assert_eq!(b.output_file_id, None);
        let b: BatchObject = serde_json::from_str(
            r#"{"id":"batch_1","object":"batch","status":"failed","errors":{"object":"list","data":[{"code":"invalid_json","message":"bad","line":3}]},"request_counts":{"total":2,"completed":0,"failed":2},"expires_at":1700086400}"#,
        )
        .unwrap();
        assert_eq!(b.errors.unwrap().data[0].line, Some(3));
        assert_eq!(b.expires_at, Some(1_700_086_400));
    }

    #[test]
    fn null_errors_and_null_error_data_decode() {
        let b: BatchObject =
            serde_json::from_str(r#"{"id":"b","status":"failed","errors":null}"#).unwrap();
        assert_eq!(b.errors, None);
        let b: BatchObject = serde_json::from_str(
            r#"{"id":"b","status":"failed","errors":{"object":"list","data":null}}"#,
        )
        .unwrap();
        assert_eq!(b.errors, Some(BatchErrors::default()));
        let b: BatchObject =
            serde_json::from_str(r#"{"id":"b","status":"failed","errors":{}}"#).unwrap();
        assert_eq!(b.errors, Some(BatchErrors::default()));
        // A wrong type is still an error.
        assert!(
            serde_json::from_str::<BatchObject>(
                r#"{"id":"b","status":"failed","errors":{"data":3}}"#
            )
            .is_err()
        );
    }

    #[test]
    fn a_completed_batch_without_output_decodes() {
        let b: BatchObject = serde_json::from_str(
            r#"{"id":"batch_1","object":"batch","endpoint":"/v1/chat/completions","model":"gpt-4.1-mini","errors":null,"input_file_id":"file-in","completion_window":"24h","status":"completed","output_file_id":null,"error_file_id":"file-err","created_at":1700000000,"in_progress_at":1700000060,"expires_at":1700086400,"finalizing_at":1700000120,"completed_at":1700000180,"failed_at":null,"expired_at":null,"cancelling_at":null,"cancelled_at":null,"request_counts":{"total":3,"completed":0,"failed":3},"usage":{"input_tokens":0,"input_tokens_details":{"cached_tokens":0},"output_tokens":0,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":0},"metadata":{"pipeline":"labels"}}"#,
        )
        .unwrap();
        assert_eq!(b.status, OpenAiStatus::Completed);
        assert_eq!(b.output_file_id, None);
        assert_eq!(b.error_file_id.as_deref(), Some("file-err"));
        assert_eq!(b.request_counts.map(|c| c.failed), Some(3));
    }
}
