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
use fleet_tests::sim::fleet::{self, NAMES, Scenario, Setup};

#[derive(Debug, Parser)]
#[command(name = "simulate")]
struct Cli {
    /// Scenarios to run (smoke, big, restarts, mixed, faults); none: every one but smoke.
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
        match Scenario::named(name, cli.seed) {
            Some(mut s) => {
                if let Some(k) = cli.scale {
                    s.scale = k;
                }
                scenarios.push(s);
            }
            None => {
                eprintln!(
                    "simulate: unknown scenario {name:?} (known: {})",
                    NAMES.join(", ")
                );
                return ExitCode::from(64);
            }
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
            }
            Err(e) => {
                println!("RESULT scenario={} error=\"{e:#}\"", scenario.name);
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
