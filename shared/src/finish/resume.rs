//! Resuming an apply where an earlier handling of the same batch stopped.
//!
//! A batch of OpenAI's maximum size takes an hour or more to apply (Pinecone's update rate is
//! the floor), and a handling can end at any time: a deploy, a scale-in, a lost lease. So after
//! each chunk's writes the apply records its cursor (the last receipt done) and what the done
//! chunks counted on the batch's fleet-state item ([`crate::store::Store::record_apply_cursor`]),
//! conditional on still holding the lease; a later handling skips every receipt up to the
//! cursor. It still downloads and indexes the files (they are not kept between handlings, and
//! the index pass is cheap next to the writes), but it neither reads nor writes anything of the
//! done receipts: their labels, journal rows and vectors are not fetched again.
//!
//! Why skipping is safe: receipts are applied in key order and a chunk's writes are all done
//! before its cursor is recorded, so every receipt up to the cursor ended as one uninterrupted
//! run would leave it; a chunk cut off part-way is planned again from the table as it is
//! (docs/spec/processing-rules.md: re-runs). The summary, written once after the last chunk, is what
//! marks the batch done; once it is, the cursor is never read again (an apply of a summary that
//! is no longer PENDING writes nothing).
//!
//! The counts recorded beside the cursor are the done chunks' parts of the report, so the
//! report of the handling that finishes the batch adds up the whole batch. A cursor recorded for
//! another outcome of the batch (which OpenAI never changes once terminal) or that no longer
//! decodes is ignored with a warning: starting over is always correct, only slower.

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::report::ApplyReport;
use super::writes::Gate;
use super::{FinishError, Services};
use crate::model::ReceiptKey;
use crate::openai::BatchObject;
use crate::store::CursorWrite;

/// Version of the `apply_counts` JSON; another version is ignored (the apply starts over).
const COUNTS_VERSION: u32 = 1;

/// The JSON kept beside the cursor.
#[derive(Debug, Serialize, Deserialize)]
struct Counts {
    v: u32,
    /// The OpenAI status and output file the done chunks were applied from.
    openai_status: String,
    output_file_id: Option<String>,
    /// Receipts done (up to and including the cursor).
    receipts: u64,
    /// The done chunks' parts of the report.
    done: ApplyReport,
    /// The chunk after the cursor whose label writes were done when the cursor was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ahead: Option<Ahead>,
}

/// What the first stage of the chunk after the cursor counted, recorded with the cursor (see
/// `Pass2::run` in `apply.rs`): a handling stopped there has changed that chunk's labels, and
/// the next handling, which finds them changed, reports these counts for them instead of its
/// own (`already` where one uninterrupted run counts `applied`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Ahead {
    /// The chunk's last receipt (`custom_id`): the counts are used only for the same chunk.
    pub(super) last: String,
    /// Its first stage's part of the report (plan counters included).
    pub(super) part: ApplyReport,
}

/// Where this handling starts.
#[derive(Debug, Default)]
pub(super) struct Resume {
    /// The last receipt an earlier handling finished; `None`: start at the first.
    pub(super) after: Option<ReceiptKey>,
    /// Receipts done by earlier handlings.
    pub(super) receipts: u64,
    /// What the done chunks counted.
    pub(super) done: ApplyReport,
    /// The next chunk's first stage, done by an earlier handling.
    pub(super) ahead: Option<Ahead>,
}

/// One handling's view of its batch's cursor.
pub(super) struct Cursor<'a> {
    pub(super) services: &'a Services,
    pub(super) batch_id: &'a str,
    pub(super) batch: &'a BatchObject,
    /// The lease owner this handling writes as.
    pub(super) owner: &'a str,
}

impl Cursor<'_> {
    /// Reads the cursor, and checks that `owner` holds the batch's lease before anything is
    /// written (a handling that lost it before starting writes nothing).
    pub(super) async fn load(&self) -> Result<Resume, FinishError> {
        let Cursor {
            services,
            batch_id,
            batch,
            owner,
        } = *self;
        let state = services.store.apply_cursor(batch_id).await?;
        if state.lease_owner.as_deref() != Some(owner) {
            return Err(FinishError::LeaseLost {
                batch_id: batch_id.to_owned(),
                holder: state.lease_owner,
            });
        }
        let Some(cursor) = state.last_receipt else {
            return Ok(Resume::default());
        };
        let counts = state.counts.as_deref().map(serde_json::from_str::<Counts>);
        let after = ReceiptKey::parse_custom_id(&cursor);
        match (after, counts) {
            (Ok(after), Some(Ok(counts)))
                if counts.v == COUNTS_VERSION
                    && counts.openai_status == batch.status.to_string()
                    && counts.output_file_id == batch.output_file_id =>
            {
                info!(
                    batch_id,
                    after = %cursor,
                    receipts_done = counts.receipts,
                    chunks_done = counts.done.chunks,
                    "resuming the apply after the last receipt done"
                );
                Ok(Resume {
                    after: Some(after),
                    receipts: counts.receipts,
                    done: counts.done,
                    ahead: counts.ahead,
                })
            }
            (after, counts) => {
                warn!(
                    batch_id,
                    cursor = %cursor,
                    cursor_error = after.err().map(|e| e.to_string()),
                    counts_error = match &counts {
                        None => Some("missing".to_owned()),
                        Some(Err(e)) => Some(e.to_string()),
                        Some(Ok(_)) => None,
                    },
                    "apply cursor of another outcome or unreadable; starting over"
                );
                Ok(Resume::default())
            }
        }
    }

    /// Records that every receipt up to `last` is done, with the counts of the done chunks and
    /// of the next chunk's first stage if it is done; a gated write (it counts in the drill's
    /// budget and obeys the stop token). A lease no longer ours ends the handling:
    /// [`FinishError::LeaseLost`], nothing more is written.
    pub(super) async fn record(
        &self,
        gate: &Gate<'_>,
        last: &ReceiptKey,
        receipts: u64,
        done: &ApplyReport,
        ahead: Option<Ahead>,
    ) -> Result<(), FinishError> {
        let Cursor {
            services,
            batch_id,
            batch,
            owner,
        } = *self;
        gate.pass()?;
        let counts = Counts {
            v: COUNTS_VERSION,
            openai_status: batch.status.to_string(),
            output_file_id: batch.output_file_id.clone(),
            receipts,
            done: done.clone(),
            ahead,
        };
        let json = serde_json::to_string(&counts).map_err(|e| FinishError::Io {
            what: "the apply counts",
            message: e.to_string(),
        })?;
        match services
            .store
            .record_apply_cursor(batch_id, owner, &last.custom_id(), &json)
            .await?
        {
            CursorWrite::Recorded => Ok(()),
            CursorWrite::LeaseLost { owner: holder } => {
                warn!(
                    batch_id,
                    ?holder,
                    "the lease passed to another worker; stopping the apply"
                );
                Err(FinishError::LeaseLost {
                    batch_id: batch_id.to_owned(),
                    holder,
                })
            }
        }
    }
}
