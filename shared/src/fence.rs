//! The lease fence: once a handling's lease may have passed to another worker, the calls it
//! makes fail before they are sent (docs/spec/fleet-design.md: "the holder stops writing on its own once
//! its last successful renewal is older than the lease length less a margin").
//!
//! The worker opens a [`Fence`] when it takes a batch's lease and moves it forward with every
//! successful renewal; the apply runs inside [`Fence::scope`]. The AWS clients' interceptor
//! (`crate::aws`) and the HTTP clients call [`check`] before every attempt, so a holder that was
//! frozen (a paused process, a stalled node) and wakes up after its lease ran out cannot land
//! one more write, whichever of its tasks the runtime polls first.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

tokio::task_local! {
    static CURRENT: Fence;
}

/// Until when the holder may still call out. Clones share the bound.
#[derive(Debug, Clone)]
pub struct Fence {
    origin: Instant,
    /// Milliseconds after `origin`; 0 once closed.
    open_until_ms: Arc<AtomicU64>,
}

/// A call refused because the lease may belong to someone else by now.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the batch's lease may have passed to another worker; call not made")]
pub struct FenceClosed;

impl Fence {
    /// A fence open for `open_for` from now.
    pub fn new(open_for: Duration) -> Self {
        let origin = Instant::now();
        Fence {
            origin,
            open_until_ms: Arc::new(AtomicU64::new(millis(open_for).max(1))),
        }
    }

    /// Keeps the fence open until `until` (never moves it back; a closed fence stays closed).
    pub fn extend_to(&self, until: Instant) {
        let ms = millis(until.saturating_duration_since(self.origin));
        let _ = self
            .open_until_ms
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |cur| {
                (cur != 0 && ms > cur).then_some(ms)
            });
    }

    /// Closes the fence for good (the lease was taken over).
    pub fn close(&self) {
        self.open_until_ms.store(0, Ordering::SeqCst);
    }

    /// When the fence closes (in the past once closed).
    pub fn open_until(&self) -> Instant {
        self.origin + Duration::from_millis(self.open_until_ms.load(Ordering::SeqCst))
    }

    pub fn is_open(&self) -> bool {
        self.open_until_ms.load(Ordering::SeqCst) != 0 && Instant::now() < self.open_until()
    }

    /// Resolves once the fence is closed or its bound has passed.
    pub async fn closed(&self) {
        while self.is_open() {
            tokio::time::sleep_until(self.open_until()).await;
        }
    }

    /// Runs `fut` behind this fence: [`check`] inside it answers for this fence.
    pub fn scope<F: Future>(&self, fut: F) -> impl Future<Output = F::Output> + use<F> {
        CURRENT.scope(self.clone(), fut)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `Err` when the caller runs behind a closed fence; `Ok` behind an open one or none.
pub fn check() -> Result<(), FenceClosed> {
    match CURRENT.try_with(Fence::is_open) {
        Ok(false) => Err(FenceClosed),
        _ => Ok(()),
    }
}

/// The current fence, to carry into a task spawned elsewhere.
pub fn current() -> Option<Fence> {
    CURRENT.try_with(Fence::clone).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn open_until_its_bound_moves_forward_only_and_closes_for_good() {
        let f = Fence::new(Duration::from_secs(10));
        assert!(f.is_open());
        f.extend_to(Instant::now() + Duration::from_secs(5));
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(f.is_open(), "an earlier bound does not shorten it");
        f.extend_to(Instant::now() + Duration::from_secs(10));
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(f.is_open());
        f.scope(async { assert!(check().is_ok()) }).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!f.is_open());
        f.scope(async { assert!(check().is_err()) }).await;
        assert!(check().is_ok(), "no fence, no refusal");

        let g = Fence::new(Duration::from_secs(10));
        g.close();
        g.extend_to(Instant::now() + Duration::from_secs(100));
        assert!(!g.is_open(), "closed stays closed");
        g.closed().await;
    }

    #[tokio::test(start_paused = true)]
    async fn closed_resolves_at_the_latest_bound() {
        let f = Fence::new(Duration::from_secs(10));
        let started = Instant::now();
        let g = f.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(8)).await;
            g.extend_to(Instant::now() + Duration::from_secs(10));
        });
        f.closed().await;
        assert_eq!(started.elapsed().as_secs(), 18);
    }
}
