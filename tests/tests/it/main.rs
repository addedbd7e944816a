//! The fleet's integration tests: one binary (link time on 2 cores), one module per subject.
//! They run against moto_server (`scripts/moto.sh`, started on demand) and the emulators.

mod clients;
mod conformance;
mod finish;
mod fleet;
mod producer;
mod sim_apply;
mod store;
mod support;
mod worker;
