//! The DynamoDB store against moto: every operation, conflicts, pagination, UnprocessedItems,
//! lease contention and expiry, and golden items read back with a raw GetItem.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_sdk_dynamodb::config::interceptors::{
    BeforeSerializationInterceptorContextMut, FinalizerInterceptorContextMut,
};
use aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_dynamodb::operation::batch_write_item::{BatchWriteItemInput, BatchWriteItemOutput};
use aws_sdk_dynamodb::types::WriteRequest;
use fleet_shared::model::item::{from_wire_json, to_wire_json};
use fleet_shared::model::time::parse_timestamp;
use fleet_shared::model::*;
use fleet_shared::store::{BatchRetry, Created, LeaseOutcome, ScheduleClaim, Store, Transition};
use serde_json::{Value, json};

use crate::support::TestEnv;

const IMG_A: &str = "0f0e0d0c-0b0a-4909-8807-060504030201";
const IMG_B: &str = "aa0e0d0c-0b0a-4909-8807-060504030201";

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

fn summary(batch_id: &str, status: BatchStatus, batch_type: BatchType) -> BatchSummary {
    BatchSummary {
        batch_id: batch_id.into(),
        batch_type,
        openai_batch_id: format!("batch_{batch_id}"),
        submitted_at: parse_timestamp("2025-06-20T17:03:12+00:00").unwrap(),
        status,
        result_file_id: "N/A".into(),
        receipt_refs: vec![ReceiptKey {
            image_id: ImageId::parse(IMG_A).unwrap(),
            receipt_id: 1,
        }],
    }
}

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

#[tokio::test]
async fn golden_label_written_by_the_store_reads_back_exactly() {
    let env = TestEnv::new().await;
    let l = label(IMG_A, 2, 7, 3, "GRAND_TOTAL", ValidationStatus::Pending);
    assert_eq!(
        env.store.create_label_if_absent(&l).await.unwrap(),
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
        env.store.get_raw(&l.key.pk(), &l.key.sk()).await.unwrap(),
        expected.clone(),
    );

    let t = env
        .store
        .transition_label(&l.key, ValidationStatus::Pending, ValidationStatus::Invalid)
        .await
        .unwrap();
    assert_eq!(t, Transition::Applied);
    expected["GSI3PK"] = json!({"S": "VALIDATION_STATUS#INVALID"});
    expected["validation_status"] = json!({"S": "INVALID"});
    expected["label_proposed_by"] = json!({"S": "COMPLETION_BATCH"});
    assert_item(
        env.store.get_raw(&l.key.pk(), &l.key.sk()).await.unwrap(),
        expected,
    );
}

#[tokio::test]
async fn label_transition_conflicts_and_reruns() {
    let env = TestEnv::new().await;
    let l = label(IMG_A, 1, 1, 1, "TAX", ValidationStatus::Pending);
    env.store.create_label_if_absent(&l).await.unwrap();
    let s = &env.store;
    use ValidationStatus::*;
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
        s.transition_label(&l.key, Pending, None).await.unwrap(),
        Transition::Conflict {
            current: Some(Valid)
        }
    );
    assert_eq!(
        s.get_raw(&l.key.pk(), &l.key.sk()).await.unwrap(),
        before,
        "nothing overwritten"
    );

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
        Option::None,
        "no item created"
    );

    // An older item without validation_status reads as NONE and transitions from NONE.
    let mut old = label(IMG_A, 1, 1, 3, "TAX", None).to_item();
    old.remove("validation_status");
    old.remove("GSI4PK");
    old.remove("GSI4SK");
    s.put_raw(old).await.unwrap();
    let key = LabelKey::new(ImageId::parse(IMG_A).unwrap(), 1, 1, 3, "TAX");
    assert_eq!(
        s.transition_label(&key, None, Pending).await.unwrap(),
        Transition::Applied
    );
}

#[tokio::test]
async fn create_label_only_if_absent() {
    let env = TestEnv::new().await;
    let reviewed = label(IMG_A, 1, 2, 2, "UNIT_PRICE", ValidationStatus::Valid);
    env.store.create_label_if_absent(&reviewed).await.unwrap();
    let before = env
        .store
        .get_raw(&reviewed.key.pk(), &reviewed.key.sk())
        .await
        .unwrap();
    let mut proposal = label(IMG_A, 1, 2, 2, "UNIT_PRICE", ValidationStatus::None);
    proposal.reasoning = Option::None;
    proposal.label_consolidated_from = Some("LINE_TOTAL".into());
    assert_eq!(
        env.store.create_label_if_absent(&proposal).await.unwrap(),
        Created::AlreadyExists
    );
    assert_eq!(
        env.store
            .get_raw(&reviewed.key.pk(), &reviewed.key.sk())
            .await
            .unwrap(),
        before,
        "a reviewed label is never overwritten"
    );
}

#[tokio::test]
async fn pending_batches_and_labels_follow_every_page() {
    let env = TestEnv::new().await;
    let store = env.store.clone().with_page_size(2);
    for i in 0..5 {
        store
            .put_raw(
                summary(
                    &format!("b{i}"),
                    BatchStatus::Pending,
                    BatchType::Completion,
                )
                .to_item(),
            )
            .await
            .unwrap();
    }
    store
        .put_raw(summary("done", BatchStatus::Completed, BatchType::Completion).to_item())
        .await
        .unwrap();
    store
        .put_raw(summary("emb", BatchStatus::Pending, BatchType::Embedding).to_item())
        .await
        .unwrap();
    let mut bad = summary("bad", BatchStatus::Pending, BatchType::Completion).to_item();
    bad.insert(
        "receipt_refs".into(),
        aws_sdk_dynamodb::types::AttributeValue::S("oops".into()),
    );
    store.put_raw(bad).await.unwrap();

    let found = store.pending_completion_batches().await.unwrap();
    let mut ids: Vec<String> = found
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|b| b.batch_id.clone())
        .collect();
    ids.sort();
    assert_eq!(ids, ["b0", "b1", "b2", "b3", "b4"]);
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

    for w in 1..=5 {
        store
            .create_label_if_absent(&label(
                IMG_A,
                1,
                1,
                w,
                "PRODUCT_NAME",
                ValidationStatus::Pending,
            ))
            .await
            .unwrap();
    }
    // Another receipt and another item type under the same image must not be returned.
    store
        .create_label_if_absent(&label(IMG_A, 2, 1, 1, "TAX", ValidationStatus::Pending))
        .await
        .unwrap();
    store
        .put_raw(
            from_wire_json(&json!({
                "PK": {"S": format!("IMAGE#{IMG_A}")},
                "SK": {"S": "RECEIPT#00001#LINE#00001#WORD#00001"},
                "TYPE": {"S": "RECEIPT_WORD"}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let receipt = ReceiptKey {
        image_id: ImageId::parse(IMG_A).unwrap(),
        receipt_id: 1,
    };
    let labels = store.receipt_labels(&receipt).await.unwrap();
    assert_eq!(labels.len(), 5);
    assert!(
        labels
            .iter()
            .all(|l| l.as_ref().unwrap().key.receipt_id() == 1)
    );
}

#[tokio::test]
async fn summary_finishes_only_from_pending() {
    let env = TestEnv::new().await;
    let s = summary("b1", BatchStatus::Pending, BatchType::Completion);
    env.store.put_raw(s.to_item()).await.unwrap();
    assert_eq!(
        env.store
            .finish_summary("b1", BatchStatus::Completed, Some("file-out"))
            .await
            .unwrap(),
        Transition::Applied
    );
    let item = to_wire_json(
        &env.store
            .get_raw("BATCH#b1", "STATUS")
            .await
            .unwrap()
            .unwrap(),
    );
    assert_eq!(item["status"], json!({"S": "COMPLETED"}));
    assert_eq!(item["GSI1PK"], json!({"S": "STATUS#COMPLETED"}));
    assert_eq!(item["result_file_id"], json!({"S": "file-out"}));
    assert_eq!(
        item["GSI1SK"],
        json!({"S": "BATCH_TYPE#COMPLETION#BATCH_ID#b1"})
    );
    assert_eq!(
        env.store
            .finish_summary("b1", BatchStatus::Completed, Some("file-out"))
            .await
            .unwrap(),
        Transition::AlreadyInTarget
    );
    assert_eq!(
        env.store
            .finish_summary("b1", BatchStatus::Failed, None)
            .await
            .unwrap(),
        Transition::Conflict {
            current: Some(BatchStatus::Completed)
        }
    );
    assert!(
        env.store
            .pending_completion_batches()
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        env.store
            .finish_summary("nope", BatchStatus::Failed, None)
            .await
            .unwrap(),
        Transition::Conflict { current: None }
    );
}

fn audit_rows(n: usize) -> (Vec<Item>, Vec<CompletionBatchResult>) {
    let validated_at = parse_timestamp("2025-06-21T08:00:00+00:00").unwrap();
    let rows: Vec<CompletionBatchResult> = (0..n)
        .map(|i| CompletionBatchResult {
            batch_id: "b1".into(),
            label: LabelKey::new(
                ImageId::parse(IMG_B).unwrap(),
                3,
                1 + u32::try_from(i / 10).expect("small"),
                1 + u32::try_from(i % 10).expect("small"),
                "TAX",
            ),
            status: BatchStatus::Completed,
            gpt_suggested_label: None,
            validated_at,
        })
        .collect();
    (rows.iter().map(|r| r.to_item()).collect(), rows)
}

#[tokio::test]
async fn audit_rows_are_written_in_chunks_of_25_and_read_back_exactly() {
    let env = TestEnv::new().await;
    let (mut items, rows) = audit_rows(60);
    items.push(rows[0].to_item()); // a duplicate key is written once
    let report = env.store.put_items_batched(items).await.unwrap();
    assert_eq!(report.items, 60);
    assert_eq!(report.calls, 3, "60 items need 3 calls of at most 25");
    assert_eq!(report.retries, 0);
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
        env.store
            .get_raw("BATCH#b1", "RESULT#RECEIPT#3#LINE#1#WORD#1#LABEL#TAX")
            .await
            .unwrap(),
        expected,
    );
    for r in &rows {
        assert!(
            env.store
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
    env.store
        .put_items_batched(vec![verdict.to_item()])
        .await
        .unwrap();
    assert_item(
        env.store.get_raw("BATCH#b1", &verdict.sk()).await.unwrap(),
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
    let journal = env.store.batch_verdicts("b1").await.unwrap();
    assert_eq!(journal.len(), 1);
    assert_eq!(journal[0].as_ref().unwrap(), &verdict);
}

/// Makes DynamoDB's partial batch writes happen on moto: withholds the last third of each
/// BatchWriteItem request from the server and returns it as `UnprocessedItems`, `rounds` times.
#[derive(Debug, Default)]
struct PartialBatchWrites {
    rounds: AtomicUsize,
    withheld: Mutex<Vec<WriteRequest>>,
    table: String,
}

impl Intercept for PartialBatchWrites {
    fn name(&self) -> &'static str {
        "PartialBatchWrites"
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
        if let Some(input) = ctx.input_mut().downcast_mut::<BatchWriteItemInput>() {
            let requests = input
                .request_items
                .as_mut()
                .and_then(|m| m.get_mut(&self.table));
            if let Some(requests) = requests.filter(|r| !r.is_empty()) {
                // A request may not be empty: a single item is sent and still reported back.
                let withheld = if requests.len() >= 2 {
                    let keep = requests.len() - requests.len().div_ceil(3);
                    requests.split_off(keep)
                } else {
                    requests.clone()
                };
                *self.withheld.lock().unwrap() = withheld;
                self.rounds.fetch_sub(1, Ordering::SeqCst);
            }
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
        if withheld.is_empty() {
            return Ok(());
        }
        if let Some(Ok(output)) = ctx.output_or_error_mut()
            && let Some(out) = output.downcast_mut::<BatchWriteItemOutput>()
        {
            out.unprocessed_items = Some([(self.table.clone(), withheld)].into());
        }
        Ok(())
    }
}

#[tokio::test]
async fn unprocessed_items_are_retried_until_written() {
    let env = TestEnv::new().await;
    let interceptor = Arc::new(PartialBatchWrites {
        rounds: AtomicUsize::new(4),
        table: env.table.clone(),
        ..Default::default()
    });
    let conf = env
        .clients
        .dynamodb
        .config()
        .to_builder()
        .interceptor(SharedInterceptor(interceptor.clone()))
        .build();
    let store = Store::new(aws_sdk_dynamodb::Client::from_conf(conf), &env.table).with_batch_retry(
        BatchRetry {
            min_delay: std::time::Duration::from_millis(1),
            max_delay: std::time::Duration::from_millis(5),
            max_times: 10,
        },
    );
    let (items, rows) = audit_rows(30);
    let report = store.put_items_batched(items).await.unwrap();
    assert_eq!(report.retries, 4, "every withheld round was re-sent");
    assert_eq!(report.calls, 6);
    for r in &rows {
        assert!(
            env.store
                .get_raw("BATCH#b1", &r.sk())
                .await
                .unwrap()
                .is_some(),
            "{} written",
            r.sk()
        );
    }

    // When the service keeps returning unprocessed items, the store gives up with a transient error.
    interceptor.rounds.store(100, Ordering::SeqCst);
    let stubborn = store.with_batch_retry(BatchRetry {
        min_delay: std::time::Duration::from_millis(1),
        max_delay: std::time::Duration::from_millis(2),
        max_times: 2,
    });
    let err = stubborn
        .put_items_batched(audit_rows(3).0)
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
}

/// `Intercept` for an `Arc` so the test keeps a handle on the interceptor's counters.
#[derive(Debug)]
struct SharedInterceptor(Arc<PartialBatchWrites>);

impl Intercept for SharedInterceptor {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn modify_before_serialization(
        &self,
        ctx: &mut BeforeSerializationInterceptorContextMut<'_>,
        rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        self.0.modify_before_serialization(ctx, rc, cfg)
    }
    fn modify_before_completion(
        &self,
        ctx: &mut FinalizerInterceptorContextMut<'_>,
        rc: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_dynamodb::error::BoxError> {
        self.0.modify_before_completion(ctx, rc, cfg)
    }
}

#[tokio::test]
async fn lease_contention_renewal_and_expiry() {
    let env = TestEnv::new().await;
    let s = &env.store;
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
        }
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

#[tokio::test]
async fn schedule_marker_claims_once_until_it_expires() {
    let env = TestEnv::new().await;
    let s = &env.store;
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
    let mark = state.dead_letter.expect("marked");
    assert_eq!((mark.reason.as_str(), mark.at_ms), ("batch_unknown", now));
    assert_eq!(
        s.claim_schedule("b1", now + 2_000_000, now + 1_500_000, "c2")
            .await
            .unwrap(),
        ScheduleClaim::DeadLettered(mark)
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
#[tokio::test]
async fn result_rows_keep_the_smallest_image_and_journal_reads_per_receipt() {
    let env = TestEnv::new().await;
    let at = parse_timestamp("2025-06-21T08:00:00+00:00").unwrap();
    let row = |image: &str, suggested: Option<&str>| CompletionBatchResult {
        batch_id: "b2".into(),
        label: LabelKey::new(ImageId::parse(image).unwrap(), 1, 2, 3, "TAX"),
        status: BatchStatus::Completed,
        gpt_suggested_label: suggested.map(str::to_owned),
        validated_at: at,
    };
    let (a, b) = (row(IMG_A, Some("TIP")), row(IMG_B, None));
    assert!(IMG_A < IMG_B);
    let stored = || async {
        let item = env
            .store
            .get_raw("BATCH#b2", &a.sk())
            .await
            .unwrap()
            .unwrap();
        CompletionBatchResult::from_item(&item).unwrap()
    };
    assert!(
        env.store.put_result_row(&b).await.unwrap(),
        "absent: written"
    );
    assert!(
        env.store.put_result_row(&a).await.unwrap(),
        "smaller image: overwrites"
    );
    assert_eq!(stored().await, a);
    assert!(
        !env.store.put_result_row(&b).await.unwrap(),
        "larger image: refused"
    );
    assert!(
        env.store.put_result_row(&a).await.unwrap(),
        "its own row: written again"
    );
    assert_eq!(stored().await, a);

    assert!(!env.store.has_batch_verdicts("b2").await.unwrap());
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
    env.store
        .put_items_batched(rows.iter().map(CompletionBatchVerdict::to_item).collect())
        .await
        .unwrap();
    assert!(env.store.has_batch_verdicts("b2").await.unwrap());
    let receipt = |image: &str, receipt_id: u32| ReceiptKey {
        image_id: ImageId::parse(image).unwrap(),
        receipt_id,
    };
    let got: Vec<_> = env
        .store
        .batch_verdicts_for("b2", &receipt(IMG_A, 10_000))
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(got, [rows[0].clone()]);
    assert!(
        env.store
            .batch_verdicts_for("b2", &receipt(IMG_B, 2))
            .await
            .unwrap()
            .is_empty()
    );
}
