//! Reading and planning one chunk of receipts: its targets (from the input file's lines, or
//! the fallback), the current labels, then this batch's journal rows (in that order: see
//! "Two applies at once" in `apply.rs`), and its output lines, handed to the pure
//! [`PlanBuilder`].

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt, stream};
use tracing::warn;

use super::apply::Phases;
use super::index::{Files, LineLog, io};
use super::report::ApplyReport;
use super::{FinishError, Services};
use crate::model::{BatchSummary, CompletionBatchVerdict, ReceiptKey, ReceiptWordLabel};
use crate::openai::BatchObject;
use crate::parse::{
    InputLine, OutputParser, ReceiptLines, chunk_lines, parse_input_line, read_lines,
};
use crate::plan::{Plan, PlanBuilder, PlanInput, fallback_targets, receipts_to_load};

/// What planning one chunk needs.
pub(super) struct ChunkContext<'a> {
    pub(super) services: &'a Services,
    pub(super) summary: &'a BatchSummary,
    pub(super) batch: &'a BatchObject,
    /// OpenAI no longer has the input file: the named receipts' PENDING labels are the
    /// targets.
    pub(super) fallback: bool,
    pub(super) log: &'a LineLog,
}

pub(super) type Chunk<'i> = [(&'i ReceiptKey, &'i ReceiptLines)];

impl ChunkContext<'_> {
    /// Reads the chunk's targets, labels, journal and output lines, and plans it.
    pub(super) async fn plan(
        &self,
        chunk: &Chunk<'_>,
        files: &Files,
        report: &mut ApplyReport,
        phases: &mut Phases,
    ) -> Result<Plan, FinishError> {
        let services = self.services;
        let batch_id = &self.summary.batch_id;
        let in_chunk: BTreeSet<&ReceiptKey> = chunk.iter().map(|(r, _)| *r).collect();

        // Targets from the input file's lines of these receipts.
        let mut targets = BTreeSet::new();
        if let Some(file) = files.input.as_ref().map(|f| &f.read) {
            let lines = chunk_lines(chunk.iter().map(|(_, l)| *l), |l| &l.input);
            let file = Arc::clone(file);
            let owned: BTreeSet<ReceiptKey> = in_chunk.iter().map(|r| (*r).clone()).collect();
            targets = blocking("input file", move || {
                let mut targets = BTreeSet::new();
                let mut buf = Vec::new();
                read_lines(&file, &lines, &mut buf, |_, line| {
                    if let InputLine::Request(r) = parse_input_line(line) {
                        targets.extend(
                            r.targets
                                .into_iter()
                                .map(|t| t.label)
                                .filter(|k| owned.contains(&k.word.receipt)),
                        );
                    }
                    Ok(())
                })?;
                Ok(targets)
            })
            .await??;
        }

        // The labels first, then the journal (see the module's doc: a label this batch's other
        // applier changed is found with the journal row it wrote before changing it). Labels
        // of the receipts with targets; for the fallback, of every named receipt, whose
        // PENDING labels are the targets (and of a receipt whose request could not be read).
        let queried: BTreeSet<ReceiptKey> = if self.fallback {
            chunk
                .iter()
                .filter(|(_, l)| l.named)
                .map(|(r, _)| (*r).clone())
                .collect()
        } else {
            let mut receipts = receipts_to_load(&targets, &[]);
            receipts.extend(
                chunk
                    .iter()
                    .filter(|(_, l)| l.targets_unreadable)
                    .map(|(r, _)| (*r).clone()),
            );
            receipts
        };
        let mut labels = read_labels(services, &queried, report).await?;
        if self.fallback {
            targets = fallback_targets(&queried, &labels);
        } else {
            // A request whose targets could not be read falls back for its own receipt.
            let unreadable: BTreeSet<ReceiptKey> = chunk
                .iter()
                .filter(|(_, l)| l.targets_unreadable)
                .map(|(r, _)| (*r).clone())
                .collect();
            targets.extend(fallback_targets(&unreadable, &labels));
        }
        let journal = read_journal(services, batch_id, &in_chunk).await?;
        // A journal row of a receipt whose labels were not read (its label is no longer a
        // target: a re-run whose targets come from elsewhere than the run that decided it).
        let more: BTreeSet<ReceiptKey> = receipts_to_load(&BTreeSet::new(), &journal)
            .into_iter()
            .filter(|r| !queried.contains(r))
            .collect();
        if !more.is_empty() {
            labels.extend(read_labels(services, &more, report).await?);
        }
        phases.mark(report, "read_table");

        let mut builder = PlanBuilder::new(PlanInput {
            batch_id: batch_id.as_str().into(),
            batch: self.batch,
            targets,
            labels,
            journal,
        });
        if let Some(file) = files.output.as_ref().map(|f| &f.read) {
            let lines = chunk_lines(chunk.iter().map(|(_, l)| *l), |l| &l.output);
            let file = Arc::clone(file);
            let log = self.log.clone();
            builder = blocking("output file", move || {
                let mut buf = Vec::new();
                let mut parser = OutputParser::new();
                read_lines(&file, &lines, &mut buf, |at, line| {
                    let parsed = parser.parse(line);
                    log.line("output", at.line_no, &parsed);
                    builder.add_line(at.line_no, parsed);
                    Ok(())
                })?;
                Ok(builder)
            })
            .await??;
        }
        let plan = builder.finish();
        phases.mark(report, "plan");
        Ok(plan)
    }
}

/// Runs blocking file reads and the parsing of a chunk off the async workers.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<Result<T, FinishError>, FinishError> {
    let joined = tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| FinishError::Io {
            what,
            message: e.to_string(),
        })?;
    Ok(joined.map_err(io(what)))
}

/// This batch's journal rows of the chunk's receipts: one Query over the range of their keys.
async fn read_journal(
    services: &Services,
    batch_id: &str,
    receipts: &BTreeSet<&ReceiptKey>,
) -> Result<Vec<CompletionBatchVerdict>, FinishError> {
    let receipts: Vec<&ReceiptKey> = receipts.iter().copied().collect();
    let mut rows = Vec::new();
    for row in services
        .store
        .batch_verdicts_of(batch_id, &receipts)
        .await?
    {
        match row {
            Ok(r) => rows.push(r),
            Err(e) => warn!(batch_id, error = %e, "verdict journal row does not decode; ignored"),
        }
    }
    Ok(rows)
}

async fn read_labels(
    services: &Services,
    receipts: &BTreeSet<ReceiptKey>,
    report: &mut ApplyReport,
) -> Result<Vec<ReceiptWordLabel>, FinishError> {
    let pages: Vec<_> = stream::iter(receipts)
        .map(|r| services.store.receipt_labels(r))
        .buffer_unordered(services.options.read_concurrency.max(1))
        .try_collect()
        .await?;
    let mut labels = Vec::new();
    for page in pages {
        for l in page {
            match l {
                Ok(l) => labels.push(l),
                Err(e) => {
                    report.bad_label_items += 1;
                    warn!(error = %e, "label item does not decode; skipped");
                }
            }
        }
    }
    Ok(labels)
}
