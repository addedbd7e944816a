//! What the producer and the worker share: the receipts-table model and store, the clients of
//! the outside services, and the processing rules.
//!
//! # Layout
//!
//! - [`model`]: the DynamoDB items of docs/spec/data-model.md (encode, decode, keys, enumerations).
//! - [`store`]: the receipts table through aws-sdk-dynamodb: queries, conditional status
//!   changes, audit-row batches, leases and schedule markers.
//! - [`error_class`]: transient, permanent or an error of the deployment: what the worker does.
//! - [`fence`]: calls refused once a handling's lease may have passed to another worker.
//! - [`progress`]: the last progress of a handling (its deadline runs from there).
//! - [`config`]: typed settings from flags and a [`config::ConfigSource`] (exit 64 on errors).
//! - [`message`]: the work-queue message, schema v1, and what makes a body poison.
//! - [`telemetry`]: JSON or text logs on stderr.
//! - [`aws`]: building SDK clients from the standard chain (`AWS_ENDPOINT_URL` for emulators).
//! - [`openai`]: the OpenAI Batch API (batch object, client).
//! - [`parse`]: streaming parsers of a batch's input, output and error files.
//! - [`plan`]: docs/spec/processing-rules.md as a pure function from parsed lines and table state to writes.
//! - [`finish`]: loading, checking and applying one batch (carries out a plan, summary last).
//! - [`queue`]: SQS sends (batched, delayed, dead-letter) and queue depths.
//! - [`pinecone`]: the Pinecone data plane: metadata fetch, label merge, rate-limited updates.
//! - [`http`]: the HTTP plumbing both clients share: one attempt, retries, pacing, progress.
//! - [`retry`]: bounded exponential backoff with `Retry-After`, shared by the HTTP clients.
//! - [`secret`]: keeping API keys out of logs, errors and `Debug` output.

pub mod aws;
pub mod config;
pub mod error_class;
pub mod fence;
pub mod finish;
pub mod http;
pub mod message;
pub mod model;
pub mod openai;
pub mod parse;
pub mod pinecone;
pub mod plan;
pub mod progress;
pub mod queue;
pub mod retry;
pub mod secret;
mod send_check;
pub mod store;
pub mod telemetry;
