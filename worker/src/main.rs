//! The worker binary: parse, validate, wire, run. Everything else lives in the library.

// This target shares its package's dependency list; unused ones are caught on the library.
#![allow(unused_crate_dependencies)]

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use fleet_shared::aws::{AwsClients, load_sdk_config};
use fleet_shared::config::{EXIT_USAGE, Environment};
use fleet_shared::store::Store;
use tokio_util::sync::CancellationToken;
use worker::cli::{Cli, Command};
use worker::{Deps, Settings};

/// mimalloc, not glibc's malloc: an apply plans a chunk of receipts at a time, and glibc hands
/// a chunk's freed memory back to the system and faults it in again for the next (parse + plan
/// of a 200 MB output file took about a third longer at 100 receipts per chunk than at 50;
/// `tests/benches/finish.rs`, which uses the same allocator).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are not errors; everything else clap rejects is usage.
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return exit_code(code);
        }
    };
    let settings = match Settings::read(&cli.settings, cli.exit_when_idle, &Environment) {
        Ok(settings) => settings,
        Err(e) => {
            eprint!("worker: {e}");
            return exit_code(EXIT_USAGE);
        }
    };
    fleet_shared::telemetry::init(settings.common.log_format, &settings.common.log_filter);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("worker: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, settings)) {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "worker failed");
            eprintln!("worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Option<Command>, settings: Settings) -> anyhow::Result<ExitCode> {
    if command.is_none() {
        settings.log_banner();
    }
    let metrics = worker::metrics::install();
    let clients = AwsClients::from_config(&load_sdk_config().await);
    let store = Store::new(clients.dynamodb.clone(), &settings.common.table_name);
    let service = worker::service::build_services(&settings, store.clone())?;
    match command {
        Some(Command::ApplyBatch { batch_id, json }) => {
            let outcome =
                worker::apply_batch::apply_batch(&settings, &store, &service, &batch_id).await?;
            let text = if json {
                format!("{:#}\n", outcome.to_json(&batch_id))
            } else {
                outcome.to_text(&batch_id)
            };
            std::io::stdout().write_all(text.as_bytes())?;
            Ok(if outcome.is_success() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        None => {
            let shutdown = CancellationToken::new();
            worker::shutdown::cancel_on_signal(shutdown.clone())?;
            let deps = Deps {
                sqs: clients.sqs,
                store,
                service,
                metrics,
            };
            worker::run(settings, deps, shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn exit_code(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
