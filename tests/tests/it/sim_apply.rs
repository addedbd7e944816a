//! Property tests of the chunked apply on the real write path: `Services::apply` (the code the
//! worker runs) writes to a [`SimTable`] through the AWS SDK and to the Pinecone emulator, and
//! whatever the chunk size, the concurrency, where a run is cut off (a write budget, as a
//! crash would) or which DynamoDB calls fail on the way (throttling, 5xx, partial batches,
//! each retried as the worker retries: run the apply again), the end state is the one of a
//! single uninterrupted run with the default options. (`shared/src/plan/tests` checks the same
//! of a model of the loop; this drives the loop itself.)

use std::collections::BTreeMap;

use fleet_shared::finish::{ApplyOptions, FinishError, Services, WriteBudget};
use fleet_shared::model::item::to_wire_json;
use fleet_shared::openai::{OpenAiClient, OpenAiConfig};
use fleet_shared::pinecone::{PineconeClient, PineconeConfig};
use fleet_shared::secret::SecretString;
use fleet_shared::store::Store;
use fleet_tests::openai::OpenAiEmulator;
use fleet_tests::pinecone::PineconeEmulator;
use fleet_tests::scenario::{self, Outcome, Rng, Shape};
use fleet_tests::sim::{FaultRates, SimTable};
use proptest::prelude::*;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Everything one case needs: a SimTable with two tables (the reference and the variant), and
/// the emulators with the batch loaded (two namespaces).
struct Case {
    sim: SimTable,
    openai: OpenAiEmulator,
    pinecone: PineconeEmulator,
    batch: scenario::ScenarioBatch,
}

async fn case(seed: u64, receipts: u32, outcome: Outcome) -> Case {
    let sim = SimTable::new(seed);
    let clients = fleet_tests::sim::clients(&sim);
    for t in ["reference", "variant"] {
        fleet_tests::aws_env::create_receipts_table(&clients.dynamodb, t)
            .await
            .unwrap();
    }
    let mut batch = scenario::batch(
        &mut Rng::new(seed),
        0,
        &Shape {
            receipts,
            outcome,
            ..Shape::default()
        },
    );
    batch.shift_times(chrono::Utc::now().timestamp() - scenario::CREATED_AT - 7_200);
    let openai = OpenAiEmulator::start().await.unwrap();
    let pinecone = PineconeEmulator::start().await.unwrap();
    pinecone.set_fetch_rate_limit(None);
    for (id, content) in &batch.files {
        openai.add_file(id.clone(), content.clone());
    }
    let mut spec = batch.spec.clone();
    let last = spec.steps.last().cloned().expect("a final status");
    spec.steps = vec![last];
    openai.add_batch(spec);
    for t in ["reference", "variant"] {
        for l in &batch.labels {
            let item = to_wire_json(&l.to_item()).as_object().cloned().unwrap();
            sim.put(t, item).unwrap();
        }
        let item = to_wire_json(&batch.summary.to_item())
            .as_object()
            .cloned()
            .unwrap();
        sim.put(t, item).unwrap();
        for (id, meta) in &batch.vectors {
            pinecone.upsert(t, id, vec![0.0], meta.clone());
        }
    }
    Case {
        sim,
        openai,
        pinecone,
        batch,
    }
}

impl Case {
    fn services(&self, table: &str, options: ApplyOptions) -> Services {
        let clients = fleet_tests::sim::clients(&self.sim);
        let store =
            Store::new(clients.dynamodb, table).with_batch_retry(fleet_shared::store::BatchRetry {
                min_delay: std::time::Duration::from_millis(1),
                max_delay: std::time::Duration::from_millis(2),
                max_times: 3,
            });
        let openai = OpenAiClient::new(OpenAiConfig {
            base_url: self.openai.base_url(),
            ..OpenAiConfig::new(SecretString::from("sk-sim"))
        })
        .unwrap();
        let pinecone = PineconeClient::new(PineconeConfig {
            namespace: table.into(),
            updates_per_second: 1e6,
            fetches_per_second: 1e6,
            ..PineconeConfig::new(self.pinecone.base_url(), SecretString::from("pc"))
        })
        .unwrap();
        Services {
            options,
            ..Services::new(store, openai, pinecone)
        }
    }

    async fn apply(&self, services: &Services) -> Result<(), FinishError> {
        let summary = services.load_summary(&self.batch.summary.batch_id).await?;
        let batch = services.openai.get_batch(&self.batch.spec.id).await?;
        // The apply records its progress only under the batch's lease (a re-run takes it again).
        let now_ms = chrono::Utc::now().timestamp_millis();
        services
            .store
            .acquire_lease(&summary.batch_id, "sim-apply", 86_400_000, now_ms)
            .await?;
        services
            .apply(&summary, &batch, &CancellationToken::new(), "sim-apply")
            .await
            .map(|_| ())
    }

    /// Every item but the fleet's own bookkeeping, and every vector's metadata.
    fn state(&self, table: &str) -> (BTreeMap<(String, String), String>, BTreeMap<String, Value>) {
        let mut items = BTreeMap::new();
        self.sim.for_each_item(table, |pk, sk, text| {
            if sk != "FLEET#STATE" {
                items.insert((pk.to_owned(), sk.to_owned()), text.to_owned());
            }
        });
        let vectors = self
            .pinecone
            .all(table)
            .into_iter()
            .map(|(id, m)| (id, Value::Object(m)))
            .collect();
        (items, vectors)
    }
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        6 => Just(Outcome::Completed),
        1 => Just(Outcome::Expired),
        1 => Just(Outcome::Cancelled),
        1 => Just(Outcome::Failed),
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Any chunk size and concurrency, cut off after any number of writes and run again, with
    /// DynamoDB failing some calls on the way: the state of one uninterrupted run.
    #[test]
    fn a_cut_and_faulted_chunked_apply_ends_as_one_uninterrupted_run(
        seed in 0u64..1_000_000,
        receipts in 2u32..14,
        outcome in outcome(),
        chunk in 1usize..6,
        concurrency in 1usize..5,
        cut_permille in 0u64..1000,
        faults in any::<bool>(),
    ) {
        runtime().block_on(async move {
            let c = case(seed, receipts, outcome).await;
            let reference = c.services("reference", ApplyOptions::default());
            c.apply(&reference).await.expect("reference run");
            // Write units of a small test batch: whole, non-negative, far below 2^53.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let writes_needed = c.sim.stats().total().write_units as u64;

            let options = |budget: Option<usize>| ApplyOptions {
                receipts_per_chunk: chunk,
                label_concurrency: concurrency,
                read_concurrency: concurrency,
                vector_chunk: 1 + chunk,
                write_budget: budget.map(WriteBudget::new),
                ..ApplyOptions::default()
            };
            let cut = usize::try_from(writes_needed * cut_permille / 1000).unwrap();
            let first = c.apply(&c.services("variant", options(Some(cut)))).await;
            if faults {
                c.sim.set_fault_rates(FaultRates {
                    throughput: 0.05,
                    server_error: 0.05,
                    unprocessed: 0.2,
                });
            }
            // Run again until one run gets through, as the worker retries a message.
            let mut runs = 0;
            loop {
                runs += 1;
                match c.apply(&c.services("variant", options(None))).await {
                    Ok(()) => break,
                    Err(e) if e.class().is_retryable() && runs < 50 => continue,
                    Err(e) => panic!("run {runs} failed for good: {e} (first run: {first:?})"),
                }
            }
            c.sim.set_fault_rates(FaultRates::default());
            let (ref_items, ref_vectors) = c.state("reference");
            let (items, vectors) = c.state("variant");
            prop_assert_eq!(ref_items.len(), items.len());
            for (k, v) in &ref_items {
                prop_assert_eq!(Some(v), items.get(k), "item {:?}", k);
            }
            prop_assert_eq!(ref_vectors, vectors);
            Ok(())
        })?;
    }
}
