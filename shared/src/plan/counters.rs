//! What a plan found and decided, in numbers: printed by `worker apply-batch`, exported as
//! metrics, and the first thing to read when a batch looks wrong.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::Verdict;
use crate::parse::ParsedLine;

fn add_map(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

/// Lines of one file (output or error).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LineCounters {
    pub total: u64,
    pub blank: u64,
    pub answered: u64,
    /// Failed requests (`error` set, status ≠ 200, no response).
    pub failed: u64,
    /// By [`crate::parse::MalformedKind::as_str`].
    pub malformed: BTreeMap<String, u64>,
}

impl LineCounters {
    /// Counts one line.
    pub fn add(&mut self, line: &ParsedLine) {
        self.total += 1;
        match line {
            ParsedLine::Blank => self.blank += 1,
            ParsedLine::Malformed(m) => {
                *self.malformed.entry(m.kind.as_str().into()).or_default() += 1;
            }
            ParsedLine::Failed { .. } => self.failed += 1,
            ParsedLine::Answered { .. } => self.answered += 1,
        }
    }

    pub fn merge(&mut self, o: &LineCounters) {
        self.total += o.total;
        self.blank += o.blank;
        self.answered += o.answered;
        self.failed += o.failed;
        add_map(&mut self.malformed, &o.malformed);
    }
}

/// Every result of an answered output line ends in exactly one of these (so they sum to
/// `total`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResultCounters {
    pub total: u64,
    /// Decided a verdict now (including verdicts that only got a journal row: conflicts).
    pub applied: u64,
    /// The label has a journal row of this batch: its recorded verdict is used instead.
    pub recorded: u64,
    /// The label is VALID and this batch did not set it: no downgrade, no rows.
    pub already_valid: u64,
    /// An earlier result (by file position) for a label that has a later one.
    pub duplicate_overridden: u64,
    pub not_an_object: u64,
    pub missing_id: u64,
    pub bad_id: u64,
    pub other_receipt: u64,
    pub is_valid_not_bool: u64,
    /// `correct_label` too long or not a label name: the whole result is skipped.
    pub bad_correct_label: u64,
    pub not_target: u64,
    pub not_in_table: u64,
    /// Results of a batch whose outcome applies no output (never expected: a failed batch has
    /// no output file).
    pub ignored: u64,
}

impl ResultCounters {
    pub fn merge(&mut self, o: &ResultCounters) {
        self.total += o.total;
        self.applied += o.applied;
        self.recorded += o.recorded;
        self.already_valid += o.already_valid;
        self.duplicate_overridden += o.duplicate_overridden;
        self.not_an_object += o.not_an_object;
        self.missing_id += o.missing_id;
        self.bad_id += o.bad_id;
        self.other_receipt += o.other_receipt;
        self.is_valid_not_bool += o.is_valid_not_bool;
        self.bad_correct_label += o.bad_correct_label;
        self.not_target += o.not_target;
        self.not_in_table += o.not_in_table;
        self.ignored += o.ignored;
    }
}

/// Journal rows to write, by verdict.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct VerdictCounters {
    pub valid: u64,
    pub invalid: u64,
    pub needs_review: u64,
}

impl VerdictCounters {
    pub(crate) fn add(&mut self, v: Verdict) {
        match v {
            Verdict::Valid => self.valid += 1,
            Verdict::Invalid => self.invalid += 1,
            Verdict::NeedsReview => self.needs_review += 1,
            // Reset rows are not planned as rows: each is written after its reset succeeded,
            // and the apply counts them (`ApplyReport::reset_rows`).
            Verdict::Reset => {}
        }
    }

    pub fn total(&self) -> u64 {
        self.valid + self.invalid + self.needs_review
    }

    pub fn merge(&mut self, o: &VerdictCounters) {
        self.valid += o.valid;
        self.invalid += o.invalid;
        self.needs_review += o.needs_review;
    }
}

/// What happens to the targets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TargetCounters {
    /// Targets of the input (or fallback) plus labels only the journal names.
    pub total: u64,
    /// Verdicts whose status change is planned (fresh or recorded).
    pub status_changes: u64,
    /// Verdicts re-applied from this batch's journal.
    pub recorded: u64,
    /// Verdicts not applied because the label is no longer in the state they were decided from
    /// (found at planning); their journal rows are still written.
    pub conflicts: u64,
    /// Conflicts the conditional writes found later ([`super::Plan::without_conflicts`]).
    pub apply_conflicts: u64,
    /// PENDING targets without a verdict, going back to NONE.
    pub resets: u64,
    /// Targets without a verdict that are NONE already, without this batch's reset row: the
    /// row is written, the label left as it is ([`super::Plan::already_reset`]).
    pub already_reset: u64,
    /// Targets without a verdict that are neither PENDING nor NONE: left alone.
    pub not_pending: u64,
    /// Targets this batch already reset (its journal holds the reset) that are NONE: done.
    pub reset_recorded: u64,
    /// Targets this batch reset that are PENDING again: a newer batch asked about them since
    /// (the submitter sends reset labels again). Left alone: that batch's verdict must land.
    pub reclaimed: u64,
    /// Targets (or journal labels) not in the table.
    pub missing: u64,
}

impl TargetCounters {
    pub fn merge(&mut self, o: &TargetCounters) {
        self.total += o.total;
        self.status_changes += o.status_changes;
        self.recorded += o.recorded;
        self.conflicts += o.conflicts;
        self.apply_conflicts += o.apply_conflicts;
        self.resets += o.resets;
        self.already_reset += o.already_reset;
        self.not_pending += o.not_pending;
        self.reset_recorded += o.reset_recorded;
        self.reclaimed += o.reclaimed;
        self.missing += o.missing;
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CorrectionCounters {
    /// New labels to create (one per word and name).
    pub created: u64,
    /// A label of that name is already on the word (possibly one an earlier run created).
    pub existing: u64,
    /// Invalid verdicts whose suggestion is not a core label: recorded, nothing created.
    pub non_core: u64,
    /// Invalid verdicts suggesting the judged label itself.
    pub same_label: u64,
}

impl CorrectionCounters {
    pub fn merge(&mut self, o: &CorrectionCounters) {
        self.created += o.created;
        self.existing += o.existing;
        self.non_core += o.non_core;
        self.same_label += o.same_label;
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResultRowCounters {
    pub written: u64,
    /// Verdicts whose CompletionBatchResult key another verdict (smaller image id) took.
    pub collisions: u64,
}

impl ResultRowCounters {
    pub fn merge(&mut self, o: &ResultRowCounters) {
        self.written += o.written;
        self.collisions += o.collisions;
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PlanCounters {
    pub output_lines: LineCounters,
    pub error_lines: LineCounters,
    pub results: ResultCounters,
    pub verdicts: VerdictCounters,
    pub targets: TargetCounters,
    pub corrections: CorrectionCounters,
    /// Words whose vector metadata gets a merge.
    pub vector_merges: u64,
    pub result_rows: ResultRowCounters,
    /// Journal rows of another batch handed in, or of a batch whose outcome applies no output.
    pub journal_ignored: u64,
    /// The batch field `validated_at` came from (`completed_at`, … or `none`).
    pub timestamp_field: String,
}

impl PlanCounters {
    /// Adds the counters of another part of the same batch (a chunk of its receipts, or the
    /// lines counted outside any chunk), so the parts add up to the whole.
    pub fn merge(&mut self, o: &PlanCounters) {
        self.output_lines.merge(&o.output_lines);
        self.error_lines.merge(&o.error_lines);
        self.results.merge(&o.results);
        self.verdicts.merge(&o.verdicts);
        self.targets.merge(&o.targets);
        self.corrections.merge(&o.corrections);
        self.vector_merges += o.vector_merges;
        self.result_rows.merge(&o.result_rows);
        self.journal_ignored += o.journal_ignored;
        if self.timestamp_field.is_empty() {
            self.timestamp_field.clone_from(&o.timestamp_field);
        }
    }
}
