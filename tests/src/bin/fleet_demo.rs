//! `fleet-demo`: the local run's helper. Creates the table and queues on the emulator, seeds a
//! realistic set of batches into the table and the OpenAI/Pinecone emulators, and prints (and
//! optionally checks) a summary a person can read. `scripts/run-local.sh` drives it.

// This target shares its package's dependency list; unused ones are caught on the library.
#![allow(unused_crate_dependencies)]

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context;
use aws_sdk_dynamodb::types::AttributeValue;
use clap::{Parser, Subcommand, ValueEnum};
use fleet_shared::aws::{AwsClients, load_sdk_config};
use fleet_shared::model::{BatchStatus, BatchSummary, ReceiptWordLabel, ValidationStatus};
use fleet_shared::store::Store;
use fleet_tests::aws_env;
use fleet_tests::openai::StateFile;
use fleet_tests::scenario::{self, ScenarioBatch};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    name = "fleet-demo",
    about = "Set up, seed and summarise the local fleet run"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Size {
    /// 12 batches of 4 receipts (CI).
    Small,
    /// 50 batches of 8 receipts.
    Medium,
    /// 200 batches of 20 receipts.
    Large,
}

impl Size {
    fn batches(self) -> (usize, u32) {
        match self {
            Size::Small => (12, 4),
            Size::Medium => (50, 8),
            Size::Large => (200, 20),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a receipts table and a work queue with its dead-letter queue; print them as
    /// shell assignments.
    Setup {
        #[arg(long, default_value = "fleet-demo")]
        name: String,
        #[arg(long, default_value_t = 5)]
        max_receive_count: u32,
        #[arg(long, default_value_t = 30)]
        visibility_timeout: u32,
    },
    /// Write the scenario's labels and summaries into the table, its batches and files into an
    /// OpenAI emulator state file, and its vectors into the Pinecone emulator.
    Seed {
        #[arg(long, value_enum, default_value = "medium")]
        size: Size,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, env = "DYNAMODB_TABLE_NAME")]
        table: String,
        /// Where to write the OpenAI emulator's state file.
        #[arg(long)]
        openai_state: std::path::PathBuf,
        /// The Pinecone emulator's URL (admin API).
        #[arg(long)]
        pinecone: String,
    },
    /// Print batches by outcome, labels by status and corrections; with `--check`, exit 1 unless
    /// every seeded batch ended as its scenario says.
    Summary {
        #[arg(long, value_enum, default_value = "medium")]
        size: Size,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, env = "DYNAMODB_TABLE_NAME")]
        table: String,
        #[arg(long)]
        check: bool,
        /// Seconds the run took, to print.
        #[arg(long)]
        elapsed: Option<f64>,
        /// The webhook server's /metrics URL: adds how many batches finished by webhook (with
        /// `--check`, at least one must have, and no delivery may have been refused).
        #[arg(long, value_name = "URL")]
        webhook_metrics: Option<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fleet-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn clients() -> AwsClients {
    AwsClients::from_config(&load_sdk_config().await)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Setup {
            name,
            max_receive_count,
            visibility_timeout,
        } => {
            let c = clients().await;
            let table = aws_env::unique(&name);
            aws_env::create_receipts_table(&c.dynamodb, &table).await?;
            let queues =
                aws_env::create_queues(&c.sqs, &table, max_receive_count, visibility_timeout)
                    .await?;
            println!("DYNAMODB_TABLE_NAME={table}");
            println!("QUEUE_URL={}", queues.work_url);
            println!("DEAD_LETTER_QUEUE_URL={}", queues.dead_letter_url);
        }
        Command::Seed {
            size,
            seed,
            table,
            openai_state,
            pinecone,
        } => {
            let (count, receipts) = size.batches();
            let mut batches = scenario::mixed(seed, count, receipts);
            // Submitted a minute ago, so nothing looks overdue or stuck.
            let shift = chrono::Utc::now().timestamp() - 60 - scenario::CREATED_AT;
            for b in &mut batches {
                b.shift_times(shift);
            }
            let store = Store::new(clients().await.dynamodb, &table);
            seed_table(&store, &batches).await?;
            let state = StateFile {
                batches: batches.iter().map(|b| b.spec.clone()).collect(),
                files: batches.iter().flat_map(|b| b.files.clone()).collect(),
            };
            std::fs::write(&openai_state, serde_json::to_vec(&state)?)
                .with_context(|| format!("writing {}", openai_state.display()))?;
            seed_vectors(&pinecone, &batches).await?;
            let labels: usize = batches.iter().map(|b| b.labels.len()).sum();
            let targets: usize = batches.iter().map(|b| b.targets.len()).sum();
            println!(
                "seeded {count} batches, {} receipts, {labels} labels ({targets} pending targets)",
                count * receipts as usize
            );
        }
        Command::Summary {
            size,
            seed,
            table,
            check,
            elapsed,
            webhook_metrics,
        } => {
            let (count, receipts) = size.batches();
            let batches = scenario::mixed(seed, count, receipts);
            let store = Store::new(clients().await.dynamodb, &table);
            let webhooks = match webhook_metrics {
                Some(url) => Some(WebhookCounts::fetch(&url).await?),
                None => None,
            };
            return summary(&store, &batches, check, elapsed, webhooks.as_ref()).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn seed_table(store: &Store, batches: &[ScenarioBatch]) -> anyhow::Result<()> {
    let items = batches
        .iter()
        .flat_map(|b| {
            b.labels
                .iter()
                .map(ReceiptWordLabel::to_item)
                .chain(std::iter::once(b.summary.to_item()))
        })
        .collect();
    store.put_items_batched(items).await?;
    Ok(())
}

async fn seed_vectors(pinecone: &str, batches: &[ScenarioBatch]) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let vectors: Vec<_> = batches
        .iter()
        .flat_map(|b| &b.vectors)
        .map(|(id, meta)| json!({"namespace": "words", "id": id, "values": [0.1, 0.2], "metadata": meta}))
        .collect();
    for chunk in vectors.chunks(500) {
        http.post(format!("{pinecone}/_admin/upsert"))
            .json(&chunk)
            .send()
            .await?
            .error_for_status()
            .context("seeding the Pinecone emulator")?;
    }
    Ok(())
}

/// `fleet_webhooks_total` of the webhook server, summed by outcome.
struct WebhookCounts {
    by_outcome: BTreeMap<String, u64>,
}

/// Outcomes that mean a delivery was refused or failed (400, 503).
const WEBHOOK_FAILURES: &[&str] = &[
    "missing_header",
    "bad_timestamp",
    "stale_timestamp",
    "bad_signature",
    "too_large",
    "bad_body",
    "bad_json",
    "bad_event",
    "error",
];

impl WebhookCounts {
    async fn fetch(url: &str) -> anyhow::Result<Self> {
        let page = reqwest::get(url)
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("reading the webhook server's metrics at {url}"))?
            .text()
            .await?;
        Ok(Self::parse(&page))
    }

    fn parse(page: &str) -> Self {
        let mut by_outcome = BTreeMap::new();
        for line in page
            .lines()
            .filter(|l| l.starts_with("fleet_webhooks_total{"))
        {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let outcome = series
                .split_once("outcome=\"")
                .and_then(|(_, rest)| rest.split('"').next())
                .unwrap_or("unknown");
            // A counter's value: a whole, non-negative number far below 2^53.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let n = value.parse::<f64>().unwrap_or(0.0) as u64;
            *by_outcome.entry(outcome.to_owned()).or_default() += n;
        }
        WebhookCounts { by_outcome }
    }

    fn get(&self, outcome: &str) -> u64 {
        self.by_outcome.get(outcome).copied().unwrap_or(0)
    }

    fn failures(&self) -> u64 {
        WEBHOOK_FAILURES.iter().map(|o| self.get(o)).sum()
    }
}

async fn summary(
    store: &Store,
    batches: &[ScenarioBatch],
    check: bool,
    elapsed: Option<f64>,
    webhooks: Option<&WebhookCounts>,
) -> anyhow::Result<ExitCode> {
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut wrong = Vec::new();
    for b in batches {
        let found: Option<BatchSummary> = store.batch_summary(&b.summary.batch_id).await?;
        let status = found.map(|s| s.status);
        *by_status
            .entry(status.map_or("MISSING".into(), |s| s.to_string()))
            .or_default() += 1;
        let expected = b.outcome.summary_status();
        if status != Some(expected) {
            wrong.push(format!(
                "{} ({}): expected {expected}, found {}",
                b.summary.batch_id,
                b.summary.openai_batch_id,
                status.map_or("nothing".into(), |s| s.to_string())
            ));
        }
    }
    let mut labels_by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut corrections = 0u64;
    let mut by_fleet = 0u64;
    let mut seen = std::collections::HashSet::new();
    for b in batches {
        for receipt in &b.summary.receipt_refs {
            if !seen.insert(receipt.clone()) {
                continue;
            }
            for l in store.receipt_labels(receipt).await?.into_iter().flatten() {
                *labels_by_status
                    .entry(l.validation_status.to_string())
                    .or_default() += 1;
                if l.label_consolidated_from.is_some() {
                    corrections += 1;
                }
                if l.label_proposed_by.as_deref() == Some("COMPLETION_BATCH") {
                    by_fleet += 1;
                }
            }
        }
    }
    let audit_rows = count_audit_rows(store, batches).await?;
    println!();
    println!("== fleet run summary ==");
    if let Some(secs) = elapsed {
        println!("elapsed: {secs:.1} s");
    }
    println!("batches: {}", batches.len());
    for (status, n) in &by_status {
        println!("  {status:<12} {n:>6}");
    }
    println!("labels by status:");
    for status in ValidationStatus::ALL {
        let n = labels_by_status.get(status.as_str()).copied().unwrap_or(0);
        println!("  {:<12} {n:>6}", status.as_str());
    }
    println!("labels changed or created by the fleet: {by_fleet}");
    println!("corrections created: {corrections}");
    println!("audit rows (CompletionBatchResult): {}", audit_rows.0);
    println!(
        "verdict journal rows (CompletionBatchVerdict): {}",
        audit_rows.1
    );
    if let Some(w) = webhooks {
        let received: u64 = w.by_outcome.values().sum();
        let detail = w
            .by_outcome
            .iter()
            .map(|(o, n)| format!("{o} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!("webhooks received: {received} ({detail})");
        println!(
            "batches finished by webhook: {} of {} (enqueued the moment OpenAI reported their end; the rest by scheduled checks)",
            w.get("enqueued"),
            batches.len()
        );
    }
    let pending = labels_by_status.get("PENDING").copied().unwrap_or(0);
    if check {
        let mut problems = wrong;
        if let Some(w) = webhooks {
            if w.get("enqueued") == 0 {
                problems.push("no batch finished by webhook".into());
            }
            if w.failures() > 0 {
                problems.push(format!(
                    "{} webhook deliveries were refused or failed",
                    w.failures()
                ));
            }
        }
        if pending > 0 {
            problems.push(format!("{pending} labels are still PENDING"));
        }
        if by_status.contains_key(BatchStatus::Pending.as_str()) {
            problems.push("some batches are still PENDING".into());
        }
        if problems.is_empty() {
            println!("check: every batch ended as seeded, no label left PENDING");
        } else {
            println!("check FAILED:");
            for p in &problems {
                println!("  - {p}");
            }
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Counts result and verdict rows of the seeded batches (a query per batch partition).
async fn count_audit_rows(store: &Store, batches: &[ScenarioBatch]) -> anyhow::Result<(u64, u64)> {
    let (mut results, mut verdicts) = (0u64, 0u64);
    for b in batches {
        let out = store
            .client()
            .query()
            .table_name(store.table())
            .key_condition_expression("PK = :pk")
            .expression_attribute_values(
                ":pk",
                AttributeValue::S(format!("BATCH#{}", b.summary.batch_id)),
            )
            .send()
            .await?;
        for item in out.items.unwrap_or_default() {
            match item.get("SK").and_then(|v| v.as_s().ok()) {
                Some(sk) if sk.starts_with("RESULT#") => results += 1,
                Some(sk) if sk.starts_with("VERDICT#") => verdicts += 1,
                _ => {}
            }
        }
    }
    Ok((results, verdicts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_counts_sum_every_type_by_outcome() {
        let page = "# TYPE fleet_webhooks_total counter\n\
            fleet_webhooks_total{type=\"batch.completed\",outcome=\"enqueued\"} 40\n\
            fleet_webhooks_total{type=\"batch.failed\",outcome=\"enqueued\"} 5\n\
            fleet_webhooks_total{type=\"batch.failed\",outcome=\"not_pending\"} 1\n\
            fleet_webhooks_total{type=\"unknown\",outcome=\"bad_signature\"} 2\n\
            fleet_webhook_handling_seconds_count{class=\"ok\"} 46\n";
        let w = WebhookCounts::parse(page);
        assert_eq!(w.get("enqueued"), 45);
        assert_eq!(w.get("not_pending"), 1);
        assert_eq!(w.failures(), 2);
        assert_eq!(w.by_outcome.values().sum::<u64>(), 48);
    }
}
