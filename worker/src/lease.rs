//! Holding a batch's apply lease: one applier per batch (docs/spec/fleet-design.md).
//!
//! - The owner is a fresh random token per handling, so two deliveries of one message to one
//!   worker cannot both hold the lease.
//! - Renewals run on a task of their own, every `renew_every`, never behind an SQS call.
//! - The holder stops on its own once its last successful renewal is older than the lease
//!   length less a margin, whether or not a renewal failed loudly: the work is dropped, and the
//!   [`Fence`] it runs behind refuses every further call (a process frozen past its lease and
//!   thawed cannot land one more write, whichever task the runtime polls first).
//! - A renewal answered "not yours" stops the work at once.

use std::future::Future;
use std::time::Duration;

use fleet_shared::fence::Fence;
use fleet_shared::store::{LeaseOutcome, Store, StoreError};
use tokio::time::{Instant, MissedTickBehavior, interval_at};
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tracing::Instrument;

use crate::clock;
use crate::metrics as m;

/// What keeps leases: the store in production, a scripted fake under paused time in tests.
pub trait LeaseBackend: Clone + Send + Sync + 'static {
    fn acquire(
        &self,
        batch_id: &str,
        owner: &str,
        ttl_ms: i64,
    ) -> impl Future<Output = Result<LeaseOutcome, StoreError>> + Send;
    /// `Ok(false)`: the lease is no longer ours.
    fn renew(
        &self,
        batch_id: &str,
        owner: &str,
        ttl_ms: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn release(
        &self,
        batch_id: &str,
        owner: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

impl LeaseBackend for Store {
    async fn acquire(
        &self,
        batch_id: &str,
        owner: &str,
        ttl_ms: i64,
    ) -> Result<LeaseOutcome, StoreError> {
        self.acquire_lease(batch_id, owner, ttl_ms, clock::now_ms())
            .await
    }
    async fn renew(&self, batch_id: &str, owner: &str, ttl_ms: i64) -> Result<bool, StoreError> {
        self.renew_lease(batch_id, owner, ttl_ms, clock::now_ms())
            .await
    }
    async fn release(&self, batch_id: &str, owner: &str) -> Result<bool, StoreError> {
        self.release_lease(batch_id, owner).await
    }
}

/// How a lease is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTerms {
    /// The lease's length from each acquire or renewal.
    pub ttl: Duration,
    pub renew_every: Duration,
    /// The holder stops this long before the lease could run out: room for a write already
    /// on its way and for clocks that disagree a little.
    pub margin: Duration,
}

impl LeaseTerms {
    /// A quarter of the lease as margin: with renewals every third of it, one failed renewal
    /// is survived, two are not.
    pub fn new(ttl: Duration, renew_every: Duration) -> Self {
        LeaseTerms {
            ttl,
            renew_every,
            margin: ttl / 4,
        }
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    /// How long the holder may act after a renewal sent at some instant.
    fn usable(&self) -> Duration {
        self.ttl.saturating_sub(self.margin)
    }
}

/// What the work gets: who holds the lease, and a token cancelled when it is lost.
#[derive(Debug, Clone)]
pub struct LeaseHold {
    pub owner: String,
    pub stop: CancellationToken,
}

/// How holding the lease ended.
#[derive(Debug)]
pub enum Leased<T> {
    /// Someone else holds it.
    Busy { owner: String, expires_at_ms: i64 },
    /// The work ran to its end while the lease was ours.
    Done(T),
    /// The lease was lost or could not be renewed in time: the work was dropped.
    Stopped { why: &'static str },
}

/// Takes the batch's lease under a fresh owner token, runs `work` while it is held, and
/// releases it. Errors are the acquire's only.
pub async fn with_lease<B, F, Fut, T>(
    backend: &B,
    batch_id: &str,
    terms: LeaseTerms,
    work: F,
) -> Result<Leased<T>, StoreError>
where
    B: LeaseBackend,
    F: FnOnce(LeaseHold) -> Fut,
    Fut: Future<Output = T>,
{
    let owner = fleet_shared::message::new_chain_token();
    let asked_at = Instant::now();
    match backend.acquire(batch_id, &owner, terms.ttl_ms()).await? {
        LeaseOutcome::Acquired { .. } => {}
        LeaseOutcome::HeldBy {
            owner,
            expires_at_ms,
        } => {
            return Ok(Leased::Busy {
                owner,
                expires_at_ms,
            });
        }
    }
    let mut guard = ReleaseGuard {
        backend: backend.clone(),
        batch_id: batch_id.to_owned(),
        owner: owner.clone(),
        armed: true,
    };
    let fence = Fence::new(terms.usable().saturating_sub(asked_at.elapsed()));
    let lost = CancellationToken::new();
    let keeper = AbortOnDropHandle::new(tokio::spawn(
        keep(
            backend.clone(),
            batch_id.to_owned(),
            owner.clone(),
            terms,
            fence.clone(),
            lost.clone(),
        )
        .instrument(tracing::Span::current()),
    ));
    let hold = LeaseHold {
        owner: owner.clone(),
        stop: lost.clone(),
    };
    let outcome = tokio::select! {
        biased;
        () = lost.cancelled() => Leased::Stopped { why: "lease taken over" },
        () = fence.closed() => Leased::Stopped { why: "lease not renewed in time" },
        done = fence.scope(work(hold)) => {
            // Work that ended because its calls hit the closed fence did not finish.
            if fence.is_open() { Leased::Done(done) } else { Leased::Stopped { why: "lease not renewed in time" } }
        }
    };
    drop(keeper);
    if let Leased::Stopped { why } = &outcome {
        lost.cancel();
        metrics::counter!(m::LEASES_LOST).increment(1);
        tracing::warn!(
            why,
            "apply stopped: the lease may belong to another worker now"
        );
    }
    guard.armed = false;
    release(backend, batch_id, &owner).await;
    Ok(outcome)
}

async fn release<B: LeaseBackend>(backend: &B, batch_id: &str, owner: &str) {
    match backend.release(batch_id, owner).await {
        Ok(true) => {}
        Ok(false) => tracing::debug!("lease was no longer ours at release"),
        // It runs out by itself within one lease length.
        Err(e) => tracing::warn!(error = %e, "could not release the lease"),
    }
}

/// The releases of holdings dropped half-way, still being sent: the shutdown drain waits for
/// them (bounded), so a worker that abandons its handlings at exit still hands their leases
/// back and the next worker need not wait one lease length.
pub fn pending_releases() -> &'static TaskTracker {
    static RELEASES: std::sync::LazyLock<TaskTracker> = std::sync::LazyLock::new(TaskTracker::new);
    &RELEASES
}

/// Releases the lease when the holding is dropped half-way (the message deadline, shutdown),
/// so the next worker need not wait for it to run out; tracked by [`pending_releases`].
struct ReleaseGuard<B: LeaseBackend> {
    backend: B,
    batch_id: String,
    owner: String,
    armed: bool,
}

impl<B: LeaseBackend> Drop for ReleaseGuard<B> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (backend, batch_id, owner) = (
            self.backend.clone(),
            std::mem::take(&mut self.batch_id),
            std::mem::take(&mut self.owner),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            pending_releases().spawn_on(
                async move { release(&backend, &batch_id, &owner).await }
                    .instrument(tracing::Span::current()),
                &runtime,
            );
        }
    }
}

/// Renews the lease every `renew_every`, each renewal bounded by the same period; moves the
/// fence forward from the instant each successful renewal was sent.
async fn keep<B: LeaseBackend>(
    backend: B,
    batch_id: String,
    owner: String,
    terms: LeaseTerms,
    fence: Fence,
    lost: CancellationToken,
) {
    let mut ticker = interval_at(Instant::now() + terms.renew_every, terms.renew_every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let sent_at = Instant::now();
        let renewal = tokio::time::timeout(
            terms.renew_every,
            backend.renew(&batch_id, &owner, terms.ttl_ms()),
        )
        .await;
        match renewal {
            Ok(Ok(true)) => {
                fence.extend_to(sent_at + terms.usable());
                tracing::debug!(%batch_id, "lease renewed");
            }
            Ok(Ok(false)) => {
                fence.close();
                lost.cancel();
                return;
            }
            Ok(Err(e)) => {
                metrics::counter!(m::HEARTBEAT_ERRORS, "kind" => "lease").increment(1);
                tracing::warn!(error = %e, "could not renew the lease; trying again at the next beat");
            }
            Err(_elapsed) => {
                metrics::counter!(m::HEARTBEAT_ERRORS, "kind" => "lease").increment(1);
                tracing::warn!("lease renewal timed out; trying again at the next beat");
            }
        }
    }
}

#[cfg(test)]
#[path = "lease_tests.rs"]
mod tests;
