//! The plan: every write a finished batch makes, computed up front, in a deterministic order.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::BuildHasherDefault;

use chrono::{DateTime, Utc};

use super::counters::PlanCounters;
use super::outcome::{Outcome, SummaryUpdate};
use crate::model::status::{CORE_LABELS, PROPOSED_BY_COMPLETION_BATCH};
use crate::model::{
    CompletionBatchResult, CompletionBatchVerdict, LabelKey, LabelName, ReceiptWordLabel,
    ValidationStatus, Verdict, WordKey,
};
use crate::pinecone::merge::LabelSets;

/// A conditional status change: apply it only while the label holds `from`; a label already
/// holding `to` counts as done (an earlier run got there); anything else is a conflict.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatusChange {
    pub label: LabelKey,
    pub from: ValidationStatus,
    pub to: ValidationStatus,
}

/// Labels to merge (set union) into one word vector's metadata. Apply by fetching the vector,
/// merging, and writing only when something changed; a missing vector is counted, not written.
#[derive(Debug, Clone, PartialEq, Eq)]
///
/// The names are [`LabelSet`]s, not sets of strings: a plan holds a merge per word with a
/// verdict, nearly always of core labels, which a [`LabelSet`] holds without an allocation.
pub struct VectorMerge {
    pub word: WordKey,
    pub valid_labels: LabelSet,
    pub invalid_labels: LabelSet,
    /// The core-label suggestion of an invalid verdict on this word. When several judged labels
    /// of the word suggest one, the suggestion of the smallest judged label name wins: the same
    /// tie-break as a correction's `label_consolidated_from`, and one that a recorded verdict
    /// (which keeps no position within its line) can reproduce on a re-run.
    pub proposed_label: Option<LabelName>,
}

/// A set of label names: the core labels as bits, any other name in a sorted vector. What a
/// [`VectorMerge`] adds to a list; [`to_strings`](Self::to_strings) spells it as the metadata
/// write needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSet {
    /// Bit `i`: `CORE_LABELS[i]` ([`label_bit`]).
    core: u32,
    /// Sorted, without duplicates.
    other: Vec<LabelName>,
}

impl LabelSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `name`; whether it was new.
    pub fn insert(&mut self, name: LabelName) -> bool {
        let bit = label_bit(&name);
        if bit != 0 {
            let new = self.core & bit == 0;
            self.core |= bit;
            return new;
        }
        match self.other.binary_search(&name) {
            Ok(_) => false,
            Err(at) => {
                self.other.insert(at, name);
                true
            }
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        match core_label_bit(name) {
            0 => self.other.iter().any(|n| *n == name),
            bit => self.core & bit != 0,
        }
    }

    pub fn len(&self) -> usize {
        self.core.count_ones() as usize + self.other.len()
    }

    pub fn is_empty(&self) -> bool {
        self.core == 0 && self.other.is_empty()
    }

    /// The names in string order (as a set of strings holds them).
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        let mut names: Vec<&str> = CORE_LABELS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.core & (1 << i) != 0)
            .map(|(_, name)| *name)
            .chain(self.other.iter().map(LabelName::as_str))
            .collect();
        names.sort_unstable();
        names.into_iter()
    }

    /// The names as the metadata write takes them.
    pub fn to_strings(&self) -> BTreeSet<String> {
        self.iter().map(str::to_owned).collect()
    }
}

impl<'a> FromIterator<&'a str> for LabelSet {
    fn from_iter<I: IntoIterator<Item = &'a str>>(names: I) -> Self {
        let mut set = LabelSet::new();
        for name in names {
            set.insert(LabelName::new(name));
        }
        set
    }
}

impl VectorMerge {
    /// The word's vector id ([`WordKey::vector_id`]), made when the merge is written rather
    /// than kept per merge in the plan.
    pub fn vector_id(&self) -> String {
        self.word.vector_id()
    }
}

/// A verdict whose status change is planned; the source of the vector merges, corrections and
/// CompletionBatchResult rows, so they can be recomputed when an apply-time conflict drops it.
/// [`Plan::effective`] runs parallel to [`Plan::status_changes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Effective {
    pub(crate) verdict: Verdict,
    /// As the model wrote it (a [`LabelName`] holds any text, a core label without an
    /// allocation).
    pub(crate) suggestion: Option<LabelName>,
    /// The core label names on the verdict's word when planned ([`core_label_bit`]): a
    /// correction is created only where its name is absent, and only core labels are created.
    pub(crate) word_labels: u32,
}

/// A hasher for small keys of integers and label names (the result-key collision check): the
/// keys come from the batch's own labels, so flooding is not a concern, speed is.
#[derive(Default)]
pub(crate) struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    /// A folded multiply of the state, so that every bit of it reaches the low bits (which
    /// pick the bucket) and the high bits (which the table compares first).
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the product's two halves, folded"
    )]
    fn finish(&self) -> u64 {
        let m = u128::from(self.0) * 0x9e37_79b9_7f4a_7c15;
        (m as u64) ^ ((m >> 64) as u64)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.write_u64(i.into());
    }

    fn write_u32(&mut self, i: u32) {
        self.write_u64(i.into());
    }

    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
}

type FastSet<T> = HashSet<T, BuildHasherDefault<FastHasher>>;

/// A CompletionBatchResult key (receipt, line, word, label: the SK without the image) as one
/// integer, when its ids are small enough and its label is a core label (nearly always): a
/// set of these is much cheaper than one of tuples holding the label's string. Keys that do
/// not fit are kept in a set of tuples; a key's own fields decide which, so the two sets
/// together hold each key once.
fn packed_result_key(label: &LabelKey) -> Option<u64> {
    let w = &label.word;
    let name = u64::try_from(label.label.core_index()?).ok()?;
    let receipt = u64::from(w.receipt.receipt_id);
    let (line, word) = (u64::from(w.line_id), u64::from(w.word_id));
    (receipt < 1 << 16 && line < 1 << 21 && word < 1 << 21 && name < 1 << 5)
        // The top bit set: never 0, which [`KeyScratch`] takes for an empty slot.
        .then_some(1 << 63 | receipt << 47 | line << 26 | word << 5 | name)
}

/// The emptied row vectors of the last plan dropped, for the next plan to fill: a batch is
/// planned a chunk at a time, each chunk's plan the same size, and these vectors (hundreds of
/// KB each) are large allocations that the allocator hands back to the system between chunks,
/// so that every chunk paid again for zeroed pages (a visible share of planning time). Only
/// one set is kept, and only vectors of at most [`Spare::MAX_BYTES`] each: a plan of a whole
/// large batch frees its storage as before. What a plan contains never depends on it.
#[derive(Default)]
struct Spare {
    verdicts: Vec<CompletionBatchVerdict>,
    status_changes: Vec<StatusChange>,
    resets: Vec<StatusChange>,
    already_reset: Vec<LabelKey>,
    corrections: Vec<ReceiptWordLabel>,
    vector_merges: Vec<VectorMerge>,
    results: Vec<CompletionBatchResult>,
    effective: Vec<Effective>,
    packed_keys: Vec<u64>,
}

static SPARE: std::sync::Mutex<Option<Spare>> = std::sync::Mutex::new(None);

impl Spare {
    const MAX_BYTES: usize = 1 << 20;

    fn take() -> Spare {
        SPARE
            .lock()
            .ok()
            .and_then(|mut spare| spare.take())
            .unwrap_or_default()
    }

    /// `v` emptied, when small enough to keep.
    fn keep<T>(v: &mut Vec<T>) -> Vec<T> {
        let mut v = std::mem::take(v);
        v.clear();
        if v.capacity() * std::mem::size_of::<T>() > Self::MAX_BYTES {
            return Vec::new();
        }
        v
    }
}

impl Drop for Plan {
    fn drop(&mut self) {
        let spare = Spare {
            verdicts: Spare::keep(&mut self.verdicts),
            status_changes: Spare::keep(&mut self.status_changes),
            resets: Spare::keep(&mut self.resets),
            already_reset: Spare::keep(&mut self.already_reset),
            corrections: Spare::keep(&mut self.corrections),
            vector_merges: Spare::keep(&mut self.vector_merges),
            results: Spare::keep(&mut self.results),
            effective: Spare::keep(&mut self.effective),
            packed_keys: Spare::keep(&mut self.packed_keys.slots),
        };
        if let Ok(mut kept) = SPARE.lock()
            && kept.is_none()
        {
            *kept = Some(spare);
        }
    }
}

/// A bit per core label (docs/spec/data-model.md lists 22), 0 for any other name.
pub(crate) fn core_label_bit(label: &str) -> u32 {
    CORE_LABELS
        .iter()
        .position(|c| *c == label)
        .map_or(0, |i| 1 << i)
}

/// [`core_label_bit`] of a key's label name, which knows its index already.
pub(crate) fn label_bit(label: &LabelName) -> u32 {
    label.core_index().map_or(0, |i| 1 << i)
}

/// Every write of one batch, in the order docs/spec/processing-rules.md prescribes:
///
/// 1. [`verdicts`](Self::verdicts) (the journal) first;
/// 2. [`status_changes`](Self::status_changes), then
///    [`without_conflicts`](Self::without_conflicts) with the labels whose conditional write
///    found someone else's change; then [`corrections`](Self::corrections) (create only if
///    absent), [`resets`](Self::resets) (each followed, once it succeeded, by its journal row
///    [`reset_row`](Self::reset_row); with the rows of [`already_reset`](Self::already_reset)),
///    [`vector_merges`](Self::vector_merges) and
///    [`results`](Self::results);
/// 3. [`summary`](Self::summary) last.
///
/// Every collection is sorted, so two plans of the same input compare equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub batch_id: std::sync::Arc<str>,
    pub outcome: Outcome,
    /// The batch's outcome timestamp: `validated_at` of every row and `timestamp_added` of every
    /// correction.
    pub validated_at: DateTime<Utc>,
    /// CompletionBatchVerdict rows, sorted by label.
    pub verdicts: Vec<CompletionBatchVerdict>,
    /// Verdicts to apply, `from` PENDING; sorted.
    pub status_changes: Vec<StatusChange>,
    /// PENDING → NONE for targets without a verdict; sorted. Targets whose reset this batch
    /// already journaled are never among them (see [`Plan::reset_row`]).
    pub resets: Vec<StatusChange>,
    /// Targets without a verdict that are NONE already and have no reset row of this batch
    /// (an earlier run of it reset them and was cut off before the row, or someone else set
    /// them NONE): only their reset rows are written, with those of the resets. A row is what
    /// keeps a re-run from resetting the label once a newer batch claims it, and writing it
    /// on every run alike makes an interrupted run end as an uninterrupted one. Sorted.
    pub already_reset: Vec<LabelKey>,
    /// New labels, sorted by key.
    pub corrections: Vec<ReceiptWordLabel>,
    /// One per word with an applied verdict, sorted by word.
    pub vector_merges: Vec<VectorMerge>,
    /// The maintained lists the table's labels derive, by word, as handed in
    /// ([`crate::pinecone::merge::word_label_sets`]): the labels other batches (and earlier
    /// runs of this one) decided, which a word's vector write includes besides this batch's
    /// verdicts, so that a stale fetch cannot make it drop them. Only words of
    /// [`vector_merges`](Self::vector_merges) with at least one such label.
    pub word_labels: BTreeMap<WordKey, LabelSets>,
    /// CompletionBatchResult rows, sorted by label; at most one per SK.
    pub results: Vec<CompletionBatchResult>,
    /// None while the batch is not terminal.
    pub summary: Option<SummaryUpdate>,
    pub counters: PlanCounters,
    /// One per status change, in the same order.
    pub(crate) effective: Vec<Effective>,
    /// [`derive`](Self::derive)'s set of result keys, kept with the plan's storage ([`Spare`]).
    packed_keys: KeyScratch,
}

/// Scratch storage of a plan, not part of what it says (every two compare equal): the set of
/// packed result keys ([`packed_result_key`]) [`Plan::derive`] has taken. An open-addressing
/// table of the keys themselves (never 0: their top bit is set), at most half full: a
/// probe is a load and a compare, cheaper than a general hash set's.
#[derive(Default, Clone)]
struct KeyScratch {
    slots: Vec<u64>,
}

impl KeyScratch {
    /// Empties the set, with room for `n` keys.
    fn reset(&mut self, n: usize) {
        let size = (2 * n).next_power_of_two().max(16);
        self.slots.clear();
        self.slots.resize(size, 0);
    }

    /// Adds `key` (not 0); whether it was new.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "the hash's low bits pick the slot"
    )]
    fn insert(&mut self, key: u64) -> bool {
        let mask = self.slots.len() - 1;
        let m = u128::from(key) * 0x9e37_79b9_7f4a_7c15;
        let mut i = ((m as u64) ^ ((m >> 64) as u64)) as usize & mask;
        loop {
            match self.slots[i] {
                0 => {
                    self.slots[i] = key;
                    return true;
                }
                k if k == key => return false,
                _ => i = (i + 1) & mask,
            }
        }
    }
}

impl PartialEq for KeyScratch {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for KeyScratch {}

impl std::fmt::Debug for KeyScratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyScratch")
    }
}

impl Plan {
    /// A plan without rows, in the storage an earlier plan left ([`Spare`]).
    pub(crate) fn empty(
        batch_id: std::sync::Arc<str>,
        outcome: Outcome,
        validated_at: DateTime<Utc>,
    ) -> Self {
        let spare = Spare::take();
        Plan {
            batch_id,
            outcome,
            validated_at,
            verdicts: spare.verdicts,
            status_changes: spare.status_changes,
            resets: spare.resets,
            already_reset: spare.already_reset,
            corrections: spare.corrections,
            vector_merges: spare.vector_merges,
            word_labels: BTreeMap::new(),
            results: spare.results,
            summary: None,
            counters: PlanCounters::default(),
            effective: spare.effective,
            packed_keys: KeyScratch {
                slots: spare.packed_keys,
            },
        }
    }

    /// The journal row of a label of [`resets`](Self::resets), to write right after the reset
    /// succeeded (or found the label already NONE), never before: a row written first could not
    /// tell a re-run "reset not done yet" from "done, then claimed by a newer batch"; and of a
    /// label of [`already_reset`](Self::already_reset).
    pub fn reset_row(&self, label: &LabelKey) -> CompletionBatchVerdict {
        CompletionBatchVerdict::reset(&self.batch_id, label, self.validated_at)
    }

    /// The plan once the conditional status changes of `conflicts` failed because someone else
    /// changed those labels: their changes, vector merges, corrections and result rows go (the
    /// others are recomputed without them: a collision's next-smallest image, a correction's
    /// next-smallest proposer); their journal rows stay, they record what the model said.
    pub fn without_conflicts(mut self, conflicts: &BTreeSet<LabelKey>) -> Plan {
        if conflicts.is_empty() {
            return self;
        }
        let before = self.status_changes.len();
        let (changes, effective) = std::mem::take(&mut self.status_changes)
            .into_iter()
            .zip(std::mem::take(&mut self.effective))
            .filter(|(c, _)| !conflicts.contains(&c.label))
            .unzip();
        self.status_changes = changes;
        self.effective = effective;
        self.counters.targets.apply_conflicts += (before - self.status_changes.len()) as u64;
        self.derive();
        self
    }

    /// Recomputes everything that follows from the applied verdicts.
    pub(crate) fn derive(&mut self) {
        let row_status = self.outcome.batch_status();
        let counters = &mut self.counters;
        counters.corrections = Default::default();
        counters.result_rows = Default::default();
        let n = self.status_changes.len();
        // Into the storage the plan already holds (see [`Spare`]).
        let mut merges = std::mem::take(&mut self.vector_merges);
        merges.clear();
        merges.reserve(n);
        let mut corrections = std::mem::take(&mut self.corrections);
        corrections.clear();
        let mut results = std::mem::take(&mut self.results);
        results.clear();
        results.reserve(n);
        // Result keys taken: (receipt, line, word, label), the SK without the image.
        // At most one key per status change: the table stays at most half full.
        let mut packed_keys = std::mem::take(&mut self.packed_keys);
        packed_keys.reset(n);
        let mut result_keys: FastSet<(u32, u32, u32, &str)> = FastSet::default();
        // Sorted by (image, receipt, line, word, label): a word's verdicts are contiguous,
        // within a word the smallest judged label comes first, and among colliding result keys
        // the smallest image id.
        // (suggested name, judged label) of a word's new labels, and names already there:
        // cleared for each word, allocated once.
        let mut created: Vec<(&str, &str)> = Vec::new();
        let mut existing: Vec<&str> = Vec::new();
        // `effective` runs parallel to `status_changes`: a word's verdicts start at `at`.
        let mut at = 0;
        for changes in self
            .status_changes
            .chunk_by(|a, b| a.label.word == b.label.word)
        {
            let word = changes.iter().zip(&self.effective[at..at + changes.len()]);
            at += changes.len();
            let w = &changes[0].label.word;
            let mut merge = VectorMerge {
                word: w.clone(),
                valid_labels: LabelSet::new(),
                invalid_labels: LabelSet::new(),
                proposed_label: None,
            };
            created.clear();
            existing.clear();
            for (change, e) in word {
                let label = &change.label;
                if e.verdict.is_valid() {
                    merge.valid_labels.insert(label.label.clone());
                } else {
                    merge.invalid_labels.insert(label.label.clone());
                    // A suggestion is a core label exactly when its name holds a core index.
                    match e.suggestion.as_ref() {
                        None => {}
                        Some(s) if *s == label.label => counters.corrections.same_label += 1,
                        Some(s) if s.core_index().is_none() => counters.corrections.non_core += 1,
                        Some(name) => {
                            merge.proposed_label.get_or_insert_with(|| name.clone());
                            let s = name.as_str();
                            if e.word_labels & label_bit(name) != 0 {
                                if !existing.contains(&s) {
                                    existing.push(s);
                                }
                            } else if !created.iter().any(|(name, _)| *name == s) {
                                // The first proposer in label order: the smallest judged label.
                                created.push((s, &label.label));
                            }
                        }
                    }
                }
                if let Some(status) = row_status {
                    let w = &label.word;
                    let taken = match packed_result_key(label) {
                        Some(key) => !packed_keys.insert(key),
                        None => !result_keys.insert((
                            w.receipt.receipt_id,
                            w.line_id,
                            w.word_id,
                            label.label.as_str(),
                        )),
                    };
                    if !taken {
                        results.push(CompletionBatchResult {
                            batch_id: self.batch_id.clone(),
                            label: label.clone(),
                            status,
                            gpt_suggested_label: e.suggestion.as_ref().map(String::from),
                            validated_at: self.validated_at,
                        });
                    } else {
                        counters.result_rows.collisions += 1;
                    }
                }
            }
            counters.corrections.existing += existing.len() as u64;
            created.sort_unstable();
            for &(name, from) in &created {
                corrections.push(ReceiptWordLabel {
                    key: LabelKey {
                        word: w.clone(),
                        label: LabelName::new(name),
                    },
                    reasoning: None,
                    timestamp_added: self.validated_at,
                    validation_status: ValidationStatus::None,
                    label_proposed_by: Some(PROPOSED_BY_COMPLETION_BATCH.into()),
                    label_consolidated_from: Some(from.to_owned()),
                });
            }
            merges.push(merge);
        }
        counters.corrections.created = corrections.len() as u64;
        counters.vector_merges = merges.len() as u64;
        // Merges are sorted by word.
        self.word_labels
            .retain(|w, _| merges.binary_search_by(|m| m.word.cmp(w)).is_ok());
        counters.result_rows.written = results.len() as u64;
        self.corrections = corrections;
        self.vector_merges = merges;
        self.results = results;
        self.packed_keys = packed_keys;
    }
}

#[cfg(test)]
mod label_set_tests {
    use super::*;

    #[test]
    fn a_label_set_holds_core_and_other_names_in_string_order() {
        let names = [
            "TIP",
            "A_FREE_NAME",
            "DATE",
            "ZZZ",
            "TAX",
            "DATE",
            "ZZZ",
            "date",
        ];
        let set: LabelSet = names.into_iter().collect();
        let strings: BTreeSet<String> = names.iter().map(|n| (*n).to_owned()).collect();
        assert_eq!(set.to_strings(), strings);
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            strings.iter().map(String::as_str).collect::<Vec<_>>()
        );
        assert_eq!(set.len(), strings.len());
        assert!(set.contains("TIP") && set.contains("ZZZ") && set.contains("date"));
        assert!(!set.contains("TIME") && !set.contains("Z"));
        let mut again = set.clone();
        assert!(!again.insert(LabelName::new("TAX")) && !again.insert(LabelName::new("ZZZ")));
        assert!(again.insert(LabelName::new("TIME")) && again.insert(LabelName::new("AAA")));
        assert!(LabelSet::new().is_empty() && !set.is_empty());
    }
}
