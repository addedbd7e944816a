//! A simulated DynamoDB ([`SimTable`]) and the deterministic simulation of the fleet built on it.
//!
//! # SimTable
//!
//! The DynamoDB operations the fleet uses, in memory, answered in DynamoDB's own JSON 1.0 wire
//! protocol: GetItem, PutItem, UpdateItem and DeleteItem with condition expressions (and
//! `ReturnValuesOnConditionCheckFailure`), Query with pagination, `Limit`, the 1 MB page cap
//! and global secondary indexes, Scan, BatchWriteItem with `UnprocessedItems`, BatchGetItem
//! with `UnprocessedKeys`, and the table calls the tests make (CreateTable, DescribeTable,
//! DeleteTable, UpdateTimeToLive). TransactWriteItems and PartiQL are not used by the fleet and
//! answer `UnknownOperationException`; expressions outside the grammar of [`expr`] fail with a
//! `ValidationException` naming the construct.
//!
//! The seam is the AWS SDK's pluggable HTTP client ([`http::SimHttpClient`]): the store code
//! that runs against DynamoDB runs against SimTable unchanged, with no trait of ours in
//! between and no second implementation of the fleet's rules. The conformance suite
//! (`tests/tests/it/conformance.rs`) runs the same store tests on moto and on SimTable.
//!
//! The model ([`table::Model`]): a latency per call (plus jitter), write and read units per
//! second per partition key and per table (token buckets, with a burst allowance), and
//! `ProvisionedThroughputExceededException` when a call finds them spent (a batch call returns
//! the items it could not afford as unprocessed instead). Units are billed as DynamoDB bills
//! them (1 KB per write unit, 4 KB per read unit, halved for eventually consistent reads),
//! from an approximate item size. Fault injection ([`table::FaultRates`],
//! [`table::ScriptedFault`]): throttling, 5xx and partial batches, at random from a seeded RNG
//! or scripted for the next calls.
//!
//! Not modelled: TTL deletion (the attribute is recorded, nothing expires), adaptive capacity
//! and partition splits (a partition is one partition key), GSI write capacity and the
//! eventual consistency of index reads (an index is up to date as soon as the write returns),
//! transactions, streams, and keys other than strings.

pub mod batches;
pub mod expr;
pub mod fleet;
pub mod http;
pub mod table;

pub use http::{SimHttpClient, SimServer, clients, serve};
pub use table::{FaultKind, FaultRates, Model, OpStats, Reply, ScriptedFault, SimTable, Stats};
