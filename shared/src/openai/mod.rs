//! The OpenAI Batch API: the batch object and the HTTP client.

pub mod batch;
pub mod client;

pub use batch::{BatchObject, OpenAiStatus};
pub use client::{ApiErrorDetail, DownloadedFile, OpenAiClient, OpenAiConfig, OpenAiError};
