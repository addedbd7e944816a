//! Deciding verdicts: output lines stream in, the decisions are made once all are in.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::counters::{LineCounters, PlanCounters, TargetCounters};
use super::input::PlanInput;
use super::outcome::{Outcome, batch_timestamp, summary_update};
use super::writes::{Effective, Plan, StatusChange, label_bit};
use crate::model::status::PROPOSED_BY_COMPLETION_BATCH;
use crate::model::{
    CompletionBatchVerdict, LabelKey, LabelName, ReceiptWordLabel, ValidationStatus, Verdict,
    VerdictSource, WordKey,
};
use crate::parse::{ParsedLine, ParsedResult, ResultSkip};
use crate::pinecone::merge::{LabelSets, word_label_sets};

/// The result that currently wins for one label.
#[derive(Debug, Clone)]
struct Candidate {
    /// (line number, index within the line's results): the later position wins.
    position: (u64, usize),
    is_valid: bool,
    correct_label: Option<String>,
}

/// Everything the builder knows about one label: a label of the table, a target, a label the
/// journal names, or several of these. One sorted vector of them replaces a map per role, so a
/// result costs one binary search and no key is cloned while lines stream in.
#[derive(Debug)]
struct Slot {
    key: LabelKey,
    /// The label's status as handed in; `None`: not in the table.
    status: Option<ValidationStatus>,
    /// In the table, and not a correction this very batch created in an earlier run (see
    /// [`is_own_correction`]).
    present: bool,
    target: bool,
    /// Index into [`PlanBuilder::journal`].
    journal: Option<usize>,
    candidate: Option<Candidate>,
}

impl Slot {
    fn new(key: LabelKey) -> Self {
        Slot {
            key,
            status: None,
            present: false,
            target: false,
            journal: None,
            candidate: None,
        }
    }

    /// The status a decision is made from: that of a present label.
    fn current(&self) -> Option<ValidationStatus> {
        if self.present { self.status } else { None }
    }
}

/// The emptied slot vector of the last builder that finished, for the next one: as with a
/// plan's rows (`super::writes::Spare`), a chunk's slots are a large allocation the allocator
/// would otherwise hand back to the system and zero again for every chunk. At most one is
/// kept, of at most [`MAX_SPARE_BYTES`].
static SPARE_SLOTS: std::sync::Mutex<Vec<Slot>> = std::sync::Mutex::new(Vec::new());

const MAX_SPARE_BYTES: usize = 1 << 20;

fn spare_slots() -> Vec<Slot> {
    SPARE_SLOTS
        .lock()
        .map(|mut spare| std::mem::take(&mut *spare))
        .unwrap_or_default()
}

fn keep_slots(mut slots: Vec<Slot>) {
    slots.clear();
    if slots.capacity() * std::mem::size_of::<Slot>() <= MAX_SPARE_BYTES
        && let Ok(mut spare) = SPARE_SLOTS.lock()
        && spare.capacity() < slots.capacity()
    {
        *spare = slots;
    }
}

/// A correction this very batch created in an earlier run did not exist before the batch, so a
/// result naming it is "not in the table" on every run alike (otherwise a re-run would judge it).
fn is_own_correction(l: &ReceiptWordLabel, validated_at: DateTime<Utc>) -> bool {
    l.validation_status == ValidationStatus::None
        && l.label_proposed_by.as_deref() == Some(PROPOSED_BY_COMPLETION_BATCH)
        && l.label_consolidated_from.is_some()
        && l.reasoning.is_none()
        && l.timestamp_added == validated_at
}

/// Computes a [`Plan`] from a batch's state and its output lines, fed one at a time so the
/// caller can stream a file of any size: memory grows with the targets, not with the file.
///
/// It is a pure function of what it is handed, so it can be handed a whole batch or any set of
/// whole receipts (a chunk, see `crate::finish`): every rule looks at one receipt at a time
/// (the NEEDS_REVIEW rule, corrections and vector merges at one word), except the
/// CompletionBatchResult key collisions across images, which the plan resolves among the
/// receipts it is given and the apply resolves across chunks.
///
/// Decisions are made in [`finish`](Self::finish), from the labels as they were handed in and
/// the last result (by file position) for each label, so neither the order in which lines are
/// fed nor the order of lines in the file changes any verdict.
///
/// # Reading of the conflict rule
///
/// docs/spec/processing-rules.md: "A label changed meanwhile by someone else is left alone and counted as
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
    batch_id: std::sync::Arc<str>,
    outcome: Outcome,
    validated_at: DateTime<Utc>,
    output_file_id: Option<String>,
    /// Sorted by key, one per label: the input's targets, the table's labels and every label
    /// the journal names.
    slots: Vec<Slot>,
    /// The slot the previous result named (a hint for the next lookup).
    last_found: usize,
    journal: Vec<CompletionBatchVerdict>,
    /// [`Plan::word_labels`].
    word_labels: BTreeMap<WordKey, LabelSets>,
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
        let mut journal = Vec::new();
        for row in input.journal {
            // Verdict rows only where output applies; reset rows for every terminal outcome.
            let kept = match row.verdict {
                Verdict::Reset => outcome != Outcome::NotTerminal,
                _ => outcome.applies_output(),
            };
            if row.batch_id == input.batch_id && kept {
                journal.push(row);
            } else {
                counters.journal_ignored += 1;
            }
        }
        let word_labels = if outcome.applies_output() {
            word_label_sets(&input.labels)
        } else {
            Default::default()
        };
        // Labels, targets and journal rows, each in key order, merged into one slot per key:
        // a merge, not a sort of all of them (a chunk has thousands, and slots are large).
        // The table's labels usually come in key order already; the journal is small.
        let mut labels = input.labels;
        if !labels.is_sorted_by(|a, b| a.key <= b.key) {
            // Stable: of two labels with one key, the later one handed in wins (below).
            labels.sort_by(|a, b| a.key.cmp(&b.key));
        }
        let n_labels = labels.len();
        // A label this batch already decided stays its target even if a re-run's target list
        // (say, from the fallback) no longer names it: its remaining writes must be finished,
        // and it must not count as "INVALID before this batch" for its neighbours.
        let mut rows: Vec<Slot> = journal
            .iter()
            .enumerate()
            .map(|(i, row)| Slot {
                target: true,
                journal: Some(i),
                ..Slot::new(row.label.clone())
            })
            .collect();
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        let mut slots = spare_slots();
        slots.reserve(n_labels + input.targets.len() + rows.len());
        let label_slot = |l: ReceiptWordLabel| Slot {
            status: Some(l.validation_status),
            present: !is_own_correction(&l, validated_at),
            ..Slot::new(l.key)
        };
        let target_slot = |key| Slot {
            target: true,
            ..Slot::new(key)
        };
        // Peeked as handed in; a slot is made only for what is taken.
        let mut labels = labels.into_iter().peekable();
        let mut targets = input.targets.into_iter().peekable();
        let mut rows = rows.into_iter().peekable();
        loop {
            // The smallest key next; of equal keys, labels before targets before journal rows
            // (the order they are handed in), so that the later one wins as documented.
            let slot = match (labels.peek(), targets.peek(), rows.peek()) {
                (None, None, None) => break,
                // Without journal rows (nearly always), one comparison: a label and the
                // target of the same key make one slot at once.
                (Some(label), Some(target), None) => match label.key.cmp(target) {
                    std::cmp::Ordering::Less => labels.next().map(label_slot),
                    std::cmp::Ordering::Equal => {
                        targets.next();
                        labels.next().map(|l| Slot {
                            target: true,
                            ..label_slot(l)
                        })
                    }
                    std::cmp::Ordering::Greater => targets.next().map(target_slot),
                },
                (label, target, row) => {
                    let mut next: Option<(usize, &LabelKey)> = None;
                    for (from, head) in [label.map(|l| &l.key), target, row.map(|r| &r.key)]
                        .into_iter()
                        .enumerate()
                    {
                        if let Some(head) = head
                            && next.is_none_or(|(_, key)| head < key)
                        {
                            next = Some((from, head));
                        }
                    }
                    match next.map(|(from, _)| from) {
                        Some(0) => labels.next().map(label_slot),
                        Some(1) => targets.next().map(target_slot),
                        _ => rows.next(),
                    }
                }
            }
            .expect("peeked");
            match slots.last_mut() {
                Some(kept) if kept.key == slot.key => {
                    if slot.status.is_some() {
                        kept.status = slot.status;
                        kept.present = slot.present;
                    }
                    kept.target |= slot.target;
                    if slot.journal.is_some() {
                        kept.journal = slot.journal;
                    }
                }
                _ => slots.push(slot),
            }
        }
        counters.targets.total = slots.iter().filter(|s| s.target).count() as u64;
        PlanBuilder {
            batch_id: input.batch_id,
            outcome,
            validated_at,
            output_file_id: input.batch.output_file_id.clone(),
            slots,
            last_found: 0,
            journal,
            word_labels,
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
                    ResultSkip::BadCorrectLabel { .. } => &mut c.bad_correct_label,
                } += 1;
                return;
            }
            Ok(r) => r,
        };
        if !self.outcome.applies_output() {
            c.ignored += 1;
            return;
        }
        // A line's results usually follow its request's targets, in key order: try the slot
        // after the last one found before searching.
        let next = self.last_found + 1;
        let found = match self.slots.get(next) {
            Some(s) if s.key == r.label => Ok(next),
            _ => self.slots.binary_search_by(|s| s.key.cmp(&r.label)),
        };
        let slot = match found {
            Ok(i) if self.slots[i].target => {
                self.last_found = i;
                &mut self.slots[i]
            }
            _ => {
                c.not_target += 1;
                return;
            }
        };
        if !slot.present {
            c.not_in_table += 1;
            return;
        }
        let candidate = Candidate {
            position,
            is_valid: r.is_valid,
            correct_label: r.correct_label,
        };
        match &slot.candidate {
            None => slot.candidate = Some(candidate),
            Some(earlier) => {
                c.duplicate_overridden += 1;
                if candidate.position > earlier.position {
                    slot.candidate = Some(candidate);
                }
            }
        }
    }

    pub fn finish(mut self) -> Plan {
        let mut plan = Plan::empty(self.batch_id.clone(), self.outcome, self.validated_at);
        let mut counters = std::mem::take(&mut self.counters);
        let targets = usize::try_from(counters.targets.total).unwrap_or(usize::MAX);
        if self.outcome.applies_output() {
            plan.verdicts.reserve(targets);
            plan.status_changes.reserve(targets);
            plan.effective.reserve(targets);
        }
        let tc = &mut counters.targets;
        let reset = |key: &LabelKey| StatusChange {
            label: key.clone(),
            from: ValidationStatus::Pending,
            to: ValidationStatus::None,
        };
        match self.outcome {
            Outcome::NotTerminal => {}
            Outcome::Failed => {
                for slot in self.slots.iter().filter(|s| s.target) {
                    if slot.journal.is_some() {
                        // Only reset rows are kept for a failed batch.
                        recorded_reset(tc, slot.current());
                        continue;
                    }
                    match slot.current() {
                        None => tc.missing += 1,
                        Some(ValidationStatus::Pending) => plan.resets.push(reset(&slot.key)),
                        Some(ValidationStatus::None) => plan.already_reset.push(slot.key.clone()),
                        Some(_) => tc.not_pending += 1,
                    }
                }
            }
            Outcome::Completed | Outcome::Expired | Outcome::Cancelled => {
                // The source of the last verdict: a line's verdicts share it.
                let mut last_source: Option<(u64, VerdictSource)> = None;
                // A word's labels are contiguous in key order.
                for word in self.slots.chunk_by_mut(|a, b| a.key.word == b.key.word) {
                    // NEEDS_REVIEW when another label of the word was INVALID before this
                    // batch, i.e. is INVALID now and not itself a target: a fact of the state
                    // handed in, the same whatever order the results come in.
                    let invalid_before = word
                        .iter()
                        .any(|s| s.status == Some(ValidationStatus::Invalid) && !s.target);
                    // Core label names on the word (any label, even this batch's own earlier
                    // correction): a correction is created only where its name is absent.
                    let word_labels = word
                        .iter()
                        .filter(|s| s.status.is_some())
                        .fold(0u32, |m, s| m | label_bit(&s.key.label));
                    let mut apply = |key: &LabelKey, verdict: Verdict, suggestion| {
                        plan.status_changes.push(StatusChange {
                            label: key.clone(),
                            from: ValidationStatus::Pending,
                            to: verdict.status(),
                        });
                        plan.effective.push(Effective {
                            verdict,
                            suggestion,
                            word_labels,
                        });
                    };
                    for slot in word.iter_mut().filter(|s| s.target) {
                        let key = &slot.key;
                        let current = slot.current();
                        let candidate = slot.candidate.take();
                        if let Some(row) = slot.journal.map(|i| &self.journal[i]) {
                            if candidate.is_some() {
                                counters.results.recorded += 1;
                            }
                            if row.verdict == Verdict::Reset {
                                recorded_reset(tc, current);
                                continue;
                            }
                            plan.verdicts.push(row.clone());
                            counters.verdicts.add(row.verdict);
                            tc.recorded += 1;
                            match current {
                                None => tc.missing += 1,
                                Some(s)
                                    if row.previous_status == ValidationStatus::Pending
                                        && (s == ValidationStatus::Pending
                                            || s == row.verdict.status()) =>
                                {
                                    apply(
                                        key,
                                        row.verdict,
                                        row.suggested_label.as_deref().map(LabelName::new),
                                    );
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
                                let verdict = match (c.is_valid, invalid_before) {
                                    (true, _) => Verdict::Valid,
                                    (false, true) => Verdict::NeedsReview,
                                    (false, false) => Verdict::Invalid,
                                };
                                counters.verdicts.add(verdict);
                                // The row takes the text as written; the plan keeps it as a
                                // label name (a core one without an allocation).
                                let suggestion = c.correct_label.as_deref().map(LabelName::new);
                                plan.verdicts.push(CompletionBatchVerdict {
                                    batch_id: self.batch_id.clone(),
                                    label: key.clone(),
                                    verdict,
                                    previous_status: status,
                                    suggested_label: c.correct_label,
                                    source: match &last_source {
                                        Some((line, source)) if *line == c.position.0 => {
                                            source.clone()
                                        }
                                        _ => {
                                            let source = VerdictSource::output_line(c.position.0);
                                            last_source = Some((c.position.0, source.clone()));
                                            source
                                        }
                                    },
                                    validated_at: self.validated_at,
                                });
                                if status == ValidationStatus::Pending {
                                    apply(key, verdict, suggestion);
                                } else {
                                    tc.conflicts += 1;
                                }
                            }
                            (Some(ValidationStatus::Pending), None) => {
                                plan.resets.push(reset(key));
                            }
                            (Some(ValidationStatus::None), None) => {
                                plan.already_reset.push(key.clone());
                            }
                            (Some(_), None) => tc.not_pending += 1,
                        }
                    }
                }
            }
        }
        tc.status_changes = plan.status_changes.len() as u64;
        tc.resets = plan.resets.len() as u64;
        tc.already_reset = plan.already_reset.len() as u64;
        plan.counters = counters;
        plan.summary = summary_update(self.outcome, self.output_file_id.take());
        plan.word_labels = std::mem::take(&mut self.word_labels);
        plan.derive();
        keep_slots(std::mem::take(&mut self.slots));
        plan
    }
}

/// A target whose reset this batch journaled is never reset again: NONE, it is done; PENDING
/// again, a newer batch asked about it since, and that batch's verdict must land (a re-run
/// cannot tell it from an unfinished reset otherwise: docs/spec/processing-rules.md).
fn recorded_reset(tc: &mut TargetCounters, current: Option<ValidationStatus>) {
    match current {
        None => tc.missing += 1,
        Some(ValidationStatus::Pending) => tc.reclaimed += 1,
        Some(_) => tc.reset_recorded += 1,
    }
}

/// Counts a line; hands back the results of an answered one.
fn count_line(
    c: &mut LineCounters,
    line: ParsedLine,
) -> Option<Vec<Result<ParsedResult, ResultSkip>>> {
    c.add(&line);
    match line {
        ParsedLine::Answered { results, .. } => Some(results),
        _ => None,
    }
}
