//! The worker against moto and the emulators: re-checks with growing delays, duplicates under
//! several workers, poison messages, transient faults, overdue batches, long waits, and, through
//! the real binary, SIGTERM during an apply, `/metrics`, `/readyz` and `apply-batch`.
//!
//! Timings are shrunk through the worker's own settings (seconds, not minutes); nothing is
//! judged by absolute time except the bounds the worker promises (the grace period).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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
use fleet_shared::model::item::to_wire_json;
use fleet_shared::model::{BatchStatus, ReceiptWordLabel};
use fleet_shared::queue::{self, queue_depth};
use fleet_tests::openai::{FaultSpec, OpenAiEmulator};
use fleet_tests::pinecone::PineconeEmulator;
use fleet_tests::scenario::{self, Outcome, Rng, ScenarioBatch, Shape};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use worker::cli::SettingFlags;
use worker::{Deps, Settings};

use crate::support::TestEnv;

mod lifecycle;

const NAMESPACE: &str = "words";
const SECRET: &str = "sk-it-SECRET-never-printed";

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// One test's world: a table and queues on moto, and both emulators.
struct World {
    env: TestEnv,
    openai: OpenAiEmulator,
    pinecone: PineconeEmulator,
}

impl World {
    async fn new() -> World {
        World {
            env: TestEnv::with_queue_settings(3, 30).await,
            openai: OpenAiEmulator::start().await.expect("openai emulator"),
            pinecone: PineconeEmulator::start().await.expect("pinecone emulator"),
        }
    }

    /// The worker's environment for this world, with test-sized timings; `extra` overrides.
    fn env_vars(&self, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut vars: HashMap<String, String> = [
            ("DYNAMODB_TABLE_NAME", self.env.table.as_str()),
            ("QUEUE_URL", self.env.queues.work_url.as_str()),
            (
                "DEAD_LETTER_QUEUE_URL",
                self.env.queues.dead_letter_url.as_str(),
            ),
            ("OPENAI_API_KEY", SECRET),
            ("PINECONE_API_KEY", SECRET),
            ("METRICS_ADDR", "127.0.0.1:0"),
            ("HOSTNAME", "it-worker"),
            ("MAX_IN_FLIGHT", "8"),
            ("VISIBILITY_TIMEOUT_SECONDS", "10"),
            ("HEARTBEAT_SECONDS", "3"),
            ("RECHECK_MIN_SECONDS", "1"),
            ("RECHECK_MAX_SECONDS", "2"),
            ("RETRY_MIN_SECONDS", "1"),
            ("RETRY_MAX_SECONDS", "2"),
            ("MESSAGE_DEADLINE_SECONDS", "60"),
            ("SHUTDOWN_GRACE_SECONDS", "5"),
            ("LOG_FORMAT", "json"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        vars.insert("OPENAI_BASE_URL".into(), self.openai.base_url());
        vars.insert("PINECONE_INDEX_HOST".into(), self.pinecone.base_url());
        for (k, v) in extra {
            vars.insert((*k).to_owned(), (*v).to_owned());
        }
        vars
    }

    fn settings(&self, exit_when_idle: bool, extra: &[(&str, &str)]) -> Settings {
        Settings::read(
            &SettingFlags::default(),
            exit_when_idle,
            &self.env_vars(extra),
        )
        .expect("valid test settings")
    }

    fn deps(&self, settings: &Settings, sqs: aws_sdk_sqs::Client) -> Deps {
        Deps {
            sqs,
            store: self.env.store.clone(),
            service: worker::service::build_services(settings, self.env.store.clone())
                .expect("services"),
            metrics: worker::metrics::install(),
        }
    }

    /// Runs one in-process worker until the queue is idle (bounded by `limit`).
    async fn run_until_idle(
        &self,
        extra: &[(&str, &str)],
        sqs: aws_sdk_sqs::Client,
        limit: Duration,
    ) {
        let settings = self.settings(true, extra);
        let deps = self.deps(&settings, sqs);
        tokio::time::timeout(limit, worker::run(settings, deps, CancellationToken::new()))
            .await
            .expect("worker went idle in time")
            .expect("worker ran cleanly");
    }

    async fn seed(&self, b: &ScenarioBatch) {
        let items = b
            .labels
            .iter()
            .map(ReceiptWordLabel::to_item)
            .chain(std::iter::once(b.summary.to_item()))
            .collect();
        self.env
            .store
            .put_items_batched(items)
            .await
            .expect("seed table");
        self.openai.add_batch(b.spec.clone());
        for (id, content) in &b.files {
            self.openai.add_file(id.clone(), content.clone());
        }
        for (id, metadata) in &b.vectors {
            self.pinecone
                .upsert(NAMESPACE, id, vec![0.1, 0.2], metadata.clone());
        }
    }

    async fn send(&self, body: &str) {
        queue::send_one(
            &self.env.clients.sqs,
            &self.env.queues.work_url,
            body,
            0,
            &[],
        )
        .await
        .expect("send");
    }

    async fn enqueue(&self, batch_id: &str) {
        self.send(&BatchMessage::new(batch_id).to_body()).await;
    }

    /// Waits until the batch's summary is COMPLETED (bounded by `limit`).
    async fn until_completed(&self, batch_id: &str, limit: Duration) {
        let store = &self.env.store;
        eventually("the batch to complete", limit, || async move {
            store
                .batch_summary(batch_id)
                .await
                .ok()
                .flatten()
                .is_some_and(|s| s.status == BatchStatus::Completed)
        })
        .await;
    }

    async fn summary_status(&self, batch_id: &str) -> BatchStatus {
        self.env
            .store
            .batch_summary(batch_id)
            .await
            .expect("read summary")
            .expect("summary exists")
            .status
    }

    /// Every message of the dead-letter queue, with its attributes.
    async fn dead_letters(&self) -> Vec<Message> {
        drain(&self.env.clients.sqs, &self.env.queues.dead_letter_url).await
    }

    /// Every item of the table but the fleet's own bookkeeping (lease holders differ by run).
    async fn table(&self) -> BTreeMap<(String, String), Value> {
        let mut items = BTreeMap::new();
        let mut start = None;
        loop {
            let out = self
                .env
                .clients
                .dynamodb
                .scan()
                .table_name(&self.env.table)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .expect("scan");
            for item in out.items.unwrap_or_default() {
                let wire = to_wire_json(&item);
                let key = (
                    wire["PK"]["S"].as_str().unwrap_or_default().to_owned(),
                    wire["SK"]["S"].as_str().unwrap_or_default().to_owned(),
                );
                if key.1 != "FLEET#STATE" {
                    items.insert(key, wire);
                }
            }
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return items,
            }
        }
    }
}

/// Receives until the queue answers empty twice.
async fn drain(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<Message> {
    let mut all = Vec::new();
    let mut empty = 0;
    while empty < 2 {
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .visibility_timeout(300)
            .message_attribute_names("All")
            .send()
            .await
            .expect("receive");
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            empty += 1;
        }
        all.extend(messages);
    }
    all
}

/// A generated batch whose OpenAI clock is now: the scenario's timestamps are from 2025, which
/// the worker would rightly take for a batch an hour past its expiry and cancel.
fn batch_now(seed: u64, shape: Shape) -> ScenarioBatch {
    let mut b = scenario::batch(&mut Rng::new(seed), 0, &shape);
    b.spec.created_at = now() - 60;
    b.spec.expires_at = Some(now() + 86_400);
    b
}

fn small_shape() -> Shape {
    Shape {
        receipts: 4,
        targets_per_receipt: 4,
        outcome: Outcome::Completed,
        in_progress_polls: 1,
        ..Shape::default()
    }
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
    let world = World::new().await;
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

    let log = SqsLog::default();
    world
        .run_until_idle(
            &[("RECHECK_MIN_SECONDS", "1"), ("RECHECK_MAX_SECONDS", "4")],
            log.client(&world.env.clients.sqs),
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
    let state = world
        .env
        .store
        .fleet_state(&b.summary.batch_id)
        .await
        .unwrap();
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
    let reference = World::new().await;
    let b = finished_now(21);
    reference.seed(&b).await;
    reference.enqueue(&b.summary.batch_id).await;
    reference
        .run_until_idle(
            &[],
            reference.env.clients.sqs.clone(),
            Duration::from_secs(60),
        )
        .await;
    let expected_table = reference.table().await;
    let expected_vectors = reference.pinecone.all(NAMESPACE);
    let expected_downloads = reference.openai.count("GET", "/v1/files/");
    assert_eq!(
        reference.summary_status(&b.summary.batch_id).await,
        BatchStatus::Completed
    );

    let world = World::new().await;
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
    assert_eq!(world.table().await, expected_table, "same table as one run");
    assert_eq!(world.pinecone.all(NAMESPACE), expected_vectors);
    assert_eq!(
        world.openai.count("GET", "/v1/files/"),
        expected_downloads,
        "the batch's files were read by one apply only"
    );
    assert!(world.dead_letters().await.is_empty());
}

#[tokio::test]
async fn poison_bodies_are_dead_lettered_with_their_reason_while_the_worker_keeps_going() {
    let world = World::new().await;
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
    let depth = queue_depth(&world.env.clients.sqs, &world.env.queues.work_url)
        .await
        .unwrap();
    assert_eq!(depth.total(), 0, "poison deleted from the work queue");
}

#[tokio::test]
async fn throttling_and_server_errors_do_not_dead_letter_and_batches_still_complete() {
    let world = World::new().await;
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
    let world = World::new().await;
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
    let world = World::new().await;
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

    let log = SqsLog::default();
    world
        .run_until_idle(
            // A `not_before` further ahead than the longest re-check is clamped to it.
            &[("RECHECK_MAX_SECONDS", "30")],
            log.client(&world.env.clients.sqs),
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

/// `target/debug/worker`, built by `cargo build` or `cargo test --workspace` (the worker's own
/// integration tests make cargo build it).
fn worker_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let bin = dir.join("worker");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build -p worker` (or `cargo test --workspace`) first",
        bin.display()
    );
    bin
}

struct WorkerProcess {
    child: Child,
    metrics: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl WorkerProcess {
    async fn spawn(world: &World, args: &[&str], extra: &[(&str, &str)]) -> WorkerProcess {
        let mut cmd = Command::new(worker_binary());
        cmd.env_clear()
            .args(args)
            .env("AWS_ENDPOINT_URL", &world.env.endpoint)
            .env("AWS_REGION", fleet_tests::aws_env::REGION)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in world.env_vars(extra) {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn worker");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().expect("stderr");
        let lines = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && let Some(addr) = v.get("http_addr").and_then(Value::as_str)
                {
                    let _ = tx.send(addr.to_owned());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
            .await
            .expect("reader thread")
            .unwrap_or_else(|_| {
                panic!(
                    "no metrics address logged; stderr: {:?}",
                    stderr.lock().unwrap()
                )
            });
        WorkerProcess {
            child,
            metrics: addr.parse().expect("socket address"),
            stderr,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.metrics)
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the exit, polling; `None` when it did not exit within `limit`.
    async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status.code().unwrap_or(-1));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    fn log_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.expect("GET");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn series(page: &str) -> HashMap<String, f64> {
    worker::metrics::parse_text(page).into_iter().collect()
}

// The emulators live in this test's runtime: it needs threads to serve them while the test
// waits on the process.
#[tokio::test(flavor = "multi_thread")]
async fn the_binary_exports_counters_of_what_it_did_and_exits_0_on_sigterm() {
    let world = World::new().await;
    let good = finished_now(71);
    world.seed(&good).await;
    world.enqueue(&good.summary.batch_id).await;
    world.send("not JSON").await;
    world.send(r#"{"v":9,"batch_id":"x"}"#).await;
    world.send(r#"{"v":1,"batch_id":"unknown-batch"}"#).await;

    let mut worker = WorkerProcess::spawn(&world, &[], &[]).await;
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
        .env
        .store
        .fleet_state("unknown-batch")
        .await
        .unwrap()
        .dead_letter
        .expect("marked dead-lettered");
    assert_eq!(mark.reason, "batch_unknown");
    assert!(
        world
            .env
            .store
            .fleet_state(&good.summary.batch_id)
            .await
            .unwrap()
            .dead_letter
            .is_none()
    );

    // Every line of a message's handling carries its ids (JSON logs, the span's fields),
    // including the lines the library logs while applying.
    let lines: Vec<Value> = worker
        .stderr
        .lock()
        .unwrap()
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
    let reference = World::new().await;
    let b = finished_now(81);
    reference.seed(&b).await;
    reference.enqueue(&b.summary.batch_id).await;
    reference
        .run_until_idle(
            &[],
            reference.env.clients.sqs.clone(),
            Duration::from_secs(60),
        )
        .await;
    let expected_table = reference.table().await;
    let expected_vectors = reference.pinecone.all(NAMESPACE);

    let world = World::new().await;
    world.seed(&b).await;
    world.enqueue(&b.summary.batch_id).await;
    // Every Pinecone call takes 2 s: the apply outlasts the 2 s grace period.
    world.pinecone.set_latency(Duration::from_secs(2));
    let grace = Duration::from_secs(2);
    let mut worker = WorkerProcess::spawn(&world, &[], &[("SHUTDOWN_GRACE_SECONDS", "2")]).await;

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
    let code = worker.wait_exit(grace + Duration::from_secs(8)).await;
    let took = signalled.elapsed();
    assert_eq!(code, Some(0), "log:\n{}", worker.log_text());
    assert!(
        took < grace + Duration::from_secs(8),
        "exited after {took:?}"
    );
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
    let state = world
        .env
        .store
        .fleet_state(&b.summary.batch_id)
        .await
        .unwrap();
    assert_eq!(state.lease_owner, None, "the lease was handed back");
    let depth = queue_depth(&world.env.clients.sqs, &world.env.queues.work_url)
        .await
        .unwrap();
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
    assert_eq!(world.table().await, expected_table);
    assert_eq!(world.pinecone.all(NAMESPACE), expected_vectors);
    assert!(world.dead_letters().await.is_empty());
}

// The emulators live in this test's runtime: it needs threads to serve them while the test
// waits on the process.
#[tokio::test(flavor = "multi_thread")]
async fn apply_batch_applies_a_finished_batch_once_and_reports_it() {
    let world = World::new().await;
    let running = {
        let mut b = batch_now(91, small_shape());
        b.spec.steps = vec![("in_progress".to_owned(), 100)];
        b
    };
    let done = finished_now(92);
    world.seed(&running).await;
    world.seed(&done).await;

    let run = |args: Vec<String>| {
        let mut cmd = Command::new(worker_binary());
        cmd.env_clear()
            .args(&args)
            .env("AWS_ENDPOINT_URL", &world.env.endpoint)
            .env("AWS_REGION", fleet_tests::aws_env::REGION)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true");
        for (k, v) in world.env_vars(&[("LOG_FORMAT", "text")]) {
            cmd.env(k, v);
        }
        cmd
    };
    let output = |mut cmd: Command| async move {
        tokio::task::spawn_blocking(move || cmd.output().expect("run worker apply-batch"))
            .await
            .expect("blocking task")
    };

    let out = output(run(vec![
        "apply-batch".into(),
        running.summary.batch_id.clone(),
    ]))
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("not finished at OpenAI (status in_progress)"),
        "{stdout}"
    );

    let out = output(run(vec![
        "apply-batch".into(),
        done.summary.batch_id.clone(),
        "--json".into(),
    ]))
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(report["result"], "applied");
    assert_eq!(report["openai_status"], "completed");
    assert_eq!(report["report"]["summary_status"], "COMPLETED");
    assert_eq!(
        world.summary_status(&done.summary.batch_id).await,
        BatchStatus::Completed
    );

    let out = output(run(vec![
        "apply-batch".into(),
        done.summary.batch_id.clone(),
    ]))
    .await;
    assert_eq!(out.status.code(), Some(0));
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
    let w = World::new().await; // maxReceiveCount 3
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
    let work_depth = queue_depth(sqs, &w.env.queues.work_url).await.unwrap();
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
