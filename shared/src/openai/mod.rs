//! The OpenAI Batch API: the batch object, the HTTP client and its errors.

pub mod batch;
pub mod client;
pub mod error;

pub use batch::{BatchObject, OpenAiStatus};
pub use client::{DownloadedFile, OpenAiClient, OpenAiConfig};
pub use error::{ApiErrorDetail, Endpoint, OpenAiError};
