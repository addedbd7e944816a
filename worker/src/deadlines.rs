//! Batches that take too long: stuck in `validating` (reported) and still running well past
//! their completion window (cancelled at OpenAI, then handled as they end). Pure: the clock is
//! an input.

use std::time::Duration;

use fleet_shared::openai::{BatchObject, OpenAiStatus};

/// docs/spec/processing-rules.md: "A batch still not terminal one hour after its `expires_at` is
/// cancelled at OpenAI and handled as it then ends."
pub const CANCEL_AFTER_EXPIRY_SECONDS: i64 = 3600;

/// Seconds the batch has been validating since it was submitted, when that exceeds `limit`.
pub fn stuck_validating(
    batch: &BatchObject,
    submitted_at: i64,
    now: i64,
    limit: Duration,
) -> Option<u64> {
    if batch.status != OpenAiStatus::Validating {
        return None;
    }
    let since = u64::try_from(now.saturating_sub(submitted_at)).unwrap_or(0);
    (since > limit.as_secs()).then_some(since)
}

/// The batch should have ended more than an hour ago and no cancel is under way.
pub fn overdue_for_cancel(batch: &BatchObject, now: i64) -> bool {
    !batch.status.is_terminal()
        && batch.status != OpenAiStatus::Cancelling
        && batch
            .expires_at
            .is_some_and(|expires_at| now > expires_at.saturating_add(CANCEL_AFTER_EXPIRY_SECONDS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(status: &str, expires_at: Option<i64>) -> BatchObject {
        serde_json::from_value(serde_json::json!({
            "id": "batch_1", "status": status, "expires_at": expires_at
        }))
        .unwrap()
    }

    #[test]
    fn stuck_only_while_validating_past_the_limit() {
        let limit = Duration::from_secs(300);
        let v = batch("validating", None);
        assert_eq!(stuck_validating(&v, 1000, 1300, limit), None);
        assert_eq!(stuck_validating(&v, 1000, 1301, limit), Some(301));
        assert_eq!(stuck_validating(&v, 2000, 1000, limit), None, "clock skew");
        let p = batch("in_progress", None);
        assert_eq!(stuck_validating(&p, 0, 100_000, limit), None);
    }

    #[test]
    fn cancelled_an_hour_after_expiry_unless_already_ending() {
        let e = 10_000;
        assert!(!overdue_for_cancel(
            &batch("in_progress", Some(e)),
            e.saturating_add(3600)
        ));
        assert!(overdue_for_cancel(&batch("in_progress", Some(e)), e + 3601));
        assert!(overdue_for_cancel(&batch("validating", Some(e)), e + 7200));
        assert!(overdue_for_cancel(&batch("finalizing", Some(e)), e + 7200));
        assert!(overdue_for_cancel(&batch("paused", Some(e)), e + 7200));
        assert!(!overdue_for_cancel(&batch("cancelling", Some(e)), e + 7200));
        assert!(!overdue_for_cancel(&batch("completed", Some(e)), e + 7200));
        assert!(!overdue_for_cancel(&batch("expired", Some(e)), e + 7200));
        assert!(!overdue_for_cancel(&batch("in_progress", None), i64::MAX));
    }
}
