//! A whole fleet environment for one test: moto table and queues, the OpenAI and Pinecone
//! emulators, and the `Services` that finish batches against them.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use fleet_shared::finish::Services;
use fleet_shared::model::item::to_wire_json;
use fleet_shared::openai::client::{OpenAiClient, OpenAiConfig};
use fleet_shared::pinecone::client::{PineconeClient, PineconeConfig};
use fleet_shared::retry::RetryPolicy;
use fleet_shared::secret::SecretString;
use fleet_tests::openai::OpenAiEmulator;
use fleet_tests::pinecone::PineconeEmulator;
use fleet_tests::scenario::ScenarioBatch;
use serde_json::{Map, Value};

use crate::support::TestEnv;

pub const NAMESPACE: &str = "words";

#[allow(dead_code)] // each test module uses its own part
pub struct Fleet {
    pub env: TestEnv,
    pub openai: OpenAiEmulator,
    pub pinecone: PineconeEmulator,
    pub services: Services,
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

    /// Every item of the table (PK, SK → wire JSON) and every vector's metadata.
    pub async fn snapshot(&self) -> Snapshot {
        Snapshot {
            items: scan(&self.env).await,
            vectors: self.pinecone.all(NAMESPACE),
        }
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

pub async fn scan(env: &TestEnv) -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    let mut start = None;
    loop {
        let page = env
            .clients
            .dynamodb
            .scan()
            .table_name(&env.table)
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
            out.insert((key("PK"), key("SK")), to_wire_json(&item));
        }
        match page.last_evaluated_key {
            Some(k) if !k.is_empty() => start = Some(k),
            _ => return out,
        }
    }
}
