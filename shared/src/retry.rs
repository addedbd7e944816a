//! Bounded retries with exponential backoff, shared by the HTTP clients (OpenAI, Pinecone)
//! through [`crate::http::Http::call`].
//!
//! The schedule comes from `backon`'s [`ExponentialBuilder`]; the loop itself ([`retry`]) is
//! written here because a server's `Retry-After` must be able to replace the next delay, and a
//! `Retry-After` longer than we are willing to sleep inline must end the loop at once, so that
//! the caller can hand the suggested delay to the queue (re-schedule the message) instead of
//! holding a worker slot while it sleeps.

use std::future::Future;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// How often and how patiently to retry one call.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Tries in all, the first one included (1 = never retry).
    pub max_attempts: u32,
    /// Delay before the first retry; later ones double up to `max_delay`.
    pub min_delay: Duration,
    /// Cap of a backoff delay (jitter included).
    pub max_delay: Duration,
    /// Spread retries of many workers hit by the same outage, so they do not return in step.
    pub jitter: bool,
    /// Longest server-suggested `Retry-After` honoured by sleeping in place. A longer one ends
    /// the retries with the error, which carries the suggestion for the caller to re-schedule.
    pub max_inline_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            min_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(20),
            jitter: true,
            max_inline_retry_after: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// No retries at all (tests, and callers that retry at a higher level).
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The same policy with its back-off delays `time_scale` times shorter (at least 1 ms):
    /// the simulation runs every service that many times faster. `Retry-After` is the
    /// server's, already scaled there.
    pub fn scaled(self, time_scale: f64) -> Self {
        if !time_scale.is_finite() || time_scale <= 1.0 {
            return self;
        }
        let shorten = |d: Duration| {
            Duration::from_secs_f64(d.as_secs_f64() / time_scale).max(Duration::from_millis(1))
        };
        Self {
            min_delay: shorten(self.min_delay),
            max_delay: shorten(self.max_delay),
            ..self
        }
    }

    /// The backon schedule: `max_attempts - 1` delays (the first try needs none).
    pub fn builder(&self) -> ExponentialBuilder {
        let retries = usize::try_from(self.max_attempts.saturating_sub(1)).unwrap_or(usize::MAX);
        let builder = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay.max(self.min_delay))
            .with_factor(2.0)
            .with_max_times(retries);
        if self.jitter {
            builder.with_jitter()
        } else {
            builder
        }
    }

    /// The delays between tries, capped at `max_delay`: backon's jitter adds up to 100 % on top
    /// of the current delay, which would otherwise double the cap.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + use<> {
        let cap = self.max_delay.max(self.min_delay);
        self.builder().build().map(move |d| d.min(cap))
    }
}

/// What one try produced, as judged by the caller.
#[derive(Debug)]
pub enum Attempt<T, E> {
    Done(T),
    /// Worth another try. `reason` is a short, bounded metric label (`rate_limited`,
    /// `server_error`, `timeout`, …); `retry_after` is the server's suggestion, if any.
    Retry {
        error: E,
        reason: &'static str,
        retry_after: Option<Duration>,
    },
    /// Retrying the same call cannot help.
    Fail(E),
}

/// One retry about to happen, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryEvent {
    pub reason: &'static str,
    /// The try that failed (1-based).
    pub attempt: u32,
    pub delay: Duration,
    /// The delay came from the server's `Retry-After`.
    pub from_retry_after: bool,
}

/// Runs `attempt(n)` for n = 1, 2, … until it is done, fails, or the policy is spent; returns
/// the last error in the latter cases. Before each retry `on_retry` is told why and how long we
/// wait. Sleeps with `tokio::time::sleep`.
pub async fn retry<T, E, F, Fut>(
    policy: &RetryPolicy,
    attempt: F,
    on_retry: impl FnMut(&RetryEvent, &E),
) -> Result<T, E>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Attempt<T, E>>,
{
    retry_with_sleep(policy, attempt, on_retry, tokio::time::sleep).await
}

/// [`retry`] with the sleep supplied by the caller, so tests can record the delays instead of
/// waiting for them.
pub async fn retry_with_sleep<T, E, F, Fut, S, SFut>(
    policy: &RetryPolicy,
    mut attempt: F,
    mut on_retry: impl FnMut(&RetryEvent, &E),
    mut sleep: S,
) -> Result<T, E>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Attempt<T, E>>,
    S: FnMut(Duration) -> SFut,
    SFut: Future<Output = ()>,
{
    let mut delays = policy.delays();
    let mut n: u32 = 1;
    loop {
        match attempt(n).await {
            Attempt::Done(value) => return Ok(value),
            Attempt::Fail(error) => return Err(error),
            Attempt::Retry {
                error,
                reason,
                retry_after,
            } => {
                if retry_after.is_some_and(|d| d > policy.max_inline_retry_after) {
                    return Err(error);
                }
                // The backoff schedule is consumed even when Retry-After wins, so that the
                // number of tries stays bounded by the policy either way.
                let Some(backoff) = delays.next() else {
                    return Err(error);
                };
                let event = RetryEvent {
                    reason,
                    attempt: n,
                    delay: retry_after.unwrap_or(backoff),
                    from_retry_after: retry_after.is_some(),
                };
                on_retry(&event, &error);
                sleep(event.delay).await;
                n = n.saturating_add(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn a_scaled_policy_backs_off_as_many_times_faster() {
        let p = RetryPolicy::default().scaled(20.0);
        assert_eq!(p.min_delay, Duration::from_millis(25));
        assert_eq!(p.max_delay, Duration::from_secs(1));
        assert_eq!(p.max_attempts, RetryPolicy::default().max_attempts);
        assert_eq!(RetryPolicy::default().scaled(1.0), RetryPolicy::default());
        assert_eq!(
            RetryPolicy::default().scaled(f64::NAN),
            RetryPolicy::default()
        );
    }

    #[test]
    fn delays_are_bounded_in_number_and_size() {
        let policy = RetryPolicy {
            max_attempts: 6,
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
            jitter: true,
            ..RetryPolicy::default()
        };
        for _ in 0..50 {
            let delays: Vec<_> = policy.delays().collect();
            assert_eq!(delays.len(), 5);
            assert!(delays.iter().all(|d| *d >= Duration::from_millis(100)));
            assert!(delays.iter().all(|d| *d <= Duration::from_millis(350)));
        }
        let plain = RetryPolicy {
            jitter: false,
            ..policy
        };
        let ms: Vec<u128> = plain.delays().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![100, 200, 350, 350, 350]);
        assert_eq!(RetryPolicy::none().delays().count(), 0);
    }

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
            jitter: false,
            max_inline_retry_after: Duration::from_secs(30),
        }
    }

    /// Runs the retry loop with a sleep that records its delays and returns at once.
    async fn run<T, E>(
        attempt: impl FnMut(u32) -> std::future::Ready<Attempt<T, E>>,
    ) -> (Result<T, E>, Vec<Duration>, Vec<RetryEvent>) {
        let slept = std::sync::Mutex::new(Vec::new());
        let mut events = Vec::new();
        let out = retry_with_sleep(
            &policy(),
            attempt,
            |e, _| events.push(*e),
            |d| {
                slept.lock().unwrap().push(d);
                std::future::ready(())
            },
        )
        .await;
        (out, slept.into_inner().unwrap(), events)
    }

    #[tokio::test]
    async fn retries_until_done_and_honours_retry_after() {
        let (out, slept, events) = run(|n| {
            std::future::ready(match n {
                1 => Attempt::Retry {
                    error: "busy",
                    reason: "rate_limited",
                    retry_after: Some(Duration::from_secs(7)),
                },
                2 => Attempt::Retry {
                    error: "boom",
                    reason: "server_error",
                    retry_after: None,
                },
                _ => Attempt::Done(n),
            })
        })
        .await;
        assert_eq!(out, Ok(3));
        // 7 s from Retry-After, then the second backoff step (2 s): the schedule advanced.
        assert_eq!(slept, vec![Duration::from_secs(7), Duration::from_secs(2)]);
        assert!(events[0].from_retry_after);
        assert_eq!(events[0].attempt, 1);
        assert_eq!(events[1].reason, "server_error");
        assert!(!events[1].from_retry_after);
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_with_the_last_error() {
        let calls = AtomicU32::new(0);
        let (out, slept, _) = run(|n| {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Attempt::<(), u32>::Retry {
                error: n,
                reason: "timeout",
                retry_after: None,
            })
        })
        .await;
        assert_eq!(out, Err(4));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        let secs: Vec<u64> = slept.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, vec![1, 2, 4]);
    }

    #[tokio::test]
    async fn long_retry_after_and_permanent_errors_end_at_once() {
        let (out, slept, _) = run(|_| {
            std::future::ready(Attempt::<(), _>::Retry {
                error: "come back in an hour",
                reason: "rate_limited",
                retry_after: Some(Duration::from_secs(3600)),
            })
        })
        .await;
        assert_eq!(out, Err("come back in an hour"));
        assert!(slept.is_empty());

        let (out, slept, _) =
            run(|_| std::future::ready(Attempt::<(), _>::Fail("not found"))).await;
        assert_eq!(out, Err("not found"));
        assert!(slept.is_empty());
    }

    #[tokio::test]
    async fn the_real_sleep_is_used_by_default() {
        let policy = RetryPolicy {
            max_attempts: 2,
            min_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(5),
            jitter: false,
            ..RetryPolicy::default()
        };
        let start = std::time::Instant::now();
        let out: Result<u32, ()> = retry(
            &policy,
            |n| async move {
                if n == 1 {
                    Attempt::Retry {
                        error: (),
                        reason: "timeout",
                        retry_after: None,
                    }
                } else {
                    Attempt::Done(n)
                }
            },
            |_, _| {},
        )
        .await;
        assert_eq!(out, Ok(2));
        assert!(start.elapsed() >= Duration::from_millis(5));
    }
}
