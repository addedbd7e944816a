//! Moving dead-lettered messages back to the work queue.
//!
//! A matching message is sent to the work queue first and deleted from the dead-letter queue
//! only after that send succeeded: a run killed between the two leaves a copy in both queues
//! (a duplicate the worker handles idempotently), never in neither. Messages this run does not
//! move (no match, over `--max`, a failed send, or everything in a dry run) stay hidden for
//! the run, so each is looked at once, and are made visible again at the end.
//!
//! The run stops when a poll brings nothing new: an empty poll, or only messages seen before
//! (their visibility ran out during a long run).
//!
//! # The batch comes back as one new chain, without its dead-letter mark
//!
//! For a message whose body names a batch, the move is, in this order:
//!
//! 1. start a new chain for the batch in its fleet state (a fresh token, and the "scheduled
//!    until" marker moved to now + [`REPLAY_SCHEDULE_HORIZON_SECONDS`], as a producer claim
//!    does), so that the next producer ticks skip the batch while its message waits;
//! 2. send the body with that token (`replays` + 1, `checks` 0);
//! 3. clear the batch's dead-letter mark (so later ticks treat the batch like any other);
//! 4. delete the original from the dead-letter queue.
//!
//! The token makes a replay of several copies of one batch (a dead-letter queue filled before
//! the marks existed) cost one chain: each copy sent starts a newer chain, and the worker
//! deletes the older copies without any OpenAI call. A step that fails leaves the message on
//! the dead-letter queue (reported as failed, exit 1), so running the replay again finishes
//! it; at worst the copy already sent is superseded by the next run's. A body without a
//! readable batch id has no fleet state: it is moved unchanged and clears nothing. A dry run
//! changes nothing and reports which marks a real run would clear.
//!
//! # `--bulk`
//!
//! `--bulk` hands the move to SQS (StartMessageMoveTask), which is fast but moves bodies
//! unchanged and supports no filters; local emulators do not implement it. SQS moves the
//! messages after the call returns and this run never sees their bodies, so it cannot tell
//! which batches come back. Once SQS accepted the task, it clears the mark of every marked
//! PENDING batch ([`clear_pending_marks`]): "move everything back" means every dead-lettered
//! batch. A batch whose message is no longer on the dead-letter queue (expired after 14 days,
//! deleted by hand) is then enqueued by the next producer tick. The moved bodies keep their
//! chain token; a producer tick that claims the batch before its message arrives starts a
//! newer chain, and the moved copy is then deleted as stale: either way one chain lives.
//! Marks are cleared only after the task started: a refused task (unsupported, one already
//! running) clears nothing.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{ChangeMessageVisibilityBatchRequestEntry, Message, QueueAttributeName};
use chrono::{DateTime, Utc};
use fleet_shared::message::{BatchMessage, new_chain_token};
use fleet_shared::queue::{QueueError, SQS_BATCH_LIMIT, classify, send_one};
use fleet_shared::store::StoreError;
use serde::Serialize;
use tokio::time::Instant;

use crate::Services;
use crate::settings::{
    BulkSettings, DEFAULT_SCHEDULE_HORIZON_SECONDS, ReplayFilter, ReplaySettings,
};

/// The reason of a message that has no `reason` attribute: SQS's redrive policy moved it after
/// `maxReceiveCount` receives (the worker sets `reason` on everything it dead-letters itself).
pub const REDRIVE_REASON: &str = "redrive";

/// How long a replayed batch counts as scheduled (the marker its new chain sets): the
/// producer's default horizon. A replay has no `SCHEDULE_HORIZON_SECONDS` of its own; a
/// deployment with another horizon only changes when a tick may send a second copy, which the
/// chain token makes harmless.
pub const REPLAY_SCHEDULE_HORIZON_SECONDS: u64 = DEFAULT_SCHEDULE_HORIZON_SECONDS;

/// Spaces sends at most `rate` per second; the first goes at once. Uses tokio's clock, so
/// tests run it with paused time.
#[derive(Debug)]
pub struct Pacer {
    interval: Option<Duration>,
    next: Option<Instant>,
}

impl Pacer {
    pub fn new(rate_per_second: Option<f64>) -> Self {
        Pacer {
            interval: rate_per_second
                .filter(|r| r.is_finite() && *r > 0.0)
                .map(|r| Duration::from_secs_f64(1.0 / r)),
            next: None,
        }
    }

    pub async fn wait(&mut self) {
        let Some(interval) = self.interval else {
            return;
        };
        if let Some(next) = self.next {
            tokio::time::sleep_until(next).await;
        }
        self.next = Some(Instant::now() + interval);
    }
}

/// One dead-lettered message as this run saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayedMessage {
    /// The dead-letter queue's message id.
    pub message_id: String,
    /// `None` for a body that is not a valid message (it moves unchanged).
    pub batch_id: Option<String>,
    pub reason: String,
    /// `replays` of the body sent (after incrementing); `None` for an unchanged body.
    pub replays: Option<u32>,
    /// The work queue's id of the copy; `None` in a dry run.
    pub new_message_id: Option<String>,
    /// Whether the original left the dead-letter queue (a failed delete leaves a duplicate).
    pub deleted: bool,
    /// This move cleared the batch's dead-letter mark (in a dry run: the batch is marked and a
    /// real run would clear it). `false` for a batch without a mark, a later copy of a batch
    /// whose mark an earlier copy cleared, and a body without a readable batch id.
    pub mark_cleared: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayFailure {
    pub message_id: String,
    pub batch_id: Option<String>,
    pub error: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    pub dry_run: bool,
    /// Distinct messages looked at.
    pub received: u64,
    /// Moved, or in a dry run would move.
    pub moved: Vec<ReplayedMessage>,
    /// Dead-letter marks cleared (in a dry run: that a real run would clear), one per batch.
    pub marks_cleared: u64,
    /// Messages not moved because a step failed (starting the chain, the send, clearing the
    /// mark); they stay in the dead-letter queue, and a second run retries them.
    pub failed: Vec<ReplayFailure>,
    /// Sent but not deleted from the dead-letter queue (they will be seen again there).
    pub not_deleted: u64,
    /// Made visible again at the end.
    pub released: u64,
}

impl ReplayReport {
    pub fn succeeded(&self) -> bool {
        self.failed.is_empty() && self.not_deleted == 0
    }

    pub fn exit_code(&self) -> i32 {
        if self.succeeded() { 0 } else { 1 }
    }
}

/// What a received message is, for filtering and the report.
struct Examined {
    batch_id: Option<String>,
    reason: String,
}

fn examine(m: &Message) -> Examined {
    let reason = m
        .message_attributes
        .as_ref()
        .and_then(|a| a.get("reason"))
        .and_then(|v| v.string_value())
        .filter(|v| !v.is_empty())
        .unwrap_or(REDRIVE_REASON)
        .to_owned();
    let batch_id = BatchMessage::parse(m.body().unwrap_or_default())
        .ok()
        .map(|b| b.batch_id);
    Examined { batch_id, reason }
}

impl ReplayFilter {
    /// A batch-id filter matches only bodies that parse; the reason filter compares the
    /// `reason` attribute ([`REDRIVE_REASON`] when absent).
    pub fn matches(&self, batch_id: Option<&str>, reason: &str) -> bool {
        let batch_ok = self.batch_ids.is_empty()
            || batch_id.is_some_and(|b| self.batch_ids.iter().any(|want| want == b));
        let reason_ok = self.reason.as_deref().is_none_or(|want| want == reason);
        batch_ok && reason_ok
    }
}

/// The body to send back: `replays` + 1, `checks` 0, no pending `not_before` hop (a replay
/// means "check now"), and the new chain's token `chain`; other fields, even ones this
/// version does not know, are kept. A body that is not a valid message goes back unchanged,
/// since an operator may have fixed the worker that rejected it.
pub fn replay_body(body: &str, chain: &str) -> (String, Option<u32>) {
    let Some(replays) = next_replays(body) else {
        return (body.to_owned(), None);
    };
    let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_str(body) else {
        return (body.to_owned(), None);
    };
    fields.insert("replays".into(), replays.into());
    fields.insert("checks".into(), 0.into());
    fields.insert("chain".into(), chain.into());
    fields.remove("not_before");
    (serde_json::Value::Object(fields).to_string(), Some(replays))
}

/// `replays` of the body a replay sends; `None` for a body that is not a valid message.
fn next_replays(body: &str) -> Option<u32> {
    BatchMessage::parse(body)
        .ok()
        .map(|m| m.replays.saturating_add(1))
}

/// Why a replay stopped as a whole (per-message problems are in the report's `failed`).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The dead-letter queue could not be read.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A dry run could not read the dead-letter marks of the batches it would move.
    #[error("could not read the dead-letter marks of the batches to move: {0}")]
    Marks(#[source] StoreError),
}

/// [`replay_at`] with the system clock.
pub async fn replay(
    settings: &ReplaySettings,
    services: &Services,
) -> Result<ReplayReport, ReplayError> {
    replay_at(settings, services, Utc::now()).await
}

/// Moves (or with `dry_run` lists) matching dead-lettered messages; `now` dates the new
/// chains' "scheduled until" markers (tests move the clock, as they do for `enqueue`). Fails
/// only when the dead-letter queue cannot be read at all, or a dry run cannot read the marks.
pub async fn replay_at(
    settings: &ReplaySettings,
    services: &Services,
    now: DateTime<Utc>,
) -> Result<ReplayReport, ReplayError> {
    let sqs = &services.sqs;
    let dlq = &settings.dead_letter_queue_url;
    let now_ms = now.timestamp_millis();
    let until_ms = now_ms.saturating_add(REPLAY_SCHEDULE_HORIZON_SECONDS as i64 * 1000);
    let mut report = ReplayReport {
        dry_run: settings.dry_run,
        ..Default::default()
    };
    let mut seen: HashSet<String> = HashSet::new();
    // message id -> latest receipt handle of messages to make visible again at the end.
    let mut held: HashMap<String, String> = HashMap::new();
    let mut pacer = Pacer::new(settings.rate_per_second);
    let limit = settings.max.unwrap_or(u64::MAX);
    let mut result = Ok(());

    'poll: while (report.moved.len() as u64) < limit {
        let out = match sqs
            .receive_message()
            .queue_url(dlq)
            .max_number_of_messages(i32::try_from(SQS_BATCH_LIMIT).unwrap_or(10))
            .visibility_timeout(settings.visibility_seconds as i32)
            .wait_time_seconds(settings.poll_wait_seconds as i32)
            .message_attribute_names("All")
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                result = Err(classify("ReceiveMessage", e));
                break 'poll;
            }
        };
        let messages = out.messages.unwrap_or_default();
        let mut new = 0;
        for m in messages {
            let (Some(id), Some(handle)) = (m.message_id.clone(), m.receipt_handle.clone()) else {
                continue;
            };
            if !seen.insert(id.clone()) {
                if let Some(h) = held.get_mut(&id) {
                    *h = handle;
                }
                continue;
            }
            new += 1;
            report.received += 1;
            let Examined { batch_id, reason } = examine(&m);
            let wanted = (report.moved.len() as u64) < limit
                && settings.filter.matches(batch_id.as_deref(), &reason);
            if !wanted || settings.dry_run {
                if wanted {
                    tracing::info!(event = "message_would_replay", message_id = %id, batch_id = batch_id.as_deref().unwrap_or("-"), reason = %reason, "would move");
                    report.moved.push(ReplayedMessage {
                        message_id: id.clone(),
                        replays: next_replays(m.body().unwrap_or_default()),
                        batch_id,
                        reason,
                        new_message_id: None,
                        deleted: false,
                        mark_cleared: false,
                    });
                }
                held.insert(id, handle);
                continue;
            }
            pacer.wait().await;
            let moving = Moving {
                message_id: id,
                receipt_handle: handle,
                body: m.body().unwrap_or_default(),
                batch_id,
                reason,
            };
            match move_one(settings, services, moving, until_ms, now_ms).await {
                Ok(moved) => {
                    if !moved.deleted {
                        report.not_deleted += 1;
                    }
                    report.marks_cleared += u64::from(moved.mark_cleared);
                    report.moved.push(moved);
                }
                Err((failure, handle)) => {
                    held.insert(failure.message_id.clone(), handle);
                    report.failed.push(failure);
                }
            }
        }
        if new == 0 {
            break;
        }
    }

    report.released = release(services, dlq, held).await;
    result?;
    if settings.dry_run {
        mark_would_clear(services, &mut report)
            .await
            .map_err(ReplayError::Marks)?;
    }
    Ok(report)
}

/// A dead-lettered message this run moves.
struct Moving<'a> {
    message_id: String,
    receipt_handle: String,
    body: &'a str,
    batch_id: Option<String>,
    reason: String,
}

/// Moves one message by the steps of the module documentation. On failure the message stays
/// on the dead-letter queue: the failure and its receipt handle (to make it visible again).
async fn move_one(
    settings: &ReplaySettings,
    services: &Services,
    m: Moving<'_>,
    until_ms: i64,
    now_ms: i64,
) -> Result<ReplayedMessage, (ReplayFailure, String)> {
    let Moving {
        message_id: id,
        receipt_handle: handle,
        body,
        batch_id,
        reason,
    } = m;
    let fail = |batch_id: Option<String>, error: String| {
        tracing::warn!(event = "message_replay_failed", message_id = %id, batch_id = batch_id.as_deref().unwrap_or("-"), error = %error, "not moved; left in the dead-letter queue");
        (
            ReplayFailure {
                message_id: id.clone(),
                batch_id,
                error,
            },
            handle.clone(),
        )
    };
    let (body, replays) = match &batch_id {
        Some(batch) => {
            let chain = new_chain_token();
            if let Err(e) = services
                .store
                .start_chain(batch, &chain, until_ms, now_ms)
                .await
            {
                return Err(fail(
                    batch_id,
                    format!("could not start a new chain for the batch: {e}"),
                ));
            }
            replay_body(body, &chain)
        }
        None => (body.to_owned(), None),
    };
    let new_id = match send_one(&services.sqs, &settings.queue_url, &body, 0, &[]).await {
        Ok(new_id) => new_id,
        Err(e) => {
            return Err(fail(
                batch_id,
                format!("could not send to the work queue: {e}"),
            ));
        }
    };
    let mark_cleared = match &batch_id {
        Some(batch) => match services.store.clear_dead_letter(batch).await {
            Ok(cleared) => cleared,
            Err(e) => {
                return Err(fail(
                    batch_id,
                    format!(
                        "sent to the work queue as {new_id}, but the batch's dead-letter mark \
                         could not be cleared ({e}); left in the dead-letter queue so that \
                         replay-dlq can be run again"
                    ),
                ));
            }
        },
        None => false,
    };
    let deleted = match services
        .sqs
        .delete_message()
        .queue_url(&settings.dead_letter_queue_url)
        .receipt_handle(&handle)
        .send()
        .await
    {
        Ok(_) => true,
        Err(e) => {
            let e = classify("DeleteMessage", e);
            tracing::warn!(message_id = %id, error = %e, "sent to the work queue but not deleted from the dead-letter queue: it will be seen again");
            false
        }
    };
    tracing::info!(event = "message_replayed", message_id = %id, new_message_id = %new_id, batch_id = batch_id.as_deref().unwrap_or("-"), reason = %reason, replays, mark_cleared, "moved to the work queue");
    Ok(ReplayedMessage {
        message_id: id,
        batch_id,
        reason,
        replays,
        new_message_id: Some(new_id),
        deleted,
        mark_cleared,
    })
}

/// A dry run's marks: the first listed message of each marked batch would clear its mark.
async fn mark_would_clear(
    services: &Services,
    report: &mut ReplayReport,
) -> Result<(), StoreError> {
    let mut ids: Vec<String> = report
        .moved
        .iter()
        .filter_map(|m| m.batch_id.clone())
        .collect();
    ids.sort();
    ids.dedup();
    if ids.is_empty() {
        return Ok(());
    }
    let states = services.store.fleet_states(&ids).await?;
    let mut marked: HashSet<&str> = states
        .iter()
        .filter(|(_, s)| s.dead_letter.is_some())
        .map(|(id, _)| id.as_str())
        .collect();
    for m in &mut report.moved {
        if let Some(b) = m.batch_id.as_deref() {
            m.mark_cleared = marked.remove(b);
        }
    }
    report.marks_cleared = report.moved.iter().filter(|m| m.mark_cleared).count() as u64;
    Ok(())
}

/// Clears the dead-letter mark of every marked PENDING completion batch (`--bulk`, which
/// cannot see which batches its move brings back); returns their ids, sorted. Reads the
/// pending list (the status index) and the marks by key, never the whole table.
pub async fn clear_pending_marks(services: &Services) -> Result<Vec<String>, StoreError> {
    let ids: Vec<String> = services
        .store
        .pending_completion_batches()
        .await?
        .into_iter()
        .filter_map(Result::ok)
        .map(|s| s.batch_id)
        .collect();
    let states = services.store.fleet_states(&ids).await?;
    let mut marked: Vec<String> = states
        .into_iter()
        .filter(|(_, s)| s.dead_letter.is_some())
        .map(|(id, _)| id)
        .collect();
    marked.sort();
    let mut cleared = Vec::with_capacity(marked.len());
    for id in marked {
        if services.store.clear_dead_letter(&id).await? {
            tracing::info!(event = "dead_letter_mark_cleared", batch_id = %id, "dead-letter mark cleared (bulk replay)");
            cleared.push(id);
        }
    }
    Ok(cleared)
}

/// Makes held messages visible again; returns how many. A failure only delays them until their
/// visibility timeout runs out.
async fn release(services: &Services, dlq: &str, held: HashMap<String, String>) -> u64 {
    let handles: Vec<String> = held.into_values().collect();
    let mut released = 0;
    for chunk in handles.chunks(SQS_BATCH_LIMIT) {
        let entries = chunk
            .iter()
            .enumerate()
            .map(|(i, h)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(format!("r{i}"))
                    .receipt_handle(h)
                    .visibility_timeout(0)
                    .build()
                    .expect("id and receipt handle are set")
            })
            .collect::<Vec<_>>();
        match services
            .sqs
            .change_message_visibility_batch()
            .queue_url(dlq)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(out) => {
                released += out.successful.len() as u64;
                for f in out.failed {
                    tracing::warn!(code = %f.code, "could not release a message; it reappears after its visibility timeout");
                }
            }
            Err(e) => {
                let e = classify("ChangeMessageVisibilityBatch", e);
                tracing::warn!(error = %e, "could not release messages; they reappear after their visibility timeout");
            }
        }
    }
    released
}

/// A started StartMessageMoveTask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BulkReport {
    pub task_handle: String,
    pub source_arn: String,
    pub destination_arn: String,
    pub rate_per_second: Option<u32>,
    /// PENDING batches whose dead-letter mark was cleared once the task started, sorted.
    pub marks_cleared: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    #[error(
        "this SQS endpoint does not support StartMessageMoveTask (--bulk): {detail}. \
         Run replay-dlq without --bulk to move messages one by one."
    )]
    Unsupported { detail: String },
    #[error("StartMessageMoveTask failed: {0}")]
    Failed(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The messages are moving, but the batches stay marked: the producer does not enqueue
    /// them until the marks are cleared (a later `--bulk` run, once this task has finished,
    /// moves whatever is left and clears them).
    #[error(
        "the SQS move task {task_handle} started, but the dead-letter marks could not be \
         cleared: {source}. Run replay-dlq --bulk again once the task has finished \
         (`aws sqs list-message-move-tasks`): it clears the marks."
    )]
    MarksNotCleared {
        task_handle: String,
        #[source]
        source: StoreError,
    },
}

async fn queue_arn(services: &Services, url: &str) -> Result<String, QueueError> {
    let out = services
        .sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| classify("GetQueueAttributes", e))?;
    out.attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .ok_or_else(|| QueueError::Permanent {
            op: "GetQueueAttributes",
            message: format!("{url} has no QueueArn"),
        })
}

/// Error codes and HTTP statuses with which services say they do not know an operation.
const UNSUPPORTED_CODES: &[&str] = &[
    "UnsupportedOperation",
    "AWS.SimpleQueueService.UnsupportedOperation",
    "InvalidAction",
    "UnknownOperation",
    "UnknownOperationException",
    "NotImplemented",
    "NotImplementedException",
];

/// Whether a failed call means "not implemented here" rather than a failure of a supported
/// call. moto answers an unimplemented action with a bare HTML 500 (no error code), which
/// real SQS never does: its 500s carry an error code.
fn unsupported_detail(
    err: &SdkError<
        aws_sdk_sqs::operation::start_message_move_task::StartMessageMoveTaskError,
        aws_sdk_sqs::config::http::HttpResponse,
    >,
) -> Option<String> {
    let SdkError::ServiceError(se) = err else {
        return None;
    };
    let status = se.raw().status().as_u16();
    match se.err().code() {
        Some(code) if UNSUPPORTED_CODES.contains(&code) => Some(format!("error code {code}")),
        Some(_) => (status == 501).then(|| format!("HTTP {status}")),
        None if matches!(status, 404 | 405 | 500 | 501) => {
            Some(format!("HTTP {status} without an SQS error code"))
        }
        None => None,
    }
}

/// Starts an SQS-side move of every dead-lettered message to the work queue, then clears the
/// dead-letter mark of every marked PENDING batch (see the module documentation). No retries:
/// a second task on the same queue would be refused anyway, and an unsupported operation
/// should be reported at once.
pub async fn replay_bulk(
    settings: &BulkSettings,
    services: &Services,
) -> Result<BulkReport, BulkError> {
    let source_arn = queue_arn(services, &settings.dead_letter_queue_url).await?;
    let destination_arn = queue_arn(services, &settings.queue_url).await?;
    let no_retry = aws_sdk_sqs::config::Builder::default()
        .retry_config(aws_sdk_sqs::config::retry::RetryConfig::disabled());
    let result = services
        .sqs
        .start_message_move_task()
        .source_arn(&source_arn)
        .destination_arn(&destination_arn)
        .set_max_number_of_messages_per_second(settings.rate_per_second.map(|r| r as i32))
        .customize()
        .config_override(no_retry)
        .send()
        .await;
    match result {
        Ok(out) => {
            let task_handle = out.task_handle.unwrap_or_default();
            tracing::info!(event = "move_task_started", task_handle = %task_handle, source_arn = %source_arn, destination_arn = %destination_arn, "SQS move task started");
            let marks_cleared = match clear_pending_marks(services).await {
                Ok(cleared) => cleared,
                Err(source) => {
                    return Err(BulkError::MarksNotCleared {
                        task_handle,
                        source,
                    });
                }
            };
            Ok(BulkReport {
                task_handle,
                source_arn,
                destination_arn,
                rate_per_second: settings.rate_per_second,
                marks_cleared,
            })
        }
        Err(e) => match unsupported_detail(&e) {
            Some(detail) => Err(BulkError::Unsupported { detail }),
            None => Err(BulkError::Failed(DisplayErrorContext(&e).to_string())),
        },
    }
}

/// What moved (or would move), for people.
pub fn render_text(report: &ReplayReport) -> String {
    let verb = if report.dry_run {
        "would move"
    } else {
        "moved"
    };
    let mut out = String::new();
    for m in &report.moved {
        out.push_str(&format!(
            "{verb} {} batch={} reason={}{}{}{}\n",
            m.message_id,
            m.batch_id
                .as_deref()
                .unwrap_or("(not a valid message: body unchanged)"),
            m.reason,
            m.replays
                .map(|r| format!(" replays={r}"))
                .unwrap_or_default(),
            match (m.mark_cleared, report.dry_run) {
                (false, _) => "",
                (true, false) => " dead-letter mark cleared",
                (true, true) => " (would clear its dead-letter mark)",
            },
            if report.dry_run || m.deleted {
                ""
            } else {
                " (NOT deleted from the dead-letter queue)"
            },
        ));
    }
    for f in &report.failed {
        out.push_str(&format!(
            "failed {} batch={}: {}\n",
            f.message_id,
            f.batch_id.as_deref().unwrap_or("-"),
            f.error
        ));
    }
    out.push_str(&format!(
        "replay-dlq{}: looked at {}, {verb} {}, failed {}, left in the dead-letter queue {}, \
         dead-letter marks {} {}\n",
        if report.dry_run { " (dry run)" } else { "" },
        report.received,
        report.moved.len(),
        report.failed.len(),
        report.released,
        if report.dry_run {
            "to clear"
        } else {
            "cleared"
        },
        report.marks_cleared,
    ));
    out
}

pub fn render_bulk_text(report: &BulkReport) -> String {
    let marks = if report.marks_cleared.is_empty() {
        "no pending batch was marked dead-lettered\n".to_owned()
    } else {
        format!(
            "dead-letter marks cleared ({}): {}\n",
            report.marks_cleared.len(),
            report.marks_cleared.join(" ")
        )
    };
    format!(
        "started SQS move task {}\n  from {}\n  to   {}\n  rate {}\n\
         bodies move unchanged (replays and checks are not updated); follow it with \
         `aws sqs list-message-move-tasks --source-arn {}`\n{marks}",
        report.task_handle,
        report.source_arn,
        report.destination_arn,
        report
            .rate_per_second
            .map(|r| format!("{r}/s"))
            .unwrap_or_else(|| "SQS default".to_owned()),
        report.source_arn,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replayed_bodies_count_the_replay_and_reset_the_checks() {
        let body = r#"{"v":1,"batch_id":"b","checks":7,"replays":1,"not_before":"2030-01-01T00:00:00Z","chain":"old","future":"kept"}"#;
        let (out, replays) = replay_body(body, "new");
        assert_eq!(replays, Some(2));
        let m = BatchMessage::parse(&out).unwrap();
        assert_eq!((m.checks, m.replays, m.not_before), (0, 2, None));
        assert_eq!(m.chain.as_deref(), Some("new"));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["future"], "kept");
        let (out, replays) = replay_body(r#"{"v":1,"batch_id":"b"}"#, "c1");
        assert_eq!(replays, Some(1));
        let m = BatchMessage::parse(&out).unwrap();
        assert_eq!((m.replays, m.chain.as_deref()), (1, Some("c1")));
    }

    #[test]
    fn invalid_bodies_go_back_unchanged() {
        for body in ["hello", "{}", r#"{"v":2,"batch_id":"b"}"#, ""] {
            assert_eq!(replay_body(body, "c1"), (body.to_owned(), None));
            assert_eq!(next_replays(body), None);
        }
    }

    #[test]
    fn filters() {
        let all = ReplayFilter::default();
        assert!(all.matches(Some("a"), "x"));
        assert!(all.matches(None, REDRIVE_REASON));
        let by_batch = ReplayFilter {
            batch_ids: vec!["a".into(), "b".into()],
            reason: None,
        };
        assert!(by_batch.matches(Some("b"), "x"));
        assert!(!by_batch.matches(Some("c"), "x"));
        assert!(!by_batch.matches(None, "x"));
        let both = ReplayFilter {
            batch_ids: vec!["a".into()],
            reason: Some("openai_5xx".into()),
        };
        assert!(both.matches(Some("a"), "openai_5xx"));
        assert!(!both.matches(Some("a"), "not_json"));
        let by_reason = ReplayFilter {
            batch_ids: vec![],
            reason: Some("not_json".into()),
        };
        assert!(by_reason.matches(None, "not_json"));
    }

    #[test]
    fn what_moved_for_people() {
        let mut report = ReplayReport {
            dry_run: false,
            received: 3,
            moved: vec![
                ReplayedMessage {
                    message_id: "m1".into(),
                    batch_id: Some("b1".into()),
                    reason: "openai_unavailable".into(),
                    replays: Some(1),
                    new_message_id: Some("n1".into()),
                    deleted: true,
                    mark_cleared: true,
                },
                ReplayedMessage {
                    message_id: "m2".into(),
                    batch_id: None,
                    reason: "not_json".into(),
                    replays: None,
                    new_message_id: Some("n2".into()),
                    deleted: false,
                    mark_cleared: false,
                },
            ],
            marks_cleared: 1,
            failed: vec![],
            not_deleted: 1,
            released: 1,
        };
        assert_eq!(
            render_text(&report),
            "moved m1 batch=b1 reason=openai_unavailable replays=1 dead-letter mark cleared\n\
             moved m2 batch=(not a valid message: body unchanged) reason=not_json \
             (NOT deleted from the dead-letter queue)\n\
             replay-dlq: looked at 3, moved 2, failed 0, left in the dead-letter queue 1, \
             dead-letter marks cleared 1\n"
        );
        assert_eq!(report.exit_code(), 1);

        report.dry_run = true;
        report.moved.truncate(1);
        report.moved[0].new_message_id = None;
        report.moved[0].deleted = false;
        assert_eq!(
            render_text(&report),
            "would move m1 batch=b1 reason=openai_unavailable replays=1 \
             (would clear its dead-letter mark)\n\
             replay-dlq (dry run): looked at 3, would move 1, failed 0, left in the \
             dead-letter queue 1, dead-letter marks to clear 1\n"
        );
    }

    #[test]
    fn a_bulk_move_names_the_marks_it_cleared() {
        let mut report = BulkReport {
            task_handle: "h".into(),
            source_arn: "arn:dlq".into(),
            destination_arn: "arn:work".into(),
            rate_per_second: Some(10),
            marks_cleared: vec!["b1".into(), "b2".into()],
        };
        let text = render_bulk_text(&report);
        assert!(
            text.ends_with("dead-letter marks cleared (2): b1 b2\n"),
            "{text}"
        );
        report.marks_cleared.clear();
        assert!(render_bulk_text(&report).ends_with("no pending batch was marked dead-lettered\n"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_pacer_keeps_the_rate() {
        let start = Instant::now();
        let mut pacer = Pacer::new(Some(2.0));
        for _ in 0..5 {
            pacer.wait().await;
        }
        // first at once, then every 500 ms
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        let start = Instant::now();
        let mut unlimited = Pacer::new(None);
        for _ in 0..100 {
            unlimited.wait().await;
        }
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn the_pacer_does_not_bank_idle_time() {
        let mut pacer = Pacer::new(Some(10.0));
        pacer.wait().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let start = Instant::now();
        pacer.wait().await;
        pacer.wait().await;
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }
}
