//! Finishing one batch: load its summary, check it at OpenAI, and apply a terminal batch by
//! docs/spec/processing-rules.md. The decisions come from [`crate::plan`] (pure); this module only reads
//! what the plan needs and carries out its writes, in the prescribed order, the summary last.
//!
//! Every write is idempotent or conditional on the state it was decided from, so an apply cut
//! off anywhere (a crash, a lost lease, a [`WriteBudget`] in a drill) and run again ends in the
//! state of one uninterrupted run.
//!
//! Memory does not grow with the batch's files: a first pass indexes where each receipt's
//! lines are, then the batch is planned and written a chunk of receipts at a time
//! ([`ApplyOptions::receipts_per_chunk`]); see `apply.rs` for why that decides exactly what a
//! plan of the whole batch would, and why two applies overlapping for a moment end alike.
//!
//! Progress is kept: after each chunk the apply records how far it got on the batch's
//! fleet-state item, while it holds the batch's lease, and a later handling resumes there
//! (`resume.rs`): a batch of any size finishes however many handlings it takes. Disk is kept
//! too: the downloads of all applies of a process share one [`DownloadBudget`], and each file
//! is removed as soon as the apply has read it to its end.

mod apply;
mod budget;
mod chunk;
mod downloads;
mod error;
mod index;
mod report;
mod result_keys;
mod resume;
mod writes;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use budget::{DownloadBudget, FileSizes, Reservation};
pub use error::FinishError;
pub use report::{ApplyReport, WriteCounts};

use crate::model::{BatchStatus, BatchSummary, BatchType};
use crate::openai::BatchObject;
use crate::openai::client::OpenAiClient;
use crate::pinecone::client::PineconeClient;
use crate::store::{Store, StoreError};

/// How an apply spreads its writes.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Label writes (status changes, corrections, resets) in flight at once.
    pub label_concurrency: usize,
    /// Label Queries in flight at once (a chunk's reads, and the verification's after its
    /// vector writes).
    pub read_concurrency: usize,
    /// Words per Pinecone merge call (fetch + updates).
    pub vector_chunk: usize,
    /// Malformed or failed output lines logged one by one per batch; the rest are counted.
    pub max_logged_lines: usize,
    /// Receipts planned and written together: what is in memory at once is two chunks' targets,
    /// labels, journal rows, output lines and writes (a receipt has a few dozen labels). Each
    /// chunk's vector writes end with a few round trips Pinecone waits through (the first
    /// fetch, the verification reads, the result rows, the cursor), so larger chunks keep the
    /// update rate closer to its limit: in the simulation's 50,000-request batch, 50 receipts
    /// reached 89.6 % of the limit, 100 reached 92 %, and 200 fell back to 85.5 % (a bigger
    /// chunk's journal and result rows burst past the batch partition's write throughput and
    /// were throttled). Parse + plan per chunk is faster at 50 than at 100 (0.64 against 0.56
    /// of serde_json's speed in `tests/benches/finish.rs`, mimalloc as in the worker), but it
    /// runs beside the previous chunk's vector writes, where it costs no time.
    pub receipts_per_chunk: usize,
    /// Fails the apply before write number `budget + 1`: the crash drill's fault injection.
    pub write_budget: Option<Arc<WriteBudget>>,
    /// Disk the downloads of this process's applies may take at once (`DOWNLOAD_BUDGET_MB`),
    /// shared by every apply (clone the `Arc`); `None`: no limit. See [`DownloadBudget`].
    pub download_budget: Option<Arc<DownloadBudget>>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            label_concurrency: 48,
            read_concurrency: 32,
            vector_chunk: 50,
            max_logged_lines: 20,
            receipts_per_chunk: 100,
            write_budget: None,
            download_budget: None,
        }
    }
}

/// A number of writes an apply may still make (crash drills: "fail after the k-th write").
#[derive(Debug)]
pub struct WriteBudget(AtomicUsize);

impl WriteBudget {
    pub fn new(writes: usize) -> Arc<Self> {
        Arc::new(WriteBudget(AtomicUsize::new(writes)))
    }

    fn take(&self) -> bool {
        self.0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

/// The three services a batch touches, and how to apply.
#[derive(Clone)]
pub struct Services {
    pub store: Store,
    pub openai: OpenAiClient,
    pub pinecone: PineconeClient,
    pub options: ApplyOptions,
    /// How the download budget learns a file's size before downloading it; `None`: it does
    /// not (see [`FileSizes`]).
    pub file_sizes: Option<Arc<dyn FileSizes>>,
}

impl Services {
    pub fn new(store: Store, openai: OpenAiClient, pinecone: PineconeClient) -> Self {
        Services {
            store,
            openai,
            pinecone,
            options: ApplyOptions::default(),
            file_sizes: None,
        }
    }

    /// The BatchSummary of `batch_id`. Unknown, undecodable or not a completion batch:
    /// permanent errors (a message naming it goes to the dead-letter queue).
    pub async fn load_summary(&self, batch_id: &str) -> Result<BatchSummary, FinishError> {
        let summary = match self.store.batch_summary(batch_id).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(FinishError::BatchUnknown(batch_id.to_owned())),
            Err(StoreError::Decode(e)) => {
                return Err(FinishError::BadSummary {
                    batch_id: batch_id.to_owned(),
                    problem: e.to_string(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        if summary.batch_type != BatchType::Completion {
            return Err(FinishError::BadSummary {
                batch_id: batch_id.to_owned(),
                problem: format!("a {} batch, not COMPLETION", summary.batch_type),
            });
        }
        Ok(summary)
    }

    /// The batch as OpenAI sees it now.
    pub async fn check(&self, summary: &BatchSummary) -> Result<BatchObject, FinishError> {
        Ok(self.openai.get_batch(&summary.openai_batch_id).await?)
    }

    /// Asks OpenAI to cancel a batch that overran its window; it is then handled as it ends.
    pub async fn cancel(&self, summary: &BatchSummary) -> Result<BatchObject, FinishError> {
        Ok(self.openai.cancel_batch(&summary.openai_batch_id).await?)
    }

    /// Applies a batch OpenAI reports terminal. A summary no longer PENDING was finished by an
    /// earlier run: nothing is written (`already_done`). `stop` cancels the apply before its
    /// next write (lease lost, deadline, shutdown).
    ///
    /// `lease_owner` must hold the batch's lease (`Store::acquire_lease`): the apply checks it
    /// before its first write and records its progress after each chunk only while it still
    /// does ([`FinishError::LeaseLost`] otherwise, a transient error: nothing more is written,
    /// and the new holder resumes after the last chunk recorded). A handling that finds
    /// progress recorded by an earlier one resumes after it.
    pub async fn apply(
        &self,
        summary: &BatchSummary,
        batch: &BatchObject,
        stop: &tokio_util::sync::CancellationToken,
        lease_owner: &str,
    ) -> Result<ApplyReport, FinishError> {
        if summary.status != BatchStatus::Pending {
            return Ok(ApplyReport::already_done(summary, batch));
        }
        apply::run(self, summary, batch, stop, lease_owner).await
    }
}
