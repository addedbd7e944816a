//! The batch's files, downloaded within the download budget ([`super::budget`]) and removed
//! as soon as the apply no longer reads them.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::budget::{Reservation, Room, Wanted};
use super::index::io;
use super::{FinishError, Services};
use crate::model::ReceiptKey;
use crate::openai::BatchObject;
use crate::openai::client::{DownloadedFile, OpenAiError};
use crate::plan::Outcome;

/// A downloaded file and its share of the download budget: dropping it removes the file and
/// gives the share back.
pub(super) struct Download {
    pub(super) file: DownloadedFile,
    _room: Option<Reservation>,
}

/// The files of one apply.
pub(super) struct Downloads {
    pub(super) output: Option<Download>,
    pub(super) errors: Option<Download>,
    pub(super) input: Option<Download>,
}

/// Downloads the files `batch` has, within the budget: the output file when the outcome
/// applies output, the error and input files when OpenAI still has them.
pub(super) async fn download(
    services: &Services,
    batch_id: &str,
    batch: &BatchObject,
    outcome: Outcome,
    stop: &CancellationToken,
) -> Result<Downloads, FinishError> {
    let output_id = batch
        .output_file_id
        .as_deref()
        .filter(|_| outcome.applies_output());
    let wanted: Vec<Wanted<'_>> = [
        (output_id, false),
        (batch.error_file_id.as_deref(), true),
        (batch.input_file_id.as_deref(), true),
    ]
    .into_iter()
    .filter_map(|(id, optional)| id.map(|file_id| Wanted { file_id, optional }))
    .collect();
    let mut room = Room::reserve(
        services.options.download_budget.as_ref(),
        services.file_sizes.as_ref(),
        batch_id,
        &wanted,
        stop,
    )
    .await?;
    let mut got: Vec<Option<Download>> = Vec::with_capacity(wanted.len());
    let mut on_disk = 0;
    for (i, w) in wanted.iter().enumerate() {
        let file = if w.optional {
            download_optional(services, w.file_id).await?
        } else {
            Some(services.openai.download_file(w.file_id).await?)
        };
        got.push(match file {
            Some(file) => {
                on_disk += file.len();
                let room = room.take(i, file.len(), batch_id, on_disk)?;
                Some(Download { file, _room: room })
            }
            None => None,
        });
    }
    room.release_rest();
    let mut got = got.into_iter();
    let mut next = |present: bool| if present { got.next().flatten() } else { None };
    Ok(Downloads {
        output: next(output_id.is_some()),
        errors: next(batch.error_file_id.is_some()),
        input: next(batch.input_file_id.is_some()),
    })
}

/// A file that may legitimately be gone (input, error file): `None` only when OpenAI says it
/// no longer has it (404, 410). Any other failure (403, 5xx, a timeout, a broken download) is
/// an error of the apply, transient or permanent as the client classifies it, with nothing
/// written: falling back to "the PENDING labels of the receipts" on a refused or failing file
/// would reset labels another batch still has in flight (docs/spec/processing-rules.md, Inputs).
async fn download_optional(
    services: &Services,
    file_id: &str,
) -> Result<Option<DownloadedFile>, FinishError> {
    match services.openai.download_file(file_id).await {
        Ok(f) => Ok(Some(f)),
        Err(e) if is_gone(&e) => {
            warn!(file_id, error = %e, "the file is gone at OpenAI");
            Ok(None)
        }
        Err(e) => Err(FinishError::OpenAi(e)),
    }
}

/// OpenAI no longer has the file: the only answers the targets fall back on.
pub(super) fn is_gone(e: &OpenAiError) -> bool {
    matches!(crate::http::CallError::status(e), Some(404 | 410))
}

/// A downloaded file the chunks read lines from, removed (and its budget share given back) as
/// soon as the last receipt with lines in it has been read.
pub(super) struct ChunkFile {
    pub(super) read: Arc<std::fs::File>,
    /// The last receipt (in key order) with lines in the file.
    last: ReceiptKey,
    _download: Download,
}

impl ChunkFile {
    /// Opens `download` for positioned reads; `None` (and the file removed at once) when no
    /// receipt after `after` has lines in it.
    pub(super) fn open(
        download: Option<Download>,
        last: Option<&ReceiptKey>,
        after: Option<&ReceiptKey>,
        what: &'static str,
    ) -> Result<Option<ChunkFile>, FinishError> {
        let (Some(download), Some(last)) = (download, last) else {
            return Ok(None);
        };
        if after.is_some_and(|a| a >= last) {
            return Ok(None);
        }
        let read = std::fs::File::open(download.file.path()).map_err(io(what))?;
        Ok(Some(ChunkFile {
            read: Arc::new(read),
            last: last.clone(),
            _download: download,
        }))
    }

    /// Whether every receipt with lines in the file is at or before `done`.
    pub(super) fn read_up_to(&self, done: &ReceiptKey) -> bool {
        self.last <= *done
    }
}
