//! Vector metadata under Pinecone's eventual consistency (issue 14): two batches judging
//! different labels of the same words, applied by two workers (two `Services`, each handling
//! under its own lease) seconds apart while the emulator shows updates to fetches only after a
//! delay of a few seconds, keep every label; so do a batch cut off part-way and run again, and
//! two applies at the same moment. Checked on the emulator's latest metadata and, once the
//! delay has passed, on what a fetch sees.

use std::time::{Duration, Instant};

use fleet_shared::finish::{ApplyReport, FinishError, Services, WriteBudget};
use fleet_shared::model::time::parse_timestamp;
use fleet_shared::model::*;
use fleet_tests::openai::BatchSpec;
use fleet_tests::openai::fixtures::{self, AnswerShape};
use fleet_tests::pinecone::FaultSpec;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use crate::support::watch::Watch;
use crate::support::{self, Fleet, NAMESPACE, services_for};

const IMG: &str = "33333333-3333-4333-8333-333333333333";
const FINISHED: i64 = 1_750_003_600;
/// How long an update stays invisible to fetches: "a few seconds", as the real index can lag.
const DELAY: Duration = Duration::from_secs(5);

/// One label a batch judges, on word 1 of `line` of the receipt.
struct Judged {
    line: u32,
    label: &'static str,
    valid: bool,
    suggestion: Option<&'static str>,
}

struct Batch {
    id: &'static str,
    openai_id: &'static str,
    judged: [Judged; 3],
}

/// Batch 1 and batch 2 judge different labels of the same three words: both VALID (one list),
/// both invalid with a core suggestion from batch 1 only (`proposed_label`), and one of each.
const BATCH_1: Batch = Batch {
    id: "7a1c0000-0000-4000-8000-000000000001",
    openai_id: "batch_vectors_1",
    judged: [
        Judged {
            line: 1,
            label: "DATE",
            valid: true,
            suggestion: None,
        },
        Judged {
            line: 2,
            label: "TAX",
            valid: false,
            suggestion: Some("SUBTOTAL"),
        },
        Judged {
            line: 3,
            label: "LINE_TOTAL",
            valid: true,
            suggestion: None,
        },
    ],
};

const BATCH_2: Batch = Batch {
    id: "7a1c0000-0000-4000-8000-000000000002",
    openai_id: "batch_vectors_2",
    judged: [
        Judged {
            line: 1,
            label: "TIME",
            valid: true,
            suggestion: None,
        },
        Judged {
            line: 2,
            label: "TIP",
            valid: false,
            suggestion: None,
        },
        Judged {
            line: 3,
            label: "UNIT_PRICE",
            valid: false,
            suggestion: None,
        },
    ],
};

fn key(line: u32, label: &str) -> LabelKey {
    LabelKey::new(ImageId::parse(IMG).unwrap(), 1, line, 1, label)
}

fn vector_id(line: u32) -> String {
    key(line, "X").word.vector_id()
}

fn object(v: Value) -> Map<String, Value> {
    v.as_object().expect("an object").clone()
}

/// Every label of both batches, in the metadata of the three words.
fn expected() -> [(String, Map<String, Value>); 3] {
    [
        (
            vector_id(1),
            object(json!({"text": "w", "valid_labels": ["DATE", "TIME"]})),
        ),
        (
            vector_id(2),
            object(json!({"text": "w", "invalid_labels": ["TAX", "TIP"],
                          "proposed_label": "SUBTOTAL"})),
        ),
        (
            vector_id(3),
            object(json!({"text": "w", "valid_labels": ["LINE_TOTAL"],
                          "invalid_labels": ["UNIT_PRICE"]})),
        ),
    ]
}

fn label(k: &LabelKey) -> ReceiptWordLabel {
    ReceiptWordLabel {
        key: k.clone(),
        reasoning: Some("layout model".into()),
        timestamp_added: parse_timestamp("2025-06-20T00:00:00+00:00").unwrap(),
        validation_status: ValidationStatus::Pending,
        label_proposed_by: Some("LAYOUTLM".into()),
        label_consolidated_from: None,
    }
}

/// Both batches' labels PENDING, their summaries, their files at OpenAI (completed), and the
/// three word vectors with only their text.
async fn seed(f: &Fleet) {
    let receipt = ReceiptKey {
        image_id: ImageId::parse(IMG).unwrap(),
        receipt_id: 1,
    };
    let cid = fixtures::custom_id(IMG, 1);
    let mut items = Vec::new();
    for b in [&BATCH_1, &BATCH_2] {
        let mut targets = Vec::new();
        let mut results = Vec::new();
        for j in &b.judged {
            let k = key(j.line, j.label);
            items.push(label(&k).to_item());
            let rid = fixtures::result_id(IMG, 1, j.line, 1, j.label, "NONE");
            targets.push(fixtures::target(&rid, "w", j.line, j.label));
            results.push(fixtures::result(&rid, j.valid, j.suggestion));
        }
        items.push(
            BatchSummary {
                batch_id: b.id.into(),
                batch_type: BatchType::Completion,
                openai_batch_id: b.openai_id.into(),
                submitted_at: parse_timestamp("2025-06-15T15:00:00+00:00").unwrap(),
                status: BatchStatus::Pending,
                result_file_id: "N/A".into(),
                receipt_refs: vec![receipt.clone()],
            }
            .to_item(),
        );
        let (input, output) = (
            format!("{}-in", b.openai_id),
            format!("{}-out", b.openai_id),
        );
        let mut spec = BatchSpec::new(b.openai_id, &input).with_output_file(&output);
        spec.created_at = FINISHED - 3600;
        spec.completed_at = Some(FINISHED);
        f.openai.add_batch(spec);
        f.openai.add_file(
            input,
            fixtures::ndjson(&[fixtures::input_line(&cid, &targets, "receipt")]),
        );
        f.openai.add_file(
            output,
            fixtures::ndjson(&[fixtures::output_line(
                &cid,
                &results,
                AnswerShape::FunctionCall,
            )]),
        );
    }
    f.env.store.put_items_batched(items).await.unwrap();
    for line in 1..=3 {
        f.pinecone.upsert(
            NAMESPACE,
            &vector_id(line),
            vec![0.5],
            object(json!({"text": "w"})),
        );
    }
}

/// A fleet whose Pinecone shows updates to fetches only after [`DELAY`], seeded.
async fn fleet() -> Fleet {
    let f = Fleet::new().await;
    f.pinecone.set_consistency_delay(DELAY);
    seed(&f).await;
    f
}

/// A worker of its own: its own clients, as a second process would have.
fn worker(f: &Fleet) -> Services {
    services_for(&f.env, &f.openai, &f.pinecone)
}

/// One handling of a batch by `services` ([`support::handle`], to its end).
async fn handle(services: &Services, batch_id: &str) -> Result<ApplyReport, FinishError> {
    support::handle(services, batch_id, &CancellationToken::new()).await
}

/// Every label of both batches is in the latest metadata; once the delay has passed since the
/// last update, a fetch sees the same.
async fn assert_every_label_kept(f: &Fleet) {
    for (id, want) in expected() {
        assert_eq!(
            f.pinecone.metadata(NAMESPACE, &id).as_ref(),
            Some(&want),
            "latest metadata of {id}"
        );
    }
    let last = f
        .pinecone
        .updates()
        .iter()
        .map(|u| u.unix_ms)
        .max()
        .unwrap_or(0);
    let now = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .expect("milliseconds since 1970 fit");
    let visible_at = last + u64::try_from(DELAY.as_millis()).expect("seconds") + 100;
    tokio::time::sleep(Duration::from_millis(visible_at.saturating_sub(now))).await;
    for (id, want) in expected() {
        assert_eq!(
            f.pinecone.visible_metadata(NAMESPACE, &id).as_ref(),
            Some(&want),
            "metadata a fetch sees of {id}"
        );
    }
}

async fn assert_both_batches_done(f: &Fleet) {
    for b in [&BATCH_1, &BATCH_2] {
        let s = f.env.store.batch_summary(b.id).await.unwrap().unwrap();
        assert_eq!(s.status, BatchStatus::Completed, "{}", b.id);
        for j in &b.judged {
            let l = f
                .env
                .store
                .get_raw(&key(j.line, j.label).pk(), &key(j.line, j.label).sk())
                .await
                .unwrap()
                .unwrap();
            let status = l["validation_status"].as_s().unwrap();
            assert_ne!(status, "PENDING", "{} judged by {}", j.label, b.id);
        }
    }
}

/// Issue 14, "Done when": batch 2 is applied a second after batch 1, while batch 1's updates
/// are still invisible to fetches. A fetch-merge-update would write batch 2's labels over the
/// empty lists it fetched and lose DATE, TAX and (as the one list of its word) nothing else;
/// the lists derived from the table hold both batches' labels in one write.
#[tokio::test]
async fn two_workers_applying_two_batches_seconds_apart_keep_every_label() {
    let f = fleet().await;
    let (one, two) = (worker(&f), worker(&f));
    let first = handle(&one, BATCH_1.id).await.unwrap();
    assert_eq!(first.vectors_updated, 3);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The fetch batch 2 is about to make cannot see batch 1's writes yet.
    assert_eq!(
        f.pinecone.visible_metadata(NAMESPACE, &vector_id(1)),
        Some(object(json!({"text": "w"}))),
        "the premise: batch 1's update is not visible yet"
    );
    assert_eq!(
        f.pinecone.metadata(NAMESPACE, &vector_id(1)),
        Some(object(json!({"text": "w", "valid_labels": ["DATE"]})))
    );
    let second = handle(&two, BATCH_2.id).await.unwrap();
    assert_eq!(second.vectors_updated, 3);
    assert_eq!(
        (second.vectors_repaired, second.vectors_rewritten),
        (0, 0),
        "the table's labels were enough: no repair"
    );
    assert_both_batches_done(&f).await;
    assert_every_label_kept(&f).await;
}

/// The interleaving the derivation alone gets wrong: batch 2 reads the table and writes its
/// status changes, then its fetch is held (a delayed answer) while batch 1 runs to its end,
/// so batch 2 writes last, from labels read before batch 1's verdicts and a fetch that shows
/// none of batch 1's updates. Its verification reads the table again, finds batch 1's labels,
/// and writes the lists again.
#[tokio::test]
async fn a_write_from_labels_read_before_the_other_batch_is_repaired() {
    let f = fleet().await;
    let (one, two) = (worker(&f), worker(&f));
    const HOLD: Duration = Duration::from_secs(3);
    f.pinecone.fail_next(
        FaultSpec::delay(u64::try_from(HOLD.as_millis()).expect("seconds"))
            .on_path("/vectors/fetch")
            .times(1),
    );
    // In one task (an apply's future is not `Send`): batch 2, and batch 1 once batch 2's
    // fetch is held.
    let started = Instant::now();
    let batch_2 = async {
        let report = handle(&two, BATCH_2.id).await.unwrap();
        (report, started.elapsed())
    };
    let batch_1 = async {
        while !f.pinecone.pending_faults().is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "batch 2 never fetched"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let report = handle(&one, BATCH_1.id).await.unwrap();
        (report, started.elapsed())
    };
    let ((second, second_done), (first, first_done)) = tokio::join!(batch_2, batch_1);
    assert!(
        first_done < HOLD && first_done < second_done,
        "the premise: batch 1 ended while batch 2's fetch was held ({first_done:?}, {second_done:?})"
    );
    // Batch 1 read batch 2's verdicts from the table: its writes hold both batches' labels.
    assert_eq!(first.vectors_updated, 3);
    assert_eq!(first.vectors_repaired, 0);
    assert_eq!(second.vectors_updated, 3);
    // Its writes of the lists it fetched empty dropped DATE (word 1's valid list) and TAX
    // (word 2's invalid list); word 3's invalid list was complete, its valid list not written.
    assert_eq!(second.vectors_repaired, 2, "{second:#?}");
    let repairs: Vec<(String, Value)> = f
        .pinecone
        .updates()
        .iter()
        .skip(6)
        .map(|u| {
            (
                u.id.clone(),
                Value::Object(u.set_metadata.clone().unwrap_or_default()),
            )
        })
        .collect();
    assert_eq!(
        repairs.len(),
        2,
        "6 writes, then the repairs: {:#?}",
        f.pinecone.updates()
    );
    assert!(repairs.contains(&(vector_id(1), json!({"valid_labels": ["DATE", "TIME"]}))));
    assert!(repairs.contains(&(vector_id(2), json!({"invalid_labels": ["TAX", "TIP"]}))));
    assert_both_batches_done(&f).await;
    assert_every_label_kept(&f).await;
}

/// Issue 14, "Done when", with a crash: batch 1 is cut off (a write budget) before its vector
/// writes, or right after them; batch 2 is applied meanwhile, and batch 1 is run again, each a
/// second after the previous, while no update is visible to fetches yet. A fetch-merge-update
/// would let batch 2 drop DATE and the re-run drop TIME (or, finding its own earlier update,
/// write nothing); every label is kept.
#[tokio::test]
async fn a_batch_cut_off_and_run_again_around_the_other_keeps_every_label() {
    // Batch 1's writes, in order: its journal rows (one call), 3 status changes, 1 correction,
    // the vector merge (one call), 3 result rows, its cursor, its summary.
    for (budget, when) in [
        (5, "before its vector writes"),
        (6, "after its vector writes"),
    ] {
        let f = fleet().await;
        let (one, two) = (worker(&f), worker(&f));
        let mut cut = worker(&f);
        cut.options.write_budget = Some(WriteBudget::new(budget));
        let err = handle(&cut, BATCH_1.id).await.unwrap_err();
        assert!(matches!(err, FinishError::Stopped { .. }), "{when}: {err}");
        let written_by_cut = f.pinecone.update_count();
        assert_eq!(written_by_cut, if budget == 6 { 3 } else { 0 }, "{when}");
        tokio::time::sleep(Duration::from_secs(1)).await;
        handle(&two, BATCH_2.id).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rerun = handle(&one, BATCH_1.id).await.unwrap();
        assert_eq!(rerun.summary_status, Some(BatchStatus::Completed), "{when}");
        assert_eq!(
            rerun.status_changes.already, 3,
            "{when}: applied by the cut-off run"
        );
        assert_both_batches_done(&f).await;
        assert_every_label_kept(&f).await;
    }
}

/// A re-run of a batch whose cut-off run wrote its vectors finds, in its fetch, every label
/// there: it writes the words' lists again anyway (that run may have stopped before verifying
/// its write), as stored, so the vectors end as one uninterrupted run leaves them.
#[tokio::test]
async fn a_re_run_rewrites_the_vectors_its_cut_off_run_may_not_have_verified() {
    let f = Fleet::new().await;
    seed(&f).await;
    let mut cut = worker(&f);
    cut.options.write_budget = Some(WriteBudget::new(6));
    handle(&cut, BATCH_1.id).await.unwrap_err();
    let after_cut = f.pinecone.all(NAMESPACE);
    assert_eq!(f.pinecone.update_count(), 3);
    let rerun = handle(&worker(&f), BATCH_1.id).await.unwrap();
    assert_eq!(
        (
            rerun.vectors_updated,
            rerun.vectors_rewritten,
            rerun.vectors_unchanged
        ),
        (3, 3, 0)
    );
    let updates = f.pinecone.updates();
    assert_eq!(updates.len(), 6);
    assert!(
        updates[3..].iter().all(|u| u.existed && !u.changed),
        "the same values again: {updates:#?}"
    );
    assert_eq!(f.pinecone.all(NAMESPACE), after_cut);
    // Once done, a handling writes nothing more.
    let again = handle(&worker(&f), BATCH_1.id).await.unwrap();
    assert!(again.already_done);
    assert_eq!(f.pinecone.update_count(), 6);
}

/// Two workers applying the two batches at the same moment: whichever way their reads and
/// writes interleave, every label is kept.
#[tokio::test]
async fn two_workers_applying_at_the_same_moment_keep_every_label() {
    for _ in 0..2 {
        let f = fleet().await;
        let (one, two) = (worker(&f), worker(&f));
        let (a, b) = tokio::join!(handle(&one, BATCH_1.id), handle(&two, BATCH_2.id));
        a.unwrap();
        b.unwrap();
        assert_both_batches_done(&f).await;
        assert_every_label_kept(&f).await;
    }
}

/// Counts the base-table label Queries (`IMAGE#…` partitions) an apply makes, by receipt.
type QueryCounts = std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, usize>>>;

fn count_label_queries(counts: &QueryCounts) -> Watch {
    let counts = counts.clone();
    Watch::requests(move |target, body| {
        if target.ends_with(".Query") {
            let pk = body["ExpressionAttributeValues"][":pk"]["S"]
                .as_str()
                .unwrap_or_default();
            let prefix = body["ExpressionAttributeValues"][":prefix"]["S"]
                .as_str()
                .unwrap_or_default();
            if pk.starts_with("IMAGE#") {
                let receipt = format!("{pk}#{}", prefix.split("#LINE#").next().unwrap_or(""));
                *counts.lock().unwrap().entry(receipt).or_default() += 1;
            }
        }
    })
}

/// The price of the verification: one more Query per receipt whose word vectors were written
/// (strongly consistent, the fleet's usual read), none for a receipt with nothing written,
/// and no repair when no other apply touched the words. Measured on a generated batch.
#[tokio::test]
async fn verification_reads_each_receipt_with_written_vectors_once_more() {
    let f = Fleet::new().await;
    f.pinecone.set_consistency_delay(DELAY);
    let shape = fleet_tests::scenario::Shape {
        receipts: 30,
        targets_per_receipt: 8,
        ..fleet_tests::scenario::Shape::default()
    };
    let batch = support::completed_batch(2024, &shape);
    f.seed(&batch).await;
    let counter = QueryCounts::default();
    let services = f.services_with(count_label_queries(&counter).client(&f.env.clients.dynamodb));
    let report = handle(&services, &batch.summary.batch_id).await.unwrap();
    assert_eq!(report.vectors_repaired, 0);
    assert!(report.vectors_updated > 0);

    let written: std::collections::BTreeSet<String> = f
        .pinecone
        .updates()
        .iter()
        .map(|u| {
            let parts: Vec<&str> = u.id.split('#').take(4).collect();
            format!("IMAGE#{}#RECEIPT#{}", parts[1], parts[3])
        })
        .collect();
    let queries = counter.lock().unwrap().clone();
    for (receipt, n) in &queries {
        let want = if written.contains(receipt) { 2 } else { 1 };
        assert_eq!(*n, want, "{receipt}: {n} label Queries");
    }
    assert!(written.iter().all(|r| queries.contains_key(r)));
    println!(
        "label Queries: {} over {} receipts ({} receipts with written vectors); \
         Pinecone: {} fetches, {} updates",
        queries.values().sum::<usize>(),
        queries.len(),
        written.len(),
        f.pinecone.count("GET", "/vectors/fetch"),
        f.pinecone.update_count()
    );
}
