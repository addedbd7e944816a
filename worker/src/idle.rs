//! `--exit-when-idle`: stop once the work queue is empty and this worker holds nothing.
//!
//! Queue depths are approximate and a handler may be about to send a follow-up message, so
//! one empty reading is not enough: the queue must be seen empty twice in a row, a little
//! apart, with nothing in this worker's hands either time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Time between two idle readings.
pub const IDLE_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Empty readings in a row that count as idle.
pub const IDLE_READINGS: u32 = 2;

/// Counts consecutive idle readings.
#[derive(Debug, Default, Clone, Copy)]
pub struct IdleTracker {
    streak: u32,
}

impl IdleTracker {
    /// `held`: messages this worker is handling; `queue_total`: visible + in flight + delayed,
    /// `None` when it could not be read. True once idle.
    pub fn observe(&mut self, held: usize, queue_total: Option<u64>) -> bool {
        if held == 0 && queue_total == Some(0) {
            self.streak += 1;
        } else {
            self.streak = 0;
        }
        self.streak >= IDLE_READINGS
    }
}

/// Cancels `stop` once the queue has been idle; returns early when `stop` is cancelled.
pub async fn watch(
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    held: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    let mut tracker = IdleTracker::default();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(IDLE_CHECK_INTERVAL) => {}
        }
        let holding = held.load(Ordering::SeqCst);
        let total = if holding == 0 {
            match fleet_shared::queue::queue_depth(&sqs, &queue_url).await {
                Ok(depth) => Some(depth.total()),
                Err(e) => {
                    tracing::warn!(error = %e, "could not read the queue depth");
                    None
                }
            }
        } else {
            None
        };
        if tracker.observe(holding, total) {
            tracing::info!("work queue idle and nothing in hand; stopping (--exit-when-idle)");
            stop.cancel();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_after_two_empty_readings_in_a_row() {
        let mut t = IdleTracker::default();
        assert!(!t.observe(0, Some(0)));
        assert!(t.observe(0, Some(0)));

        let mut t = IdleTracker::default();
        assert!(!t.observe(0, Some(0)));
        assert!(
            !t.observe(1, Some(0)),
            "a message in hand resets the streak"
        );
        assert!(!t.observe(0, Some(0)));
        assert!(
            !t.observe(0, Some(3)),
            "delayed or visible messages reset it"
        );
        assert!(!t.observe(0, Some(0)));
        assert!(!t.observe(0, None), "an unreadable depth is not idle");
        assert!(!t.observe(0, Some(0)));
        assert!(t.observe(0, Some(0)));
    }
}
