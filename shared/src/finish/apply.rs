//! Carrying out the rules: index the batch's files, then read, plan and write a chunk of
//! receipts at a time in the order of processing-rules.md, the summary once, last.
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
//!
//! The one rule that crosses receipts is the CompletionBatchResult key (data-model.md): two
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
//! ([`HeldResultKeys`]) only spares puts that would be refused.
//!
//! # Memory
//!
//! The first pass keeps, per receipt, the offsets of its output and input lines (a few dozen
//! bytes; a batch has at most 50,000 requests); the files stay on disk and each chunk reads its
//! lines back with positioned reads. The journal is read per receipt, for the receipts with
//! output lines: a verdict row can only come from an output line of its label's receipt (a
//! result naming another receipt is rejected), and the files do not change between runs.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use futures::{StreamExt, TryStreamExt, stream};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::report::{ApplyReport, WriteCounts};
use super::{FinishError, Services};
use crate::model::status::CORE_LABELS;
use crate::model::{
    BatchStatus, BatchSummary, CompletionBatchResult, CompletionBatchVerdict, ReceiptKey,
    ReceiptWordLabel, ValidationStatus,
};
use crate::openai::BatchObject;
use crate::openai::client::DownloadedFile;
use crate::parse::{
    AsyncLineReader, BatchIndex, InputLine, LineRef, ParsedLine, ReceiptLines, chunk_lines,
    locate_custom_id, parse_input_line, parse_input_read, parse_output_line, parse_output_read,
    peek_custom_id,
};
use crate::pinecone::merge::MetadataChange;
use crate::plan::{
    Outcome, Plan, PlanBuilder, PlanCounters, PlanInput, StatusChange, SummaryUpdate,
    batch_timestamp, fallback_targets, receipts_to_load, summary_update,
};
use crate::store::{BATCH_WRITE_LIMIT, Created, Transition};

/// Checks, before every write, that the apply may go on (stop token, drill budget), and counts.
struct Gate<'a> {
    stop: &'a CancellationToken,
    services: &'a Services,
    writes: AtomicU64,
}

impl Gate<'_> {
    fn pass(&self) -> Result<(), FinishError> {
        let writes = self.writes.load(Ordering::SeqCst) as usize;
        if self.stop.is_cancelled() {
            return Err(FinishError::Stopped {
                writes,
                why: "told to stop",
            });
        }
        if let Some(budget) = &self.services.options.write_budget {
            if !budget.take() {
                return Err(FinishError::Stopped {
                    writes,
                    why: "write budget spent",
                });
            }
        }
        self.writes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Records how long each phase took, for the report (where did an apply's time go?).
struct Phases {
    last: std::time::Instant,
}

impl Phases {
    fn new() -> Self {
        Phases {
            last: std::time::Instant::now(),
        }
    }

    fn mark(&mut self, report: &mut ApplyReport, phase: &str) {
        let now = std::time::Instant::now();
        *report.phase_ms.entry(phase.to_owned()).or_default() +=
            now.duration_since(self.last).as_millis() as u64;
        self.last = now;
    }
}

/// Output lines that give no verdicts are logged one by one up to a cap per batch, from the
/// first pass and from the chunks alike.
#[derive(Clone)]
struct LineLog {
    batch_id: Arc<str>,
    logged: Arc<AtomicUsize>,
    max: usize,
}

impl LineLog {
    fn line(&self, file: &str, n: u64, parsed: &ParsedLine) {
        let (kind, detail) = match parsed {
            ParsedLine::Malformed(m) => (m.kind.as_str(), m.detail.as_str()),
            ParsedLine::Failed { .. } => ("failed_request", ""),
            _ => return,
        };
        metrics::counter!("fleet_skipped_lines_total", "reason" => kind).increment(1);
        if self.logged.fetch_add(1, Ordering::Relaxed) < self.max {
            warn!(
                batch_id = %self.batch_id,
                file,
                line = n,
                kind,
                detail,
                "output line gives no verdicts"
            );
        }
    }
}

/// Result keys (the SK's receipt, line, word and label) that this run found held by a row of an
/// image id not larger than any later chunk's: written by an earlier chunk, or a put that was
/// refused. Chunks go in image order, so a later row with such a key would be refused too: it is
/// counted as a collision without being sent (a refused conditional put still costs a write).
/// Exact, only core labels, and capped: past the cap rows are sent and the condition decides.
struct HeldResultKeys {
    keys: HashSet<u128>,
    cap: usize,
}

impl HeldResultKeys {
    /// Keys are packed; at 16 bytes (plus the set's overhead) the cap is a few MB.
    const CAP: usize = 200_000;

    fn new() -> Self {
        HeldResultKeys {
            keys: HashSet::new(),
            cap: Self::CAP,
        }
    }

    fn key(row: &CompletionBatchResult) -> Option<u128> {
        let label = CORE_LABELS.iter().position(|c| *c == row.label.label)?;
        let w = &row.label.word;
        Some(
            u128::from(w.receipt.receipt_id) << 72
                | u128::from(w.line_id) << 40
                | u128::from(w.word_id) << 8
                | label as u128,
        )
    }

    fn held(&self, row: &CompletionBatchResult) -> bool {
        Self::key(row).is_some_and(|k| self.keys.contains(&k))
    }

    fn hold(&mut self, row: &CompletionBatchResult) {
        if self.keys.len() < self.cap {
            if let Some(k) = Self::key(row) {
                self.keys.insert(k);
            }
        }
    }
}

/// The downloaded files, opened for positioned reads by the chunks.
struct Files {
    output: Option<Arc<std::fs::File>>,
    input: Option<Arc<std::fs::File>>,
}

pub(super) async fn run(
    services: &Services,
    summary: &BatchSummary,
    batch: &BatchObject,
    stop: &CancellationToken,
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
    let mut phases = Phases::new();
    let openai = &services.openai;
    let output = match (&batch.output_file_id, outcome.applies_output()) {
        (Some(id), true) => Some(openai.download_file(id).await?),
        _ => None,
    };
    let errors = match &batch.error_file_id {
        Some(id) => download_optional(services, id, "error file").await?,
        None => None,
    };
    let input = match &batch.input_file_id {
        Some(id) => download_optional(services, id, "input file").await?,
        None => None,
    };
    phases.mark(&mut report, "download");

    // Pass 1: where each receipt's lines are. Lines that name no receipt are counted here.
    let log = LineLog {
        batch_id: summary.batch_id.as_str().into(),
        logged: Arc::new(AtomicUsize::new(0)),
        max: services.options.max_logged_lines,
    };
    let fallback = input.is_none();
    let mut counters = PlanCounters {
        timestamp_field: batch_timestamp(batch, outcome).1.to_owned(),
        ..PlanCounters::default()
    };
    let mut index = BatchIndex::new();
    if let Some(file) = &output {
        index_output(file, &mut index, &mut counters, fallback, &log).await?;
    }
    if let Some(file) = &errors {
        count_error_file(file, &mut index, &mut counters, fallback).await?;
    }
    match &input {
        Some(file) => {
            report.targets_source = "input_file".into();
            index_input(file, &mut index).await?;
        }
        None => {
            report.targets_source = "fallback".into();
            for r in &summary.receipt_refs {
                index.add_named(r.clone());
            }
        }
    }
    report.receipts = index.len() as u64;
    let files = Files {
        output: open_for_chunks(output.as_ref(), "output file")?,
        input: open_for_chunks(input.as_ref(), "input file")?,
    };
    phases.mark(&mut report, "index");

    // Pass 2: chunk by chunk, read, plan, write.
    let gate = Gate {
        stop,
        services,
        writes: AtomicU64::new(0),
    };
    // A first run finds no journal: then no receipt has rows to look for.
    let journal = outcome.applies_output()
        && !index.is_empty()
        && services.store.has_batch_verdicts(&summary.batch_id).await?;
    let ctx = ChunkContext {
        services,
        summary,
        batch,
        journal,
        files: &files,
        log: &log,
    };
    let mut held = HeldResultKeys::new();
    for chunk in index.chunks(services.options.receipts_per_chunk) {
        let plan = ctx.plan(&chunk, &mut report, &mut phases).await?;
        let plan = execute(services, &gate, plan, &mut held, &mut report, &mut phases).await?;
        counters.merge(&plan.counters);
        report.chunks += 1;
    }
    drop((files, output, errors, input)); // the downloads are no longer needed on disk

    // The summary, last: conditional on PENDING.
    let final_summary = summary_update(outcome, batch.output_file_id.clone());
    if let Some(update) = &final_summary {
        gate.pass()?;
        let t = store_finish(services, &summary.batch_id, update).await?;
        if let Transition::Conflict { current } = t {
            warn!(batch_id = %summary.batch_id, ?current, "summary no longer PENDING; another run finished it");
        }
    }
    phases.mark(&mut report, "write_summary");

    report.summary_status = final_summary.map(|s| s.status);
    report.skipped = skipped(&counters);
    report.plan = counters;
    report.writes = gate.writes.load(Ordering::SeqCst);
    info!(
        batch_id = %summary.batch_id,
        openai_batch_id = %summary.openai_batch_id,
        status = ?report.summary_status,
        receipts = report.receipts,
        chunks = report.chunks,
        verdicts = report.verdict_rows,
        resets = report.resets.applied,
        corrections = report.corrections_created,
        conflicts = report.conflicts(),
        writes = report.writes,
        "batch applied"
    );
    Ok(report)
}

async fn store_finish(
    services: &Services,
    batch_id: &str,
    update: &SummaryUpdate,
) -> Result<Transition<BatchStatus>, FinishError> {
    Ok(services
        .store
        .finish_summary(batch_id, update.status, update.result_file_id.as_deref())
        .await?)
}

/// What planning one chunk needs.
struct ChunkContext<'a> {
    services: &'a Services,
    summary: &'a BatchSummary,
    batch: &'a BatchObject,
    /// Whether the batch has journal rows to read (a re-run of an applied outcome).
    journal: bool,
    files: &'a Files,
    log: &'a LineLog,
}

type Chunk<'i> = [(&'i ReceiptKey, &'i ReceiptLines)];

impl ChunkContext<'_> {
    /// Reads the chunk's targets, journal, labels and output lines, and plans it.
    async fn plan(
        &self,
        chunk: &Chunk<'_>,
        report: &mut ApplyReport,
        phases: &mut Phases,
    ) -> Result<Plan, FinishError> {
        let services = self.services;
        let batch_id = &self.summary.batch_id;
        let in_chunk: BTreeSet<&ReceiptKey> = chunk.iter().map(|(r, _)| *r).collect();

        // Targets from the input file's lines of these receipts.
        let mut targets = BTreeSet::new();
        if let Some(file) = &self.files.input {
            let lines = chunk_lines(chunk.iter().map(|(_, l)| *l), |l| &l.input);
            let file = Arc::clone(file);
            let owned: BTreeSet<ReceiptKey> = in_chunk.iter().map(|r| (*r).clone()).collect();
            targets = blocking("input file", move || {
                let mut targets = BTreeSet::new();
                let mut buf = Vec::new();
                for at in &lines {
                    if let InputLine::Request(r) = parse_input_line(at.read_from(&file, &mut buf)?)
                    {
                        targets.extend(
                            r.targets
                                .into_iter()
                                .map(|t| t.label)
                                .filter(|k| owned.contains(&k.word.receipt)),
                        );
                    }
                }
                Ok(targets)
            })
            .await??;
        }

        // This batch's journal rows: only a receipt with output lines can have any.
        let journal_receipts: Vec<&ReceiptKey> = if self.journal {
            chunk
                .iter()
                .filter(|(_, l)| !l.output.is_empty())
                .map(|(r, _)| *r)
                .collect()
        } else {
            Vec::new()
        };
        let journal = read_journal(services, batch_id, &journal_receipts).await?;

        // Labels of the receipts with targets or journal rows; for the fallback, of every
        // named receipt, whose PENDING labels are the targets.
        let labels = if self.files.input.is_none() {
            let named: BTreeSet<ReceiptKey> = chunk
                .iter()
                .filter(|(_, l)| l.named)
                .map(|(r, _)| (*r).clone())
                .collect();
            let mut labels = read_labels(services, &named, report).await?;
            targets = fallback_targets(&named, &labels);
            let more: BTreeSet<ReceiptKey> = journal
                .iter()
                .map(|j| j.label.word.receipt.clone())
                .filter(|r| !named.contains(r))
                .collect();
            labels.extend(read_labels(services, &more, report).await?);
            labels
        } else {
            read_labels(services, &receipts_to_load(&targets, &journal), report).await?
        };
        phases.mark(report, "read_table");

        let mut builder = PlanBuilder::new(PlanInput {
            batch_id: batch_id.clone(),
            batch: self.batch,
            targets,
            labels,
            journal,
        });
        if let Some(file) = &self.files.output {
            let lines = chunk_lines(chunk.iter().map(|(_, l)| *l), |l| &l.output);
            let file = Arc::clone(file);
            let log = self.log.clone();
            builder = blocking("output file", move || {
                let mut buf = Vec::new();
                for at in &lines {
                    let parsed = parse_output_line(at.read_from(&file, &mut buf)?);
                    log.line("output", at.line_no, &parsed);
                    builder.add_line(at.line_no, parsed);
                }
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

fn open_for_chunks(
    file: Option<&DownloadedFile>,
    what: &'static str,
) -> Result<Option<Arc<std::fs::File>>, FinishError> {
    file.map(|f| {
        std::fs::File::open(f.path())
            .map(Arc::new)
            .map_err(io(what))
    })
    .transpose()
}

/// Pass 1 over the output file: each line is placed with its receipt, read up to its
/// `custom_id` only; a line that names no receipt (blank, not JSON, no usable `custom_id`, over
/// the length cap) is classified and counted at once.
async fn index_output(
    file: &DownloadedFile,
    index: &mut BatchIndex,
    counters: &mut PlanCounters,
    fallback: bool,
    log: &LineLog,
) -> Result<(), FinishError> {
    let mut lines = AsyncLineReader::new(file.open().await.map_err(io("output file"))?);
    while let Some(line) = lines.next_located_line().await.map_err(io("output file"))? {
        let at = LineRef::of(&line);
        let (n, _, bytes) = line;
        let placed = bytes.as_ref().ok().and_then(|b| {
            let receipt = locate_custom_id(b)?;
            // The fallback's receipts are those the output names, read strictly.
            if fallback && peek_custom_id(b).as_ref() == Some(&receipt) {
                index.add_named(receipt.clone());
            }
            Some(receipt)
        });
        match (placed, at) {
            (Some(receipt), Some(at)) => index.add_output(receipt, at),
            _ => {
                let parsed = parse_output_read(bytes);
                log.line("output", n, &parsed);
                counters.output_lines.add(&parsed);
            }
        }
    }
    Ok(())
}

/// The error file's lines are counted only (processing-rules.md gives them no verdicts); for
/// the fallback they name receipts.
async fn count_error_file(
    file: &DownloadedFile,
    index: &mut BatchIndex,
    counters: &mut PlanCounters,
    fallback: bool,
) -> Result<(), FinishError> {
    let mut lines = AsyncLineReader::new(file.open().await.map_err(io("error file"))?);
    while let Some((_, line)) = lines.next_line().await.map_err(io("error file"))? {
        if fallback {
            if let Some(r) = line.as_ref().ok().and_then(|b| peek_custom_id(b)) {
                index.add_named(r);
            }
        }
        counters.error_lines.add(&parse_output_read(line));
    }
    Ok(())
}

/// Pass 1 over the input file: each request is placed with the receipts of its targets.
async fn index_input(file: &DownloadedFile, index: &mut BatchIndex) -> Result<(), FinishError> {
    let mut lines = AsyncLineReader::new(file.open().await.map_err(io("input file"))?);
    while let Some(line) = lines.next_located_line().await.map_err(io("input file"))? {
        let at = LineRef::of(&line);
        let (n, _, bytes) = line;
        match (parse_input_read(bytes), at) {
            (InputLine::Request(request), Some(at)) => index.add_input(at, &request),
            (InputLine::Malformed(m), _) => {
                warn!(
                    line = n,
                    kind = m.kind.as_str(),
                    "malformed input-file line"
                );
            }
            _ => {}
        }
    }
    Ok(())
}

/// One chunk's writes, in order: journal; status changes; corrections; resets; vectors; result
/// rows. The summary is written once after every chunk.
async fn execute(
    services: &Services,
    gate: &Gate<'_>,
    plan: Plan,
    held: &mut HeldResultKeys,
    report: &mut ApplyReport,
    phases: &mut Phases,
) -> Result<Plan, FinishError> {
    let store = &services.store;
    let concurrency = services.options.label_concurrency.max(1);

    // 1. The journal of decisions.
    let verdict_items: Vec<_> = plan
        .verdicts
        .iter()
        .map(CompletionBatchVerdict::to_item)
        .collect();
    report.verdict_rows += verdict_items.len() as u64;
    put_chunks(services, gate, verdict_items).await?;
    phases.mark(report, "write_journal");

    // 2. Status changes; labels someone else changed meanwhile drop out of what follows.
    let outcomes = transitions(services, gate, &plan.status_changes, concurrency).await?;
    let mut conflicts = BTreeSet::new();
    for (change, t) in plan.status_changes.iter().zip(&outcomes) {
        match t {
            Transition::Applied | Transition::AlreadyInTarget => {
                *report
                    .labels_by_verdict
                    .entry(change.to.to_string())
                    .or_default() += 1;
            }
            Transition::Conflict { current } => {
                warn!(batch_id = %plan.batch_id, label = %change.label, ?current, "label changed by someone else; left alone");
                conflicts.insert(change.label.clone());
            }
        }
    }
    add_counts(&mut report.status_changes, &outcomes);
    phases.mark(report, "write_labels");
    let mut plan = plan.without_conflicts(&conflicts);

    // Corrections: create only if absent.
    let created: Vec<Created> = stream::iter(plan.corrections.iter())
        .map(|label| async move {
            gate.pass()?;
            Ok::<_, FinishError>(store.create_label_if_absent(label).await?)
        })
        .buffered(concurrency)
        .try_collect()
        .await?;
    let new = created.iter().filter(|c| **c == Created::Created).count() as u64;
    report.corrections_created += new;
    report.corrections_existing += created.len() as u64 - new;

    // Resets of targets without a verdict.
    let resets = transitions(services, gate, &plan.resets, concurrency).await?;
    add_counts(&mut report.resets, &resets);
    phases.mark(report, "write_corrections_resets");

    // 3. Vector metadata.
    let changes: Vec<(String, MetadataChange)> = plan
        .vector_merges
        .iter()
        .map(|m| {
            (
                m.vector_id.clone(),
                MetadataChange {
                    add_valid: m.valid_labels.clone(),
                    add_invalid: m.invalid_labels.clone(),
                    proposed_label: m.proposed_label.clone(),
                },
            )
        })
        .collect();
    for chunk in changes.chunks(services.options.vector_chunk.max(1)) {
        gate.pass()?;
        let r = services.pinecone.apply_merges(chunk.to_vec()).await?;
        report.vectors_updated += r.updated;
        report.vectors_unchanged += r.unchanged;
        report.vectors_missing += r.missing;
        report.pinecone_rate_limited += r.rate_limited;
        if !r.missing_ids.is_empty() {
            warn!(batch_id = %plan.batch_id, missing = r.missing, first = %r.missing_ids[0], "word vectors missing from the index");
        }
    }
    phases.mark(report, "write_vectors");

    // 4. CompletionBatchResult rows, each unless a smaller image's row holds its key.
    let (known, send): (Vec<_>, Vec<_>) = plan.results.iter().partition(|r| held.held(r));
    let written: Vec<bool> = stream::iter(&send)
        .map(|row| async move {
            gate.pass()?;
            Ok::<_, FinishError>(store.put_result_row(row).await?)
        })
        .buffered(concurrency)
        .try_collect()
        .await?;
    for row in &send {
        held.hold(row);
    }
    let kept = (known.len() + written.iter().filter(|w| !**w).count()) as u64;
    report.result_rows += written.iter().filter(|w| **w).count() as u64;
    report.result_rows_kept += kept;
    let rows = &mut plan.counters.result_rows;
    rows.written -= kept;
    rows.collisions += kept;
    phases.mark(report, "write_results");
    Ok(plan)
}

async fn transitions(
    services: &Services,
    gate: &Gate<'_>,
    changes: &[StatusChange],
    concurrency: usize,
) -> Result<Vec<Transition<ValidationStatus>>, FinishError> {
    stream::iter(changes)
        .map(|c| async move {
            gate.pass()?;
            Ok::<_, FinishError>(
                services
                    .store
                    .transition_label(&c.label, c.from, c.to)
                    .await?,
            )
        })
        .buffered(concurrency)
        .try_collect()
        .await
}

fn add_counts(c: &mut WriteCounts, outcomes: &[Transition<ValidationStatus>]) {
    for t in outcomes {
        match t {
            Transition::Applied => c.applied += 1,
            Transition::AlreadyInTarget => c.already += 1,
            Transition::Conflict { .. } => c.conflicts += 1,
        }
    }
}

/// Unconditional puts of deterministic rows, one gated call per chunk of 25, several at once.
async fn put_chunks(
    services: &Services,
    gate: &Gate<'_>,
    items: Vec<crate::model::Item>,
) -> Result<(), FinishError> {
    stream::iter(items.chunks(BATCH_WRITE_LIMIT))
        .map(|chunk| async move {
            gate.pass()?;
            services.store.put_items_batched(chunk.to_vec()).await?;
            Ok::<_, FinishError>(())
        })
        .buffer_unordered(services.options.label_concurrency.max(1))
        .try_collect()
        .await
}

/// A file that may legitimately be gone (input, error file): `None` when OpenAI no longer has
/// it; transient failures still fail the apply (it is retried later).
async fn download_optional(
    services: &Services,
    file_id: &str,
    what: &'static str,
) -> Result<Option<DownloadedFile>, FinishError> {
    match services.openai.download_file(file_id).await {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.error_class() == crate::error_class::ErrorClass::Permanent => {
            warn!(file_id, error = %e, "{what} cannot be read");
            Ok(None)
        }
        Err(e) => Err(FinishError::OpenAi(e)),
    }
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> FinishError {
    move |e| FinishError::Io {
        what,
        message: e.to_string(),
    }
}

async fn read_journal(
    services: &Services,
    batch_id: &str,
    receipts: &[&ReceiptKey],
) -> Result<Vec<CompletionBatchVerdict>, FinishError> {
    let pages: Vec<_> = stream::iter(receipts)
        .map(|r| services.store.batch_verdicts_for(batch_id, r))
        .buffer_unordered(services.options.read_concurrency.max(1))
        .try_collect()
        .await?;
    let mut rows = Vec::new();
    for row in pages.into_iter().flatten() {
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
