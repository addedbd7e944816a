//! How the handling of one message ended: the `outcome` label of `fleet_messages_total`, and
//! the one `message handled` line each handling logs.

use std::time::Duration;

use crate::metrics as m;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A finished batch was applied.
    Applied,
    /// The next check (or hop of a long wait) was scheduled.
    Rechecked,
    /// Sent to the dead-letter queue (or left to the redrive policy without one).
    DeadLettered,
    /// A transient failure: left in the queue with a back-off visibility.
    Retried,
    /// An error of the deployment: a fresh copy waits out the back-off; nothing dead-lettered.
    Deferred,
    /// No progress for the deadline, or shutdown: left in the queue unfinished.
    Abandoned,
    /// The batch was already finished (by an earlier run or another worker).
    AlreadyDone,
    /// Another worker holds the batch's lease: re-checked after it expires.
    LeaseBusy,
    /// The lease was lost or not renewed in time: the apply stopped, the message waits.
    Stopped,
    /// A stale copy of the batch's chain: deleted without work.
    Superseded,
    /// The handler panicked: the message waits for a retry.
    Panicked,
}

impl Outcome {
    pub const ALL: [Outcome; 11] = [
        Outcome::Applied,
        Outcome::Rechecked,
        Outcome::DeadLettered,
        Outcome::Retried,
        Outcome::Deferred,
        Outcome::Abandoned,
        Outcome::AlreadyDone,
        Outcome::LeaseBusy,
        Outcome::Stopped,
        Outcome::Superseded,
        Outcome::Panicked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Rechecked => "rechecked",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Retried => "retried",
            Outcome::Deferred => "deferred",
            Outcome::Abandoned => "abandoned",
            Outcome::AlreadyDone => "already_done",
            Outcome::LeaseBusy => "lease_busy",
            Outcome::Stopped => "stopped",
            Outcome::Superseded => "superseded",
            Outcome::Panicked => "panicked",
        }
    }

    /// One metric increment, one histogram sample and one `message handled` line.
    pub fn record(self, elapsed: Duration) {
        metrics::counter!(m::MESSAGES, "outcome" => self.as_str()).increment(1);
        metrics::histogram!(m::MESSAGE_HANDLING_SECONDS).record(elapsed.as_secs_f64());
        tracing::info!(
            outcome = self.as_str(),
            elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            "message handled"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_documented_ones() {
        let labels: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            labels,
            [
                "applied",
                "rechecked",
                "dead_lettered",
                "retried",
                "deferred",
                "abandoned",
                "already_done",
                "lease_busy",
                "stopped",
                "superseded",
                "panicked"
            ]
        );
    }
}
