//! One scheduler tick: every PENDING completion batch without a live "scheduled until" marker
//! gets one message.
//!
//! # Claim, then send
//!
//! For each batch the tick first claims the marker in DynamoDB (a conditional write that only
//! succeeds when no live marker exists, valid until now + `SCHEDULE_HORIZON_SECONDS`), then
//! sends a message for every claimed batch. A send that still fails after retries gives the
//! claim back, so the next tick tries again at once. The worker moves the marker forward
//! whenever it schedules the next check itself, so a batch whose check is waiting in the queue
//! is skipped, and ticks do not pile up copies.
//!
//! A producer killed between claim and send leaves a marker with no message: that batch waits
//! until the marker expires (at most the horizon), then the next tick enqueues it. Nothing is
//! lost, only delayed. Sending first and claiming after would instead risk duplicates on every
//! crash; duplicates are harmless to the worker but cost OpenAI calls, so the delay is the
//! cheaper side. The horizon trades the two: shorter recovers a lost send sooner, but one
//! shorter than the time a message can wait in the queue before a worker refreshes the marker
//! (a backlog, workers scaled to zero) lets the next tick enqueue a second copy.

use chrono::{DateTime, Utc};
use fleet_shared::message::{BatchMessage, new_chain_token};
use fleet_shared::model::BatchSummary;
use fleet_shared::model::time::rfc3339;
use fleet_shared::queue::{Outgoing, QueueDepth, queue_depth, send_batch};
use fleet_shared::store::{ScheduleClaim, StoreError};
use futures::StreamExt;
use serde::Serialize;

use crate::Services;
use crate::settings::EnqueueSettings;

/// Claims in flight at once: enough to list a few thousand batches within a tick.
const CLAIM_CONCURRENCY: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchFailure {
    pub batch_id: String,
    pub error: String,
}

/// What one tick did. `listed` counts every item the index returned, so
/// `listed = enqueued + skipped + skipped_dead_lettered + failed + bad_items`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnqueueReport {
    /// RFC 3339; the tick's clock.
    pub started_at: String,
    #[serde(skip)]
    pub started_at_unix: i64,
    pub listed: u64,
    pub enqueued: u64,
    /// Already scheduled (a live marker: a message waits in the queue or a worker has it).
    pub skipped: u64,
    /// Batches a worker dead-lettered: not enqueued until `replay-dlq` brings them back.
    pub skipped_dead_lettered: u64,
    pub failed: u64,
    /// Items under the pending index that are not valid BatchSummaries; never enqueued, never
    /// a reason to stop.
    pub bad_items: u64,
    pub failures: Vec<BatchFailure>,
    pub bad_item_errors: Vec<String>,
    pub oldest_pending_age_seconds: Option<u64>,
    pub work_queue: Option<QueueDepth>,
    pub dead_letter_queue: Option<QueueDepth>,
}

impl EnqueueReport {
    /// Every batch was enqueued or skipped. Bad items do not count against the tick: retrying
    /// cannot fix them and they are reported (and exported) on their own.
    pub fn succeeded(&self) -> bool {
        self.failed == 0
    }

    pub fn exit_code(&self) -> i32 {
        if self.succeeded() { 0 } else { 1 }
    }
}

enum ClaimResult {
    Claimed(BatchSummary, String),
    Skipped,
    DeadLettered,
    Failed(BatchFailure),
}

/// Runs one tick at `now` (tests move the clock). Fails only when the batches cannot be
/// listed; every per-batch problem is in the report.
pub async fn enqueue(
    settings: &EnqueueSettings,
    services: &Services,
    now: DateTime<Utc>,
) -> Result<EnqueueReport, StoreError> {
    let now_ms = now.timestamp_millis();
    let until_ms = schedule_until_ms(now_ms, settings.schedule_horizon_seconds);
    let mut report = EnqueueReport {
        started_at: rfc3339(now),
        started_at_unix: now.timestamp(),
        listed: 0,
        enqueued: 0,
        skipped: 0,
        skipped_dead_lettered: 0,
        failed: 0,
        bad_items: 0,
        failures: Vec::new(),
        bad_item_errors: Vec::new(),
        oldest_pending_age_seconds: None,
        work_queue: None,
        dead_letter_queue: None,
    };

    let items = services.store.pending_completion_batches().await?;
    report.listed = items.len() as u64;
    let mut summaries = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Ok(s) => summaries.push(s),
            Err(e) => {
                tracing::warn!(event = "bad_item", error = %e, "pending batch item does not decode; not enqueued");
                report.bad_items += 1;
                report.bad_item_errors.push(e.to_string());
            }
        }
    }
    report.oldest_pending_age_seconds = summaries
        .iter()
        .map(|s| s.submitted_at)
        .min()
        .map(|oldest| age_seconds(oldest, now));

    let store = &services.store;
    let claims: Vec<ClaimResult> = futures::stream::iter(summaries)
        .map(|summary| async move {
            let chain = new_chain_token();
            match store
                .claim_schedule(&summary.batch_id, until_ms, now_ms, &chain)
                .await
            {
                Ok(ScheduleClaim::Claimed) => ClaimResult::Claimed(summary, chain),
                Ok(ScheduleClaim::DeadLettered(mark)) => {
                    tracing::debug!(event = "batch_skipped", batch_id = %summary.batch_id, dead_letter_reason = %mark.reason, "dead-lettered; waits for replay-dlq");
                    ClaimResult::DeadLettered
                }
                Ok(ScheduleClaim::AlreadyScheduled { until_ms }) => {
                    tracing::debug!(event = "batch_skipped", batch_id = %summary.batch_id, scheduled_until_ms = until_ms, "already scheduled");
                    ClaimResult::Skipped
                }
                Err(e) => {
                    tracing::warn!(event = "batch_failed", batch_id = %summary.batch_id, error = %e, "could not claim the schedule marker");
                    ClaimResult::Failed(BatchFailure {
                        batch_id: summary.batch_id,
                        error: e.to_string(),
                    })
                }
            }
        })
        .buffer_unordered(CLAIM_CONCURRENCY)
        .collect()
        .await;

    let mut claimed = Vec::new();
    for c in claims {
        match c {
            ClaimResult::Claimed(s, chain) => claimed.push((s, chain)),
            ClaimResult::Skipped => report.skipped += 1,
            ClaimResult::DeadLettered => report.skipped_dead_lettered += 1,
            ClaimResult::Failed(f) => {
                report.failed += 1;
                report.failures.push(f);
            }
        }
    }

    // Entry ids are positions, not batch ids: SQS allows only [A-Za-z0-9_-]{1,80} there.
    let first_enqueued_at = rfc3339(now);
    let outgoing = claimed
        .iter()
        .enumerate()
        .map(|(i, (s, chain))| {
            let message = chain_start_message(s, chain, &first_enqueued_at);
            Outgoing {
                id: format!("b{i}"),
                body: message.to_body(),
                delay_seconds: 0,
                attributes: Vec::new(),
            }
        })
        .collect::<Vec<_>>();
    let sent = if outgoing.is_empty() {
        Default::default()
    } else {
        send_batch(&services.sqs, &settings.queue_url, outgoing).await
    };
    for (i, (s, _)) in claimed.iter().enumerate() {
        let id = format!("b{i}");
        if sent.sent.contains(&id) {
            tracing::info!(event = "batch_enqueued", batch_id = %s.batch_id, openai_batch_id = %s.openai_batch_id, "enqueued");
            report.enqueued += 1;
            continue;
        }
        let error = sent
            .failed
            .iter()
            .find(|(f, _)| *f == id)
            .map(|(_, why)| why.clone())
            .unwrap_or_else(|| "SQS reported no result for this entry".to_owned());
        // Give the claim back so the next tick retries now rather than after the horizon.
        let unclaimed = match store.unclaim_schedule(&s.batch_id, until_ms).await {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(batch_id = %s.batch_id, error = %e, "could not release the schedule marker; the batch waits for the horizon");
                false
            }
        };
        tracing::warn!(event = "batch_failed", batch_id = %s.batch_id, error = %error, unclaimed, "could not enqueue");
        report.failed += 1;
        report.failures.push(BatchFailure {
            batch_id: s.batch_id.clone(),
            error,
        });
    }

    report.work_queue = read_depth(services, &settings.queue_url, "work").await;
    if let Some(dlq) = &settings.dead_letter_queue_url {
        report.dead_letter_queue = read_depth(services, dlq, "dead_letter").await;
    }
    tracing::info!(
        event = "enqueue_finished",
        listed = report.listed,
        enqueued = report.enqueued,
        skipped = report.skipped,
        skipped_dead_lettered = report.skipped_dead_lettered,
        failed = report.failed,
        bad_items = report.bad_items,
        "tick finished"
    );
    Ok(report)
}

/// When the "scheduled until" marker written at `now_ms` ends: `horizon_seconds` later.
pub fn schedule_until_ms(now_ms: i64, horizon_seconds: u64) -> i64 {
    let horizon_ms = i64::try_from(horizon_seconds)
        .unwrap_or(i64::MAX / 2_000)
        .saturating_mul(1000);
    now_ms.saturating_add(horizon_ms)
}

/// The first message of a new chain of `summary`'s messages (token `chain`). The tick and the
/// webhook receiver ([`crate::webhook`]) both start chains, with this same message.
pub fn chain_start_message(
    summary: &BatchSummary,
    chain: &str,
    first_enqueued_at: &str,
) -> BatchMessage {
    let mut message = BatchMessage::new(&summary.batch_id);
    message.openai_batch_id = Some(summary.openai_batch_id.clone());
    message.first_enqueued_at = Some(first_enqueued_at.to_owned());
    message.chain = Some(chain.to_owned());
    message
}

/// A depth that cannot be read is a warning: it only feeds metrics and the summary.
async fn read_depth(services: &Services, url: &str, queue: &str) -> Option<QueueDepth> {
    match queue_depth(&services.sqs, url).await {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(queue, error = %e, "could not read the queue depth");
            None
        }
    }
}

pub(crate) fn age_seconds(since: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    u64::try_from((now - since).num_seconds()).unwrap_or(0)
}

/// `1h 02m 03s`, for people.
pub fn human_duration(seconds: u64) -> String {
    let d = seconds;
    let (days, h, m, s) = (d / 86_400, d / 3600 % 24, d / 60 % 60, d % 60);
    match (days, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s:02}s"),
        (0, _, _) => format!("{h}h {m:02}m {s:02}s"),
        _ => format!("{days}d {h:02}h {m:02}m"),
    }
}

fn depth_line(d: Option<&QueueDepth>) -> String {
    match d {
        Some(d) => format!(
            "{} visible, {} in flight, {} delayed",
            d.visible, d.in_flight, d.delayed
        ),
        None => "unknown".to_owned(),
    }
}

/// The summary for people.
pub fn render_text(report: &EnqueueReport, dead_letter_configured: bool) -> String {
    let mut out = format!(
        "enqueue: listed {}, enqueued {}, skipped {} (already scheduled), skipped {} (dead-lettered), failed {}, bad items {}\n",
        report.listed,
        report.enqueued,
        report.skipped,
        report.skipped_dead_lettered,
        report.failed,
        report.bad_items
    );
    for f in &report.failures {
        out.push_str(&format!("  failed {}: {}\n", f.batch_id, f.error));
    }
    for e in &report.bad_item_errors {
        out.push_str(&format!("  bad item: {e}\n"));
    }
    out.push_str(&format!(
        "work queue: {}\n",
        depth_line(report.work_queue.as_ref())
    ));
    if dead_letter_configured {
        out.push_str(&format!(
            "dead-letter queue: {}\n",
            depth_line(report.dead_letter_queue.as_ref())
        ));
    }
    match report.oldest_pending_age_seconds {
        Some(age) => out.push_str(&format!("oldest pending batch: {}\n", human_duration(age))),
        None => out.push_str("oldest pending batch: none pending\n"),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_for_people() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(61), "1m 01s");
        assert_eq!(human_duration(3723), "1h 02m 03s");
        assert_eq!(human_duration(90_061), "1d 01h 01m");
    }

    #[test]
    fn ages_never_go_negative() {
        let now = DateTime::from_timestamp(1_000, 0).unwrap();
        let later = DateTime::from_timestamp(1_100, 0).unwrap();
        assert_eq!(age_seconds(now, later), 100);
        assert_eq!(age_seconds(later, now), 0);
    }
}
