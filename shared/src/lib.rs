//! What the producer and the worker share: the receipts-table model and store, the clients of
//! the outside services, and the processing rules.
//!
//! # Layout
//!
//! - [`model`]: the DynamoDB items of data-model.md (encode, decode, keys, enumerations).
//! - [`store`]: the receipts table through aws-sdk-dynamodb: queries, conditional status
//!   changes, audit-row batches, leases and schedule markers.
//! - [`aws`]: building SDK clients from the standard chain (`AWS_ENDPOINT_URL` for emulators).
//! - [`openai`]: the OpenAI Batch API (batch object, client).

pub mod aws;
pub mod model;
pub mod openai;
pub mod store;
