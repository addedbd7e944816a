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

mod builder;
mod counters;
mod input;
mod writes;

pub use builder::PlanBuilder;
pub use counters::{
    CorrectionCounters, LineCounters, PlanCounters, ResultCounters, ResultRowCounters,
    TargetCounters, VerdictCounters,
};
pub use input::{Outcome, PlanInput, fallback_targets, receipts_to_load};
pub use writes::{Plan, StatusChange, SummaryUpdate, VectorMerge};

#[cfg(test)]
mod tests;
