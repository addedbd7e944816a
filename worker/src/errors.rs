//! How a failed handling is treated: transient failures leave the message in the queue with a
//! visibility back-off (so the redrive policy dead-letters only what keeps failing); errors of
//! the deployment are deferred as a fresh delayed copy of the message (so no receive count
//! climbs towards the redrive while a key is being rotated); permanent ones are dead-lettered
//! at once.

use std::time::Duration;

use fleet_shared::error_class::{DeploymentCause, ErrorClass};
use fleet_shared::finish::FinishError;
use fleet_shared::queue::QueueError;
use fleet_shared::store::StoreError;
use rand::Rng;

use crate::settings::{MAX_VISIBILITY_SECONDS, RetryBounds};

/// Why handling a message stopped short.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// Worth another try later, no sooner than `retry_after` when the remote side said so.
    #[error("{error}")]
    Transient {
        error: String,
        retry_after: Option<Duration>,
    },
    /// The deployment is wrong (key, permissions, a missing resource): never the batch's fault.
    #[error("{error} ({})", cause.as_str())]
    Deployment {
        cause: DeploymentCause,
        error: String,
        retry_after: Option<Duration>,
    },
    /// Retrying cannot help: dead-letter with this bounded reason.
    #[error("{error} ({reason})")]
    Permanent { reason: &'static str, error: String },
}

impl Failure {
    /// The `class` label of `fleet_message_errors_total`.
    pub fn class(&self) -> &'static str {
        match self {
            Failure::Transient { .. } => ErrorClass::Transient.as_str(),
            Failure::Deployment { cause, .. } => ErrorClass::Deployment(*cause).as_str(),
            Failure::Permanent { .. } => ErrorClass::Permanent.as_str(),
        }
    }

    pub fn transient(error: impl Into<String>) -> Self {
        Failure::Transient {
            error: error.into(),
            retry_after: None,
        }
    }

    fn of(
        class: ErrorClass,
        reason: &'static str,
        error: String,
        retry_after: Option<Duration>,
    ) -> Self {
        match class {
            ErrorClass::Transient => Failure::Transient { error, retry_after },
            ErrorClass::Deployment(cause) => Failure::Deployment {
                cause,
                error,
                retry_after,
            },
            ErrorClass::Permanent => Failure::Permanent { reason, error },
        }
    }
}

impl From<FinishError> for Failure {
    fn from(e: FinishError) -> Self {
        Failure::of(e.class(), e.reason(), e.to_string(), e.retry_after())
    }
}

// Our own queue and table calls fail permanently only when something is wrong that no message
// is to blame for (an invalid request of ours): they are retried, and the redrive policy
// catches what never recovers. Errors of the deployment keep their class.
impl From<QueueError> for Failure {
    fn from(e: QueueError) -> Self {
        match e.class() {
            ErrorClass::Deployment(cause) => Failure::Deployment {
                cause,
                error: e.to_string(),
                retry_after: None,
            },
            _ => Failure::transient(e.to_string()),
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e.class() {
            ErrorClass::Deployment(cause) => Failure::Deployment {
                cause,
                error: e.to_string(),
                retry_after: None,
            },
            _ => Failure::transient(e.to_string()),
        }
    }
}

/// The back-off after a failure, in seconds: doubling with each try (`attempt` 1 is the first)
/// from `bounds.min_seconds`, capped, with equal jitter (half fixed, half random) so a shared
/// outage does not bring every message back at once; never sooner than `retry_after`.
pub fn retry_visibility(
    bounds: RetryBounds,
    attempt: u32,
    retry_after: Option<Duration>,
    rng: &mut impl Rng,
) -> u32 {
    let doublings = i32::try_from(attempt.saturating_sub(1).min(30)).unwrap_or(30);
    let base = (f64::from(bounds.min_seconds) * 2f64.powi(doublings))
        .min(f64::from(bounds.max_seconds.max(bounds.min_seconds)));
    let jittered = base * rng.random_range(0.5..=1.0);
    let asked = retry_after.map_or(0.0, |d| d.as_secs_f64().ceil());
    let seconds = jittered
        .round()
        .max(asked)
        .min(MAX_VISIBILITY_SECONDS as f64);
    // Within 0..=43200 after the clamp: the conversion cannot truncate.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let seconds = seconds as u32;
    seconds
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
    fn grows_with_the_attempt_within_jitter_and_cap() {
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

    #[test]
    fn errors_keep_their_class() {
        let unknown = Failure::from(FinishError::BatchUnknown("b".into()));
        assert!(matches!(
            unknown,
            Failure::Permanent {
                reason: "batch_unknown",
                ..
            }
        ));
        let stopped = Failure::from(FinishError::Stopped {
            writes: 3,
            why: "lease lost",
        });
        assert_eq!(stopped.class(), "transient");
        let q = QueueError::Permanent {
            op: "SendMessage",
            message: "bad request".into(),
        };
        assert_eq!(Failure::from(q).class(), "transient");
        let missing = QueueError::Deployment {
            op: "SendMessage",
            cause: DeploymentCause::AwsMissingResource,
            message: "no such queue".into(),
        };
        assert!(matches!(
            Failure::from(missing),
            Failure::Deployment {
                cause: DeploymentCause::AwsMissingResource,
                ..
            }
        ));
        let denied = StoreError::Deployment {
            op: "GetItem",
            cause: DeploymentCause::AwsAccess,
            message: "AccessDeniedException".into(),
        };
        assert_eq!(Failure::from(denied).class(), "deployment");
        let decode = StoreError::Transient {
            op: "Query",
            message: "timeout".into(),
        };
        assert_eq!(Failure::from(decode).class(), "transient");
    }
}
