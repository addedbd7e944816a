//! A token bucket: paces Pinecone updates and fetches below their limits, and every client's
//! calls while its deployment is rejected ([`crate::http::DeploymentPacer`]).
//!
//! Pacing on our side avoids most 429s, which would otherwise cost a backoff sleep each and
//! slow the whole batch down more than steady pacing does.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Tokens refill continuously at `rate` per second, up to `burst`.
///
/// [`TokenBucket::acquire`] reserves a token at once (the balance may go negative) and then
/// sleeps until that reservation is covered, so concurrent callers are served in arrival
/// order and the lock is never held across a sleep. A caller dropped while sleeping forfeits
/// its token: the bucket only errs on the slow side.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate` tokens per second (at least a tiny positive rate), holding at most `burst`
    /// (at least 1). Starts full.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self::new_at(rate, burst, Instant::now())
    }

    fn new_at(rate: f64, burst: f64, now: Instant) -> Self {
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            1e-3
        };
        let burst = if burst.is_finite() {
            burst.max(1.0)
        } else {
            1.0
        };
        Self {
            rate,
            burst,
            state: Mutex::new(State {
                tokens: burst,
                last: now,
            }),
        }
    }

    /// The default pacing for a limit of `rate` per second: a burst of a tenth of a second's
    /// worth, so that a burst plus steady pacing stays under the limit in any one-second
    /// window.
    pub fn for_rate(rate: f64) -> Self {
        Self::new(rate, rate / 10.0)
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Waits until a token is available and takes it.
    pub async fn acquire(&self) {
        let wait = self.reserve();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes a token now and returns how long to wait before using it.
    fn reserve(&self) -> Duration {
        self.reserve_at(Instant::now())
    }

    /// The clock is a parameter so the pacing can be tested without sleeping.
    fn reserve_at(&self, now: Instant) -> Duration {
        // Plain data: a panic elsewhere cannot leave it inconsistent.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = now.saturating_duration_since(state.last).as_secs_f64();
        state.tokens = (state.tokens + elapsed * self.rate).min(self.burst);
        state.last = now;
        state.tokens -= 1.0;
        if state.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-state.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1000.0
    }

    #[test]
    fn burst_then_steady_rate() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new_at(10.0, 3.0, t0);
        for _ in 0..3 {
            assert_eq!(bucket.reserve_at(t0), Duration::ZERO, "the burst is free");
        }
        // Reservations made at the same instant queue up 100 ms apart.
        let waits: Vec<f64> = (0..10).map(|_| ms(bucket.reserve_at(t0))).collect();
        for (i, w) in waits.iter().enumerate() {
            let expected = 100.0 * (i as f64 + 1.0);
            assert!((w - expected).abs() < 1e-6, "{i}: {w}");
        }
    }

    #[test]
    fn paced_callers_never_exceed_the_limit_in_any_second() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new_at(90.0, 9.0, t0);
        // 180 callers arriving together: each is released at t0 + its wait.
        let mut released: Vec<Duration> = (0..180).map(|_| bucket.reserve_at(t0)).collect();
        released.sort();
        assert_eq!(released.iter().filter(|d| d.is_zero()).count(), 9);
        let last = released.last().copied().unwrap_or_default().as_secs_f64();
        assert!((last - 171.0 / 90.0).abs() < 1e-6, "{last}");
        for (i, t) in released.iter().enumerate() {
            let in_window = released[i..]
                .iter()
                .take_while(|u| **u - *t < Duration::from_secs(1))
                .count();
            assert!(in_window <= 9 + 90, "{in_window} in one second");
        }
    }

    #[test]
    fn refills_after_idle_up_to_the_burst() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new_at(2.0, 2.0, t0);
        assert_eq!(bucket.reserve_at(t0), Duration::ZERO);
        assert_eq!(bucket.reserve_at(t0), Duration::ZERO);
        assert_eq!(bucket.reserve_at(t0), Duration::from_millis(500));
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(bucket.reserve_at(later), Duration::ZERO);
        assert_eq!(bucket.reserve_at(later), Duration::ZERO);
        assert_eq!(bucket.reserve_at(later), Duration::from_millis(500));
        // Half a second later the debt is paid and the next token is half a second away.
        let t = later + Duration::from_millis(500);
        assert_eq!(bucket.reserve_at(t), Duration::from_millis(500));
    }

    #[tokio::test]
    async fn acquire_waits_for_its_reservation() {
        let bucket = TokenBucket::new(100.0, 1.0);
        let start = Instant::now();
        bucket.acquire().await;
        bucket.acquire().await;
        bucket.acquire().await;
        assert!(
            start.elapsed() >= Duration::from_millis(19),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn nonsense_settings_are_clamped() {
        let b = TokenBucket::new(f64::NAN, -3.0);
        assert!(b.rate() > 0.0);
        assert_eq!(b.reserve(), Duration::ZERO);
        assert!((TokenBucket::for_rate(5.0).burst - 1.0).abs() < f64::EPSILON);
    }
}
