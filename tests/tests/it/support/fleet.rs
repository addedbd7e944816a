//! A whole fleet for one test: the table and queues on moto, the OpenAI and Pinecone
//! emulators, the `Services` that finish batches against them, and the worker's settings for
//! them (in process or as the binary).

use std::collections::{BTreeMap, HashMap};
use std::ops::Deref;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use fleet_shared::finish::{ApplyReport, FinishError, Services};
use fleet_shared::model::BatchStatus;
use fleet_shared::model::item::to_wire_json;
use fleet_shared::openai::client::{OpenAiClient, OpenAiConfig};
use fleet_shared::pinecone::client::{PineconeClient, PineconeConfig};
use fleet_shared::retry::RetryPolicy;
use fleet_shared::secret::SecretString;
use fleet_tests::openai::OpenAiEmulator;
use fleet_tests::pinecone::PineconeEmulator;
use fleet_tests::scenario::ScenarioBatch;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use worker::cli::SettingFlags;
use worker::{Deps, Settings};

use super::{TestEnv, eventually};

/// The Pinecone namespace of the word vectors.
pub const NAMESPACE: &str = "words";
/// The API key the worker binary and in-process workers are given (never to be printed).
pub const SECRET: &str = "sk-it-SECRET-never-printed";
/// The one item kind a [`Snapshot`] leaves out (see the module docs of `support`).
const VOLATILE_SK: &str = "FLEET#STATE";

#[allow(dead_code)] // each test module uses its own part
pub struct Fleet {
    pub env: TestEnv,
    pub openai: OpenAiEmulator,
    pub pinecone: PineconeEmulator,
    pub services: Services,
}

/// `fleet.send(…)`, `fleet.store`: the fleet is its test environment and more.
impl Deref for Fleet {
    type Target = TestEnv;

    fn deref(&self) -> &TestEnv {
        &self.env
    }
}

/// Retries fast enough for tests, with the same shape as production's.
pub fn test_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 5,
        min_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        ..RetryPolicy::default()
    }
}

/// `Services` of their own (their own clients, as a second worker process would have).
pub fn services_for(
    env: &TestEnv,
    openai: &OpenAiEmulator,
    pinecone: &PineconeEmulator,
) -> Services {
    let mut oc = OpenAiConfig::new(SecretString::from("sk-test-key"));
    oc.base_url = openai.base_url();
    oc.retry = test_retry();
    let mut pc = PineconeConfig::new(pinecone.base_url(), SecretString::from("pc-test-key"));
    pc.retry = test_retry();
    pc.updates_per_second = 1000.0;
    Services::new(
        env.store.clone(),
        OpenAiClient::new(oc).expect("openai client"),
        PineconeClient::new(pc).expect("pinecone client"),
    )
}

#[allow(dead_code)] // each test module uses its own part
impl Fleet {
    pub async fn new() -> Fleet {
        let env = TestEnv::new().await;
        let openai = OpenAiEmulator::start().await.expect("openai emulator");
        let pinecone = PineconeEmulator::start().await.expect("pinecone emulator");
        let services = services_for(&env, &openai, &pinecone);
        Fleet {
            env,
            openai,
            pinecone,
            services,
        }
    }

    /// A fleet with `b` seeded ([`Self::seed`]).
    pub async fn seeded(b: &ScenarioBatch) -> Fleet {
        let f = Fleet::new().await;
        f.seed(b).await;
        f
    }

    /// `Services` of their own that apply `per_chunk` receipts at a time and stop after
    /// `budget` writes, if given.
    pub fn chunked(&self, per_chunk: usize, budget: Option<usize>) -> Services {
        let mut services = services_for(&self.env, &self.openai, &self.pinecone);
        services.options.receipts_per_chunk = per_chunk;
        services.options.write_budget = budget.map(fleet_shared::finish::WriteBudget::new);
        services
    }

    /// `Services` whose store's client is `dynamodb` (e.g. one with an interceptor).
    pub fn services_with(&self, dynamodb: aws_sdk_dynamodb::Client) -> Services {
        let mut services = services_for(&self.env, &self.openai, &self.pinecone);
        services.store = fleet_shared::store::Store::new(dynamodb, &self.env.table);
        services
    }

    /// Puts a scenario batch's items in the table, its batch and files at OpenAI, its vectors in
    /// Pinecone.
    pub async fn seed(&self, b: &ScenarioBatch) {
        let mut items: Vec<_> = b.labels.iter().map(|l| l.to_item()).collect();
        items.push(b.summary.to_item());
        self.env
            .store
            .put_items_batched(items)
            .await
            .expect("seed table");
        self.openai.add_batch(b.spec.clone());
        for (id, content) in &b.files {
            self.openai.add_file(id.clone(), content.clone());
        }
        for (id, meta) in &b.vectors {
            self.pinecone
                .upsert(NAMESPACE, id, vec![0.1, 0.2], meta.clone());
        }
    }

    /// Every item of the table but the volatile `FLEET#STATE` ones, by (PK, SK), as wire JSON.
    pub async fn table(&self) -> BTreeMap<(String, String), Value> {
        let mut out = BTreeMap::new();
        let mut start = None;
        loop {
            let page = self
                .env
                .clients
                .dynamodb
                .scan()
                .table_name(&self.env.table)
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .expect("scan");
            for item in page.items.unwrap_or_default() {
                let key = |k: &str| match item.get(k) {
                    Some(AttributeValue::S(s)) => s.clone(),
                    _ => String::new(),
                };
                let (pk, sk) = (key("PK"), key("SK"));
                if sk != VOLATILE_SK {
                    out.insert((pk, sk), to_wire_json(&item));
                }
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return out,
            }
        }
    }

    /// [`Self::table`] and every vector's metadata: the state the rules decide.
    pub async fn snapshot(&self) -> Snapshot {
        Snapshot {
            items: self.table().await,
            vectors: self.pinecone.all(NAMESPACE),
        }
    }

    /// Waits until the batch's summary is COMPLETED (bounded by `limit`).
    pub async fn until_completed(&self, batch_id: &str, limit: Duration) {
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

    // ---- the worker ----

    /// The worker's environment for this fleet ([`TestEnv::process_vars`] and the emulators),
    /// with test-sized timings; `extra` overrides.
    pub fn worker_vars(&self, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut vars: HashMap<String, String> = self.env.process_vars().into_iter().collect();
        for (k, v) in [
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
        ] {
            vars.insert(k.to_owned(), v.to_owned());
        }
        vars.insert("OPENAI_BASE_URL".into(), self.openai.base_url());
        vars.insert("PINECONE_INDEX_HOST".into(), self.pinecone.base_url());
        for (k, v) in extra {
            vars.insert((*k).to_owned(), (*v).to_owned());
        }
        vars
    }

    /// The in-process worker's settings ([`Self::worker_vars`]).
    pub fn settings(&self, exit_when_idle: bool, extra: &[(&str, &str)]) -> Settings {
        Settings::read(
            &SettingFlags::default(),
            exit_when_idle,
            &self.worker_vars(extra),
        )
        .expect("valid test settings")
    }

    /// The in-process worker's dependencies, its SQS calls made by `sqs`.
    pub fn deps(&self, settings: &Settings, sqs: aws_sdk_sqs::Client) -> Deps {
        Deps {
            sqs,
            store: self.env.store.clone(),
            service: worker::service::build_services(settings, self.env.store.clone())
                .expect("services"),
            metrics: worker::metrics::install(),
        }
    }

    /// Runs one in-process worker until the queue is idle (bounded by `limit`).
    pub async fn run_until_idle(
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
}

#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub items: BTreeMap<(String, String), Value>,
    pub vectors: BTreeMap<String, Map<String, Value>>,
}

impl Snapshot {
    /// The items and vectors that differ between two snapshots, for readable failures.
    pub fn diff(&self, other: &Snapshot) -> Vec<String> {
        let mut out = Vec::new();
        for (k, v) in &self.items {
            match other.items.get(k) {
                None => out.push(format!("only left: {k:?}")),
                Some(o) if o != v => out.push(format!("differs: {k:?}\n  left  {v}\n  right {o}")),
                _ => {}
            }
        }
        for k in other.items.keys() {
            if !self.items.contains_key(k) {
                out.push(format!("only right: {k:?}"));
            }
        }
        for (k, v) in &self.vectors {
            if other.vectors.get(k) != Some(v) {
                out.push(format!(
                    "vector differs: {k}: {v:?} vs {:?}",
                    other.vectors.get(k)
                ));
            }
        }
        out
    }
}

/// Lease times of the handlings in these tests: each handling takes the lease "an hour after"
/// the previous one, so it always finds the earlier holder's expired (as a redelivered message
/// finds a crashed holder's).
static LEASE_CLOCK_MS: AtomicI64 = AtomicI64::new(1_900_000_000_000);
const LEASE_TTL_MS: i64 = 60_000;

/// Takes the batch's lease for `owner`, as the worker does before applying.
pub async fn take_lease(services: &Services, batch_id: &str, owner: &str) {
    let now = LEASE_CLOCK_MS.fetch_add(3_600_000, Ordering::SeqCst);
    let got = services
        .store
        .acquire_lease(batch_id, owner, LEASE_TTL_MS, now)
        .await
        .unwrap();
    assert!(
        matches!(got, fleet_shared::store::LeaseOutcome::Acquired { .. }),
        "{got:?}"
    );
}

/// A fresh lease owner per handling, as the worker makes one.
pub fn handling() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    format!("handling-{}", N.fetch_add(1, Ordering::SeqCst))
}

/// One handling of a batch, as the worker does it: take the lease under a fresh owner, load
/// the summary, check at OpenAI, apply (until `stop`).
pub async fn handle(
    services: &Services,
    batch_id: &str,
    stop: &CancellationToken,
) -> Result<ApplyReport, FinishError> {
    let owner = handling();
    take_lease(services, batch_id, &owner).await;
    let summary = services.load_summary(batch_id).await?;
    let batch = services.check(&summary).await?;
    services.apply(&summary, &batch, stop, &owner).await
}
