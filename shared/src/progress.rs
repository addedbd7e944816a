//! The progress of one message's handling, for its deadline (docs/spec/fleet-design.md: the deadline
//! runs from the last progress of the handling's own work, not from its start).
//!
//! The handling sets a [`Progress`] as a tokio task-local with [`Progress::scope`]; the store
//! and the HTTP clients call [`tick`] after every call that succeeded. Code running outside such
//! a scope (the producer, the heartbeat's renewals on their own task) ticks nothing, which is
//! the point: a renewal must not keep a hung apply alive.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

tokio::task_local! {
    static CURRENT: Progress;
}

/// When the handling last made progress. Cheap to clone; clones share the instant.
#[derive(Debug, Clone)]
pub struct Progress {
    origin: Instant,
    /// Milliseconds after `origin` of the last tick.
    last_ms: Arc<AtomicU64>,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    /// Starts with progress "now".
    pub fn new() -> Self {
        Progress {
            origin: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Records progress now.
    pub fn tick(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long since the last progress.
    pub fn idle_for(&self) -> Duration {
        let since_origin = self.origin.elapsed();
        since_origin.saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }

    /// When the handling goes `limit` without progress (it moves as progress is made).
    pub fn deadline(&self, limit: Duration) -> Instant {
        self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + limit
    }

    /// Runs `fut` with this as the current progress: [`tick`] inside it records here.
    pub fn scope<F: Future>(&self, fut: F) -> impl Future<Output = F::Output> + use<F> {
        CURRENT.scope(self.clone(), fut)
    }

    /// Resolves once `limit` has passed without progress.
    pub async fn stalled(&self, limit: Duration) {
        loop {
            let deadline = self.deadline(limit);
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// Records progress of the current handling, if the caller runs inside one.
pub fn tick() {
    let _ = CURRENT.try_with(Progress::tick);
}

/// The current handling's progress, to carry into a task spawned elsewhere.
pub fn current() -> Option<Progress> {
    CURRENT.try_with(Progress::clone).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ticks_push_the_deadline_back() {
        let p = Progress::new();
        let limit = Duration::from_secs(10);
        let work = p.scope(async {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(8)).await;
                tick();
            }
        });
        let started = Instant::now();
        tokio::select! {
            () = p.stalled(limit) => panic!("stalled while ticking"),
            () = work => {}
        }
        assert_eq!(
            started.elapsed().as_secs(),
            40,
            "40 s of work, never 10 s idle"
        );
        p.stalled(limit).await;
        assert_eq!(started.elapsed().as_secs(), 50, "10 s after the last tick");
        assert_eq!(p.idle_for().as_secs(), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn ticks_outside_a_scope_count_nowhere() {
        let p = Progress::new();
        tokio::time::sleep(Duration::from_secs(5)).await;
        tick();
        assert_eq!(p.idle_for().as_secs(), 5);
        assert!(current().is_none());
        p.scope(async { assert!(current().is_some()) }).await;
    }
}
