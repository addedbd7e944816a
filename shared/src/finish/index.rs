//! Pass 1 of an apply: where each receipt's lines are in the batch's files ([`BatchIndex`]),
//! reading each file once from start to end. Lines that name no receipt are classified and
//! counted here; every other line is read again, in full, when its receipt's chunk comes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tracing::warn;

use super::FinishError;
use super::downloads::{ChunkFile, Downloads};
use super::report::ApplyReport;
use super::result_keys::SharedKeys;
use crate::model::{BatchSummary, ReceiptKey};
use crate::openai::BatchObject;
use crate::openai::client::DownloadedFile;
use crate::parse::{
    AsyncLineReader, BatchIndex, InputLine, LineRef, ParsedLine, locate_custom_id,
    parse_input_read, parse_output_read, peek_custom_id,
};
use crate::plan::{Outcome, PlanCounters, batch_timestamp};

/// Output lines that give no verdicts are logged one by one up to a cap per batch, from the
/// first pass and from the chunks alike.
#[derive(Clone)]
pub(super) struct LineLog {
    pub(super) batch_id: Arc<str>,
    logged: Arc<AtomicUsize>,
    max: usize,
}

impl LineLog {
    /// Logs at most `max` lines one by one for the batch.
    pub(super) fn new(batch_id: &str, max: usize) -> Self {
        LineLog {
            batch_id: batch_id.into(),
            logged: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    pub(super) fn line(&self, file: &str, n: u64, parsed: &ParsedLine) {
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

/// What pass 1 hands pass 2.
pub(super) struct Indexed {
    pub(super) index: BatchIndex,
    pub(super) files: Files,
    /// OpenAI no longer has the input file: the targets are the named receipts' PENDING
    /// labels.
    pub(super) fallback: bool,
    /// The result keys more than one target has (`result_keys.rs`).
    pub(super) keys: SharedKeys,
}

/// Pass 1: indexes the batch's downloaded files (the error file is counted, then removed),
/// and opens those the chunks after `after` will read. Fills the report's header: where the
/// targets come from, the receipts, the lines that name none, the unreadable requests.
pub(super) async fn index_batch(
    summary: &BatchSummary,
    batch: &BatchObject,
    downloads: Downloads,
    after: Option<&ReceiptKey>,
    log: &LineLog,
    report: &mut ApplyReport,
) -> Result<Indexed, FinishError> {
    let Downloads {
        output,
        errors,
        input,
    } = downloads;
    let fallback = input.is_none();
    report.plan = PlanCounters {
        timestamp_field: batch_timestamp(batch, Outcome::of(&batch.status))
            .1
            .to_owned(),
        ..PlanCounters::default()
    };
    let mut index = BatchIndex::new();
    if let Some(d) = &output {
        index_output(&d.file, &mut index, &mut report.plan, fallback, log).await?;
    }
    if let Some(d) = &errors {
        count_error_file(&d.file, &mut index, &mut report.plan, fallback).await?;
    }
    drop(errors); // counted: removed, its budget share given back
    let mut keys = SharedKeys::unknown();
    match &input {
        Some(d) => {
            report.targets_source = "input_file".into();
            keys = SharedKeys::gathering();
            report.unreadable_requests = index_input(&d.file, &mut index, &mut keys, log).await?;
            keys.seal();
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
        output: ChunkFile::open(output, index.last_with_output(), after, "output file")?,
        input: ChunkFile::open(input, index.last_with_input(), after, "input file")?,
    };
    Ok(Indexed {
        index,
        files,
        fallback,
        keys,
    })
}

/// The downloaded files the chunks read lines from; each is removed once read to its end.
pub(super) struct Files {
    pub(super) output: Option<ChunkFile>,
    pub(super) input: Option<ChunkFile>,
}

impl Files {
    /// Removes the files no receipt after `done` has lines in (their budget share goes back).
    pub(super) fn release_read(&mut self, done: &ReceiptKey) {
        for file in [&mut self.output, &mut self.input] {
            if file.as_ref().is_some_and(|f| f.read_up_to(done)) {
                *file = None;
            }
        }
    }
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

/// The error file's lines are counted only (docs/spec/processing-rules.md gives them no verdicts); for
/// the fallback they name receipts.
async fn count_error_file(
    file: &DownloadedFile,
    index: &mut BatchIndex,
    counters: &mut PlanCounters,
    fallback: bool,
) -> Result<(), FinishError> {
    let mut lines = AsyncLineReader::new(file.open().await.map_err(io("error file"))?);
    while let Some((_, line)) = lines.next_line().await.map_err(io("error file"))? {
        if fallback && let Some(r) = line.as_ref().ok().and_then(|b| peek_custom_id(b)) {
            index.add_named(r);
        }
        counters.error_lines.add(&parse_output_read(line));
    }
    Ok(())
}

/// Pass 1 over the input file: each request is placed with the receipts of its targets. A
/// request whose `### Targets` cannot be read (docs/spec/processing-rules.md, Inputs) marks its own
/// receipt (its `custom_id`) for the fallback: that receipt's PENDING labels are its targets,
/// and no other receipt's. Gathers the targets' result keys. Returns how many requests could
/// not be read.
async fn index_input(
    file: &DownloadedFile,
    index: &mut BatchIndex,
    keys: &mut SharedKeys,
    log: &LineLog,
) -> Result<u64, FinishError> {
    let mut unreadable = 0;
    let mut lines = AsyncLineReader::new(file.open().await.map_err(io("input file"))?);
    while let Some(line) = lines.next_located_line().await.map_err(io("input file"))? {
        let at = LineRef::of(&line);
        let (n, _, bytes) = line;
        match (parse_input_read(bytes), at) {
            (InputLine::Request(request), Some(at)) => {
                for t in &request.targets {
                    keys.add(&t.label);
                }
                index.add_input(at, &request);
            }
            (InputLine::Malformed(m), _) => {
                unreadable += 1;
                metrics::counter!("fleet_unreadable_requests_total", "kind" => m.kind.as_str())
                    .increment(1);
                match bytes.ok().and_then(peek_custom_id) {
                    Some(receipt) => {
                        warn!(
                            batch_id = %log.batch_id,
                            line = n,
                            kind = m.kind.as_str(),
                            detail = %m.detail,
                            receipt = %receipt.custom_id(),
                            "input-file request's targets cannot be read; its receipt's PENDING labels are taken as its targets"
                        );
                        index.add_unreadable(receipt);
                        // Its targets will be its PENDING labels, unknown here.
                        keys.forget();
                    }
                    None => warn!(
                        batch_id = %log.batch_id,
                        line = n,
                        kind = m.kind.as_str(),
                        detail = %m.detail,
                        "input-file line names no readable receipt; skipped"
                    ),
                }
            }
            _ => {}
        }
    }
    Ok(unreadable)
}

pub(super) fn io(what: &'static str) -> impl Fn(std::io::Error) -> FinishError {
    move |e| FinishError::Io {
        what,
        message: e.to_string(),
    }
}
