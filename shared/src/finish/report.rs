//! What an apply did: the plan's counters plus what the writes found.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::{BatchStatus, BatchSummary};
use crate::openai::BatchObject;
use crate::plan::PlanCounters;

/// Outcomes of one kind of conditional write.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WriteCounts {
    pub applied: u64,
    /// Already in the target state (an earlier, interrupted run wrote it).
    pub already: u64,
    /// Someone else changed the item meanwhile: left alone.
    pub conflicts: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplyReport {
    pub batch_id: String,
    pub openai_batch_id: String,
    pub openai_status: String,
    /// The status the BatchSummary now has (None: not terminal, nothing done).
    pub summary_status: Option<BatchStatus>,
    /// The summary was already finished: nothing was written.
    pub already_done: bool,
    /// `input_file` or `fallback` (the input file could not be read).
    pub targets_source: String,
    /// Receipts the batch's files (and, for the fallback, its `receipt_refs`) name.
    pub receipts: u64,
    /// Chunks of receipts planned and written one after the other.
    pub chunks: u64,
    /// Verdicts applied, by the status they set (VALID, INVALID, NEEDS_REVIEW).
    pub labels_by_verdict: BTreeMap<String, u64>,
    pub status_changes: WriteCounts,
    pub resets: WriteCounts,
    pub corrections_created: u64,
    pub corrections_existing: u64,
    pub vectors_updated: u64,
    pub vectors_unchanged: u64,
    pub vectors_missing: u64,
    pub pinecone_rate_limited: u64,
    pub verdict_rows: u64,
    pub result_rows: u64,
    /// Label items that did not decode (skipped, logged).
    pub bad_label_items: u64,
    /// Results and lines skipped, by reason (from the plan's counters).
    pub skipped: BTreeMap<String, u64>,
    /// CompletionBatchResult rows not written because a smaller image id's verdict holds the
    /// key (found by the conditional put; collisions inside a chunk are never written and are
    /// counted by the plan: `plan.result_rows.collisions` counts both).
    pub result_rows_kept: u64,
    /// Total writes made (DynamoDB calls and Pinecone merge chunks).
    pub writes: u64,
    /// Milliseconds spent per phase (download, read, plan, and each kind of write).
    pub phase_ms: BTreeMap<String, u64>,
    pub plan: PlanCounters,
}

impl ApplyReport {
    pub(crate) fn already_done(summary: &BatchSummary, batch: &BatchObject) -> Self {
        ApplyReport {
            batch_id: summary.batch_id.clone(),
            openai_batch_id: summary.openai_batch_id.clone(),
            openai_status: batch.status.to_string(),
            summary_status: Some(summary.status),
            already_done: true,
            ..ApplyReport::default()
        }
    }

    /// Conflicts of every kind: planned (label changed before we looked) and found by writes.
    pub fn conflicts(&self) -> u64 {
        self.plan.targets.conflicts + self.status_changes.conflicts + self.resets.conflicts
    }

    /// A few lines for people (`worker apply-batch`).
    pub fn human(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "batch {} ({}): OpenAI {} -> summary {}",
            self.batch_id,
            self.openai_batch_id,
            self.openai_status,
            self.summary_status
                .map_or("unchanged (not terminal)".to_owned(), |st| st.to_string())
        );
        if self.already_done {
            let _ = writeln!(s, "  already finished earlier: nothing written");
            return s;
        }
        let _ = writeln!(s, "  targets from: {}", self.targets_source);
        let verdicts: Vec<String> = self
            .labels_by_verdict
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(
            s,
            "  labels by verdict: {}",
            if verdicts.is_empty() {
                "none".to_owned()
            } else {
                verdicts.join(", ")
            }
        );
        let _ = writeln!(
            s,
            "  status changes: {} applied, {} already done, {} conflicts; resets to NONE: {} applied, {} already, {} conflicts",
            self.status_changes.applied,
            self.status_changes.already,
            self.conflicts(),
            self.resets.applied,
            self.resets.already,
            self.resets.conflicts
        );
        let _ = writeln!(
            s,
            "  corrections: {} created, {} already present",
            self.corrections_created, self.corrections_existing
        );
        let _ = writeln!(
            s,
            "  vectors: {} updated, {} unchanged, {} missing from the index",
            self.vectors_updated, self.vectors_unchanged, self.vectors_missing
        );
        let _ = writeln!(
            s,
            "  audit rows: {} verdict, {} result ({} key collisions)",
            self.verdict_rows, self.result_rows, self.plan.result_rows.collisions
        );
        let skipped: Vec<String> = self
            .skipped
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        if !skipped.is_empty() {
            let _ = writeln!(s, "  skipped: {}", skipped.join(", "));
        }
        s
    }
}
