//! A received SQS message: its system attributes and its body, parsed once.

use std::collections::HashMap;

use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use fleet_shared::message::{BatchMessage, PoisonReason};
use fleet_shared::model::time::rfc3339;

/// A received message, with the system attributes the worker uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub message_id: String,
    pub receipt_handle: String,
    /// The body as sent: a dead-lettered message keeps it unchanged.
    pub body: String,
    /// The body parsed, or why it is poison.
    pub parsed: Result<BatchMessage, PoisonReason>,
    /// `ApproximateReceiveCount` (1 on the first delivery).
    pub receive_count: u32,
    /// `SentTimestamp`, Unix milliseconds.
    pub sent_at_ms: Option<i64>,
}

impl Received {
    /// `None` for a message without a receipt handle, which could not be deleted anyway.
    pub fn from_sqs(message: Message) -> Option<Self> {
        let attrs: HashMap<MessageSystemAttributeName, String> =
            message.attributes.unwrap_or_default();
        let number = |name: MessageSystemAttributeName| -> Option<i64> {
            attrs.get(&name).and_then(|v| v.parse().ok())
        };
        let body = message.body.unwrap_or_default();
        Some(Received {
            message_id: message.message_id.unwrap_or_default(),
            receipt_handle: message.receipt_handle?,
            parsed: BatchMessage::parse(&body),
            body,
            receive_count: number(MessageSystemAttributeName::ApproximateReceiveCount)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(1),
            sent_at_ms: number(MessageSystemAttributeName::SentTimestamp),
        })
    }

    /// The batch the message names, when its body parsed.
    pub fn batch_id(&self) -> Option<&str> {
        self.parsed.as_ref().ok().map(|m| m.batch_id.as_str())
    }

    /// When the fleet first saw this batch's message: the body's `first_enqueued_at` when it
    /// has one, else when this message was sent.
    pub fn first_seen(&self) -> String {
        self.parsed
            .as_ref()
            .ok()
            .and_then(|m| m.first_enqueued_at.clone())
            .or_else(|| {
                self.sent_at_ms
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map(rfc3339)
            })
            .unwrap_or_else(|| rfc3339(chrono::Utc::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqs_message(body: &str, attrs: &[(MessageSystemAttributeName, &str)]) -> Message {
        let mut b = Message::builder()
            .message_id("m-1")
            .receipt_handle("rh-1")
            .body(body);
        for (k, v) in attrs {
            b = b.attributes(k.clone(), *v);
        }
        b.build()
    }

    #[test]
    fn reads_the_system_attributes_and_parses_once() {
        let r = Received::from_sqs(sqs_message(
            r#"{"v":1,"batch_id":"b-1"}"#,
            &[
                (MessageSystemAttributeName::ApproximateReceiveCount, "3"),
                (MessageSystemAttributeName::SentTimestamp, "1750000000123"),
            ],
        ))
        .unwrap();
        assert_eq!(r.receive_count, 3);
        assert_eq!(r.sent_at_ms, Some(1_750_000_000_123));
        assert_eq!(r.first_seen(), "2025-06-15T15:06:40.123Z");
        assert_eq!(r.batch_id(), Some("b-1"));
        let r = Received::from_sqs(sqs_message("{}", &[])).unwrap();
        assert_eq!(
            r.receive_count, 1,
            "a missing count reads as the first receive"
        );
        assert_eq!(r.parsed.unwrap_err().code(), "missing_version");
        assert!(Received::from_sqs(Message::builder().body("x").build()).is_none());
    }

    #[test]
    fn first_seen_prefers_the_body() {
        let r = Received::from_sqs(sqs_message(
            r#"{"v":1,"batch_id":"b","first_enqueued_at":"2025-01-01T00:00:00Z"}"#,
            &[(MessageSystemAttributeName::SentTimestamp, "1750000000123")],
        ))
        .unwrap();
        assert_eq!(r.first_seen(), "2025-01-01T00:00:00Z");
    }

    #[test]
    fn a_mebibyte_of_garbage_is_poison_without_being_parsed() {
        let garbage = "\u{1}garbage".repeat(128 * 1024);
        assert!(garbage.len() >= 1024 * 1024);
        let r = Received::from_sqs(sqs_message(&garbage, &[])).unwrap();
        assert_eq!(r.parsed.unwrap_err().code(), "body_too_large");
    }
}
