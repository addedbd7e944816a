//! The worker: a long-running SQS consumer that checks OpenAI completion batches, re-schedules
//! the unfinished ones as delayed messages, and applies the finished ones under a lease.
//!
//! # Layout
//!
//! - [`cli`]: the command line (every setting is also a flag).
//! - [`settings`]: typed, validated settings read through [`fleet_shared::config::Lookup`].
//! - [`service`]: the [`service::BatchService`] trait the consumer calls (load, check,
//!   cancel, apply a batch) and its implementation by [`fleet_shared::finish::Services`].
//! - [`consumer`]: the receive loop, bounded in-flight handlers, the drain; [`run`] and
//!   [`start`].
//! - [`handler`]: one message, from receipt to its outcome.
//! - [`delay`]: when to check an unfinished batch again (pure).
//! - [`errors`]: transient or permanent, and the visibility backoff of retries (pure).
//! - [`deadlines`]: stuck `validating` batches and batches long past their expiry (pure).
//! - [`heartbeat`]: keeps a message invisible, and its batch's lease ours, while it is handled.
//! - [`health`], [`http`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`metrics`]: the metric names and the Prometheus recorder.
//! - [`idle`]: the `--exit-when-idle` watcher.
//! - [`shutdown`]: SIGTERM/SIGINT to a cancellation token.
//! - [`apply_batch`]: the `apply-batch` command.
//! - [`clock`]: the wall clock, read only at the edges.

pub mod apply_batch;
pub mod cli;
pub mod clock;
pub mod consumer;
pub mod deadlines;
pub mod delay;
pub mod errors;
pub mod handler;
pub mod health;
pub mod heartbeat;
pub mod http;
pub mod idle;
pub mod metrics;
pub mod service;
pub mod settings;
pub mod shutdown;

pub use consumer::{Deps, Running, run, start};
pub use settings::Settings;
