//! The worker: a long-running SQS consumer that checks OpenAI completion batches, re-schedules
//! the unfinished ones as delayed messages, and applies the finished ones under a lease.
//!
//! # Layout
//!
//! - [`cli`]: the command line (every setting is also a flag).
//! - [`settings`]: typed, validated settings read through [`fleet_shared::config::Lookup`].
//! - [`consumer`]: the receive loop, bounded in-flight handlers, panics caught, the drain;
//!   [`run`] and [`start`].
//! - [`received`]: a received message, its body parsed once.
//! - [`handler`]: one message's life: heartbeat, the deadline from the last progress, what a
//!   failure does to the message (retry, defer, dead-letter).
//! - [`process`]: what a message asks for: its chain, a long hop, the check, the next check or
//!   the apply under the lease.
//! - [`delivery`]: the SQS side of one message (delete, visibility, follow-up, dead-letter).
//! - [`lease`]: one applier per batch: a random owner, renewals on their own task, the fence.
//! - [`outcome`]: how a handling ended, logged and counted once.
//! - [`service`]: building the batch services; the apply on its own pool.
//! - [`delay`]: when to check an unfinished batch again (pure).
//! - [`errors`]: transient, of the deployment or permanent, and the back-off (pure).
//! - [`deadlines`]: stuck `validating` batches and batches long past their expiry (pure).
//! - [`heartbeat`]: keeps a message invisible while it is handled.
//! - [`health`], [`http`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`metrics`]: the metric names and the Prometheus recorder.
//! - [`idle`]: the `--exit-when-idle` watcher.
//! - [`shutdown`]: SIGTERM/SIGINT to a cancellation token.
//! - [`apply_batch`]: the `apply-batch` command.
//! - [`clock`]: the wall clock, read only at the edges.

// The unit tests see the dev-dependencies of the integration tests and benchmarks too.
#![cfg_attr(test, allow(unused_crate_dependencies))]

// The binary's global allocator (worker/src/main.rs); the library itself allocates through
// whatever allocator its binary sets.
use mimalloc as _;

pub mod apply_batch;
pub mod cli;
pub mod clock;
pub mod consumer;
pub mod deadlines;
pub mod delay;
pub mod delivery;
pub mod errors;
pub mod handler;
pub mod health;
pub mod heartbeat;
pub mod http;
pub mod idle;
pub mod lease;
pub mod metrics;
pub mod outcome;
pub mod process;
pub mod received;
pub mod service;
pub mod settings;
pub mod shutdown;

pub use consumer::{Deps, Running, run, start};
pub use settings::Settings;
