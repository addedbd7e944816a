//! What a plan is computed from, and the helpers that gather it.

use std::collections::BTreeSet;

use crate::model::{
    CompletionBatchVerdict, LabelKey, ReceiptKey, ReceiptWordLabel, ValidationStatus,
};
use crate::openai::BatchObject;

/// Everything the rules look at besides the output lines.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    /// The fleet's batch id (the BatchSummary's), not OpenAI's.
    pub batch_id: std::sync::Arc<str>,
    pub batch: &'a BatchObject,
    /// The labels the batch asked about: from the input file, or [`fallback_targets`].
    pub targets: BTreeSet<LabelKey>,
    /// The current labels of every receipt the batch touches ([`receipts_to_load`]).
    pub labels: Vec<ReceiptWordLabel>,
    /// CompletionBatchVerdict rows already in the table for this batch (an interrupted run).
    /// Rows of other batches are ignored and counted.
    pub journal: Vec<CompletionBatchVerdict>,
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
