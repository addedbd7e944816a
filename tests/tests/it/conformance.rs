//! The conformance suite: the same store tests against moto and against [`SimTable`], so the
//! simulated table cannot drift from the protocol the fleet meets (moto standing in for
//! DynamoDB, as everywhere in these tests). Each test body is generic over a [`Backend`]; the
//! `conformance!` macro instantiates it once per backend (`conformance::moto::…` and
//! `conformance::sim::…`).
//!
//! Partial batches (`UnprocessedItems`), which moto never returns, are made on moto by an
//! interceptor that withholds part of each request and reports it back, and on SimTable by its
//! own fault injection: the store's retry loop meets the same answer either way.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws_sdk_dynamodb::config::interceptors::{
    BeforeSerializationInterceptorContextMut, FinalizerInterceptorContextMut,
};
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::operation::batch_write_item::{BatchWriteItemInput, BatchWriteItemOutput};
use aws_sdk_dynamodb::types::{
    AttributeValue, KeysAndAttributes, PutRequest, ReturnValue,
    ReturnValuesOnConditionCheckFailure, Select, WriteRequest,
};
use fleet_shared::aws::AwsClients;
use fleet_shared::model::item::to_wire_json;
use fleet_shared::model::time::parse_timestamp;
use fleet_shared::model::*;
use fleet_shared::store::{
    BatchRetry, Created, LeaseOutcome, ScheduleClaim, Store, StoreError, Transition,
};
use fleet_tests::aws_env;
use fleet_tests::sim::{FaultKind, ScriptedFault, SimTable};
use serde_json::{Value, json};

use crate::support::summary;

/// Where a conformance test runs: a fresh receipts table on moto or on a fresh SimTable.
pub struct Backend {
    pub name: &'static str,
    pub clients: AwsClients,
    pub table: String,
    pub store: Store,
    sim: Option<SimTable>,
}

impl Backend {
    pub async fn moto() -> Backend {
        let (_, clients) = aws_env::local_clients().expect("moto endpoint");
        Self::with_clients("moto", clients, None).await
    }

    pub async fn sim() -> Backend {
        let sim = SimTable::new(7);
        let clients = fleet_tests::sim::clients(&sim);
        Self::with_clients("sim", clients, Some(sim)).await
    }

    async fn with_clients(
        name: &'static str,
        clients: AwsClients,
        sim: Option<SimTable>,
    ) -> Backend {
        let table = aws_env::unique("conformance");
        aws_env::create_receipts_table(&clients.dynamodb, &table)
            .await
            .expect("create table");
        let store = Store::new(clients.dynamodb.clone(), &table);
        Backend {
            name,
            clients,
            table,
            store,
            sim,
        }
    }

    fn db(&self) -> &aws_sdk_dynamodb::Client {
        &self.clients.dynamodb
    }

    /// A store whose next `rounds` BatchWriteItem calls come back with part of their
    /// requests unprocessed (moto: an interceptor; SimTable: its fault injection), retrying
    /// them at most `max_times` times.
    fn store_with_partial_batches(&self, rounds: usize, max_times: usize) -> Store {
        let retry = BatchRetry {
            min_delay: std::time::Duration::from_millis(1),
            max_delay: std::time::Duration::from_millis(5),
            max_times,
        };
        match &self.sim {
            Some(sim) => {
                sim.fail_next(ScriptedFault {
                    op: Some("BatchWriteItem".into()),
                    kind: FaultKind::Unprocessed,
                    times: u32::try_from(rounds).unwrap_or(u32::MAX),
                });
                self.store.clone().with_batch_retry(retry)
            }
            None => {
                let conf = self
                    .db()
                    .config()
                    .to_builder()
                    .interceptor(Withhold {
                        rounds: AtomicUsize::new(rounds),
                        withheld: Mutex::new(Vec::new()),
                        table: self.table.clone(),
                    })
                    .build();
                Store::new(aws_sdk_dynamodb::Client::from_conf(conf), &self.table)
                    .with_batch_retry(retry)
            }
        }
    }
}

/// Withholds the last third of each BatchWriteItem request from moto and reports it back as
/// `UnprocessedItems`, `rounds` times (DynamoDB's partial batches, which moto never makes).
#[derive(Debug)]
struct Withhold {
    rounds: AtomicUsize,
    withheld: Mutex<Vec<WriteRequest>>,
    table: String,
}

impl Intercept for Withhold {
    fn name(&self) -> &'static str {
        "Withhold"
    }

    fn modify_before_serialization(
        &self,
        ctx: &mut BeforeSerializationInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        if self.rounds.load(Ordering::SeqCst) == 0 {
            return Ok(());
        }
        if let Some(input) = ctx.input_mut().downcast_mut::<BatchWriteItemInput>()
            && let Some(requests) = input
                .request_items
                .as_mut()
                .and_then(|m| m.get_mut(&self.table))
            && !requests.is_empty()
        {
            // A request may not be empty: a single item is sent and still reported back (as
            // SimTable withholds at least one).
            let withheld = if requests.len() >= 2 {
                let keep = requests.len() - requests.len().div_ceil(3);
                requests.split_off(keep)
            } else {
                requests.clone()
            };
            *self.withheld.lock().unwrap() = withheld;
            self.rounds.fetch_sub(1, Ordering::SeqCst);
        }
        Ok(())
    }

    fn modify_before_completion(
        &self,
        ctx: &mut FinalizerInterceptorContextMut<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        let withheld = std::mem::take(&mut *self.withheld.lock().unwrap());
        if !withheld.is_empty()
            && let Some(Ok(output)) = ctx.output_or_error_mut()
            && let Some(out) = output.downcast_mut::<BatchWriteItemOutput>()
        {
            out.unprocessed_items = Some([(self.table.clone(), withheld)].into());
        }
        Ok(())
    }
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod moto {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Backend::moto().await).await;
                }
            )*
        }
        mod sim {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::Backend::sim().await).await;
                }
            )*
        }
    };
}

conformance!(
    golden_label_written_by_the_store_reads_back_exactly,
    labels_conditional_writes_and_conflicts,
    create_label_only_if_absent,
    summary_finish_returns_the_old_item_on_conflict,
    queries_follow_every_page_at_any_limit,
    index_queries_and_counts_follow_every_page,
    a_malformed_summary_is_reported_and_counted,
    audit_rows_are_written_in_chunks_of_25_and_read_back_exactly,
    batch_writes_retry_unprocessed_items,
    batch_writes_give_up_on_items_left_unprocessed,
    batch_gets_of_fleet_states,
    lease_contention_renewal_and_expiry,
    schedule_marker_claims_once_until_it_expires,
    result_rows_keep_the_smallest_image_and_journal_reads_per_receipt,
    attribute_types_round_trip_exactly,
    update_expressions_and_return_values,
    conditional_failure_returns_the_old_item_only_when_asked,
    refused_requests_are_validation_errors,
    query_limit_pages_and_last_evaluated_key,
);

const IMG_A: &str = "0f0e0d0c-0b0a-4909-8807-060504030201";
const IMG_B: &str = "aa0e0d0c-0b0a-4909-8807-060504030201";

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn label(
    image: &str,
    receipt: u32,
    line: u32,
    word: u32,
    name: &str,
    status: ValidationStatus,
) -> ReceiptWordLabel {
    ReceiptWordLabel {
        key: LabelKey::new(ImageId::parse(image).unwrap(), receipt, line, word, name),
        reasoning: Some("seen on the receipt".into()),
        timestamp_added: parse_timestamp("2025-06-20T17:03:12.345678+00:00").unwrap(),
        validation_status: status,
        label_proposed_by: None,
        label_consolidated_from: None,
    }
}

fn wire(item: Option<Item>) -> Value {
    item.map(|i| to_wire_json(&i)).unwrap_or(Value::Null)
}

/// Every attribute of `expected` is on the item, and no other.
fn assert_item(actual: Option<Item>, expected: Value) {
    let actual = to_wire_json(&actual.expect("item exists"));
    let (a, e) = (actual.as_object().unwrap(), expected.as_object().unwrap());
    for (k, v) in e {
        assert_eq!(a.get(k), Some(v), "attribute {k}");
    }
    for k in a.keys() {
        assert!(e.contains_key(k), "unexpected attribute {k}");
    }
}

async fn golden_label_written_by_the_store_reads_back_exactly(b: Backend) {
    let l = label(IMG_A, 2, 7, 3, "GRAND_TOTAL", ValidationStatus::Pending);
    assert_eq!(
        b.store.create_label_if_absent(&l).await.unwrap(),
        Created::Created
    );
    let word = format!("IMAGE#{IMG_A}#RECEIPT#00002#LINE#00007#WORD#00003");
    let mut expected = json!({
        "PK": {"S": format!("IMAGE#{IMG_A}")},
        "SK": {"S": "RECEIPT#00002#LINE#00007#WORD#00003#LABEL#GRAND_TOTAL"},
        "GSI1PK": {"S": "LABEL#GRAND_TOTAL_______________________"},
        "GSI1SK": {"S": word},
        "GSI2PK": {"S": "RECEIPT"},
        "GSI2SK": {"S": word},
        "GSI3PK": {"S": "VALIDATION_STATUS#PENDING"},
        "GSI3SK": {"S": format!("{word}#LABEL#GRAND_TOTAL")},
        "GSI4PK": {"S": format!("IMAGE#{IMG_A}#RECEIPT#00002")},
        "GSI4SK": {"S": "4_LABEL#00007#00003#GRAND_TOTAL"},
        "TYPE": {"S": "RECEIPT_WORD_LABEL"},
        "reasoning": {"S": "seen on the receipt"},
        "timestamp_added": {"S": "2025-06-20T17:03:12.345678+00:00"},
        "validation_status": {"S": "PENDING"},
        "label_proposed_by": {"NULL": true},
        "label_consolidated_from": {"NULL": true}
    });
    assert_eq!(expected["GSI1PK"]["S"].as_str().unwrap().len(), 40);
    assert_item(
        b.store.get_raw(&l.key.pk(), &l.key.sk()).await.unwrap(),
        expected.clone(),
    );

    let t = b
        .store
        .transition_label(&l.key, ValidationStatus::Pending, ValidationStatus::Invalid)
        .await
        .unwrap();
    assert_eq!(t, Transition::Applied, "{}", b.name);
    expected["GSI3PK"] = json!({"S": "VALIDATION_STATUS#INVALID"});
    expected["validation_status"] = json!({"S": "INVALID"});
    expected["label_proposed_by"] = json!({"S": "COMPLETION_BATCH"});
    assert_item(
        b.store.get_raw(&l.key.pk(), &l.key.sk()).await.unwrap(),
        expected,
    );
}

async fn create_label_only_if_absent(b: Backend) {
    let reviewed = label(IMG_A, 1, 2, 2, "UNIT_PRICE", ValidationStatus::Valid);
    b.store.create_label_if_absent(&reviewed).await.unwrap();
    let before = b
        .store
        .get_raw(&reviewed.key.pk(), &reviewed.key.sk())
        .await
        .unwrap();
    let mut proposal = label(IMG_A, 1, 2, 2, "UNIT_PRICE", ValidationStatus::None);
    proposal.reasoning = Option::None;
    proposal.label_consolidated_from = Some("LINE_TOTAL".into());
    assert_eq!(
        b.store.create_label_if_absent(&proposal).await.unwrap(),
        Created::AlreadyExists
    );
    assert_eq!(
        b.store
            .get_raw(&reviewed.key.pk(), &reviewed.key.sk())
            .await
            .unwrap(),
        before,
        "a reviewed label is never overwritten on {}",
        b.name
    );
}

async fn labels_conditional_writes_and_conflicts(b: Backend) {
    use ValidationStatus::*;
    let s = &b.store;
    let l = label(IMG_A, 1, 1, 1, "TAX", Pending);
    assert_eq!(
        s.create_label_if_absent(&l).await.unwrap(),
        Created::Created
    );
    assert_eq!(
        s.create_label_if_absent(&l).await.unwrap(),
        Created::AlreadyExists
    );
    assert_eq!(
        s.transition_label(&l.key, Pending, Valid).await.unwrap(),
        Transition::Applied
    );
    assert_eq!(
        s.transition_label(&l.key, Pending, Valid).await.unwrap(),
        Transition::AlreadyInTarget
    );
    let before = s.get_raw(&l.key.pk(), &l.key.sk()).await.unwrap();
    assert_eq!(
        s.transition_label(&l.key, Pending, Invalid).await.unwrap(),
        Transition::Conflict {
            current: Some(Valid)
        }
    );
    assert_eq!(s.get_raw(&l.key.pk(), &l.key.sk()).await.unwrap(), before);
    let item = wire(before);
    assert_eq!(
        item["validation_status"],
        json!({"S": "VALID"}),
        "{}",
        b.name
    );
    assert_eq!(item["GSI3PK"], json!({"S": "VALIDATION_STATUS#VALID"}));
    assert_eq!(item["label_proposed_by"], json!({"S": "COMPLETION_BATCH"}));
    assert_eq!(item["label_consolidated_from"], json!({"NULL": true}));

    // Missing item: a conflict with nothing current, and nothing created.
    let missing = label(IMG_A, 1, 1, 2, "TAX", Pending);
    assert_eq!(
        s.transition_label(&missing.key, Pending, Valid)
            .await
            .unwrap(),
        Transition::Conflict {
            current: Option::None
        }
    );
    assert_eq!(
        s.get_raw(&missing.key.pk(), &missing.key.sk())
            .await
            .unwrap(),
        Option::None
    );

    // From NONE: no attribute, or a NULL one, or "NONE" all qualify (attribute_type).
    for (word, value) in [
        (3, Option::None),
        (4, Some(AttributeValue::Null(true))),
        (5, Some(s_("NONE"))),
    ] {
        let mut old = label(IMG_A, 1, 1, word, "TAX", None).to_item();
        old.remove("validation_status");
        match value {
            Some(v) => {
                old.insert("validation_status".into(), v);
            }
            // The oldest shape: written before the status and the GSI4 keys existed.
            Option::None => {
                old.remove("GSI4PK");
                old.remove("GSI4SK");
            }
        }
        s.put_raw(old).await.unwrap();
        let key = LabelKey::new(ImageId::parse(IMG_A).unwrap(), 1, 1, word, "TAX");
        assert_eq!(
            s.transition_label(&key, None, Pending).await.unwrap(),
            Transition::Applied,
            "word {word} on {}",
            b.name
        );
    }
}

fn s_(v: &str) -> AttributeValue {
    s(v)
}

async fn summary_finish_returns_the_old_item_on_conflict(b: Backend) {
    let s = &b.store;
    s.put_raw(summary("b1", BatchStatus::Pending).to_item())
        .await
        .unwrap();
    assert_eq!(
        s.finish_summary("b1", BatchStatus::Completed, Some("file-out"))
            .await
            .unwrap(),
        Transition::Applied
    );
    let item = wire(s.get_raw("BATCH#b1", "STATUS").await.unwrap());
    assert_eq!(item["status"], json!({"S": "COMPLETED"}));
    assert_eq!(item["GSI1PK"], json!({"S": "STATUS#COMPLETED"}));
    assert_eq!(item["result_file_id"], json!({"S": "file-out"}));
    assert_eq!(
        item["GSI1SK"],
        json!({"S": "BATCH_TYPE#COMPLETION#BATCH_ID#b1"})
    );
    assert_eq!(
        s.finish_summary("b1", BatchStatus::Completed, None)
            .await
            .unwrap(),
        Transition::AlreadyInTarget
    );
    assert_eq!(
        s.finish_summary("b1", BatchStatus::Failed, None)
            .await
            .unwrap(),
        Transition::Conflict {
            current: Some(BatchStatus::Completed)
        }
    );
    assert!(s.pending_completion_batches().await.unwrap().is_empty());
    assert_eq!(
        s.finish_summary("nope", BatchStatus::Failed, None)
            .await
            .unwrap(),
        Transition::Conflict { current: None }
    );
    assert_eq!(
        s.get_raw("BATCH#nope", "STATUS").await.unwrap(),
        None,
        "nothing created"
    );
}

async fn queries_follow_every_page_at_any_limit(b: Backend) {
    use ValidationStatus::*;
    for w in 1..=7 {
        b.store
            .create_label_if_absent(&label(IMG_A, 1, 1, w, "PRODUCT_NAME", Pending))
            .await
            .unwrap();
    }
    // Neighbours that must not be returned: another receipt, another item type.
    b.store
        .create_label_if_absent(&label(IMG_A, 2, 1, 1, "TAX", Pending))
        .await
        .unwrap();
    b.store
        .create_label_if_absent(&label(IMG_B, 1, 1, 1, "TAX", Pending))
        .await
        .unwrap();
    b.store
        .put_raw(
            [
                ("PK".to_owned(), s(&format!("IMAGE#{IMG_A}"))),
                ("SK".to_owned(), s("RECEIPT#00001#LINE#00001#WORD#00001")),
                ("TYPE".to_owned(), s("RECEIPT_WORD")),
            ]
            .into(),
        )
        .await
        .unwrap();
    let receipt = ReceiptKey {
        image_id: ImageId::parse(IMG_A).unwrap(),
        receipt_id: 1,
    };
    for page in [1, 2, 3, 7, 8, 100] {
        let store = b.store.clone().with_page_size(page);
        let labels = store.receipt_labels(&receipt).await.unwrap();
        let mut words: Vec<u32> = labels
            .iter()
            .map(|l| l.as_ref().unwrap().key.word.word_id)
            .collect();
        words.sort();
        assert_eq!(
            words,
            [1, 2, 3, 4, 5, 6, 7],
            "page size {page} on {}",
            b.name
        );
    }
}

/// Five pending completion batches `b0`…`b4`, a completed one and a pending embedding batch.
async fn seed_summaries(b: &Backend) {
    for i in 0..5 {
        b.store
            .put_raw(summary(&format!("b{i}"), BatchStatus::Pending).to_item())
            .await
            .unwrap();
    }
    b.store
        .put_raw(summary("done", BatchStatus::Completed).to_item())
        .await
        .unwrap();
    let mut emb = summary("emb", BatchStatus::Pending);
    emb.batch_type = BatchType::Embedding;
    b.store.put_raw(emb.to_item()).await.unwrap();
}

async fn index_queries_and_counts_follow_every_page(b: Backend) {
    seed_summaries(&b).await;
    for page in [1, 2, 5, 6] {
        let store = b.store.clone().with_page_size(page);
        let mut ids: Vec<String> = store
            .pending_completion_batches()
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap().batch_id)
            .collect();
        ids.sort();
        assert_eq!(
            ids,
            ["b0", "b1", "b2", "b3", "b4"],
            "page {page} on {}",
            b.name
        );
    }
    assert_eq!(
        b.store
            .count_completion_batches(BatchStatus::Pending)
            .await
            .unwrap(),
        5
    );
    assert_eq!(
        b.store
            .count_completion_batches(BatchStatus::Completed)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        b.store
            .count_completion_batches(BatchStatus::Failed)
            .await
            .unwrap(),
        0
    );
}

/// A summary that does not parse is reported with its key and attribute, not dropped, and
/// counted.
async fn a_malformed_summary_is_reported_and_counted(b: Backend) {
    seed_summaries(&b).await;
    let mut bad = summary("bad", BatchStatus::Pending).to_item();
    bad.insert("receipt_refs".into(), s("oops"));
    b.store.put_raw(bad).await.unwrap();
    let store = b.store.clone().with_page_size(2);
    let found = store.pending_completion_batches().await.unwrap();
    let mut ids: Vec<String> = found
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|b| b.batch_id.clone())
        .collect();
    ids.sort();
    assert_eq!(ids, ["b0", "b1", "b2", "b3", "b4"], "{}", b.name);
    let errors: Vec<_> = found.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].pk, "BATCH#bad");
    assert_eq!(errors[0].attribute, "receipt_refs");
    assert_eq!(
        store
            .count_completion_batches(BatchStatus::Pending)
            .await
            .unwrap(),
        6
    );
}

fn result_rows(n: usize, image: &str) -> Vec<CompletionBatchResult> {
    let at = parse_timestamp("2025-06-21T08:00:00+00:00").unwrap();
    (0..n)
        .map(|i| CompletionBatchResult {
            batch_id: "b1".into(),
            label: LabelKey::new(
                ImageId::parse(image).unwrap(),
                3,
                1 + u32::try_from(i / 10).expect("small"),
                1 + u32::try_from(i % 10).expect("small"),
                "TAX",
            ),
            status: BatchStatus::Completed,
            gpt_suggested_label: None,
            validated_at: at,
        })
        .collect()
}

async fn batch_writes_retry_unprocessed_items(b: Backend) {
    let rows = result_rows(60, IMG_B);
    let mut items: Vec<Item> = rows.iter().map(|r| r.to_item()).collect();
    items.push(rows[0].to_item()); // a duplicate key is written once
    let store = b.store_with_partial_batches(3, 10);
    let report = store.put_items_batched(items).await.unwrap();
    assert_eq!(report.items, 60);
    assert_eq!(
        report.retries, 3,
        "every partial answer was retried on {}",
        b.name
    );
    assert_eq!(report.calls, 6);
    for r in &rows {
        assert!(
            b.store
                .get_raw("BATCH#b1", &r.sk())
                .await
                .unwrap()
                .is_some(),
            "{}",
            r.sk()
        );
    }
    let put = |r: &CompletionBatchResult| {
        WriteRequest::builder()
            .put_request(
                PutRequest::builder()
                    .set_item(Some(r.to_item()))
                    .build()
                    .unwrap(),
            )
            .build()
    };
    // A request naming one key twice: DynamoDB refuses it whole (SimTable does the same); moto
    // writes it, so this one answer is checked on SimTable only.
    let dup = b
        .db()
        .batch_write_item()
        .request_items(&b.table, vec![put(&rows[0]), put(&rows[0])])
        .send()
        .await;
    if b.name == "sim" {
        assert_eq!(dup.unwrap_err().code(), Some("ValidationException"));
    }
    // More than 25 is refused by DynamoDB (and SimTable); moto writes them all.
    let too_many: Vec<WriteRequest> = result_rows(26, IMG_A).iter().map(put).collect();
    let many = b
        .db()
        .batch_write_item()
        .request_items(&b.table, too_many)
        .send()
        .await;
    if b.name == "sim" {
        assert_eq!(many.unwrap_err().code(), Some("ValidationException"));
    }
}

async fn audit_rows_are_written_in_chunks_of_25_and_read_back_exactly(b: Backend) {
    let rows = result_rows(60, IMG_B);
    let mut items: Vec<Item> = rows.iter().map(|r| r.to_item()).collect();
    items.push(rows[0].to_item()); // a duplicate key is written once
    let report = b.store.put_items_batched(items).await.unwrap();
    assert_eq!(report.items, 60);
    assert_eq!(report.calls, 3, "60 items need 3 calls of at most 25");
    assert_eq!(report.retries, 0, "{}", b.name);
    let expected = json!({
        "PK": {"S": "BATCH#b1"},
        "SK": {"S": "RESULT#RECEIPT#3#LINE#1#WORD#1#LABEL#TAX"},
        "GSI1PK": {"S": "LABEL#TAX"},
        "GSI1SK": {"S": "STATUS#COMPLETED"},
        "GSI2PK": {"S": "BATCH#b1"},
        "GSI2SK": {"S": "STATUS#COMPLETED"},
        "GSI3PK": {"S": format!("IMAGE#{IMG_B}#RECEIPT#00003")},
        "GSI3SK": {"S": "BATCH#b1#STATUS#COMPLETED"},
        "TYPE": {"S": "COMPLETION_BATCH_RESULT"},
        "original_label": {"S": "TAX"},
        "gpt_suggested_label": {"NULL": true},
        "status": {"S": "COMPLETED"},
        "validated_at": {"S": "2025-06-21T08:00:00+00:00"}
    });
    assert_item(
        b.store
            .get_raw("BATCH#b1", "RESULT#RECEIPT#3#LINE#1#WORD#1#LABEL#TAX")
            .await
            .unwrap(),
        expected,
    );
    for r in &rows {
        assert!(
            b.store
                .get_raw("BATCH#b1", &r.sk())
                .await
                .unwrap()
                .is_some(),
            "{}",
            r.sk()
        );
    }

    let verdict = CompletionBatchVerdict {
        batch_id: "b1".into(),
        label: LabelKey::new(ImageId::parse(IMG_B).unwrap(), 3, 1, 1, "TAX"),
        verdict: Verdict::NeedsReview,
        previous_status: ValidationStatus::Pending,
        suggested_label: Some("SUBTOTAL".into()),
        source: "output:3".into(),
        validated_at: parse_timestamp("2025-06-21T08:00:00+00:00").unwrap(),
    };
    b.store
        .put_items_batched(vec![verdict.to_item()])
        .await
        .unwrap();
    assert_item(
        b.store.get_raw("BATCH#b1", &verdict.sk()).await.unwrap(),
        json!({
            "PK": {"S": "BATCH#b1"},
            "SK": {"S": format!("VERDICT#IMAGE#{IMG_B}#RECEIPT#00003#LINE#00001#WORD#00001#LABEL#TAX")},
            "TYPE": {"S": "COMPLETION_BATCH_VERDICT"},
            "verdict": {"S": "NEEDS_REVIEW"},
            "previous_status": {"S": "PENDING"},
            "suggested_label": {"S": "SUBTOTAL"},
            "source": {"S": "output:3"},
            "validated_at": {"S": "2025-06-21T08:00:00+00:00"}
        }),
    );
    let journal = b.store.batch_verdicts("b1").await.unwrap();
    assert_eq!(journal.len(), 1);
    assert_eq!(journal[0].as_ref().unwrap(), &verdict);
}

/// When the service keeps returning unprocessed items, the store gives up with a transient
/// error.
async fn batch_writes_give_up_on_items_left_unprocessed(b: Backend) {
    let stubborn = b.store_with_partial_batches(100, 2);
    let items = result_rows(3, IMG_B).iter().map(|r| r.to_item()).collect();
    let err = stubborn.put_items_batched(items).await.unwrap_err();
    assert!(err.is_transient(), "{err} on {}", b.name);
}

async fn batch_gets_of_fleet_states(b: Backend) {
    let ids: Vec<String> = (0..130).map(|i| format!("batch-{i:03}")).collect();
    for id in ids.iter().step_by(3) {
        b.store
            .claim_schedule(id, 2_000, 1_000, "c1")
            .await
            .unwrap();
    }
    let mut asked = ids.clone();
    asked.push("never-seen".into());
    let states = b.store.fleet_states(&asked).await.unwrap();
    assert_eq!(states.len(), 44, "{}", b.name);
    assert!(
        ids.iter()
            .step_by(3)
            .all(|id| states[id].scheduled_until_ms == Some(2_000))
    );
    // Raw: a missing key is simply absent; no unprocessed keys without throttling.
    let key = |id: &str| -> Item {
        [
            ("PK".to_owned(), s(&format!("BATCH#{id}"))),
            ("SK".to_owned(), s("FLEET#STATE")),
        ]
        .into()
    };
    let out = b
        .db()
        .batch_get_item()
        .request_items(
            &b.table,
            KeysAndAttributes::builder()
                .keys(key("batch-000"))
                .keys(key("batch-001"))
                .consistent_read(true)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(out.responses.unwrap()[&b.table].len(), 1);
    assert!(out.unprocessed_keys.unwrap_or_default().is_empty());
}

async fn lease_contention_renewal_and_expiry(b: Backend) {
    let s = &b.store;
    let t0 = 1_000_000;
    assert_eq!(
        s.acquire_lease("b1", "worker-a", 120_000, t0)
            .await
            .unwrap(),
        LeaseOutcome::Acquired {
            expires_at_ms: t0 + 120_000
        }
    );
    assert_eq!(
        s.acquire_lease("b1", "worker-b", 120_000, t0 + 1)
            .await
            .unwrap(),
        LeaseOutcome::HeldBy {
            owner: "worker-a".into(),
            expires_at_ms: t0 + 120_000
        }
    );
    // The holder re-acquires and renews; the other cannot renew.
    assert!(matches!(
        s.acquire_lease("b1", "worker-a", 120_000, t0 + 2)
            .await
            .unwrap(),
        LeaseOutcome::Acquired { .. }
    ));
    assert!(
        s.renew_lease("b1", "worker-a", 120_000, t0 + 60_000)
            .await
            .unwrap()
    );
    assert!(
        !s.renew_lease("b1", "worker-b", 120_000, t0 + 60_000)
            .await
            .unwrap()
    );
    // Still held just before expiry of the renewed lease, free after it.
    assert!(matches!(
        s.acquire_lease("b1", "worker-b", 120_000, t0 + 179_999)
            .await
            .unwrap(),
        LeaseOutcome::HeldBy { .. }
    ));
    assert_eq!(
        s.acquire_lease("b1", "worker-b", 120_000, t0 + 180_000)
            .await
            .unwrap(),
        LeaseOutcome::Acquired {
            expires_at_ms: t0 + 300_000
        },
        "{}",
        b.name
    );
    // The old holder lost it: renew and release fail, nothing changes.
    assert!(
        !s.renew_lease("b1", "worker-a", 120_000, t0 + 180_001)
            .await
            .unwrap()
    );
    assert!(!s.release_lease("b1", "worker-a").await.unwrap());
    assert_eq!(
        s.fleet_state("b1").await.unwrap().lease_owner.as_deref(),
        Some("worker-b")
    );
    assert!(s.release_lease("b1", "worker-b").await.unwrap());
    assert_eq!(s.fleet_state("b1").await.unwrap().lease_owner, None);
    assert!(matches!(
        s.acquire_lease("b1", "worker-c", 1, t0 + 180_002)
            .await
            .unwrap(),
        LeaseOutcome::Acquired { .. }
    ));

    // The fleet-state item is invisible to other programs' index queries: no GSI keys.
    let item = s.get_raw("BATCH#b1", "FLEET#STATE").await.unwrap().unwrap();
    assert!(item.keys().all(|k| !k.starts_with("GSI")), "{item:?}");
    assert_eq!(item["TYPE"].as_s().unwrap(), "COMPLETION_BATCH_FLEET_STATE");
}

async fn schedule_marker_claims_once_until_it_expires(b: Backend) {
    let s = &b.store;
    let now = 5_000_000;
    assert_eq!(
        s.claim_schedule("b1", now + 900_000, now, "c1")
            .await
            .unwrap(),
        ScheduleClaim::Claimed
    );
    assert_eq!(
        s.claim_schedule("b1", now + 1_000_000, now + 10, "c1")
            .await
            .unwrap(),
        ScheduleClaim::AlreadyScheduled {
            until_ms: now + 900_000
        }
    );
    // Only our own marker is taken back.
    assert!(!s.unclaim_schedule("b1", now + 1).await.unwrap());
    assert!(s.unclaim_schedule("b1", now + 900_000).await.unwrap());
    assert_eq!(
        s.claim_schedule("b1", now + 60_000, now, "c1")
            .await
            .unwrap(),
        ScheduleClaim::Claimed
    );
    // The worker moves the marker when it passes the chain on itself.
    assert!(
        s.advance_chain("b1", "c1", "c1b", now + 600_000, now)
            .await
            .unwrap()
    );
    assert_eq!(
        s.fleet_state("b1").await.unwrap().scheduled_until_ms,
        Some(now + 600_000)
    );
    // Once the marker lies in the past, a new tick may claim again.
    assert_eq!(
        s.claim_schedule("b1", now + 1_200_000, now + 600_000, "c1")
            .await
            .unwrap(),
        ScheduleClaim::Claimed
    );
    // The lease and the marker live on one item without disturbing each other.
    assert!(matches!(
        s.acquire_lease("b1", "w", 1000, now).await.unwrap(),
        LeaseOutcome::Acquired { .. }
    ));
    assert_eq!(
        s.fleet_state("b1").await.unwrap().scheduled_until_ms,
        Some(now + 1_200_000)
    );
    assert_eq!(
        s.fleet_state("b1").await.unwrap().chain.as_deref(),
        Some("c1")
    );
    // A dead-letter mark keeps the producer away until it is cleared.
    s.mark_dead_lettered("b1", "batch_unknown", now)
        .await
        .unwrap();
    let state = s.fleet_state("b1").await.unwrap();
    assert_eq!(state.scheduled_until_ms, None, "the mark ends the schedule");
    assert_eq!(
        state.chain.as_deref(),
        Some("c1"),
        "the mark keeps the chain"
    );
    let mark = state.dead_letter.expect("marked");
    assert_eq!((mark.reason.as_str(), mark.at_ms), ("batch_unknown", now));
    assert_eq!(
        s.claim_schedule("b1", now + 2_000_000, now + 1_500_000, "c2")
            .await
            .unwrap(),
        ScheduleClaim::DeadLettered(mark),
        "{}",
        b.name
    );
    let states = s
        .fleet_states(&["b1".to_owned(), "nothing".to_owned()])
        .await
        .unwrap();
    assert_eq!(states.len(), 1);
    assert!(states["b1"].dead_letter.is_some());
    assert!(s.clear_dead_letter("b1").await.unwrap());
    assert!(!s.clear_dead_letter("b1").await.unwrap(), "cleared once");
    assert_eq!(
        s.claim_schedule("b1", now + 2_000_000, now + 1_500_000, "c2")
            .await
            .unwrap(),
        ScheduleClaim::Claimed
    );
    // A new chain moves the marker and replaces the token.
    s.start_chain("b1", "c3", now + 2_500_000, now + 1_600_000)
        .await
        .unwrap();
    let state = s.fleet_state("b1").await.unwrap();
    assert_eq!(
        (state.chain.as_deref(), state.scheduled_until_ms),
        (Some("c3"), Some(now + 2_500_000))
    );
    let item = wire(s.get_raw("BATCH#b1", "FLEET#STATE").await.unwrap());
    assert_eq!(item["chain"], json!({"S": "c3"}));
    assert_eq!(
        item["scheduled_until"],
        json!({"N": (now + 2_500_000).to_string()})
    );
    // Of two copies of link c3, one passes the chain on.
    assert!(
        s.advance_chain("b1", "c3", "c4", now + 2_600_000, now + 1_700_000)
            .await
            .unwrap()
    );
    assert!(
        !s.advance_chain("b1", "c3", "c5", now + 2_600_000, now + 1_700_000)
            .await
            .unwrap()
    );
    let state = s.fleet_state("b1").await.unwrap();
    assert_eq!(
        (state.chain.as_deref(), state.scheduled_until_ms),
        (Some("c4"), Some(now + 2_600_000))
    );
}

/// The store methods of the chunked apply: a result row is kept for the smallest image id
/// whatever the order of the puts (and a re-run's own put goes through), and the verdict
/// journal is read one receipt at a time.
async fn result_rows_keep_the_smallest_image_and_journal_reads_per_receipt(b: Backend) {
    let mut a = result_rows(1, IMG_A).remove(0);
    a.gpt_suggested_label = Some("TIP".into());
    let (a, z) = (&a, &result_rows(1, IMG_B)[0]);
    assert!(IMG_A < IMG_B);
    let stored = || async {
        let item = b.store.get_raw("BATCH#b1", &a.sk()).await.unwrap().unwrap();
        CompletionBatchResult::from_item(&item).unwrap()
    };
    assert!(b.store.put_result_row(z).await.unwrap(), "absent: written");
    assert!(
        b.store.put_result_row(a).await.unwrap(),
        "smaller image: overwrites"
    );
    assert_eq!(&stored().await, a);
    assert!(
        !b.store.put_result_row(z).await.unwrap(),
        "larger image: refused on {}",
        b.name
    );
    assert!(
        b.store.put_result_row(a).await.unwrap(),
        "its own row: written again"
    );
    assert_eq!(&stored().await, a);

    assert!(!b.store.has_batch_verdicts("b2").await.unwrap());
    let at = parse_timestamp("2025-06-21T08:00:00+00:00").unwrap();
    let verdict = |image: &str, receipt: u32| CompletionBatchVerdict {
        batch_id: "b2".into(),
        label: LabelKey::new(ImageId::parse(image).unwrap(), receipt, 1, 1, "DATE"),
        verdict: Verdict::Valid,
        previous_status: ValidationStatus::Pending,
        suggested_label: None,
        source: "output:1".into(),
        validated_at: at,
    };
    // Receipt 10000 must not pick up receipt 100000's rows (`RECEIPT#10000` is a prefix).
    let rows = [
        verdict(IMG_A, 10_000),
        verdict(IMG_A, 100_000),
        verdict(IMG_B, 10_000),
    ];
    b.store
        .put_items_batched(rows.iter().map(CompletionBatchVerdict::to_item).collect())
        .await
        .unwrap();
    assert!(b.store.has_batch_verdicts("b2").await.unwrap());
    let receipt = |image: &str, receipt_id: u32| ReceiptKey {
        image_id: ImageId::parse(image).unwrap(),
        receipt_id,
    };
    let got: Vec<_> = b
        .store
        .batch_verdicts_for("b2", &receipt(IMG_A, 10_000))
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, [rows[0].clone()], "{}", b.name);
    assert!(
        b.store
            .batch_verdicts_for("b2", &receipt(IMG_B, 2))
            .await
            .unwrap()
            .is_empty()
    );
}

fn rich_item() -> Item {
    [
        ("PK".to_owned(), s("T#1")),
        ("SK".to_owned(), s("ITEM")),
        ("text".to_owned(), s("héllo, wörld")),
        ("empty".to_owned(), s("")),
        ("int".to_owned(), n(1_750_000_000_123)),
        ("neg".to_owned(), AttributeValue::N("-3.25".into())),
        ("yes".to_owned(), AttributeValue::Bool(true)),
        ("nothing".to_owned(), AttributeValue::Null(true)),
        (
            "list".to_owned(),
            AttributeValue::L(vec![s("a"), n(2), AttributeValue::L(vec![])]),
        ),
        (
            "map".to_owned(),
            AttributeValue::M([("k".to_owned(), s("v")), ("n".to_owned(), n(1))].into()),
        ),
        (
            "strings".to_owned(),
            AttributeValue::Ss(vec!["x".into(), "y".into()]),
        ),
        (
            "numbers".to_owned(),
            AttributeValue::Ns(vec!["1".into(), "2".into()]),
        ),
    ]
    .into()
}

async fn attribute_types_round_trip_exactly(b: Backend) {
    b.store.put_raw(rich_item()).await.unwrap();
    let mut got = b.store.get_raw("T#1", "ITEM").await.unwrap().unwrap();
    let mut want = rich_item();
    // Sets come back in any order.
    for name in ["strings", "numbers"] {
        for item in [&mut got, &mut want] {
            match item.get_mut(name) {
                Some(AttributeValue::Ss(v) | AttributeValue::Ns(v)) => v.sort(),
                _ => panic!("{name} is not a set on {}", b.name),
            }
        }
    }
    assert_eq!(got, want, "{}", b.name);
    assert_eq!(b.store.get_raw("T#1", "MISSING").await.unwrap(), None);
    assert_eq!(b.store.get_raw("T#2", "ITEM").await.unwrap(), None);
}

fn key(pk: &str, sk: &str) -> Item {
    [("PK".to_owned(), s(pk)), ("SK".to_owned(), s(sk))].into()
}

async fn update_expressions_and_return_values(b: Backend) {
    b.store.put_raw(rich_item()).await.unwrap();
    let out = b
        .db()
        .update_item()
        .table_name(&b.table)
        .set_key(Some(key("T#1", "ITEM")))
        .update_expression(
            "SET #c = if_not_exists(#c, :zero) + :one, #list = list_append(#list, :more), fresh = if_not_exists(fresh, :f) REMOVE nothing ADD strings :z, tally :one",
        )
        .condition_expression("attribute_exists(PK) AND #int > :zero AND begins_with(#text, :h) AND size(#list) = :three")
        .expression_attribute_names("#c", "counter")
        .expression_attribute_names("#int", "int")
        .expression_attribute_names("#text", "text")
        .expression_attribute_names("#list", "list")
        .expression_attribute_values(":zero", n(0))
        .expression_attribute_values(":one", n(1))
        .expression_attribute_values(":three", n(3))
        .expression_attribute_values(":h", s("hé"))
        .expression_attribute_values(":f", s("new"))
        .expression_attribute_values(":more", AttributeValue::L(vec![s("b")]))
        .expression_attribute_values(":z", AttributeValue::Ss(vec!["z".into()]))
        .return_values(ReturnValue::UpdatedNew)
        .send()
        .await
        .unwrap();
    let new = to_wire_json(&out.attributes.unwrap());
    assert_eq!(new["counter"], json!({"N": "1"}), "{}", b.name);
    assert_eq!(new["tally"], json!({"N": "1"}));
    assert_eq!(new["fresh"], json!({"S": "new"}));
    assert_eq!(new["list"]["L"].as_array().unwrap().len(), 4);
    assert!(new.get("nothing").is_none());
    let mut strings: Vec<String> = match &b.store.get_raw("T#1", "ITEM").await.unwrap().unwrap()["strings"]
    {
        AttributeValue::Ss(v) => v.clone(),
        other => panic!("{other:?}"),
    };
    strings.sort();
    assert_eq!(strings, ["x", "y", "z"]);

    // An update of a missing item creates it with its key; ALL_NEW returns all of it.
    let out = b
        .db()
        .update_item()
        .table_name(&b.table)
        .set_key(Some(key("T#2", "NEW")))
        .update_expression("SET a = :a")
        .expression_attribute_values(":a", n(5))
        .return_values(ReturnValue::AllNew)
        .send()
        .await
        .unwrap();
    assert_eq!(
        to_wire_json(&out.attributes.unwrap()),
        json!({"PK": {"S": "T#2"}, "SK": {"S": "NEW"}, "a": {"N": "5"}})
    );
    // ALL_OLD of a delete returns what was there.
    let out = b
        .db()
        .delete_item()
        .table_name(&b.table)
        .set_key(Some(key("T#2", "NEW")))
        .condition_expression("a BETWEEN :lo AND :hi AND a IN (:a, :b)")
        .expression_attribute_values(":lo", n(1))
        .expression_attribute_values(":hi", n(9))
        .expression_attribute_values(":a", n(5))
        .expression_attribute_values(":b", n(6))
        .return_values(ReturnValue::AllOld)
        .send()
        .await
        .unwrap();
    assert_eq!(
        to_wire_json(&out.attributes.unwrap())["a"],
        json!({"N": "5"})
    );
    assert_eq!(b.store.get_raw("T#2", "NEW").await.unwrap(), None);
}

async fn conditional_failure_returns_the_old_item_only_when_asked(b: Backend) {
    b.store.put_raw(rich_item()).await.unwrap();
    let attempt = |asked: bool| {
        let mut req = b
            .db()
            .update_item()
            .table_name(&b.table)
            .set_key(Some(key("T#1", "ITEM")))
            .update_expression("SET #text = :t")
            .condition_expression("yes = :no OR NOT attribute_exists(PK)")
            .expression_attribute_names("#text", "text")
            .expression_attribute_values(":t", s("changed"))
            .expression_attribute_values(":no", AttributeValue::Bool(false));
        if asked {
            req = req.return_values_on_condition_check_failure(
                ReturnValuesOnConditionCheckFailure::AllOld,
            );
        }
        req.send()
    };
    let err = attempt(true).await.unwrap_err();
    let se = err.into_service_error();
    assert!(se.is_conditional_check_failed_exception(), "{se:?}");
    let old = match se {
        aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c) => c.item,
        _ => unreachable!(),
    };
    assert_eq!(old.unwrap()["text"], s("héllo, wörld"), "{}", b.name);
    let se = attempt(false).await.unwrap_err().into_service_error();
    match se {
        aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c) => {
            assert!(c.item.is_none(), "not asked: no item on {}", b.name)
        }
        other => panic!("{other:?}"),
    }
    // On a missing item a failed condition returns no item even when asked.
    let err = b
        .db()
        .put_item()
        .table_name(&b.table)
        .set_item(Some(key("T#9", "X")))
        .condition_expression("attribute_exists(PK)")
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    match err {
        aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c) => {
            assert!(c.item.is_none())
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        b.store.get_raw("T#1", "ITEM").await.unwrap().unwrap()["text"],
        s("héllo, wörld")
    );
}

/// What a refused request's error code is (`None`: accepted).
async fn refused(
    b: &Backend,
    update: &str,
    condition: Option<&str>,
    values: &[(&str, AttributeValue)],
) -> Option<String> {
    let mut req = b
        .db()
        .update_item()
        .table_name(&b.table)
        .set_key(Some(key("T#1", "ITEM")))
        .update_expression(update)
        .set_condition_expression(condition.map(str::to_owned));
    for (k, v) in values {
        req = req.expression_attribute_values(*k, v.clone());
    }
    req.send()
        .await
        .err()
        .map(|e| e.code().unwrap_or("?").to_owned())
}

async fn refused_requests_are_validation_errors(b: Backend) {
    b.store.put_raw(rich_item()).await.unwrap();
    let invalid = Some("ValidationException".to_owned());
    let v = [(":v", n(1))];
    assert_eq!(
        refused(&b, "SET a = :v", None, &v).await,
        None,
        "{}",
        b.name
    );
    assert_eq!(
        refused(&b, "SET a = :v", None, &[(":v", n(1)), (":unused", n(2))]).await,
        invalid,
        "unused value"
    );
    assert_eq!(
        refused(&b, "SET a = :missing", None, &v).await,
        invalid,
        "undefined value"
    );
    assert_eq!(
        refused(&b, "SET status = :v", None, &v).await,
        invalid,
        "reserved word"
    );
    assert_eq!(
        refused(&b, "SET PK = :v", None, &v).await,
        invalid,
        "key attribute"
    );
    assert_eq!(
        refused(&b, "SET a = :v, a = :v", None, &v).await,
        invalid,
        "overlapping paths"
    );
    // A syntax error is refused by both (moto's answer carries no error code).
    assert!(
        refused(&b, "SET a = :v", Some("a ==== :v"), &v)
            .await
            .is_some(),
        "bad condition"
    );
    assert!(
        refused(&b, "SET a = :v", Some("frobnicate(a)"), &v)
            .await
            .is_some(),
        "unknown function"
    );
    // A consistent read on a global secondary index.
    let err = b
        .db()
        .query()
        .table_name(&b.table)
        .index_name("GSI1")
        .key_condition_expression("GSI1PK = :pk")
        .expression_attribute_values(":pk", s("STATUS#PENDING"))
        .consistent_read(true)
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("ValidationException"), "{}", b.name);
    // An item without its sort key.
    let err = b
        .db()
        .put_item()
        .table_name(&b.table)
        .item("PK", s("T#3"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("ValidationException"));
    // A table that does not exist.
    let err = b
        .db()
        .get_item()
        .table_name("no-such-table")
        .set_key(Some(key("a", "b")))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("ResourceNotFoundException"), "{}", b.name);
    let store = Store::new(b.db().clone(), "no-such-table");
    match store.get_raw("a", "b").await.unwrap_err() {
        StoreError::Deployment { .. } => {}
        other => panic!("a missing table is an error of the deployment: {other:?}"),
    }
}

async fn query_limit_pages_and_last_evaluated_key(b: Backend) {
    for i in 0..5 {
        b.store
            .put_raw(key("Q#1", &format!("R#{i}")))
            .await
            .unwrap();
    }
    b.store.put_raw(key("Q#1", "S#0")).await.unwrap();
    b.store.put_raw(key("Q#2", "R#9")).await.unwrap();
    let page = |start: Option<Item>, limit: i32, forward: bool| {
        b.db()
            .query()
            .table_name(&b.table)
            .key_condition_expression("PK = :pk AND begins_with(SK, :p)")
            .expression_attribute_values(":pk", s("Q#1"))
            .expression_attribute_values(":p", s("R#"))
            .consistent_read(true)
            .limit(limit)
            .scan_index_forward(forward)
            .set_exclusive_start_key(start)
            .send()
    };
    let first = page(None, 2, true).await.unwrap();
    let sks = |items: &[Item]| -> Vec<String> {
        items
            .iter()
            .map(|i| i["SK"].as_s().unwrap().clone())
            .collect()
    };
    assert_eq!(sks(first.items()), ["R#0", "R#1"], "{}", b.name);
    assert_eq!(first.last_evaluated_key.clone().unwrap(), key("Q#1", "R#1"));
    let second = page(first.last_evaluated_key, 2, true).await.unwrap();
    assert_eq!(sks(second.items()), ["R#2", "R#3"]);
    let third = page(second.last_evaluated_key, 2, true).await.unwrap();
    assert_eq!(sks(third.items()), ["R#4"]);
    assert!(
        third.last_evaluated_key.is_none(),
        "a short page is the last on {}",
        b.name
    );
    let back = page(None, 3, false).await.unwrap();
    assert_eq!(sks(back.items()), ["R#4", "R#3", "R#2"]);
    let back2 = page(back.last_evaluated_key, 3, false).await.unwrap();
    assert_eq!(sks(back2.items()), ["R#1", "R#0"]);
    // Range conditions and a count.
    let count = b
        .db()
        .query()
        .table_name(&b.table)
        .key_condition_expression("PK = :pk AND SK BETWEEN :a AND :z")
        .expression_attribute_values(":pk", s("Q#1"))
        .expression_attribute_values(":a", s("R#1"))
        .expression_attribute_values(":z", s("R#3"))
        .select(Select::Count)
        .send()
        .await
        .unwrap();
    assert_eq!(count.count, 3);
    assert!(count.items.is_none_or(|i| i.is_empty()));
    let after = b
        .db()
        .query()
        .table_name(&b.table)
        .key_condition_expression("PK = :pk AND SK > :a")
        .expression_attribute_values(":pk", s("Q#1"))
        .expression_attribute_values(":a", s("R#3"))
        .send()
        .await
        .unwrap();
    assert_eq!(sks(after.items()), ["R#4", "S#0"]);
    // A key condition on a non-key attribute is refused.
    let err = b
        .db()
        .query()
        .table_name(&b.table)
        .key_condition_expression("PK = :pk AND other = :a")
        .expression_attribute_values(":pk", s("Q#1"))
        .expression_attribute_values(":a", s("x"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("ValidationException"), "{}", b.name);
}
