//! What can stop a batch from finishing, classified for the worker: retry later (transient),
//! wait for the deployment to be fixed, dead-letter (permanent), or a stop it asked for.

use std::time::Duration;

use crate::error_class::ErrorClass;
use crate::http::CallError as _;
use crate::openai::OpenAiError;
use crate::pinecone::PineconeError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum FinishError {
    /// No BatchSummary for this id: nothing to apply, ever.
    #[error("batch {0} is unknown to DynamoDB")]
    BatchUnknown(String),
    /// The summary exists but is not something this fleet handles.
    #[error("batch {batch_id}: {problem}")]
    BadSummary { batch_id: String, problem: String },
    #[error("OpenAI: {0}")]
    OpenAi(#[from] OpenAiError),
    #[error("Pinecone: {0}")]
    Pinecone(#[from] PineconeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("reading {what}: {message}")]
    Io { what: &'static str, message: String },
    /// The apply was told to stop (lease lost, deadline, shutdown) or hit a drill's write
    /// budget; everything written so far is safe to write again.
    #[error("apply stopped before write {writes}: {why}")]
    Stopped { writes: usize, why: &'static str },
    /// The batch's files are bigger than the whole download budget: waiting cannot help.
    #[error(
        "batch {batch_id}: its files need {} MiB of disk, more than the download budget of {} MiB (DOWNLOAD_BUDGET_MB); raise the budget, with the volume it lives on",
        needed.div_ceil(1 << 20),
        budget >> 20
    )]
    DownloadTooLarge {
        batch_id: String,
        needed: u64,
        budget: u64,
    },
    /// The batch's lease is no longer this handling's (another worker took it over): the apply
    /// stopped without writing anything more; the holder carries on from the recorded cursor.
    #[error("batch {batch_id}: the lease passed to another worker ({}); apply stopped", holder.as_deref().unwrap_or("no holder"))]
    LeaseLost {
        batch_id: String,
        holder: Option<String>,
    },
    /// Other applies kept adding labels to words whose vectors this apply wrote, through every
    /// round of verification: its last write is not known to hold them all, so the batch is
    /// not finished; a later handling writes those words again (see `crate::pinecone::merge`).
    #[error(
        "batch {batch_id}: the vector metadata of {words} words still lacked labels after {rounds} rounds of repair"
    )]
    VectorsUnsettled {
        batch_id: String,
        words: usize,
        rounds: usize,
    },
}

impl FinishError {
    /// What the worker does about it: retry, wait for the deployment to be fixed, or
    /// dead-letter.
    pub fn class(&self) -> ErrorClass {
        match self {
            FinishError::BatchUnknown(_)
            | FinishError::BadSummary { .. }
            | FinishError::DownloadTooLarge { .. } => ErrorClass::Permanent,
            FinishError::OpenAi(e) => e.error_class(),
            FinishError::Pinecone(e) => e.error_class(),
            FinishError::Store(e) => e.class(),
            FinishError::Io { .. }
            | FinishError::Stopped { .. }
            | FinishError::LeaseLost { .. }
            | FinishError::VectorsUnsettled { .. } => ErrorClass::Transient,
        }
    }

    /// Worth handling again later: transient, or an error of the deployment (which says nothing
    /// about the batch and must never dead-letter it). Only permanent errors are not.
    pub fn is_transient(&self) -> bool {
        self.class().is_retryable()
    }

    /// A bounded name for metrics and the dead-letter `reason` attribute.
    pub fn reason(&self) -> &'static str {
        match self {
            FinishError::BatchUnknown(_) => "batch_unknown",
            FinishError::BadSummary { .. } => "bad_summary",
            FinishError::OpenAi(e) => e.reason(),
            FinishError::Pinecone(e) => e.reason(),
            FinishError::Store(StoreError::Decode(_)) => "bad_item",
            FinishError::Store(_) => "dynamodb_error",
            FinishError::Io { .. } => "io_error",
            FinishError::Stopped { .. } => "stopped",
            FinishError::LeaseLost { .. } => "lease_lost",
            FinishError::DownloadTooLarge { .. } => "download_too_large",
            FinishError::VectorsUnsettled { .. } => "vectors_unsettled",
        }
    }

    /// A server's own suggestion of when to try again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FinishError::OpenAi(e) => e.retry_after(),
            FinishError::Pinecone(e) => e.retry_after(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_class::DeploymentCause;
    use crate::http::AnswerMeta;
    use crate::openai::{ApiErrorDetail, Endpoint};
    use crate::pinecone::Op;

    fn openai(endpoint: Endpoint, status: u16, code: Option<&str>) -> FinishError {
        FinishError::OpenAi(OpenAiError::Api {
            endpoint,
            detail: Box::new(ApiErrorDetail {
                code: code.map(str::to_owned),
                ..ApiErrorDetail::default()
            }),
            answer: AnswerMeta::status(status),
        })
    }

    fn pinecone(status: u16) -> FinishError {
        FinishError::Pinecone(PineconeError::Api {
            op: Op::Update,
            message: String::new(),
            answer: AnswerMeta::status(status),
        })
    }

    #[test]
    fn classes_are_the_clients_own() {
        use ErrorClass::{Deployment, Permanent, Transient};
        let rows = [
            (
                openai(Endpoint::GetBatch, 401, None),
                Deployment(DeploymentCause::OpenAiKey),
                "openai_unauthorized",
            ),
            (
                openai(Endpoint::CancelBatch, 403, None),
                Deployment(DeploymentCause::OpenAiKey),
                "openai_unauthorized",
            ),
            (
                openai(Endpoint::DownloadFile, 403, None),
                Transient,
                "openai_error",
            ),
            (
                openai(Endpoint::GetBatch, 429, Some("insufficient_quota")),
                Deployment(DeploymentCause::OpenAiQuota),
                "openai_insufficient_quota",
            ),
            (
                openai(Endpoint::GetBatch, 429, None),
                Transient,
                "openai_rate_limited",
            ),
            (
                openai(Endpoint::GetBatch, 404, None),
                Permanent,
                "openai_batch_not_found",
            ),
            (
                pinecone(401),
                Deployment(DeploymentCause::PineconeKey),
                "pinecone_unauthorized",
            ),
            (
                pinecone(403),
                Deployment(DeploymentCause::PineconeKey),
                "pinecone_unauthorized",
            ),
            (pinecone(429), Transient, "pinecone_rate_limited"),
            (pinecone(400), Permanent, "pinecone_error"),
            (
                FinishError::BatchUnknown("b".into()),
                Permanent,
                "batch_unknown",
            ),
            (
                FinishError::Stopped {
                    writes: 3,
                    why: "lease lost",
                },
                Transient,
                "stopped",
            ),
            (
                FinishError::VectorsUnsettled {
                    batch_id: "b".into(),
                    words: 1,
                    rounds: 4,
                },
                Transient,
                "vectors_unsettled",
            ),
        ];
        for (error, class, reason) in rows {
            assert_eq!(error.class(), class, "{error}");
            assert_eq!(error.reason(), reason, "{error}");
            // Only permanent errors may dead-letter.
            assert_eq!(error.is_transient(), class != Permanent, "{error}");
        }
    }
}
