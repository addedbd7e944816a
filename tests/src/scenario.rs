//! Realistic, reproducible batches for the end-to-end tests, the crash drill, the benchmarks
//! and the local demo: the table items, the OpenAI batch script and files, and the Pinecone
//! vectors of each batch, all derived from a seed.
//!
//! What makes them realistic: receipt ids restart at 1 on every image (so CompletionBatchResult
//! keys collide across images, the known defect), some words carry another label that is
//! already INVALID (so invalid verdicts become NEEDS_REVIEW), some targets were reviewed to VALID
//! after submission, some corrections name labels that already exist or are not core labels,
//! some requests failed, one line in a while is malformed, and some words have no vector.

use chrono::DateTime;
use fleet_shared::model::status::CORE_LABELS;
use fleet_shared::model::{
    BatchStatus, BatchSummary, BatchType, ImageId, LabelKey, ReceiptKey, ReceiptWordLabel,
    ValidationStatus,
};
use serde_json::{Map, Value, json};

use crate::openai::BatchSpec;
use crate::openai::fixtures::{self, AnswerShape};

/// splitmix64: tiny, seedable and stable across library versions, so a seed means the same
/// data forever.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn uuid(&mut self) -> String {
        let (a, b) = (self.next_u64(), self.next_u64());
        let bytes: Vec<u8> = a.to_be_bytes().into_iter().chain(b.to_be_bytes()).collect();
        uuid::Builder::from_random_bytes(bytes.try_into().expect("16 bytes"))
            .into_uuid()
            .hyphenated()
            .to_string()
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[usize::try_from(self.below(items.len() as u64)).expect("below len fits")]
    }
}

/// How a batch ends at OpenAI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Failed,
    Expired,
    Cancelled,
}

impl Outcome {
    pub fn summary_status(self) -> BatchStatus {
        match self {
            Outcome::Completed => BatchStatus::Completed,
            Outcome::Failed => BatchStatus::Failed,
            Outcome::Expired => BatchStatus::Expired,
            Outcome::Cancelled => BatchStatus::Cancelled,
        }
    }
}

/// The size and flavour of one generated batch.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Receipts (requests) in the batch; images are shared by about two receipts each.
    pub receipts: u32,
    /// Target labels per receipt.
    pub targets_per_receipt: u32,
    pub outcome: Outcome,
    /// Status GETs spent in `in_progress` before the batch ends.
    pub in_progress_polls: u32,
    /// Percent of requests that failed (error file + a failed line in the output).
    pub failed_percent: u64,
    /// Percent of output lines that are malformed.
    pub malformed_percent: u64,
    /// Percent of words without a vector in the index.
    pub missing_vector_percent: u64,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            receipts: 6,
            targets_per_receipt: 5,
            outcome: Outcome::Completed,
            in_progress_polls: 1,
            failed_percent: 5,
            malformed_percent: 3,
            missing_vector_percent: 5,
        }
    }
}

/// Everything one batch needs in the table, at OpenAI and in Pinecone.
#[derive(Debug, Clone)]
pub struct ScenarioBatch {
    pub summary: BatchSummary,
    /// Every label item of the batch's receipts (targets and bystanders).
    pub labels: Vec<ReceiptWordLabel>,
    /// The target labels (PENDING at submission).
    pub targets: Vec<LabelKey>,
    pub spec: BatchSpec,
    /// File id → content.
    pub files: Vec<(String, String)>,
    /// Vector id → metadata, for the `words` namespace.
    pub vectors: Vec<(String, Map<String, Value>)>,
    pub outcome: Outcome,
}

/// When the generated batches were submitted (Unix seconds) and finished.
pub const CREATED_AT: i64 = 1_750_000_000;
pub const FINISHED_AT: i64 = CREATED_AT + 3_600;

pub fn batch(rng: &mut Rng, index: usize, shape: &Shape) -> ScenarioBatch {
    let batch_id = rng.uuid();
    let openai_batch_id = format!("batch_{index:04}_{}", &batch_id[..8]);
    let submitted_at = DateTime::from_timestamp(CREATED_AT, 0).expect("valid");
    let mut labels = Vec::new();
    let mut targets = Vec::new();
    let mut input_lines = Vec::new();
    let mut output_lines = Vec::new();
    let mut error_lines = Vec::new();
    let mut vectors = Vec::new();
    let mut receipt_refs = Vec::new();
    let mut image = rng.uuid();
    let mut receipt_id = 0u32;
    for r in 0..shape.receipts {
        // Receipt ids restart at 1 on every image; about two receipts per image.
        if r % 2 == 0 {
            image = rng.uuid();
            receipt_id = 0;
        }
        receipt_id += 1;
        let receipt = ReceiptKey {
            image_id: ImageId::parse(&image).expect("uuid"),
            receipt_id,
        };
        receipt_refs.push(receipt.clone());
        let cid = receipt.custom_id();
        let mut request_targets = Vec::new();
        let mut results = Vec::new();
        for t in 0..shape.targets_per_receipt {
            let line_id = 1 + t / 2;
            let word_id = 1 + t % 2;
            let name = *rng.pick(CORE_LABELS);
            let key = LabelKey::new(receipt.image_id.clone(), receipt_id, line_id, word_id, name);
            let reviewed_since = rng.chance(4);
            labels.push(label(
                &key,
                if reviewed_since {
                    ValidationStatus::Valid
                } else {
                    ValidationStatus::Pending
                },
            ));
            targets.push(key.clone());
            // A bystander label on the same word, already INVALID before this batch.
            if rng.chance(15) {
                let other = rng.pick(CORE_LABELS);
                if *other != name {
                    labels.push(label(&key.with_label(*other), ValidationStatus::Invalid));
                }
            }
            let rid = fixtures::result_id(&image, receipt_id, line_id, word_id, name, "NONE");
            request_targets.push(fixtures::target(&rid, "word", line_id, name));
            if rng.chance(6) {
                continue; // the model skipped this target
            }
            let valid = rng.chance(65);
            let correction = if valid {
                None
            } else if rng.chance(10) {
                Some("NOT_A_CORE_LABEL".to_owned())
            } else if rng.chance(70) {
                Some((*rng.pick(CORE_LABELS)).to_owned())
            } else {
                None
            };
            results.push(fixtures::result(&rid, valid, correction.as_deref()));
            let vid = key.word.vector_id();
            if !vectors.iter().any(|(v, _)| *v == vid) && !rng.chance(shape.missing_vector_percent)
            {
                let mut meta = Map::new();
                meta.insert("text".into(), json!("word"));
                if rng.chance(30) {
                    meta.insert("valid_labels".into(), json!(name));
                }
                vectors.push((vid, meta));
            }
        }
        input_lines.push(fixtures::input_line(&cid, &request_targets, "RECEIPT TEXT"));
        if rng.chance(shape.failed_percent) {
            output_lines.push(fixtures::failed_status_line(&cid, 500));
            error_lines.push(fixtures::failed_error_line(&cid, "server_error", "failed"));
        } else if rng.chance(shape.malformed_percent) {
            output_lines.push(format!("{{\"custom_id\": \"{cid}\", \"response\": "));
        } else {
            let shape = match rng.below(3) {
                0 => AnswerShape::FunctionCall,
                1 => AnswerShape::Content,
                _ => AnswerShape::ToolCalls,
            };
            output_lines.push(fixtures::output_line(&cid, &results, shape));
        }
    }
    // Partial output for expired and cancelled batches: the first half finished.
    let outcome = shape.outcome;
    match outcome {
        Outcome::Expired | Outcome::Cancelled => output_lines.truncate(output_lines.len() / 2),
        Outcome::Failed => output_lines.clear(),
        Outcome::Completed => {}
    }
    output_lines.push(String::new()); // a blank line, as real files sometimes have

    let input_id = format!("file-in-{index:04}");
    let output_id = format!("file-out-{index:04}");
    let error_id = format!("file-err-{index:04}");
    let mut files = vec![(input_id.clone(), fixtures::ndjson(&input_lines))];
    let mut spec = BatchSpec::new(&openai_batch_id, &input_id);
    spec.created_at = CREATED_AT;
    spec.expires_at = Some(CREATED_AT + 86_400);
    let total = u64::from(shape.receipts);
    let failed = error_lines.len() as u64;
    spec = spec.with_request_counts(total, total - failed, failed);
    let final_status = match outcome {
        Outcome::Completed => {
            spec.completed_at = Some(FINISHED_AT);
            "completed"
        }
        Outcome::Failed => {
            spec.failed_at = Some(CREATED_AT + 60);
            "failed"
        }
        Outcome::Expired => {
            spec.expired_at = Some(FINISHED_AT);
            "expired"
        }
        Outcome::Cancelled => {
            spec.cancelled_at = Some(FINISHED_AT);
            "cancelled"
        }
    };
    let steps: Vec<(&str, u32)> = if outcome == Outcome::Failed {
        vec![("validating", 1), ("failed", 1)]
    } else {
        vec![
            ("validating", 1),
            ("in_progress", shape.in_progress_polls),
            ("finalizing", 1),
            (final_status, 1),
        ]
    };
    spec = spec.with_steps(steps);
    if outcome != Outcome::Failed {
        files.push((output_id.clone(), fixtures::ndjson(&output_lines)));
        spec = spec.with_output_file(&output_id);
    } else {
        spec.errors = Vec::new();
    }
    if !error_lines.is_empty() {
        files.push((error_id.clone(), fixtures::ndjson(&error_lines)));
        spec = spec.with_error_file(&error_id);
    }
    ScenarioBatch {
        summary: BatchSummary {
            batch_id,
            batch_type: BatchType::Completion,
            openai_batch_id,
            submitted_at,
            status: BatchStatus::Pending,
            result_file_id: "N/A".into(),
            receipt_refs,
        },
        labels: dedupe(labels),
        targets,
        spec,
        files,
        vectors,
        outcome,
    }
}

impl ScenarioBatch {
    /// Moves every time of the batch by `seconds` (the demo runs its batches "now", so that
    /// none looks overdue and gets cancelled).
    pub fn shift_times(&mut self, seconds: i64) {
        let spec = &mut self.spec;
        spec.created_at += seconds;
        for t in [
            &mut spec.expires_at,
            &mut spec.in_progress_at,
            &mut spec.finalizing_at,
            &mut spec.completed_at,
            &mut spec.failed_at,
            &mut spec.expired_at,
            &mut spec.cancelling_at,
            &mut spec.cancelled_at,
        ] {
            if let Some(t) = t.as_mut() {
                *t += seconds;
            }
        }
        self.summary.submitted_at += chrono::Duration::seconds(seconds);
    }
}

/// A target may be generated twice on one word (same label): keep the first item per key.
fn dedupe(labels: Vec<ReceiptWordLabel>) -> Vec<ReceiptWordLabel> {
    let mut seen = std::collections::HashSet::new();
    labels
        .into_iter()
        .filter(|l| seen.insert(l.key.clone()))
        .collect()
}

fn label(key: &LabelKey, status: ValidationStatus) -> ReceiptWordLabel {
    ReceiptWordLabel {
        key: key.clone(),
        reasoning: Some("proposed by the labelling pipeline".into()),
        timestamp_added: DateTime::from_timestamp(CREATED_AT - 600, 0).expect("valid"),
        validation_status: status,
        label_proposed_by: Some("LAYOUTLM".into()),
        label_consolidated_from: None,
    }
}

/// About `count` batches with mixed outcomes: mostly completed (some needing several checks),
/// a few failed, expired or cancelled.
pub fn mixed(seed: u64, count: usize, receipts_per_batch: u32) -> Vec<ScenarioBatch> {
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|i| {
            let outcome = match i % 10 {
                7 => Outcome::Failed,
                8 if i % 20 == 8 => Outcome::Expired,
                8 => Outcome::Cancelled,
                _ => Outcome::Completed,
            };
            let shape = Shape {
                receipts: receipts_per_batch,
                outcome,
                in_progress_polls: 1 + u32::try_from(i % 4).expect("small"),
                ..Shape::default()
            };
            batch(&mut rng, i, &shape)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_data() {
        let a = mixed(7, 5, 4);
        let b = mixed(7, 5, 4);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.summary, y.summary);
            assert_eq!(x.labels, y.labels);
            assert_eq!(x.files, y.files);
        }
    }

    #[test]
    fn receipt_ids_restart_per_image() {
        let b = batch(
            &mut Rng::new(1),
            0,
            &Shape {
                receipts: 6,
                ..Shape::default()
            },
        );
        let ids: Vec<u32> = b
            .summary
            .receipt_refs
            .iter()
            .map(|r| r.receipt_id)
            .collect();
        assert_eq!(ids, [1, 2, 1, 2, 1, 2]);
    }
}
