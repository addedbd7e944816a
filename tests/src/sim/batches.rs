//! Batches of any size from the scenario generator ([`crate::scenario`]), in a streaming way:
//! a batch of 50,000 requests is generated as consecutive pieces of a few hundred receipts
//! (the generator's cost grows with the square of a batch's size), each piece's labels and
//! vectors handed to a sink at once, its file lines appended to the batch's files. The same
//! seed gives the same batch, byte for byte.

use fleet_shared::model::{BatchSummary, ReceiptWordLabel};
use serde_json::{Map, Value};

use crate::openai::BatchSpec;
use crate::scenario::{self, Outcome, Rng, Shape};

/// Receipts per generated piece.
const PIECE: u32 = 250;

/// Receipt refs a BatchSummary keeps. A summary naming all 50,000 receipts of OpenAI's largest
/// batch would be about 3 MB, far past DynamoDB's 400 KB item limit (SimTable refuses it as
/// DynamoDB would), so no such summary can exist; the apply reads its targets from the input
/// file and uses the refs only when that file is gone. Big batches keep the first ones.
pub const MAX_SUMMARY_REFS: usize = 4_000;

/// One batch of a simulation: its shape.
#[derive(Debug, Clone)]
pub struct BatchPlan {
    pub receipts: u32,
    pub outcome: Outcome,
    /// Status checks answered `in_progress` before the batch ends (0: terminal at once).
    pub in_progress_polls: u32,
    /// Labels asked about per receipt (the generator's default is 5; the big batch
    /// judges about 7 words per receipt).
    pub targets_per_receipt: u32,
}

/// A generated batch: the summary, the OpenAI batch and its files. Labels and vectors went
/// to the sink.
#[derive(Debug)]
pub struct Generated {
    pub summary: BatchSummary,
    pub spec: BatchSpec,
    /// The status the batch ends in at OpenAI.
    pub final_status: String,
    /// File id → content.
    pub files: Vec<(String, bytes::Bytes)>,
    pub requests: u64,
}

/// What the generator hands out as it goes.
pub enum Piece<'a> {
    Label(&'a ReceiptWordLabel),
    Vector(&'a str, &'a Map<String, Value>),
}

/// Generates batch number `index` of `plan` from `rng`, moving every time by `shift` seconds.
pub fn generate(
    rng: &mut Rng,
    index: usize,
    plan: &BatchPlan,
    shift: i64,
    mut sink: impl FnMut(Piece<'_>),
) -> Generated {
    let mut left = plan.receipts.max(1);
    let mut base: Option<(BatchSummary, BatchSpec)> = None;
    let mut contents: Vec<(String, Vec<u8>)> = Vec::new();
    let (mut total, mut failed) = (0u64, 0u64);
    while left > 0 {
        let n = left.min(PIECE);
        left -= n;
        let mut piece = scenario::batch(
            rng,
            index,
            &Shape {
                receipts: n,
                outcome: plan.outcome,
                in_progress_polls: plan.in_progress_polls.max(1),
                targets_per_receipt: plan.targets_per_receipt.max(1),
                ..Shape::default()
            },
        );
        piece.shift_times(shift);
        for l in &piece.labels {
            sink(Piece::Label(l));
        }
        for (id, meta) in &piece.vectors {
            sink(Piece::Vector(id, meta));
        }
        total += piece.spec.request_counts.total;
        failed += piece.spec.request_counts.failed;
        for (id, content) in piece.files {
            match contents.iter_mut().find(|(f, _)| *f == id) {
                Some((_, all)) => all.extend_from_slice(content.as_bytes()),
                None => contents.push((id, content.into_bytes())),
            }
        }
        match &mut base {
            None => base = Some((piece.summary, piece.spec)),
            Some((summary, _)) => summary.receipt_refs.extend(piece.summary.receipt_refs),
        }
    }
    let (mut summary, spec) = base.expect("at least one piece");
    summary.receipt_refs.truncate(MAX_SUMMARY_REFS);
    let final_status = spec
        .steps
        .last()
        .map(|(s, _)| s.clone())
        .unwrap_or_else(|| "completed".into());
    let mut spec = spec.with_request_counts(total, total - failed, failed);
    let mut steps: Vec<(String, u32)> = Vec::new();
    if plan.outcome != Outcome::Failed && plan.in_progress_polls > 0 {
        steps.push(("in_progress".into(), plan.in_progress_polls));
        steps.push(("finalizing".into(), 1));
    }
    steps.push((final_status.clone(), 1));
    spec.steps = steps;
    Generated {
        summary,
        spec,
        final_status,
        files: contents
            .into_iter()
            .map(|(id, c)| (id, bytes::Bytes::from(c)))
            .collect(),
        requests: total,
    }
}
