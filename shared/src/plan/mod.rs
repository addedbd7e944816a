//! processing-rules.md as a pure function: from a batch's state (the OpenAI batch object, its
//! targets, the current labels of its receipts, its journal) and its parsed output lines, to
//! every write the batch makes. No I/O and no clock, so the rules are tested here without a
//! server, and a re-run computes the same writes as the first run.
//!
//! # Driving it
//!
//! 1. Terminal batch only ([`Outcome::of`]); for others there is nothing to do.
//! 2. Targets: stream the input file through [`crate::parse::parse_input_line`] into a
//!    [`crate::parse::TargetCollector`]. If the input file cannot be read, take the receipts of
//!    the summary's `receipt_refs` and of the output's and error file's `custom_id`s (a first
//!    pass with [`crate::parse::peek_custom_id`]), load their labels, and use
//!    [`fallback_targets`].
//! 3. Load this batch's journal rows and the labels of [`receipts_to_load`].
//! 4. [`PlanBuilder::new`], then [`PlanBuilder::add_line`] for every output line
//!    ([`crate::parse::AsyncLineReader`] + [`crate::parse::parse_output_read`]) and
//!    [`PlanBuilder::add_error_line`] for the error file; [`PlanBuilder::finish`].
//! 5. Write in the order [`Plan`] documents, passing the labels whose conditional status change
//!    conflicted to [`Plan::without_conflicts`] before the writes that depend on them.
//!
//! The plan may be computed for a whole batch or for any set of whole receipts: every rule is
//! per receipt (or per word), so plans of the receipts of a batch taken a chunk at a time, each
//! on the state the earlier chunks left, make the same writes as one plan of the whole batch,
//! and their [`PlanCounters::merge`]d counters add up to its counters. The one exception is
//! the CompletionBatchResult key, shared by verdicts of different images: a chunk's plan keeps
//! the smallest image's row among its own receipts, and the writes must keep it across chunks
//! (a put conditional on the stored row's image id, see `crate::finish`). That is how the
//! worker applies a batch: [`crate::parse::BatchIndex`] first, then chunk by chunk, the
//! [`summary_update`] once at the end.

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
pub use writes::{Plan, StatusChange, VectorMerge};

#[cfg(test)]
mod tests;
