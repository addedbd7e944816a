//! One message's life, from receipt to its outcome: the heartbeat that keeps it invisible, the
//! deadline measured from the handling's last progress, and what each failure does to the
//! message. What the message asks for (check, re-schedule, apply) is [`crate::process`]; the
//! SQS calls are [`Delivery`]'s.
//!
//! Each handling ends with exactly one `message handled` log line and one
//! `fleet_messages_total{outcome}` increment, a panicking one included ([`on_panic`]).

use std::sync::Arc;
use std::time::Instant;

use fleet_shared::message::BatchMessage;
use fleet_shared::progress::Progress;
use fleet_shared::store::Store;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, field};

use crate::clock;
use crate::delay;
use crate::delivery::{DeadLettered, Delivery};
use crate::errors::{Failure, retry_visibility};
use crate::health::Health;
use crate::heartbeat::Heartbeat;
use crate::metrics as m;
use crate::outcome::Outcome;
use crate::received::Received;
use crate::settings::Settings;

/// What every handler needs.
pub struct Context {
    pub settings: Arc<Settings>,
    pub sqs: aws_sdk_sqs::Client,
    pub store: Store,
    pub services: fleet_shared::finish::Services,
    pub health: Arc<Health>,
    /// Bounds the applies running at once (`MAX_CONCURRENT_APPLIES`).
    pub applies: Arc<Semaphore>,
}

impl Context {
    pub fn delivery(&self, msg: Received) -> Delivery {
        Delivery::new(
            self.sqs.clone(),
            self.settings.common.queue_url.clone(),
            self.settings.common.dead_letter_queue_url.clone(),
            msg,
        )
    }

    /// The back-off of try `attempt` (the receive count, or the deferrals in a row).
    pub(crate) fn backoff(&self, attempt: u32, retry_after: Option<std::time::Duration>) -> u32 {
        retry_visibility(self.settings.retry, attempt, retry_after, &mut rand::rng())
    }
}

/// How the handling's future ended.
enum Ended {
    Done(Result<Outcome, Failure>),
    Stalled,
    Shutdown,
}

/// Handles one message to its outcome. `abandon` is cancelled when the shutdown grace period is
/// over: the message is then made visible again at once for another worker.
pub async fn handle(ctx: Arc<Context>, msg: Received, abandon: CancellationToken) -> Outcome {
    let span = tracing::info_span!(
        "message",
        message_id = %msg.message_id,
        batch_id = field::Empty,
        openai_batch_id = field::Empty,
        receive_count = msg.receive_count,
    );
    handle_in_span(ctx, msg, abandon).instrument(span).await
}

async fn handle_in_span(ctx: Arc<Context>, msg: Received, abandon: CancellationToken) -> Outcome {
    let started = Instant::now();
    let delivery = ctx.delivery(msg);
    let heartbeat = Heartbeat::start(
        delivery.clone(),
        ctx.settings.heartbeat,
        ctx.settings.visibility_timeout_seconds,
    );
    let progress = Progress::new();
    let ended = {
        let work = progress.scope(crate::process::process(&ctx, &delivery));
        tokio::select! {
            biased;
            () = abandon.cancelled() => Ended::Shutdown,
            () = progress.stalled(ctx.settings.message_deadline) => Ended::Stalled,
            result = work => Ended::Done(result),
        }
        // The work is dropped here (a held lease is released by its guard) before anything
        // below touches the message.
    };
    drop(heartbeat);
    let outcome = match ended {
        Ended::Done(Ok(outcome)) => outcome,
        Ended::Done(Err(failure)) => on_failure(&ctx, &delivery, failure).await,
        Ended::Stalled => {
            let seconds = ctx.backoff(delivery.msg.receive_count, None);
            tracing::warn!(
                deadline_seconds = ctx.settings.message_deadline.as_secs(),
                retry_in_seconds = seconds,
                "no progress within the message deadline; abandoned"
            );
            delivery.leave_for(seconds).await;
            Outcome::Abandoned
        }
        Ended::Shutdown => {
            tracing::warn!("shutdown grace period over; message abandoned and made visible");
            delivery.leave_for(0).await;
            Outcome::Abandoned
        }
    };
    outcome.record(started.elapsed());
    outcome
}

/// A handler that panicked: one `message handled` line (outcome `panicked`), the metric, and
/// the message left for a retry with the usual back-off.
pub async fn on_panic(ctx: &Context, msg: Received, started: Instant, panic: &str) {
    let span = tracing::info_span!(
        "message",
        message_id = %msg.message_id,
        batch_id = msg.batch_id().unwrap_or_default(),
        receive_count = msg.receive_count,
    );
    async {
        tracing::error!(panic, "message handler panicked; message left for a retry");
        let delivery = ctx.delivery(msg);
        let seconds = ctx.backoff(delivery.msg.receive_count, None);
        delivery.leave_for(seconds).await;
        Outcome::Panicked.record(started.elapsed());
    }
    .instrument(span)
    .await;
}

async fn on_failure(ctx: &Context, delivery: &Delivery, failure: Failure) -> Outcome {
    metrics::counter!(m::MESSAGE_ERRORS, "class" => failure.class()).increment(1);
    match failure {
        Failure::Transient { error, retry_after } => {
            let seconds = ctx.backoff(delivery.msg.receive_count, retry_after);
            delivery.leave_for(seconds).await;
            tracing::warn!(
                error,
                retry_in_seconds = seconds,
                "transient failure; message left for a retry"
            );
            Outcome::Retried
        }
        Failure::Deployment {
            cause,
            error,
            retry_after,
        } => {
            metrics::counter!(m::DEPLOYMENT_ERRORS, "cause" => cause.as_str()).increment(1);
            ctx.health.deployment_error();
            defer(ctx, delivery, cause.as_str(), &error, retry_after).await
        }
        Failure::Permanent { reason, error } => {
            tracing::warn!(reason, %error, "permanent failure; dead-lettering the message");
            dead_letter(ctx, delivery, reason).await
        }
    }
}

/// An error of the deployment: the batch waits out a back-off that grows with the deferrals in
/// a row, as a fresh copy of its message (same chain token), so no receive count climbs towards
/// the redrive policy while, say, a key is being rotated. Without a parsed body (or if the copy
/// cannot be sent: the queue itself may be what is missing) the message itself is left with the
/// back-off.
async fn defer(
    ctx: &Context,
    delivery: &Delivery,
    cause: &'static str,
    error: &str,
    retry_after: Option<std::time::Duration>,
) -> Outcome {
    let Ok(parsed) = &delivery.msg.parsed else {
        let seconds = ctx.backoff(delivery.msg.receive_count, retry_after);
        delivery.leave_for(seconds).await;
        tracing::warn!(
            cause,
            error,
            retry_in_seconds = seconds,
            "error of the deployment; message left for a retry"
        );
        return Outcome::Deferred;
    };
    let deferrals = parsed.deferrals.saturating_add(1);
    let wait = ctx.backoff(deferrals, retry_after);
    let schedule = delay::schedule(clock::now_secs(), wait);
    // The copy keeps the link's token (the chain is where it was: a tokenless message gets
    // the one it started, if it got that far) and needs no write to our own table, which may be
    // the very thing that is failing. Should the delete below fail, the two copies share one
    // token, and only one of them passes the chain on at the next check.
    let next = BatchMessage {
        deferrals,
        not_before: delay::not_before_text(schedule.not_before),
        chain: delivery.chain().or_else(|| parsed.chain.clone()),
        ..parsed.clone()
    };
    match delivery.send(&next, schedule.delay_seconds).await {
        Ok(()) => {
            delivery.delete().await;
            tracing::warn!(
                cause,
                error,
                deferrals,
                retry_in_seconds = wait,
                "error of the deployment; the batch waits and is never dead-lettered for it"
            );
        }
        Err(e) => {
            let seconds = ctx.backoff(delivery.msg.receive_count, retry_after);
            delivery.leave_for(seconds).await;
            tracing::warn!(cause, error, send_error = %e, retry_in_seconds = seconds, "error of the deployment; message left for a retry");
        }
    }
    Outcome::Deferred
}

/// Marks the batch dead-lettered in its fleet state (the producer then leaves it alone until a
/// replay), then moves the message to the dead-letter queue.
async fn dead_letter(ctx: &Context, delivery: &Delivery, reason: &'static str) -> Outcome {
    if let Some(batch_id) = delivery.msg.batch_id()
        && let Err(e) = ctx
            .store
            .mark_dead_lettered(batch_id, reason, clock::now_ms())
            .await
    {
        // Unmarked, the producer would enqueue it again after the horizon: try again later.
        let seconds = ctx.backoff(delivery.msg.receive_count, None);
        delivery.leave_for(seconds).await;
        tracing::warn!(error = %e, reason, "could not mark the batch dead-lettered; message left for a retry");
        return Outcome::Retried;
    }
    match delivery.dead_letter(reason).await {
        Ok(DeadLettered::Sent) => {
            metrics::counter!(m::DEAD_LETTER_SENDS, "reason" => reason).increment(1);
            tracing::warn!(reason, "message sent to the dead-letter queue");
            Outcome::DeadLettered
        }
        Ok(DeadLettered::LeftToRedrive) => Outcome::DeadLettered,
        Err(e) => {
            let seconds = ctx.backoff(delivery.msg.receive_count, None);
            delivery.leave_for(seconds).await;
            tracing::warn!(error = %e, "could not dead-letter the message; left for a retry");
            Outcome::Retried
        }
    }
}
