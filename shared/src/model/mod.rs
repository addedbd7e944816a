//! The receipts-table items, encoded exactly as docs/spec/data-model.md says.

pub mod audit;
pub mod batch_summary;
pub mod fleet_state;
pub mod item;
pub mod keys;
pub mod label_name;
pub mod status;
pub mod time;
pub mod word_label;

pub use audit::{CompletionBatchResult, CompletionBatchVerdict, VerdictSource};
pub use batch_summary::BatchSummary;
pub use item::{DecodeError, Item};
pub use keys::{ImageId, KeyError, LabelKey, ReceiptKey, WordKey};
pub use label_name::LabelName;
pub use status::{BatchStatus, BatchType, ValidationStatus, Verdict};
pub use word_label::ReceiptWordLabel;

#[cfg(test)]
mod golden;
