//! Keeping a message (and, while a batch is applied, its lease) alive.
//!
//! Every message gets a heartbeat task when it is received: handling normally ends long before
//! the first beat, but an apply, or a check slowed down by retries, can outlast the visibility
//! timeout, and the message must not reappear at another worker meanwhile. During an apply the
//! same beat renews the batch's lease; a lease found taken over cancels the apply's stop token,
//! because another worker now owns the batch.

use std::future::Future;
use std::time::Duration;

use fleet_shared::store::Store;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior, interval_at};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use crate::metrics as m;

/// Who holds which batch's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseKey {
    pub batch_id: String,
    /// Unique per handling (worker id and message id): two copies of one batch's message in
    /// the same worker must not both pass the lease.
    pub owner: String,
}

/// The two renewals a heartbeat makes; a trait so the timing can be tested under paused time.
pub trait Keepalive: Send + Sync + 'static {
    /// Makes the message invisible for `seconds` more, from now.
    fn extend_visibility(&self, seconds: u32) -> impl Future<Output = Result<(), String>> + Send;
    /// Extends the lease by `ttl_ms` from now; `Ok(false)` when it is no longer ours.
    fn renew_lease(
        &self,
        lease: &LeaseKey,
        ttl_ms: i64,
    ) -> impl Future<Output = Result<bool, String>> + Send;
}

/// The real renewals: ChangeMessageVisibility on the work queue, and the store's lease.
#[derive(Debug, Clone)]
pub struct QueueKeepalive {
    pub sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
    /// `None` when there is no message to keep (the `apply-batch` command).
    pub receipt_handle: Option<String>,
    pub store: Store,
}

impl Keepalive for QueueKeepalive {
    async fn extend_visibility(&self, seconds: u32) -> Result<(), String> {
        let Some(handle) = &self.receipt_handle else {
            return Ok(());
        };
        self.sqs
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(handle)
            .visibility_timeout(i32::try_from(seconds).unwrap_or(i32::MAX))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| fleet_shared::queue::classify("ChangeMessageVisibility", e).to_string())
    }

    async fn renew_lease(&self, lease: &LeaseKey, ttl_ms: i64) -> Result<bool, String> {
        self.store
            .renew_lease(
                &lease.batch_id,
                &lease.owner,
                ttl_ms,
                crate::clock::now_ms(),
            )
            .await
            .map_err(|e| e.to_string())
    }
}

#[derive(Debug, Clone)]
struct WatchedLease {
    key: LeaseKey,
    lost: CancellationToken,
}

/// A running heartbeat; it stops when dropped.
#[derive(Debug)]
pub struct Heartbeat {
    lease: watch::Sender<Option<WatchedLease>>,
    _task: AbortOnDropHandle<()>,
}

impl Heartbeat {
    /// Beats every `every`: extends the visibility to `visibility_seconds` (when given) and
    /// renews the watched lease, if any, by `lease_ttl_ms`.
    pub fn start<K: Keepalive>(
        keepalive: K,
        every: Duration,
        visibility_seconds: Option<u32>,
        lease_ttl_ms: i64,
    ) -> Self {
        let (tx, rx) = watch::channel(None);
        // The beat logs as part of the handling that started it.
        let task = tokio::spawn(
            beat(keepalive, every, visibility_seconds, lease_ttl_ms, rx)
                .instrument(tracing::Span::current()),
        );
        Heartbeat {
            lease: tx,
            _task: AbortOnDropHandle::new(task),
        }
    }

    /// Renews this lease from the next beat on; `lost` is cancelled if it is taken over.
    pub fn watch_lease(&self, key: LeaseKey, lost: CancellationToken) {
        self.lease.send_replace(Some(WatchedLease { key, lost }));
    }

    /// Stops renewing the lease (it is being released).
    pub fn forget_lease(&self) {
        self.lease.send_replace(None);
    }
}

async fn beat<K: Keepalive>(
    keepalive: K,
    every: Duration,
    visibility_seconds: Option<u32>,
    lease_ttl_ms: i64,
    lease: watch::Receiver<Option<WatchedLease>>,
) {
    let mut ticker = interval_at(Instant::now() + every, every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if let Some(seconds) = visibility_seconds {
            match keepalive.extend_visibility(seconds).await {
                Ok(()) => tracing::debug!(seconds, "message visibility extended"),
                Err(error) => {
                    metrics::counter!(m::HEARTBEAT_ERRORS, "kind" => "visibility").increment(1);
                    tracing::warn!(%error, "could not extend the message's visibility");
                }
            }
        }
        let watched = lease.borrow().clone();
        let Some(watched) = watched else { continue };
        if watched.lost.is_cancelled() {
            continue;
        }
        match keepalive.renew_lease(&watched.key, lease_ttl_ms).await {
            Ok(true) => tracing::debug!(batch_id = %watched.key.batch_id, "lease renewed"),
            Ok(false) => {
                metrics::counter!(m::LEASES_LOST).increment(1);
                tracing::warn!(
                    batch_id = %watched.key.batch_id,
                    "lease taken over by another worker; stopping the apply"
                );
                watched.lost.cancel();
            }
            Err(error) => {
                metrics::counter!(m::HEARTBEAT_ERRORS, "kind" => "lease").increment(1);
                tracing::warn!(%error, "could not renew the lease; trying again at the next beat");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Call {
        Visibility(u32),
        Lease(String),
    }

    /// Records calls with their (paused) time; lease renewals answer from a script.
    #[derive(Clone, Default)]
    struct Fake {
        calls: Arc<Mutex<Vec<(Duration, Call)>>>,
        lease_answers: Arc<Mutex<Vec<Result<bool, String>>>>,
        fail_visibility: bool,
        started: Option<Instant>,
    }

    impl Fake {
        fn new() -> Self {
            Fake {
                started: Some(Instant::now()),
                ..Fake::default()
            }
        }
        fn record(&self, call: Call) {
            let at = self.started.expect("started").elapsed();
            self.calls.lock().unwrap().push((at, call));
        }
        fn calls(&self) -> Vec<(u64, Call)> {
            self.calls
                .lock()
                .unwrap()
                .iter()
                .map(|(t, c)| (t.as_secs(), c.clone()))
                .collect()
        }
    }

    impl Keepalive for Fake {
        async fn extend_visibility(&self, seconds: u32) -> Result<(), String> {
            self.record(Call::Visibility(seconds));
            if self.fail_visibility {
                Err("throttled".into())
            } else {
                Ok(())
            }
        }
        async fn renew_lease(&self, lease: &LeaseKey, _ttl_ms: i64) -> Result<bool, String> {
            self.record(Call::Lease(lease.batch_id.clone()));
            let mut answers = self.lease_answers.lock().unwrap();
            if answers.is_empty() {
                Ok(true)
            } else {
                answers.remove(0)
            }
        }
    }

    fn key() -> LeaseKey {
        LeaseKey {
            batch_id: "b-1".into(),
            owner: "w-1#m-1".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn extends_visibility_every_beat_and_nothing_before_the_first() {
        let fake = Fake::new();
        let hb = Heartbeat::start(fake.clone(), Duration::from_secs(10), Some(30), 30_000);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert!(
            fake.calls().is_empty(),
            "a quick message costs no extra call"
        );
        tokio::time::sleep(Duration::from_secs(26)).await;
        assert_eq!(
            fake.calls(),
            [
                (10, Call::Visibility(30)),
                (20, Call::Visibility(30)),
                (30, Call::Visibility(30))
            ]
        );
        drop(hb);
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(fake.calls().len(), 3, "stops when dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn renews_a_watched_lease_until_it_is_forgotten() {
        let fake = Fake::new();
        let hb = Heartbeat::start(fake.clone(), Duration::from_secs(10), Some(30), 30_000);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let lost = CancellationToken::new();
        hb.watch_lease(key(), lost.clone());
        tokio::time::sleep(Duration::from_secs(20)).await;
        hb.forget_lease();
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(
            fake.calls(),
            [
                (10, Call::Visibility(30)),
                (10, Call::Lease("b-1".into())),
                (20, Call::Visibility(30)),
                (20, Call::Lease("b-1".into())),
                (30, Call::Visibility(30)),
            ]
        );
        assert!(!lost.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_cancels_the_apply_and_errors_do_not() {
        let fake = Fake::new();
        *fake.lease_answers.lock().unwrap() = vec![Err("throttled".into()), Ok(true), Ok(false)];
        let hb = Heartbeat::start(fake.clone(), Duration::from_secs(10), None, 30_000);
        let lost = CancellationToken::new();
        hb.watch_lease(key(), lost.clone());
        tokio::time::sleep(Duration::from_secs(25)).await;
        assert!(
            !lost.is_cancelled(),
            "a failed renewal is retried, not taken as lost"
        );
        tokio::time::timeout(Duration::from_secs(10), lost.cancelled())
            .await
            .expect("lost at the third beat");
        tokio::time::sleep(Duration::from_secs(30)).await;
        let leases = fake
            .calls()
            .into_iter()
            .filter(|(_, c)| matches!(c, Call::Lease(_)))
            .count();
        assert_eq!(leases, 3, "no renewals after the lease was lost");
        assert!(
            fake.calls()
                .iter()
                .all(|(_, c)| !matches!(c, Call::Visibility(_))),
            "no message to keep"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn keeps_beating_through_visibility_errors() {
        let fake = Fake {
            fail_visibility: true,
            ..Fake::new()
        };
        let _hb = Heartbeat::start(fake.clone(), Duration::from_secs(3), Some(10), 10_000);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(fake.calls().len(), 3);
    }
}
