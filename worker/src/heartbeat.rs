//! Keeping a received message invisible while it is handled.
//!
//! Every message gets a heartbeat task when it is received: handling normally ends long before
//! the first beat, but an apply, or a check slowed down by retries, can outlast the visibility
//! timeout, and the message must not reappear at another worker meanwhile. The batch's lease
//! is renewed elsewhere, on a task of its own ([`crate::lease`]), so a slow SQS call never
//! delays a renewal.

use std::future::Future;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior, interval_at};
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use crate::metrics as m;

/// The renewal a heartbeat makes; a trait so the timing can be tested under paused time.
pub trait Keepalive: Send + Sync + 'static {
    /// Makes the message invisible for `seconds` more, from now.
    fn extend_visibility(&self, seconds: u32) -> impl Future<Output = Result<(), String>> + Send;
}

impl Keepalive for crate::delivery::Delivery {
    async fn extend_visibility(&self, seconds: u32) -> Result<(), String> {
        self.set_visibility(seconds)
            .await
            .map_err(|e| e.to_string())
    }
}

/// A running heartbeat; it stops when dropped.
#[derive(Debug)]
pub struct Heartbeat {
    _task: AbortOnDropHandle<()>,
}

impl Heartbeat {
    /// Beats every `every`, extending the visibility to `visibility_seconds`.
    pub fn start<K: Keepalive>(keepalive: K, every: Duration, visibility_seconds: u32) -> Self {
        // The beat logs as part of the handling that started it.
        let task = tokio::spawn(
            beat(keepalive, every, visibility_seconds).instrument(tracing::Span::current()),
        );
        Heartbeat {
            _task: AbortOnDropHandle::new(task),
        }
    }
}

async fn beat<K: Keepalive>(keepalive: K, every: Duration, visibility_seconds: u32) {
    let mut ticker = interval_at(Instant::now() + every, every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match keepalive.extend_visibility(visibility_seconds).await {
            Ok(()) => tracing::debug!(seconds = visibility_seconds, "message visibility extended"),
            Err(error) => {
                metrics::counter!(m::HEARTBEAT_ERRORS, "kind" => "visibility").increment(1);
                tracing::warn!(%error, "could not extend the message's visibility");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Records calls with their (paused) time.
    #[derive(Clone)]
    struct Fake {
        calls: Arc<Mutex<Vec<(u64, u32)>>>,
        fail: bool,
        started: Instant,
    }

    impl Fake {
        fn new(fail: bool) -> Self {
            Fake {
                calls: Arc::default(),
                fail,
                started: Instant::now(),
            }
        }
    }

    impl Keepalive for Fake {
        async fn extend_visibility(&self, seconds: u32) -> Result<(), String> {
            let at = self.started.elapsed().as_secs();
            self.calls.lock().unwrap().push((at, seconds));
            if self.fail {
                Err("throttled".into())
            } else {
                Ok(())
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn extends_visibility_every_beat_and_nothing_before_the_first() {
        let fake = Fake::new(false);
        let hb = Heartbeat::start(fake.clone(), Duration::from_secs(10), 30);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(
            fake.calls.lock().unwrap().is_empty(),
            "a quick message costs no extra call"
        );
        tokio::time::sleep(Duration::from_secs(26)).await;
        assert_eq!(*fake.calls.lock().unwrap(), [(10, 30), (20, 30), (30, 30)]);
        drop(hb);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(fake.calls.lock().unwrap().len(), 3, "stops when dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn keeps_beating_through_errors() {
        let fake = Fake::new(true);
        let _hb = Heartbeat::start(fake.clone(), Duration::from_secs(3), 10);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(fake.calls.lock().unwrap().len(), 3);
    }
}
