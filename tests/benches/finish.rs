//! Benchmark of finishing a batch (issue 3). Prints figures; asserts nothing about speed.
//!
//! 1. Parse + plan of a generated output file (default ~200 MB; `BENCH_OUTPUT_MB`) next to
//!    plain serde_json parsing of the same file in the same run, and the peak RSS of the
//!    parse + plan phase (VmHWM after resetting it through /proc/self/clear_refs).
//! 2. Against moto: applying a 1,000-receipt batch next to a plain loop of the same number of
//!    single-item writes, in the same run (`BENCH_APPLY_RECEIPTS`, default 1000; 0 skips).
//!
//! Run: `cargo bench -p fleet-tests --bench finish` (moto is started on demand).

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::time::Instant;

use fleet_shared::model::{LabelKey, ReceiptWordLabel, ValidationStatus};
use fleet_shared::openai::BatchObject;
use fleet_shared::parse::{LineReader, parse_output_read};
use fleet_shared::plan::{PlanBuilder, PlanInput};
use fleet_tests::openai::fixtures::{self, AnswerShape};
use fleet_tests::scenario::{self, Rng};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Writes an output file of about `target_mb` MB; returns the targets and the labels.
fn generate(path: &std::path::Path, target_mb: usize) -> (Vec<LabelKey>, Vec<ReceiptWordLabel>) {
    let mut rng = Rng::new(99);
    let mut out = BufWriter::new(std::fs::File::create(path).unwrap());
    let mut written = 0usize;
    let mut targets = Vec::new();
    let mut labels = Vec::new();
    let labels_per_receipt = 24u32;
    let mut image = rng.uuid();
    let mut r = 0u32;
    while written < target_mb * 1_000_000 {
        if r % 2 == 0 {
            image = rng.uuid();
        }
        r += 1;
        let receipt_id = 1 + (r % 2);
        let mut results = Vec::new();
        for t in 0..labels_per_receipt {
            let (line, word) = (1 + t / 3, 1 + t % 3);
            let name = *rng.pick(fleet_shared::model::status::CORE_LABELS);
            let key = LabelKey::new(
                fleet_shared::model::ImageId::parse(&image).unwrap(),
                receipt_id,
                line,
                word,
                name,
            );
            let id = fixtures::result_id(&image, receipt_id, line, word, name, "NONE");
            let valid = rng.chance(65);
            let fix = if valid {
                None
            } else {
                Some(*rng.pick(fleet_shared::model::status::CORE_LABELS))
            };
            results.push(fixtures::result(&id, valid, fix));
            labels.push(ReceiptWordLabel {
                key: key.clone(),
                reasoning: None,
                timestamp_added: chrono::DateTime::from_timestamp(scenario::CREATED_AT, 0).unwrap(),
                validation_status: ValidationStatus::Pending,
                label_proposed_by: None,
                label_consolidated_from: None,
            });
            targets.push(key);
        }
        let line = fixtures::output_line(
            &fixtures::custom_id(&image, receipt_id),
            &results,
            AnswerShape::FunctionCall,
        );
        written += line.len() + 1;
        writeln!(out, "{line}").unwrap();
    }
    out.flush().unwrap();
    (targets, labels)
}

fn plain_serde(path: &std::path::Path) -> (f64, usize) {
    let t = Instant::now();
    let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::open(path).unwrap());
    let mut line = Vec::new();
    let mut n = 0usize;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).unwrap() == 0 {
            break;
        }
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        // The answer is a JSON string inside the line: a fair baseline parses it too.
        let args = v["response"]["body"]["choices"][0]["message"]["function_call"]["arguments"]
            .as_str()
            .unwrap_or("{}");
        let inner: serde_json::Value = serde_json::from_str(args).unwrap();
        n += inner["results"].as_array().map_or(0, Vec::len);
    }
    (t.elapsed().as_secs_f64(), n)
}

fn parse_and_plan(
    path: &std::path::Path,
    targets: Vec<LabelKey>,
    labels: Vec<ReceiptWordLabel>,
) -> (f64, u64) {
    let batch: BatchObject = serde_json::from_value(serde_json::json!({
        "id": "batch_bench", "status": "completed", "output_file_id": "file-out",
        "completed_at": scenario::FINISHED_AT
    }))
    .unwrap();
    let t = Instant::now();
    let mut builder = PlanBuilder::new(PlanInput {
        batch_id: "bench".into(),
        batch: &batch,
        targets: targets.into_iter().collect(),
        labels,
        journal: Vec::new(),
    });
    let mut reader = LineReader::new(BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(path).unwrap(),
    ));
    while let Some((n, line)) = reader.next_line().unwrap() {
        builder.add_line(n, parse_output_read(line));
    }
    let plan = builder.finish();
    (t.elapsed().as_secs_f64(), plan.counters.verdicts.total())
}

fn main() {
    let mb = env_usize("BENCH_OUTPUT_MB", 200);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("output.jsonl");
    if mb > 0 {
        let (targets, labels) = generate(&path, mb);
        let size = std::fs::metadata(&path).unwrap().len() as f64 / 1e6;
        println!(
            "output file: {size:.1} MB, {} receipts' worth of targets ({} targets)",
            targets.len() / 24,
            targets.len()
        );
        let (plain_s, plain_results) = plain_serde(&path);
        println!(
            "plain serde_json (line + arguments to Value): {:.2} s, {:.1} MB/s, {plain_results} results",
            plain_s,
            size / plain_s
        );
        let rss_inputs = vm_rss_kib();
        // Reset the peak to the current RSS so VmHWM measures the parse + plan phase only.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let (plan_s, verdicts) = parse_and_plan(&path, targets, labels);
        let peak = vm_hwm_kib();
        println!(
            "parse + plan: {:.2} s, {:.1} MB/s, {verdicts} verdicts",
            plan_s,
            size / plan_s
        );
        println!(
            "ratio (parse + plan time / plain serde_json time): {:.2}",
            plan_s / plain_s
        );
        println!(
            "RSS holding the plan's inputs (targets, labels): {} MB; peak RSS during parse + plan: {} MB",
            rss_inputs / 1024,
            peak / 1024
        );
    }
    let receipts = env_usize("BENCH_APPLY_RECEIPTS", 1000);
    if receipts > 0 {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(apply_bench(receipts as u32));
    }
}

async fn apply_bench(receipts: u32) {
    use fleet_shared::store::Store;
    use fleet_tests::aws_env;
    let (_, clients) = aws_env::local_clients().expect("moto");
    let table = aws_env::unique("bench");
    aws_env::create_receipts_table(&clients.dynamodb, &table)
        .await
        .unwrap();
    let store = Store::new(clients.dynamodb.clone(), &table);
    let openai = fleet_tests::openai::OpenAiEmulator::start().await.unwrap();
    let pinecone = fleet_tests::pinecone::PineconeEmulator::start()
        .await
        .unwrap();
    let shape = scenario::Shape {
        receipts,
        targets_per_receipt: 5,
        in_progress_polls: 0,
        ..Default::default()
    };
    let mut b = scenario::batch(&mut Rng::new(5), 0, &shape);
    b.spec.steps.clear();
    let mut items: Vec<_> = b.labels.iter().map(|l| l.to_item()).collect();
    items.push(b.summary.to_item());
    store.put_items_batched(items).await.unwrap();
    openai.add_batch(b.spec.clone());
    for (id, c) in &b.files {
        openai.add_file(id.clone(), c.clone());
    }
    for (id, m) in &b.vectors {
        pinecone.upsert("words", id, vec![0.1], m.clone());
    }
    let mut oc = fleet_shared::openai::client::OpenAiConfig::new(
        fleet_shared::secret::SecretString::from("k"),
    );
    oc.base_url = openai.base_url();
    let mut pc = fleet_shared::pinecone::client::PineconeConfig::new(
        pinecone.base_url(),
        fleet_shared::secret::SecretString::from("k"),
    );
    pc.updates_per_second = 10_000.0;
    let services = fleet_shared::finish::Services::new(
        store.clone(),
        fleet_shared::openai::client::OpenAiClient::new(oc).unwrap(),
        fleet_shared::pinecone::client::PineconeClient::new(pc).unwrap(),
    );
    let t = Instant::now();
    let summary = services.load_summary(&b.summary.batch_id).await.unwrap();
    let batch = services.check(&summary).await.unwrap();
    let report = services
        .apply(
            &summary,
            &batch,
            &tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap();
    let apply_s = t.elapsed().as_secs_f64();
    let writes = report.writes;
    // The same number of plain single-item writes, one after another, on the same table.
    let t = Instant::now();
    for i in 0..writes {
        store
            .put_raw(
                [
                    (
                        "PK".to_owned(),
                        aws_sdk_dynamodb::types::AttributeValue::S(format!("PLAIN#{i}")),
                    ),
                    (
                        "SK".to_owned(),
                        aws_sdk_dynamodb::types::AttributeValue::S("X".into()),
                    ),
                ]
                .into(),
            )
            .await
            .unwrap();
    }
    let plain_s = t.elapsed().as_secs_f64();
    println!(
        "apply of a {receipts}-receipt batch ({} targets, {} verdicts) against moto: {:.2} s, {writes} writes",
        b.targets.len(),
        report.verdict_rows,
        apply_s
    );
    println!("apply phases (ms): {:?}", report.phase_ms);
    println!(
        "plain loop of {writes} single PutItem calls: {:.2} s",
        plain_s
    );
    println!("ratio (apply / plain loop): {:.2}", apply_s / plain_s);
}
