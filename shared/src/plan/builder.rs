//! Deciding verdicts: output lines stream in, the decisions are made once all are in.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use super::counters::{LineCounters, PlanCounters};
use super::input::{Outcome, PlanInput, batch_timestamp};
use super::writes::{Effective, Plan, StatusChange, SummaryUpdate};
use crate::model::status::PROPOSED_BY_COMPLETION_BATCH;
use crate::model::{
    CompletionBatchVerdict, LabelKey, ReceiptWordLabel, ValidationStatus, Verdict, WordKey,
};
use crate::parse::{ParsedLine, ParsedResult, ResultSkip};

/// The result that currently wins for one label.
#[derive(Debug, Clone)]
struct Candidate {
    /// (line number, index within the line's results): the later position wins.
    position: (u64, usize),
    is_valid: bool,
    correct_label: Option<String>,
}

/// Computes a [`Plan`] from a batch's state and its output lines, fed one at a time so the
/// caller can stream a file of any size: memory grows with the targets, not with the file.
///
/// Decisions are made in [`finish`](Self::finish), from the labels as they were handed in and
/// the last result (by file position) for each label, so neither the order in which lines are
/// fed nor the order of lines in the file changes any verdict.
///
/// # Reading of the conflict rule
///
/// processing-rules.md: "A label changed meanwhile by someone else is left alone and counted as
/// a conflict: no vector merge and no CompletionBatchResult row for it (its verdict row stays: it
/// records what the model said)." The verdict rows are the journal of what the model said and
/// are written before any status change, so a conflict found by the conditional write leaves its
/// row in place. A conflict already visible when planning (a target with a result that is no
/// longer PENDING, is not VALID, and has no journal row) is treated the same way, so the outcome
/// does not depend on whether the other writer came before or after our read: the verdict is
/// decided by the same rules, its journal row is written with `previous_status` = the status
/// found, and nothing else is done for it. Such a row (its `previous_status` is not PENDING) is
/// never applied on a re-run either: a status change is only ever made from PENDING.
/// A VALID label is the exception the rules name: it "gets no audit row", verdict row included.
#[derive(Debug)]
pub struct PlanBuilder {
    batch_id: String,
    outcome: Outcome,
    validated_at: DateTime<Utc>,
    output_file_id: Option<String>,
    /// The input's targets and every label the journal names.
    targets: BTreeSet<LabelKey>,
    labels: BTreeMap<LabelKey, ReceiptWordLabel>,
    journal: BTreeMap<LabelKey, CompletionBatchVerdict>,
    candidates: BTreeMap<LabelKey, Candidate>,
    counters: PlanCounters,
}

impl PlanBuilder {
    pub fn new(input: PlanInput<'_>) -> Self {
        let outcome = Outcome::of(&input.batch.status);
        let (validated_at, field) = batch_timestamp(input.batch, outcome);
        let mut counters = PlanCounters {
            timestamp_field: field.to_owned(),
            ..PlanCounters::default()
        };
        let mut journal = BTreeMap::new();
        for row in input.journal {
            if row.batch_id == input.batch_id && outcome.applies_output() {
                journal.insert(row.label.clone(), row);
            } else {
                counters.journal_ignored += 1;
            }
        }
        // A label this batch already decided stays its target even if a re-run's target list
        // (say, from the fallback) no longer names it: its remaining writes must be finished,
        // and it must not count as "INVALID before this batch" for its neighbours.
        let mut targets = input.targets;
        targets.extend(journal.keys().cloned());
        counters.targets.total = targets.len() as u64;
        PlanBuilder {
            batch_id: input.batch_id,
            outcome,
            validated_at,
            output_file_id: input.batch.output_file_id.clone(),
            targets,
            labels: input
                .labels
                .into_iter()
                .map(|l| (l.key.clone(), l))
                .collect(),
            journal,
            candidates: BTreeMap::new(),
            counters,
        }
    }

    /// One line of the output file, with its 1-based physical line number (blank lines
    /// counted): the number goes into the verdict rows' `source` and decides which of two
    /// results for one label wins.
    pub fn add_line(&mut self, line_no: u64, line: ParsedLine) {
        if let Some(results) = count_line(&mut self.counters.output_lines, line) {
            for (index, result) in results.into_iter().enumerate() {
                self.add_result((line_no, index), result);
            }
        }
    }

    /// One line of the error file: counted only. Its requests failed; an answer found there
    /// anyway is not used, as verdict rows can only point into the output file.
    pub fn add_error_line(&mut self, _line_no: u64, line: ParsedLine) {
        count_line(&mut self.counters.error_lines, line);
    }

    fn add_result(&mut self, position: (u64, usize), result: Result<ParsedResult, ResultSkip>) {
        let c = &mut self.counters.results;
        c.total += 1;
        let r = match result {
            Err(skip) => {
                *match skip {
                    ResultSkip::NotAnObject => &mut c.not_an_object,
                    ResultSkip::MissingId => &mut c.missing_id,
                    ResultSkip::BadId(_) => &mut c.bad_id,
                    ResultSkip::OtherReceipt { .. } => &mut c.other_receipt,
                    ResultSkip::IsValidNotBool => &mut c.is_valid_not_bool,
                } += 1;
                return;
            }
            Ok(r) => r,
        };
        if !self.outcome.applies_output() {
            self.counters.results.ignored += 1;
            return;
        }
        if !self.targets.contains(&r.label) {
            self.counters.results.not_target += 1;
            return;
        }
        if self.present(&r.label).is_none() {
            self.counters.results.not_in_table += 1;
            return;
        }
        let candidate = Candidate {
            position,
            is_valid: r.is_valid,
            correct_label: r.correct_label,
        };
        match self.candidates.entry(r.label) {
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(candidate);
            }
            std::collections::btree_map::Entry::Occupied(mut o) => {
                self.counters.results.duplicate_overridden += 1;
                if candidate.position > o.get().position {
                    o.insert(candidate);
                }
            }
        }
    }

    /// The label as the table holds it, except a correction this very batch created in an
    /// earlier run: that one did not exist before the batch, so a result naming it is "not in
    /// the table" on every run alike (otherwise a re-run would judge it).
    fn present(&self, key: &LabelKey) -> Option<&ReceiptWordLabel> {
        self.labels.get(key).filter(|l| {
            !(l.validation_status == ValidationStatus::None
                && l.label_proposed_by.as_deref() == Some(PROPOSED_BY_COMPLETION_BATCH)
                && l.label_consolidated_from.is_some()
                && l.reasoning.is_none()
                && l.timestamp_added == self.validated_at)
        })
    }

    fn on_word<'a>(&'a self, word: &'a WordKey) -> impl Iterator<Item = &'a ReceiptWordLabel> {
        let start = LabelKey {
            word: word.clone(),
            label: String::new(),
        };
        self.labels
            .range(start..)
            .take_while(move |(k, _)| k.word == *word)
            .map(|(_, l)| l)
    }

    /// `NEEDS_REVIEW` when another label of the word was INVALID before this batch, i.e. is
    /// INVALID now and not itself a target: a fact of the state handed in, the same whatever
    /// order the results come in.
    fn decide(&self, key: &LabelKey, is_valid: bool) -> Verdict {
        if is_valid {
            return Verdict::Valid;
        }
        let invalid_before = self.on_word(&key.word).any(|l| {
            l.key.label != key.label
                && l.validation_status == ValidationStatus::Invalid
                && !self.targets.contains(&l.key)
        });
        if invalid_before {
            Verdict::NeedsReview
        } else {
            Verdict::Invalid
        }
    }

    pub fn finish(mut self) -> Plan {
        let mut plan = Plan::empty(self.batch_id.clone(), self.outcome, self.validated_at);
        let mut candidates = std::mem::take(&mut self.candidates);
        let mut counters = std::mem::take(&mut self.counters);
        let tc = &mut counters.targets;
        let apply = |plan: &mut Plan, key: &LabelKey, verdict: Verdict, suggestion| {
            plan.status_changes.push(StatusChange {
                label: key.clone(),
                from: ValidationStatus::Pending,
                to: verdict.status(),
            });
            plan.effective.insert(
                key.clone(),
                Effective {
                    verdict,
                    suggestion,
                },
            );
        };
        let reset = |key: &LabelKey| StatusChange {
            label: key.clone(),
            from: ValidationStatus::Pending,
            to: ValidationStatus::None,
        };
        match self.outcome {
            Outcome::NotTerminal => {}
            Outcome::Failed => {
                for key in &self.targets {
                    match self.present(key).map(|l| l.validation_status) {
                        None => tc.missing += 1,
                        Some(ValidationStatus::Pending) => plan.resets.push(reset(key)),
                        Some(_) => tc.not_pending += 1,
                    }
                }
            }
            Outcome::Completed | Outcome::Expired | Outcome::Cancelled => {
                for key in &self.targets {
                    let current = self.present(key).map(|l| l.validation_status);
                    let candidate = candidates.remove(key);
                    if let Some(row) = self.journal.get(key) {
                        plan.verdicts.push(row.clone());
                        counters.verdicts.add(row.verdict);
                        tc.recorded += 1;
                        if candidate.is_some() {
                            counters.results.recorded += 1;
                        }
                        match current {
                            None => tc.missing += 1,
                            Some(s)
                                if row.previous_status == ValidationStatus::Pending
                                    && (s == ValidationStatus::Pending
                                        || s == row.verdict.status()) =>
                            {
                                apply(&mut plan, key, row.verdict, row.suggested_label.clone());
                            }
                            Some(_) => tc.conflicts += 1,
                        }
                        continue;
                    }
                    match (current, candidate) {
                        (None, _) => tc.missing += 1,
                        (Some(ValidationStatus::Valid), Some(_)) => {
                            counters.results.already_valid += 1;
                        }
                        (Some(status), Some(c)) => {
                            counters.results.applied += 1;
                            let verdict = self.decide(key, c.is_valid);
                            counters.verdicts.add(verdict);
                            plan.verdicts.push(CompletionBatchVerdict {
                                batch_id: self.batch_id.clone(),
                                label: key.clone(),
                                verdict,
                                previous_status: status,
                                suggested_label: c.correct_label.clone(),
                                source: format!("output:{}", c.position.0),
                                validated_at: self.validated_at,
                            });
                            if status == ValidationStatus::Pending {
                                apply(&mut plan, key, verdict, c.correct_label);
                            } else {
                                tc.conflicts += 1;
                            }
                        }
                        (Some(ValidationStatus::Pending), None) => plan.resets.push(reset(key)),
                        (Some(_), None) => tc.not_pending += 1,
                    }
                }
            }
        }
        tc.status_changes = plan.status_changes.len() as u64;
        tc.resets = plan.resets.len() as u64;
        plan.counters = counters;
        plan.summary = self.outcome.batch_status().map(|status| SummaryUpdate {
            status,
            result_file_id: self.output_file_id.clone(),
        });
        let words: BTreeSet<&WordKey> = plan.effective.keys().map(|k| &k.word).collect();
        plan.word_labels = words
            .into_iter()
            .map(|w| {
                let names = self.on_word(w).map(|l| l.key.label.clone()).collect();
                (w.clone(), names)
            })
            .collect();
        plan.derive();
        plan
    }
}

/// Counts a line; hands back the results of an answered one.
fn count_line(
    c: &mut LineCounters,
    line: ParsedLine,
) -> Option<Vec<Result<ParsedResult, ResultSkip>>> {
    c.total += 1;
    match line {
        ParsedLine::Blank => c.blank += 1,
        ParsedLine::Malformed(m) => *c.malformed.entry(m.kind.as_str().into()).or_default() += 1,
        ParsedLine::Failed { .. } => c.failed += 1,
        ParsedLine::Answered { results, .. } => {
            c.answered += 1;
            return Some(results);
        }
    }
    None
}
