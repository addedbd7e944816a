//! What a plan is computed from, and the helpers that gather it.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::time::from_unix_seconds;
use crate::model::{
    BatchStatus, CompletionBatchVerdict, LabelKey, ReceiptKey, ReceiptWordLabel, ValidationStatus,
};
use crate::openai::{BatchObject, OpenAiStatus};

use super::writes::SummaryUpdate;

/// Everything the rules look at besides the output lines.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    /// The fleet's batch id (the BatchSummary's), not OpenAI's.
    pub batch_id: String,
    pub batch: &'a BatchObject,
    /// The labels the batch asked about: from the input file, or [`fallback_targets`].
    pub targets: BTreeSet<LabelKey>,
    /// The current labels of every receipt the batch touches ([`receipts_to_load`]).
    pub labels: Vec<ReceiptWordLabel>,
    /// CompletionBatchVerdict rows already in the table for this batch (an interrupted run).
    /// Rows of other batches are ignored and counted.
    pub journal: Vec<CompletionBatchVerdict>,
}

/// How the OpenAI batch ended, as far as the rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Outcome {
    /// validating, in_progress, finalizing, cancelling, or a status OpenAI may add later.
    NotTerminal,
    Completed,
    Expired,
    Cancelled,
    Failed,
}

impl Outcome {
    pub fn of(status: &OpenAiStatus) -> Self {
        match status {
            OpenAiStatus::Completed => Outcome::Completed,
            OpenAiStatus::Expired => Outcome::Expired,
            OpenAiStatus::Cancelled => Outcome::Cancelled,
            OpenAiStatus::Failed => Outcome::Failed,
            OpenAiStatus::Validating
            | OpenAiStatus::InProgress
            | OpenAiStatus::Finalizing
            | OpenAiStatus::Cancelling
            | OpenAiStatus::Unknown(_) => Outcome::NotTerminal,
        }
    }

    /// The BatchSummary's final status; also the `status` of the CompletionBatchResult rows.
    pub fn batch_status(self) -> Option<BatchStatus> {
        match self {
            Outcome::NotTerminal => None,
            Outcome::Completed => Some(BatchStatus::Completed),
            Outcome::Expired => Some(BatchStatus::Expired),
            Outcome::Cancelled => Some(BatchStatus::Cancelled),
            Outcome::Failed => Some(BatchStatus::Failed),
        }
    }

    /// Whether output lines can carry verdicts (a failed batch has no output).
    pub fn applies_output(self) -> bool {
        matches!(
            self,
            Outcome::Completed | Outcome::Expired | Outcome::Cancelled
        )
    }
}

/// The BatchSummary's last write for a batch that ended with `outcome` (`None` while it runs),
/// with the output file id when there is one. The same for a whole batch and for every chunk
/// of it: the apply writes it once, after all chunks.
pub fn summary_update(outcome: Outcome, output_file_id: Option<String>) -> Option<SummaryUpdate> {
    outcome.batch_status().map(|status| SummaryUpdate {
        status,
        result_file_id: output_file_id,
    })
}

/// The timestamp every row of this batch carries, and the batch field it came from.
///
/// The rules want the outcome's own timestamp (`completed_at`, `expired_at`, `cancelled_at`), so
/// that a re-run writes identical rows; the wall clock would break that. OpenAI sets it on every
/// terminal batch, but a missing one must not stop the batch, so the fallback is the next field
/// that is set, in a fixed order, and finally the Unix epoch: still the same on every run.
pub(crate) fn batch_timestamp(
    batch: &BatchObject,
    outcome: Outcome,
) -> (DateTime<Utc>, &'static str) {
    let own = match outcome {
        Outcome::Completed | Outcome::NotTerminal => ("completed_at", batch.completed_at),
        Outcome::Expired => ("expired_at", batch.expired_at),
        Outcome::Cancelled => ("cancelled_at", batch.cancelled_at),
        Outcome::Failed => ("failed_at", batch.failed_at),
    };
    let fallbacks = [
        own,
        ("completed_at", batch.completed_at),
        ("expired_at", batch.expired_at),
        ("cancelled_at", batch.cancelled_at),
        ("failed_at", batch.failed_at),
        ("finalizing_at", batch.finalizing_at),
        ("in_progress_at", batch.in_progress_at),
        ("created_at", batch.created_at),
    ];
    fallbacks
        .into_iter()
        .find_map(|(field, secs)| Some((from_unix_seconds(secs?)?, field)))
        .unwrap_or((DateTime::UNIX_EPOCH, "none"))
}

/// The targets when the input file can no longer be read: the PENDING labels of the receipts
/// named by the summary's `receipt_refs` and by the output's (and error file's) `custom_id`s
/// (collect those with [`crate::parse::peek_custom_id`] in a first pass). PENDING labels of
/// other receipts are never included: they may belong to another batch in flight.
pub fn fallback_targets<'a>(
    receipts: &BTreeSet<ReceiptKey>,
    labels: impl IntoIterator<Item = &'a ReceiptWordLabel>,
) -> BTreeSet<LabelKey> {
    labels
        .into_iter()
        .filter(|l| {
            l.validation_status == ValidationStatus::Pending
                && receipts.contains(&l.key.word.receipt)
        })
        .map(|l| l.key.clone())
        .collect()
}

/// The receipts whose labels the plan needs: those of the targets and of the journal's rows
/// (a re-run whose targets came from the fallback may no longer list a label it already set).
pub fn receipts_to_load(
    targets: &BTreeSet<LabelKey>,
    journal: &[CompletionBatchVerdict],
) -> BTreeSet<ReceiptKey> {
    targets
        .iter()
        .chain(journal.iter().map(|j| &j.label))
        .map(|k| k.word.receipt.clone())
        .collect()
}
