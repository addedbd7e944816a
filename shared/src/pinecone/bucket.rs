//! A token bucket: paces Pinecone updates and fetches below their limits, and every client's
//! calls while its deployment is rejected ([`crate::http::DeploymentPacer`]).
//!
//! Pacing on our side avoids most 429s, which would otherwise cost a backoff sleep each and
//! slow the whole batch down more than steady pacing does.
//!
//! Pinecone's limit (about 100 updates/s) is per namespace, shared by however many workers
//! KEDA runs, so no fixed per-process rate can be right. An [`TokenBucket::adaptive`] bucket
//! finds its share: it starts low, adds a little rate for every second of answered calls
//! (additive increase), halves it on a 429 at most once per second (multiplicative decrease),
//! honours the 429's `Retry-After` by holding every caller back that long, and never exceeds the
//! configured per-process ceiling. With 1, 3 or 10 processes the namespace's total settles just
//! under its limit (the simulation in this module's tests shows the figures).

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
    /// The highest rate: the configured one, or the per-process ceiling of an adaptive bucket.
    ceiling: f64,
    /// Burst as a fraction of a second's worth of the current rate (at least one token).
    burst_seconds: f64,
    /// `None`: a fixed rate.
    adapt: Option<Adapt>,
    state: Mutex<State>,
}

/// How an adaptive bucket moves its rate.
#[derive(Debug, Clone, Copy)]
struct Adapt {
    floor: f64,
    /// Rate added per second of answered calls, once the first 429 has been seen (before it,
    /// the rate doubles per second of answered calls: a slow start).
    increase_per_second: f64,
    /// At most one decrease per this long (a burst of 429s to calls already in flight is one
    /// signal, not many).
    decrease_gap: Duration,
    /// How many times faster than the wall clock the bucket's own clock runs (1 but in the
    /// simulation, see [`TokenBucket::adaptive_scaled`]).
    time_scale: f64,
}

#[derive(Debug)]
struct State {
    rate: f64,
    tokens: f64,
    last: Instant,
    last_decrease: Option<Instant>,
    /// Moves on at every 429 that changed the pace (a decrease or a `Retry-After` hold):
    /// reservations made before it are void, their callers take new ones.
    generation: u64,
}

impl State {
    fn slow_start(&self) -> bool {
        self.last_decrease.is_none()
    }
}

impl TokenBucket {
    /// `rate` tokens per second (at least a tiny positive rate), holding at most `burst`
    /// (at least 1). Starts full.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self::new_at(rate, burst, Instant::now())
    }

    fn new_at(rate: f64, burst: f64, now: Instant) -> Self {
        let rate = sane_rate(rate);
        let burst = if burst.is_finite() {
            burst.max(1.0)
        } else {
            1.0
        };
        Self {
            ceiling: rate,
            burst_seconds: burst / rate,
            adapt: None,
            state: Mutex::new(State {
                rate,
                tokens: burst,
                last: now,
                last_decrease: None,
                generation: 0,
            }),
        }
    }

    /// The default pacing for a limit of `rate` per second: a burst of a tenth of a second's
    /// worth, so that a burst plus steady pacing stays under the limit in any one-second
    /// window.
    pub fn for_rate(rate: f64) -> Self {
        Self::new(rate, rate / 10.0)
    }

    /// A bucket that finds its share of a limit shared with other processes (see the module
    /// docs), never above `ceiling` per second. It starts at a tenth of the ceiling (at least
    /// one per second), doubles per second of answered calls until its first 429, then climbs
    /// by a ninetieth of the ceiling (1/s for Pinecone's 90) per second of answered calls.
    pub fn adaptive(ceiling: f64) -> Self {
        Self::adaptive_at(ceiling, 1.0, Instant::now())
    }

    /// An adaptive bucket whose own clock runs `time_scale` times faster than the wall clock:
    /// the additive increase per second and the gap between decreases are scaled, so that a
    /// simulation running every service `time_scale` times faster (rates multiplied, latencies
    /// and `Retry-After` divided) sees the pacing it would see unscaled. The rate itself is
    /// not scaled here: `ceiling` is already in the caller's (scaled) units. With
    /// `time_scale = 1` this is [`TokenBucket::adaptive`].
    ///
    /// Why the increase needs it: rates scale by `K` and so does time, so an increase of
    /// `ceiling / 90` per second, in the scaled rates' units, must happen `K` times per real
    /// second to be `ceiling / 90` per simulated second.
    pub fn adaptive_scaled(ceiling: f64, time_scale: f64) -> Self {
        Self::adaptive_at(ceiling, time_scale, Instant::now())
    }

    fn adaptive_at(ceiling: f64, time_scale: f64, now: Instant) -> Self {
        let ceiling = sane_rate(ceiling);
        let time_scale = if time_scale.is_finite() {
            time_scale.clamp(1.0, 1_000.0)
        } else {
            1.0
        };
        let start = (ceiling / 10.0).max(1.0).min(ceiling);
        Self {
            ceiling,
            burst_seconds: 0.1,
            adapt: Some(Adapt {
                floor: (ceiling / 100.0).min(1.0),
                increase_per_second: (ceiling / 90.0).max(0.1) * time_scale,
                decrease_gap: Duration::from_secs_f64(1.0 / time_scale),
                time_scale,
            }),
            state: Mutex::new(State {
                rate: start,
                tokens: 1.0,
                last: now,
                last_decrease: None,
                generation: 0,
            }),
        }
    }

    /// The current rate (the fixed one, or where an adaptive bucket stands now).
    pub fn rate(&self) -> f64 {
        self.lock().rate
    }

    /// The highest rate this bucket may reach.
    pub fn ceiling(&self) -> f64 {
        self.ceiling
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain data: a panic elsewhere cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A call paced by this bucket was answered: an adaptive bucket climbs a little.
    pub fn on_success(&self) {
        self.on_success_at(Instant::now());
    }

    fn on_success_at(&self, _now: Instant) {
        let Some(adapt) = self.adapt else { return };
        let mut state = self.lock();
        // Per second at the current rate: `rate` more (doubling) in slow start, else
        // `increase_per_second` more; spread over that second's calls.
        let per_second = if state.slow_start() {
            state.rate * adapt.time_scale
        } else {
            adapt.increase_per_second
        };
        let step = per_second / state.rate.max(1.0);
        state.rate = (state.rate + step).min(self.ceiling);
    }

    /// A call was answered 429: an adaptive bucket halves its rate (at most once per gap), and
    /// every bucket holds callers back for `retry_after` when the server said so.
    pub fn on_throttled(&self, retry_after: Option<Duration>) {
        self.on_throttled_at(retry_after, Instant::now());
    }

    fn on_throttled_at(&self, retry_after: Option<Duration>, now: Instant) {
        let mut state = self.lock();
        let mut decreased = false;
        if let Some(adapt) = self.adapt {
            let due = state
                .last_decrease
                .is_none_or(|t| now.saturating_duration_since(t) >= adapt.decrease_gap);
            if due {
                state.rate = (state.rate / 2.0).max(adapt.floor);
                state.last_decrease = Some(now);
                decreased = true;
            }
        }
        if decreased || retry_after.is_some() {
            self.settle(&mut state, now);
            // The reservations outstanding are void (their callers take new ones at the new
            // pace), so their debt is forgiven rather than counted twice; then owe at least
            // `Retry-After` worth of tokens.
            state.tokens = state.tokens.max(0.0);
            if let Some(wait) = retry_after {
                state.tokens = state.tokens.min(-wait.as_secs_f64() * state.rate);
            }
            state.generation += 1;
        }
    }

    /// Refills the balance for the time since it was last settled, up to the burst.
    fn settle(&self, state: &mut State, now: Instant) {
        let elapsed = now.saturating_duration_since(state.last).as_secs_f64();
        state.tokens = (state.tokens + elapsed * state.rate).min(self.burst(state.rate));
        state.last = now;
    }

    fn burst(&self, rate: f64) -> f64 {
        (rate * self.burst_seconds).max(1.0)
    }

    /// Waits until a token is available and takes it.
    ///
    /// A 429 answered while the caller waits voids its reservation (it was made at the old
    /// pace): the caller takes a new one. Without this, with many calls in flight, every
    /// caller already waiting went out at the old pace after each 429, into the same
    /// exhausted limit (the pacing's own model: 10 processes of 24 calls in flight each had a
    /// third of their updates answered 429).
    pub async fn acquire(&self) {
        loop {
            let (wait, generation) = self.take(Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            if self.lock().generation == generation {
                return;
            }
        }
    }

    /// Takes a token at `now`; returns how long to wait before using it, and the generation
    /// it belongs to. The clock is a parameter so the pacing can be tested without sleeping.
    fn take(&self, now: Instant) -> (Duration, u64) {
        let mut state = self.lock();
        self.settle(&mut state, now);
        state.tokens -= 1.0;
        let wait = if state.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-state.tokens / state.rate)
        };
        (wait, state.generation)
    }

    /// Takes a token now and returns how long to wait before using it.
    #[cfg(test)]
    fn reserve(&self) -> Duration {
        self.take(Instant::now()).0
    }

    #[cfg(test)]
    fn reserve_at(&self, now: Instant) -> Duration {
        self.take(now).0
    }

    #[cfg(test)]
    fn generation(&self) -> u64 {
        self.lock().generation
    }
}

fn sane_rate(rate: f64) -> f64 {
    if rate.is_finite() && rate > 0.0 {
        rate
    } else {
        1e-3
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
        let b = TokenBucket::for_rate(5.0);
        assert!((b.burst(b.rate()) - 1.0).abs() < f64::EPSILON);
    }

    /// The world of [`shared_limit_with`]: how fast it runs, and how the buckets are made.
    #[derive(Clone, Copy)]
    struct Shared {
        /// Every rate multiplied, every latency and `Retry-After` divided by this.
        scale: f64,
        /// Each process's ceiling, in unscaled updates per second.
        ceiling: f64,
        /// Whether the buckets are told the scale ([`TokenBucket::adaptive_scaled`]).
        scaled_buckets: bool,
        /// Calls each process keeps in flight.
        lanes: usize,
        /// Each call's latency, unscaled.
        latency_ms: f64,
    }

    /// N processes with adaptive buckets (ceiling 90/s each) share a namespace limited to 100
    /// updates/s (a server-side bucket of one second's worth); each process keeps 8 updates in
    /// flight, 20 ms each. Returns (updates answered per second, share answered 429).
    fn shared_limit(processes: usize, seconds: u64) -> (f64, f64) {
        let world = Shared {
            scale: 1.0,
            ceiling: 90.0,
            scaled_buckets: false,
            lanes: 8,
            latency_ms: 20.0,
        };
        shared_limit_with(processes, seconds, world)
    }

    /// [`shared_limit`] in a world running `scale` times faster; figures in unscaled units.
    fn shared_limit_with(processes: usize, seconds: u64, world: Shared) -> (f64, f64) {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        let k = world.scale;
        let limit = 100.0 * k;
        let latency = Duration::from_secs_f64(world.latency_ms / 1000.0 / k);
        let retry_after = Duration::from_secs_f64(1.0 / k);
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs_f64(seconds as f64 / k);
        let time_scale = if world.scaled_buckets { k } else { 1.0 };
        let buckets: Vec<TokenBucket> = (0..processes)
            .map(|_| TokenBucket::adaptive_at(world.ceiling * k, time_scale, t0))
            .collect();
        let (mut server_tokens, mut server_last) = (100.0, t0);
        let (mut ok, mut throttled) = (0u64, 0u64);
        // What a lane does next, at an instant: take a token, send (holding a token of that
        // generation), or learn its answer. Ordered by (instant, sequence) for determinism.
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        enum Step {
            Take,
            Send(u64),
            Answer(bool),
        }
        let mut events: BinaryHeap<Reverse<(Instant, u64, usize, Step)>> = BinaryHeap::new();
        let mut seq = 0u64;
        for p in 0..processes {
            for _ in 0..world.lanes {
                events.push(Reverse((t0, seq, p, Step::Take)));
                seq += 1;
            }
        }
        while let Some(Reverse((at, _, p, step))) = events.pop() {
            if at >= end {
                continue;
            }
            let next = match step {
                Step::Take => {
                    let (wait, generation) = buckets[p].take(at);
                    (at + wait, Step::Send(generation))
                }
                // A 429 came while this lane waited: as `acquire` does, take a new token.
                Step::Send(generation) if generation != buckets[p].generation() => (at, Step::Take),
                Step::Send(_) => {
                    let elapsed = at.saturating_duration_since(server_last).as_secs_f64();
                    // A burst of one (simulated) second's worth, as the Pinecone emulator allows.
                    server_tokens = (server_tokens + elapsed * limit).min(100.0);
                    server_last = server_last.max(at);
                    let answered = server_tokens >= 1.0;
                    if answered {
                        server_tokens -= 1.0;
                    }
                    (at + latency, Step::Answer(answered))
                }
                Step::Answer(answered) => {
                    if answered {
                        ok += 1;
                        buckets[p].on_success_at(at);
                    } else {
                        throttled += 1;
                        buckets[p].on_throttled_at(Some(retry_after), at);
                    }
                    (at, Step::Take)
                }
            };
            events.push(Reverse((next.0, seq, p, next.1)));
            seq += 1;
        }
        let total = (ok + throttled) as f64;
        (
            ok as f64 / seconds as f64,
            throttled as f64 / total.max(1.0),
        )
    }

    /// The simulation runs every service 20 times faster and gives each worker the
    /// namespace's whole limit as its ceiling; a worker keeps 24 updates in flight (3 merges
    /// of 8), each 10 ms as the emulator answers. Told the scale, the buckets share the limit as
    /// they would unscaled; not told, their additive increase is 20 times too slow in
    /// simulated time and 3 processes lose a tenth of the limit or more.
    #[test]
    fn told_the_time_scale_adaptive_buckets_pace_a_scaled_world_as_an_unscaled_one() {
        for processes in [1, 3, 10] {
            let at = |scale, scaled_buckets| {
                let world = Shared {
                    scale,
                    ceiling: 100.0,
                    scaled_buckets,
                    lanes: 24,
                    latency_ms: 10.0,
                };
                shared_limit_with(processes, 600, world)
            };
            let (unscaled, unscaled_429) = at(1.0, false);
            let (scaled, scaled_429) = at(20.0, true);
            let (untold, untold_429) = at(20.0, false);
            println!(
                "RESULT pacing processes={processes} ceiling=limit unscaled={unscaled:.1}/s ({:.2}% 429) scaled_told={scaled:.1}/s ({:.2}% 429) scaled_untold={untold:.1}/s ({:.2}% 429)",
                unscaled_429 * 100.0,
                scaled_429 * 100.0,
                untold_429 * 100.0
            );
            assert!(scaled >= 90.0, "{processes} processes: {scaled:.1}/s");
            assert!(
                scaled_429 <= 0.02,
                "{processes}: {:.2}% 429",
                scaled_429 * 100.0
            );
            assert!(
                (scaled - unscaled).abs() <= 0.05 * unscaled,
                "{processes}: scaled {scaled:.1} vs unscaled {unscaled:.1}"
            );
            if processes == 3 {
                assert!(untold < 0.95 * scaled, "{untold:.1} vs {scaled:.1}");
            }
        }
    }

    /// A caller waiting its turn when a 429 comes goes back for a new token at the new pace
    /// (here: after `Retry-After`), instead of going out at the old one.
    #[tokio::test(start_paused = true)]
    async fn a_429_while_callers_wait_sends_them_back_for_a_new_token() {
        let bucket = std::sync::Arc::new(TokenBucket::new(10.0, 1.0));
        bucket.acquire().await;
        let start = Instant::now();
        let waiting = bucket.clone();
        let waiter = tokio::spawn(async move {
            waiting.acquire().await;
            Instant::now()
        });
        // The waiter's token is due at 100 ms; the 429 comes at 50 ms.
        tokio::time::sleep(Duration::from_millis(50)).await;
        bucket.on_throttled(Some(Duration::from_secs(2)));
        let released = waiter.await.unwrap().duration_since(start);
        assert!(
            released >= Duration::from_millis(2_050),
            "released after {released:?}"
        );
    }

    #[test]
    fn adaptive_buckets_share_the_namespace_limit_at_90_percent_with_few_429s() {
        for processes in [1, 3, 10] {
            let (rate, share_429) = shared_limit(processes, 600);
            println!(
                "RESULT pacing processes={processes} updates_per_s={rate:.1} limit=100 share_429={:.2}%",
                share_429 * 100.0
            );
            if processes == 1 {
                // One process is held by its own ceiling (90/s), not by the namespace.
                assert!(rate >= 0.95 * 90.0, "{processes}: {rate:.1}/s");
            } else {
                assert!(rate >= 90.0, "{processes} processes: {rate:.1}/s");
            }
            assert!(
                share_429 <= 0.02,
                "{processes} processes: {:.2}% 429",
                share_429 * 100.0
            );
        }
    }

    #[test]
    fn an_adaptive_bucket_climbs_to_its_ceiling_halves_on_429_and_honours_retry_after() {
        let t0 = Instant::now();
        let b = TokenBucket::adaptive_at(90.0, 1.0, t0);
        assert!((b.rate() - 9.0).abs() < 1e-9, "starts at a tenth");
        for _ in 0..10_000 {
            b.on_success_at(t0);
        }
        assert!((b.rate() - 90.0).abs() < 1e-9, "never above the ceiling");
        let t1 = t0 + Duration::from_secs(5);
        b.on_throttled_at(Some(Duration::from_secs(2)), t1);
        assert!((b.rate() - 45.0).abs() < 1e-9);
        b.on_throttled_at(None, t1 + Duration::from_millis(10));
        assert!((b.rate() - 45.0).abs() < 1e-9, "one decrease per second");
        let wait = b.reserve_at(t1);
        assert!(
            wait >= Duration::from_secs(2),
            "Retry-After honoured: {wait:?}"
        );
        b.on_throttled_at(None, t1 + Duration::from_secs(2));
        assert!((b.rate() - 22.5).abs() < 1e-9);
        let fixed = TokenBucket::new_at(10.0, 1.0, t0);
        fixed.on_throttled_at(None, t0);
        fixed.on_success_at(t0);
        assert!(
            (fixed.rate() - 10.0).abs() < 1e-9,
            "a fixed bucket keeps its rate"
        );
    }
}
