//! What an apply did: the plan's counters plus what the writes found.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{BatchStatus, BatchSummary};
use crate::openai::BatchObject;
use crate::plan::PlanCounters;

/// Outcomes of one kind of conditional write.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WriteCounts {
    pub applied: u64,
    /// Already in the target state (an earlier, interrupted run wrote it).
    pub already: u64,
    /// Someone else changed the item meanwhile: left alone.
    pub conflicts: u64,
}

/// What an apply did. A batch applied over several handlings (each resuming after the last
/// receipt the previous one finished) reports the whole batch: the counts of the chunks done
/// earlier are kept beside the cursor and added in.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApplyReport {
    pub batch_id: String,
    pub openai_batch_id: String,
    pub openai_status: String,
    /// The status the BatchSummary now has (None: not terminal, nothing done).
    #[serde(skip_deserializing)]
    pub summary_status: Option<BatchStatus>,
    /// The summary was already finished: nothing was written.
    pub already_done: bool,
    /// `input_file` or `fallback` (OpenAI no longer has the input file: 404 or 410).
    pub targets_source: String,
    /// Input-file requests whose `### Targets` could not be read: each one's receipt (its
    /// `custom_id`) took its PENDING labels as targets instead, that receipt only.
    pub unreadable_requests: u64,
    /// Receipts the batch's files (and, for the fallback, its `receipt_refs`) name.
    pub receipts: u64,
    /// Chunks of receipts planned and written one after the other, by every handling.
    pub chunks: u64,
    /// The last receipt (`custom_id`) an earlier handling had finished: this one resumed after
    /// it. `None`: this handling started at the first receipt.
    pub resumed_after: Option<String>,
    /// Receipts finished by earlier handlings (included in the counts).
    pub receipts_resumed: u64,
    /// Verdicts applied, by the status they set (VALID, INVALID, NEEDS_REVIEW).
    pub labels_by_verdict: BTreeMap<String, u64>,
    pub status_changes: WriteCounts,
    pub resets: WriteCounts,
    pub corrections_created: u64,
    pub corrections_existing: u64,
    pub vectors_updated: u64,
    pub vectors_unchanged: u64,
    pub vectors_missing: u64,
    /// Vector writes made again because the table, read again after the first write, held
    /// labels of another apply the write lacked (eventual consistency: see
    /// `crate::pinecone::merge`).
    pub vectors_repaired: u64,
    /// Vectors written although the fetch showed every label: words whose verdicts an earlier,
    /// cut-off run had applied, whose write it may not have verified.
    pub vectors_rewritten: u64,
    pub pinecone_rate_limited: u64,
    pub verdict_rows: u64,
    /// Journal rows of resets (verdict `NONE`), written after their resets.
    pub reset_rows: u64,
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

impl WriteCounts {
    fn add(&mut self, o: &WriteCounts) {
        self.applied += o.applied;
        self.already += o.already;
        self.conflicts += o.conflicts;
    }
}

impl ApplyReport {
    /// Adds what another part of the same batch's apply counted (a chunk, or the chunks of an
    /// earlier handling): every count that chunks make. The header (ids, statuses, the targets'
    /// source, the receipts indexed, the resume point) is this report's own.
    pub(crate) fn absorb(&mut self, part: &ApplyReport) {
        self.chunks += part.chunks;
        for (k, v) in &part.labels_by_verdict {
            *self.labels_by_verdict.entry(k.clone()).or_default() += v;
        }
        self.status_changes.add(&part.status_changes);
        self.resets.add(&part.resets);
        self.corrections_created += part.corrections_created;
        self.corrections_existing += part.corrections_existing;
        self.vectors_updated += part.vectors_updated;
        self.vectors_unchanged += part.vectors_unchanged;
        self.vectors_missing += part.vectors_missing;
        self.vectors_repaired += part.vectors_repaired;
        self.vectors_rewritten += part.vectors_rewritten;
        self.pinecone_rate_limited += part.pinecone_rate_limited;
        self.verdict_rows += part.verdict_rows;
        self.reset_rows += part.reset_rows;
        self.result_rows += part.result_rows;
        self.bad_label_items += part.bad_label_items;
        self.result_rows_kept += part.result_rows_kept;
        self.writes += part.writes;
        for (k, v) in &part.phase_ms {
            *self.phase_ms.entry(k.clone()).or_default() += v;
        }
        self.plan.merge(&part.plan);
    }

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
        if self.unreadable_requests > 0 {
            let _ = writeln!(
                s,
                "  unreadable requests in the input file: {} (their receipts' PENDING labels taken as targets)",
                self.unreadable_requests
            );
        }
        if let Some(after) = &self.resumed_after {
            let _ = writeln!(
                s,
                "  resumed after {after}: {} of {} receipts done by earlier handlings",
                self.receipts_resumed, self.receipts
            );
        }
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
        let t = &self.plan.targets;
        if t.reset_recorded + t.reclaimed > 0 {
            let _ = writeln!(
                s,
                "  resets journaled earlier: {} done, {} PENDING again for a newer batch (left alone)",
                t.reset_recorded, t.reclaimed
            );
        }
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
        if self.vectors_repaired + self.vectors_rewritten > 0 {
            let _ = writeln!(
                s,
                "  vectors written again: {} repaired (another apply's labels found in the table after the write), {} rewritten (an earlier run's write, unverified)",
                self.vectors_repaired, self.vectors_rewritten
            );
        }
        let _ = writeln!(
            s,
            "  audit rows: {} verdict, {} reset, {} result ({} key collisions)",
            self.verdict_rows, self.reset_rows, self.result_rows, self.plan.result_rows.collisions
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
