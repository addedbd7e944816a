//! How a batch ended, as far as the rules care, and the two things that follow from it alone:
//! the timestamp every row carries and the BatchSummary's last write.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::model::BatchStatus;
use crate::model::time::from_unix_seconds;
use crate::openai::{BatchObject, OpenAiStatus};

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

/// The BatchSummary's last write: conditional on the summary still being PENDING.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SummaryUpdate {
    pub status: BatchStatus,
    /// The output file id, when the batch has one.
    pub result_file_id: Option<String>,
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
