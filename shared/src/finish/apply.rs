//! Carrying out the rules: index the batch's files, then read, plan and write a chunk of
//! receipts at a time in the order of docs/spec/processing-rules.md, recording after each chunk how far
//! the apply got, and the summary once, last. [`run`] is the table of contents; each step lives
//! in its own file:
//!
//! - `resume.rs`: where an earlier handling stopped (the cursor), and recording it;
//! - `downloads.rs` and `budget.rs`: the files, within the download budget;
//! - `downloads.rs` and `budget.rs`: the files, within the download budget;
//! - `index.rs`: pass 1, where each receipt's lines are;
//! - `chunk.rs`: reading and planning one chunk;
//! - `writes.rs`: a chunk's writes in the prescribed order, behind the stop/budget gate.
//!
//! # Why chunks of receipts decide what one plan of the whole batch would
//!
//! Every rule looks at one receipt (the NEEDS_REVIEW rule, corrections and vector merges at one
//! word of it): a result may only judge labels of its own line's receipt, a target names one
//! label, and a receipt's labels are read with one query. So a chunk's plan needs only the
//! chunk's targets, labels, journal rows and output lines, and writes only the chunk's labels,
//! words, journal rows and result rows; an earlier chunk never changes what a later one reads.
//! The order of writes holds for every label (its journal row before its status change, and so
//! on), which is what a re-run relies on; the BatchSummary is written once, after every chunk.
//! The same argument lets a later handling skip the chunks an earlier one finished.
//!
//! The one rule that crosses receipts is the CompletionBatchResult key (docs/spec/data-model.md): two
//! verdicts on different images with the same receipt, line, word and label share one SK, and
//! the smallest image id's row must be the one stored. Inside a chunk the plan keeps the
//! smallest; across chunks each row is a conditional put that overwrites only a row of a
//! larger-or-equal image id ([`crate::store::Store::put_result_row`]). That needs no memory of
//! the keys written, its outcome does not depend on the order of chunks or on where a previous
//! run was cut off (the stored row is always the smallest image's among the verdicts applied),
//! and a re-run writes its own rows again. Chunks go in receipt-key order, image id first, so
//! the smaller image's row is written first and a larger one's put is refused: that refusal
//! counts the collision, the same count one plan of the whole batch makes. The price is one
//! PutItem per result row instead of one BatchWriteItem per 25 (the same write units, more
//! calls, which run concurrently); relying on the written keys being in memory instead would
//! need memory growing with the batch. A capped set of keys known to be held
//! (`writes::HeldResultKeys`) only spares puts that would be refused.
//!
//! # Two applies at once
//!
//! The lease keeps one worker applying a batch, but for a moment two can overlap: the holder
//! that lost its lease finishes the write in flight while the new holder starts after the last
//! chunk recorded. Each chunk's reads and writes are made so that the overlap ends as one run
//! would:
//!
//! - A label's journal row is written before its status change (and a reset's right after the
//!   reset). A chunk reads the labels first and this batch's journal after, so a label it finds
//!   changed by the other applier comes with that applier's row, and its recorded verdict is
//!   applied again (idempotently) instead of being taken for someone else's change.
//! - The journal is read for every chunk (no "this batch has no rows yet" shortcut taken once
//!   at the start: the other applier may write them meanwhile), and it is authoritative: a
//!   label with a row is never decided again.
//! - A row decided from a label found changed without a row (a conflict) is written only
//!   where the label has none ([`crate::store::Store::put_verdict_if_absent`]), so it can never
//!   replace the other applier's row decided from PENDING.
//! - Every other write is idempotent or conditional on the state it was decided from.
//!
//! # Memory
//!
//! The first pass keeps, per receipt, the offsets of its output and input lines (a few dozen
//! bytes; a batch has at most 50,000 requests); the files stay on disk and each chunk reads its
//! lines back with positioned reads. The journal of a chunk is read with one Query over the
//! range of its receipts' keys.

use std::collections::BTreeMap;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::chunk::ChunkContext;
use super::downloads;
use super::index::{Files, Indexed, LineLog, index_batch};
use super::report::ApplyReport;
use super::result_keys::{HeldResultKeys, SharedKeys};
use super::resume::{self, Resume};
use super::writes::{Gate, LabelsWritten, write_labels, write_vectors_and_results};
use super::{FinishError, Services};
use crate::model::{BatchSummary, ReceiptKey};
use crate::openai::BatchObject;
use crate::parse::{BatchIndex, ReceiptLines};
use crate::plan::{Outcome, PlanCounters, SummaryUpdate, summary_update};
use crate::store::Transition;

/// Records how long each phase took, for the report (where did an apply's time go?).
pub(super) struct Phases {
    last: std::time::Instant,
}

impl Phases {
    fn new() -> Self {
        Phases {
            last: std::time::Instant::now(),
        }
    }

    pub(super) fn mark(&mut self, report: &mut ApplyReport, phase: &str) {
        let now = std::time::Instant::now();
        *report.phase_ms.entry(phase.to_owned()).or_default() +=
            u64::try_from(now.duration_since(self.last).as_millis()).unwrap_or(u64::MAX);
        self.last = now;
    }
}

/// The table of contents of an apply.
pub(super) async fn run(
    services: &Services,
    summary: &BatchSummary,
    batch: &BatchObject,
    stop: &CancellationToken,
    lease_owner: &str,
) -> Result<ApplyReport, FinishError> {
    let outcome = Outcome::of(&batch.status);
    let mut report = ApplyReport {
        batch_id: summary.batch_id.clone(),
        openai_batch_id: summary.openai_batch_id.clone(),
        openai_status: batch.status.to_string(),
        ..ApplyReport::default()
    };
    if outcome == Outcome::NotTerminal {
        return Ok(report);
    }
    let batch_id = summary.batch_id.as_str();
    let mut phases = Phases::new();

    // 1. Where an earlier handling stopped; and whether the lease is ours at all.
    let cursor = resume::Cursor {
        services,
        batch_id,
        batch,
        owner: lease_owner,
    };
    let resume = cursor.load().await?;
    report.resumed_after = resume.after.as_ref().map(|r| r.custom_id());
    report.receipts_resumed = resume.receipts;

    // 2. The files, within the download budget.
    let downloads = downloads::download(services, batch_id, batch, outcome, stop).await?;
    phases.mark(&mut report, "download");

    // 3. Pass 1: where each receipt's lines are (lines that name no receipt are counted).
    let log = LineLog::new(batch_id, services.options.max_logged_lines);
    let Indexed {
        index,
        files,
        fallback,
        keys,
    } = index_batch(
        summary,
        batch,
        downloads,
        resume.after.as_ref(),
        &log,
        &mut report,
    )
    .await?;
    phases.mark(&mut report, "index");

    // 4. Pass 2: the chunks after the cursor, each read, planned, written and recorded.
    let gate = Gate::new(stop, services);
    let pass = Pass2 {
        ctx: ChunkContext {
            services,
            summary,
            batch,
            fallback,
            log: &log,
        },
        cursor: &cursor,
        gate: &gate,
        keys: &keys,
    };
    let done = pass.run(&index, files, resume).await?;
    phases.mark(&mut report, "chunks");
    report.absorb(&done);

    // 5. The summary, last: conditional on PENDING.
    let update = summary_update(outcome, batch.output_file_id.clone());
    if let Some(update) = &update {
        gate.pass()?;
        report.writes += 1;
        write_summary(services, batch_id, update).await?;
    }
    phases.mark(&mut report, "write_summary");

    report.summary_status = update.map(|s| s.status);
    report.skipped = skipped(&report.plan);
    info!(
        batch_id,
        openai_batch_id = %summary.openai_batch_id,
        status = ?report.summary_status,
        receipts = report.receipts,
        receipts_resumed = report.receipts_resumed,
        chunks = report.chunks,
        verdicts = report.verdict_rows,
        resets = report.resets.applied,
        corrections = report.corrections_created,
        conflicts = report.conflicts(),
        writes = report.writes,
        phase_ms = ?report.phase_ms,
        "batch applied"
    );
    Ok(report)
}

/// What pass 2 needs besides the index and the files.
struct Pass2<'a> {
    ctx: ChunkContext<'a>,
    cursor: &'a resume::Cursor<'a>,
    gate: &'a Gate<'a>,
    keys: &'a SharedKeys,
}

/// A chunk between its two stages: planned and its labels written, with its own gate and
/// report (the first stage's part, plan counters included).
struct Staged<'g> {
    last: ReceiptKey,
    receipts: u64,
    written: LabelsWritten,
    gate: Gate<'g>,
    part: ApplyReport,
}

impl<'a> Pass2<'a> {
    /// Reads, plans and writes the chunks after `resume`'s cursor, recording the cursor after
    /// each; returns what the done chunks (the earlier handlings' included) counted.
    ///
    /// Each chunk goes through two stages, and one chunk's second stage runs while the next
    /// chunk's first does: stage 1 reads and plans the chunk and writes its labels (journal,
    /// status changes, corrections, resets); stage 2 writes its vectors and result rows.
    /// Pinecone's update rate makes stage 2 the long one, so the table's round trips hide
    /// behind it. Stage 2 takes the chunks one at a time in order, so result rows are written
    /// in receipt order; a chunk's reads never see what another chunk writes (see the module's
    /// doc), so reading and writing it early changes nothing it decides; and the order of
    /// writes within each chunk is the prescribed one.
    ///
    /// The cursor after chunk n is recorded once both stages running beside each other are
    /// done, with the counts of chunk n + 1's first stage (`resume::Ahead`): a handling
    /// stopped there has changed that chunk's labels, and the next handling, which plans it
    /// again from the table and finds them changed, reports what one uninterrupted run counts.
    async fn run(
        &self,
        index: &BatchIndex,
        mut files: Files,
        resume: Resume,
    ) -> Result<ApplyReport, FinishError> {
        let mut held = HeldResultKeys::new();
        let mut done = resume.done;
        let mut ahead_done = resume.ahead;
        let mut receipts_done = resume.receipts;
        let per_chunk = self.ctx.services.options.receipts_per_chunk;
        let mut chunks = index.chunks_after(resume.after.as_ref(), per_chunk);
        let mut behind: Option<Staged<'a>> = None;
        loop {
            let next = chunks.next();
            if next.is_none() && behind.is_none() {
                return Ok(done);
            }
            let first = async {
                let Some(chunk) = next else {
                    return Ok::<_, FinishError>(None);
                };
                let mut staged = self.first_stage(chunk, &mut files).await?;
                // The counts an earlier handling's first stage made for this same chunk.
                if let Some(ahead) = ahead_done.take()
                    && ahead.last == staged.last.custom_id()
                {
                    staged.part = ahead.part;
                }
                Ok(Some(staged))
            };
            let second = async {
                let Some(staged) = behind.take() else {
                    return Ok(None);
                };
                self.second_stage(staged, &mut held).await.map(Some)
            };
            let (ahead, finished) = tokio::join!(first, second);
            if let Ok(Some((last, receipts, gate, part))) = &finished {
                receipts_done += receipts;
                done.absorb(part);
                let next_part = match &ahead {
                    Ok(Some(staged)) => Some(resume::Ahead {
                        last: staged.last.custom_id(),
                        part: staged.part.clone(),
                    }),
                    _ => None,
                };
                let mut phases = Phases::new();
                self.cursor
                    .record(gate, last, receipts_done, &done, next_part)
                    .await?;
                phases.mark(&mut done, "write_cursor");
            }
            finished?;
            behind = ahead?;
        }
    }

    /// Reads and plans a chunk, and writes its labels.
    async fn first_stage(
        &self,
        chunk: Vec<(&ReceiptKey, &ReceiptLines)>,
        files: &mut Files,
    ) -> Result<Staged<'a>, FinishError> {
        self.gate.check()?;
        let gate = self.gate.scoped();
        let mut phases = Phases::new();
        let mut part = ApplyReport::default();
        let plan = self.ctx.plan(&chunk, files, &mut part, &mut phases).await?;
        let (last, _) = chunk[chunk.len() - 1];
        files.release_read(last); // a file read to its end is removed before the writes
        let services = self.ctx.services;
        let written = write_labels(services, &gate, plan, &mut part, &mut phases).await?;
        part.plan = written.plan.counters.clone();
        part.chunks = 1;
        Ok(Staged {
            last: last.clone(),
            receipts: chunk.len() as u64,
            written,
            gate,
            part,
        })
    }

    /// Writes a staged chunk's vectors and result rows; returns the chunk's last receipt, its
    /// receipts, its gate (for the cursor's write) and what it counted.
    async fn second_stage(
        &self,
        staged: Staged<'a>,
        held: &mut HeldResultKeys,
    ) -> Result<(ReceiptKey, u64, Gate<'a>, ApplyReport), FinishError> {
        let Staged {
            last,
            receipts,
            written,
            gate,
            mut part,
        } = staged;
        let mut phases = Phases::new();
        let services = self.ctx.services;
        let kept_before = part.result_rows_kept;
        write_vectors_and_results(
            services,
            &gate,
            written,
            self.keys,
            held,
            &mut part,
            &mut phases,
        )
        .await?;
        // Rows a smaller image's row holds across chunks count as collisions, as one plan of
        // the whole batch would count them.
        let kept = part.result_rows_kept - kept_before;
        let rows = &mut part.plan.result_rows;
        rows.written -= kept;
        rows.collisions += kept;
        // This chunk's writes, and the cursor's own.
        part.writes = gate.count() + 1;
        Ok((last, receipts, gate, part))
    }
}

/// The BatchSummary's status change, conditional on PENDING: the write that marks the batch
/// done. Found finished already: another run got there (a warning, not an error).
async fn write_summary(
    services: &Services,
    batch_id: &str,
    update: &SummaryUpdate,
) -> Result<(), FinishError> {
    let t = services
        .store
        .finish_summary(batch_id, update.status, update.result_file_id.as_deref())
        .await?;
    if let Transition::Conflict { current } = t {
        warn!(
            batch_id,
            ?current,
            "summary no longer PENDING; another run finished it"
        );
    }
    Ok(())
}

/// Everything skipped, by reason, for the report and metrics.
fn skipped(c: &PlanCounters) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for (k, v) in &c.output_lines.malformed {
        m.insert(format!("malformed_line:{k}"), *v);
    }
    m.insert("failed_request".into(), c.output_lines.failed);
    let r = &c.results;
    for (k, v) in [
        ("not_an_object", r.not_an_object),
        ("missing_id", r.missing_id),
        ("bad_id", r.bad_id),
        ("other_receipt", r.other_receipt),
        ("is_valid_not_bool", r.is_valid_not_bool),
        ("bad_correct_label", r.bad_correct_label),
        ("not_target", r.not_target),
        ("not_in_table", r.not_in_table),
        ("already_valid", r.already_valid),
        ("duplicate_overridden", r.duplicate_overridden),
    ] {
        m.insert(k.into(), v);
    }
    m.retain(|_, v| *v > 0);
    m
}
