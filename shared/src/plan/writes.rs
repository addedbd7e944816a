//! The plan: every write a finished batch makes, computed up front, in a deterministic order.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use super::counters::PlanCounters;
use super::input::Outcome;
use crate::model::status::{PROPOSED_BY_COMPLETION_BATCH, is_core_label};
use crate::model::{
    BatchStatus, CompletionBatchResult, CompletionBatchVerdict, LabelKey, ReceiptWordLabel,
    ValidationStatus, Verdict, WordKey,
};

/// A conditional status change: apply it only while the label holds `from`; a label already
/// holding `to` counts as done (an earlier run got there); anything else is a conflict.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatusChange {
    pub label: LabelKey,
    pub from: ValidationStatus,
    pub to: ValidationStatus,
}

/// Labels to merge (set union) into one word vector's metadata. Apply by fetching the vector,
/// merging, and writing only when something changed; a missing vector is counted, not written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VectorMerge {
    pub word: WordKey,
    /// `WordKey::vector_id()`.
    pub vector_id: String,
    pub valid_labels: BTreeSet<String>,
    pub invalid_labels: BTreeSet<String>,
    /// The core-label suggestion of an invalid verdict on this word. When several judged labels
    /// of the word suggest one, the suggestion of the smallest judged label name wins: the same
    /// tie-break as a correction's `label_consolidated_from`, and one that a recorded verdict
    /// (which keeps no position within its line) can reproduce on a re-run.
    pub proposed_label: Option<String>,
}

/// The BatchSummary's last write: conditional on the summary still being PENDING.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryUpdate {
    pub status: BatchStatus,
    /// The output file id, when the batch has one.
    pub result_file_id: Option<String>,
}

/// A verdict whose status change is planned; the source of the vector merges, corrections and
/// CompletionBatchResult rows, so they can be recomputed when an apply-time conflict drops it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Effective {
    pub(crate) verdict: Verdict,
    pub(crate) suggestion: Option<String>,
}

/// Every write of one batch, in the order processing-rules.md prescribes:
///
/// 1. [`verdicts`](Self::verdicts) (the journal) first;
/// 2. [`status_changes`](Self::status_changes), then
///    [`without_conflicts`](Self::without_conflicts) with the labels whose conditional write
///    found someone else's change; then [`corrections`](Self::corrections) (create only if
///    absent), [`resets`](Self::resets), [`vector_merges`](Self::vector_merges) and
///    [`results`](Self::results);
/// 3. [`summary`](Self::summary) last.
///
/// Every collection is sorted, so two plans of the same input compare equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub batch_id: String,
    pub outcome: Outcome,
    /// The batch's outcome timestamp: `validated_at` of every row and `timestamp_added` of every
    /// correction.
    pub validated_at: DateTime<Utc>,
    /// CompletionBatchVerdict rows, sorted by label.
    pub verdicts: Vec<CompletionBatchVerdict>,
    /// Verdicts to apply, `from` PENDING; sorted.
    pub status_changes: Vec<StatusChange>,
    /// PENDING → NONE for targets without a verdict; sorted.
    pub resets: Vec<StatusChange>,
    /// New labels, sorted by key.
    pub corrections: Vec<ReceiptWordLabel>,
    /// One per word with an applied verdict, sorted by word.
    pub vector_merges: Vec<VectorMerge>,
    /// CompletionBatchResult rows, sorted by label; at most one per SK.
    pub results: Vec<CompletionBatchResult>,
    /// None while the batch is not terminal.
    pub summary: Option<SummaryUpdate>,
    pub counters: PlanCounters,
    pub(crate) effective: BTreeMap<LabelKey, Effective>,
    /// Label names currently on each word that has an applied verdict (corrections are created
    /// only where the name is absent).
    pub(crate) word_labels: BTreeMap<WordKey, BTreeSet<String>>,
}

impl Plan {
    pub(crate) fn empty(batch_id: String, outcome: Outcome, validated_at: DateTime<Utc>) -> Self {
        Plan {
            batch_id,
            outcome,
            validated_at,
            verdicts: Vec::new(),
            status_changes: Vec::new(),
            resets: Vec::new(),
            corrections: Vec::new(),
            vector_merges: Vec::new(),
            results: Vec::new(),
            summary: None,
            counters: PlanCounters::default(),
            effective: BTreeMap::new(),
            word_labels: BTreeMap::new(),
        }
    }

    /// The plan once the conditional status changes of `conflicts` failed because someone else
    /// changed those labels: their changes, vector merges, corrections and result rows go (the
    /// others are recomputed without them: a collision's next-smallest image, a correction's
    /// next-smallest proposer); their journal rows stay, they record what the model said.
    pub fn without_conflicts(mut self, conflicts: &BTreeSet<LabelKey>) -> Plan {
        let before = self.status_changes.len();
        self.status_changes
            .retain(|c| !conflicts.contains(&c.label));
        self.effective.retain(|k, _| !conflicts.contains(k));
        self.counters.targets.apply_conflicts += (before - self.status_changes.len()) as u64;
        self.derive();
        self
    }

    /// Recomputes everything that follows from the applied verdicts.
    pub(crate) fn derive(&mut self) {
        let row_status = self.outcome.batch_status();
        let counters = &mut self.counters;
        counters.corrections = Default::default();
        counters.result_rows = Default::default();
        let mut merges: BTreeMap<WordKey, VectorMerge> = BTreeMap::new();
        let mut corrections: BTreeMap<LabelKey, ReceiptWordLabel> = BTreeMap::new();
        let mut existing: BTreeSet<LabelKey> = BTreeSet::new();
        let mut result_sks: BTreeSet<String> = BTreeSet::new();
        let mut results = Vec::new();
        // Sorted by (image, receipt, line, word, label): within a word the smallest judged label
        // comes first, and among colliding result keys the smallest image id.
        for (label, e) in &self.effective {
            let merge = merges
                .entry(label.word.clone())
                .or_insert_with(|| VectorMerge {
                    word: label.word.clone(),
                    vector_id: label.word.vector_id(),
                    valid_labels: BTreeSet::new(),
                    invalid_labels: BTreeSet::new(),
                    proposed_label: None,
                });
            if e.verdict.is_valid() {
                merge.valid_labels.insert(label.label.clone());
            } else {
                merge.invalid_labels.insert(label.label.clone());
                match e.suggestion.as_deref() {
                    None => {}
                    Some(s) if s == label.label => counters.corrections.same_label += 1,
                    Some(s) if !is_core_label(s) => counters.corrections.non_core += 1,
                    Some(s) => {
                        merge.proposed_label.get_or_insert_with(|| s.to_owned());
                        let key = label.with_label(s);
                        let present = self
                            .word_labels
                            .get(&label.word)
                            .is_some_and(|names| names.contains(s));
                        if present {
                            existing.insert(key);
                        } else {
                            corrections
                                .entry(key)
                                .or_insert_with_key(|key| ReceiptWordLabel {
                                    key: key.clone(),
                                    reasoning: None,
                                    timestamp_added: self.validated_at,
                                    validation_status: ValidationStatus::None,
                                    label_proposed_by: Some(PROPOSED_BY_COMPLETION_BATCH.into()),
                                    label_consolidated_from: Some(label.label.clone()),
                                });
                        }
                    }
                }
            }
            if let Some(status) = row_status {
                let row = CompletionBatchResult {
                    batch_id: self.batch_id.clone(),
                    label: label.clone(),
                    status,
                    gpt_suggested_label: e.suggestion.clone(),
                    validated_at: self.validated_at,
                };
                if result_sks.insert(row.sk()) {
                    results.push(row);
                } else {
                    counters.result_rows.collisions += 1;
                }
            }
        }
        counters.corrections.created = corrections.len() as u64;
        counters.corrections.existing = existing.len() as u64;
        counters.vector_merges = merges.len() as u64;
        counters.result_rows.written = results.len() as u64;
        self.corrections = corrections.into_values().collect();
        self.vector_merges = merges.into_values().collect();
        self.results = results;
    }
}
