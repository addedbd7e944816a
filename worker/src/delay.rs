//! When to look at an unfinished batch again. Pure: the clock and the randomness are inputs.
//!
//! Checks are cheap for us but each one is a queue round-trip and an OpenAI request, and a
//! batch can run for 24 hours: so the wait stays short while a status is about to change
//! (`validating`, `finalizing`, `cancelling`) and grows while the batch runs, with jitter so
//! that batches submitted together do not come back together.

use fleet_shared::openai::OpenAiStatus;
use fleet_shared::queue::SQS_MAX_DELAY_SECONDS;
use rand::Rng;

use crate::settings::RecheckBounds;

/// How far past `expires_at` a check may land: OpenAI marks the batch expired around then, and
/// a check just after it finds the final status instead of another `in_progress`.
pub const EXPIRY_MARGIN_SECONDS: i64 = 60;

/// Upward jitter of a wait, as a fraction of it. Below 1, so that each doubling still grows.
pub const JITTER: f64 = 0.25;

/// A running batch is looked at about this many times over its age so far, at least: a batch
/// first seen hours into its run (a replayed message restarts the check count) is not polled
/// at the minimum rate.
pub const AGE_DIVISOR: f64 = 8.0;

/// SQS delays are approximate: a hop arriving this close to its due time counts as due.
pub const HOP_SLACK_SECONDS: i64 = 2;

/// What the last check saw (Unix seconds).
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    pub status: &'a OpenAiStatus,
    /// Checks made before this one (the message's `checks`).
    pub checks: u32,
    pub now: i64,
    pub created_at: Option<i64>,
    pub in_progress_at: Option<i64>,
    pub expires_at: Option<i64>,
}

/// Seconds to wait before the next check, within the bounds.
pub fn next_check_delay(bounds: RecheckBounds, obs: &Observation<'_>, rng: &mut impl Rng) -> u32 {
    let min = f64::from(bounds.min_seconds);
    let max = f64::from(bounds.max_seconds.max(bounds.min_seconds));
    let base = match obs.status {
        OpenAiStatus::Validating | OpenAiStatus::Finalizing | OpenAiStatus::Cancelling => min,
        // Unknown statuses may be long-lived ones added to the API: back off like a run.
        _ => {
            let doubled = min * 2f64.powi(i32::try_from(obs.checks.min(30)).unwrap_or(30));
            let started = obs.in_progress_at.or(obs.created_at);
            let age = started.map_or(0.0, |t| obs.now.saturating_sub(t).max(0) as f64);
            doubled.max(age / AGE_DIVISOR)
        }
    };
    let mut delay = (base * (1.0 + rng.random_range(0.0..JITTER))).clamp(min, max);
    if let Some(expires_at) = obs.expires_at {
        let remaining = expires_at.saturating_sub(obs.now);
        delay = if remaining <= 0 {
            // Past its window: the final status is due any moment.
            min
        } else {
            delay
                .min(remaining.saturating_add(EXPIRY_MARGIN_SECONDS) as f64)
                .max(min)
        };
    }
    // `delay` is within 1..=86400 here, so the conversion cannot truncate.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let seconds = delay.round() as u32;
    seconds
}

/// How a wait is sent: SQS delays a message by at most 15 minutes, so longer waits go as a
/// chain of hops, each carrying the due time in `not_before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    pub delay_seconds: u32,
    /// Unix seconds; set when the wait needs more than one hop.
    pub not_before: Option<i64>,
}

pub fn schedule(now: i64, wait_seconds: u32) -> Schedule {
    if wait_seconds > SQS_MAX_DELAY_SECONDS {
        Schedule {
            delay_seconds: SQS_MAX_DELAY_SECONDS,
            not_before: Some(now.saturating_add(i64::from(wait_seconds))),
        }
    } else {
        Schedule {
            delay_seconds: wait_seconds,
            not_before: None,
        }
    }
}

/// `not_before` as the message body writes it (RFC 3339).
pub fn not_before_text(not_before: Option<i64>) -> Option<String> {
    not_before
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map(fleet_shared::model::time::rfc3339)
}

/// When a message with `not_before` is due: never later than `longest` seconds from now (no
/// wait the fleet schedules is longer; a far-future value written by hand would otherwise hop
/// every 15 minutes for ever).
pub fn clamp_due(now: i64, not_before: i64, longest: u32) -> i64 {
    not_before.min(now.saturating_add(i64::from(longest)))
}

/// The next hop of a message that is not due yet, or `None` when it is due.
pub fn remaining_hop(now: i64, not_before: i64) -> Option<u32> {
    let remaining = not_before.saturating_sub(now);
    (remaining > HOP_SLACK_SECONDS).then(|| {
        u32::try_from(remaining.min(i64::from(SQS_MAX_DELAY_SECONDS)))
            .unwrap_or(SQS_MAX_DELAY_SECONDS)
    })
}

/// Seconds until a lease held by someone else runs out, plus one so the re-check finds it
/// free; at least 1 and at most one SQS delay.
pub fn lease_recheck_delay(now_ms: i64, expires_at_ms: i64) -> u32 {
    let remaining_ms = expires_at_ms.saturating_sub(now_ms).max(0);
    let seconds = remaining_ms.saturating_add(999) / 1000 + 1;
    u32::try_from(seconds.clamp(1, i64::from(SQS_MAX_DELAY_SECONDS))).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    const NOW: i64 = 1_800_000_000;
    const BOUNDS: RecheckBounds = RecheckBounds {
        min_seconds: 60,
        max_seconds: 900,
    };

    fn obs(status: &OpenAiStatus, checks: u32) -> Observation<'_> {
        Observation {
            status,
            checks,
            now: NOW,
            created_at: Some(NOW - 30),
            in_progress_at: None,
            expires_at: Some(NOW + 86_000),
        }
    }

    fn rngs() -> impl Iterator<Item = StdRng> {
        (0..200).map(StdRng::seed_from_u64)
    }

    #[test]
    fn short_while_a_status_is_about_to_change() {
        for status in [
            OpenAiStatus::Validating,
            OpenAiStatus::Finalizing,
            OpenAiStatus::Cancelling,
        ] {
            for mut rng in rngs() {
                for checks in [0, 5, 40] {
                    let d = next_check_delay(BOUNDS, &obs(&status, checks), &mut rng);
                    assert!((60..=75).contains(&d), "{status} {checks}: {d}");
                }
            }
        }
    }

    #[test]
    fn grows_while_in_progress_and_stays_within_bounds() {
        let status = OpenAiStatus::InProgress;
        for mut rng in rngs() {
            let delays: Vec<u32> = (0..8)
                .map(|c| next_check_delay(BOUNDS, &obs(&status, c), &mut rng))
                .collect();
            for pair in delays.windows(2) {
                assert!(pair[0] <= pair[1], "{delays:?}");
                if pair[1] < 900 {
                    assert!(
                        pair[0] < pair[1],
                        "strictly growing below the cap: {delays:?}"
                    );
                }
            }
            assert!(delays.iter().all(|d| (60..=900).contains(d)), "{delays:?}");
            assert_eq!(*delays.last().unwrap(), 900, "{delays:?}");
        }
    }

    #[test]
    fn jitter_spreads_batches_submitted_together() {
        let status = OpenAiStatus::InProgress;
        let distinct: std::collections::BTreeSet<u32> = rngs()
            .map(|mut rng| next_check_delay(BOUNDS, &obs(&status, 2), &mut rng))
            .collect();
        assert!(distinct.len() > 20, "{distinct:?}");
        assert!(
            distinct.iter().all(|d| (240..300).contains(d)),
            "{distinct:?}"
        );
    }

    #[test]
    fn a_long_running_batch_first_seen_late_is_not_polled_at_the_minimum() {
        let status = OpenAiStatus::InProgress;
        let mut o = obs(&status, 0);
        o.in_progress_at = Some(NOW - 4 * 3600);
        let d = next_check_delay(BOUNDS, &o, &mut StdRng::seed_from_u64(1));
        assert_eq!(d, 900);
        o.in_progress_at = Some(NOW - 1600);
        let d = next_check_delay(BOUNDS, &o, &mut StdRng::seed_from_u64(1));
        assert!((200..=250).contains(&d), "{d}");
    }

    #[test]
    fn unknown_statuses_back_off_like_a_running_batch() {
        let status = OpenAiStatus::Unknown("paused".into());
        let d = next_check_delay(BOUNDS, &obs(&status, 3), &mut StdRng::seed_from_u64(3));
        assert!((480..=600).contains(&d), "{d}");
    }

    #[test]
    fn never_past_expiry_plus_the_margin() {
        let status = OpenAiStatus::InProgress;
        for mut rng in rngs() {
            let mut o = obs(&status, 6);
            o.expires_at = Some(NOW + 100);
            assert_eq!(next_check_delay(BOUNDS, &o, &mut rng), 160);
            o.expires_at = Some(NOW + 1);
            assert_eq!(next_check_delay(BOUNDS, &o, &mut rng), 61);
            // Below the minimum the minimum wins: checks are never closer than that.
            let tight = RecheckBounds {
                min_seconds: 300,
                max_seconds: 900,
            };
            assert_eq!(next_check_delay(tight, &o, &mut rng), 300);
            // Already past its window: check again soon, the final status is due.
            o.expires_at = Some(NOW - 10);
            assert_eq!(next_check_delay(BOUNDS, &o, &mut rng), 60);
        }
    }

    #[test]
    fn bounds_are_respected_at_the_extremes() {
        let status = OpenAiStatus::InProgress;
        let one = RecheckBounds {
            min_seconds: 1,
            max_seconds: 1,
        };
        for mut rng in rngs() {
            for checks in [0, 1, 10, u32::MAX] {
                assert_eq!(next_check_delay(one, &obs(&status, checks), &mut rng), 1);
            }
        }
        let day = RecheckBounds {
            min_seconds: 60,
            max_seconds: 86_400,
        };
        let mut o = obs(&status, u32::MAX);
        o.expires_at = None;
        assert_eq!(
            next_check_delay(day, &o, &mut StdRng::seed_from_u64(0)),
            86_400
        );
    }

    #[test]
    fn test_sized_bounds_grow_one_two_four() {
        let bounds = RecheckBounds {
            min_seconds: 1,
            max_seconds: 4,
        };
        let v = OpenAiStatus::Validating;
        let p = OpenAiStatus::InProgress;
        let fresh = |status, checks| Observation {
            created_at: Some(NOW),
            ..obs(status, checks)
        };
        for mut rng in rngs() {
            assert_eq!(next_check_delay(bounds, &fresh(&v, 0), &mut rng), 1);
            assert_eq!(next_check_delay(bounds, &fresh(&p, 1), &mut rng), 2);
            let third = next_check_delay(bounds, &fresh(&p, 2), &mut rng);
            assert_eq!(third, 4, "capped");
        }
    }

    #[test]
    fn long_waits_hop() {
        assert_eq!(
            schedule(NOW, 600),
            Schedule {
                delay_seconds: 600,
                not_before: None
            }
        );
        assert_eq!(
            schedule(NOW, 900),
            Schedule {
                delay_seconds: 900,
                not_before: None
            }
        );
        assert_eq!(
            schedule(NOW, 3600),
            Schedule {
                delay_seconds: 900,
                not_before: Some(NOW + 3600)
            }
        );
        // The hops of a one-hour wait: 900 + 900 + 900 + 900, then due.
        let due = NOW + 3600;
        let mut t = NOW + 900;
        let mut hops = vec![900];
        while let Some(h) = remaining_hop(t, due) {
            hops.push(h);
            t += i64::from(h);
        }
        assert_eq!(hops, [900, 900, 900, 900]);
        assert_eq!(remaining_hop(due - 2, due), None, "within the slack");
        assert_eq!(remaining_hop(due + 50, due), None);
        assert_eq!(remaining_hop(due - 100, due), Some(100));
    }

    #[test]
    fn lease_rechecks_land_after_the_lease() {
        assert_eq!(lease_recheck_delay(1_000, 11_000), 11);
        assert_eq!(lease_recheck_delay(1_000, 10_001), 11);
        assert_eq!(lease_recheck_delay(1_000, 500), 1);
        assert_eq!(lease_recheck_delay(0, 10_000_000), 900);
    }

    #[test]
    fn a_far_future_not_before_is_clamped_to_the_longest_wait() {
        assert_eq!(clamp_due(NOW, NOW + 600, 900), NOW + 600);
        assert_eq!(clamp_due(NOW, NOW + 10 * 86_400, 900), NOW + 900);
        assert_eq!(clamp_due(NOW, i64::MAX, 3600), NOW + 3600);
        assert_eq!(remaining_hop(NOW, clamp_due(NOW, i64::MAX, 900)), Some(900));
        assert_eq!(remaining_hop(NOW, i64::MIN), None, "long past: due");
    }

    #[test]
    fn timestamps_from_outside_never_overflow() {
        let mut rng = StdRng::seed_from_u64(3);
        for (created, started, expires) in [
            (Some(i64::MIN), Some(i64::MIN), Some(i64::MAX)),
            (Some(i64::MAX), Some(i64::MAX), Some(i64::MIN)),
            (None, Some(i64::MIN), Some(i64::MIN)),
        ] {
            for status in [
                OpenAiStatus::InProgress,
                OpenAiStatus::Validating,
                OpenAiStatus::Finalizing,
            ] {
                let o = Observation {
                    status: &status,
                    checks: u32::MAX,
                    now: NOW,
                    created_at: created,
                    in_progress_at: started,
                    expires_at: expires,
                };
                let d = next_check_delay(BOUNDS, &o, &mut rng);
                assert!(
                    (BOUNDS.min_seconds..=BOUNDS.max_seconds).contains(&d),
                    "{d}"
                );
            }
        }
        assert_eq!(
            lease_recheck_delay(i64::MIN, i64::MAX),
            SQS_MAX_DELAY_SECONDS
        );
        assert_eq!(lease_recheck_delay(i64::MAX, i64::MIN), 1);
        assert_eq!(schedule(i64::MAX, 3600).not_before, Some(i64::MAX));
    }
}
