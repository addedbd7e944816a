//! The label merge of a word vector's metadata (docs/spec/processing-rules.md "Vector metadata",
//! docs/spec/data-model.md "Vector metadata (Pinecone)"), as pure functions.
//!
//! Pinecone's `setMetadata` overwrites the keys it names, so the merge is computed here from
//! the fetched metadata and only keys whose value changes are sent. Re-applying a change
//! yields no keys, hence no write: that is what makes a re-run of a batch cheap and harmless.
//!
//! # Eventual consistency: the lists are derived from the table, then verified
//!
//! Pinecone is eventually consistent (docs/spec/openai-batch.md): a fetch may not yet show an update
//! another batch made a moment before, and `setMetadata` of the union computed from that fetch
//! would then drop the other batch's label for good. The spec allows two remedies; the fleet
//! uses both halves of one: **the maintained lists are derived from the table, which reads
//! strongly consistently, and every write is verified against the table afterwards.**
//!
//! - *Derived.* A word's `valid_labels` / `invalid_labels` are computed from the word's labels
//!   as the table holds them ([`word_label_sets`]): every label whose status a completion batch
//!   decided (`label_proposed_by = COMPLETION_BATCH`; `VALID` → `valid_labels`, `INVALID` and
//!   `NEEDS_REVIEW` → `invalid_labels`), united with this batch's verdicts and with what the
//!   fetch shows (so entries other programs wrote are kept). Labels other programs set
//!   (a reviewer's, a layout model's) are not added: the rules merge verdicts of completion
//!   batches only. The table already holds every verdict of every batch, written before its
//!   vector step, so the derivation needs no fresh fetch to know another batch's label.
//! - *Verified.* Derivation alone is not enough: the labels are read before this batch's own
//!   writes, so a batch B whose status changes land after that read but whose Pinecone write
//!   lands before ours is in neither our read nor (stale) our fetch, and our write drops it.
//!   So after writing, the apply reads the written words' labels again (one strongly
//!   consistent Query per receipt, the fleet's usual read) and, for every list it wrote that
//!   no longer holds every label the table derives for it, writes the union again
//!   ([`repair_lists`]); bounded, a few rounds, then the apply fails as transient and is
//!   retried.
//!
//! Why every label ends in the metadata once the applies are done (the fleet's own labels;
//! `proposed_label` is one value, the later writer's, as before). `setMetadata` replaces only
//! the keys it names, so each list is a register of its own; take one list's last write, by an
//! apply W at time `t`. W read the table again after `t` (at `v > t`) and found nothing new for
//! it, so W's write holds every label of that list in the table at `v`. A label L that reached
//! the table after `v` did so in an apply X whose vector step comes after its table write, so
//! after `t`: X either wrote the list (contradicting "W's is the last write") or skipped it
//! because its fetch showed every derived label, L included. But a fetch shows L only after
//! some write containing L, and such a write derives L from the table, so comes after L's
//! table write, after `t`: the same contradiction. Hence no label is missing. The argument needs each write to be followed
//! by its verification; an apply cut off between the two (a crash, a lost lease) leaves an
//! unverified write, so its re-run (which finds its verdicts already applied) writes those
//! words' lists again even when its fetch shows every label ([`MetadataChange::rewrite`]) and
//! verifies that write. Termination: each repair round follows a round in which the table grew
//! (a word has a few dozen labels), and only applies touching the same words at that moment
//! make it grow.
//!
//! What this does not cover: entries written by other programs moments before (or removed by
//! them) are kept only as well as a fetch-merge can keep them; and an apply that wrote, was cut
//! off, and never runs again (a permanent error) leaves its last write unverified.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::model::status::PROPOSED_BY_COMPLETION_BATCH;
use crate::model::{ReceiptWordLabel, ValidationStatus, WordKey};

/// A vector's metadata as Pinecone returns it.
pub type Metadata = serde_json::Map<String, Value>;

pub const VALID_LABELS: &str = "valid_labels";
pub const INVALID_LABELS: &str = "invalid_labels";
pub const PROPOSED_LABEL: &str = "proposed_label";

/// What one batch wants to add to one word vector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetadataChange {
    pub add_valid: BTreeSet<String>,
    pub add_invalid: BTreeSet<String>,
    pub proposed_label: Option<String>,
    /// Write the label lists even when the fetch shows every label: an earlier run of this
    /// batch may have written this vector without verifying the write (it was cut off), and a
    /// possibly stale fetch cannot tell whether that write dropped a label (see the module's
    /// doc). Lists with no label at all are still not written.
    pub rewrite: bool,
}

impl MetadataChange {
    pub fn valid(label: impl Into<String>) -> Self {
        Self {
            add_valid: BTreeSet::from([label.into()]),
            ..Self::default()
        }
    }

    pub fn invalid(label: impl Into<String>, proposed: Option<String>) -> Self {
        Self {
            add_invalid: BTreeSet::from([label.into()]),
            proposed_label: proposed,
            ..Self::default()
        }
    }

    /// Folds a later change for the same vector into this one: sets are united, and a later
    /// `proposed_label` replaces an earlier one (like "the later result wins" elsewhere); a
    /// rewrite asked by either is kept.
    pub fn absorb(&mut self, later: MetadataChange) {
        self.add_valid.extend(later.add_valid);
        self.add_invalid.extend(later.add_invalid);
        if later.proposed_label.is_some() {
            self.proposed_label = later.proposed_label;
        }
        self.rewrite |= later.rewrite;
    }

    /// Adds the labels the table holds for the word (see [`word_label_sets`]).
    pub fn add_sets(&mut self, sets: &LabelSets) {
        self.add_valid.extend(sets.valid.iter().cloned());
        self.add_invalid.extend(sets.invalid.iter().cloned());
    }

    pub fn is_empty(&self) -> bool {
        self.add_valid.iter().all(String::is_empty)
            && self.add_invalid.iter().all(String::is_empty)
            && self.proposed_label.as_deref().is_none_or(str::is_empty)
    }
}

/// The metadata after a merge, and the part of it to send.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MergeOutcome {
    /// Sorted, without duplicates.
    pub valid_labels: Vec<String>,
    /// Sorted, without duplicates.
    pub invalid_labels: Vec<String>,
    pub proposed_label: Option<String>,
    /// Only the keys whose value changes; never a null. Empty = nothing to write.
    pub set_metadata: Metadata,
}

impl MergeOutcome {
    pub fn changed(&self) -> bool {
        !self.set_metadata.is_empty()
    }

    /// The lists this outcome writes, as sets, to verify against the table afterwards
    /// ([`repair_lists`]). A list it does not write is empty here (a written list never is):
    /// `setMetadata` leaves it as it was, so this write cannot have dropped a label from it.
    pub fn written_sets(&self) -> LabelSets {
        let written = |key: &str, labels: &[String]| {
            if self.set_metadata.contains_key(key) {
                labels.iter().cloned().collect()
            } else {
                BTreeSet::new()
            }
        };
        LabelSets {
            valid: written(VALID_LABELS, &self.valid_labels),
            invalid: written(INVALID_LABELS, &self.invalid_labels),
        }
    }
}

/// The two maintained label lists of one word, as sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSets {
    pub valid: BTreeSet<String>,
    pub invalid: BTreeSet<String>,
}

impl LabelSets {
    /// Adds one label of the word as the table holds it, when a completion batch decided it
    /// (see [`maintained_list`]); answers whether it did.
    pub fn add_label(
        &mut self,
        label: &str,
        status: ValidationStatus,
        proposed_by: Option<&str>,
    ) -> bool {
        let set = match maintained_list(status, proposed_by) {
            _ if label.is_empty() => return false,
            Some(VALID_LABELS) => &mut self.valid,
            Some(_) => &mut self.invalid,
            None => return false,
        };
        set.insert(label.to_owned());
        true
    }

    pub fn is_empty(&self) -> bool {
        self.valid.is_empty() && self.invalid.is_empty()
    }

    /// Every label of `self` is in `other`, list by list.
    pub fn is_within(&self, other: &LabelSets) -> bool {
        self.valid.is_subset(&other.valid) && self.invalid.is_subset(&other.invalid)
    }
}

/// The list a label of a word belongs in, from its status and its `label_proposed_by` as the
/// table holds them: only a label whose status a completion batch decided
/// (`label_proposed_by = COMPLETION_BATCH`, which every status change of the fleet writes, and
/// a verdict's status) is merged into the vector by the rules; `VALID` → `valid_labels`,
/// `INVALID` or `NEEDS_REVIEW` → `invalid_labels`. Other labels (a reviewer's, a layout
/// model's, a reset or a new correction, which are `NONE`) belong in neither.
pub fn maintained_list(
    status: ValidationStatus,
    proposed_by: Option<&str>,
) -> Option<&'static str> {
    if proposed_by != Some(PROPOSED_BY_COMPLETION_BATCH) {
        return None;
    }
    match status {
        ValidationStatus::Valid => Some(VALID_LABELS),
        ValidationStatus::Invalid | ValidationStatus::NeedsReview => Some(INVALID_LABELS),
        ValidationStatus::None | ValidationStatus::Pending => None,
    }
}

/// The maintained lists each word's labels derive, from the labels of its receipts as the
/// table holds them; only words with at least one label that counts ([`maintained_list`]).
pub fn word_label_sets<'a>(
    labels: impl IntoIterator<Item = &'a ReceiptWordLabel>,
) -> BTreeMap<WordKey, LabelSets> {
    let mut words: BTreeMap<WordKey, LabelSets> = BTreeMap::new();
    for l in labels {
        let proposed_by = l.label_proposed_by.as_deref();
        if !l.key.label.is_empty() && maintained_list(l.validation_status, proposed_by).is_some() {
            words.entry(l.key.word.clone()).or_default().add_label(
                &l.key.label,
                l.validation_status,
                proposed_by,
            );
        }
    }
    words
}

/// What to write again after a write left `written` in a vector ([`MergeOutcome::written_sets`])
/// and the table now derives `derived` for its word: for each list the write named whose
/// derived set is not within what it wrote, the sorted union (only those keys; a list the
/// write did not name, empty in `written`, is not its to repair, and `proposed_label` is one
/// value, the later writer's, never rewritten). `None`: the write dropped nothing. The lists
/// the repair leaves are returned with it, to verify the repair in turn.
pub fn repair_lists(written: &LabelSets, derived: &LabelSets) -> Option<(Metadata, LabelSets)> {
    let mut after = written.clone();
    let mut set_metadata = Metadata::new();
    for (key, want, into) in [
        (VALID_LABELS, &derived.valid, &mut after.valid),
        (INVALID_LABELS, &derived.invalid, &mut after.invalid),
    ] {
        if !into.is_empty() && !want.is_subset(into) {
            into.extend(want.iter().filter(|l| !l.is_empty()).cloned());
            set_metadata.insert(key.to_owned(), string_list(into));
        }
    }
    (!set_metadata.is_empty()).then_some((set_metadata, after))
}

fn string_list(labels: &BTreeSet<String>) -> Value {
    Value::Array(labels.iter().cloned().map(Value::String).collect())
}

/// A stored list value Pinecone accepts as it is: a non-empty string or a list of strings.
fn writable_as_stored(value: Option<&Value>) -> Option<&Value> {
    match value? {
        v @ Value::String(s) if !s.is_empty() => Some(v),
        v @ Value::Array(items)
            if items
                .iter()
                .all(|i| i.as_str().is_some_and(|s| !s.is_empty())) =>
        {
            Some(v)
        }
        _ => None,
    }
}

/// Reads a stored label list as a set: a list of strings, or a single string (older writers
/// stored one label that way). Missing or null is empty. Non-string scalars inside are kept
/// by their JSON text, so that a merge never silently drops what another writer stored.
pub fn label_set(value: Option<&Value>) -> BTreeSet<String> {
    fn one(v: &Value) -> Option<String> {
        match v {
            Value::Null => None,
            Value::String(s) if s.is_empty() => None,
            Value::String(s) => Some(s.clone()),
            Value::Array(_) | Value::Object(_) => None,
            other => Some(other.to_string()),
        }
    }
    match value {
        Some(Value::Array(items)) => items.iter().filter_map(one).collect(),
        Some(v) => one(v).into_iter().collect(),
        None => BTreeSet::new(),
    }
}

/// Merges `change` into `current`.
///
/// A list key is written only when the change adds a label it lacks, and then as the sorted
/// union (which also normalises a single stored string into a list). A list whose set already
/// holds every added label is left as stored, even if stored unsorted or as a single string:
/// the set did not change, and an extra write per vector would cost rate-limit budget.
/// `proposed_label` is written when the change names one that differs from the stored one.
/// Empty label strings in the change are ignored.
///
/// With [`MetadataChange::rewrite`], every list holding at least one label is written: as
/// stored when the set did not change and the stored value is one Pinecone accepts (so the
/// vector ends as a run that found it unchanged left it), else as the sorted union.
pub fn merge_metadata(current: &Metadata, change: &MetadataChange) -> MergeOutcome {
    let mut set_metadata = Metadata::new();

    let mut merge_list = |key: &str, add: &BTreeSet<String>| -> Vec<String> {
        let mut labels = label_set(current.get(key));
        let before = labels.len();
        labels.extend(add.iter().filter(|l| !l.is_empty()).cloned());
        let grew = labels.len() != before;
        let value = match writable_as_stored(current.get(key)) {
            Some(stored) if !grew => stored.clone(),
            _ => string_list(&labels),
        };
        if grew || (change.rewrite && !labels.is_empty()) {
            set_metadata.insert(key.to_owned(), value);
        }
        labels.into_iter().collect()
    };
    let valid_labels = merge_list(VALID_LABELS, &change.add_valid);
    let invalid_labels = merge_list(INVALID_LABELS, &change.add_invalid);

    let stored_proposed = match current.get(PROPOSED_LABEL) {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    let proposed_label = match change.proposed_label.as_deref().filter(|p| !p.is_empty()) {
        Some(p) if stored_proposed.as_deref() != Some(p) => {
            set_metadata.insert(PROPOSED_LABEL.to_owned(), Value::String(p.to_owned()));
            Some(p.to_owned())
        }
        _ => stored_proposed,
    };

    MergeOutcome {
        valid_labels,
        invalid_labels,
        proposed_label,
        set_metadata,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn meta(v: Value) -> Metadata {
        match v {
            Value::Object(m) => m,
            _ => panic!("object expected"),
        }
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn adds_to_empty_metadata() {
        let out = merge_metadata(
            &Metadata::new(),
            &MetadataChange {
                add_valid: set(&["TOTAL", "DATE"]),
                add_invalid: set(&["TAX"]),
                proposed_label: Some("SUBTOTAL".into()),
                rewrite: false,
            },
        );
        assert!(out.changed());
        assert_eq!(out.valid_labels, vec!["DATE", "TOTAL"]);
        assert_eq!(
            Value::Object(out.set_metadata),
            json!({"valid_labels": ["DATE", "TOTAL"], "invalid_labels": ["TAX"],
                   "proposed_label": "SUBTOTAL"})
        );
    }

    #[test]
    fn only_changed_keys_are_written() {
        let current = meta(json!({
            "text": "12.99",
            "valid_labels": ["LINE_TOTAL"],
            "invalid_labels": ["TAX"],
            "proposed_label": "UNIT_PRICE"
        }));
        let out = merge_metadata(&current, &MetadataChange::valid("DATE"));
        assert_eq!(
            Value::Object(out.set_metadata.clone()),
            json!({"valid_labels": ["DATE", "LINE_TOTAL"]})
        );
        assert_eq!(out.invalid_labels, vec!["TAX"]);
        assert_eq!(out.proposed_label.as_deref(), Some("UNIT_PRICE"));

        let out = merge_metadata(
            &current,
            &MetadataChange::invalid("TAX", Some("SUBTOTAL".into())),
        );
        assert_eq!(
            Value::Object(out.set_metadata),
            json!({"proposed_label": "SUBTOTAL"})
        );
    }

    #[test]
    fn nothing_changes_when_already_merged() {
        let current = meta(json!({
            "valid_labels": ["LINE_TOTAL", "DATE"],
            "invalid_labels": "TAX",
            "proposed_label": "UNIT_PRICE"
        }));
        let change = MetadataChange {
            add_valid: set(&["DATE"]),
            add_invalid: set(&["TAX"]),
            proposed_label: Some("UNIT_PRICE".into()),
            rewrite: false,
        };
        let out = merge_metadata(&current, &change);
        assert!(!out.changed(), "{:?}", out.set_metadata);
        assert_eq!(out.valid_labels, vec!["DATE", "LINE_TOTAL"]);
        assert_eq!(out.invalid_labels, vec!["TAX"]);
        assert!(!merge_metadata(&current, &MetadataChange::default()).changed());
    }

    #[test]
    fn a_single_string_counts_as_a_list() {
        let current = meta(json!({"valid_labels": "DATE"}));
        let out = merge_metadata(&current, &MetadataChange::valid("TIME"));
        assert_eq!(
            Value::Object(out.set_metadata),
            json!({"valid_labels": ["DATE", "TIME"]})
        );
    }

    #[test]
    fn odd_stored_values_are_not_lost_and_nulls_never_written() {
        let current = meta(json!({
            "valid_labels": ["DATE", null, 7, ""],
            "invalid_labels": null,
            "proposed_label": null
        }));
        let out = merge_metadata(
            &current,
            &MetadataChange {
                add_valid: set(&["TIME", ""]),
                add_invalid: set(&[""]),
                proposed_label: Some(String::new()),
                rewrite: false,
            },
        );
        assert_eq!(
            Value::Object(out.set_metadata.clone()),
            json!({"valid_labels": ["7", "DATE", "TIME"]})
        );
        assert_eq!(out.proposed_label, None);
        assert!(out.set_metadata.values().all(|v| !v.is_null()));
    }

    #[test]
    fn absorb_unites_and_the_later_proposal_wins() {
        let mut a = MetadataChange::invalid("TAX", Some("SUBTOTAL".into()));
        a.absorb(MetadataChange::valid("DATE"));
        a.absorb(MetadataChange::invalid("TIP", Some("TOTAL".into())));
        a.absorb(MetadataChange::invalid("TIP", None));
        assert_eq!(a.add_valid, set(&["DATE"]));
        assert_eq!(a.add_invalid, set(&["TAX", "TIP"]));
        assert_eq!(a.proposed_label.as_deref(), Some("TOTAL"));
        assert!(!a.is_empty());
        assert!(MetadataChange::default().is_empty());
    }

    fn labels() -> impl Strategy<Value = BTreeSet<String>> {
        prop::collection::btree_set("[A-E]{1,2}", 0..4)
    }

    proptest! {
        /// Merging is idempotent: applying the merged result again changes nothing, and the
        /// lists are the sorted unions.
        #[test]
        fn merge_is_idempotent(
            stored_valid in labels(),
            stored_invalid in labels(),
            change_valid in labels(),
            change_invalid in labels(),
            proposed in prop::option::of("[A-E]{1,2}"),
        ) {
            let mut current = Metadata::new();
            current.insert(VALID_LABELS.into(), json!(stored_valid));
            current.insert(INVALID_LABELS.into(), json!(stored_invalid));
            let change = MetadataChange {
                add_valid: change_valid.clone(),
                add_invalid: change_invalid.clone(),
                proposed_label: proposed,
                rewrite: false,
            };
            let out = merge_metadata(&current, &change);
            let mut after = current.clone();
            for (k, v) in &out.set_metadata {
                prop_assert!(!v.is_null());
                after.insert(k.clone(), v.clone());
            }
            prop_assert!(!merge_metadata(&after, &change).changed());
            let union: Vec<String> = stored_valid.union(&change_valid).cloned().collect();
            prop_assert_eq!(&out.valid_labels, &union);
            prop_assert_eq!(
                out.set_metadata.contains_key(VALID_LABELS),
                !change_valid.is_subset(&stored_valid)
            );
        }
    }

    // The derivation and its verification.

    const IMG: &str = "3f52804b-2fad-4e00-92c8-b593da3a8ed3";

    fn label(
        line: u32,
        word: u32,
        name: &str,
        status: ValidationStatus,
        by: &str,
    ) -> ReceiptWordLabel {
        ReceiptWordLabel {
            key: crate::model::LabelKey::new(
                crate::model::ImageId::parse(IMG).unwrap(),
                1,
                line,
                word,
                name,
            ),
            reasoning: None,
            timestamp_added: chrono::DateTime::UNIX_EPOCH,
            validation_status: status,
            label_proposed_by: Some(by.to_owned()),
            label_consolidated_from: None,
        }
    }

    fn sets(valid: &[&str], invalid: &[&str]) -> LabelSets {
        LabelSets {
            valid: set(valid),
            invalid: set(invalid),
        }
    }

    #[test]
    fn only_labels_a_completion_batch_decided_are_derived() {
        use ValidationStatus::{Invalid, NeedsReview, None, Pending, Valid};
        const BATCH: &str = "COMPLETION_BATCH";
        let labels = vec![
            label(1, 1, "DATE", Valid, BATCH),
            label(1, 1, "TAX", Invalid, BATCH),
            label(1, 1, "TIP", NeedsReview, BATCH),
            // A reviewer's and a layout model's labels are not the fleet's to merge.
            label(1, 1, "TIME", Valid, "HUMAN"),
            label(1, 1, "TOTAL", Invalid, "LAYOUTLM"),
            // A reset and a new correction are NONE; a label in flight is PENDING.
            label(1, 1, "SUBTOTAL", None, BATCH),
            label(1, 1, "COUPON", Pending, BATCH),
            // Another word; and a word with nothing derived is absent.
            label(1, 2, "DATE", Invalid, BATCH),
            label(2, 1, "DATE", Valid, "HUMAN"),
        ];
        let words = word_label_sets(&labels);
        let keys: Vec<(u32, u32)> = words.keys().map(|w| (w.line_id, w.word_id)).collect();
        assert_eq!(keys, vec![(1, 1), (1, 2)]);
        let first = words.values().next().unwrap();
        assert_eq!(*first, sets(&["DATE"], &["TAX", "TIP"]));
        assert_eq!(*words.values().nth(1).unwrap(), sets(&[], &["DATE"]));

        let mut no_proposer = label(1, 1, "DATE", Valid, BATCH);
        no_proposer.label_proposed_by = Option::None;
        assert!(word_label_sets([&no_proposer]).is_empty());
        assert_eq!(maintained_list(Valid, Some(BATCH)), Some(VALID_LABELS));
        assert_eq!(
            maintained_list(NeedsReview, Some(BATCH)),
            Some(INVALID_LABELS)
        );
        assert_eq!(maintained_list(Valid, Option::None), Option::None);
        assert!(!LabelSets::default().add_label("", Valid, Some(BATCH)));
    }

    #[test]
    fn table_labels_join_the_change_and_a_stale_fetch_cannot_drop_them() {
        // Batch 1 set DATE VALID in the table and wrote it to the vector; the fetch of batch 2
        // does not show that write yet. Batch 2's change carries DATE from the table.
        let stale = meta(json!({"text": "12.99"}));
        let mut change = MetadataChange::invalid("TAX", None);
        change.add_sets(&sets(&["DATE"], &["TAX"]));
        let out = merge_metadata(&stale, &change);
        assert_eq!(
            Value::Object(out.set_metadata.clone()),
            json!({"valid_labels": ["DATE"], "invalid_labels": ["TAX"]})
        );
        assert_eq!(out.written_sets(), sets(&["DATE"], &["TAX"]));
        // A list the write leaves alone is not its to verify.
        let out = merge_metadata(&meta(json!({"valid_labels": ["DATE"]})), &change);
        assert_eq!(out.written_sets(), sets(&[], &["TAX"]));
    }

    #[test]
    fn repairs_write_only_the_written_lists_that_grew() {
        let wrote = sets(&["DATE"], &["TAX"]);
        assert_eq!(repair_lists(&wrote, &wrote), None);
        assert_eq!(repair_lists(&wrote, &sets(&[], &["TAX"])), None);
        assert_eq!(repair_lists(&wrote, &LabelSets::default()), None);

        let (set_metadata, after) =
            repair_lists(&wrote, &sets(&["DATE"], &["TAX", "TIP"])).expect("grew");
        assert_eq!(
            Value::Object(set_metadata),
            json!({"invalid_labels": ["TAX", "TIP"]})
        );
        assert_eq!(after, sets(&["DATE"], &["TAX", "TIP"]));
        // What was written stays (a foreign entry the fetch showed): a repair only adds.
        let wrote = sets(&["DATE", "FOREIGN"], &["TIP"]);
        let (set_metadata, after) = repair_lists(&wrote, &sets(&["TIME"], &["TAX"])).expect("grew");
        assert_eq!(
            Value::Object(set_metadata),
            json!({"valid_labels": ["DATE", "FOREIGN", "TIME"], "invalid_labels": ["TAX", "TIP"]})
        );
        assert_eq!(after, sets(&["DATE", "FOREIGN", "TIME"], &["TAX", "TIP"]));
        assert_eq!(repair_lists(&after, &sets(&["TIME"], &["TAX"])), None);
        // A list the write did not name is left to whoever wrote it.
        assert_eq!(
            repair_lists(&sets(&["DATE"], &[]), &sets(&["DATE"], &["TAX"])),
            None
        );
    }

    #[test]
    fn a_rewrite_writes_unchanged_lists_as_stored() {
        let current = meta(json!({
            "valid_labels": "DATE",
            "invalid_labels": ["TIP", "TAX"],
            "proposed_label": "TOTAL"
        }));
        let mut change = MetadataChange::valid("DATE");
        change.add_sets(&sets(&[], &["TAX"]));
        change.proposed_label = Some("TOTAL".into());
        assert!(!merge_metadata(&current, &change).changed());
        change.rewrite = true;
        let out = merge_metadata(&current, &change);
        // Both lists, each as stored (the value a run that found them unchanged leaves);
        // `proposed_label` is not a list: unchanged, not written.
        assert_eq!(
            Value::Object(out.set_metadata),
            json!({"valid_labels": "DATE", "invalid_labels": ["TIP", "TAX"]})
        );
        // A list that grew is the sorted union; an odd stored value is written normalised;
        // a list with no label at all is not written.
        let current = meta(json!({"valid_labels": ["DATE", null]}));
        let mut change = MetadataChange::invalid("TAX", None);
        change.rewrite = true;
        let out = merge_metadata(&current, &change);
        assert_eq!(
            Value::Object(out.set_metadata),
            json!({"valid_labels": ["DATE"], "invalid_labels": ["TAX"]})
        );
        let change = MetadataChange {
            rewrite: true,
            ..MetadataChange::default()
        };
        assert!(!merge_metadata(&Metadata::new(), &change).changed());
        let mut folded = MetadataChange::valid("A");
        folded.absorb(change);
        assert!(folded.rewrite);
    }

    /// The protocol of one apply on one word (see the module's doc), step by step, against a
    /// model of the table (strongly consistent) and of an eventually consistent vector whose
    /// fetch may return any earlier state.
    #[derive(Debug, Clone)]
    struct Writer {
        label: String,
        valid: bool,
        /// Cut off right after its first vector write, then run again.
        crashes: bool,
        step: Step,
        derived: LabelSets,
        fetched: Metadata,
        rewrite: bool,
        written: LabelSets,
        verifies: bool,
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Step {
        ReadTable,
        WriteTable,
        Fetch,
        WriteVector,
        Verify,
        Done,
    }

    struct World {
        /// Labels set by the writers, all with `label_proposed_by = COMPLETION_BATCH`.
        table: Vec<ReceiptWordLabel>,
        /// Every state the vector's metadata has had, oldest first.
        history: Vec<Metadata>,
    }

    impl World {
        fn table_sets(&self) -> LabelSets {
            word_label_sets(&self.table)
                .into_values()
                .next()
                .unwrap_or_default()
        }

        fn write(&mut self, set_metadata: &Metadata) {
            let mut next = self.history.last().cloned().unwrap_or_default();
            for (k, v) in set_metadata {
                next.insert(k.clone(), v.clone());
            }
            self.history.push(next);
        }

        fn latest_sets(&self) -> LabelSets {
            let latest = self.history.last().cloned().unwrap_or_default();
            LabelSets {
                valid: label_set(latest.get(VALID_LABELS)),
                invalid: label_set(latest.get(INVALID_LABELS)),
            }
        }
    }

    impl Writer {
        fn new(label: &str, valid: bool, crashes: bool, verifies: bool) -> Self {
            Writer {
                label: label.to_owned(),
                valid,
                crashes,
                step: Step::ReadTable,
                derived: LabelSets::default(),
                fetched: Metadata::new(),
                rewrite: false,
                written: LabelSets::default(),
                verifies,
            }
        }

        fn status(&self) -> ValidationStatus {
            if self.valid {
                ValidationStatus::Valid
            } else {
                ValidationStatus::Invalid
            }
        }

        /// One step; a fetch returns the state `stale` writes before the latest (or the first).
        fn step(&mut self, world: &mut World, stale: usize) {
            match self.step {
                // The chunk reads the labels before its own status changes.
                Step::ReadTable => {
                    self.derived = world.table_sets();
                    self.step = Step::WriteTable;
                }
                Step::WriteTable => {
                    let mine = label(1, 1, &self.label, self.status(), "COMPLETION_BATCH");
                    if world.table.iter().any(|l| l.key == mine.key) {
                        // Already in place: an earlier run applied it.
                        self.rewrite = true;
                    } else {
                        world.table.push(mine);
                    }
                    self.step = Step::Fetch;
                }
                Step::Fetch => {
                    let n = world.history.len();
                    self.fetched = world.history[n - 1 - stale.min(n - 1)].clone();
                    self.step = Step::WriteVector;
                }
                Step::WriteVector => {
                    let mut change = if self.valid {
                        MetadataChange::valid(self.label.clone())
                    } else {
                        MetadataChange::invalid(self.label.clone(), None)
                    };
                    change.add_sets(&self.derived);
                    change.rewrite = self.rewrite;
                    let out = merge_metadata(&self.fetched, &change);
                    if !out.changed() {
                        self.step = Step::Done;
                        return;
                    }
                    world.write(&out.set_metadata);
                    self.written = out.written_sets();
                    if self.crashes {
                        // Cut off before verifying; handled again from the start.
                        self.crashes = false;
                        self.step = Step::ReadTable;
                    } else {
                        self.step = if self.verifies {
                            Step::Verify
                        } else {
                            Step::Done
                        };
                    }
                }
                Step::Verify => match repair_lists(&self.written, &world.table_sets()) {
                    None => self.step = Step::Done,
                    Some((set_metadata, after)) => {
                        world.write(&set_metadata);
                        self.written = after;
                    }
                },
                Step::Done => {}
            }
        }
    }

    /// Runs the writers, interleaved by `schedule` (an index into the writers not done yet,
    /// then round robin), with fetches as stale as `staleness` says. The latest metadata's
    /// lists and the table's derived ones.
    fn run(
        mut writers: Vec<Writer>,
        schedule: &[usize],
        staleness: &[usize],
    ) -> (LabelSets, LabelSets) {
        let mut world = World {
            table: Vec::new(),
            history: vec![meta(json!({"text": "12.99"}))],
        };
        let mut stale = staleness.iter().copied().cycle();
        let mut picks = schedule.iter().copied();
        for _ in 0..10_000 {
            let live: Vec<usize> = (0..writers.len())
                .filter(|i| writers[*i].step != Step::Done)
                .collect();
            if live.is_empty() {
                break;
            }
            let i = live[picks.next().unwrap_or(0) % live.len()];
            writers[i].step(&mut world, stale.next().unwrap_or(0));
        }
        assert!(
            writers.iter().all(|w| w.step == Step::Done),
            "every writer ends"
        );
        (world.latest_sets(), world.table_sets())
    }

    #[test]
    fn a_write_from_a_stale_derivation_loses_a_label_unless_verified() {
        // Two batches judge DATE and TIME of one word VALID. B reads the table before A's
        // status change, A before B's; A writes its vector first, B's fetch does not show
        // that write yet, and B writes last.
        let run_with = |verifies: bool| {
            let mut world = World {
                table: Vec::new(),
                history: vec![meta(json!({"text": "12.99"}))],
            };
            let mut w = [
                Writer::new("DATE", true, false, verifies),
                Writer::new("TIME", true, false, verifies),
            ];
            let (a, b) = (0, 1);
            for i in [b, a, a, b, a, a] {
                // B reads; A reads, writes the table; B writes the table; A fetches, writes.
                w[i].step(&mut world, 0);
            }
            while w[a].step != Step::Done {
                w[a].step(&mut world, 0);
            }
            w[b].step(&mut world, usize::MAX); // the fetch: the state before any write
            while w[b].step != Step::Done {
                w[b].step(&mut world, 0);
            }
            (world.latest_sets(), world.table_sets())
        };
        let (latest, table) = run_with(false);
        assert_eq!(table, sets(&["DATE", "TIME"], &[]));
        assert_eq!(
            latest,
            sets(&["TIME"], &[]),
            "without verification DATE is lost"
        );
        let (latest, table) = run_with(true);
        assert_eq!(latest, table);
    }

    proptest! {
        /// Whatever the interleaving of the applies' steps, however stale their fetches, and
        /// with applies cut off after their vector write and run again: once every apply is
        /// done, the vector's lists hold every label the table derives.
        #[test]
        fn every_label_ends_in_the_metadata(
            writers in prop::collection::vec(("[A-F]", any::<bool>(), prop::bool::weighted(0.25)), 1..5),
            schedule in prop::collection::vec(0usize..8, 0..60),
            staleness in prop::collection::vec(0usize..6, 1..20),
        ) {
            let mut seen = BTreeSet::new();
            let writers: Vec<Writer> = writers
                .into_iter()
                .filter(|(name, _, _)| seen.insert(name.clone()))
                .map(|(name, valid, crashes)| Writer::new(&name, valid, crashes, true))
                .collect();
            let (latest, table) = run(writers, &schedule, &staleness);
            prop_assert!(table.is_within(&latest), "table {:?}, vector {:?}", table, latest);
        }
    }
}
