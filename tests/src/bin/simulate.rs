//! `simulate [SCENARIO…]`: the deterministic simulation of the fleet (see
//! `fleet_tests::sim`). Runs the named scenarios (all of `fleet_tests::sim::fleet::NAMES` but
//! `smoke` without a name), each printing one `RESULT …` line and one `DETAIL …` line.
//! Exits 1 when a scenario's end state differs from the reference run's (or it did not finish).
//!
//! Needs moto for SQS (`FLEET_TEST_AWS_ENDPOINT`, or `scripts/moto.sh`) and the `worker`
//! binary (`--worker-bin`, default: beside this one). `scripts/simulate.sh` builds both.

// This target shares its package's dependency list; unused ones are caught on the library.
#![allow(unused_crate_dependencies)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// mimalloc, not glibc's malloc: the driver keeps a heap of a few GB (two copies of a
/// 400,000-item table and of 300,000 vectors) while it builds and drops small JSON values for
/// every call it answers, and glibc's `_int_malloc` took 40 % of its CPU searching its bins
/// (the reference run of `big` took 4 times as long).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use fleet_tests::sim::fleet::{self, NAMES, Scenario, Setup};

#[derive(Debug, Parser)]
#[command(name = "simulate")]
struct Cli {
    /// Scenarios to run (smoke, big, restarts, mixed, faults, pacing); none: every one but
    /// smoke.
    scenarios: Vec<String>,
    /// Seed of the data, the events and the faults.
    #[arg(long, default_value_t = 20_250_615)]
    seed: u64,
    /// Time compression (real time runs this many times faster than simulated time);
    /// default: each scenario's own.
    #[arg(long)]
    scale: Option<f64>,
    /// The worker binary; default: `worker` beside this binary.
    #[arg(long)]
    worker_bin: Option<PathBuf>,
    /// Where logs and the workers' temporary files go.
    #[arg(long, default_value = "target/simulate")]
    work_dir: PathBuf,
    /// Where reference end states are kept between runs (keyed by seed, batches and this
    /// program's own bytes, so a rebuilt program computes them again).
    #[arg(long)]
    reference_cache: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let names: Vec<String> = if cli.scenarios.is_empty() {
        NAMES
            .iter()
            .filter(|n| **n != "smoke")
            .map(|n| (*n).to_owned())
            .collect()
    } else {
        cli.scenarios.clone()
    };
    let mut scenarios = Vec::new();
    for name in &names {
        let expanded = Scenario::expand(name, cli.seed);
        if expanded.is_empty() {
            eprintln!(
                "simulate: unknown scenario {name:?} (known: {})",
                NAMES.join(", ")
            );
            return ExitCode::from(64);
        }
        for mut s in expanded {
            if let Some(k) = cli.scale {
                s.scale = k;
            }
            scenarios.push(s);
        }
    }
    let worker_bin = cli.worker_bin.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("worker")))
            .unwrap_or_else(|| PathBuf::from("worker"))
    });
    if !worker_bin.exists() {
        eprintln!(
            "simulate: no worker binary at {} (build it, or pass --worker-bin)",
            worker_bin.display()
        );
        return ExitCode::from(64);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("simulate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    let mut pacing = Vec::new();
    let mut references = fleet::References::new(cli.reference_cache.clone());
    for scenario in &scenarios {
        let setup = Setup {
            worker_bin: worker_bin.clone(),
            work_dir: cli.work_dir.join(&scenario.name),
        };
        let started = std::time::Instant::now();
        match runtime.block_on(fleet::run(scenario, &setup, &mut references)) {
            Ok(m) => {
                println!("{}", m.result_line());
                println!(
                    "{} real_s={:.1} driver_peak_rss_mb={:.0}",
                    m.detail_line(),
                    started.elapsed().as_secs_f64(),
                    fleet::driver_peak_rss_mb()
                );
                failed |= !m.end_state_ok;
                if m.scenario.starts_with("pacing-") {
                    pacing.push(format!(
                        "workers={} pct_of_limit={:.1} pct_429={:.2}",
                        scenario.workers,
                        100.0 * m.steady_updates_per_s / fleet::NAMESPACE_UPDATES_PER_SECOND,
                        m.steady_429_pct
                    ));
                }
            }
            Err(e) => {
                println!("RESULT scenario={} error=\"{e:#}\"", scenario.name);
                failed = true;
            }
        }
    }
    if !pacing.is_empty() {
        // The namespace's total update rate while that many workers applied at once, as a
        // share of its limit, and the share of update calls answered 429 (issue: >= 90 %
        // and <= 2 %).
        println!("PACING {}", pacing.join(" | "));
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
