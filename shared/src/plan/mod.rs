//! docs/spec/processing-rules.md as a pure function: from a batch's state (the OpenAI batch object, its
//! targets, the current labels of its receipts, its journal) and its parsed output lines, to
//! every write the batch makes. No I/O and no clock, so the rules are tested here without a
//! server, and a re-run computes the same writes as the first run.
//!
//! # Driving it: a chunk of receipts at a time
//!
//! This is how the worker applies a batch (`crate::finish`), and how to drive the plan anywhere
//! else:
//!
//! 1. Terminal batch only ([`Outcome::of`]); for others there is nothing to do.
//! 2. A first pass over the files records where each receipt's lines are
//!    ([`crate::parse::BatchIndex`]: output lines by their `custom_id`, input requests by their
//!    targets' receipts; lines that name no receipt are counted there, with
//!    [`LineCounters::add`]). If OpenAI no longer has the input file, the receipts named by the
//!    summary's `receipt_refs` and the output's and error file's `custom_id`s are marked instead;
//!    a request whose `### Targets` cannot be read marks its own receipt the same way.
//! 3. Then, for each chunk of receipts in key order (any size; the worker takes a few dozen):
//!    - the chunk's targets: its input lines read back
//!      ([`crate::parse::LineRef::read_from`] + [`crate::parse::parse_input_line`]), and for a
//!      marked receipt its PENDING labels ([`fallback_targets`]);
//!    - the current labels of the chunk's receipts with targets, and *then* this batch's
//!      journal rows of the chunk (labels first: a label another applier of this batch changed
//!      comes with the journal row it wrote before changing it); the labels of any other
//!      receipt a journal row names ([`receipts_to_load`]);
//!    - [`PlanBuilder::new`], [`PlanBuilder::add_line`] for each of the chunk's output lines,
//!      [`PlanBuilder::finish`];
//!    - the writes in the order [`Plan`] documents, passing the labels whose conditional status
//!      change conflicted to [`Plan::without_conflicts`] before the writes that depend on them.
//! 4. The [`summary_update`] once, after every chunk.
//!
//! Every rule is per receipt (or per word), so plans of the receipts of a batch taken a chunk
//! at a time, each on the state the earlier chunks left, make the same writes as one plan of
//! the whole batch, and their [`PlanCounters::merge`]d counters add up to its counters; a
//! chunk finished by one run is not read again by the next (`crate::finish` keeps a cursor).
//! The one exception is the CompletionBatchResult key, shared by verdicts of different images:
//! a chunk's plan keeps the smallest image's row among its own receipts, and the writes must
//! keep it across chunks (a put conditional on the stored row's image id, see
//! `crate::finish`).
//!
//! A plan of a whole batch at once (every target, label and journal row handed in, every line
//! fed) is the same computation with one chunk; the tests here drive it both ways.

mod builder;
mod counters;
mod input;
mod outcome;
mod writes;

pub use builder::PlanBuilder;
pub use counters::{
    CorrectionCounters, LineCounters, PlanCounters, ResultCounters, ResultRowCounters,
    TargetCounters, VerdictCounters,
};
pub use input::{PlanInput, fallback_targets, receipts_to_load};
pub(crate) use outcome::batch_timestamp;
pub use outcome::{Outcome, SummaryUpdate, summary_update};
pub use writes::{LabelSet, Plan, StatusChange, VectorMerge};

#[cfg(test)]
mod tests;
