//! What one status check costs: one worker facing many batches in progress, against moto and
//! the OpenAI emulator. Prints worker CPU time and SQS, OpenAI and DynamoDB requests per check,
//! and the process's peak RSS.
//!
//! `cargo bench -p worker --bench status_checks` checks 1,000 batches (`BENCH_BATCHES`,
//! `BENCH_MAX_IN_FLIGHT` override). Run without `--bench` (as `cargo test --all-targets` does) it
//! is a 20-batch smoke run. Moto's own speed (its SQS slows with queue depth) bounds the wall
//! time, so only the per-check counts and CPU are figures of the worker.

// This target shares its package's dependency list; unused ones are caught on the library.
#![allow(unused_crate_dependencies)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aws_sdk_sqs::config::interceptors::BeforeSerializationInterceptorContextRef;
use aws_sdk_sqs::config::{ConfigBag, Intercept};
use fleet_shared::message::BatchMessage;
use fleet_shared::model::{BatchStatus, BatchSummary, BatchType};
use fleet_shared::queue::{Outgoing, send_batch};
use fleet_shared::store::Store;
use fleet_tests::aws_env;
use fleet_tests::openai::{BatchSpec, OpenAiEmulator};
use tokio_util::sync::CancellationToken;
use worker::cli::SettingFlags;
use worker::{Deps, Settings};

/// Thread name of the worker's runtime: its threads' CPU time is the worker's.
const WORKER_THREADS: &str = "bench-worker";

fn main() -> anyhow::Result<()> {
    let full = std::env::args().any(|a| a == "--bench");
    let batches: usize = env_number("BENCH_BATCHES").unwrap_or(if full { 1000 } else { 20 });
    let max_in_flight: usize = env_number("BENCH_MAX_IN_FLIGHT").unwrap_or(16);

    // The emulator gets its own runtime and threads, so its CPU is not counted as the worker's.
    let emulator_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-emulator")
        .enable_all()
        .build()?;
    let worker_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(WORKER_THREADS)
        .enable_all()
        .build()?;
    let openai = emulator_rt.block_on(OpenAiEmulator::start())?;
    let report = worker_rt.block_on(run(&openai, batches, max_in_flight))?;
    println!(
        "worker status checks: {batches} batches in progress, one worker (MAX_IN_FLIGHT={max_in_flight}), moto + OpenAI emulator"
    );
    print!("{report}");
    Ok(())
}

fn env_number(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

async fn run(
    openai: &OpenAiEmulator,
    batches: usize,
    max_in_flight: usize,
) -> anyhow::Result<String> {
    let (_endpoint, clients) = aws_env::local_clients()?;
    let table = aws_env::unique("bench-receipts");
    aws_env::create_receipts_table(&clients.dynamodb, &table).await?;
    let queues =
        aws_env::create_queues(&clients.sqs, &aws_env::unique("bench-work"), 5, 30).await?;
    let store = Store::new(clients.dynamodb.clone(), &table);

    let now = chrono::Utc::now();
    let mut summaries = Vec::with_capacity(batches);
    let mut messages = Vec::with_capacity(batches);
    for i in 0..batches {
        let summary = BatchSummary {
            batch_id: format!("bench-{i:05}"),
            batch_type: BatchType::Completion,
            openai_batch_id: format!("batch_bench_{i:05}"),
            submitted_at: now,
            status: BatchStatus::Pending,
            result_file_id: "N/A".into(),
            receipt_refs: vec![],
        };
        let mut spec = BatchSpec::new(&summary.openai_batch_id, "file-in")
            .with_steps([("in_progress", 1_000_000)]);
        spec.created_at = now.timestamp() - 60;
        spec.expires_at = Some(now.timestamp() + 86_400);
        openai.add_batch(spec);
        messages.push(Outgoing {
            id: i.to_string(),
            body: BatchMessage::new(&summary.batch_id).to_body(),
            delay_seconds: 0,
            attributes: vec![],
        });
        summaries.push(summary.to_item());
    }
    store.put_items_batched(summaries).await?;
    let sent = send_batch(&clients.sqs, &queues.work_url, messages).await;
    anyhow::ensure!(sent.failed.is_empty(), "enqueue failed: {:?}", sent.failed);

    let vars: HashMap<String, String> = [
        ("DYNAMODB_TABLE_NAME", table.clone()),
        ("QUEUE_URL", queues.work_url.clone()),
        ("DEAD_LETTER_QUEUE_URL", queues.dead_letter_url.clone()),
        ("OPENAI_BASE_URL", openai.base_url()),
        ("OPENAI_API_KEY", "sk-bench".into()),
        // Never called: no batch finishes.
        ("PINECONE_INDEX_HOST", "http://127.0.0.1:9".into()),
        ("PINECONE_API_KEY", "pc-bench".into()),
        ("METRICS_ADDR", "127.0.0.1:0".into()),
        ("MAX_IN_FLIGHT", max_in_flight.to_string()),
        ("HOSTNAME", "bench".into()),
        ("SHUTDOWN_GRACE_SECONDS", "10".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let settings = Settings::read(&SettingFlags::default(), false, &vars)
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    let sqs_calls = Counter::default();
    let dynamo_calls = Counter::default();
    let sqs = aws_sdk_sqs::Client::from_conf(
        clients
            .sqs
            .config()
            .to_builder()
            .interceptor(sqs_calls.clone())
            .build(),
    );
    let dynamodb = aws_sdk_dynamodb::Client::from_conf(
        clients
            .dynamodb
            .config()
            .to_builder()
            .interceptor(dynamo_calls.clone())
            .build(),
    );
    let worker_store = Store::new(dynamodb, &table);
    let deps = Deps {
        sqs,
        store: worker_store.clone(),
        service: worker::service::build_services(&settings, worker_store)?,
        metrics: worker::metrics::install(),
    };

    openai.clear_requests();
    let rss_before = vm_kib("VmRSS:");
    let cpu_before = worker_cpu_ms();
    let started = Instant::now();
    let shutdown = CancellationToken::new();
    let running = worker::start(settings, deps, shutdown.clone()).await?;
    let limit = Duration::from_secs(900);
    let checks = loop {
        let checks = openai.count("GET", "/v1/batches/");
        if checks >= batches || started.elapsed() > limit {
            break checks;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let wall = started.elapsed();
    shutdown.cancel();
    running.wait().await.context("worker run")?;
    let cpu_ms = worker_cpu_ms() - cpu_before;
    let openai_requests = openai.requests().len();
    let checks_f = checks.max(1) as f64;

    let per = |n: usize| n as f64 / checks_f;
    let sqs_by_op = sqs_calls.snapshot();
    let dynamo_by_op = dynamo_calls.snapshot();
    let total = |m: &BTreeMap<&'static str, usize>| m.values().sum::<usize>();
    let breakdown = |m: &BTreeMap<&'static str, usize>| {
        m.iter()
            .map(|(op, n)| format!("{op} {:.2}", per(*n)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::new();
    use std::fmt::Write as _;
    writeln!(
        out,
        "status checks:               {checks} in {:.1} s ({:.1}/s; moto bounds this)",
        wall.as_secs_f64(),
        checks_f / wall.as_secs_f64()
    )?;
    writeln!(
        out,
        "worker CPU:                  {cpu_ms:.0} ms ({:.2} ms per check)",
        cpu_ms / checks_f
    )?;
    writeln!(
        out,
        "SQS requests per check:      {:.2} ({})",
        per(total(&sqs_by_op)),
        breakdown(&sqs_by_op)
    )?;
    writeln!(
        out,
        "OpenAI requests per check:   {:.2}",
        per(openai_requests)
    )?;
    writeln!(
        out,
        "DynamoDB requests per check: {:.2} ({})",
        per(total(&dynamo_by_op)),
        breakdown(&dynamo_by_op)
    )?;
    writeln!(
        out,
        "peak RSS (VmHWM):            {:.1} MiB (whole process, incl. the in-process emulator; VmRSS before the run {:.1} MiB)",
        vm_kib("VmHWM:") / 1024.0,
        rss_before / 1024.0
    )?;
    Ok(out)
}

/// Calls per operation, counted before they are sent (one interceptor type serves both SDKs:
/// they share the smithy runtime's `Intercept` trait).
#[derive(Debug, Clone, Default)]
struct Counter(Arc<Mutex<BTreeMap<&'static str, usize>>>);

impl Counter {
    fn add(&self, op: &'static str) {
        *self.0.lock().unwrap().entry(op).or_default() += 1;
    }

    fn snapshot(&self) -> BTreeMap<&'static str, usize> {
        self.0.lock().unwrap().clone()
    }
}

impl Intercept for Counter {
    fn name(&self) -> &'static str {
        "Counter"
    }

    fn read_before_execution(
        &self,
        ctx: &BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut ConfigBag,
    ) -> Result<(), aws_sdk_sqs::error::BoxError> {
        use aws_sdk_sqs::operation as op;
        let input = ctx.input();
        let name = if input
            .downcast_ref::<op::receive_message::ReceiveMessageInput>()
            .is_some()
        {
            "ReceiveMessage"
        } else if input
            .downcast_ref::<op::send_message::SendMessageInput>()
            .is_some()
        {
            "SendMessage"
        } else if input
            .downcast_ref::<op::delete_message::DeleteMessageInput>()
            .is_some()
        {
            "DeleteMessage"
        } else if input
            .downcast_ref::<op::change_message_visibility::ChangeMessageVisibilityInput>()
            .is_some()
        {
            "ChangeMessageVisibility"
        } else if input
            .downcast_ref::<aws_sdk_dynamodb::operation::get_item::GetItemInput>()
            .is_some()
        {
            "GetItem"
        } else if input
            .downcast_ref::<aws_sdk_dynamodb::operation::update_item::UpdateItemInput>()
            .is_some()
        {
            "UpdateItem"
        } else {
            "other"
        };
        self.add(name);
        Ok(())
    }
}

/// CPU time (user + system) of the worker runtime's threads, in milliseconds.
fn worker_cpu_ms() -> f64 {
    let ticks_per_second = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    let mut ticks = 0u64;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !comm.trim().starts_with(WORKER_THREADS) {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        ticks += field(14).unwrap_or(0) + field(15).unwrap_or(0);
    }
    ticks as f64 * 1000.0 / ticks_per_second
}

/// A `/proc/self/status` size line (`VmHWM:`, `VmRSS:`) in KiB.
fn vm_kib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0)
}
