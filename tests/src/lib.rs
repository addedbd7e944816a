//! Emulators of the two HTTP APIs the fleet calls, for the integration tests (started
//! in-process on port 0) and for the local demo (as binaries).
//!
//! # Layout
//!
//! - [`openai`]: the OpenAI Batch API emulator ([`openai::OpenAiEmulator`]: batch status
//!   scripts, cancel, file content) and [`openai::fixtures`] to build input/output/error file
//!   lines.
//! - [`pinecone`]: the Pinecone data-plane emulator ([`pinecone::PineconeEmulator`]: fetch,
//!   update with metadata merge, rate limit).
//! - [`common`]: what both share: fault injection ([`common::FaultSpec`]), the request log
//!   ([`common::RequestRecord`]), signal handling and logging for the binaries.
//! - `src/bin/openai_emulator.rs`, `src/bin/pinecone_emulator.rs`: the `openai-emulator` and
//!   `pinecone-emulator` binaries (`--addr`, print `listening on http://…`, run until
//!   SIGINT/SIGTERM).
//!
//! - [`aws_env`]: local AWS for tests and the demo: moto_server, a unique receipts table and
//!   queues.
//!
//! - [`scenario`]: realistic, seeded batches (table items, OpenAI script and files, vectors).
//!
//! Both emulators expose a control API under `/_admin/…` (never authenticated, faulted or
//! logged) mirroring the library methods, so the binaries can be driven over HTTP.

// The unit tests see the dev-dependencies of the integration tests (`tests/it`) too.
#![cfg_attr(test, allow(unused_crate_dependencies))]

// Used by the binaries (`src/bin`), which share this package's dependency list.
use clap as _;

pub mod aws_env;
pub mod common;
pub mod openai;
pub mod pinecone;
pub mod scenario;
pub mod sim;
