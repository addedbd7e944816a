//! Benchmark of finishing a batch (issue 3). Prints figures; asserts nothing about speed.
//!
//! 1. The worker's parse + plan of a generated output file (default ~200 MB; `BENCH_OUTPUT_MB`)
//!    next to plain serde_json parsing of the same file in the same run (each the best of
//!    `BENCH_ROUNDS`, default 3, interleaved), and the peak RSS of
//!    that phase (VmHWM after resetting it through /proc/self/clear_refs). It runs what the
//!    apply runs: a first pass indexing each receipt's lines ([`BatchIndex`]), then, chunk by
//!    chunk (`BENCH_CHUNK_RECEIPTS`, default the worker's `receipts_per_chunk`), the chunk's
//!    targets and labels (generated on the fly: they stand in for the input file and the
//!    DynamoDB reads, and their generation is timed apart and not counted), its lines read back
//!    by offset, parsed and planned. With `BENCH_WHOLE_PLAN=1` it also times one plan of the whole file
//!    with every target and label in memory (the shape before chunking), for comparison.
//! 2. Against moto: applying a 1,000-receipt batch next to a plain loop of the same number of
//!    single-item writes, in the same run (`BENCH_APPLY_RECEIPTS`, default 1000; 0 skips), with
//!    the same `BENCH_CHUNK_RECEIPTS`.
//!    moto answers a Query by scanning the whole table, so its label reads slow down as the
//!    apply's own writes grow the table; DynamoDB's do not.
//!
//! Run: `cargo bench -p fleet-tests --bench finish` (moto is started on demand).

// This target shares its package's dependency list; unused ones are caught on the library.
#![allow(unused_crate_dependencies)]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::time::{Duration, Instant};

use fleet_shared::model::status::CORE_LABELS;
use fleet_shared::model::{ImageId, LabelKey, ReceiptKey, ReceiptWordLabel, ValidationStatus};
use fleet_shared::openai::BatchObject;
use fleet_shared::parse::{
    BatchIndex, LineReader, LineRef, OutputParser, ParsedLine, chunk_lines, locate_custom_id,
    parse_output_read, read_lines,
};
use fleet_shared::plan::{PlanBuilder, PlanCounters, PlanInput};
use fleet_tests::openai::fixtures::{self, AnswerShape};
use fleet_tests::scenario::{self, Rng};

/// The worker's allocator (worker/src/main.rs): the parse + plan measured is the worker's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const LABELS_PER_RECEIPT: u32 = 24;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn vm_hwm_kib() -> u64 {
    status_kib("VmHWM:")
}

fn vm_rss_kib() -> u64 {
    status_kib("VmRSS:")
}

/// Resets the peak RSS to the current RSS, so VmHWM measures what follows.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The labels a receipt's request asked about, with the model's answer for each: derived from
/// the receipt alone, so a chunk can regenerate its targets without holding the file's.
struct ReceiptTargets {
    /// (key, is_valid, correct_label)
    labels: Vec<(LabelKey, bool, Option<&'static str>)>,
}

fn receipt_targets(receipt: &ReceiptKey) -> ReceiptTargets {
    let mut seed: u64 = 0xcbf2_9ce4_8422_2325;
    for b in receipt.custom_id().bytes() {
        seed ^= u64::from(b);
        seed = seed.wrapping_mul(0x0100_0000_01b3);
    }
    let mut rng = Rng::new(seed);
    let labels = (0..LABELS_PER_RECEIPT)
        .map(|t| {
            let (line, word) = (1 + t / 3, 1 + t % 3);
            let name = *rng.pick(CORE_LABELS);
            let key = LabelKey::new(
                receipt.image_id.clone(),
                receipt.receipt_id,
                line,
                word,
                name,
            );
            let valid = rng.chance(65);
            let fix = (!valid).then(|| *rng.pick(CORE_LABELS));
            (key, valid, fix)
        })
        .collect();
    ReceiptTargets { labels }
}

/// The chunk's targets and their labels as the table holds them (PENDING).
fn chunk_state(receipts: &[&ReceiptKey]) -> (BTreeSet<LabelKey>, Vec<ReceiptWordLabel>) {
    let mut targets = BTreeSet::new();
    let mut labels = Vec::new();
    let seeded = chrono::DateTime::from_timestamp(scenario::CREATED_AT, 0).unwrap();
    for r in receipts {
        for (key, _, _) in receipt_targets(r).labels {
            labels.push(ReceiptWordLabel {
                key: key.clone(),
                reasoning: None,
                timestamp_added: seeded,
                validation_status: ValidationStatus::Pending,
                label_proposed_by: None,
                label_consolidated_from: None,
            });
            targets.insert(key);
        }
    }
    (targets, labels)
}

/// Writes an output file of about `target_mb` MB (two receipts per image, one line each);
/// returns the number of receipts.
fn generate(path: &std::path::Path, target_mb: usize) -> usize {
    let mut rng = Rng::new(99);
    let mut out = BufWriter::new(std::fs::File::create(path).unwrap());
    let mut written = 0usize;
    let mut image = rng.uuid();
    let mut receipts = 0usize;
    while written < target_mb * 1_000_000 {
        if receipts.is_multiple_of(2) {
            image = rng.uuid();
        }
        let receipt = ReceiptKey {
            image_id: ImageId::parse(&image).unwrap(),
            receipt_id: 1 + u32::try_from(receipts % 2).expect("0 or 1"),
        };
        receipts += 1;
        let results: Vec<_> = receipt_targets(&receipt)
            .labels
            .iter()
            .map(|(k, valid, fix)| {
                let w = &k.word;
                let id = fixtures::result_id(
                    &image,
                    w.receipt.receipt_id,
                    w.line_id,
                    w.word_id,
                    &k.label,
                    "NONE",
                );
                fixtures::result(&id, *valid, *fix)
            })
            .collect();
        let line = fixtures::output_line(&receipt.custom_id(), &results, AnswerShape::FunctionCall);
        written += line.len() + 1;
        writeln!(out, "{line}").unwrap();
    }
    out.flush().unwrap();
    receipts
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

fn bench_batch() -> BatchObject {
    serde_json::from_value(serde_json::json!({
        "id": "batch_bench", "status": "completed", "output_file_id": "file-out",
        "completed_at": scenario::FINISHED_AT
    }))
    .unwrap()
}

struct Chunked {
    index_s: f64,
    plan_s: f64,
    /// Generating the chunks' targets and labels (not counted in `plan_s`).
    state_s: f64,
    /// Within `plan_s`: [`PlanBuilder::new`], reading + parsing + `add_line`, `finish`, and
    /// dropping the plan (what a chunk's writes do with it is not part of this phase).
    new_s: f64,
    lines_s: f64,
    finish_s: f64,
    drop_s: f64,
    chunks: usize,
    receipts: usize,
    counters: PlanCounters,
}

/// What the worker does with the output file: index it, then plan it chunk by chunk.
fn chunked_parse_and_plan(path: &std::path::Path, per_chunk: usize) -> Chunked {
    let batch = bench_batch();
    let t = Instant::now();
    let mut counters = PlanCounters::default();
    let mut index = BatchIndex::new();
    let mut reader = LineReader::new(BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(path).unwrap(),
    ));
    while let Some(line) = reader.next_located_line().unwrap() {
        let at = LineRef::of(&line);
        let (_, _, bytes) = line;
        match (bytes.as_ref().ok().and_then(|b| locate_custom_id(b)), at) {
            (Some(receipt), Some(at)) => index.add_output(receipt, at),
            _ => counters.output_lines.add(&parse_output_read(bytes)),
        }
    }
    let index_s = t.elapsed().as_secs_f64();

    let file = std::fs::File::open(path).unwrap();
    let mut buf = Vec::new();
    let mut parser = OutputParser::new();
    let mut state = Duration::ZERO;
    let (mut new, mut lines, mut finish, mut dropped) = (
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
        Duration::ZERO,
    );
    let mut chunks = 0;
    for chunk in index.chunks(per_chunk) {
        chunks += 1;
        let s = Instant::now();
        let receipts: Vec<&ReceiptKey> = chunk.iter().map(|(r, _)| *r).collect();
        let (targets, labels) = chunk_state(&receipts);
        state += s.elapsed();
        let s = Instant::now();
        let mut builder = PlanBuilder::new(PlanInput {
            batch_id: "bench".into(),
            batch: &batch,
            targets,
            labels,
            journal: Vec::new(),
        });
        new += s.elapsed();
        let s = Instant::now();
        let at = chunk_lines(chunk.iter().map(|(_, l)| *l), |l| &l.output);
        read_lines(&file, &at, &mut buf, |at, line| {
            builder.add_line(at.line_no, parser.parse(line));
            Ok(())
        })
        .unwrap();
        lines += s.elapsed();
        let s = Instant::now();
        let plan = builder.finish();
        finish += s.elapsed();
        counters.merge(&plan.counters);
        let s = Instant::now();
        drop(plan);
        dropped += s.elapsed();
    }
    let total = t.elapsed().as_secs_f64();
    Chunked {
        index_s,
        plan_s: total - state.as_secs_f64(),
        state_s: state.as_secs_f64(),
        new_s: new.as_secs_f64(),
        lines_s: lines.as_secs_f64(),
        finish_s: finish.as_secs_f64(),
        drop_s: dropped.as_secs_f64(),
        chunks,
        receipts: index.len(),
        counters,
    }
}

/// The same reads and parsing as [`chunked_parse_and_plan`] without the plan: how the time
/// splits between the parser and the planner. Returns (seconds, results).
fn parse_only(path: &std::path::Path, per_chunk: usize) -> (f64, usize) {
    let t = Instant::now();
    let mut index = BatchIndex::new();
    let mut reader = LineReader::new(BufReader::with_capacity(
        1 << 20,
        std::fs::File::open(path).unwrap(),
    ));
    while let Some(line) = reader.next_located_line().unwrap() {
        if let (Some(r), Some(at)) = (
            line.2.as_ref().ok().and_then(|b| locate_custom_id(b)),
            LineRef::of(&line),
        ) {
            index.add_output(r, at);
        }
    }
    let file = std::fs::File::open(path).unwrap();
    let mut buf = Vec::new();
    let mut parser = OutputParser::new();
    let mut results = 0;
    for chunk in index.chunks(per_chunk) {
        let at = chunk_lines(chunk.iter().map(|(_, l)| *l), |l| &l.output);
        read_lines(&file, &at, &mut buf, |_, line| {
            if let ParsedLine::Answered { results: r, .. } = parser.parse(line) {
                results += r.len();
            }
            Ok(())
        })
        .unwrap();
    }
    (t.elapsed().as_secs_f64(), results)
}

/// One plan of the whole file with every target and label in memory (the shape before
/// chunking); returns (seconds, verdicts, RSS holding the inputs in KiB).
fn whole_parse_and_plan(path: &std::path::Path) -> (f64, u64, u64) {
    let batch = bench_batch();
    let mut index = BatchIndex::new();
    let mut reader = LineReader::new(BufReader::new(std::fs::File::open(path).unwrap()));
    while let Some(line) = reader.next_located_line().unwrap() {
        if let (Some(r), Some(at)) = (
            line.2.as_ref().ok().and_then(|b| locate_custom_id(b)),
            LineRef::of(&line),
        ) {
            index.add_output(r, at);
        }
    }
    let receipts: Vec<&ReceiptKey> = index.receipts().map(|(r, _)| r).collect();
    let (targets, labels) = chunk_state(&receipts);
    drop(receipts);
    drop(index);
    let inputs = vm_rss_kib();
    let t = Instant::now();
    let mut builder = PlanBuilder::new(PlanInput {
        batch_id: "bench".into(),
        batch: &batch,
        targets,
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
    (
        t.elapsed().as_secs_f64(),
        plan.counters.verdicts.total(),
        inputs,
    )
}

fn main() {
    let mb = env_usize("BENCH_OUTPUT_MB", 200);
    let per_chunk = env_usize(
        "BENCH_CHUNK_RECEIPTS",
        fleet_shared::finish::ApplyOptions::default().receipts_per_chunk,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("output.jsonl");
    if mb > 0 {
        let receipts = generate(&path, mb);
        let size = std::fs::metadata(&path).unwrap().len() as f64 / 1e6;
        println!(
            "output file: {size:.1} MB, {receipts} receipts, {} targets",
            receipts * LABELS_PER_RECEIPT as usize
        );
        // Each side runs `BENCH_ROUNDS` times (default 3), interleaved so both see the same
        // machine, and each keeps its best time: one run of each swung the ratio by ±0.07 on
        // this 2-core machine (the file's reads from the page cache vary most).
        let rounds = env_usize("BENCH_ROUNDS", 3).max(1);
        let rss_before = vm_rss_kib();
        let mut plain: Option<(f64, usize)> = None;
        let mut best: Option<Chunked> = None;
        let mut peak = 0;
        let (mut plain_times, mut our_times) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let p = plain_serde(&path);
            plain_times.push(p.0);
            if plain.is_none_or(|b| p.0 < b.0) {
                plain = Some(p);
            }
            reset_peak_rss();
            let c = chunked_parse_and_plan(&path, per_chunk);
            peak = peak.max(vm_hwm_kib());
            our_times.push(c.plan_s);
            if best.as_ref().is_none_or(|b| c.plan_s < b.plan_s) {
                best = Some(c);
            }
        }
        let (plain_s, plain_results) = plain.expect("at least one round");
        let c = best.expect("at least one round");
        let spell = |t: &[f64]| {
            t.iter()
                .map(|s| format!("{s:.3}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "plain serde_json (line + arguments to Value): {:.2} s, {:.1} MB/s, {plain_results} results (best of {rounds}: {} s)",
            plain_s,
            size / plain_s,
            spell(&plain_times)
        );
        println!(
            "parse + plan as the worker does it (index, then {} chunks of {per_chunk} receipts): {:.2} s, {:.1} MB/s, {} verdicts (best of {rounds}: {} s)",
            c.chunks,
            c.plan_s,
            size / c.plan_s,
            c.counters.verdicts.total(),
            spell(&our_times)
        );
        println!(
            "  of which the indexing pass: {:.2} s; generating the chunks' targets and labels (not counted): {:.2} s; {} receipts indexed",
            c.index_s, c.state_s, c.receipts
        );
        println!(
            "  by phase: PlanBuilder::new {:.2} s; reading, parsing and add_line {:.2} s; finish {:.2} s; dropping the plans {:.2} s",
            c.new_s, c.lines_s, c.finish_s, c.drop_s
        );
        let (parse_s, parsed_results) = parse_only(&path, per_chunk);
        println!(
            "  the same reads and parsing without the plan: {parse_s:.2} s, {:.1} MB/s, {parsed_results} results",
            size / parse_s
        );
        println!(
            "RSS before: {} MB; peak RSS during index + chunked parse + plan (highest of the rounds): {} MB (target: at most 64 MB)",
            rss_before / 1024,
            peak / 1024
        );
        let (ours, theirs) = (size / c.plan_s, size / plain_s);
        println!(
            "RESULT parse_plan_mb_s={ours:.1} serde_json_value_mb_s={theirs:.1} ratio={:.2} peak_rss_mb={}",
            ours / theirs,
            peak / 1024
        );
        if env_usize("BENCH_WHOLE_PLAN", 0) > 0 {
            reset_peak_rss();
            let (whole_s, verdicts, inputs) = whole_parse_and_plan(&path);
            let peak = vm_hwm_kib();
            println!(
                "for comparison, one plan of the whole file: {whole_s:.2} s, {:.1} MB/s, ratio {:.2}, {verdicts} verdicts; RSS holding its targets and labels {} MB, peak {} MB",
                size / whole_s,
                whole_s / plain_s,
                inputs / 1024,
                peak / 1024
            );
        }
    }
    let receipts = env_usize("BENCH_APPLY_RECEIPTS", 1000);
    if receipts > 0 {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(apply_bench(
            u32::try_from(receipts).expect("a benchmark-sized count"),
            per_chunk,
        ));
    }
}

async fn apply_bench(receipts: u32, per_chunk: usize) {
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
    let mut services = fleet_shared::finish::Services::new(
        store.clone(),
        fleet_shared::openai::client::OpenAiClient::new(oc).unwrap(),
        fleet_shared::pinecone::client::PineconeClient::new(pc).unwrap(),
    );
    services.options.receipts_per_chunk = per_chunk;
    let t = Instant::now();
    let owner = "bench";
    let now_ms = chrono::Utc::now().timestamp_millis();
    store
        .acquire_lease(&b.summary.batch_id, owner, 3_600_000, now_ms)
        .await
        .unwrap();
    let summary = services.load_summary(&b.summary.batch_id).await.unwrap();
    let batch = services.check(&summary).await.unwrap();
    let report = services
        .apply(
            &summary,
            &batch,
            &tokio_util::sync::CancellationToken::new(),
            owner,
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
        "apply of a {receipts}-receipt batch ({} targets, {} verdicts, {} chunks) against moto: {:.2} s, {writes} writes",
        b.targets.len(),
        report.verdict_rows,
        report.chunks,
        apply_s
    );
    println!("apply phases (ms): {:?}", report.phase_ms);
    println!(
        "plain loop of {writes} single PutItem calls: {:.2} s",
        plain_s
    );
    println!("ratio (apply / plain loop): {:.2}", apply_s / plain_s);
}
