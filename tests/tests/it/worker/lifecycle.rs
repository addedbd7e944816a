//! The worker's lifecycle under everyday operations (issue 9): a rotated key, copies of a
//! chain, a long apply under a short deadline, one message handled twice at once, and a holder
//! frozen past its lease.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_shared::message::BatchMessage;
use fleet_shared::model::BatchStatus;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use worker::handler::{self, Context};
use worker::health::Health;
use worker::outcome::Outcome as Handled;
use worker::received::Received;

use super::*;

// The emulators live in this test's runtime: it needs threads to serve them while the test
// waits on the process.
#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_key_dead_letters_nothing_turns_readyz_503_and_every_batch_completes_after() {
    let world = Fleet::new().await; // maxReceiveCount 3: a climbing receive count would redrive
    let batches: Vec<ScenarioBatch> = (0..3).map(|i| finished_now(300 + i)).collect();
    for b in &batches {
        world.seed(b).await;
        world.enqueue(&b.summary.batch_id).await;
    }
    // The key the worker has is rejected for 15 s, then accepted again.
    world
        .openai
        .set_api_key(Some("sk-rotated-elsewhere".into()));
    let mut worker = spawn_worker(
        &world,
        &[
            ("DEPLOYMENT_UNREADY_SECONDS", "3"),
            ("RETRY_MAX_SECONDS", "2"),
        ],
    )
    .await;
    let rejected_since = Instant::now();
    let readyz = worker.url("/readyz");
    eventually(
        "/readyz 503 during the rejection",
        Duration::from_secs(10),
        || {
            let readyz = readyz.clone();
            async move { get(&readyz).await.0 == 503 }
        },
    )
    .await;
    let mut samples = Vec::new();
    while rejected_since.elapsed() < Duration::from_secs(15) {
        samples.push(get(&readyz).await.0);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        samples.iter().filter(|s| **s == 503).count() * 10 >= samples.len() * 9,
        "unready while the key is rejected: {samples:?}"
    );
    assert!(
        world.dead_letters().await.is_empty(),
        "nothing dead-lettered"
    );
    world.openai.set_api_key(None);

    for b in &batches {
        world
            .until_completed(&b.summary.batch_id, Duration::from_secs(60))
            .await;
    }
    eventually("/readyz 200 after", Duration::from_secs(10), || {
        let readyz = readyz.clone();
        async move { get(&readyz).await.0 == 200 }
    })
    .await;
    let (_, page) = get(&worker.url("/metrics")).await;
    let s = series(&page);
    assert!(
        s.get("fleet_deployment_errors_total{cause=\"openai_key\"}")
            .is_some_and(|n| *n >= 3.0),
        "counted by cause:\n{page}"
    );
    assert!(
        !s.contains_key("fleet_messages_total{outcome=\"dead_lettered\"}"),
        "{page}"
    );
    assert!(
        world.dead_letters().await.is_empty(),
        "nothing dead-lettered"
    );
    assert!(!worker.log_text().contains("SECRET"));
    worker.sigterm();
    assert_eq!(worker.wait_exit(Duration::from_secs(10)).await, Some(0));
}

#[tokio::test]
async fn extra_copies_of_a_waiting_batch_die_out_to_one_chain() {
    let world = Fleet::new().await;
    let mut b = batch_now(310, small_shape());
    b.spec.steps = vec![("in_progress".to_owned(), 10_000)];
    world.seed(&b).await;
    let id = b.summary.batch_id.clone();
    // The producer's message (a chain token of its own), two copies of it (a send that
    // succeeded before a failed delete), and 4 hand-written copies without a token.
    let now_ms = chrono::Utc::now().timestamp_millis();
    world
        .env
        .store
        .claim_schedule(&id, now_ms + 900_000, now_ms, "producer-chain")
        .await
        .unwrap();
    let produced = BatchMessage {
        chain: Some("producer-chain".into()),
        ..BatchMessage::new(&id)
    };
    for _ in 0..3 {
        world.send(&produced.to_body()).await;
    }
    for _ in 0..4 {
        world.enqueue(&id).await;
    }

    let stop = CancellationToken::new();
    let settings = world.settings(
        false,
        &[("RECHECK_MIN_SECONDS", "2"), ("RECHECK_MAX_SECONDS", "2")],
    );
    let deps = world.deps(&settings, world.env.clients.sqs.clone());
    let running = tokio::spawn(worker::run(settings, deps, stop.clone()));
    let started = Instant::now();
    // One re-check period and then some for the stale copies to be received and dropped.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let before = world.openai.batch_gets(&b.spec.id);
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let checks = world.openai.batch_gets(&b.spec.id) - before;
    let took = window.elapsed().as_secs_f64();
    stop.cancel();
    running.await.unwrap().unwrap();
    // One chain re-checks every 2 s (plus a receive's latency): at most 6 in 10 s; seven
    // copies living on would make about 35.
    assert!(
        (2..=6).contains(&checks),
        "{checks} checks in {took:.1} s after {:?}",
        window.duration_since(started)
    );
    let depth = world.work_depth().await;
    assert!(
        depth.total() <= 2,
        "one live link (and at most one stale one): {depth:?}"
    );
    assert!(world.dead_letters().await.is_empty());
}

#[tokio::test]
async fn an_apply_ten_times_longer_than_the_deadline_completes_without_being_abandoned() {
    let b = {
        let mut b = batch_now(
            320,
            Shape {
                receipts: 8,
                ..small_shape()
            },
        );
        b.spec.steps = vec![("completed".to_owned(), 1)];
        b
    };
    let (expected, world) = reference_and_fleet(&b).await;
    // One vector update a second; the handling may go 2 s without progress.
    let started = Instant::now();
    let log = run_logged(
        &world,
        &[
            ("MESSAGE_DEADLINE_SECONDS", "2"),
            ("PINECONE_UPDATES_PER_SECOND", "1"),
            ("VISIBILITY_TIMEOUT_SECONDS", "10"),
        ],
        Duration::from_secs(240),
    )
    .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(20),
        "the apply took {took:?}: not 10× the deadline"
    );
    assert_eq!(
        world.summary_status(&b.summary.batch_id).await,
        BatchStatus::Completed
    );
    assert_eq!(world.table().await, expected.items);
    assert_eq!(world.pinecone.all(NAMESPACE), expected.vectors);
    let receives_with_messages = log
        .calls()
        .iter()
        .filter(|c| matches!(c, SqsCall::Delete))
        .count();
    assert_eq!(
        receives_with_messages, 1,
        "handled once, never abandoned and retried"
    );
}

#[tokio::test]
async fn the_same_message_handled_twice_at_once_by_one_worker_applies_once() {
    let b = finished_now(330);
    let (expected, world) = reference_and_fleet(&b).await;
    let settings = world.settings(false, &[]);
    let received = world
        .env
        .clients
        .sqs
        .receive_message()
        .queue_url(&world.env.queues.work_url)
        .wait_time_seconds(5)
        .visibility_timeout(60)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default();
    let msg = Received::from_sqs(received.into_iter().next().expect("one message")).unwrap();
    let ctx = Arc::new(Context {
        services: worker::service::build_services(&settings, world.env.store.clone()).unwrap(),
        applies: Arc::new(Semaphore::new(2)),
        health: Arc::new(Health::default()),
        sqs: world.env.clients.sqs.clone(),
        store: world.env.store.clone(),
        settings: Arc::new(settings),
    });
    let (a, b2) = tokio::join!(
        handler::handle(ctx.clone(), msg.clone(), CancellationToken::new()),
        handler::handle(ctx.clone(), msg, CancellationToken::new()),
    );
    let mut outcomes = [a, b2];
    outcomes.sort_by_key(|o| o.as_str());
    assert!(
        outcomes.contains(&Handled::Applied),
        "one applied: {outcomes:?}"
    );
    assert!(
        outcomes.iter().filter(|o| **o == Handled::Applied).count() == 1,
        "only one: {outcomes:?}"
    );
    assert_eq!(
        world.summary_status(&b.summary.batch_id).await,
        BatchStatus::Completed
    );
    assert_eq!(world.table().await, expected.items);
    assert_eq!(world.pinecone.all(NAMESPACE), expected.vectors);
    assert_eq!(
        world
            .openai
            .requests()
            .iter()
            .filter(|r| r.method == "GET" && r.path.ends_with("/content"))
            .count(),
        b.files.len().min(3),
        "the files were downloaded by one apply"
    );
}

// The emulators live in this test's runtime: it needs threads to serve them while the test
// waits on the process.
#[tokio::test(flavor = "multi_thread")]
async fn a_holder_frozen_past_its_lease_writes_nothing_after_another_worker_finished() {
    let b = finished_now(340);
    let (expected, world) = reference_and_fleet(&b).await;
    // A slow Pinecone keeps the first worker mid-apply (every call 3 s: a fetch and its
    // updates take 6 s at least).
    world.pinecone.set_latency(Duration::from_secs(3));
    let holder = spawn_worker(&world, &[("VISIBILITY_TIMEOUT_SECONDS", "10")]).await;
    let (store, id) = (world.env.store.clone(), b.summary.batch_id.clone());
    let started = Instant::now();
    while !store
        .fleet_state(&id)
        .await
        .is_ok_and(|s| s.lease_owner.is_some())
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the holder never took the lease; log:\n{}",
            holder.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    holder.signal("-STOP");
    let frozen_at = Instant::now();
    world.pinecone.set_latency(Duration::ZERO);
    assert_ne!(
        world.summary_status(&b.summary.batch_id).await,
        BatchStatus::Completed,
        "frozen mid-apply"
    );

    // Another worker gets the message once its visibility runs out, waits for the lease to run
    // out, and finishes the batch.
    world
        .run_until_idle(
            &[("VISIBILITY_TIMEOUT_SECONDS", "10"), ("HOSTNAME", "second")],
            world.env.clients.sqs.clone(),
            Duration::from_secs(120),
        )
        .await;
    assert_eq!(
        world.summary_status(&b.summary.batch_id).await,
        BatchStatus::Completed
    );
    assert!(
        frozen_at.elapsed() > Duration::from_secs(10),
        "frozen longer than its lease"
    );
    let table = world.table().await;
    let vectors = world.pinecone.all(NAMESPACE);
    let updates = world.pinecone.update_count();
    assert_eq!(table, expected.items);
    assert_eq!(vectors, expected.vectors);

    // Thawed, the old holder finds its lease gone and writes nothing more.
    holder.signal("-CONT");
    let log_has = |text: &str| holder.log_text().contains(text);
    eventually(
        "the thawed holder stops",
        Duration::from_secs(20),
        || async { log_has("apply stopped") },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(world.table().await, table, "no write after the thaw");
    assert_eq!(world.pinecone.all(NAMESPACE), vectors);
    assert_eq!(
        world.pinecone.update_count(),
        updates,
        "no Pinecone update after the thaw"
    );
    assert!(world.dead_letters().await.is_empty());
}

#[tokio::test]
async fn a_missing_table_keeps_the_message_waiting_without_copies_or_dead_letters() {
    let b = finished_now(350);
    let world = fleet_with(&b).await;
    let stop = CancellationToken::new();
    // The worker is pointed at a table that does not exist (a typo in the deployment).
    let settings = world.settings(false, &[("DYNAMODB_TABLE_NAME", "no-such-table")]);
    let log = SqsLog::default();
    let mut deps = world.deps(&settings, log.client(&world.env.clients.sqs));
    deps.store =
        fleet_shared::store::Store::new(world.env.clients.dynamodb.clone(), "no-such-table");
    deps.service = worker::service::build_services(&settings, deps.store.clone()).unwrap();
    let running = tokio::spawn(worker::run(settings, deps, stop.clone()));
    tokio::time::sleep(Duration::from_secs(8)).await;
    stop.cancel();
    running.await.unwrap().unwrap();
    assert!(
        world.dead_letters().await.is_empty(),
        "nothing dead-lettered"
    );
    let depth = world.work_depth().await;
    assert_eq!(depth.total(), 1, "one waiting copy, no pile-up: {depth:?}");
    let deferrals: Vec<u32> = log
        .sends_to(&world.env.queues.work_url)
        .iter()
        .map(|(m, _)| m.deferrals)
        .collect();
    assert!(deferrals.len() >= 2, "retried with back-off: {deferrals:?}");
    assert!(
        deferrals.windows(2).all(|w| w[1] == w[0] + 1),
        "the back-off grows with the deferrals in a row: {deferrals:?}"
    );
    assert_eq!(
        world.summary_status(&b.summary.batch_id).await,
        BatchStatus::Pending
    );
}

#[tokio::test]
async fn exhausted_openai_quota_is_an_error_of_the_deployment_not_of_the_batch() {
    let b = finished_now(360);
    let world = fleet_with(&b).await; // maxReceiveCount 3
    world.openai.set_quota_exhausted(true);
    let stop = CancellationToken::new();
    let settings = world.settings(false, &[("RETRY_MAX_SECONDS", "2")]);
    let log = SqsLog::default();
    let deps = world.deps(&settings, log.client(&world.env.clients.sqs));
    let running = tokio::spawn(worker::run(settings, deps, stop.clone()));
    tokio::time::sleep(Duration::from_secs(8)).await;
    let checks_while_exhausted = world.openai.batch_gets(&b.spec.id);
    world.openai.set_quota_exhausted(false);
    // Once billing is fixed, the batch completes.
    world
        .until_completed(&b.summary.batch_id, Duration::from_secs(60))
        .await;
    stop.cancel();
    running.await.unwrap().unwrap();
    assert!(
        world.dead_letters().await.is_empty(),
        "nothing dead-lettered"
    );
    let deferrals: Vec<u32> = log
        .sends_to(&world.env.queues.work_url)
        .iter()
        .map(|(m, _)| m.deferrals)
        .filter(|d| *d > 0)
        .collect();
    assert!(
        deferrals.len() >= 2,
        "deferred with back-off: {deferrals:?}"
    );
    // Never retried hot: a handful of calls in 8 s, not a retry loop.
    assert!(
        checks_while_exhausted <= 12,
        "{checks_while_exhausted} status calls while the quota was exhausted"
    );
}
