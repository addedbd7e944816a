//! Carrying out a plan: read what it needs, then write in the order of processing-rules.md.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{StreamExt, TryStreamExt, stream};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::report::{ApplyReport, WriteCounts};
use super::{FinishError, Services};
use crate::model::{
    BatchSummary, CompletionBatchVerdict, LabelKey, ReceiptKey, ReceiptWordLabel, ValidationStatus,
};
use crate::openai::BatchObject;
use crate::openai::client::DownloadedFile;
use crate::parse::{
    AsyncLineReader, InputLine, ParsedLine, TargetCollector, parse_input_read, parse_output_read,
    peek_custom_id,
};
use crate::pinecone::merge::MetadataChange;
use crate::plan::{Outcome, Plan, PlanBuilder, PlanCounters, PlanInput, StatusChange};
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
    // Targets: the input file's `### Targets`, or the fallback of processing-rules.md.
    let journal = read_journal(services, &summary.batch_id).await?;
    let (targets, mut labels) = match &input {
        Some(file) => {
            report.targets_source = "input_file".into();
            (read_targets(file).await?, Vec::new())
        }
        None => {
            report.targets_source = "fallback".into();
            let mut receipts: BTreeSet<ReceiptKey> = summary.receipt_refs.iter().cloned().collect();
            for file in output.iter().chain(errors.iter()) {
                receipts.extend(custom_ids(file).await?);
            }
            let labels = read_labels(services, &receipts, &mut report).await?;
            (crate::plan::fallback_targets(&receipts, &labels), labels)
        }
    };
    let loaded: BTreeSet<ReceiptKey> = labels.iter().map(|l| l.key.word.receipt.clone()).collect();
    let wanted: BTreeSet<ReceiptKey> = crate::plan::receipts_to_load(&targets, &journal)
        .into_iter()
        .filter(|r| !loaded.contains(r))
        .collect();
    labels.extend(read_labels(services, &wanted, &mut report).await?);
    phases.mark(&mut report, "read_table");

    let mut builder = PlanBuilder::new(PlanInput {
        batch_id: summary.batch_id.clone(),
        batch,
        targets,
        labels,
        journal,
    });
    let mut logged = 0usize;
    let max_logged = services.options.max_logged_lines;
    if let Some(file) = &output {
        let mut lines = AsyncLineReader::new(file.open().await.map_err(io("output file"))?);
        while let Some((n, line)) = lines.next_line().await.map_err(io("output file"))? {
            let parsed = parse_output_read(line);
            log_line(
                &summary.batch_id,
                "output",
                n,
                &parsed,
                &mut logged,
                max_logged,
            );
            builder.add_line(n, parsed);
        }
    }
    if let Some(file) = &errors {
        let mut lines = AsyncLineReader::new(file.open().await.map_err(io("error file"))?);
        while let Some((n, line)) = lines.next_line().await.map_err(io("error file"))? {
            builder.add_error_line(n, parse_output_read(line));
        }
    }
    let plan = builder.finish();
    drop((output, errors, input)); // the downloads are no longer needed on disk
    phases.mark(&mut report, "plan");

    let gate = Gate {
        stop,
        services,
        writes: AtomicU64::new(0),
    };
    let plan = execute(services, &gate, plan, &mut report, &mut phases).await?;
    report.summary_status = plan.summary.as_ref().map(|s| s.status);
    report.skipped = skipped(&plan.counters);
    report.plan = plan.counters;
    report.writes = gate.writes.load(Ordering::SeqCst);
    info!(
        batch_id = %summary.batch_id,
        openai_batch_id = %summary.openai_batch_id,
        status = ?report.summary_status,
        verdicts = report.verdict_rows,
        resets = report.resets.applied,
        corrections = report.corrections_created,
        conflicts = report.conflicts(),
        writes = report.writes,
        "batch applied"
    );
    Ok(report)
}

/// The writes, in order: journal; status changes; corrections; resets; vectors; result rows;
/// the summary last.
async fn execute(
    services: &Services,
    gate: &Gate<'_>,
    plan: Plan,
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
    report.verdict_rows = verdict_items.len() as u64;
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
    report.status_changes = count(&outcomes);
    phases.mark(report, "write_labels");
    let plan = if conflicts.is_empty() {
        plan
    } else {
        plan.without_conflicts(&conflicts)
    };

    // Corrections: create only if absent.
    let created: Vec<Created> = stream::iter(plan.corrections.iter())
        .map(|label| async move {
            gate.pass()?;
            Ok::<_, FinishError>(store.create_label_if_absent(label).await?)
        })
        .buffered(concurrency)
        .try_collect()
        .await?;
    report.corrections_created = created.iter().filter(|c| **c == Created::Created).count() as u64;
    report.corrections_existing = created.len() as u64 - report.corrections_created;

    // Resets of targets without a verdict.
    let resets = transitions(services, gate, &plan.resets, concurrency).await?;
    report.resets = count(&resets);
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
    // 4. CompletionBatchResult rows.
    let result_items: Vec<_> = plan.results.iter().map(|r| r.to_item()).collect();
    report.result_rows = result_items.len() as u64;
    put_chunks(services, gate, result_items).await?;
    phases.mark(report, "write_results");

    // 5. The summary, last: conditional on PENDING.
    if let Some(summary) = &plan.summary {
        gate.pass()?;
        let t = store
            .finish_summary(
                &plan.batch_id,
                summary.status,
                summary.result_file_id.as_deref(),
            )
            .await?;
        if let Transition::Conflict { current } = t {
            warn!(batch_id = %plan.batch_id, ?current, "summary no longer PENDING; another run finished it");
        }
    }
    phases.mark(report, "write_summary");
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

fn count(outcomes: &[Transition<ValidationStatus>]) -> WriteCounts {
    let mut c = WriteCounts::default();
    for t in outcomes {
        match t {
            Transition::Applied => c.applied += 1,
            Transition::AlreadyInTarget => c.already += 1,
            Transition::Conflict { .. } => c.conflicts += 1,
        }
    }
    c
}

/// Unconditional puts of deterministic rows, one gated call per chunk of 25.
async fn put_chunks(
    services: &Services,
    gate: &Gate<'_>,
    items: Vec<crate::model::Item>,
) -> Result<(), FinishError> {
    for chunk in items.chunks(BATCH_WRITE_LIMIT) {
        gate.pass()?;
        services.store.put_items_batched(chunk.to_vec()).await?;
    }
    Ok(())
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
        Err(e) if !e.is_transient() => {
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

async fn read_targets(file: &DownloadedFile) -> Result<BTreeSet<LabelKey>, FinishError> {
    let mut collector = TargetCollector::new();
    let mut lines = AsyncLineReader::new(file.open().await.map_err(io("input file"))?);
    while let Some((n, line)) = lines.next_line().await.map_err(io("input file"))? {
        let parsed = parse_input_read(line);
        if let InputLine::Malformed(m) = &parsed {
            warn!(
                line = n,
                kind = m.kind.as_str(),
                "malformed input-file line"
            );
        }
        collector.add_line(parsed);
    }
    Ok(collector.finish().0)
}

async fn custom_ids(file: &DownloadedFile) -> Result<BTreeSet<ReceiptKey>, FinishError> {
    let mut out = BTreeSet::new();
    let mut lines = AsyncLineReader::new(file.open().await.map_err(io("result file"))?);
    while let Some((_, line)) = lines.next_line().await.map_err(io("result file"))? {
        if let Some(r) = line.ok().and_then(peek_custom_id) {
            out.insert(r);
        }
    }
    Ok(out)
}

async fn read_journal(
    services: &Services,
    batch_id: &str,
) -> Result<Vec<CompletionBatchVerdict>, FinishError> {
    let mut rows = Vec::new();
    for row in services.store.batch_verdicts(batch_id).await? {
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

fn log_line(
    batch_id: &str,
    file: &str,
    n: u64,
    parsed: &ParsedLine,
    logged: &mut usize,
    max: usize,
) {
    let (kind, detail) = match parsed {
        ParsedLine::Malformed(m) => (m.kind.as_str(), m.detail.as_str()),
        ParsedLine::Failed { .. } => ("failed_request", ""),
        _ => return,
    };
    metrics::counter!("fleet_skipped_lines_total", "reason" => kind).increment(1);
    if *logged < max {
        *logged += 1;
        warn!(
            batch_id,
            file,
            line = n,
            kind,
            detail,
            "output line gives no verdicts"
        );
    }
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
