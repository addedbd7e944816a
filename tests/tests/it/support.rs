//! The one harness of the integration tests: set-up, seeding, snapshots, queue draining and
//! the binaries, each by one rule, so that every test module meets the fleet the same way.
//!
//! - **Set-up.** Every test makes its own table and queue pair on moto ([`TestEnv`]: max
//!   receive count 3, visibility 30 s unless asked otherwise) and, when it needs them, its own
//!   emulators ([`Fleet`]: `TestEnv` + OpenAI + Pinecone + the `Services` that finish batches).
//! - **Seeding.** [`Fleet::seed`] puts a scenario batch everywhere it lives: its labels and
//!   summary in the table, its batch and files at OpenAI, its vectors in Pinecone.
//! - **Snapshots.** [`Fleet::table`] and [`Fleet::snapshot`] read the table with a consistent
//!   scan and leave out exactly one kind of item: the fleet's own bookkeeping, `FLEET#STATE`
//!   (lease owner and expiry, schedule marker, chain token, apply cursor, dead-letter mark).
//!   Those are the volatile attributes: they differ from run to run by owner names and clock
//!   times. Every other item is compared whole, attribute for attribute.
//! - **Draining.** [`drain`] receives a queue (hiding what it got for 5 minutes, with every
//!   message attribute) until it answers empty twice, so a message still in flight is not
//!   missed.
//! - **Binaries.** [`process::binary`] finds another package's binary beside this test binary
//!   (`target/<profile>/<name>`) and builds it first when it is missing or older than its
//!   sources; [`process::Process`] runs one with exactly the given environment.
//! - **DynamoDB calls.** [`watch::Watch`] shows a test every request a store's client sends.

use std::future::Future;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::Message;
use fleet_shared::aws::AwsClients;
use fleet_shared::message::BatchMessage;
use fleet_shared::model::{BatchStatus, BatchSummary, BatchType, ImageId, ReceiptKey};
use fleet_shared::queue::{self, QueueDepth};
use fleet_shared::store::Store;
use fleet_tests::aws_env::{self, Queues};
use fleet_tests::scenario::{self, Outcome, Rng, ScenarioBatch, Shape};

mod fleet;
pub mod process;
pub mod watch;

pub use fleet::{
    Fleet, NAMESPACE, SECRET, Snapshot, handle, handling, services_for, take_lease, test_retry,
};

/// The image of the hand-made summaries ([`summary`]).
pub const IMG: &str = "0f0e0d0c-0b0a-4909-8807-060504030201";

#[allow(dead_code)] // fields used by some test modules only
pub struct TestEnv {
    pub endpoint: String,
    pub clients: AwsClients,
    pub table: String,
    pub store: Store,
    pub queues: Queues,
}

impl TestEnv {
    /// A fresh table and queue pair (max receive count 3, visibility 30 s).
    pub async fn new() -> TestEnv {
        Self::with_queue_settings(3, 30).await
    }

    pub async fn with_queue_settings(max_receive_count: u32, visibility: u32) -> TestEnv {
        let (endpoint, clients) = aws_env::local_clients().expect("moto endpoint");
        let table = aws_env::unique("receipts");
        aws_env::create_receipts_table(&clients.dynamodb, &table)
            .await
            .expect("create table");
        let queues = aws_env::create_queues(
            &clients.sqs,
            &aws_env::unique("work"),
            max_receive_count,
            visibility,
        )
        .await
        .expect("create queues");
        let store = Store::new(clients.dynamodb.clone(), &table);
        TestEnv {
            endpoint,
            clients,
            table,
            store,
            queues,
        }
    }

    /// The environment of a fleet binary (worker or producer) pointed at this table and
    /// queues on moto: fixed test credentials, no instance metadata, JSON logs at `info`.
    pub fn process_vars(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_REGION", aws_env::REGION),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("DYNAMODB_TABLE_NAME", self.table.as_str()),
            ("QUEUE_URL", self.queues.work_url.as_str()),
            (
                "DEAD_LETTER_QUEUE_URL",
                self.queues.dead_letter_url.as_str(),
            ),
            ("LOG_FORMAT", "json"),
            ("RUST_LOG", "info"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// Sends a raw body to the work queue.
    pub async fn send(&self, body: &str) {
        queue::send_one(&self.clients.sqs, &self.queues.work_url, body, 0, &[])
            .await
            .expect("send");
    }

    /// Sends a fresh message for `batch_id` to the work queue.
    pub async fn enqueue(&self, batch_id: &str) {
        self.send(&BatchMessage::new(batch_id).to_body()).await;
    }

    /// Every message of the work queue ([`drain`]).
    pub async fn drain_work(&self) -> Vec<Message> {
        drain(&self.clients.sqs, &self.queues.work_url).await
    }

    /// Every message of the dead-letter queue ([`drain`]).
    pub async fn dead_letters(&self) -> Vec<Message> {
        drain(&self.clients.sqs, &self.queues.dead_letter_url).await
    }

    /// The depth of the work queue.
    pub async fn work_depth(&self) -> QueueDepth {
        queue::queue_depth(&self.clients.sqs, &self.queues.work_url)
            .await
            .expect("queue depth")
    }

    /// The batch's fleet-state item (lease, schedule marker, chain, dead-letter mark).
    pub async fn fleet_state(&self, batch_id: &str) -> fleet_shared::store::FleetState {
        self.store
            .fleet_state(batch_id)
            .await
            .expect("read fleet state")
    }

    /// The summary's status, which must exist.
    pub async fn summary_status(&self, batch_id: &str) -> BatchStatus {
        self.store
            .batch_summary(batch_id)
            .await
            .expect("read summary")
            .expect("summary exists")
            .status
    }
}

/// Receives every message of a queue: until it answers empty twice (a message in flight is
/// not missed), hiding what it got for 5 minutes, with every message attribute.
pub async fn drain(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<Message> {
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

/// A hand-made pending-or-finished completion batch of one receipt of [`IMG`], submitted at
/// 2025-06-21T12:00:00Z (a test that cares about the time sets its own).
pub fn summary(batch_id: &str, status: BatchStatus) -> BatchSummary {
    BatchSummary {
        batch_id: batch_id.into(),
        batch_type: BatchType::Completion,
        openai_batch_id: format!("batch_{batch_id}"),
        submitted_at: fleet_shared::model::time::parse_timestamp("2025-06-21T12:00:00+00:00")
            .expect("valid time"),
        status,
        result_file_id: "N/A".into(),
        receipt_refs: vec![ReceiptKey {
            image_id: ImageId::parse(IMG).expect("valid image id"),
            receipt_id: 1,
        }],
    }
}

/// A generated batch whose OpenAI clock is now: the scenario's timestamps are from 2025, which
/// the worker would rightly take for a batch an hour past its expiry and cancel.
pub fn batch_now(seed: u64, shape: Shape) -> ScenarioBatch {
    let now = chrono::Utc::now().timestamp();
    let mut b = scenario::batch(&mut Rng::new(seed), 0, &shape);
    b.spec.created_at = now - 60;
    b.spec.expires_at = Some(now + 86_400);
    b
}

/// Four receipts of four targets, completed after one check in progress.
pub fn small_shape() -> Shape {
    Shape {
        receipts: 4,
        targets_per_receipt: 4,
        outcome: Outcome::Completed,
        in_progress_polls: 1,
        ..Shape::default()
    }
}

/// A generated batch that every check at OpenAI finds completed at once (no status script).
pub fn completed_batch(seed: u64, shape: &Shape) -> ScenarioBatch {
    let mut b = scenario::batch(&mut Rng::new(seed), 0, shape);
    b.spec.steps.clear();
    b
}

/// Polls `check` every 100 ms until it holds; fails the test after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET url`: the status and the body as text.
pub async fn get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.expect("GET");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}
