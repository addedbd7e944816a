//! Which CompletionBatchResult rows need the conditional put, and which can go in a batch.
//!
//! The row's SK has no image id (docs/spec/data-model.md, the known defect): two verdicts of
//! one batch on different images with the same receipt, line, word and label share a key, and
//! the smallest image's row must be the one stored. Only such a shared key needs the
//! conditional put ([`crate::store::Store::put_result_row`]); a key that a single target of
//! the whole batch has can be written unconditionally, 25 to a BatchWriteItem, whichever chunk
//! or handling writes it, as no other row of the batch can claim it (the partition is the
//! batch's own). Pass 1 reads every target of the input file anyway, so it learns the shared
//! keys ([`SharedKeys`]) at the cost of one packed key per target, dropped at once but for the
//! few shared ones.
//!
//! When the targets are not all known up front (the fallback to PENDING labels, or a request
//! whose targets could not be read), or the batch has more targets than [`SharedKeys::CAP`],
//! or a label is not a core label (its key does not pack), every row is put conditionally, as
//! before.

use std::collections::HashSet;

use crate::model::{CompletionBatchResult, LabelKey};

/// A result key (receipt id, line, word, core label: its index in `CORE_LABELS`) in 128 bits;
/// `None` for another label.
fn pack(label: &LabelKey) -> Option<u128> {
    let index = label.label.core_index()?;
    let w = &label.word;
    Some(
        u128::from(w.receipt.receipt_id) << 72
            | u128::from(w.line_id) << 40
            | u128::from(w.word_id) << 8
            | u128::from(u8::try_from(index).ok()?),
    )
}

/// The result keys more than one target of the batch has, gathered in pass 1.
#[derive(Debug, Default)]
pub(super) struct SharedKeys {
    /// Every target's packed key while pass 1 reads the input file; `None` once the targets
    /// cannot all be known (every row is then put conditionally).
    all: Option<Vec<u128>>,
    /// After [`SharedKeys::seal`]: the keys seen more than once.
    shared: HashSet<u128>,
}

impl SharedKeys {
    /// Targets kept while pass 1 reads (16 bytes each: 32 MB). OpenAI's largest batch, 50,000
    /// requests of a few dozen labels each, stays below; past it the rows go conditionally.
    const CAP: usize = 2_000_000;

    /// Gathering starts known-empty: an input file with no targets shares none.
    pub(super) fn gathering() -> Self {
        SharedKeys {
            all: Some(Vec::new()),
            shared: HashSet::new(),
        }
    }

    /// The targets cannot all be known: every row is put conditionally.
    pub(super) fn unknown() -> Self {
        SharedKeys::default()
    }

    pub(super) fn forget(&mut self) {
        self.all = None;
    }

    pub(super) fn add(&mut self, label: &LabelKey) {
        let Some(all) = &mut self.all else { return };
        match pack(label) {
            Some(k) if all.len() < Self::CAP => all.push(k),
            _ => self.all = None,
        }
    }

    /// Ends pass 1: keeps only the keys seen more than once.
    pub(super) fn seal(&mut self) {
        let Some(all) = &mut self.all else { return };
        all.sort_unstable();
        self.shared = all
            .windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| w[0])
            .collect();
        *all = Vec::new();
    }

    /// True when no other target of the batch has this row's key: it can be written
    /// unconditionally. Only meaningful after [`SharedKeys::seal`].
    pub(super) fn sole(&self, row: &CompletionBatchResult) -> bool {
        self.all.is_some() && pack(&row.label).is_some_and(|k| !self.shared.contains(&k))
    }
}

/// Result keys (the SK's receipt, line, word and label) that this run found held by a row of an
/// image id not larger than any later chunk's: written by an earlier chunk, or a put that was
/// refused. Chunks go in image order, so a later row with such a key would be refused too: it is
/// counted as a collision without being sent (a refused conditional put still costs a write).
/// Exact, only core labels, and capped: past the cap rows are sent and the condition decides.
pub(super) struct HeldResultKeys {
    keys: HashSet<u128>,
    cap: usize,
}

impl HeldResultKeys {
    /// Keys are packed; at 16 bytes (plus the set's overhead) the cap is a few MB.
    const CAP: usize = 200_000;

    pub(super) fn new() -> Self {
        HeldResultKeys {
            keys: HashSet::new(),
            cap: Self::CAP,
        }
    }

    pub(super) fn held(&self, row: &CompletionBatchResult) -> bool {
        pack(&row.label).is_some_and(|k| self.keys.contains(&k))
    }

    pub(super) fn hold(&mut self, row: &CompletionBatchResult) {
        if self.keys.len() < self.cap
            && let Some(k) = pack(&row.label)
        {
            self.keys.insert(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BatchStatus, ImageId};

    const A: &str = "11111111-1111-4111-8111-111111111111";
    const B: &str = "22222222-2222-4222-8222-222222222222";

    fn key(image: &str, receipt: u32, word: u32, label: &str) -> LabelKey {
        LabelKey::new(ImageId::parse(image).unwrap(), receipt, 1, word, label)
    }

    fn row(label: LabelKey) -> CompletionBatchResult {
        CompletionBatchResult {
            batch_id: "b".into(),
            label,
            status: BatchStatus::Completed,
            gpt_suggested_label: None,
            validated_at: chrono::DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_key_two_images_share_is_not_sole_and_others_are() {
        let mut keys = SharedKeys::gathering();
        keys.add(&key(A, 1, 1, "MERCHANT_NAME"));
        keys.add(&key(B, 1, 1, "MERCHANT_NAME"));
        keys.add(&key(A, 1, 2, "MERCHANT_NAME"));
        keys.add(&key(B, 2, 1, "MERCHANT_NAME"));
        keys.seal();
        assert!(!keys.sole(&row(key(A, 1, 1, "MERCHANT_NAME"))));
        assert!(!keys.sole(&row(key(B, 1, 1, "MERCHANT_NAME"))));
        assert!(keys.sole(&row(key(A, 1, 2, "MERCHANT_NAME"))));
        assert!(keys.sole(&row(key(B, 2, 1, "MERCHANT_NAME"))));
    }

    #[test]
    fn unknown_targets_or_other_labels_make_every_row_conditional() {
        let mut keys = SharedKeys::gathering();
        keys.add(&key(A, 1, 1, "MERCHANT_NAME"));
        keys.seal();
        assert!(keys.sole(&row(key(A, 1, 1, "MERCHANT_NAME"))));
        // A label outside the core set does not pack: its row goes conditionally.
        assert!(!keys.sole(&row(key(A, 1, 1, "SOMETHING_ELSE"))));

        let mut other = SharedKeys::gathering();
        other.add(&key(A, 1, 1, "SOMETHING_ELSE"));
        other.seal();
        assert!(!other.sole(&row(key(A, 1, 2, "MERCHANT_NAME"))));

        let mut forgotten = SharedKeys::gathering();
        forgotten.add(&key(A, 1, 1, "MERCHANT_NAME"));
        forgotten.forget();
        forgotten.seal();
        assert!(!forgotten.sole(&row(key(A, 1, 1, "MERCHANT_NAME"))));
        assert!(!SharedKeys::unknown().sole(&row(key(A, 1, 1, "MERCHANT_NAME"))));
    }

    #[test]
    fn held_keys_are_exact() {
        let mut held = HeldResultKeys::new();
        held.hold(&row(key(A, 1, 1, "MERCHANT_NAME")));
        // Same SK from another image: held (the key has no image).
        assert!(held.held(&row(key(B, 1, 1, "MERCHANT_NAME"))));
        assert!(!held.held(&row(key(B, 1, 2, "MERCHANT_NAME"))));
        assert!(!held.held(&row(key(B, 2, 1, "MERCHANT_NAME"))));
    }
}
