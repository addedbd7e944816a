//! The worker against moto and the emulators: re-checks with growing delays, duplicates under
//! several workers, poison messages, transient faults, overdue batches, long waits, and, through
//! the real binary, SIGTERM during an apply, `/metrics`, `/readyz` and `apply-batch`.
//!
//! Timings are shrunk through the worker's own settings (seconds, not minutes); nothing is
//! judged by absolute time except the bounds the worker promises (the grace period).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_sqs::config::interceptors::BeforeSerializationInterceptorContextRef;
use aws_sdk_sqs::config::{ConfigBag, Intercept};
use aws_sdk_sqs::operation::change_message_visibility::ChangeMessageVisibilityInput;
use aws_sdk_sqs::operation::delete_message::DeleteMessageInput;
use aws_sdk_sqs::operation::receive_message::ReceiveMessageInput;
use aws_sdk_sqs::operation::send_message::SendMessageInput;
use aws_sdk_sqs::types::Message;
use fleet_shared::message::BatchMessage;
use fleet_shared::model::BatchStatus;
use fleet_shared::queue::queue_depth;
use fleet_tests::openai::FaultSpec;
use fleet_tests::scenario::{ScenarioBatch, Shape};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::support::process::{self, Process};
use crate::support::{Fleet, NAMESPACE, Snapshot, batch_now, eventually, get, small_shape};

mod lifecycle;

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The finished batch applied once by one worker from one message: the end state a test
/// compares its own run with (the reference fleet, for its request logs, and its snapshot).
async fn reference_run(b: &ScenarioBatch) -> (Fleet, Snapshot) {
    let reference = fleet_with(b).await;
    reference
        .run_until_idle(
            &[],
            reference.env.clients.sqs.clone(),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(
        reference.summary_status(&b.summary.batch_id).await,
        BatchStatus::Completed
    );
    let expected = reference.snapshot().await;
    (reference, expected)
}

/// The reference's end state ([`reference_run`]) and a fresh fleet with `b` and its message
/// ([`fleet_with`]) to run the same batch differently.
async fn reference_and_fleet(b: &ScenarioBatch) -> (Snapshot, Fleet) {
    let (_, expected) = reference_run(b).await;
    (expected, fleet_with(b).await)
}

/// Runs one in-process worker until the queue is idle ([`Fleet::run_until_idle`]), its SQS
/// calls logged.
async fn run_logged(world: &Fleet, extra: &[(&str, &str)], limit: Duration) -> SqsLog {
    let log = SqsLog::default();
    world
        .run_until_idle(extra, log.client(&world.env.clients.sqs), limit)
        .await;
    log
}

/// A fleet with `b` seeded and one message for it on the work queue.
async fn fleet_with(b: &ScenarioBatch) -> Fleet {
    let world = Fleet::seeded(b).await;
    world.enqueue(&b.summary.batch_id).await;
    world
}

/// The worker binary serving this fleet ([`Fleet::worker_vars`] with `extra`).
async fn spawn_worker(world: &Fleet, extra: &[(&str, &str)]) -> Process {
    Process::spawn("worker", &[], world.worker_vars(extra)).await
}

/// Finished at the first check.
fn finished_now(seed: u64) -> ScenarioBatch {
    let mut b = batch_now(seed, small_shape());
    b.spec.steps = vec![("completed".to_owned(), 1)];
    b
}

// ---------------------------------------------------------------------------------------------
// SQS calls seen by a worker's client.

#[derive(Debug, Clone, PartialEq, Eq)]
enum SqsCall {
    Receive,
    Send {
        queue_url: String,
        body: String,
        delay_seconds: i32,
    },
    Delete,
    ChangeVisibility(i32),
    Other,
}

#[derive(Debug, Default, Clone)]
struct SqsLog(Arc<Mutex<Vec<SqsCall>>>);

impl SqsLog {
    fn calls(&self) -> Vec<SqsCall> {
        self.0.lock().unwrap().clone()
    }

    fn sends_to(&self, url: &str) -> Vec<(BatchMessage, i32)> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                SqsCall::Send {
                    queue_url,
                    body,
                    delay_seconds,
                } if queue_url == url => Some((
                    BatchMessage::parse(&body).expect("worker sends v1"),
                    delay_seconds,
                )),
                _ => None,
            })
            .collect()
    }

    /// A client of the same endpoint that records every call.
    fn client(&self, base: &aws_sdk_sqs::Client) -> aws_sdk_sqs::Client {
        let conf = base.config().to_builder().interceptor(self.clone()).build();
        aws_sdk_sqs::Client::from_conf(conf)
    }
}

impl Intercept for SqsLog {
    fn name(&self) -> &'static str {
        "SqsLog"
    }

    fn read_before_execution(
        &self,
        ctx: &BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_sqs::error::BoxError> {
        let input = ctx.input();
        let call = if input.downcast_ref::<ReceiveMessageInput>().is_some() {
            SqsCall::Receive
        } else if let Some(send) = input.downcast_ref::<SendMessageInput>() {
            SqsCall::Send {
                queue_url: send.queue_url.clone().unwrap_or_default(),
                body: send.message_body.clone().unwrap_or_default(),
                delay_seconds: send.delay_seconds.unwrap_or(0),
            }
        } else if input.downcast_ref::<DeleteMessageInput>().is_some() {
            SqsCall::Delete
        } else if let Some(change) = input.downcast_ref::<ChangeMessageVisibilityInput>() {
            SqsCall::ChangeVisibility(change.visibility_timeout.unwrap_or(-1))
        } else {
            SqsCall::Other
        };
        self.0.lock().unwrap().push(call);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// In-process tests.

#[tokio::test]
async fn a_running_batch_is_rechecked_with_growing_delays_until_it_completes() {
    let world = Fleet::new().await;
    let mut b = batch_now(11, small_shape());
    b.spec.steps = [
        ("validating", 1),
        ("in_progress", 3),
        ("finalizing", 1),
        ("completed", 1),
    ]
    .into_iter()
    .map(|(s, n)| (s.to_owned(), n))
    .collect();
    world.seed(&b).await;
    world.enqueue(&b.summary.batch_id).await;

    let log = run_logged(
        &world,
        &[("RECHECK_MIN_SECONDS", "1"), ("RECHECK_MAX_SECONDS", "4")],
        Duration::from_secs(120),
    )
    .await;

    assert_eq!(
        world.summary_status(&b.summary.batch_id).await,
        BatchStatus::Completed
    );
    let checks = world.openai.batch_gets(&b.spec.id) as usize;
    assert_eq!(
        checks, 6,
        "validating, in_progress ×3, finalizing, completed"
    );
    let sends = log.sends_to(&world.env.queues.work_url);
    assert!(
        sends.len() <= checks + 2,
        "{} messages sent for {checks} checks",
        sends.len()
    );
    let delays: Vec<i32> = sends.iter().map(|(_, d)| *d).collect();
    // validating → 1 s; in_progress → 2, 4, 4 (doubling, capped); finalizing → 1 s.
    assert_eq!(delays.len(), 5, "{delays:?}");
    assert_eq!(delays[0], 1, "short while validating: {delays:?}");
    let running = &delays[1..4];
    assert!(
        running.windows(2).all(|w| w[0] <= w[1]) && running[0] < running[2],
        "growing while in progress: {delays:?}"
    );
    assert!(delays.iter().all(|d| (1..=4).contains(d)), "{delays:?}");
    assert_eq!(delays[4], 1, "short while finalizing: {delays:?}");
    for (i, (m, _)) in sends.iter().enumerate() {
        assert_eq!(m.batch_id, b.summary.batch_id);
        assert_eq!(m.checks as usize, i + 1);
        assert_eq!(m.openai_batch_id.as_deref(), Some(b.spec.id.as_str()));
        assert_eq!(m.first_enqueued_at, sends[0].0.first_enqueued_at);
    }
    assert!(sends[0].0.first_enqueued_at.is_some());
    let state = world.fleet_state(&b.summary.batch_id).await;
    assert!(
        state.scheduled_until_ms.is_some(),
        "schedule marker kept current"
    );
    assert_eq!(state.lease_owner, None, "lease released");
    assert!(world.dead_letters().await.is_empty());
}

#[tokio::test]
async fn five_copies_under_three_workers_apply_once_with_the_end_state_of_one_run() {
    // The reference: the same batch, one message, one worker.
    let b = finished_now(21);
    let (reference, expected) = reference_run(&b).await;
    let expected_downloads = reference.openai.count("GET", "/v1/files/");

    let world = Fleet::new().await;
    world.seed(&b).await;
    for _ in 0..5 {
        world.enqueue(&b.summary.batch_id).await;
    }
    let workers = (0..3).map(|i| {
        let host = format!("it-worker-{i}");
        let settings = world.settings(true, &[("HOSTNAME", host.as_str())]);
        let deps = world.deps(&settings, world.env.clients.sqs.clone());
        worker::run(settings, deps, CancellationToken::new())
    });
    let results =
        tokio::time::timeout(Duration::from_secs(120), futures::future::join_all(workers))
            .await
            .expect("all three went idle");
    for r in results {
        r.expect("worker ran cleanly");
    }

    assert_eq!(
        world.summary_status(&b.summary.batch_id).await,
        BatchStatus::Completed
    );
    assert_eq!(world.table().await, expected.items, "same table as one run");
    assert_eq!(world.pinecone.all(NAMESPACE), expected.vectors);
    assert_eq!(
        world.openai.count("GET", "/v1/files/"),
        expected_downloads,
        "the batch's files were read by one apply only"
    );
    assert!(world.dead_letters().await.is_empty());
}

#[tokio::test]
async fn poison_bodies_are_dead_lettered_with_their_reason_while_the_worker_keeps_going() {
    let world = Fleet::new().await;
    // The largest body SQS accepts is 256 KiB including attributes; the dead-letter copy adds
    // four short attributes, so this leaves them room. (1 MiB is tested at the parse level.)
    let garbage = "\u{7f}garbage!".repeat(250 * 1024 / 9);
    let poison: Vec<(&str, String)> = vec![
        ("not_json", "this is not JSON".to_owned()),
        ("unknown_version", r#"{"v":2,"batch_id":"b-1"}"#.to_owned()),
        ("bad_field", r#"{"v":1}"#.to_owned()),
        ("missing_version", r#"{"batch_id":"b-1"}"#.to_owned()),
        ("not_an_object", "[1,2,3]".to_owned()),
        ("body_too_large", garbage.clone()),
        (
            "batch_unknown",
            r#"{"v":1,"batch_id":"no-such-batch"}"#.to_owned(),
        ),
    ];
    for (_, body) in &poison {
        world.send(body).await;
    }
    let good = finished_now(31);
    world.seed(&good).await;
    world.enqueue(&good.summary.batch_id).await;

    world
        .run_until_idle(&[], world.env.clients.sqs.clone(), Duration::from_secs(90))
        .await;

    assert_eq!(
        world.summary_status(&good.summary.batch_id).await,
        BatchStatus::Completed,
        "the worker kept going"
    );
    let dead = world.dead_letters().await;
    assert_eq!(dead.len(), poison.len());
    let attr = |m: &Message, name: &str| -> String {
        m.message_attributes
            .as_ref()
            .and_then(|a| a.get(name))
            .and_then(|v| v.string_value.clone())
            .unwrap_or_default()
    };
    let by_reason: HashMap<String, &Message> =
        dead.iter().map(|m| (attr(m, "reason"), m)).collect();
    for (reason, body) in &poison {
        let m = by_reason
            .get(*reason)
            .unwrap_or_else(|| panic!("no dead letter with reason {reason}"));
        assert_eq!(
            m.body.as_deref(),
            Some(body.as_str()),
            "{reason}: body unchanged"
        );
        assert_eq!(attr(m, "error_class"), "permanent");
        assert_eq!(attr(m, "receive_count"), "1");
        assert!(!attr(m, "first_seen").is_empty());
    }
    let depth = world.work_depth().await;
    assert_eq!(depth.total(), 0, "poison deleted from the work queue");
}

#[tokio::test]
async fn throttling_and_server_errors_do_not_dead_letter_and_batches_still_complete() {
    let world = Fleet::new().await;
    let batches = [batch_now(41, small_shape()), batch_now(42, small_shape())];
    for b in &batches {
        world.seed(b).await;
        world.enqueue(&b.summary.batch_id).await;
    }
    // Blips the clients absorb by themselves…
    world.openai.fail_next(
        FaultSpec::rate_limited(Some(1))
            .on_path("/v1/batches/")
            .times(2),
    );
    world
        .openai
        .fail_next(FaultSpec::status(500).on_path("/v1/batches/").times(2));
    world
        .openai
        .fail_next(FaultSpec::status(503).on_path("/v1/files/").times(1));
    world.pinecone.fail_next(
        fleet_tests::pinecone::FaultSpec::rate_limited(Some(1))
            .on_path("/vectors/update")
            .times(3),
    );
    world.pinecone.set_rate_limit(Some(20));
    // …and one longer than the OpenAI client's own retries, which costs one queue round-trip.
    world
        .openai
        .fail_next(FaultSpec::status(502).on_path("/v1/batches/").times(6));

    world
        .run_until_idle(&[], world.env.clients.sqs.clone(), Duration::from_secs(180))
        .await;

    for b in &batches {
        assert_eq!(
            world.summary_status(&b.summary.batch_id).await,
            BatchStatus::Completed
        );
    }
    assert!(
        world.openai.pending_faults().is_empty(),
        "every fault was hit"
    );
    assert!(world.pinecone.pending_faults().is_empty());
    assert!(
        world.dead_letters().await.is_empty(),
        "a blip dead-letters nothing"
    );
}

#[tokio::test]
async fn a_batch_running_an_hour_past_its_expiry_is_cancelled_then_applied() {
    let world = Fleet::new().await;
    let mut b = batch_now(51, small_shape());
    b.spec.created_at = now() - 30 * 3600;
    b.spec.expires_at = Some(now() - 2 * 3600);
    b.spec.steps = vec![("in_progress".to_owned(), 1000)];
    b.spec.cancelling_polls = 1;
    world.seed(&b).await;
    world.enqueue(&b.summary.batch_id).await;

    world
        .run_until_idle(&[], world.env.clients.sqs.clone(), Duration::from_secs(60))
        .await;

    assert!(world.openai.was_cancelled(&b.spec.id));
    assert_eq!(
        world.openai.count("POST", "/v1/batches/"),
        1,
        "cancelled once"
    );
    assert_eq!(
        world.summary_status(&b.summary.batch_id).await,
        BatchStatus::Cancelled
    );
}

#[tokio::test]
async fn a_long_wait_hops_without_checking_until_it_is_due() {
    let world = Fleet::new().await;
    let b = finished_now(61);
    world.seed(&b).await;
    let due = now() + 6;
    let body = BatchMessage {
        not_before: Some(fleet_shared::model::time::rfc3339(
            chrono::DateTime::from_timestamp(due, 0).unwrap(),
        )),
        ..BatchMessage::new(&b.summary.batch_id)
    };
    world.send(&body.to_body()).await;

    // A `not_before` further ahead than the longest re-check is clamped to it.
    let log = run_logged(
        &world,
        &[("RECHECK_MAX_SECONDS", "30")],
        Duration::from_secs(60),
    )
    .await;

    assert_eq!(
        world.summary_status(&b.summary.batch_id).await,
        BatchStatus::Completed
    );
    let first_check_ms = world
        .openai
        .requests()
        .iter()
        .map(|r| r.unix_ms)
        .min()
        .expect("checked");
    assert!(
        i64::try_from(first_check_ms).unwrap() >= (due - 2) * 1000,
        "checked {} ms before it was due",
        due * 1000 - i64::try_from(first_check_ms).unwrap()
    );
    let hops = log.sends_to(&world.env.queues.work_url);
    assert!(!hops.is_empty(), "at least one hop");
    assert!(
        hops.iter().all(|(m, _)| m.checks == 0),
        "hops are not checks"
    );
}

// ---------------------------------------------------------------------------------------------
// The real binary.

fn series(page: &str) -> HashMap<String, f64> {
    worker::metrics::parse_text(page).into_iter().collect()
}

// The emulators live in this test's runtime: it needs threads to serve them while the test
// waits on the process.
#[tokio::test(flavor = "multi_thread")]
async fn the_binary_exports_counters_of_what_it_did_and_exits_0_on_sigterm() {
    let good = finished_now(71);
    let world = fleet_with(&good).await;
    world.send("not JSON").await;
    world.send(r#"{"v":9,"batch_id":"x"}"#).await;
    world.send(r#"{"v":1,"batch_id":"unknown-batch"}"#).await;

    let mut worker = spawn_worker(&world, &[]).await;
    assert!(
        worker.log_text().contains("worker starting"),
        "startup banner: {}",
        worker.log_text()
    );
    assert!(
        !worker.log_text().contains("SECRET"),
        "secrets never logged"
    );
    let sqs = world.env.clients.sqs.clone();
    let url = world.env.queues.work_url.clone();
    eventually("the queue to drain", Duration::from_secs(60), || {
        let (sqs, url) = (sqs.clone(), url.clone());
        async move { queue_depth(&sqs, &url).await.is_ok_and(|d| d.total() == 0) }
    })
    .await;
    // The last handler may still be counting its outcome right after its delete.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (status, page) = get(&worker.url("/metrics")).await;
    assert_eq!(status, 200);
    let s = series(&page);
    let v = |name: &str| {
        s.get(name)
            .copied()
            .unwrap_or_else(|| panic!("{name} missing:\n{page}"))
    };
    assert_eq!(v("fleet_messages_total{outcome=\"applied\"}"), 1.0);
    assert_eq!(v("fleet_messages_total{outcome=\"dead_lettered\"}"), 3.0);
    assert_eq!(v("fleet_dead_letter_sends_total{reason=\"not_json\"}"), 1.0);
    assert_eq!(
        v("fleet_dead_letter_sends_total{reason=\"unknown_version\"}"),
        1.0
    );
    assert_eq!(
        v("fleet_dead_letter_sends_total{reason=\"batch_unknown\"}"),
        1.0
    );
    assert_eq!(v("fleet_message_errors_total{class=\"permanent\"}"), 3.0);
    assert_eq!(v("fleet_batch_checks_total{status=\"completed\"}"), 1.0);
    assert_eq!(v("fleet_message_handling_seconds_count"), 4.0);
    assert_eq!(v("fleet_apply_seconds_count"), 1.0);
    assert!(
        s.contains_key("fleet_message_handling_seconds_bucket{le=\"0.5\"}"),
        "buckets"
    );
    assert_eq!(v("fleet_in_flight_messages"), 0.0);
    let labels: f64 = s
        .iter()
        .filter(|(k, _)| k.starts_with("fleet_labels_total{"))
        .map(|(_, v)| v)
        .sum();
    assert!(labels > 0.0, "verdicts counted:\n{page}");
    let beat = v("fleet_worker_loop_heartbeat_timestamp_seconds");
    assert!((beat - now() as f64).abs() < 60.0, "loop heartbeat {beat}");
    assert_eq!(get(&worker.url("/healthz")).await.0, 200);
    assert_eq!(get(&worker.url("/readyz")).await.0, 200);
    assert_eq!(world.dead_letters().await.len(), 3);
    // The worker marks what it dead-letters, so the producer leaves it alone.
    let mark = world
        .fleet_state("unknown-batch")
        .await
        .dead_letter
        .expect("marked dead-lettered");
    assert_eq!(mark.reason, "batch_unknown");
    assert!(
        world
            .fleet_state(&good.summary.batch_id)
            .await
            .dead_letter
            .is_none()
    );

    // Every line of a message's handling carries its ids (JSON logs, the span's fields),
    // including the lines the library logs while applying.
    let lines: Vec<Value> = worker
        .lines()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let handled: Vec<&Value> = lines
        .iter()
        .filter(|v| v["message"] == "message handled")
        .collect();
    assert_eq!(handled.len(), 4);
    assert!(handled.iter().all(|v| v["span"]["message_id"].is_string()));
    let of_good: Vec<&Value> = lines
        .iter()
        .filter(|v| v["span"]["batch_id"] == good.summary.batch_id.as_str())
        .collect();
    assert!(of_good.len() >= 2, "{of_good:?}");
    for v in &of_good {
        assert_eq!(v["span"]["openai_batch_id"], good.spec.id.as_str(), "{v}");
        assert!(v["span"]["message_id"].is_string(), "{v}");
    }
    assert!(
        of_good.iter().any(|v| v["message"] == "batch applied"),
        "the apply's own line is in the span: {of_good:?}"
    );

    worker.sigterm();
    let code = worker.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "log:\n{}", worker.log_text());
}

// The emulators live in this test's runtime: it needs threads to serve them while the test
// waits on the process.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_long_apply_drains_within_the_grace_period_and_hands_the_message_back() {
    let b = finished_now(81);
    let (expected, world) = reference_and_fleet(&b).await;
    // Every Pinecone call takes 2 s: the apply outlasts the 2 s grace period.
    world.pinecone.set_latency(Duration::from_secs(2));
    let grace = Duration::from_secs(2);
    let mut worker = spawn_worker(&world, &[("SHUTDOWN_GRACE_SECONDS", "2")]).await;

    let store = world.env.store.clone();
    let batch_id = b.summary.batch_id.clone();
    eventually(
        "the apply to take the lease",
        Duration::from_secs(30),
        || {
            let (store, batch_id) = (store.clone(), batch_id.clone());
            async move {
                store
                    .fleet_state(&batch_id)
                    .await
                    .is_ok_and(|s| s.lease_owner.is_some())
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    worker.sigterm();
    let mut unready = false;
    while signalled.elapsed() < grace {
        match reqwest::get(worker.url("/readyz")).await {
            Ok(r) if r.status().as_u16() == 503 => {
                unready = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(unready, "/readyz turned 503 once draining started");
    assert_eq!(
        get(&worker.url("/healthz")).await.0,
        200,
        "a draining worker is still alive"
    );
    // The grace period, the abandoned handler's hand-back, and at most the rest of the long
    // poll left in flight (20 s), which the worker waits for so it cannot swallow the message.
    let bound = grace + Duration::from_secs(30);
    let code = worker.wait_exit(bound).await;
    let took = signalled.elapsed();
    assert_eq!(code, Some(0), "log:\n{}", worker.log_text());
    assert!(took < bound, "exited after {took:?}");
    assert!(
        worker.log_text().contains("abandon"),
        "log:\n{}",
        worker.log_text()
    );
    assert_ne!(
        world.summary_status(&b.summary.batch_id).await,
        BatchStatus::Completed,
        "the apply was interrupted"
    );
    let state = world.fleet_state(&b.summary.batch_id).await;
    assert_eq!(state.lease_owner, None, "the lease was handed back");
    // moto, like SQS, keeps a long poll its client dropped open until its wait ends, looking
    // for messages once a second: had the worker dropped its poll at SIGTERM, that poll would
    // take the handed-back message within a second and hide it for a visibility timeout.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let depth = world.work_depth().await;
    assert_eq!(
        depth.visible, 1,
        "the message is visible again at once: {depth:?}"
    );

    // Another worker finishes the batch; the result is that of one uninterrupted run.
    world.pinecone.set_latency(Duration::ZERO);
    world
        .run_until_idle(&[], world.env.clients.sqs.clone(), Duration::from_secs(60))
        .await;
    assert_eq!(
        world.summary_status(&b.summary.batch_id).await,
        BatchStatus::Completed
    );
    assert_eq!(world.table().await, expected.items);
    assert_eq!(world.pinecone.all(NAMESPACE), expected.vectors);
    assert!(world.dead_letters().await.is_empty());
}

// The emulators live in this test's runtime: it needs threads to serve them while the test
// waits on the process.
#[tokio::test(flavor = "multi_thread")]
async fn apply_batch_applies_a_finished_batch_once_and_reports_it() {
    let world = Fleet::new().await;
    let running = {
        let mut b = batch_now(91, small_shape());
        b.spec.steps = vec![("in_progress".to_owned(), 100)];
        b
    };
    let done = finished_now(92);
    world.seed(&running).await;
    world.seed(&done).await;

    // `worker apply-batch <args>`, which must exit 0.
    let vars = world.worker_vars(&[("LOG_FORMAT", "text")]);
    let apply_batch = |args: Vec<String>| {
        let vars = vars.clone();
        async move {
            let out = tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = std::iter::once("apply-batch")
                    .chain(args.iter().map(String::as_str))
                    .collect();
                process::run("worker", &args, vars)
            })
            .await
            .expect("blocking task");
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            out
        }
    };

    let out = apply_batch(vec![running.summary.batch_id.clone()]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("not finished at OpenAI (status in_progress)"),
        "{stdout}"
    );

    let out = apply_batch(vec![done.summary.batch_id.clone(), "--json".into()]).await;
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(report["result"], "applied");
    assert_eq!(report["openai_status"], "completed");
    assert_eq!(report["report"]["summary_status"], "COMPLETED");
    assert_eq!(
        world.summary_status(&done.summary.batch_id).await,
        BatchStatus::Completed
    );

    let out = apply_batch(vec![done.summary.batch_id.clone()]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("already finished (summary status COMPLETED)"),
        "{stdout}"
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("SECRET"));
}

// ---------------------------------------------------------------------------------------------
// The outage drill (issue 5): OpenAI answers 500 until the batch is dead-lettered by the redrive
// policy; `replay-dlq --dry-run` changes nothing; after the outage a replay brings it back and
// it completes.

#[tokio::test]
async fn an_outage_dead_letters_a_batch_and_replay_brings_it_back_to_completion() {
    let w = Fleet::new().await; // maxReceiveCount 3
    let b = finished_now(31);
    w.seed(&b).await;
    w.openai.set_outage(true);
    w.enqueue(&b.summary.batch_id).await;

    // A worker runs through the outage until the redrive policy moves the message.
    let stop = CancellationToken::new();
    let settings = w.settings(false, &[]);
    let deps = w.deps(&settings, w.env.clients.sqs.clone());
    let running = tokio::spawn(worker::run(settings, deps, stop.clone()));
    let sqs = &w.env.clients.sqs;
    let dlq = &w.env.queues.dead_letter_url;
    eventually(
        "the batch is dead-lettered",
        Duration::from_secs(180),
        || async {
            queue_depth(sqs, dlq)
                .await
                .map(|d| d.total() > 0)
                .unwrap_or(false)
        },
    )
    .await;
    stop.cancel();
    running
        .await
        .expect("worker task")
        .expect("worker ran cleanly");
    assert_eq!(
        w.summary_status(&b.summary.batch_id).await,
        BatchStatus::Pending
    );
    assert!(
        w.openai.count("GET", "/v1/batches/") >= 3,
        "every receive checked OpenAI"
    );

    let services = producer::Services::new(&w.env.clients, &w.env.table);
    let mut replay = producer::ReplaySettings::new(&w.env.queues.work_url, dlq.as_str());
    replay.poll_wait_seconds = 1;
    replay.visibility_seconds = 5;

    // A dry run says what it would move and changes nothing.
    replay.dry_run = true;
    let report = producer::replay(&replay, &services).await.expect("dry run");
    assert_eq!(report.moved.len(), 1);
    let work_depth = w.work_depth().await;
    assert_eq!(work_depth.total(), 0, "a dry run sends nothing");
    eventually(
        "the dry run released the message",
        Duration::from_secs(20),
        || async {
            queue_depth(sqs, dlq)
                .await
                .map(|d| d.visible == 1)
                .unwrap_or(false)
        },
    )
    .await;

    // After the outage the replay moves it back and a worker completes it.
    w.openai.set_outage(false);
    replay.dry_run = false;
    let report = producer::replay(&replay, &services).await.expect("replay");
    assert_eq!(report.moved.len(), 1);
    assert!(report.succeeded());
    w.run_until_idle(&[], w.env.clients.sqs.clone(), Duration::from_secs(120))
        .await;
    assert_eq!(
        w.summary_status(&b.summary.batch_id).await,
        BatchStatus::Completed
    );
    assert_eq!(queue_depth(sqs, dlq).await.unwrap().total(), 0);
}
