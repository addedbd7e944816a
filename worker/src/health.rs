//! What `/healthz` and `/readyz` report: the receive loop's last turn and whether the worker is
//! draining. Shared between the loop (writer) and the HTTP server (reader) through atomics.

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
}

impl Default for Health {
    fn default() -> Self {
        Health {
            last_turn: AtomicI64::new(clock::now_secs()),
            draining: AtomicBool::new(false),
        }
    }
}

impl Health {
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

    /// Ready to take work: not draining.
    pub fn is_ready(&self) -> bool {
        !self.is_draining()
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
}
