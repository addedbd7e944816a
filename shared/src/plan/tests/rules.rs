use std::collections::BTreeSet;

use super::fixtures::*;
use crate::model::status::PROPOSED_BY_COMPLETION_BATCH;
use crate::model::time::from_unix_seconds;
use crate::model::{BatchStatus, CompletionBatchVerdict, ReceiptWordLabel, Verdict};
use crate::parse::{
    LineReader, Malformed, MalformedKind, ParsedLine, RequestFailure, ResultIdError, ResultSkip,
    parse_output_read,
};
use crate::plan::{LabelSet, Outcome, Plan, StatusChange, fallback_targets, receipts_to_load};

fn change(key: &crate::model::LabelKey, to: crate::model::ValidationStatus) -> StatusChange {
    StatusChange {
        label: key.clone(),
        from: PENDING,
        to,
    }
}

fn verdict_of(plan: &Plan, key: &crate::model::LabelKey) -> Option<Verdict> {
    plan.verdicts
        .iter()
        .find(|v| v.label == *key)
        .map(|v| v.verdict)
}

fn completed_at() -> chrono::DateTime<chrono::Utc> {
    from_unix_seconds(COMPLETED_AT).unwrap()
}

fn no_writes_but_summary(plan: &Plan) -> bool {
    plan.verdicts.is_empty()
        && plan.status_changes.is_empty()
        && plan.corrections.is_empty()
        && plan.vector_merges.is_empty()
        && plan.results.is_empty()
}

// ---- Batch outcome -------------------------------------------------------------------------

#[test]
fn outcome_not_terminal_plans_nothing_and_no_summary() {
    let a = k(IMG_A, 1, 1, "DATE");
    for status in [
        "validating",
        "in_progress",
        "finalizing",
        "cancelling",
        "canceling",
        "paused",
    ] {
        let plan = Scenario::new(status)
            .target(&a, PENDING)
            .answer(1, vec![res(&a, true, None)])
            .plan();
        assert_eq!(plan.outcome, Outcome::NotTerminal, "{status}");
        assert!(no_writes_but_summary(&plan), "{status}");
        assert!(plan.resets.is_empty(), "{status}");
        assert_eq!(plan.summary, None, "{status}");
        assert_eq!(plan.counters.output_lines.total, 1);
    }
}

#[test]
fn outcome_completed_applies_output_resets_the_rest_and_summary_completed() {
    let a = k(IMG_A, 1, 1, "DATE");
    let b = k(IMG_A, 1, 2, "TAX");
    let plan = Scenario::new("completed")
        .target(&a, PENDING)
        .target(&b, PENDING)
        .answer(1, vec![res(&a, true, None)])
        .plan();
    assert_eq!(plan.status_changes, vec![change(&a, VALID)]);
    assert_eq!(plan.resets, vec![change(&b, NONE)]);
    let s = plan.summary.clone().unwrap();
    assert_eq!(s.status, BatchStatus::Completed);
    assert_eq!(s.result_file_id.as_deref(), Some(OUTPUT_FILE));
    assert_eq!(plan.validated_at, completed_at());
    assert_eq!(plan.counters.timestamp_field, "completed_at");
}

#[test]
fn a_plan_built_in_the_storage_of_a_dropped_one_is_the_same_plan() {
    let a = k(IMG_A, 1, 1, "DATE");
    let b = k(IMG_A, 1, 2, "TAX");
    let c = k(IMG_A, 2, 1, "TIP");
    let big = Scenario::new("completed")
        .target(&a, PENDING)
        .target(&b, PENDING)
        .target(&c, PENDING)
        .answer(
            1,
            vec![
                res(&a, true, None),
                res(&b, false, Some("TIME")),
                res(&c, false, None),
            ],
        );
    let small = Scenario::new("completed")
        .target(&a, PENDING)
        .answer(1, vec![res(&a, false, Some("TAX"))]);
    let (big_plan, small_plan) = (big.plan(), small.plan());
    // Whichever storage each plan gets (other tests drop plans meanwhile), nothing of an
    // earlier plan is left in a later one.
    for _ in 0..3 {
        drop(big.plan());
        assert_eq!(small.plan(), small_plan);
        drop(small.plan());
        assert_eq!(big.plan(), big_plan);
    }
    assert_eq!(small_plan.verdicts.len(), 1);
    assert_eq!(small_plan.corrections.len(), 1);
}

#[test]
fn outcome_failed_resets_every_pending_target_no_verdicts_summary_failed() {
    let a = k(IMG_A, 1, 1, "DATE");
    let b = k(IMG_A, 1, 2, "TAX");
    let c = k(IMG_A, 1, 3, "TIP");
    let mut s = Scenario::new("failed")
        .target(&a, PENDING)
        .target(&b, PENDING)
        .target(&c, INVALID)
        .answer(1, vec![res(&a, true, None)]);
    s.batch.output_file_id = None;
    let plan = s.plan();
    assert!(no_writes_but_summary(&plan));
    assert_eq!(plan.resets, vec![change(&a, NONE), change(&b, NONE)]);
    assert_eq!(plan.counters.targets.not_pending, 1);
    assert_eq!(plan.counters.results.ignored, 1);
    assert_eq!(plan.summary.as_ref().unwrap().status, BatchStatus::Failed);
}

#[test]
fn outcome_expired_applies_partial_output_with_expired_status_and_expired_at() {
    let a = k(IMG_A, 1, 1, "DATE");
    let b = k(IMG_A, 1, 2, "TAX");
    let plan = Scenario::new("expired")
        .target(&a, PENDING)
        .target(&b, PENDING)
        .answer(1, vec![res(&a, false, None)])
        .line(
            2,
            ParsedLine::Failed {
                receipt: receipt(IMG_A, 1),
                custom_id: receipt(IMG_A, 1).custom_id(),
                failure: RequestFailure::Error {
                    code: Some("batch_expired".into()),
                    message: None,
                },
            },
        )
        .plan();
    let expired_at = from_unix_seconds(EXPIRED_AT).unwrap();
    assert_eq!(plan.summary.as_ref().unwrap().status, BatchStatus::Expired);
    assert_eq!(plan.results.len(), 1);
    assert_eq!(plan.results[0].status, BatchStatus::Expired);
    assert_eq!(plan.results[0].validated_at, expired_at);
    assert_eq!(plan.verdicts[0].validated_at, expired_at);
    assert_eq!(plan.resets, vec![change(&b, NONE)]);
}

#[test]
fn outcome_cancelled_rows_carry_cancelled_and_cancelled_at() {
    let a = k(IMG_A, 1, 1, "DATE");
    let plan = Scenario::new("cancelled")
        .target(&a, PENDING)
        .answer(1, vec![res(&a, true, None)])
        .plan();
    let cancelled_at = from_unix_seconds(CANCELLED_AT).unwrap();
    assert_eq!(
        plan.summary.as_ref().unwrap().status,
        BatchStatus::Cancelled
    );
    assert_eq!(plan.results[0].status, BatchStatus::Cancelled);
    assert_eq!(plan.results[0].validated_at, cancelled_at);
    assert_eq!(plan.verdicts[0].validated_at, cancelled_at);
}

#[test]
fn outcome_timestamp_falls_back_deterministically_when_missing() {
    let a = k(IMG_A, 1, 1, "DATE");
    let mut s = Scenario::new("completed")
        .target(&a, PENDING)
        .answer(1, vec![res(&a, true, None)]);
    s.batch.completed_at = None;
    let plan = s.plan();
    assert_eq!(plan.counters.timestamp_field, "in_progress_at");
    assert_eq!(
        plan.validated_at,
        from_unix_seconds(CREATED_AT + 10).unwrap()
    );
    assert_eq!(plan, s.plan());
    s.batch.in_progress_at = None;
    s.batch.created_at = None;
    assert_eq!(s.plan().counters.timestamp_field, "none");
}

// ---- Per output line -----------------------------------------------------------------------

#[test]
fn rule_1_malformed_line_is_counted_processing_goes_on_and_its_targets_get_no_verdict() {
    let a = k(IMG_A, 1, 1, "DATE");
    let b = kr(IMG_A, 2, 1, 1, "DATE");
    let plan = Scenario::new("completed")
        .target(&a, PENDING)
        .target(&b, PENDING)
        .line(
            1,
            ParsedLine::Malformed(Malformed::new(MalformedKind::NotJson, "x")),
        )
        .line(2, ParsedLine::Blank)
        .line(
            3,
            ParsedLine::Malformed(Malformed::new(MalformedKind::TooLong, "line too long")),
        )
        .answer(4, vec![res(&b, true, None)])
        .plan();
    assert_eq!(plan.status_changes, vec![change(&b, VALID)]);
    assert_eq!(plan.resets, vec![change(&a, NONE)]);
    let lines = &plan.counters.output_lines;
    assert_eq!((lines.total, lines.blank, lines.answered), (4, 1, 1));
    assert_eq!(lines.malformed["not_json"], 1);
    assert_eq!(lines.malformed["too_long"], 1);
}

#[test]
fn rule_2_failed_request_gives_no_verdicts_fixes_targets_left_pending_forever() {
    let a = k(IMG_A, 1, 1, "DATE");
    let failed = ParsedLine::Failed {
        receipt: receipt(IMG_A, 1),
        custom_id: receipt(IMG_A, 1).custom_id(),
        failure: RequestFailure::Status(500),
    };
    let plan = Scenario::new("completed")
        .target(&a, PENDING)
        .line(1, failed)
        .plan();
    assert!(plan.verdicts.is_empty());
    assert_eq!(plan.resets, vec![change(&a, NONE)]);
    assert_eq!(plan.counters.output_lines.failed, 1);
}

#[test]
fn rule_4_each_result_on_its_own_fixes_one_bad_id_discarding_the_line() {
    let a = k(IMG_A, 1, 1, "DATE");
    let b = k(IMG_A, 1, 2, "TAX");
    let plan = Scenario::new("completed")
        .target(&a, PENDING)
        .target(&b, PENDING)
        .answer(
            1,
            vec![
                Err(ResultSkip::BadId(ResultIdError::PartCount { found: 11 })),
                res(&a, true, None),
                Err(ResultSkip::OtherReceipt {
                    expected: receipt(IMG_A, 1),
                    found: receipt(IMG_A, 2),
                }),
                Err(ResultSkip::IsValidNotBool),
                Err(ResultSkip::MissingId),
                Err(ResultSkip::NotAnObject),
                res(&b, false, None),
            ],
        )
        .plan();
    assert_eq!(
        plan.status_changes,
        vec![change(&a, VALID), change(&b, INVALID)]
    );
    let r = &plan.counters.results;
    assert_eq!(
        (
            r.total,
            r.applied,
            r.bad_id,
            r.other_receipt,
            r.is_valid_not_bool,
            r.missing_id,
            r.not_an_object
        ),
        (7, 2, 1, 1, 1, 1, 1)
    );
}

#[test]
fn rule_4_result_for_a_label_that_is_not_a_target_is_skipped_and_counted() {
    let a = k(IMG_A, 1, 1, "DATE");
    let other_batch = k(IMG_A, 1, 2, "TAX");
    let plan = Scenario::new("completed")
        .target(&a, PENDING)
        .label(&other_batch, PENDING)
        .answer(1, vec![res(&a, true, None), res(&other_batch, true, None)])
        .plan();
    assert_eq!(plan.status_changes, vec![change(&a, VALID)]);
    assert!(
        plan.resets.is_empty(),
        "another batch's PENDING label is not reset"
    );
    assert_eq!(plan.counters.results.not_target, 1);
}

#[test]
fn rule_4_result_for_a_target_missing_from_the_table_is_skipped_and_counted() {
    let gone = k(IMG_A, 1, 1, "DATE");
    let plan = Scenario::new("completed")
        .gone_target(&gone)
        .answer(1, vec![res(&gone, false, Some("TAX"))])
        .plan();
    assert!(plan.verdicts.is_empty() && plan.corrections.is_empty());
    assert_eq!(plan.counters.results.not_in_table, 1);
    assert_eq!(plan.counters.targets.missing, 1);
}

#[test]
fn rule_4_two_results_for_the_same_label_the_later_in_the_file_wins() {
    let a = k(IMG_A, 1, 1, "DATE");
    let b = k(IMG_A, 1, 2, "TAX");
    let s = Scenario::new("completed")
        .target(&a, PENDING)
        .target(&b, PENDING)
        // Fed out of file order: line 7 is later in the file than line 3.
        .answer(
            7,
            vec![
                res(&a, false, Some("TIME")),
                res(&b, true, None),
                res(&b, false, None),
            ],
        )
        .answer(3, vec![res(&a, true, None)]);
    let plan = s.plan();
    assert_eq!(verdict_of(&plan, &a), Some(Verdict::Invalid));
    assert_eq!(
        verdict_of(&plan, &b),
        Some(Verdict::Invalid),
        "later within the line"
    );
    let row = plan.verdicts.iter().find(|v| v.label == a).unwrap();
    assert_eq!(&*row.source, "output:7");
    assert_eq!(row.suggested_label.as_deref(), Some("TIME"));
    assert_eq!(plan.counters.results.duplicate_overridden, 2);
    let mut reversed = s.clone();
    reversed.lines.reverse();
    assert_eq!(reversed.plan(), plan);
}

#[test]
fn rule_4_a_skipped_later_result_does_not_override_an_earlier_good_one() {
    let a = k(IMG_A, 1, 1, "DATE");
    let plan = Scenario::new("completed")
        .target(&a, PENDING)
        .answer(1, vec![res(&a, true, None)])
        .answer(2, vec![Err(ResultSkip::IsValidNotBool)])
        .plan();
    assert_eq!(verdict_of(&plan, &a), Some(Verdict::Valid));
}

// ---- Verdicts ------------------------------------------------------------------------------

#[test]
fn verdict_already_valid_never_changes_and_gets_no_rows() {
    let a = k(IMG_A, 1, 1, "DATE");
    let plan = Scenario::new("completed")
        .target(&a, VALID)
        .answer(1, vec![res(&a, false, Some("TAX"))])
        .plan();
    assert!(no_writes_but_summary(&plan));
    assert!(plan.resets.is_empty());
    assert_eq!(plan.counters.results.already_valid, 1);
}

#[test]
fn verdict_is_valid_true_sets_valid() {
    let a = k(IMG_A, 1, 1, "DATE");
    let plan = Scenario::new("completed")
        .target(&a, PENDING)
        .answer(5, vec![res(&a, true, None)])
        .plan();
    assert_eq!(plan.status_changes, vec![change(&a, VALID)]);
    assert_eq!(
        plan.verdicts,
        vec![CompletionBatchVerdict {
            batch_id: BATCH_ID.into(),
            label: a.clone(),
            verdict: Verdict::Valid,
            previous_status: PENDING,
            suggested_label: None,
            source: "output:5".into(),
            validated_at: completed_at(),
        }]
    );
}

#[test]
fn verdict_is_valid_false_sets_invalid() {
    let a = k(IMG_A, 1, 1, "DATE");
    let plan = Scenario::new("completed")
        .target(&a, PENDING)
        .label(&k(IMG_A, 1, 1, "TIME"), NEEDS_REVIEW)
        .label(&k(IMG_A, 1, 2, "TAX"), INVALID)
        .label(&k(IMG_B, 1, 1, "TAX"), INVALID)
        .answer(1, vec![res(&a, false, None)])
        .plan();
    assert_eq!(plan.status_changes, vec![change(&a, INVALID)]);
}

#[test]
fn verdict_is_valid_false_is_needs_review_when_another_label_of_the_word_was_invalid_before() {
    let a = k(IMG_A, 1, 1, "DATE");
    let plan = Scenario::new("completed")
        .target(&a, PENDING)
        .label(&k(IMG_A, 1, 1, "TIME"), INVALID)
        .answer(1, vec![res(&a, false, None)])
        .plan();
    assert_eq!(plan.status_changes, vec![change(&a, NEEDS_REVIEW)]);
    assert_eq!(plan.counters.verdicts.needs_review, 1);
}

#[test]
fn verdict_fixes_order_dependence_an_invalid_target_does_not_make_its_neighbour_needs_review() {
    let a = k(IMG_A, 1, 1, "DATE");
    let b = k(IMG_A, 1, 1, "TIME");
    // B is INVALID now only because it is a target (say an earlier run of this batch, or
    // another writer, got there): it was not INVALID "before this batch".
    for b_status in [PENDING, INVALID] {
        let s = Scenario::new("completed")
            .target(&a, PENDING)
            .target(&b, b_status)
            .answer(1, vec![res(&a, false, None)])
            .answer(2, vec![res(&b, false, None)]);
        let plan = s.plan();
        assert_eq!(verdict_of(&plan, &a), Some(Verdict::Invalid));
        assert_eq!(verdict_of(&plan, &b), Some(Verdict::Invalid));
        let mut swapped = s.clone();
        swapped.lines = vec![
            (1, answered(vec![res(&b, false, None)])),
            (2, answered(vec![res(&a, false, None)])),
        ];
        let swapped = swapped.plan();
        assert_eq!(verdict_of(&swapped, &a), Some(Verdict::Invalid));
        assert_eq!(verdict_of(&swapped, &b), Some(Verdict::Invalid));
    }
}

#[test]
fn verdict_every_label_the_fleet_creates_is_proposed_by_completion_batch() {
    let a = k(IMG_A, 1, 1, "DATE");
    let s = Scenario::new("completed")
        .target(&a, PENDING)
        .answer(1, vec![res(&a, false, Some("TIME"))]);
    let plan = s.plan();
    let mut world = s.world([]);
    world.apply(plan.clone());
    assert!(
        plan.corrections
            .iter()
            .all(|c| c.label_proposed_by.as_deref() == Some(PROPOSED_BY_COMPLETION_BATCH))
    );
    assert_eq!(
        world.labels[&a].label_proposed_by.as_deref(),
        Some(PROPOSED_BY_COMPLETION_BATCH)
    );
}

#[test]
fn correction_created_for_a_core_suggestion_on_an_invalid_verdict() {
    let a = k(IMG_A, 1, 1, "LINE_TOTAL");
    let plan = Scenario::new("completed")
        .target(&a, PENDING)
        .answer(1, vec![res(&a, false, Some("UNIT_PRICE"))])
        .plan();
    assert_eq!(
        plan.corrections,
        vec![ReceiptWordLabel {
            key: a.with_label("UNIT_PRICE"),
            reasoning: None,
            timestamp_added: completed_at(),
            validation_status: NONE,
            label_proposed_by: Some(PROPOSED_BY_COMPLETION_BATCH.into()),
            label_consolidated_from: Some("LINE_TOTAL".into()),
        }]
    );
    assert_eq!(plan.counters.corrections.created, 1);
}

#[test]
fn correction_fixes_overwrite_not_created_when_the_name_exists_even_reviewed() {
    let a = k(IMG_A, 1, 1, "LINE_TOTAL");
    for status in [NONE, VALID, INVALID, NEEDS_REVIEW, PENDING] {
        let plan = Scenario::new("completed")
            .target(&a, PENDING)
            .label(&a.with_label("UNIT_PRICE"), status)
            .answer(1, vec![res(&a, false, Some("UNIT_PRICE"))])
            .plan();
        assert!(plan.corrections.is_empty(), "{status}");
        assert_eq!(plan.counters.corrections.existing, 1);
        // The vector still hears the suggestion.
        assert_eq!(
            plan.vector_merges[0].proposed_label.as_deref(),
            Some("UNIT_PRICE")
        );
    }
}

#[test]
fn correction_one_per_word_and_name_consolidated_from_the_smallest_judged_label() {
    let a = k(IMG_A, 1, 1, "SUBTOTAL");
    let b = k(IMG_A, 1, 1, "GRAND_TOTAL");
    let c = k(IMG_A, 1, 1, "TAX");
    let other_word = k(IMG_A, 1, 2, "TAX");
    let s = Scenario::new("completed")
        .target(&a, PENDING)
        .target(&b, PENDING)
        .target(&c, PENDING)
        .target(&other_word, PENDING)
        .answer(
            1,
            vec![
                res(&a, false, Some("LINE_TOTAL")),
                res(&c, false, Some("LINE_TOTAL")),
            ],
        )
        .answer(
            2,
            vec![
                res(&b, false, Some("LINE_TOTAL")),
                res(&other_word, false, Some("LINE_TOTAL")),
            ],
        );
    let plan = s.plan();
    let made: Vec<(String, Option<&str>)> = plan
        .corrections
        .iter()
        .map(|c| (c.key.to_string(), c.label_consolidated_from.as_deref()))
        .collect();
    assert_eq!(
        made,
        vec![
            (a.with_label("LINE_TOTAL").to_string(), Some("GRAND_TOTAL")),
            (other_word.with_label("LINE_TOTAL").to_string(), Some("TAX")),
        ]
    );
}

#[test]
fn correction_non_core_suggestion_is_recorded_but_creates_nothing() {
    let a = k(IMG_A, 1, 1, "DATE");
    let plan = Scenario::new("completed")
        .target(&a, PENDING)
        .answer(1, vec![res(&a, false, Some("EXPIRY_DATE"))])
        .plan();
    assert!(plan.corrections.is_empty());
    assert_eq!(plan.vector_merges[0].proposed_label, None);
    assert_eq!(
        plan.verdicts[0].suggested_label.as_deref(),
        Some("EXPIRY_DATE")
    );
    assert_eq!(
        plan.results[0].gpt_suggested_label.as_deref(),
        Some("EXPIRY_DATE")
    );
    assert_eq!(plan.counters.corrections.non_core, 1);
}

#[test]
fn correction_suggesting_the_judged_label_itself_creates_and_proposes_nothing() {
    let a = k(IMG_A, 1, 1, "DATE");
    let plan = Scenario::new("completed")
        .target(&a, PENDING)
        .answer(1, vec![res(&a, false, Some("DATE"))])
        .plan();
    assert!(plan.corrections.is_empty());
    assert_eq!(plan.vector_merges[0].proposed_label, None);
    assert_eq!(plan.counters.corrections.same_label, 1);
}

#[test]
fn correction_on_a_valid_verdict_is_recorded_but_does_nothing() {
    let a = k(IMG_A, 1, 1, "DATE");
    let plan = Scenario::new("completed")
        .target(&a, PENDING)
        .answer(1, vec![res(&a, true, Some("TIME"))])
        .plan();
    assert!(plan.corrections.is_empty());
    assert_eq!(plan.vector_merges[0].proposed_label, None);
    assert_eq!(plan.results[0].gpt_suggested_label.as_deref(), Some("TIME"));
}

#[test]
fn needs_review_is_an_invalid_verdict_for_vectors_and_corrections() {
    let a = k(IMG_A, 1, 1, "DATE");
    let plan = Scenario::new("completed")
        .target(&a, PENDING)
        .label(&k(IMG_A, 1, 1, "TAX"), INVALID)
        .answer(1, vec![res(&a, false, Some("TIME"))])
        .plan();
    assert_eq!(plan.status_changes, vec![change(&a, NEEDS_REVIEW)]);
    assert_eq!(
        plan.vector_merges[0].invalid_labels,
        LabelSet::from_iter(["DATE"])
    );
    assert_eq!(
        plan.vector_merges[0].proposed_label.as_deref(),
        Some("TIME")
    );
    assert_eq!(plan.corrections.len(), 1);
}

#[test]
fn targets_without_verdict_go_from_pending_to_none_only_when_pending_now() {
    let missing = k(IMG_A, 1, 1, "DATE");
    let reviewed = k(IMG_A, 1, 2, "TAX");
    let none = k(IMG_A, 1, 3, "TAX");
    let plan = Scenario::new("completed")
        .target(&missing, PENDING)
        .target(&reviewed, INVALID)
        .target(&none, NONE)
        .plan();
    assert_eq!(plan.resets, vec![change(&missing, NONE)]);
    assert_eq!(plan.counters.targets.resets, 1);
    assert_eq!(plan.counters.targets.not_pending, 1);
    // NONE already (an earlier run's reset whose row was lost, or someone else's): journaled.
    assert_eq!(plan.already_reset, vec![none]);
    assert_eq!(plan.counters.targets.already_reset, 1);
}

#[test]
fn conflict_at_planning_writes_the_verdict_row_and_nothing_else() {
    let a = k(IMG_A, 1, 1, "DATE");
    for now in [NONE, INVALID, NEEDS_REVIEW] {
        let plan = Scenario::new("completed")
            .target(&a, now)
            .answer(4, vec![res(&a, false, Some("TIME"))])
            .plan();
        assert_eq!(plan.verdicts.len(), 1, "{now}");
        assert_eq!(plan.verdicts[0].previous_status, now);
        assert_eq!(&*plan.verdicts[0].source, "output:4");
        assert!(plan.status_changes.is_empty());
        assert!(plan.resets.is_empty());
        assert!(plan.vector_merges.is_empty());
        assert!(plan.results.is_empty());
        assert!(plan.corrections.is_empty());
        assert_eq!(plan.counters.targets.conflicts, 1);
    }
}

#[test]
fn conflict_at_apply_drops_vector_merge_result_row_and_correction_but_keeps_the_verdict_row() {
    let a = k(IMG_A, 1, 1, "SUBTOTAL");
    let b = k(IMG_A, 1, 1, "TAX");
    let b_other_image = k(IMG_B, 1, 1, "TAX");
    let s = Scenario::new("completed")
        .target(&a, PENDING)
        .target(&b, PENDING)
        .target(&b_other_image, PENDING)
        .answer(
            1,
            vec![
                res(&a, false, Some("LINE_TOTAL")),
                res(&b, false, Some("LINE_TOTAL")),
            ],
        )
        .answer(2, vec![res(&b_other_image, true, None)]);
    let plan = s.plan();
    assert_eq!(
        plan.corrections[0].label_consolidated_from.as_deref(),
        Some("SUBTOTAL")
    );
    assert_eq!(plan.results.len(), 2, "{:?}", plan.results);
    // Someone reviewed A (image A) between our read and our write.
    let mut world = s.world([]);
    world.labels.get_mut(&a).unwrap().validation_status = VALID;
    world.labels.get_mut(&b).unwrap().validation_status = VALID;
    let applied = world.apply(plan.clone());
    assert_eq!(applied.conflicts, BTreeSet::from([a.clone(), b.clone()]));
    let after = plan.clone().without_conflicts(&applied.conflicts);
    assert_eq!(after.verdicts, plan.verdicts);
    assert_eq!(after.status_changes, vec![change(&b_other_image, VALID)]);
    assert!(after.corrections.is_empty());
    assert_eq!(after.vector_merges.len(), 1);
    assert_eq!(after.vector_merges[0].word, b_other_image.word);
    // The colliding key now goes to the next-smallest image.
    assert_eq!(after.results.len(), 1);
    assert_eq!(after.results[0].label, b_other_image);
    assert_eq!(after.counters.result_rows.collisions, 0);
    assert_eq!(after.counters.targets.apply_conflicts, 2);
    assert_eq!(world.labels[&a].validation_status, VALID);
}

// ---- Vector metadata -----------------------------------------------------------------------

#[test]
fn vector_merge_unions_labels_per_word_and_proposes_from_the_smallest_judged_label() {
    let w1_date = k(IMG_A, 1, 1, "DATE");
    let w1_tax = k(IMG_A, 1, 1, "TAX");
    let w1_time = k(IMG_A, 1, 1, "TIME");
    let w2 = k(IMG_A, 2, 1, "TIP");
    let plan = Scenario::new("completed")
        .target(&w1_date, PENDING)
        .target(&w1_tax, PENDING)
        .target(&w1_time, PENDING)
        .target(&w2, PENDING)
        .answer(
            1,
            vec![
                res(&w1_time, false, Some("SUBTOTAL")),
                res(&w1_tax, false, Some("GRAND_TOTAL")),
                res(&w1_date, true, None),
                res(&w2, false, Some("NOT_CORE")),
            ],
        )
        .plan();
    assert_eq!(plan.vector_merges.len(), 2);
    let m = &plan.vector_merges[0];
    assert_eq!(m.word, w1_date.word);
    assert_eq!(m.valid_labels, LabelSet::from_iter(["DATE"]));
    assert_eq!(m.invalid_labels, LabelSet::from_iter(["TIME", "TAX"]));
    assert_eq!(
        m.invalid_labels.to_strings(),
        BTreeSet::from(["TAX".to_owned(), "TIME".to_owned()])
    );
    assert_eq!(
        m.proposed_label.as_deref(),
        Some("GRAND_TOTAL"),
        "TAX < TIME"
    );
    assert_eq!(
        plan.vector_merges[1].proposed_label, None,
        "non-core sets nothing"
    );
    assert_eq!(plan.counters.vector_merges, 2);
}

#[test]
fn vector_merges_come_with_the_labels_other_batches_decided_on_their_words() {
    let w1_date = k(IMG_A, 1, 1, "DATE");
    let w1_time = k(IMG_A, 1, 1, "TIME"); // another batch's verdict, already in the table
    let w1_tax = k(IMG_A, 1, 1, "TAX"); // a reviewer's: not the fleet's to merge
    let w1_tip = k(IMG_A, 1, 1, "TIP"); // another batch's, still in flight
    let w2_date = k(IMG_A, 2, 1, "DATE"); // another batch's, on a word without a verdict
    let by_batch = |key: &crate::model::LabelKey, status| ReceiptWordLabel {
        label_proposed_by: Some(PROPOSED_BY_COMPLETION_BATCH.into()),
        ..label(key, status)
    };
    let mut s = Scenario::new("completed")
        .target(&w1_date, PENDING)
        .label(&w1_tax, INVALID)
        .answer(1, vec![res(&w1_date, true, None)]);
    for l in [
        by_batch(&w1_time, NEEDS_REVIEW),
        by_batch(&w1_tip, PENDING),
        by_batch(&w2_date, VALID),
    ] {
        s.labels.insert(l.key.clone(), l);
    }
    let plan = s.plan();
    assert_eq!(plan.vector_merges.len(), 1);
    assert_eq!(
        plan.vector_merges[0].valid_labels,
        LabelSet::from_iter(["DATE"]),
        "the merge itself is this batch's verdicts"
    );
    let words: Vec<_> = plan.word_labels.keys().cloned().collect();
    assert_eq!(words, vec![w1_date.word.clone()], "only words with a merge");
    let sets = &plan.word_labels[&w1_date.word];
    assert!(sets.valid.is_empty());
    assert_eq!(sets.invalid, BTreeSet::from(["TIME".to_owned()]));
    // A conflict drops the merge, and the word's table labels with it.
    let without = plan.without_conflicts(&BTreeSet::from([w1_date.clone()]));
    assert!(without.vector_merges.is_empty());
    assert!(without.word_labels.is_empty());
}

// ---- Audit rows ----------------------------------------------------------------------------

#[test]
fn audit_one_result_row_per_applied_verdict_completed_at_and_suggestion() {
    let a = k(IMG_A, 1, 1, "DATE");
    let b = k(IMG_A, 1, 2, "TAX");
    let plan = Scenario::new("completed")
        .target(&a, PENDING)
        .target(&b, PENDING)
        .answer(1, vec![res(&a, true, None), res(&b, false, Some("TIP"))])
        .plan();
    assert_eq!(plan.results.len(), 2);
    for r in &plan.results {
        assert_eq!(&*r.batch_id, BATCH_ID);
        assert_eq!(r.status, BatchStatus::Completed);
        assert_eq!(r.validated_at, completed_at());
    }
    assert_eq!(plan.results[0].gpt_suggested_label, None);
    assert_eq!(plan.results[1].gpt_suggested_label.as_deref(), Some("TIP"));
    assert_eq!(
        plan.results[1].sk(),
        "RESULT#RECEIPT#1#LINE#1#WORD#2#LABEL#TAX"
    );
}

#[test]
fn audit_result_key_collision_keeps_the_smallest_image_and_counts_every_verdict_keeps_its_row() {
    let on_b = k(IMG_B, 1, 1, "DATE");
    let on_a = k(IMG_A, 1, 1, "DATE");
    let plan = Scenario::new("completed")
        .target(&on_b, PENDING)
        .target(&on_a, PENDING)
        .answer(1, vec![res(&on_b, false, None)])
        .answer(2, vec![res(&on_a, true, None)])
        .plan();
    assert_eq!(plan.results.len(), 1);
    assert_eq!(plan.results[0].label, on_a);
    assert_eq!(plan.counters.result_rows.collisions, 1);
    assert_eq!(plan.verdicts.len(), 2);
    assert_eq!(plan.status_changes.len(), 2);
}

#[test]
fn audit_verdict_source_is_the_physical_line_number_with_blank_lines_counted() {
    let a = k(IMG_A, 1, 1, "DATE");
    let arguments = serde_json::json!({"results": [
        {"id": format!("{a}#VALIDATION_STATUS#NONE"), "is_valid": true}
    ]})
    .to_string();
    let line = serde_json::json!({
        "custom_id": receipt(IMG_A, 1).custom_id(),
        "response": {"status_code": 200, "body": {"choices": [{"message": {"function_call": {"arguments": arguments}}}]}},
        "error": null
    })
    .to_string();
    let file = format!("\n\n{{oops\n\n{line}\n");
    let s = Scenario::new("completed").target(&a, PENDING);
    let mut builder = s.builder();
    let mut reader = LineReader::new(file.as_bytes());
    while let Some((n, bytes)) = reader.next_line().unwrap() {
        builder.add_line(n, parse_output_read(bytes));
    }
    let plan = builder.finish();
    assert_eq!(&*plan.verdicts[0].source, "output:5");
    assert_eq!(plan.counters.output_lines.total, 5);
    assert_eq!(plan.counters.output_lines.blank, 3);
}

// ---- Re-runs -------------------------------------------------------------------------------

fn recorded(
    key: &crate::model::LabelKey,
    verdict: Verdict,
    previous: crate::model::ValidationStatus,
    suggestion: Option<&str>,
) -> CompletionBatchVerdict {
    CompletionBatchVerdict {
        batch_id: BATCH_ID.into(),
        label: key.clone(),
        verdict,
        previous_status: previous,
        suggested_label: suggestion.map(str::to_owned),
        source: "output:9".into(),
        validated_at: completed_at(),
    }
}

#[test]
fn rerun_a_label_with_this_batchs_verdict_row_is_not_decided_again() {
    let a = k(IMG_A, 1, 1, "DATE");
    let row = recorded(&a, Verdict::Invalid, PENDING, Some("TIME"));
    let plan = Scenario::new("completed")
        .target(&a, PENDING)
        .label(&k(IMG_A, 1, 1, "TAX"), INVALID) // would make a fresh decision NEEDS_REVIEW
        .journal_row(row.clone())
        .answer(1, vec![res(&a, true, None)])
        .plan();
    assert_eq!(plan.verdicts, vec![row]);
    assert_eq!(plan.status_changes, vec![change(&a, INVALID)]);
    assert_eq!(plan.corrections.len(), 1);
    assert_eq!(plan.counters.results.recorded, 1);
    assert_eq!(plan.counters.targets.recorded, 1);
}

#[test]
fn rerun_label_found_valid_with_this_batchs_row_finishes_its_remaining_writes() {
    let a = k(IMG_A, 1, 1, "DATE");
    let row = recorded(&a, Verdict::Valid, PENDING, None);
    let plan = Scenario::new("completed")
        .target(&a, VALID)
        .journal_row(row.clone())
        .answer(1, vec![res(&a, true, None)])
        .plan();
    assert_eq!(plan.verdicts, vec![row]);
    assert_eq!(
        plan.status_changes,
        vec![change(&a, VALID)],
        "already in target: done"
    );
    assert_eq!(plan.vector_merges.len(), 1);
    assert_eq!(plan.results.len(), 1);
}

#[test]
fn rerun_label_found_valid_without_this_batchs_row_was_valid_before() {
    let a = k(IMG_A, 1, 1, "DATE");
    let plan = Scenario::new("completed")
        .target(&a, VALID)
        .journal_row(CompletionBatchVerdict {
            batch_id: "another-batch".into(),
            ..recorded(&a, Verdict::Valid, PENDING, None)
        })
        .answer(1, vec![res(&a, true, None)])
        .plan();
    assert!(no_writes_but_summary(&plan));
    assert_eq!(plan.counters.journal_ignored, 1);
}

#[test]
fn rerun_recorded_verdict_on_a_label_changed_meanwhile_is_a_conflict() {
    let a = k(IMG_A, 1, 1, "DATE");
    let row = recorded(&a, Verdict::Invalid, PENDING, None);
    let plan = Scenario::new("completed")
        .target(&a, VALID)
        .journal_row(row.clone())
        .plan();
    assert_eq!(plan.verdicts, vec![row]);
    assert!(plan.status_changes.is_empty() && plan.results.is_empty());
    assert_eq!(plan.counters.targets.conflicts, 1);
}

#[test]
fn rerun_recorded_conflict_row_is_never_applied() {
    let a = k(IMG_A, 1, 1, "DATE");
    let row = recorded(&a, Verdict::Valid, INVALID, None);
    let plan = Scenario::new("completed")
        .target(&a, INVALID)
        .journal_row(row.clone())
        .plan();
    assert_eq!(plan.verdicts, vec![row]);
    assert!(plan.status_changes.is_empty());
}

#[test]
fn rerun_journal_label_no_longer_in_the_targets_is_still_finished() {
    let a = k(IMG_A, 1, 1, "DATE");
    let b = k(IMG_A, 1, 1, "TAX");
    // Fallback targets on the re-run: only what is PENDING now, so A (set INVALID) is absent.
    let s = Scenario::new("completed")
        .label(&a, INVALID)
        .target(&b, PENDING)
        .journal_row(recorded(&a, Verdict::Invalid, PENDING, None))
        .answer(1, vec![res(&a, false, None), res(&b, false, None)]);
    let plan = s.plan();
    assert_eq!(
        plan.status_changes,
        vec![change(&a, INVALID), change(&b, INVALID)]
    );
    assert_eq!(
        verdict_of(&plan, &b),
        Some(Verdict::Invalid),
        "A is this batch's, not before it"
    );
}

#[test]
fn rerun_a_correction_this_batch_created_is_not_judged() {
    let a = k(IMG_A, 1, 1, "DATE");
    let gone = k(IMG_A, 1, 1, "TIME");
    let s = Scenario::new("completed")
        .target(&a, PENDING)
        .gone_target(&gone)
        .answer(
            1,
            vec![res(&a, false, Some("TIME")), res(&gone, false, None)],
        );
    let first = s.plan();
    assert_eq!(first.corrections.len(), 1);
    let mut world = s.world([]);
    world.apply(first.clone());
    let second = s.with_world(&world).plan();
    assert_eq!(second.verdicts, first.verdicts);
    assert_eq!(second.counters.results.not_in_table, 1);
    assert_eq!(second.counters.corrections.existing, 1);
}

#[test]
fn rerun_after_every_possible_interruption_ends_in_the_same_state() {
    let a = k(IMG_A, 1, 1, "SUBTOTAL");
    let b = k(IMG_A, 1, 1, "TAX");
    let c = k(IMG_B, 1, 1, "TAX");
    let d = k(IMG_B, 1, 2, "DATE");
    let s = Scenario::new("completed")
        .target(&a, PENDING)
        .target(&b, PENDING)
        .target(&c, PENDING)
        .target(&d, PENDING)
        .label(&k(IMG_B, 1, 1, "TIP"), INVALID)
        .answer(
            1,
            vec![res(&a, false, Some("LINE_TOTAL")), res(&b, true, None)],
        )
        .answer(2, vec![res(&c, false, Some("LINE_TOTAL"))]);
    let vectors = [a.word.vector_id(), c.word.vector_id()];
    let mut once = s.world(vectors.clone());
    let total = once.apply(s.plan()).writes;
    for budget in 0..=total {
        let mut world = s.world(vectors.clone());
        world.apply_until(s.plan(), budget);
        world.apply(s.with_world(&world).plan());
        assert_eq!(world, once, "interrupted after {budget} writes");
    }
}

#[test]
fn rule_4_a_correct_label_that_is_not_a_label_name_skips_its_result_and_is_never_written() {
    let a = k(IMG_A, 1, 1, "DATE");
    let b = k(IMG_A, 1, 2, "DATE");
    let plan = Scenario::new("completed")
        .target(&a, PENDING)
        .target(&b, PENDING)
        .answer(
            1,
            vec![
                Err(ResultSkip::BadCorrectLabel { length: 300 }),
                res(&b, false, Some("TIME")),
            ],
        )
        .plan();
    assert_eq!(plan.counters.results.bad_correct_label, 1);
    assert_eq!(plan.resets, vec![change(&a, NONE)], "no verdict: reset");
    assert_eq!(plan.status_changes, vec![change(&b, INVALID)]);
}

// ---- Journaled resets ----------------------------------------------------------------------

#[test]
fn reset_rows_are_written_after_each_reset_and_say_none_from_pending() {
    let a = k(IMG_A, 1, 1, "DATE");
    let plan = Scenario::new("completed").target(&a, PENDING).plan();
    assert_eq!(plan.resets, vec![change(&a, NONE)]);
    let row = plan.reset_row(&plan.resets[0].label);
    assert_eq!(row.verdict, Verdict::Reset);
    assert_eq!(row.verdict.as_str(), "NONE");
    assert_eq!(row.previous_status, PENDING);
    assert_eq!(row.suggested_label, None);
    assert_eq!(&*row.source, "reset");
    assert_eq!(row.validated_at, completed_at());
    assert!(plan.verdicts.is_empty(), "not planned before the reset");
}

#[test]
fn rerun_a_target_this_batch_reset_that_a_newer_batch_claimed_is_left_alone() {
    let a = k(IMG_A, 1, 1, "DATE");
    let b = k(IMG_A, 1, 1, "TAX");
    for status in ["completed", "expired", "failed"] {
        let reset = CompletionBatchVerdict::reset(BATCH_ID, &a, completed_at());
        let plan = Scenario::new(status)
            .target(&a, PENDING) // PENDING again: a newer batch asked about it
            .target(&b, PENDING) // never reset: reset now
            .journal_row(reset)
            .plan();
        assert_eq!(plan.resets, vec![change(&b, NONE)], "{status}");
        assert_eq!(plan.counters.targets.reclaimed, 1, "{status}");
        assert_eq!(plan.counters.journal_ignored, 0, "{status}");
        assert!(plan.verdicts.is_empty(), "{status}");
    }
}

#[test]
fn rerun_a_target_this_batch_reset_is_not_reset_again_even_with_a_result_now() {
    let a = k(IMG_A, 1, 1, "DATE");
    let reset = CompletionBatchVerdict::reset(BATCH_ID, &a, completed_at());
    let plan = Scenario::new("completed")
        .target(&a, NONE)
        .journal_row(reset)
        .answer(1, vec![res(&a, true, None)])
        .plan();
    assert!(plan.resets.is_empty() && plan.status_changes.is_empty());
    assert!(plan.verdicts.is_empty());
    assert_eq!(plan.counters.targets.reset_recorded, 1);
    assert_eq!(plan.counters.results.recorded, 1, "the journal decides");
}

#[test]
fn a_failed_batch_keeps_its_reset_rows_and_ignores_verdict_rows() {
    let a = k(IMG_A, 1, 1, "DATE");
    let b = k(IMG_A, 1, 2, "DATE");
    let plan = Scenario::new("failed")
        .target(&a, PENDING)
        .target(&b, PENDING)
        .journal_row(CompletionBatchVerdict::reset(BATCH_ID, &a, completed_at()))
        .journal_row(recorded(&b, Verdict::Valid, PENDING, None))
        .plan();
    assert_eq!(plan.resets, vec![change(&b, NONE)]);
    assert_eq!(plan.counters.targets.reclaimed, 1);
    assert_eq!(plan.counters.journal_ignored, 1);
}

#[test]
fn a_reset_interrupted_anywhere_and_claimed_by_a_newer_batch_is_never_undone() {
    // Run 1 resets `a` (no verdict) and is cut off after every possible write; a newer batch
    // then claims `a` (PENDING again) before the re-run. The re-run must leave it PENDING
    // unless the cut fell before the reset: then it was never reset, and resetting it is run
    // 1's own unfinished decision.
    let a = k(IMG_A, 1, 1, "DATE");
    let b = k(IMG_A, 1, 2, "DATE");
    let s = Scenario::new("completed")
        .target(&a, PENDING)
        .target(&b, PENDING)
        .answer(1, vec![res(&b, true, None)]);
    let total = s.world([]).apply(s.plan()).writes;
    for budget in 0..=total {
        let mut world = s.world([]);
        world.apply_until(s.plan(), budget);
        let reset_done = world.journal.contains_key(&a);
        assert_eq!(
            reset_done,
            world.labels[&a].validation_status == NONE,
            "budget {budget}: a reset and its row go together"
        );
        world.labels.get_mut(&a).unwrap().validation_status = PENDING; // claimed again
        world.apply(s.with_world(&world).plan());
        let expected = if reset_done { PENDING } else { NONE };
        assert_eq!(
            world.labels[&a].validation_status, expected,
            "budget {budget}"
        );
    }
}

// ---- Inputs --------------------------------------------------------------------------------

#[test]
fn inputs_fallback_targets_are_the_pending_labels_of_named_receipts_only() {
    let named = receipt(IMG_A, 1);
    let labels = [
        label(&k(IMG_A, 1, 1, "DATE"), PENDING),
        label(&k(IMG_A, 1, 2, "TAX"), VALID),
        label(&kr(IMG_A, 2, 1, 1, "DATE"), PENDING),
        label(&k(IMG_B, 1, 1, "DATE"), PENDING),
    ];
    let targets = fallback_targets(&BTreeSet::from([named]), &labels);
    assert_eq!(targets, BTreeSet::from([k(IMG_A, 1, 1, "DATE")]));
}

#[test]
fn inputs_receipts_to_load_cover_targets_and_journal_labels() {
    let targets = BTreeSet::from([k(IMG_A, 1, 1, "DATE"), k(IMG_A, 1, 2, "TAX")]);
    let journal = [recorded(
        &kr(IMG_B, 3, 1, 1, "DATE"),
        Verdict::Valid,
        PENDING,
        None,
    )];
    assert_eq!(
        receipts_to_load(&targets, &journal),
        BTreeSet::from([receipt(IMG_A, 1), receipt(IMG_B, 3)])
    );
}

#[test]
fn inputs_error_file_lines_are_counted_and_never_give_verdicts() {
    let a = k(IMG_A, 1, 1, "DATE");
    let mut s = Scenario::new("completed").target(&a, PENDING);
    s.error_lines = vec![
        (
            1,
            ParsedLine::Failed {
                receipt: receipt(IMG_A, 1),
                custom_id: receipt(IMG_A, 1).custom_id(),
                failure: RequestFailure::NoResponse,
            },
        ),
        (2, answered(vec![res(&a, true, None)])),
    ];
    let plan = s.plan();
    assert!(plan.verdicts.is_empty());
    assert_eq!(plan.resets, vec![change(&a, NONE)]);
    assert_eq!(plan.counters.error_lines.total, 2);
    assert_eq!(plan.counters.error_lines.failed, 1);
    assert_eq!(plan.counters.results.total, 0);
}

// ---- Counters ------------------------------------------------------------------------------

#[test]
fn counters_serialize_as_json() {
    let a = k(IMG_A, 1, 1, "DATE");
    let plan = Scenario::new("completed")
        .target(&a, PENDING)
        .line(
            1,
            ParsedLine::Malformed(Malformed::new(MalformedKind::Choices, "2")),
        )
        .answer(2, vec![res(&a, true, None)])
        .plan();
    let json = serde_json::to_value(&plan.counters).unwrap();
    assert_eq!(json["output_lines"]["malformed"]["choices"], 1);
    assert_eq!(json["verdicts"]["valid"], 1);
    assert_eq!(json["results"]["applied"], 1);
    assert_eq!(json["timestamp_field"], "completed_at");
    assert_eq!(
        serde_json::to_value(Outcome::NotTerminal).unwrap(),
        "NOT_TERMINAL"
    );
}
