//! The receive loop and the drain.
//!
//! One loop long-polls the work queue and hands each message to its own task; a semaphore
//! bounds the tasks at `MAX_IN_FLIGHT`, and the loop asks SQS for no more messages than there
//! are free slots, so nothing waits unseen in this process while its visibility runs down.
//! On shutdown the loop stops at once, the tasks get `SHUTDOWN_GRACE_SECONDS` to finish, and
//! the rest are abandoned: their messages are made visible again for another worker.
//!
//! A long poll in flight at shutdown is not simply dropped while handlers are still running:
//! SQS (and moto) keep a dropped poll open on their side until its wait ends, and a message made
//! visible meanwhile — one of our own abandoned messages, above all — is delivered to that
//! dead connection and stays invisible for a whole visibility timeout. So the poll is kept, and
//! whatever it brings is handed back at once (visibility 0), before the worker exits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use aws_sdk_sqs::types::MessageSystemAttributeName;
use fleet_shared::queue::{self, QueueError};
use fleet_shared::store::Store;
use futures::FutureExt as _;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::handler::{self, Context};
use crate::health::Health;
use crate::metrics as m;
use crate::received::Received;
use crate::settings::Settings;
use crate::{http, idle};

/// SQS's longest long poll.
pub const WAIT_TIME_SECONDS: i32 = 20;
/// SQS's most messages per receive.
pub const MAX_MESSAGES_PER_RECEIVE: usize = 10;
/// While every slot is busy the loop still turns this often, so `/healthz` stays fresh.
pub const BUSY_TURN: Duration = Duration::from_secs(5);
/// After the grace period, how long abandoned handlers get to hand their messages back.
pub const ABANDON_TIMEOUT: Duration = Duration::from_secs(10);

/// What the worker talks to.
pub struct Deps {
    pub sqs: aws_sdk_sqs::Client,
    pub store: Store,
    pub service: fleet_shared::finish::Services,
    pub metrics: PrometheusHandle,
}

/// A started worker.
#[derive(Debug)]
pub struct Running {
    /// Where `/metrics`, `/healthz` and `/readyz` answer (the bound port when
    /// `METRICS_ADDR` asked for port 0).
    pub metrics_addr: SocketAddr,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Waits until the worker has stopped (shutdown, or idle with `--exit-when-idle`) and
    /// drained.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("worker task panicked")?
    }
}

/// Binds the HTTP server and starts consuming; returns once both are running.
pub async fn start(
    settings: Settings,
    deps: Deps,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let listener = tokio::net::TcpListener::bind(settings.metrics_addr)
        .await
        .with_context(|| format!("binding METRICS_ADDR {}", settings.metrics_addr))?;
    let metrics_addr = listener.local_addr()?;
    tracing::info!(http_addr = %metrics_addr, "serving /metrics, /healthz and /readyz");
    let health = Arc::new(Health::new(settings.unready_after_deployment_error));
    let http_stop = CancellationToken::new();
    let server = tokio::spawn(http::serve(
        listener,
        deps.metrics.clone(),
        health.clone(),
        http_stop.clone(),
    ));
    let ctx = Arc::new(Context {
        applies: Arc::new(Semaphore::new(settings.max_concurrent_applies)),
        settings: Arc::new(settings),
        sqs: deps.sqs,
        store: deps.store,
        services: deps.service,
        health,
    });
    let task = tokio::spawn(async move {
        let result = consume(ctx, shutdown).await;
        http_stop.cancel();
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "metrics server failed"),
            Err(e) => tracing::warn!(error = %e, "metrics server task failed"),
        }
        result
    });
    Ok(Running { metrics_addr, task })
}

/// Runs the worker until `shutdown` is cancelled (or, with `--exit-when-idle`, the queue is
/// idle), then drains. Returns `Ok` after a clean drain, also when messages were abandoned.
pub async fn run(
    settings: Settings,
    deps: Deps,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    start(settings, deps, shutdown).await?.wait().await
}

async fn consume(ctx: Arc<Context>, shutdown: CancellationToken) -> anyhow::Result<()> {
    let settings = ctx.settings.clone();
    let health = ctx.health.clone();
    // The idle watcher stops the loop through a child token: the caller's token stays theirs.
    let stop = shutdown.child_token();
    let slots = Arc::new(Semaphore::new(settings.max_in_flight));
    let held = Arc::new(AtomicUsize::new(0));
    let tasks = TaskTracker::new();
    let abandon = CancellationToken::new();
    if settings.exit_when_idle {
        tokio::spawn(idle::watch(
            ctx.sqs.clone(),
            settings.common.queue_url.clone(),
            held.clone(),
            stop.clone(),
        ));
    }

    let mut receive_failures: u32 = 0;
    // The long poll in flight when the loop stopped, if any.
    let mut outstanding: Option<Poll> = None;
    loop {
        health.turn();
        let first = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            permit = tokio::time::timeout(BUSY_TURN, slots.clone().acquire_owned()) => match permit {
                Ok(Ok(permit)) => permit,
                Ok(Err(_closed)) => break,
                Err(_all_busy) => continue,
            },
        };
        let mut permits = vec![first];
        while permits.len() < MAX_MESSAGES_PER_RECEIVE {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let mut polling = tokio::spawn(receive(ctx.clone(), permits.len()));
        let received = tokio::select! {
            biased;
            () = stop.cancelled() => {
                outstanding = Some(polling);
                break;
            }
            r = &mut polling => r.unwrap_or_else(|e| Err(QueueError::Transient {
                op: "ReceiveMessage",
                message: format!("the receive task ended: {e}"),
            })),
        };
        match received {
            Ok(messages) => {
                receive_failures = 0;
                for message in messages {
                    let Some(permit) = permits.pop() else { break };
                    spawn_handler(&tasks, &ctx, message, permit, &held, &abandon);
                }
            }
            Err(e) => {
                receive_failures = receive_failures.saturating_add(1);
                let pause = Duration::from_secs(1u64 << (receive_failures.min(5) - 1))
                    .min(Duration::from_secs(20));
                metrics::counter!(m::RECEIVE_ERRORS).increment(1);
                tracing::warn!(error = %e, retry_in_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX), "receive failed");
                drop(permits);
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }

    health.start_draining();
    let in_hand = held.load(Ordering::SeqCst);
    // With nothing in hand no message of ours can turn visible: the poll may go (unless it
    // has just brought messages, which are handed back).
    let outstanding = match outstanding {
        Some(poll) if in_hand == 0 && !poll.is_finished() => {
            poll.abort();
            None
        }
        other => other,
    };
    tracing::info!(
        in_flight = in_hand,
        grace_seconds = settings.shutdown_grace.as_secs(),
        "stopped receiving; draining"
    );
    tasks.close();
    if tokio::time::timeout(settings.shutdown_grace, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = held.load(Ordering::SeqCst),
            "grace period over; abandoning unfinished messages"
        );
        abandon.cancel();
        if tokio::time::timeout(ABANDON_TIMEOUT, tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "some abandoned messages were not handed back; they reappear after their visibility timeout"
            );
        }
    }
    if let Some(poll) = outstanding {
        hand_back_late(&ctx, poll).await;
    }
    // Leases of handlings dropped half-way are being handed back: wait for those sends.
    let releases = crate::lease::pending_releases();
    releases.close();
    if tokio::time::timeout(ABANDON_TIMEOUT, releases.wait())
        .await
        .is_err()
    {
        tracing::warn!("some leases were not released; they run out by themselves");
    }
    tracing::info!("drained; worker stopped");
    Ok(())
}

/// A long poll running on its own task.
type Poll = JoinHandle<Result<Vec<aws_sdk_sqs::types::Message>, QueueError>>;

/// Waits for the long poll left in flight at shutdown (it ends within its wait time) and
/// makes whatever it received visible again at once: this worker will not handle it.
async fn hand_back_late(ctx: &Context, poll: Poll) {
    let wait = Duration::from_secs(u64::from(WAIT_TIME_SECONDS.unsigned_abs())) + ABANDON_TIMEOUT;
    let messages = match tokio::time::timeout(wait, poll).await {
        Ok(Ok(Ok(messages))) => messages,
        Ok(Ok(Err(e))) => {
            tracing::debug!(error = %e, "the last receive failed while draining");
            return;
        }
        Ok(Err(_)) | Err(_) => return,
    };
    for message in messages {
        // Received::from_sqs gives up only on a message without a receipt handle: nothing
        // to hand back then.
        if let Some(msg) = Received::from_sqs(message) {
            tracing::info!(message_id = %msg.message_id, "message received while draining; handed back");
            ctx.delivery(msg).leave_for(0).await;
        }
    }
}

/// One long poll for up to `max` messages. It owns its context: it is spawned, so that at
/// shutdown it can be kept after the loop has stopped.
async fn receive(
    ctx: Arc<Context>,
    max: usize,
) -> Result<Vec<aws_sdk_sqs::types::Message>, QueueError> {
    let out = ctx
        .sqs
        .receive_message()
        .queue_url(&ctx.settings.common.queue_url)
        .max_number_of_messages(i32::try_from(max).unwrap_or(1))
        .wait_time_seconds(WAIT_TIME_SECONDS)
        .visibility_timeout(
            i32::try_from(ctx.settings.visibility_timeout_seconds).unwrap_or(i32::MAX),
        )
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
        .send()
        .await
        .map_err(|e| queue::classify("ReceiveMessage", e))?;
    Ok(out.messages.unwrap_or_default())
}

/// Keeps `fleet_in_flight_messages` and the idle watcher's count right however a handler ends.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(held: &Arc<AtomicUsize>) -> Self {
        held.fetch_add(1, Ordering::SeqCst);
        metrics::gauge!(m::IN_FLIGHT).increment(1.0);
        InFlight(held.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!(m::IN_FLIGHT).decrement(1.0);
    }
}

fn spawn_handler(
    tasks: &TaskTracker,
    ctx: &Arc<Context>,
    message: aws_sdk_sqs::types::Message,
    permit: OwnedSemaphorePermit,
    held: &Arc<AtomicUsize>,
    abandon: &CancellationToken,
) {
    let Some(msg) = Received::from_sqs(message) else {
        tracing::warn!("received a message without a receipt handle; ignored");
        return;
    };
    let guard = InFlight::enter(held);
    let ctx = ctx.clone();
    let abandon = abandon.clone();
    tasks.spawn(async move {
        let _permit = permit;
        let _guard = guard;
        let started = std::time::Instant::now();
        let kept = msg.clone();
        if let Err(panic) = caught(handler::handle(ctx.clone(), msg, abandon)).await {
            handler::on_panic(&ctx, kept, started, &panic).await;
        }
    });
}

/// Runs a handler, turning a panic into its message: one message's bug must not take the
/// process (and every other message in flight) down with it.
async fn caught<T>(handling: impl std::future::Future<Output = T>) -> Result<T, String> {
    std::panic::AssertUnwindSafe(handling)
        .catch_unwind()
        .await
        .map_err(|panic| {
            panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_owned())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_is_caught_with_its_message() {
        assert_eq!(caught(async { 7 }).await, Ok(7));
        let id = 42;
        let panicked = caught(async move {
            if id == 42 {
                panic!("bad batch {id}");
            }
        })
        .await;
        assert_eq!(panicked, Err("bad batch 42".to_owned()));
        let panicked = caught(async { std::panic::panic_any(5u8) }).await;
        assert_eq!(panicked, Err("(no message)".to_owned()));
    }
}
