//! `openai-emulator`: the OpenAI Batch API emulator as a process, for the local demo.
//!
//! Prints `listening on http://127.0.0.1:PORT` as the first stdout line (the API base is that
//! URL plus `/v1`), then serves until SIGINT/SIGTERM. Drive it with the `/_admin/…` API
//! documented in `fleet_tests::openai`.

// This target shares its package's dependency list; unused ones are caught on the library.
#![allow(unused_crate_dependencies)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use fleet_tests::common::{init_tracing, shutdown_signal};
use fleet_tests::openai::{OpenAiEmulator, StateFile};

#[derive(Debug, Parser)]
#[command(name = "openai-emulator", about = "Emulator of the OpenAI Batch API")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "OPENAI_EMULATOR_ADDR", default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// JSON state to load at start: {"batches": [BatchSpec…], "files": {"id": "content"}}.
    #[arg(long, env = "OPENAI_EMULATOR_STATE")]
    state: Option<PathBuf>,
    /// Latency added before every API answer, in milliseconds.
    #[arg(long, env = "OPENAI_EMULATOR_LATENCY_MS")]
    latency_ms: Option<u64>,
    /// Accept only this API key (default: any non-empty key).
    #[arg(long, env = "OPENAI_EMULATOR_API_KEY")]
    api_key: Option<String>,
    /// Wait announced by 429 and 503 answers without one of their own, in milliseconds.
    #[arg(long, env = "OPENAI_EMULATOR_RETRY_WAIT_MS")]
    retry_wait_ms: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let args = Args::parse();
    let state = args.state.as_deref().map(StateFile::load).transpose()?;
    let emulator = OpenAiEmulator::start_on(args.addr).await?;
    if let Some(state) = state {
        tracing::info!(
            batches = state.batches.len(),
            files = state.files.len(),
            "state loaded"
        );
        emulator.load_state(state);
    }
    if let Some(ms) = args.latency_ms {
        emulator.set_latency(Duration::from_millis(ms));
    }
    emulator.set_api_key(args.api_key);
    if let Some(ms) = args.retry_wait_ms {
        emulator.set_retry_wait(Duration::from_millis(ms));
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", emulator.url())?;
        out.flush()?;
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    emulator.shutdown().await;
    Ok(())
}
