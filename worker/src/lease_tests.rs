//! Tests of [`super`] (lease.rs).
use std::sync::{Arc, Mutex};

use super::*;

/// Acquires always; renewals answer from a script (then `Ok(true)`), each after `delay`.
#[derive(Clone, Default)]
struct Fake {
    renewals: Arc<Mutex<Vec<Result<bool, ()>>>>,
    renew_delay: Duration,
    busy: bool,
    calls: Arc<Mutex<Vec<&'static str>>>,
}

impl LeaseBackend for Fake {
    async fn acquire(&self, _: &str, _: &str, ttl_ms: i64) -> Result<LeaseOutcome, StoreError> {
        self.calls.lock().unwrap().push("acquire");
        Ok(if self.busy {
            LeaseOutcome::HeldBy {
                owner: "other".into(),
                expires_at_ms: ttl_ms,
            }
        } else {
            LeaseOutcome::Acquired {
                expires_at_ms: ttl_ms,
            }
        })
    }
    async fn renew(&self, _: &str, _: &str, _: i64) -> Result<bool, StoreError> {
        tokio::time::sleep(self.renew_delay).await;
        self.calls.lock().unwrap().push("renew");
        let next = {
            let mut script = self.renewals.lock().unwrap();
            if script.is_empty() {
                Ok(true)
            } else {
                script.remove(0)
            }
        };
        next.map_err(|()| StoreError::Transient {
            op: "UpdateItem",
            message: "throttled".into(),
        })
    }
    async fn release(&self, _: &str, _: &str) -> Result<bool, StoreError> {
        self.calls.lock().unwrap().push("release");
        Ok(true)
    }
}

const TERMS: LeaseTerms = LeaseTerms {
    ttl: Duration::from_secs(120),
    renew_every: Duration::from_secs(40),
    margin: Duration::from_secs(30),
};

/// Work that "writes" (a fenced call) every second for `seconds`, recording when.
async fn writer(seconds: u64, writes: Arc<Mutex<Vec<u64>>>) -> usize {
    let start = Instant::now();
    for _ in 0..seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if fleet_shared::fence::check().is_ok() {
            writes.lock().unwrap().push(start.elapsed().as_secs());
        }
    }
    writes.lock().unwrap().len()
}

#[tokio::test(start_paused = true)]
async fn renewed_lease_lets_long_work_finish_and_is_released() {
    let fake = Fake::default();
    let writes = Arc::new(Mutex::new(Vec::new()));
    let out = with_lease(&fake, "b", TERMS, |_| writer(600, writes.clone()))
        .await
        .unwrap();
    assert!(matches!(out, Leased::Done(600)), "{out:?}");
    let calls = fake.calls.lock().unwrap().clone();
    assert_eq!(calls.first(), Some(&"acquire"));
    assert_eq!(calls.last(), Some(&"release"));
    // At 40, 80, …, 560 s; the work ends at 600 s.
    assert_eq!(calls.iter().filter(|c| **c == "renew").count(), 14);
}

#[tokio::test(start_paused = true)]
async fn failing_renewals_stop_the_holder_before_its_lease_could_pass_on() {
    // The first renewal succeeds (at 40 s), every later one fails.
    let fake = Fake {
        renewals: Arc::new(Mutex::new(vec![
            Ok(true),
            Err(()),
            Err(()),
            Err(()),
            Err(()),
        ])),
        ..Fake::default()
    };
    let writes = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let out = with_lease(&fake, "b", TERMS, |_| writer(600, writes.clone()))
        .await
        .unwrap();
    assert!(matches!(out, Leased::Stopped { .. }), "{out:?}");
    // Last success sent at 40 s: usable until 40 + 120 - 30 = 130 s; the lease itself
    // (renewed at 40 s) runs until 160 s, when another worker may take it.
    assert_eq!(started.elapsed().as_secs(), 130);
    let last_write = *writes.lock().unwrap().last().unwrap();
    assert!(last_write < 130, "wrote at {last_write}");
    assert!(last_write < 160 - 1, "before the lease could pass on");
    tokio::time::sleep(Duration::from_secs(100)).await;
    assert_eq!(
        writes.lock().unwrap().last(),
        Some(&last_write),
        "nothing after the stop"
    );
}

#[tokio::test(start_paused = true)]
async fn a_renewal_that_hangs_counts_as_failed() {
    let fake = Fake {
        renew_delay: Duration::from_secs(3600),
        ..Fake::default()
    };
    let started = Instant::now();
    let out = with_lease(&fake, "b", TERMS, |_| writer(600, Arc::default()))
        .await
        .unwrap();
    assert!(matches!(out, Leased::Stopped { .. }), "{out:?}");
    assert_eq!(started.elapsed().as_secs(), 90, "no renewal ever succeeded");
}

#[tokio::test(start_paused = true)]
async fn a_lease_taken_over_stops_at_once_and_cancels_the_stop_token() {
    let fake = Fake {
        renewals: Arc::new(Mutex::new(vec![Ok(true), Ok(false)])),
        ..Fake::default()
    };
    let started = Instant::now();
    let token = Arc::new(Mutex::new(None));
    let seen = token.clone();
    let out = with_lease(&fake, "b", TERMS, |hold| {
        *seen.lock().unwrap() = Some(hold.stop.clone());
        writer(600, Arc::default())
    })
    .await
    .unwrap();
    assert!(
        matches!(
            out,
            Leased::Stopped {
                why: "lease taken over"
            }
        ),
        "{out:?}"
    );
    assert_eq!(started.elapsed().as_secs(), 80);
    assert!(token.lock().unwrap().as_ref().unwrap().is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn a_holding_dropped_half_way_releases_its_lease() {
    let fake = Fake::default();
    let holding = with_lease(&fake, "b", TERMS, |_| writer(600, Arc::default()));
    assert!(
        tokio::time::timeout(Duration::from_secs(5), holding)
            .await
            .is_err()
    );
    // The release is sent on a task the shutdown drain can wait for.
    let releases = pending_releases();
    releases.close();
    releases.wait().await;
    assert_eq!(*fake.calls.lock().unwrap(), ["acquire", "release"]);
}

#[tokio::test(start_paused = true)]
async fn a_busy_lease_runs_nothing() {
    let fake = Fake {
        busy: true,
        ..Fake::default()
    };
    let out = with_lease(&fake, "b", TERMS, |_| async { panic!("must not run") })
        .await
        .unwrap();
    assert!(matches!(out, Leased::Busy { .. }));
    assert_eq!(*fake.calls.lock().unwrap(), ["acquire"]);
}
