//! Builders of batch states and an in-memory table that applies plans the way the worker does
//! (conditional status changes, create-if-absent, set unions), optionally stopping part-way.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::status::PROPOSED_BY_COMPLETION_BATCH;
use crate::model::time::from_unix_seconds;
use crate::model::{
    BatchStatus, CompletionBatchResult, CompletionBatchVerdict, ImageId, LabelKey, ReceiptKey,
    ReceiptWordLabel, ValidationStatus,
};
use crate::openai::{BatchObject, OpenAiStatus};
use crate::parse::{ParsedLine, ParsedResult, ResultSkip};
use crate::plan::{Plan, PlanBuilder, PlanCounters, PlanInput, StatusChange};

pub const IMG_A: &str = "11111111-1111-4111-8111-111111111111";
pub const IMG_B: &str = "22222222-2222-4222-8222-222222222222";
pub const BATCH_ID: &str = "5d8e2c1a-9b3f-4e7d-8a6c-0f1e2d3c4b5a";
pub const CREATED_AT: i64 = 1_750_000_000;
pub const COMPLETED_AT: i64 = 1_750_438_992;
pub const EXPIRED_AT: i64 = 1_750_500_000;
pub const CANCELLED_AT: i64 = 1_750_600_000;
pub const FAILED_AT: i64 = 1_750_000_100;
pub const OUTPUT_FILE: &str = "file-output-1";

pub use ValidationStatus::{
    Invalid as INVALID, NeedsReview as NEEDS_REVIEW, None as NONE, Pending as PENDING,
    Valid as VALID,
};

/// A label on receipt 1 of an image.
pub fn k(img: &str, line: u32, word: u32, label: &str) -> LabelKey {
    kr(img, 1, line, word, label)
}

pub fn kr(img: &str, receipt: u32, line: u32, word: u32, label: &str) -> LabelKey {
    LabelKey::new(ImageId::parse(img).unwrap(), receipt, line, word, label)
}

pub fn receipt(img: &str, receipt_id: u32) -> ReceiptKey {
    ReceiptKey {
        image_id: ImageId::parse(img).unwrap(),
        receipt_id,
    }
}

/// A label as another program left it (older timestamp, no fleet attributes).
pub fn label(key: &LabelKey, status: ValidationStatus) -> ReceiptWordLabel {
    ReceiptWordLabel {
        key: key.clone(),
        reasoning: Some("seeded".into()),
        timestamp_added: from_unix_seconds(1_700_000_000).unwrap(),
        validation_status: status,
        label_proposed_by: None,
        label_consolidated_from: None,
    }
}

pub fn batch(status: &str) -> BatchObject {
    BatchObject {
        id: "batch_abc".into(),
        status: OpenAiStatus::parse(status),
        input_file_id: Some("file-input-1".into()),
        output_file_id: Some(OUTPUT_FILE.into()),
        error_file_id: None,
        created_at: Some(CREATED_AT),
        in_progress_at: Some(CREATED_AT + 10),
        finalizing_at: None,
        completed_at: (status == "completed").then_some(COMPLETED_AT),
        failed_at: (status == "failed").then_some(FAILED_AT),
        expired_at: (status == "expired").then_some(EXPIRED_AT),
        cancelling_at: None,
        cancelled_at: (status == "cancelled").then_some(CANCELLED_AT),
        expires_at: Some(CREATED_AT + 86_400),
        request_counts: None,
        errors: None,
    }
}

pub fn res(
    key: &LabelKey,
    is_valid: bool,
    correct: Option<&str>,
) -> Result<ParsedResult, ResultSkip> {
    Ok(ParsedResult {
        label: key.clone(),
        status_at_submit: NONE,
        is_valid,
        correct_label: correct.map(str::to_owned),
    })
}

/// An answered line for the receipt of its first result (or receipt 1 of image A).
pub fn answered(results: Vec<Result<ParsedResult, ResultSkip>>) -> ParsedLine {
    let receipt = results
        .iter()
        .find_map(|r| r.as_ref().ok())
        .map_or_else(|| receipt(IMG_A, 1), |r| r.label.word.receipt.clone());
    ParsedLine::Answered { receipt, results }
}

/// A batch's state and output, built up in tests.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub batch: BatchObject,
    pub targets: BTreeSet<LabelKey>,
    pub labels: BTreeMap<LabelKey, ReceiptWordLabel>,
    pub journal: Vec<CompletionBatchVerdict>,
    pub lines: Vec<(u64, ParsedLine)>,
    pub error_lines: Vec<(u64, ParsedLine)>,
}

impl Scenario {
    pub fn new(status: &str) -> Self {
        Scenario {
            batch: batch(status),
            targets: BTreeSet::new(),
            labels: BTreeMap::new(),
            journal: Vec::new(),
            lines: Vec::new(),
            error_lines: Vec::new(),
        }
    }

    /// A label in the table that is not a target.
    pub fn label(mut self, key: &LabelKey, status: ValidationStatus) -> Self {
        self.labels.insert(key.clone(), label(key, status));
        self
    }

    /// A target in the table.
    pub fn target(mut self, key: &LabelKey, status: ValidationStatus) -> Self {
        self.targets.insert(key.clone());
        self.label(key, status)
    }

    /// A target the table no longer holds.
    pub fn gone_target(mut self, key: &LabelKey) -> Self {
        self.targets.insert(key.clone());
        self
    }

    pub fn line(mut self, line_no: u64, line: ParsedLine) -> Self {
        self.lines.push((line_no, line));
        self
    }

    pub fn answer(self, line_no: u64, results: Vec<Result<ParsedResult, ResultSkip>>) -> Self {
        self.line(line_no, answered(results))
    }

    pub fn journal_row(mut self, row: CompletionBatchVerdict) -> Self {
        self.journal.push(row);
        self
    }

    pub fn builder(&self) -> PlanBuilder {
        PlanBuilder::new(PlanInput {
            batch_id: BATCH_ID.into(),
            batch: &self.batch,
            targets: self.targets.clone(),
            labels: self.labels.values().cloned().collect(),
            journal: self.journal.clone(),
        })
    }

    pub fn plan(&self) -> Plan {
        let mut b = self.builder();
        for (n, line) in &self.lines {
            b.add_line(*n, line.clone());
        }
        for (n, line) in &self.error_lines {
            b.add_error_line(*n, line.clone());
        }
        b.finish()
    }

    /// The scenario after `world`'s writes: same batch, targets and output.
    pub fn with_world(&self, world: &World) -> Scenario {
        Scenario {
            labels: world.labels.clone(),
            journal: world.journal.values().cloned().collect(),
            ..self.clone()
        }
    }

    pub fn world(&self, vectors: impl IntoIterator<Item = String>) -> World {
        World {
            labels: self.labels.clone(),
            journal: self
                .journal
                .iter()
                .map(|j| (j.label.clone(), j.clone()))
                .collect(),
            vectors: vectors
                .into_iter()
                .map(|v| (v, VectorMeta::default()))
                .collect(),
            ..World::default()
        }
    }
}

impl Scenario {
    /// Every receipt the scenario names (targets, labels, journal, output lines), in order.
    pub fn receipts(&self) -> Vec<ReceiptKey> {
        let mut all: BTreeSet<ReceiptKey> = BTreeSet::new();
        all.extend(self.targets.iter().map(|k| k.word.receipt.clone()));
        all.extend(self.labels.keys().map(|k| k.word.receipt.clone()));
        all.extend(self.journal.iter().map(|j| j.label.word.receipt.clone()));
        all.extend(self.lines.iter().filter_map(|(_, l)| l.receipt().cloned()));
        all.into_iter().collect()
    }

    /// What the apply hands the plan for a chunk of receipts: their targets, labels, journal
    /// rows and output lines (lines that name no receipt are counted outside any chunk).
    pub fn chunk(&self, receipts: &BTreeSet<ReceiptKey>) -> Scenario {
        let mine = |k: &LabelKey| receipts.contains(&k.word.receipt);
        Scenario {
            batch: self.batch.clone(),
            targets: self.targets.iter().filter(|k| mine(k)).cloned().collect(),
            labels: self
                .labels
                .iter()
                .filter(|(k, _)| mine(k))
                .map(|(k, l)| (k.clone(), l.clone()))
                .collect(),
            journal: self
                .journal
                .iter()
                .filter(|j| mine(&j.label))
                .cloned()
                .collect(),
            lines: self
                .lines
                .iter()
                .filter(|(_, l)| l.receipt().is_some_and(|r| receipts.contains(r)))
                .cloned()
                .collect(),
            error_lines: Vec::new(),
        }
    }
}

/// Plans and applies a scenario the way the apply does: a chunk of `per_chunk` receipts at a
/// time in receipt order, each planned on the state the earlier chunks left, the summary last
/// (the plan of a chunk of no receipts writes only that); stops after `budget` writes. Returns
/// what was applied and the counters added up across chunks, collisions found by the
/// conditional result writes included.
pub fn apply_chunked(
    s: &Scenario,
    world: &mut World,
    per_chunk: usize,
    budget: usize,
) -> (Applied, PlanCounters) {
    let mut done = Applied::default();
    let mut counters = PlanCounters::default();
    for (_, line) in s.lines.iter().filter(|(_, l)| l.receipt().is_none()) {
        counters.output_lines.add(line);
    }
    for (_, line) in &s.error_lines {
        counters.error_lines.add(line);
    }
    let receipts = s.receipts();
    let chunks = receipts
        .chunks(per_chunk.max(1))
        .map(|c| c.iter().cloned().collect())
        .chain([BTreeSet::new()]);
    for chunk in chunks {
        let mut plan = s.with_world(world).chunk(&chunk).plan();
        if !chunk.is_empty() {
            plan.summary = None;
        }
        let applied = world.apply_until(plan.clone(), budget - done.writes);
        let plan = plan.without_conflicts(&applied.conflicts);
        counters.merge(&plan.counters);
        counters.result_rows.written -= applied.kept_results;
        counters.result_rows.collisions += applied.kept_results;
        done.writes += applied.writes;
        done.conflicts.extend(applied.conflicts);
        done.missing_vectors += applied.missing_vectors;
        done.kept_results += applied.kept_results;
        if applied.interrupted {
            done.interrupted = true;
            break;
        }
    }
    (done, counters)
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VectorMeta {
    pub valid_labels: BTreeSet<String>,
    pub invalid_labels: BTreeSet<String>,
    pub proposed_label: Option<String>,
}

/// The table, the vector index and the summary, as far as a plan writes them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct World {
    pub labels: BTreeMap<LabelKey, ReceiptWordLabel>,
    pub journal: BTreeMap<LabelKey, CompletionBatchVerdict>,
    pub vectors: BTreeMap<String, VectorMeta>,
    pub results: BTreeMap<String, CompletionBatchResult>,
    pub summary: Option<(BatchStatus, Option<String>)>,
}

/// What applying a plan did that a test may want to check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub writes: usize,
    pub conflicts: BTreeSet<LabelKey>,
    pub missing_vectors: usize,
    /// Result rows not written: a smaller image's row holds the key (another chunk's).
    pub kept_results: u64,
    pub interrupted: bool,
}

enum Transition {
    Applied,
    AlreadyInTarget,
    Conflict,
}

impl World {
    fn transition(&mut self, c: &StatusChange) -> Transition {
        let Some(l) = self.labels.get_mut(&c.label) else {
            return Transition::Conflict;
        };
        if l.validation_status == c.from {
            l.validation_status = c.to;
            l.label_proposed_by = Some(PROPOSED_BY_COMPLETION_BATCH.into());
            Transition::Applied
        } else if l.validation_status == c.to {
            Transition::AlreadyInTarget
        } else {
            Transition::Conflict
        }
    }

    /// Applies a whole plan.
    pub fn apply(&mut self, plan: Plan) -> Applied {
        self.apply_until(plan, usize::MAX)
    }

    /// Applies at most `budget` writes in the documented order, then stops (a crash).
    pub fn apply_until(&mut self, plan: Plan, budget: usize) -> Applied {
        let mut done = Applied::default();
        let step = |done: &mut Applied| {
            if done.writes >= budget {
                done.interrupted = true;
                false
            } else {
                done.writes += 1;
                true
            }
        };
        for v in &plan.verdicts {
            if !step(&mut done) {
                return done;
            }
            // As the apply: a conflict row (decided from a changed label) only where none is.
            if v.previous_status == PENDING {
                self.journal.insert(v.label.clone(), v.clone());
            } else {
                self.journal
                    .entry(v.label.clone())
                    .or_insert_with(|| v.clone());
            }
        }
        for c in &plan.status_changes {
            if !step(&mut done) {
                return done;
            }
            if let Transition::Conflict = self.transition(c) {
                done.conflicts.insert(c.label.clone());
            }
        }
        let plan = plan.without_conflicts(&done.conflicts);
        for c in &plan.corrections {
            if !step(&mut done) {
                return done;
            }
            self.labels
                .entry(c.key.clone())
                .or_insert_with(|| c.clone());
        }
        for c in &plan.resets {
            if !step(&mut done) {
                return done;
            }
            // The reset and its journal row right after (one step: the apply writes the row of
            // every reset it made, whatever stops it next).
            if !matches!(self.transition(c), Transition::Conflict) {
                self.journal
                    .insert(c.label.clone(), plan.reset_row(&c.label));
            }
        }
        for label in &plan.already_reset {
            self.journal.insert(label.clone(), plan.reset_row(label));
        }
        for m in &plan.vector_merges {
            if !step(&mut done) {
                return done;
            }
            match self.vectors.get_mut(&m.vector_id()) {
                Some(v) => {
                    v.valid_labels.extend(m.valid_labels.to_strings());
                    v.invalid_labels.extend(m.invalid_labels.to_strings());
                    if let Some(p) = &m.proposed_label {
                        v.proposed_label = Some(String::from(p));
                    }
                }
                None => done.missing_vectors += 1,
            }
        }
        for r in &plan.results {
            if !step(&mut done) {
                return done;
            }
            // As the store's conditional put: a row of a smaller image id keeps the key.
            match self.results.get(&r.sk()) {
                Some(stored) if stored.label.image_id() < r.label.image_id() => {
                    done.kept_results += 1;
                }
                _ => {
                    self.results.insert(r.sk(), r.clone());
                }
            }
        }
        if let Some(s) = &plan.summary {
            if !step(&mut done) {
                return done;
            }
            self.summary
                .get_or_insert_with(|| (s.status, s.result_file_id.clone()));
        }
        done
    }
}
