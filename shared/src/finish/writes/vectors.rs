//! A chunk's vector step: write each word's lists derived from the table, then verify the
//! writes against the table and repair, so that Pinecone's eventual consistency never loses a
//! label (the design and why it holds: [`crate::pinecone::merge`]).
//!
//! 1. Each word's change is this batch's verdicts united with the labels the table held for
//!    the word when the chunk read it ([`Plan::word_labels`]: the chunk's own read, reused; no
//!    extra request). Words whose verdicts an earlier run had already applied (their status
//!    changes found in place) are rewritten even when the fetch shows every label: that run
//!    may have written them and been cut off before verifying.
//! 2. The merge fetches, merges and writes ([`crate::pinecone::PineconeClient::apply_merges`]),
//!    one gated call per `vector_chunk` words, as before.
//! 3. The receipts of the words written are read again (one strongly consistent Query each);
//!    a list written that does not hold every label the table now derives for it is written
//!    again as the union, and verified again; at most [`REPAIR_ROUNDS`] rounds of repairs, each one
//!    gated write, then [`FinishError::VectorsUnsettled`] (transient: the batch is handled
//!    again later). Words not written (unchanged, missing) need no verification: only a write
//!    can drop a label.

use std::collections::{BTreeMap, BTreeSet};

use futures::{StreamExt, TryStreamExt, stream};
use tracing::{info, warn};

use super::Gate;
use crate::finish::report::ApplyReport;
use crate::finish::{FinishError, Services};
use crate::model::{ReceiptKey, WordKey};
use crate::pinecone::merge::{LabelSets, Metadata, MetadataChange, repair_lists, word_label_sets};
use crate::plan::Plan;

/// Rounds of repairs before the apply gives up for now. A round is needed only when another
/// apply wrote labels of the same words between this one's write and its verification read;
/// four in a row means several applies are finishing the same words at this very moment, and
/// handling the batch again a little later is cheaper than spinning.
pub(in crate::finish) const REPAIR_ROUNDS: usize = 4;

/// Merge calls (a fetch, then paced updates) of one chunk in flight at once.
const MERGES_AT_ONCE: usize = 3;

/// Writes the vectors of `plan`'s merges, verifies and repairs them. `rewrite`: words whose
/// verdicts an earlier run of this batch had already applied.
pub(in crate::finish) async fn write_vectors(
    services: &Services,
    gate: &Gate<'_>,
    plan: &Plan,
    rewrite: &BTreeSet<WordKey>,
    report: &mut ApplyReport,
) -> Result<(), FinishError> {
    // One change per vector (merge calls may run at once: two must never hold the same id).
    let mut changes: BTreeMap<String, MetadataChange> = BTreeMap::new();
    for m in &plan.vector_merges {
        let mut change = MetadataChange {
            add_valid: m.valid_labels.to_strings(),
            add_invalid: m.invalid_labels.to_strings(),
            proposed_label: m.proposed_label.as_ref().map(String::from),
            rewrite: rewrite.contains(&m.word),
        };
        if let Some(sets) = plan.word_labels.get(&m.word) {
            change.add_sets(sets);
        }
        match changes.entry(m.vector_id()) {
            std::collections::btree_map::Entry::Occupied(mut earlier) => {
                earlier.get_mut().absorb(change);
            }
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(change);
            }
        }
    }
    let changes: Vec<(String, MetadataChange)> = changes.into_iter().collect();
    // Merge calls several at a time: one's fetch while the others' updates are paced, so the
    // update rate has no gap per call (the pacing is the process's, shared by both).
    let reports: Vec<_> = stream::iter(changes.chunks(services.options.vector_chunk.max(1)))
        .map(|chunk| async move {
            gate.pass()?;
            Ok::<_, FinishError>(services.pinecone.apply_merges(chunk.to_vec()).await?)
        })
        .buffered(MERGES_AT_ONCE)
        .try_collect()
        .await?;
    let mut written = BTreeMap::new();
    for r in reports {
        report.vectors_updated += r.updated;
        report.vectors_unchanged += r.unchanged;
        report.vectors_missing += r.missing;
        report.vectors_rewritten += r.rewritten;
        report.pinecone_rate_limited += r.rate_limited;
        if !r.missing_ids.is_empty() {
            warn!(batch_id = %plan.batch_id, missing = r.missing, first = %r.missing_ids[0], "word vectors missing from the index");
        }
        written.extend(r.written);
    }

    let by_id: BTreeMap<String, &WordKey> = plan
        .vector_merges
        .iter()
        .map(|m| (m.vector_id(), &m.word))
        .collect();
    let pending: BTreeMap<WordKey, LabelSets> = written
        .into_iter()
        .filter_map(|(id, sets)| by_id.get(id.as_str()).map(|w| ((*w).clone(), sets)))
        .collect();
    verify(services, gate, &plan.batch_id, pending, report).await
}

/// Reads the written words' labels again until every list written holds every label the table
/// derives for it (see the module's doc).
async fn verify(
    services: &Services,
    gate: &Gate<'_>,
    batch_id: &str,
    mut pending: BTreeMap<WordKey, LabelSets>,
    report: &mut ApplyReport,
) -> Result<(), FinishError> {
    let none = LabelSets::default();
    let mut rounds = 0;
    while !pending.is_empty() {
        let receipts: BTreeSet<&ReceiptKey> = pending.keys().map(|w| &w.receipt).collect();
        let table = read_word_sets(services, &receipts).await?;
        let repairs: Vec<(WordKey, Metadata, LabelSets)> = pending
            .iter()
            .filter_map(|(word, wrote)| {
                repair_lists(wrote, table.get(word).unwrap_or(&none))
                    .map(|(set, after)| (word.clone(), set, after))
            })
            .collect();
        if repairs.is_empty() {
            break;
        }
        if rounds == REPAIR_ROUNDS {
            return Err(FinishError::VectorsUnsettled {
                batch_id: batch_id.to_owned(),
                words: repairs.len(),
                rounds,
            });
        }
        rounds += 1;
        info!(
            batch_id,
            round = rounds,
            words = repairs.len(),
            first = %repairs[0].0.vector_id(),
            "another apply added labels to words this one just wrote; writing them again"
        );
        gate.pass()?;
        let r = services
            .pinecone
            .update_many(
                repairs
                    .iter()
                    .map(|(word, set, _)| (word.vector_id(), set.clone()))
                    .collect(),
            )
            .await?;
        report.vectors_repaired += r.updated;
        report.pinecone_rate_limited += r.rate_limited;
        pending = repairs
            .into_iter()
            .map(|(word, _, after)| (word, after))
            .collect();
    }
    Ok(())
}

/// The maintained lists the table's labels derive now, by word, for the words of `receipts`:
/// one strongly consistent Query per receipt. Items that do not decode are left out (the
/// chunk's own read counted and logged them).
async fn read_word_sets(
    services: &Services,
    receipts: &BTreeSet<&ReceiptKey>,
) -> Result<BTreeMap<WordKey, LabelSets>, FinishError> {
    let pages: Vec<_> = stream::iter(receipts)
        .map(|r| services.store.receipt_labels(r))
        .buffer_unordered(services.options.read_concurrency.max(1))
        .try_collect()
        .await?;
    Ok(word_label_sets(pages.iter().flatten().flatten()))
}
