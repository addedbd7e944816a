//! How a failed message is treated: transient failures leave the message in the queue with a
//! visibility backoff (so the redrive policy dead-letters only what keeps failing); permanent
//! ones send it to the dead-letter queue at once.

use std::time::Duration;

use fleet_shared::queue::QueueError;
use fleet_shared::store::StoreError;
use rand::Rng;

use crate::service::ServiceError;
use crate::settings::{MAX_VISIBILITY_SECONDS, RetryBounds};

/// Why handling a message stopped short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Worth another try later, no sooner than `retry_after` when the remote side said so.
    Transient {
        error: String,
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help: dead-letter with this bounded reason.
    Permanent { reason: &'static str, error: String },
}

impl Failure {
    /// The `class` label of `fleet_message_errors_total`.
    pub fn class(&self) -> &'static str {
        match self {
            Failure::Transient { .. } => "transient",
            Failure::Permanent { .. } => "permanent",
        }
    }

    pub fn transient(error: impl Into<String>) -> Self {
        Failure::Transient {
            error: error.into(),
            retry_after: None,
        }
    }

    pub fn from_service<E: ServiceError>(e: &E) -> Self {
        if e.is_transient() {
            Failure::Transient {
                error: e.to_string(),
                retry_after: e.retry_after(),
            }
        } else {
            Failure::Permanent {
                reason: e.reason(),
                error: e.to_string(),
            }
        }
    }
}

// Our own queue and table calls fail permanently only when the deployment is wrong (no such
// queue, access denied), which no message is to blame for: dead-lettering every message would
// empty the queue into the dead-letter queue. They are retried, and the redrive policy
// catches what never recovers.
impl From<QueueError> for Failure {
    fn from(e: QueueError) -> Self {
        Failure::transient(e.to_string())
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::transient(e.to_string())
    }
}

/// The visibility to give a message after a transient failure, in seconds: doubling with each
/// receive from `bounds.min_seconds`, capped, with equal jitter (half fixed, half random) so a
/// shared outage does not bring every message back at once; never sooner than `retry_after`.
pub fn retry_visibility(
    bounds: RetryBounds,
    receive_count: u32,
    retry_after: Option<Duration>,
    rng: &mut impl Rng,
) -> u32 {
    let doublings = i32::try_from(receive_count.saturating_sub(1).min(30)).unwrap_or(30);
    let base = (f64::from(bounds.min_seconds) * 2f64.powi(doublings))
        .min(f64::from(bounds.max_seconds.max(bounds.min_seconds)));
    let jittered = base * rng.random_range(0.5..=1.0);
    let asked = retry_after.map_or(0.0, |d| d.as_secs_f64().ceil());
    // Within 0..=43200 here, so the conversion cannot truncate.
    jittered
        .round()
        .max(asked)
        .min(MAX_VISIBILITY_SECONDS as f64) as u32
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    const BOUNDS: RetryBounds = RetryBounds {
        min_seconds: 5,
        max_seconds: 900,
    };

    #[test]
    fn grows_with_the_receive_count_within_jitter_and_cap() {
        for seed in 0..100 {
            let mut rng = StdRng::seed_from_u64(seed);
            for (count, lo, hi) in [
                (1, 3, 5),
                (2, 5, 10),
                (3, 10, 20),
                (5, 40, 80),
                (9, 450, 900),
                (50, 450, 900),
            ] {
                let v = retry_visibility(BOUNDS, count, None, &mut rng);
                assert!((lo..=hi).contains(&v), "count {count}: {v}");
            }
            // A zero count (attribute missing) counts as the first receive.
            let v = retry_visibility(BOUNDS, 0, None, &mut rng);
            assert!((3..=5).contains(&v), "{v}");
        }
    }

    #[test]
    fn retry_after_is_a_floor() {
        let mut rng = StdRng::seed_from_u64(7);
        assert_eq!(
            retry_visibility(BOUNDS, 1, Some(Duration::from_millis(120_500)), &mut rng),
            121
        );
        assert_eq!(
            retry_visibility(BOUNDS, 1, Some(Duration::from_secs(86_400)), &mut rng),
            43_200,
            "SQS's maximum visibility"
        );
        let v = retry_visibility(BOUNDS, 9, Some(Duration::from_secs(1)), &mut rng);
        assert!(v >= 450, "{v}");
    }

    #[test]
    fn zero_minimum_retries_at_once() {
        let zero = RetryBounds {
            min_seconds: 0,
            max_seconds: 10,
        };
        assert_eq!(
            retry_visibility(zero, 4, None, &mut StdRng::seed_from_u64(1)),
            0
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("boom")]
    struct E(bool);

    impl ServiceError for E {
        fn is_transient(&self) -> bool {
            self.0
        }
        fn reason(&self) -> &'static str {
            "openai_batch_not_found"
        }
        fn retry_after(&self) -> Option<Duration> {
            Some(Duration::from_secs(3))
        }
    }

    #[test]
    fn service_errors_keep_their_classification() {
        assert_eq!(
            Failure::from_service(&E(true)),
            Failure::Transient {
                error: "boom".into(),
                retry_after: Some(Duration::from_secs(3))
            }
        );
        let permanent = Failure::from_service(&E(false));
        assert_eq!(permanent.class(), "permanent");
        assert!(matches!(
            permanent,
            Failure::Permanent {
                reason: "openai_batch_not_found",
                ..
            }
        ));
        let q = QueueError::Permanent {
            op: "SendMessage",
            message: "no such queue".into(),
        };
        assert_eq!(Failure::from(q).class(), "transient");
    }
}
