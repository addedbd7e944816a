//! The SQS calls both binaries make: batched sends with per-entry retries, delayed re-checks,
//! dead-lettering with reason attributes, and queue depths.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName, SendMessageBatchRequestEntry};
use backon::{BackoffBuilder, ExponentialBuilder};

use crate::error_class::{DeploymentCause, ErrorClass, aws_deployment_cause};

/// SQS's limit of entries per SendMessageBatch / DeleteMessageBatch call.
pub const SQS_BATCH_LIMIT: usize = 10;
/// SQS's longest `DelaySeconds`.
pub const SQS_MAX_DELAY_SECONDS: u32 = 900;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("SQS {op} failed (transient): {message}")]
    Transient { op: &'static str, message: String },
    #[error("SQS {op} failed: {message}")]
    Permanent { op: &'static str, message: String },
    /// Access denied, unknown credentials, no such queue: the deployment is wrong.
    #[error("SQS {op} failed ({}): {message}", cause.as_str())]
    Deployment {
        op: &'static str,
        cause: DeploymentCause,
        message: String,
    },
}

impl QueueError {
    pub fn is_transient(&self) -> bool {
        matches!(self, QueueError::Transient { .. })
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            QueueError::Transient { .. } => ErrorClass::Transient,
            QueueError::Deployment { cause, .. } => ErrorClass::Deployment(*cause),
            QueueError::Permanent { .. } => ErrorClass::Permanent,
        }
    }
}

pub fn classify<E, R>(op: &'static str, err: SdkError<E, R>) -> QueueError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let message = DisplayErrorContext(&err).to_string();
    if let Some(cause) = err
        .as_service_error()
        .and_then(|e| e.code())
        .and_then(aws_deployment_cause)
    {
        return QueueError::Deployment { op, cause, message };
    }
    let transient = match &err {
        SdkError::ServiceError(se) => matches!(
            se.err().code(),
            Some(
                "ThrottlingException"
                    | "RequestThrottled"
                    | "ServiceUnavailable"
                    | "InternalError"
                    | "InternalFailure"
                    | "KmsThrottled"
            )
        ),
        SdkError::ConstructionFailure(_) => false,
        _ => true,
    };
    if transient {
        QueueError::Transient { op, message }
    } else {
        QueueError::Permanent { op, message }
    }
}

/// One message to send: a caller-chosen id (unique within the call), body and delay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub id: String,
    pub body: String,
    pub delay_seconds: u32,
    pub attributes: Vec<(String, String)>,
}

/// What a batched send did: the ids sent and, for the rest, why they failed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SendReport {
    pub sent: Vec<String>,
    pub failed: Vec<(String, String)>,
    pub calls: usize,
}

fn string_attr(v: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(v)
        .build()
        .expect("data type is set")
}

/// Sends in calls of 10; entries that fail with a non-sender fault are retried with backoff
/// (bounded); the report names every entry that still failed.
pub async fn send_batch(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    messages: Vec<Outgoing>,
) -> SendReport {
    let mut report = SendReport::default();
    for chunk in messages.chunks(SQS_BATCH_LIMIT) {
        let mut pending: Vec<Outgoing> = chunk.to_vec();
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_max_times(4)
            .with_jitter()
            .build();
        loop {
            let entries = pending
                .iter()
                .map(|m| {
                    let mut e = SendMessageBatchRequestEntry::builder()
                        .id(&m.id)
                        .message_body(&m.body)
                        .delay_seconds(m.delay_seconds.min(SQS_MAX_DELAY_SECONDS) as i32);
                    for (k, v) in &m.attributes {
                        e = e.message_attributes(k, string_attr(v));
                    }
                    e.build().expect("id and body are set")
                })
                .collect::<Vec<_>>();
            report.calls += 1;
            let result = sqs
                .send_message_batch()
                .queue_url(queue_url)
                .set_entries(Some(entries))
                .send()
                .await;
            let mut retry = Vec::new();
            match result {
                Ok(out) => {
                    report.sent.extend(out.successful.into_iter().map(|s| s.id));
                    for f in out.failed {
                        let m = pending.iter().find(|m| m.id == f.id).cloned();
                        match m {
                            Some(m) if !f.sender_fault => retry.push((m, f.code)),
                            _ => report.failed.push((
                                f.id,
                                format!("{}: {}", f.code, f.message.unwrap_or_default()),
                            )),
                        }
                    }
                }
                Err(e) => {
                    let err = classify("SendMessageBatch", e);
                    if err.is_transient() {
                        retry.extend(pending.iter().cloned().map(|m| (m, err.to_string())));
                    } else {
                        report
                            .failed
                            .extend(pending.iter().map(|m| (m.id.clone(), err.to_string())));
                    }
                }
            }
            if retry.is_empty() {
                break;
            }
            match delays.next() {
                Some(d) => {
                    tracing::warn!(entries = retry.len(), ?d, "retrying failed SQS entries");
                    tokio::time::sleep(d).await;
                    pending = retry.into_iter().map(|(m, _)| m).collect();
                }
                None => {
                    report
                        .failed
                        .extend(retry.into_iter().map(|(m, why)| (m.id, why)));
                    break;
                }
            }
        }
    }
    report
}

/// Sends one message (a re-check, a dead-letter copy, a replay).
pub async fn send_one(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    body: &str,
    delay_seconds: u32,
    attributes: &[(&str, String)],
) -> Result<String, QueueError> {
    let mut req = sqs
        .send_message()
        .queue_url(queue_url)
        .message_body(body)
        .delay_seconds(delay_seconds.min(SQS_MAX_DELAY_SECONDS) as i32);
    for (k, v) in attributes {
        req = req.message_attributes(*k, string_attr(v));
    }
    let out = req.send().await.map_err(|e| classify("SendMessage", e))?;
    Ok(out.message_id.unwrap_or_default())
}

/// Message counts of a queue: visible, in flight (received, not deleted), delayed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct QueueDepth {
    pub visible: u64,
    pub in_flight: u64,
    pub delayed: u64,
}

impl QueueDepth {
    pub fn total(&self) -> u64 {
        self.visible + self.in_flight + self.delayed
    }
}

pub async fn queue_depth(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
) -> Result<QueueDepth, QueueError> {
    let out = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .map_err(|e| classify("GetQueueAttributes", e))?;
    let attrs: HashMap<QueueAttributeName, String> = out.attributes.unwrap_or_default();
    let get = |k: QueueAttributeName| attrs.get(&k).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(QueueDepth {
        visible: get(QueueAttributeName::ApproximateNumberOfMessages),
        in_flight: get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        delayed: get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
    })
}

/// The String message attributes a dead-lettered message carries (docs/spec/fleet-design.md).
pub fn dead_letter_attributes(
    reason: &str,
    error_class: &str,
    receive_count: u32,
    first_seen: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("reason", reason.to_owned()),
        ("error_class", error_class.to_owned()),
        ("receive_count", receive_count.to_string()),
        ("first_seen", first_seen.to_owned()),
    ]
}
