//! The event in a verified body: what it is about, decided without any I/O.
//!
//! OpenAI's events are `{"id": "evt_…", "object": "event", "type": "batch.completed",
//! "created_at": 1719168000, "data": {"id": "batch_…"}}`. Only the four batch-end types matter
//! here; every other type (responses, fine-tuning, evals, types added later) is answered 2xx
//! and ignored, so subscribing the endpoint to more events than needed does no harm.

use serde::Deserialize;

/// Longest OpenAI batch id we look up; real ones are ~40 characters.
const MAX_BATCH_ID_CHARS: usize = 256;

/// The end of a batch at OpenAI, named by the event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchEnd {
    Completed,
    Failed,
    Expired,
    Cancelled,
}

impl BatchEnd {
    pub fn from_type(event_type: &str) -> Option<BatchEnd> {
        Some(match event_type {
            "batch.completed" => BatchEnd::Completed,
            "batch.failed" => BatchEnd::Failed,
            "batch.expired" => BatchEnd::Expired,
            "batch.cancelled" => BatchEnd::Cancelled,
            _ => return None,
        })
    }

    pub fn as_type(self) -> &'static str {
        match self {
            BatchEnd::Completed => "batch.completed",
            BatchEnd::Failed => "batch.failed",
            BatchEnd::Expired => "batch.expired",
            BatchEnd::Cancelled => "batch.cancelled",
        }
    }
}

/// What a verified body asks of us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A batch ended: enqueue it if it is ours and pending.
    BatchEnded {
        end: BatchEnd,
        openai_batch_id: String,
    },
    /// Any other type: acknowledged, nothing done.
    Other { event_type: String },
}

impl Event {
    /// The `type` label of the metric: bounded (the four batch types, else `other`).
    pub fn type_label(&self) -> &'static str {
        match self {
            Event::BatchEnded { end, .. } => end.as_type(),
            Event::Other { .. } => "other",
        }
    }
}

/// Why a verified body is still refused (400: OpenAI never sends these, a broken sender does).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("body is not a JSON object with a string \"type\": {0}")]
    NotJson(String),
    #[error("{0} event without a usable data.id")]
    NoBatchId(&'static str),
}

impl EventError {
    pub fn outcome(&self) -> &'static str {
        match self {
            EventError::NotJson(_) => "bad_json",
            EventError::NoBatchId(_) => "bad_event",
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    event_type: String,
    #[serde(default)]
    data: Option<serde_json::Value>,
}

/// Parses a verified body.
pub fn parse(body: &[u8]) -> Result<Event, EventError> {
    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| {
        // serde's message names the position, never the content.
        EventError::NotJson(e.to_string())
    })?;
    let Some(end) = BatchEnd::from_type(&envelope.event_type) else {
        return Ok(Event::Other {
            event_type: envelope.event_type,
        });
    };
    let id = envelope
        .data
        .as_ref()
        .and_then(|d| d.get("id"))
        .and_then(serde_json::Value::as_str)
        .map(str::trim)
        .filter(|id| !id.is_empty() && id.chars().count() <= MAX_BATCH_ID_CHARS)
        .ok_or(EventError::NoBatchId(end.as_type()))?;
    Ok(Event::BatchEnded {
        end,
        openai_batch_id: id.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_end_events_name_the_openai_batch() {
        for (t, end) in [
            ("batch.completed", BatchEnd::Completed),
            ("batch.failed", BatchEnd::Failed),
            ("batch.expired", BatchEnd::Expired),
            ("batch.cancelled", BatchEnd::Cancelled),
        ] {
            let body = format!(
                r#"{{"id":"evt_1","object":"event","type":"{t}","created_at":1719168000,"data":{{"id":"batch_abc"}}}}"#
            );
            let event = parse(body.as_bytes()).unwrap();
            assert_eq!(
                event,
                Event::BatchEnded {
                    end,
                    openai_batch_id: "batch_abc".into()
                }
            );
            assert_eq!(event.type_label(), t);
        }
    }

    #[test]
    fn other_types_are_acknowledged_whatever_their_data() {
        for body in [
            r#"{"type":"response.completed","data":{"id":"resp_1"}}"#,
            r#"{"type":"fine_tuning.job.succeeded"}"#,
            r#"{"type":"batch.created","data":null}"#,
        ] {
            let event = parse(body.as_bytes()).unwrap();
            assert!(matches!(event, Event::Other { .. }), "{body}");
            assert_eq!(event.type_label(), "other");
        }
    }

    #[test]
    fn bodies_that_are_not_events_are_refused() {
        for body in [
            &b"not json"[..],
            b"",
            b"[1,2]",
            br#"{"data":{"id":"batch_1"}}"#,
            br#"{"type":7}"#,
            b"\xff\xfe",
        ] {
            let err = parse(body).unwrap_err();
            assert_eq!(err.outcome(), "bad_json", "{body:?}");
        }
        for body in [
            r#"{"type":"batch.completed"}"#,
            r#"{"type":"batch.completed","data":{}}"#,
            r#"{"type":"batch.completed","data":{"id":""}}"#,
            r#"{"type":"batch.completed","data":{"id":42}}"#,
        ] {
            assert_eq!(
                parse(body.as_bytes()),
                Err(EventError::NoBatchId("batch.completed")),
                "{body}"
            );
        }
        let long = format!(
            r#"{{"type":"batch.failed","data":{{"id":"{}"}}}}"#,
            "b".repeat(300)
        );
        assert_eq!(
            parse(long.as_bytes()),
            Err(EventError::NoBatchId("batch.failed"))
        );
    }
}
