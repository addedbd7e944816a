//! The label merge of a word vector's metadata (processing-rules.md "Vector metadata",
//! data-model.md "Vector metadata (Pinecone)"), as a pure function.
//!
//! Pinecone's `setMetadata` overwrites the keys it names, so the merge is computed here from
//! the fetched metadata and only keys whose value changes are sent. Re-applying a change
//! yields no keys, hence no write: that is what makes a re-run of a batch cheap and harmless.

use std::collections::BTreeSet;

use serde_json::Value;

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
    /// `proposed_label` replaces an earlier one (like "the later result wins" elsewhere).
    pub fn absorb(&mut self, later: MetadataChange) {
        self.add_valid.extend(later.add_valid);
        self.add_invalid.extend(later.add_invalid);
        if later.proposed_label.is_some() {
            self.proposed_label = later.proposed_label;
        }
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
pub fn merge_metadata(current: &Metadata, change: &MetadataChange) -> MergeOutcome {
    let mut set_metadata = Metadata::new();

    let mut merge_list = |key: &str, add: &BTreeSet<String>| -> Vec<String> {
        let mut labels = label_set(current.get(key));
        let before = labels.len();
        labels.extend(add.iter().filter(|l| !l.is_empty()).cloned());
        let labels: Vec<String> = labels.into_iter().collect();
        if labels.len() != before {
            set_metadata.insert(
                key.to_owned(),
                Value::Array(labels.iter().cloned().map(Value::String).collect()),
            );
        }
        labels
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
}
