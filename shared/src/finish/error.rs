//! What can stop a batch from finishing, classified for the worker: retry later (transient),
//! dead-letter (permanent), or a stop it asked for.

use std::time::Duration;

use crate::error_class::{DeploymentCause, ErrorClass};
use crate::openai::client::OpenAiError;
use crate::pinecone::client::PineconeError;
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
}

impl FinishError {
    /// What the worker does about it: retry, wait for the deployment to be fixed, or
    /// dead-letter.
    pub fn class(&self) -> ErrorClass {
        match self {
            FinishError::OpenAi(e) if e.status() == Some(401) || e.status() == Some(403) => {
                ErrorClass::Deployment(DeploymentCause::OpenAiKey)
            }
            FinishError::Pinecone(e) if e.status() == Some(401) || e.status() == Some(403) => {
                ErrorClass::Deployment(DeploymentCause::PineconeKey)
            }
            FinishError::Store(e) => e.class(),
            e if e.is_transient() => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        }
    }

    pub fn is_transient(&self) -> bool {
        match self {
            FinishError::BatchUnknown(_)
            | FinishError::BadSummary { .. }
            | FinishError::DownloadTooLarge { .. } => false,
            FinishError::OpenAi(e) => e.is_transient(),
            FinishError::Pinecone(e) => e.is_transient(),
            FinishError::Store(e) => e.is_transient(),
            FinishError::Io { .. }
            | FinishError::Stopped { .. }
            | FinishError::LeaseLost { .. } => true,
        }
    }

    /// A bounded name for metrics and the dead-letter `reason` attribute.
    pub fn reason(&self) -> &'static str {
        match self {
            FinishError::BatchUnknown(_) => "batch_unknown",
            FinishError::BadSummary { .. } => "bad_summary",
            FinishError::OpenAi(e) if e.is_not_found() => "openai_batch_not_found",
            FinishError::OpenAi(e) => match e.class() {
                "unauthorized" => "openai_unauthorized",
                "rate_limited" => "openai_rate_limited",
                "server_error" => "openai_server_error",
                "truncated" => "openai_truncated_download",
                _ => "openai_error",
            },
            FinishError::Pinecone(e) => match e.class() {
                "rate_limited" => "pinecone_rate_limited",
                "unauthorized" => "pinecone_unauthorized",
                _ => "pinecone_error",
            },
            FinishError::Store(StoreError::Decode(_)) => "bad_item",
            FinishError::Store(_) => "dynamodb_error",
            FinishError::Io { .. } => "io_error",
            FinishError::Stopped { .. } => "stopped",
            FinishError::LeaseLost { .. } => "lease_lost",
            FinishError::DownloadTooLarge { .. } => "download_too_large",
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
