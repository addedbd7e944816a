//! The OpenAI Batch API: the batch object and the HTTP client.

pub mod batch;

pub use batch::{BatchObject, OpenAiStatus};
