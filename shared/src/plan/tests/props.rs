//! Properties over generated batches: order independence, last-wins duplicates, and re-runs.

use std::collections::BTreeMap;

use proptest::collection::vec;
use proptest::prelude::*;

use super::fixtures::*;
use crate::model::{LabelKey, ReceiptKey, ValidationStatus};
use crate::parse::{Malformed, MalformedKind, ParsedLine, RequestFailure, ResultSkip};
use crate::plan::{Plan, fallback_targets};

/// Words chosen so that receipt ids repeat across images (result-key collisions) and one image
/// has two receipts.
const WORDS: [(&str, u32, u32, u32); 6] = [
    (IMG_A, 1, 1, 1),
    (IMG_A, 1, 1, 2),
    (IMG_A, 1, 2, 1),
    (IMG_A, 2, 1, 1),
    (IMG_B, 1, 1, 1),
    (IMG_B, 1, 1, 2),
];
/// `NOTE` is not a core label.
const NAMES: [&str; 4] = ["DATE", "TAX", "MERCHANT_NAME", "NOTE"];
const SUGGESTIONS: [&str; 5] = ["DATE", "TAX", "TIME", "NOTE", "GRAND_TOTAL"];
const SLOTS: usize = WORDS.len() * NAMES.len();

fn slot_key(slot: usize) -> LabelKey {
    let (img, r, l, w) = WORDS[slot / NAMES.len()];
    kr(img, r, l, w, NAMES[slot % NAMES.len()])
}

#[derive(Debug, Clone)]
struct GenResult {
    slot: usize,
    is_valid: bool,
    suggestion: Option<usize>,
    /// Which of the receipt's lines carries it.
    group: u8,
}

#[derive(Debug, Clone)]
struct Gen {
    outcome: &'static str,
    statuses: Vec<Option<ValidationStatus>>,
    targets: Vec<bool>,
    results: Vec<GenResult>,
    junk: Vec<u8>,
    vectors: Vec<bool>,
    /// Sort keys for shuffling lines and results.
    shuffle: Vec<u64>,
}

fn status() -> impl Strategy<Value = Option<ValidationStatus>> {
    prop_oneof![
        2 => Just(None),
        5 => Just(Some(PENDING)),
        1 => Just(Some(NONE)),
        1 => Just(Some(VALID)),
        2 => Just(Some(INVALID)),
        1 => Just(Some(NEEDS_REVIEW)),
    ]
}

fn gen_batch(outcomes: &'static [&'static str]) -> impl Strategy<Value = Gen> {
    let result = (
        0..SLOTS,
        any::<bool>(),
        prop::option::of(0..SUGGESTIONS.len()),
        0..3u8,
    )
        .prop_map(|(slot, is_valid, suggestion, group)| GenResult {
            slot,
            is_valid,
            suggestion,
            group,
        });
    (
        prop::sample::select(outcomes),
        vec(status(), SLOTS),
        vec(prop::bool::weighted(0.75), SLOTS),
        vec(result, 0..30),
        vec(0..4u8, 0..4),
        vec(any::<bool>(), WORDS.len()),
        vec(any::<u64>(), 64),
    )
        .prop_map(
            |(outcome, statuses, targets, results, junk, vectors, shuffle)| Gen {
                outcome,
                statuses,
                targets,
                results,
                junk,
                vectors,
                shuffle,
            },
        )
}

impl Gen {
    fn without_duplicate_labels(mut self) -> Self {
        let mut seen = std::collections::BTreeSet::new();
        self.results.retain(|r| seen.insert(r.slot));
        self
    }

    /// The output lines in file order (not yet numbered).
    fn lines(&self) -> Vec<ParsedLine> {
        let mut groups: BTreeMap<(ReceiptKey, u8), Vec<_>> = BTreeMap::new();
        for r in &self.results {
            let key = slot_key(r.slot);
            groups
                .entry((key.word.receipt.clone(), r.group))
                .or_default()
                .push(res(&key, r.is_valid, r.suggestion.map(|i| SUGGESTIONS[i])));
        }
        let mut lines: Vec<ParsedLine> = groups
            .into_iter()
            .map(|((receipt, _), results)| ParsedLine::Answered { receipt, results })
            .collect();
        for (i, j) in self.junk.iter().enumerate() {
            let line = match j {
                0 => ParsedLine::Blank,
                1 => ParsedLine::Malformed(Malformed::new(MalformedKind::NotJson, "x")),
                2 => ParsedLine::Failed {
                    receipt: receipt(IMG_A, 1),
                    custom_id: receipt(IMG_A, 1).custom_id(),
                    failure: RequestFailure::Status(500),
                },
                _ => ParsedLine::Answered {
                    receipt: receipt(IMG_B, 1),
                    results: vec![Err(ResultSkip::MissingId), Err(ResultSkip::IsValidNotBool)],
                },
            };
            lines.insert((i * 3).min(lines.len()), line);
        }
        lines
    }

    fn scenario_from(&self, numbered: Vec<(u64, ParsedLine)>) -> Scenario {
        let mut s = Scenario::new(self.outcome);
        for slot in 0..SLOTS {
            let key = slot_key(slot);
            match (self.statuses[slot], self.targets[slot]) {
                (Some(st), true) => s = s.target(&key, st),
                (Some(st), false) => s = s.label(&key, st),
                (None, true) => s = s.gone_target(&key),
                (None, false) => {}
            }
        }
        s.lines = numbered;
        s
    }

    fn scenario(&self) -> Scenario {
        let numbered = (1..).zip(self.lines()).collect();
        self.scenario_from(numbered)
    }

    fn vector_ids(&self) -> Vec<String> {
        WORDS
            .iter()
            .zip(&self.vectors)
            .filter(|(_, exists)| **exists)
            .map(|((img, r, l, w), _)| kr(img, *r, *l, *w, "X").word.vector_id())
            .collect()
    }

    fn shuffled<T>(&self, items: Vec<T>, salt: u64) -> Vec<T> {
        let mut keyed: Vec<(u64, usize, T)> = items
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                (
                    self.shuffle[i % self.shuffle.len()] ^ salt.wrapping_mul(i as u64 + 1),
                    i,
                    t,
                )
            })
            .collect();
        keyed.sort_by_key(|(k, i, _)| (*k, *i));
        keyed.into_iter().map(|(_, _, t)| t).collect()
    }
}

fn shuffle_results(g: &Gen, line: ParsedLine, salt: u64) -> ParsedLine {
    match line {
        ParsedLine::Answered { receipt, results } => ParsedLine::Answered {
            receipt,
            results: g.shuffled(results, salt),
        },
        other => other,
    }
}

fn without_sources(mut plan: Plan) -> Plan {
    for v in &mut plan.verdicts {
        v.source = "".into();
    }
    plan
}

/// Everything but the result counters, which count duplicates and skips of the input itself.
fn decisions(plan: &Plan) -> impl PartialEq + std::fmt::Debug + '_ {
    (
        &plan.verdicts,
        &plan.status_changes,
        &plan.resets,
        &plan.corrections,
        &plan.vector_merges,
        &plan.results,
        &plan.summary,
        (
            &plan.counters.verdicts,
            &plan.counters.targets,
            &plan.counters.corrections,
        ),
        &plan.counters.result_rows,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn plan_does_not_depend_on_the_order_of_lines_or_of_results_within_a_line(
        g in gen_batch(&["completed", "expired", "cancelled"]).prop_map(Gen::without_duplicate_labels)
    ) {
        let s = g.scenario();
        let plan = s.plan();

        // Same file, fed in another order, results of each line shuffled.
        let mut fed = s.clone();
        fed.lines = g
            .shuffled(s.lines.clone(), 1)
            .into_iter()
            .map(|(n, line)| (n, shuffle_results(&g, line, n)))
            .collect();
        prop_assert_eq!(&fed.plan(), &plan);

        // Another file: the lines in another order (so other line numbers).
        let renumbered = (1..).zip(g.shuffled(g.lines(), 2)).collect();
        let other = g.scenario_from(renumbered).plan();
        prop_assert_eq!(without_sources(other), without_sources(plan));
    }

    #[test]
    fn duplicates_resolve_by_file_position(
        g in gen_batch(&["completed", "expired", "cancelled"])
    ) {
        let s = g.scenario();
        let plan = s.plan();

        // Feeding order never matters: positions travel with the lines.
        let mut fed = s.clone();
        fed.lines = g.shuffled(s.lines.clone(), 3);
        prop_assert_eq!(&fed.plan(), &plan);

        // The same file with only the last result of each label kept decides the same.
        let mut last: BTreeMap<LabelKey, (u64, usize)> = BTreeMap::new();
        for (n, line) in &s.lines {
            if let ParsedLine::Answered { results, .. } = line {
                for (i, r) in results.iter().enumerate() {
                    if let Ok(r) = r {
                        last.insert(r.label.clone(), (*n, i));
                    }
                }
            }
        }
        let mut dedup = s.clone();
        for (n, line) in &mut dedup.lines {
            if let ParsedLine::Answered { results, .. } = line {
                let kept = results
                    .drain(..)
                    .enumerate()
                    .filter(|(i, r)| match r {
                        Ok(r) => last.get(&r.label) == Some(&(*n, *i)),
                        Err(_) => true,
                    })
                    .map(|(_, r)| r)
                    .collect();
                *results = kept;
            }
        }
        let dedup_plan = dedup.plan();
        prop_assert_eq!(decisions(&dedup_plan), decisions(&plan));
        prop_assert_eq!(dedup_plan.counters.results.duplicate_overridden, 0);
    }

    #[test]
    fn plan_on_the_applied_state_is_a_fixpoint(
        g in gen_batch(&["completed", "expired", "cancelled", "failed"])
    ) {
        let s = g.scenario();
        let first = s.plan();
        let mut world = s.world(g.vector_ids());
        world.apply(first.clone());

        let again = s.with_world(&world).plan();
        prop_assert_eq!(&again.verdicts, &first.verdicts);
        prop_assert!(again.resets.is_empty(), "{:?}", again.resets);
        prop_assert!(again.corrections.is_empty(), "{:?}", again.corrections);
        for c in &again.status_changes {
            prop_assert_eq!(world.labels[&c.label].validation_status, c.to);
        }
        prop_assert_eq!(&again.results, &first.results);
        prop_assert_eq!(&again.vector_merges, &first.vector_merges);

        let mut twice = world.clone();
        let applied = twice.apply(again);
        prop_assert!(applied.conflicts.is_empty());
        prop_assert_eq!(twice, world);
    }

    #[test]
    fn an_interrupted_batch_processed_again_ends_like_one_processed_once(
        g in gen_batch(&["completed", "expired", "cancelled", "failed"]),
        cut in 0usize..200,
    ) {
        let s = g.scenario();
        let mut once = s.world(g.vector_ids());
        let writes = once.apply(s.plan()).writes;

        let mut world = s.world(g.vector_ids());
        world.apply_until(s.plan(), cut % (writes + 1));
        world.apply(s.with_world(&world).plan());
        prop_assert_eq!(world, once);
    }

    #[test]
    fn a_rerun_whose_input_file_is_gone_uses_the_fallback_and_ends_the_same(
        g in gen_batch(&["completed", "expired", "cancelled", "failed"]),
        cut in 0usize..200,
    ) {
        // Where the fallback is exact (the batch's targets are all the PENDING labels of its
        // receipts), losing the input file between two runs changes nothing.
        let receipts = WORDS
            .iter()
            .map(|(img, r, _, _)| receipt(img, *r))
            .collect();
        let mut s = g.scenario();
        s.targets = fallback_targets(&receipts, s.labels.values());
        let mut once = s.world(g.vector_ids());
        let writes = once.apply(s.plan()).writes;

        let mut world = s.world(g.vector_ids());
        world.apply_until(s.plan(), cut % (writes + 1));
        let mut rerun = s.with_world(&world);
        rerun.targets = fallback_targets(&receipts, world.labels.values());
        world.apply(rerun.plan());
        prop_assert_eq!(world, once);
    }

    #[test]
    fn planning_a_chunk_of_receipts_at_a_time_ends_like_one_plan_of_the_whole_batch(
        g in gen_batch(&["completed", "expired", "cancelled", "failed"]),
        per_chunk in 1usize..4,
    ) {
        let s = g.scenario();
        let whole = s.plan();
        let mut once = s.world(g.vector_ids());
        let applied = once.apply(whole.clone());
        prop_assert_eq!(applied.kept_results, 0);

        let mut world = s.world(g.vector_ids());
        let (applied, counters) = apply_chunked(&s, &mut world, per_chunk, usize::MAX);
        prop_assert!(!applied.interrupted);
        prop_assert_eq!(&world, &once);
        // The counters add up to the whole batch's, result-key collisions across chunks
        // included (found by the conditional writes, in receipt order).
        prop_assert_eq!(&counters, &whole.counters);
    }

    #[test]
    fn a_chunked_apply_interrupted_anywhere_and_run_again_ends_like_one_plan(
        g in gen_batch(&["completed", "expired", "cancelled", "failed"]),
        per_chunk in 1usize..4,
        rerun_per_chunk in 1usize..8,
        cut in 0usize..200,
    ) {
        let s = g.scenario();
        let mut once = s.world(g.vector_ids());
        once.apply(s.plan());

        let mut probe = s.world(g.vector_ids());
        let writes = apply_chunked(&s, &mut probe, per_chunk, usize::MAX).0.writes;
        let mut world = s.world(g.vector_ids());
        apply_chunked(&s, &mut world, per_chunk, cut % (writes + 1));
        // Run again, possibly with another chunk size (a re-configured worker).
        apply_chunked(&s, &mut world, rerun_per_chunk, usize::MAX);
        prop_assert_eq!(world, once);
    }

    #[test]
    fn plan_touches_only_targets_and_new_labels_and_counts_every_result(
        g in gen_batch(&["completed", "expired", "cancelled", "failed"])
    ) {
        let s = g.scenario();
        let plan = s.plan();
        for c in plan.status_changes.iter().chain(&plan.resets) {
            prop_assert!(s.targets.contains(&c.label));
            prop_assert_eq!(c.from, ValidationStatus::Pending);
        }
        for c in &plan.corrections {
            prop_assert!(!s.labels.contains_key(&c.key));
        }
        let r = &plan.counters.results;
        prop_assert_eq!(
            r.total,
            r.applied + r.recorded + r.already_valid + r.duplicate_overridden + r.not_an_object
                + r.missing_id + r.bad_id + r.other_receipt + r.is_valid_not_bool
                + r.bad_correct_label + r.not_target + r.not_in_table + r.ignored
        );
        prop_assert_eq!(plan.counters.verdicts.total(), plan.verdicts.len() as u64);
        prop_assert_eq!(
            plan.counters.result_rows.written + plan.counters.result_rows.collisions,
            plan.status_changes.len() as u64
        );
    }
}
