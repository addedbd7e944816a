//! `pinecone-emulator`: the Pinecone data-plane emulator as a process, for the local demo.
//!
//! Prints `listening on http://127.0.0.1:PORT` as the first stdout line (the value for
//! `PINECONE_INDEX_HOST`), then serves until SIGINT/SIGTERM. Drive it with the `/_admin/…` API
//! documented in `fleet_tests::pinecone`.

// This target shares its package's dependency list; unused ones are caught on the library.
#![allow(unused_crate_dependencies)]

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use fleet_tests::common::{init_tracing, shutdown_signal};
use fleet_tests::pinecone::PineconeEmulator;

#[derive(Debug, Parser)]
#[command(
    name = "pinecone-emulator",
    about = "Emulator of the Pinecone data plane"
)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "PINECONE_EMULATOR_ADDR", default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    /// Latency added before every API answer, in milliseconds.
    #[arg(long, env = "PINECONE_EMULATOR_LATENCY_MS")]
    latency_ms: Option<u64>,
    /// Updates per second per namespace before answering 429 (default: unlimited).
    #[arg(long, env = "PINECONE_EMULATOR_RATE_LIMIT")]
    rate_limit: Option<u32>,
    /// Accept only this API key (default: any non-empty key).
    #[arg(long, env = "PINECONE_EMULATOR_API_KEY")]
    api_key: Option<String>,
    /// Milliseconds before an update becomes visible to fetches (the real index is
    /// eventually consistent; default 0, at once).
    #[arg(
        long,
        env = "PINECONE_EMULATOR_CONSISTENCY_DELAY_MS",
        default_value_t = 0
    )]
    consistency_delay_ms: u64,
    /// Fetches per second for the whole index before answering 429 (0: unlimited).
    #[arg(long, env = "PINECONE_EMULATOR_FETCH_RATE_LIMIT", default_value_t = fleet_tests::pinecone::DEFAULT_FETCH_RATE)]
    fetch_rate_limit: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let args = Args::parse();
    let emulator = PineconeEmulator::start_on(args.addr).await?;
    if let Some(ms) = args.latency_ms {
        emulator.set_latency(Duration::from_millis(ms));
    }
    emulator.set_rate_limit(args.rate_limit);
    emulator.set_consistency_delay(Duration::from_millis(args.consistency_delay_ms));
    emulator.set_fetch_rate_limit(Some(args.fetch_rate_limit).filter(|n| *n > 0));
    emulator.set_api_key(args.api_key);
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", emulator.base_url())?;
        out.flush()?;
    }
    shutdown_signal().await;
    tracing::info!("shutting down");
    emulator.shutdown().await;
    Ok(())
}
