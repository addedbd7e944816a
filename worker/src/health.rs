//! What `/healthz` and `/readyz` report: the receive loop's last turn, whether the worker is
//! draining, and whether an error of the deployment (a rejected key, access denied, a missing
//! table or queue) was seen recently. Shared between the loop and the handlers (writers) and
//! the HTTP server (reader) through atomics.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use crate::clock;
use crate::metrics as m;

/// The loop turns at least every 20 s (one long poll) and every few seconds while all slots
/// are busy; three long polls without a turn means it is stuck.
pub const LIVENESS_WINDOW_SECONDS: i64 = 60;

#[derive(Debug)]
pub struct Health {
    last_turn: AtomicI64,
    draining: AtomicBool,
    /// Unix milliseconds of the last error of the deployment; 0 for none.
    last_deployment_error_ms: AtomicI64,
    unready_for_ms: i64,
}

impl Default for Health {
    fn default() -> Self {
        Health::new(std::time::Duration::from_secs(60))
    }
}

impl Health {
    /// `unready_for`: how long `/readyz` fails after an error of the deployment.
    pub fn new(unready_for: std::time::Duration) -> Self {
        Health {
            last_turn: AtomicI64::new(clock::now_secs()),
            draining: AtomicBool::new(false),
            last_deployment_error_ms: AtomicI64::new(0),
            unready_for_ms: i64::try_from(unready_for.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// An error of the deployment was seen now.
    pub fn deployment_error(&self) {
        self.last_deployment_error_ms
            .store(clock::now_ms(), Ordering::Relaxed);
    }

    /// An error of the deployment was seen within the window before `now_ms`.
    pub fn deployment_error_recent_at(&self, now_ms: i64) -> bool {
        let last = self.last_deployment_error_ms.load(Ordering::Relaxed);
        last != 0 && now_ms.saturating_sub(last) < self.unready_for_ms
    }

    /// Called on every turn of the receive loop.
    pub fn turn(&self) {
        let now = clock::now_secs();
        self.last_turn.store(now, Ordering::Relaxed);
        metrics::gauge!(m::LOOP_HEARTBEAT).set(now as f64);
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The loop turned recently (at Unix second `now`).
    pub fn is_live_at(&self, now: i64) -> bool {
        now - self.last_turn.load(Ordering::Relaxed) < LIVENESS_WINDOW_SECONDS
    }

    pub fn is_live(&self) -> bool {
        self.is_live_at(clock::now_secs())
    }

    /// Ready to take work: not draining, and no error of the deployment lately.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && !self.deployment_error_recent_at(clock::now_ms())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_while_the_loop_turns_ready_until_draining() {
        let h = Health::default();
        let now = clock::now_secs();
        assert!(h.is_live_at(now));
        assert!(h.is_live_at(now + 59));
        assert!(!h.is_live_at(now + 61));
        assert!(h.is_ready());
        h.start_draining();
        assert!(!h.is_ready());
        assert!(h.is_live(), "a draining worker is still alive");
    }

    #[test]
    fn unready_for_a_while_after_an_error_of_the_deployment() {
        let h = Health::new(std::time::Duration::from_secs(15));
        let now = clock::now_ms();
        assert!(!h.deployment_error_recent_at(now));
        h.deployment_error();
        assert!(!h.is_ready());
        assert!(h.deployment_error_recent_at(now + 14_000));
        assert!(!h.deployment_error_recent_at(now + 16_000));
        assert!(h.is_live(), "alive all along");
    }
}
