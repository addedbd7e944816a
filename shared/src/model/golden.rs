//! Golden items: hand-written from docs/spec/data-model.md, compared attribute by attribute.

use serde_json::{Value, json};

use super::item::{from_wire_json, to_wire_json};
use super::*;
use crate::model::time::parse_timestamp;

const IMG: &str = "3f52804b-2fad-4e00-92c8-b593da3a8ed3";

fn assert_same(actual: Value, expected: Value) {
    let (a, e) = (actual.as_object().unwrap(), expected.as_object().unwrap());
    for (k, v) in e {
        assert_eq!(a.get(k), Some(v), "attribute {k}");
    }
    for k in a.keys() {
        assert!(e.contains_key(k), "unexpected attribute {k}");
    }
}

pub(crate) fn golden_summary() -> (BatchSummary, Value) {
    let summary = BatchSummary {
        batch_id: "0b7e5a52-8c1f-4f7e-9d0a-1c2b3d4e5f60".into(),
        batch_type: BatchType::Completion,
        openai_batch_id: "batch_abc123".into(),
        submitted_at: parse_timestamp("2025-06-20T17:03:12.345678+00:00").unwrap(),
        status: BatchStatus::Pending,
        result_file_id: "N/A".into(),
        receipt_refs: vec![ReceiptKey {
            image_id: ImageId::parse(IMG).unwrap(),
            receipt_id: 1,
        }],
    };
    let item = json!({
        "PK": {"S": "BATCH#0b7e5a52-8c1f-4f7e-9d0a-1c2b3d4e5f60"},
        "SK": {"S": "STATUS"},
        "GSI1PK": {"S": "STATUS#PENDING"},
        "GSI1SK": {"S": "BATCH_TYPE#COMPLETION#BATCH_ID#0b7e5a52-8c1f-4f7e-9d0a-1c2b3d4e5f60"},
        "TYPE": {"S": "BATCH_SUMMARY"},
        "batch_type": {"S": "COMPLETION"},
        "openai_batch_id": {"S": "batch_abc123"},
        "submitted_at": {"S": "2025-06-20T17:03:12.345678+00:00"},
        "status": {"S": "PENDING"},
        "result_file_id": {"S": "N/A"},
        "receipt_refs": {"L": [{"M": {"image_id": {"S": IMG}, "receipt_id": {"N": "1"}}}]}
    });
    (summary, item)
}

pub(crate) fn golden_label() -> (ReceiptWordLabel, Value) {
    let label = ReceiptWordLabel {
        key: LabelKey::new(ImageId::parse(IMG).unwrap(), 1, 3, 1, "TAX"),
        reasoning: None,
        timestamp_added: parse_timestamp("2025-06-20T17:03:12+00:00").unwrap(),
        validation_status: ValidationStatus::Pending,
        label_proposed_by: Some("COMPLETION_BATCH".into()),
        label_consolidated_from: None,
    };
    let word = format!("IMAGE#{IMG}#RECEIPT#00001#LINE#00003#WORD#00001");
    let item = json!({
        "PK": {"S": format!("IMAGE#{IMG}")},
        "SK": {"S": "RECEIPT#00001#LINE#00003#WORD#00001#LABEL#TAX"},
        "GSI1PK": {"S": "LABEL#TAX_______________________________"},
        "GSI1SK": {"S": word},
        "GSI2PK": {"S": "RECEIPT"},
        "GSI2SK": {"S": word},
        "GSI3PK": {"S": "VALIDATION_STATUS#PENDING"},
        "GSI3SK": {"S": format!("{word}#LABEL#TAX")},
        "GSI4PK": {"S": format!("IMAGE#{IMG}#RECEIPT#00001")},
        "GSI4SK": {"S": "4_LABEL#00003#00001#TAX"},
        "TYPE": {"S": "RECEIPT_WORD_LABEL"},
        "reasoning": {"NULL": true},
        "timestamp_added": {"S": "2025-06-20T17:03:12+00:00"},
        "validation_status": {"S": "PENDING"},
        "label_proposed_by": {"S": "COMPLETION_BATCH"},
        "label_consolidated_from": {"NULL": true}
    });
    (label, item)
}

#[test]
fn batch_summary_matches_golden_item() {
    let (summary, expected) = golden_summary();
    assert_same(to_wire_json(&summary.to_item()), expected.clone());
    assert_eq!(
        BatchSummary::from_item(&from_wire_json(&expected).unwrap()).unwrap(),
        summary
    );
}

#[test]
fn word_label_matches_golden_item() {
    let (label, expected) = golden_label();
    assert_eq!(
        "LABEL#TAX_______________________________".len(),
        40,
        "the golden GSI1PK itself is 40 characters"
    );
    assert_same(to_wire_json(&label.to_item()), expected.clone());
    assert_eq!(
        ReceiptWordLabel::from_item(&from_wire_json(&expected).unwrap()).unwrap(),
        label
    );
}

#[test]
fn long_label_gets_no_padding() {
    let long = "A".repeat(40);
    assert_eq!(word_label::label_gsi1pk(&long), format!("LABEL#{long}"));
    assert_eq!(word_label::label_gsi1pk("A".repeat(34).as_str()).len(), 40);
}

#[test]
fn older_label_items_decode() {
    let (_, mut item) = golden_label();
    let obj = item.as_object_mut().unwrap();
    obj.remove("GSI4PK");
    obj.remove("GSI4SK");
    obj.remove("validation_status");
    obj.insert(
        "timestamp_added".into(),
        json!({"S": "2025-06-20T17:03:12Z"}),
    );
    let label = ReceiptWordLabel::from_item(&from_wire_json(&item).unwrap()).unwrap();
    assert_eq!(label.validation_status, ValidationStatus::None);
    item["validation_status"] = json!({"NULL": true});
    let label = ReceiptWordLabel::from_item(&from_wire_json(&item).unwrap()).unwrap();
    assert_eq!(label.validation_status, ValidationStatus::None);
}

#[test]
fn bad_label_items_name_key_and_attribute() {
    let (_, mut item) = golden_label();
    item["validation_status"] = json!({"S": "MAYBE"});
    let err = ReceiptWordLabel::from_item(&from_wire_json(&item).unwrap()).unwrap_err();
    assert_eq!(err.attribute, "validation_status");
    assert_eq!(err.pk, format!("IMAGE#{IMG}"));
    assert_eq!(err.sk, "RECEIPT#00001#LINE#00003#WORD#00001#LABEL#TAX");
    assert!(err.to_string().contains("MAYBE"), "{err}");

    let (_, mut item) = golden_label();
    item["timestamp_added"] = json!({"N": "5"});
    let err = ReceiptWordLabel::from_item(&from_wire_json(&item).unwrap()).unwrap_err();
    assert_eq!(err.attribute, "timestamp_added");

    let (_, mut item) = golden_label();
    item["SK"] = json!({"S": "RECEIPT#00001#LINE#00000#WORD#00001#LABEL#TAX"});
    let err = ReceiptWordLabel::from_item(&from_wire_json(&item).unwrap()).unwrap_err();
    assert_eq!(err.attribute, "SK");
}

pub(crate) fn golden_result() -> (CompletionBatchResult, Value) {
    let result = CompletionBatchResult {
        batch_id: "b1".into(),
        label: LabelKey::new(ImageId::parse(IMG).unwrap(), 1, 10, 2, "LINE_TOTAL"),
        status: BatchStatus::Completed,
        gpt_suggested_label: Some("UNIT_PRICE".into()),
        validated_at: parse_timestamp("2025-06-21T08:00:00+00:00").unwrap(),
    };
    let item = json!({
        "PK": {"S": "BATCH#b1"},
        "SK": {"S": "RESULT#RECEIPT#1#LINE#10#WORD#2#LABEL#LINE_TOTAL"},
        "GSI1PK": {"S": "LABEL#LINE_TOTAL"},
        "GSI1SK": {"S": "STATUS#COMPLETED"},
        "GSI2PK": {"S": "BATCH#b1"},
        "GSI2SK": {"S": "STATUS#COMPLETED"},
        "GSI3PK": {"S": format!("IMAGE#{IMG}#RECEIPT#00001")},
        "GSI3SK": {"S": "BATCH#b1#STATUS#COMPLETED"},
        "TYPE": {"S": "COMPLETION_BATCH_RESULT"},
        "original_label": {"S": "LINE_TOTAL"},
        "gpt_suggested_label": {"S": "UNIT_PRICE"},
        "status": {"S": "COMPLETED"},
        "validated_at": {"S": "2025-06-21T08:00:00+00:00"}
    });
    (result, item)
}

#[test]
fn batch_result_matches_golden_item() {
    let (result, expected) = golden_result();
    assert_same(to_wire_json(&result.to_item()), expected.clone());
    assert_eq!(
        CompletionBatchResult::from_item(&from_wire_json(&expected).unwrap()).unwrap(),
        result
    );
}

#[test]
fn older_batch_result_with_unpadded_gsi3pk_decodes() {
    let (result, mut item) = golden_result();
    item["GSI3PK"] = json!({"S": format!("IMAGE#{IMG}#RECEIPT#1")});
    assert_eq!(
        CompletionBatchResult::from_item(&from_wire_json(&item).unwrap()).unwrap(),
        result
    );
    item["SK"] = json!({"S": "RESULT#RECEIPT#1#LINE#10#WORD#2#LABEL#LINE_TOTAL#EXTRA"});
    let err = CompletionBatchResult::from_item(&from_wire_json(&item).unwrap()).unwrap_err();
    assert_eq!(err.attribute, "SK");
}

pub(crate) fn golden_verdict() -> (CompletionBatchVerdict, Value) {
    let verdict = CompletionBatchVerdict {
        batch_id: "b1".into(),
        label: LabelKey::new(ImageId::parse(IMG).unwrap(), 1, 10, 2, "LINE_TOTAL"),
        verdict: Verdict::Invalid,
        previous_status: ValidationStatus::Pending,
        suggested_label: None,
        source: "output:7".into(),
        validated_at: parse_timestamp("2025-06-21T08:00:00.5+00:00").unwrap(),
    };
    let item = json!({
        "PK": {"S": "BATCH#b1"},
        "SK": {"S": format!("VERDICT#IMAGE#{IMG}#RECEIPT#00001#LINE#00010#WORD#00002#LABEL#LINE_TOTAL")},
        "TYPE": {"S": "COMPLETION_BATCH_VERDICT"},
        "verdict": {"S": "INVALID"},
        "previous_status": {"S": "PENDING"},
        "suggested_label": {"NULL": true},
        "source": {"S": "output:7"},
        "validated_at": {"S": "2025-06-21T08:00:00.500000+00:00"}
    });
    (verdict, item)
}

#[test]
fn verdict_row_matches_golden_item() {
    let (verdict, expected) = golden_verdict();
    assert_same(to_wire_json(&verdict.to_item()), expected.clone());
    assert_eq!(
        CompletionBatchVerdict::from_item(&from_wire_json(&expected).unwrap()).unwrap(),
        verdict
    );
}

#[test]
fn summary_rejects_bad_items() {
    let (_, item) = golden_summary();
    for (attr, value) in [
        ("status", json!({"S": "DONE"})),
        ("batch_type", json!({"S": "completion"})),
        (
            "receipt_refs",
            json!({"L": [{"M": {"image_id": {"S": IMG}, "receipt_id": {"N": "0"}}}]}),
        ),
        ("receipt_refs", json!({"S": "x"})),
        ("submitted_at", json!({"S": "soon"})),
        ("openai_batch_id", json!({"NULL": true})),
    ] {
        let mut bad = item.clone();
        bad[attr] = value;
        let err = BatchSummary::from_item(&from_wire_json(&bad).unwrap()).unwrap_err();
        assert!(err.attribute.starts_with(attr), "{attr}: {err}");
        assert!(err.to_string().contains("BATCH#0b7e5a52"), "{err}");
    }
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<String>().prop_map(|s| json!({"S": s})),
            any::<i64>().prop_map(|n| json!({"N": n.to_string()})),
            "[0-9a-z.e-]{0,8}".prop_map(|n| json!({"N": n})),
            Just(json!({"NULL": true})),
            any::<bool>().prop_map(|b| json!({"BOOL": b})),
        ];
        leaf.prop_recursive(2, 8, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(|l| json!({"L": l})),
                prop::collection::btree_map("[a-z_]{1,10}", inner, 0..3)
                    .prop_map(|m| json!({"M": m})),
            ]
        })
    }

    fn mutate(golden: Value, drop: Vec<bool>, replace: Vec<Option<Value>>) -> Value {
        let mut obj = golden.as_object().unwrap().clone();
        let keys: Vec<String> = obj.keys().cloned().collect();
        for (i, k) in keys.iter().enumerate() {
            if drop.get(i).copied().unwrap_or(false) {
                obj.remove(k);
            } else if let Some(Some(v)) = replace.get(i) {
                obj.insert(k.clone(), v.clone());
            }
        }
        Value::Object(obj)
    }

    fn decode_all(item: &Item) {
        let _ = BatchSummary::from_item(item);
        let _ = ReceiptWordLabel::from_item(item);
        let _ = CompletionBatchResult::from_item(item);
        let _ = CompletionBatchVerdict::from_item(item);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        #[test]
        fn decoders_never_panic_on_mutated_items(
            which in 0..4usize,
            drop in prop::collection::vec(prop::bool::weighted(0.15), 16),
            replace in prop::collection::vec(prop::option::weighted(0.2, arb_value()), 16),
        ) {
            let golden = match which {
                0 => golden_summary().1,
                1 => golden_label().1,
                2 => golden_result().1,
                _ => golden_verdict().1,
            };
            let item = from_wire_json(&mutate(golden, drop, replace)).unwrap();
            decode_all(&item);
        }

        #[test]
        fn decoders_never_panic_on_truncated_strings(which in 0..4usize, cut in 0..80usize) {
            let golden = match which {
                0 => golden_summary().1,
                1 => golden_label().1,
                2 => golden_result().1,
                _ => golden_verdict().1,
            };
            let mut item = from_wire_json(&golden).unwrap();
            for v in item.values_mut() {
                if let aws_sdk_dynamodb::types::AttributeValue::S(s) = v {
                    let end = s.char_indices().map(|(i, _)| i).nth(cut).unwrap_or(s.len());
                    s.truncate(end);
                }
            }
            decode_all(&item);
        }

        #[test]
        fn decoders_never_panic_on_random_items(
            m in prop::collection::btree_map("PK|SK|TYPE|status|receipt_refs|[a-z_]{1,8}", arb_value(), 0..10)
        ) {
            if let Some(item) = from_wire_json(&Value::Object(m.into_iter().collect())) {
                decode_all(&item);
            }
        }
    }
}
