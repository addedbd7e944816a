//! The Pinecone data plane: read a word vector's metadata, merge a batch's label verdicts into
//! it, and write back only what changed, paced below the per-namespace update limit.
//!
//! - [`merge`]: the pure label merge ([`merge_metadata`]).
//! - [`bucket`]: the token bucket pacing updates.
//! - [`client`]: the HTTP client ([`PineconeClient::apply_merges`]).
//! - [`error`]: its errors and their classes ([`PineconeError::error_class`]).

pub mod bucket;
pub mod client;
pub mod error;
pub mod merge;

pub use bucket::TokenBucket;
pub use client::{API_VERSION, DEFAULT_NAMESPACE, PineconeClient, PineconeConfig, PineconeReport};
pub use error::{Op, PineconeError};
pub use merge::{MergeOutcome, Metadata, MetadataChange, merge_metadata};
