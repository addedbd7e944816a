//! The fleet's integration tests: one binary (link time on 2 cores), one module per subject.
//! They run against moto_server (`scripts/moto.sh`, started on demand) and the emulators.

// This target shares its package's dependency list; unused ones are caught on the library.
#![allow(unused_crate_dependencies)]

mod clients;
mod conformance;
mod finish;
mod producer;
mod sim_apply;
mod support;
mod vectors;
mod webhook;
mod worker;
