//! What a message asks for, in order: find the batch still pending, belong to its live chain,
//! wait out a long hop, check it at OpenAI, then either schedule the next check or
//! apply the finished batch under its lease. Each step returns the outcome or a classified
//! [`Failure`]; the handler decides what a failure does to the message.

use std::time::{Duration, Instant};

use fleet_shared::message::{BatchMessage, new_chain_token};
use fleet_shared::model::time::parse_timestamp;
use fleet_shared::model::{BatchStatus, BatchSummary};
use fleet_shared::openai::{BatchObject, OpenAiStatus};
use tokio::sync::OwnedSemaphorePermit;

use crate::clock;
use crate::deadlines::{overdue_for_cancel, stuck_validating};
use crate::delay::{self, Observation, lease_recheck_delay, next_check_delay, remaining_hop};
use crate::delivery::Delivery;
use crate::errors::Failure;
use crate::handler::Context;
use crate::lease::{Leased, with_lease};
use crate::metrics as m;
use crate::outcome::Outcome;

pub async fn process(ctx: &Context, delivery: &Delivery) -> Result<Outcome, Failure> {
    let parsed = delivery
        .msg
        .parsed
        .clone()
        .map_err(|poison| Failure::Permanent {
            reason: poison.code(),
            error: poison.to_string(),
        })?;
    let span = tracing::Span::current();
    span.record("batch_id", parsed.batch_id.as_str());
    if let Some(id) = &parsed.openai_batch_id {
        span.record("openai_batch_id", id.as_str());
    }
    let summary = ctx.services.load_summary(&parsed.batch_id).await?;
    span.record("openai_batch_id", summary.openai_batch_id.as_str());
    if summary.status != BatchStatus::Pending {
        tracing::info!(status = %summary.status, "batch already finished");
        delivery.delete().await;
        return Ok(Outcome::AlreadyDone);
    }
    if !join_chain(ctx, delivery, &parsed).await? {
        metrics::counter!(m::SUPERSEDED).increment(1);
        tracing::info!("a stale copy of the batch's chain; deleted without work");
        delivery.delete().await;
        return Ok(Outcome::Superseded);
    }
    let now = clock::now_secs();
    if let Some(outcome) = hop(ctx, delivery, &parsed, now).await? {
        return Ok(outcome);
    }

    let mut batch = ctx.services.check(&summary).await?;
    record_check(&batch);
    let validating_since = summary.submitted_at.timestamp();
    if let Some(seconds) =
        stuck_validating(&batch, validating_since, now, ctx.settings.stuck_validating)
    {
        metrics::counter!(m::STUCK_BATCHES).increment(1);
        tracing::warn!(validating_seconds = seconds, "batch stuck validating");
    }
    if overdue_for_cancel(&batch, now) {
        match ctx.services.cancel(&summary).await {
            Ok(cancelled) => {
                metrics::counter!(m::BATCHES_CANCELLED).increment(1);
                tracing::warn!(
                    expires_at = batch.expires_at,
                    status = %cancelled.status,
                    "batch still running an hour past its expiry; cancelled at OpenAI"
                );
                batch = cancelled;
            }
            // Typically the batch ended meanwhile: the next check sees how.
            Err(e) if !e.class().is_retryable() => {
                tracing::warn!(error = %e, "cancel refused; checking again");
            }
            Err(e) => return Err(e.into()),
        }
    }

    if batch.status.is_terminal() {
        apply_finished(ctx, delivery, &parsed, &summary, &batch).await
    } else {
        schedule_next_check(ctx, delivery, &parsed, &summary, &batch, now).await
    }
}

/// `false` for a stale copy: the message carries a chain token that is not the batch's
/// current one. A message without a token starts a new chain (every older copy then dies).
async fn join_chain(
    ctx: &Context,
    delivery: &Delivery,
    parsed: &BatchMessage,
) -> Result<bool, Failure> {
    let state = ctx.store.fleet_state(&parsed.batch_id).await?;
    match (&parsed.chain, &state.chain) {
        (Some(mine), Some(current)) if mine != current => Ok(false),
        (Some(mine), _) => {
            delivery.continue_chain(mine.clone());
            Ok(true)
        }
        (None, _) => {
            let token = new_chain_token();
            let now_ms = clock::now_ms();
            let until_ms = now_ms + i64::from(ctx.settings.visibility_timeout_seconds) * 1000;
            ctx.store
                .start_chain(&parsed.batch_id, &token, until_ms, now_ms)
                .await?;
            tracing::info!(chain = %token, "a message without a chain token: new chain started");
            delivery.continue_chain(token);
            Ok(true)
        }
    }
}

/// A wait longer than SQS's longest delay hops through several messages; a `not_before`
/// further ahead than the longest wait the fleet schedules (`RECHECK_MAX_SECONDS`, or
/// `RETRY_MAX_SECONDS` for a deferral) is clamped to it.
async fn hop(
    ctx: &Context,
    delivery: &Delivery,
    parsed: &BatchMessage,
    now: i64,
) -> Result<Option<Outcome>, Failure> {
    let Some(not_before) = parsed.not_before.as_deref() else {
        return Ok(None);
    };
    let Some(due) = parse_timestamp(not_before) else {
        tracing::warn!(not_before, "unreadable not_before; checking now");
        return Ok(None);
    };
    let longest = ctx
        .settings
        .recheck
        .max_seconds
        .max(ctx.settings.retry.max_seconds);
    let due = delay::clamp_due(now, due.timestamp(), longest);
    let Some(hop) = remaining_hop(now, due) else {
        return Ok(None);
    };
    let next = BatchMessage {
        not_before: delay::not_before_text(Some(due)),
        ..parsed.clone()
    };
    let wait = u32::try_from(due.saturating_sub(now)).unwrap_or(u32::MAX);
    Ok(Some(if pass_on(ctx, delivery, next, hop, wait).await? {
        tracing::info!(delay_seconds = hop, not_before, "long wait: next hop sent");
        Outcome::Rechecked
    } else {
        Outcome::Superseded
    }))
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

async fn schedule_next_check(
    ctx: &Context,
    delivery: &Delivery,
    parsed: &BatchMessage,
    summary: &BatchSummary,
    batch: &BatchObject,
    now: i64,
) -> Result<Outcome, Failure> {
    let wait = next_check_delay(
        ctx.settings.recheck,
        &Observation {
            status: &batch.status,
            checks: parsed.checks,
            now,
            created_at: batch.created_at,
            in_progress_at: batch.in_progress_at,
            expires_at: batch.expires_at,
        },
        &mut rand::rng(),
    );
    let schedule = delay::schedule(now, wait);
    let next = BatchMessage {
        checks: parsed.checks.saturating_add(1),
        not_before: delay::not_before_text(schedule.not_before),
        ..follow_up(delivery, parsed, summary)
    };
    let checks = next.checks;
    if !pass_on(ctx, delivery, next, schedule.delay_seconds, wait).await? {
        return Ok(Outcome::Superseded);
    }
    tracing::info!(
        status = %batch.status,
        delay_seconds = wait,
        checks,
        "next check scheduled"
    );
    Ok(Outcome::Rechecked)
}

/// The fields a follow-up message keeps: the batch, the first enqueue time, the replays (its
/// chain token is [`pass_on`]'s). A successful check ends a run of deferrals.
pub fn follow_up(
    delivery: &Delivery,
    parsed: &BatchMessage,
    summary: &BatchSummary,
) -> BatchMessage {
    BatchMessage {
        openai_batch_id: Some(summary.openai_batch_id.clone()),
        first_enqueued_at: parsed
            .first_enqueued_at
            .clone()
            .or_else(|| Some(delivery.msg.first_seen())),
        not_before: None,
        deferrals: 0,
        ..parsed.clone()
    }
}

/// Passes the batch's chain on: sends `next` under a fresh token after `delay_seconds`, moves
/// the chain from this copy's token to it (conditionally: of several copies of one link, one
/// wins), moves the producer's marker past the wait, then deletes the received copy. `false`
/// when another copy had already passed the chain on: ours is then a stale link (its follow-up
/// dies at its first receive). Sending first means a crash at any point leaves either the old
/// link current (the received copy comes back) or the new one sent: never no link at all.
pub async fn pass_on(
    ctx: &Context,
    delivery: &Delivery,
    next: BatchMessage,
    delay_seconds: u32,
    wait_seconds: u32,
) -> Result<bool, Failure> {
    let token = new_chain_token();
    let next = BatchMessage {
        chain: Some(token.clone()),
        ..next
    };
    delivery.send(&next, delay_seconds).await?;
    let now_ms = clock::now_ms();
    let until_ms = now_ms
        + (i64::from(wait_seconds) + i64::from(ctx.settings.visibility_timeout_seconds)) * 1000;
    let mine = delivery.chain().unwrap_or_default();
    let advanced = ctx
        .store
        .advance_chain(&next.batch_id, &mine, &token, until_ms, now_ms)
        .await?;
    delivery.delete().await;
    if !advanced {
        metrics::counter!(m::SUPERSEDED).increment(1);
        tracing::info!("another copy of this link passed the chain on first; this copy ends here");
    }
    Ok(advanced)
}

/// Waits for one of the process's apply slots. Waiting is not a hang: it counts as progress.
async fn apply_slot(ctx: &Context) -> OwnedSemaphorePermit {
    loop {
        tokio::select! {
            permit = ctx.applies.clone().acquire_owned() => {
                return permit.expect("the apply semaphore is never closed");
            }
            () = tokio::time::sleep(Duration::from_secs(5)) => fleet_shared::progress::tick(),
        }
    }
}

async fn apply_finished(
    ctx: &Context,
    delivery: &Delivery,
    parsed: &BatchMessage,
    summary: &BatchSummary,
    batch: &BatchObject,
) -> Result<Outcome, Failure> {
    let _slot = apply_slot(ctx).await;
    let batch_id = summary.batch_id.as_str();
    let leased = with_lease(
        &ctx.store,
        batch_id,
        ctx.settings.lease_terms(),
        |hold| async move {
            // Another worker may have finished the batch before we got the lease.
            let summary = ctx.services.load_summary(batch_id).await?;
            if summary.status != BatchStatus::Pending {
                return Ok(None);
            }
            let started = Instant::now();
            let report = crate::service::apply(&ctx.services, &summary, batch, &hold).await?;
            metrics::histogram!(m::APPLY_SECONDS).record(started.elapsed().as_secs_f64());
            for (verdict, n) in &report.labels_by_verdict {
                metrics::counter!(m::LABELS, "verdict" => verdict.clone()).increment(*n);
            }
            for (reason, n) in &report.skipped {
                metrics::counter!(m::SKIPPED_RESULTS, "reason" => reason.clone()).increment(*n);
            }
            Ok::<_, Failure>(Some(report.already_done))
        },
    )
    .await?;
    match leased {
        Leased::Busy {
            owner,
            expires_at_ms,
        } => {
            let wait = lease_recheck_delay(clock::now_ms(), expires_at_ms);
            let next = BatchMessage {
                checks: parsed.checks.saturating_add(1),
                ..follow_up(delivery, parsed, summary)
            };
            metrics::counter!(m::LEASE_CONFLICTS).increment(1);
            if !pass_on(ctx, delivery, next, wait, wait).await? {
                return Ok(Outcome::Superseded);
            }
            tracing::info!(holder = %owner, delay_seconds = wait, "lease held by another worker; re-checking after it expires");
            Ok(Outcome::LeaseBusy)
        }
        Leased::Stopped { why } => {
            let seconds = ctx.backoff(delivery.msg.receive_count, None);
            delivery.leave_for(seconds).await;
            tracing::warn!(
                why,
                retry_in_seconds = seconds,
                "apply stopped; message left for later"
            );
            Ok(Outcome::Stopped)
        }
        Leased::Done(Err(failure)) => Err(failure),
        Leased::Done(Ok(None | Some(true))) => {
            tracing::info!("batch already finished");
            delivery.delete().await;
            Ok(Outcome::AlreadyDone)
        }
        Leased::Done(Ok(Some(false))) => {
            // The library logs the applied batch ("batch applied").
            delivery.delete().await;
            Ok(Outcome::Applied)
        }
    }
}
