//! One message, from receipt to its outcome.
//!
//! The message is deleted only once what it stands for is done: dead-lettered, re-scheduled
//! as a new delayed message, or applied. Every other path leaves it in the queue (with a
//! backoff visibility, or visible at once on shutdown), so a crash at any point loses nothing.
//! Each handling ends with exactly one `message handled` log line and one
//! `fleet_messages_total{outcome}` increment.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use fleet_shared::message::BatchMessage;
use fleet_shared::model::time::{parse_timestamp, rfc3339};
use fleet_shared::model::{BatchStatus, BatchSummary};
use fleet_shared::openai::{BatchObject, OpenAiStatus};
use fleet_shared::queue::{self, QueueError};
use fleet_shared::store::{LeaseOutcome, Store};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, field};

use crate::clock;
use crate::deadlines::{overdue_for_cancel, stuck_validating};
use crate::delay::{self, Observation, lease_recheck_delay, next_check_delay, remaining_hop};
use crate::errors::{Failure, retry_visibility};
use crate::heartbeat::{Heartbeat, LeaseKey, QueueKeepalive};
use crate::metrics as m;
use crate::service::{ApplyOutcome, BatchService, ServiceError};
use crate::settings::Settings;

/// A received message, with the system attributes the worker uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
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
        Some(Received {
            message_id: message.message_id.unwrap_or_default(),
            receipt_handle: message.receipt_handle?,
            body: message.body.unwrap_or_default(),
            receive_count: number(MessageSystemAttributeName::ApproximateReceiveCount)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(1),
            sent_at_ms: number(MessageSystemAttributeName::SentTimestamp),
        })
    }

    /// When the fleet first saw this batch's message: the body's `first_enqueued_at` when it
    /// has one, else when this message was sent.
    fn first_seen(&self) -> String {
        BatchMessage::parse(&self.body)
            .ok()
            .and_then(|m| m.first_enqueued_at)
            .or_else(|| {
                self.sent_at_ms
                    .and_then(chrono::DateTime::from_timestamp_millis)
                    .map(rfc3339)
            })
            .unwrap_or_else(|| rfc3339(chrono::Utc::now()))
    }
}

/// How the handling of one message ended (the `outcome` label of `fleet_messages_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A finished batch was applied.
    Applied,
    /// The next check (or hop of a long wait) was scheduled.
    Rechecked,
    /// Sent to the dead-letter queue (or left to the redrive policy without one).
    DeadLettered,
    /// A transient failure: left in the queue with a backoff visibility.
    Retried,
    /// Deadline or shutdown: left in the queue unfinished.
    Abandoned,
    /// The batch was already finished by someone else.
    AlreadyDone,
    /// Another worker holds the batch's lease: re-checked after it expires.
    LeaseBusy,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Rechecked => "rechecked",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Retried => "retried",
            Outcome::Abandoned => "abandoned",
            Outcome::AlreadyDone => "already_done",
            Outcome::LeaseBusy => "lease_busy",
        }
    }
}

/// What every handler needs: the settings, the clients, and the batch service.
pub struct Context<S> {
    pub settings: Arc<Settings>,
    pub sqs: aws_sdk_sqs::Client,
    pub store: Store,
    pub service: S,
}

/// The lease a handling holds, if any, so that abandoning it (deadline, shutdown) can release
/// the lease the dropped work was holding.
type LeaseSlot = Mutex<Option<LeaseKey>>;

/// Handles one message to its outcome. `abandon` is cancelled when the shutdown grace period is
/// over: the message is then made visible again at once for another worker.
pub async fn handle<S: BatchService>(
    ctx: Arc<Context<S>>,
    msg: Received,
    abandon: CancellationToken,
) -> Outcome {
    let span = tracing::info_span!(
        "message",
        message_id = %msg.message_id,
        batch_id = field::Empty,
        openai_batch_id = field::Empty,
        receive_count = msg.receive_count,
    );
    handle_in_span(ctx, msg, abandon).instrument(span).await
}

async fn handle_in_span<S: BatchService>(
    ctx: Arc<Context<S>>,
    msg: Received,
    abandon: CancellationToken,
) -> Outcome {
    let started = Instant::now();
    let lease = LeaseSlot::default();
    let heartbeat = Heartbeat::start(
        QueueKeepalive {
            sqs: ctx.sqs.clone(),
            queue_url: ctx.settings.common.queue_url.clone(),
            receipt_handle: Some(msg.receipt_handle.clone()),
            store: ctx.store.clone(),
        },
        ctx.settings.heartbeat,
        Some(ctx.settings.visibility_timeout_seconds),
        ctx.settings.lease_ttl_ms(),
    );
    let result = {
        let work = tokio::time::timeout(
            ctx.settings.message_deadline,
            process(&ctx, &msg, &heartbeat, &lease),
        );
        tokio::select! {
            biased;
            () = abandon.cancelled() => None,
            result = work => Some(result),
        }
        // The work is dropped here, before any clean-up below touches the message.
    };
    drop(heartbeat);
    let outcome = match result {
        Some(Ok(Ok(outcome))) => outcome,
        Some(Ok(Err(failure))) => on_failure(&ctx, &msg, failure).await,
        Some(Err(_elapsed)) => {
            let seconds = {
                let mut rng = rand::rng();
                retry_visibility(ctx.settings.retry, msg.receive_count, None, &mut rng)
            };
            tracing::warn!(
                deadline_seconds = ctx.settings.message_deadline.as_secs(),
                retry_in_seconds = seconds,
                "message deadline passed; abandoned"
            );
            abandon_message(&ctx, &msg, &lease, seconds).await
        }
        None => {
            tracing::warn!("shutdown grace period over; message abandoned and made visible");
            abandon_message(&ctx, &msg, &lease, 0).await
        }
    };
    let elapsed = started.elapsed();
    metrics::counter!(m::MESSAGES, "outcome" => outcome.as_str()).increment(1);
    metrics::histogram!(m::MESSAGE_HANDLING_SECONDS).record(elapsed.as_secs_f64());
    tracing::info!(
        outcome = outcome.as_str(),
        elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        "message handled"
    );
    outcome
}

async fn process<S: BatchService>(
    ctx: &Context<S>,
    msg: &Received,
    heartbeat: &Heartbeat,
    lease: &LeaseSlot,
) -> Result<Outcome, Failure> {
    let parsed = BatchMessage::parse(&msg.body).map_err(|poison| Failure::Permanent {
        reason: poison.code(),
        error: poison.to_string(),
    })?;
    let span = tracing::Span::current();
    span.record("batch_id", parsed.batch_id.as_str());
    if let Some(id) = &parsed.openai_batch_id {
        span.record("openai_batch_id", id.as_str());
    }
    let now = clock::now_secs();

    if let Some(not_before) = parsed.not_before.as_deref() {
        match parse_timestamp(not_before) {
            Some(due) => {
                if let Some(hop) = remaining_hop(now, due.timestamp()) {
                    queue::send_one(
                        &ctx.sqs,
                        &ctx.settings.common.queue_url,
                        &msg.body,
                        hop,
                        &[],
                    )
                    .await?;
                    delete(ctx, msg).await;
                    tracing::info!(delay_seconds = hop, not_before, "long wait: next hop sent");
                    return Ok(Outcome::Rechecked);
                }
            }
            None => tracing::warn!(not_before, "unreadable not_before; checking now"),
        }
    }

    let summary = ctx
        .service
        .load_summary(&parsed.batch_id)
        .await
        .map_err(|e| Failure::from_service(&e))?;
    span.record("openai_batch_id", summary.openai_batch_id.as_str());
    if summary.status != BatchStatus::Pending {
        tracing::info!(status = %summary.status, "batch already finished");
        delete(ctx, msg).await;
        return Ok(Outcome::AlreadyDone);
    }

    let mut batch = ctx
        .service
        .check(&summary)
        .await
        .map_err(|e| Failure::from_service(&e))?;
    record_check(&batch);
    if let Some(seconds) = stuck_validating(
        &batch,
        summary.submitted_at.timestamp(),
        now,
        ctx.settings.stuck_validating,
    ) {
        metrics::counter!(m::STUCK_BATCHES).increment(1);
        tracing::warn!(validating_seconds = seconds, "batch stuck validating");
    }
    if overdue_for_cancel(&batch, now) {
        match ctx.service.cancel(&summary).await {
            Ok(cancelled) => {
                metrics::counter!(m::BATCHES_CANCELLED).increment(1);
                tracing::warn!(
                    expires_at = batch.expires_at,
                    status = %cancelled.status,
                    "batch still running an hour past its expiry; cancelled at OpenAI"
                );
                batch = cancelled;
            }
            Err(e) if e.is_transient() => return Err(Failure::from_service(&e)),
            // Typically the batch ended meanwhile: the next check sees how.
            Err(e) => tracing::warn!(error = %e, "cancel refused; checking again"),
        }
    }

    if batch.status.is_terminal() {
        apply_finished(ctx, msg, &parsed, &summary, &batch, heartbeat, lease).await
    } else {
        schedule_next_check(ctx, msg, &parsed, &summary, &batch, now).await
    }
}

/// One `fleet_batch_checks_total{status}` per answer; an unknown status is also a warning.
fn record_check(batch: &BatchObject) {
    metrics::counter!(m::BATCH_CHECKS, "status" => batch.status.metric_label()).increment(1);
    if let OpenAiStatus::Unknown(status) = &batch.status {
        tracing::warn!(status = %status, "OpenAI reported an unknown batch status; treating it as not finished");
    } else {
        tracing::debug!(status = %batch.status, "batch checked");
    }
}

async fn schedule_next_check<S: BatchService>(
    ctx: &Context<S>,
    msg: &Received,
    parsed: &BatchMessage,
    summary: &BatchSummary,
    batch: &BatchObject,
    now: i64,
) -> Result<Outcome, Failure> {
    let wait = {
        let mut rng = rand::rng();
        next_check_delay(
            ctx.settings.recheck,
            &Observation {
                status: &batch.status,
                checks: parsed.checks,
                now,
                created_at: batch.created_at,
                in_progress_at: batch.in_progress_at,
                expires_at: batch.expires_at,
            },
            &mut rng,
        )
    };
    let schedule = delay::schedule(now, wait);
    let next = BatchMessage {
        checks: parsed.checks.saturating_add(1),
        not_before: schedule
            .not_before
            .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
            .map(rfc3339),
        ..follow_up(msg, parsed, summary)
    };
    queue::send_one(
        &ctx.sqs,
        &ctx.settings.common.queue_url,
        &next.to_body(),
        schedule.delay_seconds,
        &[],
    )
    .await?;
    mark_scheduled(ctx, &summary.batch_id, wait).await;
    delete(ctx, msg).await;
    tracing::info!(
        status = %batch.status,
        delay_seconds = wait,
        checks = next.checks,
        "next check scheduled"
    );
    Ok(Outcome::Rechecked)
}

/// The fields a follow-up message keeps: the batch, the first enqueue time, the replays.
fn follow_up(msg: &Received, parsed: &BatchMessage, summary: &BatchSummary) -> BatchMessage {
    BatchMessage {
        openai_batch_id: Some(summary.openai_batch_id.clone()),
        first_enqueued_at: parsed
            .first_enqueued_at
            .clone()
            .or_else(|| Some(msg.first_seen())),
        not_before: None,
        ..parsed.clone()
    }
}

/// Keeps the producer's "scheduled until" marker ahead of our own follow-up message (its
/// delay plus the time it may spend in flight), so a producer tick does not enqueue a copy.
/// Advisory: a failure costs at most a duplicate message, which the lease makes harmless.
async fn mark_scheduled<S: BatchService>(ctx: &Context<S>, batch_id: &str, wait_seconds: u32) {
    let now_ms = clock::now_ms();
    let until_ms = now_ms
        + (i64::from(wait_seconds) + i64::from(ctx.settings.visibility_timeout_seconds)) * 1000;
    if let Err(e) = ctx.store.set_schedule(batch_id, until_ms, now_ms).await {
        tracing::warn!(error = %e, "could not update the schedule marker");
    }
}

async fn apply_finished<S: BatchService>(
    ctx: &Context<S>,
    msg: &Received,
    parsed: &BatchMessage,
    summary: &BatchSummary,
    batch: &BatchObject,
    heartbeat: &Heartbeat,
    lease: &LeaseSlot,
) -> Result<Outcome, Failure> {
    let key = LeaseKey {
        batch_id: summary.batch_id.clone(),
        owner: format!("{}#{}", ctx.settings.worker_id, msg.message_id),
    };
    let now_ms = clock::now_ms();
    let ttl_ms = ctx.settings.lease_ttl_ms();
    match ctx
        .store
        .acquire_lease(&key.batch_id, &key.owner, ttl_ms, now_ms)
        .await?
    {
        LeaseOutcome::Acquired { .. } => {}
        LeaseOutcome::HeldBy {
            owner,
            expires_at_ms,
        } => {
            let wait = lease_recheck_delay(now_ms, expires_at_ms);
            let next = BatchMessage {
                checks: parsed.checks.saturating_add(1),
                ..follow_up(msg, parsed, summary)
            };
            queue::send_one(
                &ctx.sqs,
                &ctx.settings.common.queue_url,
                &next.to_body(),
                wait,
                &[],
            )
            .await?;
            mark_scheduled(ctx, &summary.batch_id, wait).await;
            delete(ctx, msg).await;
            metrics::counter!(m::LEASE_CONFLICTS).increment(1);
            tracing::info!(holder = %owner, delay_seconds = wait, "lease held by another worker; re-checking after it expires");
            return Ok(Outcome::LeaseBusy);
        }
    }

    *lease.lock().unwrap_or_else(|e| e.into_inner()) = Some(key.clone());
    let stop = CancellationToken::new();
    heartbeat.watch_lease(key.clone(), stop.clone());
    let started = Instant::now();
    let result = ctx.service.apply(summary, batch, &stop, &key.owner).await;
    heartbeat.forget_lease();
    release_lease(&ctx.store, lease).await;
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            if stop.is_cancelled() {
                tracing::warn!(error = %e, "apply stopped: lease lost");
            }
            return Err(Failure::from_service(&e));
        }
    };
    metrics::histogram!(m::APPLY_SECONDS).record(started.elapsed().as_secs_f64());
    for (verdict, n) in report.labels_by_verdict() {
        metrics::counter!(m::LABELS, "verdict" => verdict.clone()).increment(*n);
    }
    for (reason, n) in report.skipped() {
        metrics::counter!(m::SKIPPED_RESULTS, "reason" => reason.clone()).increment(*n);
    }
    // The library logs the applied batch ("batch applied"); its metrics are recorded here.
    delete(ctx, msg).await;
    Ok(if report.already_done() {
        Outcome::AlreadyDone
    } else {
        Outcome::Applied
    })
}

async fn release_lease(store: &Store, lease: &LeaseSlot) {
    let held = lease.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(key) = held {
        match store.release_lease(&key.batch_id, &key.owner).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!("lease was no longer ours at release"),
            // It runs out by itself within one visibility timeout.
            Err(e) => tracing::warn!(error = %e, "could not release the lease"),
        }
    }
}

async fn on_failure<S: BatchService>(
    ctx: &Context<S>,
    msg: &Received,
    failure: Failure,
) -> Outcome {
    metrics::counter!(m::MESSAGE_ERRORS, "class" => failure.class()).increment(1);
    match failure {
        Failure::Transient { error, retry_after } => {
            retry_later(ctx, msg, &error, retry_after).await
        }
        Failure::Permanent { reason, error } => {
            tracing::warn!(reason, %error, "permanent failure; dead-lettering the message");
            match dead_letter(ctx, msg, reason).await {
                Ok(outcome) => outcome,
                Err(e) => retry_later(ctx, msg, &e.to_string(), None).await,
            }
        }
    }
}

async fn retry_later<S: BatchService>(
    ctx: &Context<S>,
    msg: &Received,
    error: &str,
    retry_after: Option<Duration>,
) -> Outcome {
    let seconds = {
        let mut rng = rand::rng();
        retry_visibility(ctx.settings.retry, msg.receive_count, retry_after, &mut rng)
    };
    if let Err(e) = set_visibility(ctx, msg, seconds).await {
        tracing::warn!(error = %e, "could not set the retry visibility; the message returns after the visibility timeout");
    }
    tracing::warn!(
        error,
        retry_in_seconds = seconds,
        "transient failure; message left for a retry"
    );
    Outcome::Retried
}

/// Sends the body, unchanged, to the dead-letter queue with the reason attributes, then
/// deletes it from the work queue.
async fn dead_letter<S: BatchService>(
    ctx: &Context<S>,
    msg: &Received,
    reason: &'static str,
) -> Result<Outcome, QueueError> {
    let Some(dlq) = ctx.settings.common.dead_letter_queue_url.as_deref() else {
        leave_to_redrive(ctx, msg, reason, "no dead-letter queue configured").await;
        return Ok(Outcome::DeadLettered);
    };
    let attributes =
        queue::dead_letter_attributes(reason, "permanent", msg.receive_count, &msg.first_seen());
    match queue::send_one(&ctx.sqs, dlq, &msg.body, 0, &attributes).await {
        Ok(_) => {
            metrics::counter!(m::DEAD_LETTER_SENDS, "reason" => reason).increment(1);
            tracing::warn!(reason, "message sent to the dead-letter queue");
            delete(ctx, msg).await;
            Ok(Outcome::DeadLettered)
        }
        Err(e) if e.is_transient() => Err(e),
        // The body plus attributes can exceed SQS's size limit; the body alone fits.
        Err(e) => {
            leave_to_redrive(ctx, msg, reason, &e.to_string()).await;
            Ok(Outcome::DeadLettered)
        }
    }
}

/// Makes the message visible again so that the redrive policy moves it after
/// `maxReceiveCount` receives (body unchanged, without reason attributes).
async fn leave_to_redrive<S: BatchService>(
    ctx: &Context<S>,
    msg: &Received,
    reason: &'static str,
    why: &str,
) {
    if let Err(e) = set_visibility(ctx, msg, 0).await {
        tracing::warn!(error = %e, "could not make the message visible");
    }
    tracing::warn!(reason, why, "poison message left to the redrive policy");
}

/// Leaves the message for a later try with the given visibility, releasing a held lease.
async fn abandon_message<S: BatchService>(
    ctx: &Context<S>,
    msg: &Received,
    lease: &LeaseSlot,
    visibility_seconds: u32,
) -> Outcome {
    release_lease(&ctx.store, lease).await;
    if let Err(e) = set_visibility(ctx, msg, visibility_seconds).await {
        tracing::warn!(error = %e, "could not change the abandoned message's visibility");
    }
    Outcome::Abandoned
}

async fn set_visibility<S: BatchService>(
    ctx: &Context<S>,
    msg: &Received,
    seconds: u32,
) -> Result<(), QueueError> {
    ctx.sqs
        .change_message_visibility()
        .queue_url(&ctx.settings.common.queue_url)
        .receipt_handle(&msg.receipt_handle)
        .visibility_timeout(i32::try_from(seconds).unwrap_or(i32::MAX))
        .send()
        .await
        .map_err(|e| queue::classify("ChangeMessageVisibility", e))?;
    Ok(())
}

/// Deletes the handled message. A failure is only logged: the message comes back after its
/// visibility timeout and is handled again, which every path tolerates.
async fn delete<S: BatchService>(ctx: &Context<S>, msg: &Received) {
    let result = ctx
        .sqs
        .delete_message()
        .queue_url(&ctx.settings.common.queue_url)
        .receipt_handle(&msg.receipt_handle)
        .send()
        .await;
    if let Err(e) = result {
        let e = queue::classify("DeleteMessage", e);
        tracing::warn!(error = %e, "could not delete the message; it will be handled again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqs_message(attrs: &[(MessageSystemAttributeName, &str)]) -> Message {
        let mut b = Message::builder()
            .message_id("m-1")
            .receipt_handle("rh-1")
            .body(r#"{"v":1,"batch_id":"b-1"}"#);
        for (k, v) in attrs {
            b = b.attributes(k.clone(), *v);
        }
        b.build()
    }

    #[test]
    fn received_reads_the_system_attributes() {
        let r = Received::from_sqs(sqs_message(&[
            (MessageSystemAttributeName::ApproximateReceiveCount, "3"),
            (MessageSystemAttributeName::SentTimestamp, "1750000000123"),
        ]))
        .unwrap();
        assert_eq!(r.receive_count, 3);
        assert_eq!(r.sent_at_ms, Some(1_750_000_000_123));
        assert_eq!(r.first_seen(), "2025-06-15T15:06:40.123Z");
        let r = Received::from_sqs(sqs_message(&[])).unwrap();
        assert_eq!(
            r.receive_count, 1,
            "a missing count reads as the first receive"
        );
        assert!(Received::from_sqs(Message::builder().body("x").build()).is_none());
    }

    #[test]
    fn first_seen_prefers_the_body() {
        let mut r = Received::from_sqs(sqs_message(&[(
            MessageSystemAttributeName::SentTimestamp,
            "1750000000123",
        )]))
        .unwrap();
        r.body = r#"{"v":1,"batch_id":"b","first_enqueued_at":"2025-01-01T00:00:00Z"}"#.into();
        assert_eq!(r.first_seen(), "2025-01-01T00:00:00Z");
    }

    #[test]
    fn a_mebibyte_of_garbage_is_poison_without_being_parsed() {
        let garbage = "\u{1}garbage".repeat(128 * 1024);
        assert!(garbage.len() >= 1024 * 1024);
        let err = BatchMessage::parse(&garbage).unwrap_err();
        assert_eq!(err.code(), "body_too_large");
    }

    #[test]
    fn follow_ups_keep_the_batch_and_its_history() {
        let msg = Received::from_sqs(sqs_message(&[(
            MessageSystemAttributeName::SentTimestamp,
            "1750000000000",
        )]))
        .unwrap();
        let parsed = BatchMessage {
            replays: 2,
            checks: 4,
            not_before: Some("2030-01-01T00:00:00Z".into()),
            ..BatchMessage::new("b-1")
        };
        let summary = BatchSummary {
            batch_id: "b-1".into(),
            batch_type: fleet_shared::model::BatchType::Completion,
            openai_batch_id: "batch_1".into(),
            submitted_at: chrono::Utc::now(),
            status: BatchStatus::Pending,
            result_file_id: "N/A".into(),
            receipt_refs: vec![],
        };
        let next = follow_up(&msg, &parsed, &summary);
        assert_eq!(next.openai_batch_id.as_deref(), Some("batch_1"));
        assert_eq!(next.replays, 2);
        assert_eq!(next.checks, 4, "the caller counts the check");
        assert_eq!(next.not_before, None);
        assert_eq!(
            next.first_enqueued_at.as_deref(),
            Some("2025-06-15T15:06:40.000Z")
        );
    }

    #[test]
    fn outcome_labels_are_the_documented_ones() {
        let all = [
            Outcome::Applied,
            Outcome::Rechecked,
            Outcome::DeadLettered,
            Outcome::Retried,
            Outcome::Abandoned,
            Outcome::AlreadyDone,
            Outcome::LeaseBusy,
        ];
        let labels: Vec<&str> = all.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            labels,
            [
                "applied",
                "rechecked",
                "dead_lettered",
                "retried",
                "abandoned",
                "already_done",
                "lease_busy"
            ]
        );
    }
}
