//! `contract-check`: runs the contract tests of the emulators (`tests/contract/check.py`)
//! against both emulators, started here in-process and seeded with the fixtures' batches,
//! files and vectors. The Python check starts nothing itself: it is given the emulators' URLs
//! (`--openai-url`, `--pinecone-url`) and drives them with the official SDKs.
//!
//! Usage: `contract-check [--python PATH] [--script PATH] [-- ARGS…]` (ARGS go to the check,
//! e.g. `--self-check`). Exits with the check's exit code; the emulators stop with this process.
//!
//! The seeded state (the names the check relies on):
//!
//! - batches `batch_scripted` (validating → in_progress → finalizing → completed, output
//!   `file-out`, error file `file-err`, metadata), `batch_failed` (errors), `batch_failed_null`
//!   (`errors.data: null`), `batch_no_output` (completed, only `file-err`), `batch_expired`
//!   (output `file-out`), `batch_cancel` (in progress; cancelled after one `cancelling` poll);
//! - files `file-out` (one line per answer shape, a failed status, a failed request),
//!   `file-err`, `file-in`;
//! - vectors `word-1`, `word-2` (metadata) and `word-3` (none) in namespace `words`.

// This target shares its package's dependency list; unused ones are caught on the library.
#![allow(unused_crate_dependencies)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use fleet_tests::common::init_tracing;
use fleet_tests::openai::fixtures::{
    AnswerShape, custom_id, failed_error_line, failed_status_line, input_line, ndjson, output_line,
    result, result_id, target,
};
use fleet_tests::openai::{BatchErrorEntry, BatchSpec, OpenAiEmulator};
use fleet_tests::pinecone::PineconeEmulator;
use serde_json::{Map, json};

#[derive(Debug, Parser)]
#[command(
    name = "contract-check",
    about = "Contract tests of the emulators against the official SDKs"
)]
struct Args {
    /// The Python with the pinned requirements (`tests/contract/requirements.txt`).
    #[arg(long, default_value = ".local/contract-venv/bin/python")]
    python: PathBuf,
    /// The check to run.
    #[arg(long, default_value = "tests/contract/check.py")]
    script: PathBuf,
    /// Passed to the check after the URLs.
    #[arg(last = true)]
    rest: Vec<String>,
}

const IMAGE: &str = "3f52804b-2fad-4e00-92c8-b593da3a8ed3";

fn seed_openai(emu: &OpenAiEmulator) {
    let targets_of = |receipt: u32| {
        vec![
            target(
                &result_id(IMAGE, receipt, 3, 1, "MERCHANT_NAME", "NONE"),
                "ACME",
                3,
                "MERCHANT_NAME",
            ),
            target(
                &result_id(IMAGE, receipt, 10, 2, "LINE_TOTAL", "NONE"),
                "12.99",
                10,
                "LINE_TOTAL",
            ),
        ]
    };
    let results_of = |receipt: u32| {
        vec![
            result(
                &result_id(IMAGE, receipt, 3, 1, "MERCHANT_NAME", "NONE"),
                true,
                None,
            ),
            result(
                &result_id(IMAGE, receipt, 10, 2, "LINE_TOTAL", "NONE"),
                false,
                Some("UNIT_PRICE"),
            ),
        ]
    };
    let shapes = [
        AnswerShape::FunctionCall,
        AnswerShape::Content,
        AnswerShape::ToolCalls,
    ];
    let mut out = Vec::new();
    let mut input = Vec::new();
    for (i, shape) in shapes.into_iter().enumerate() {
        let receipt = u32::try_from(i).unwrap_or(0) + 1;
        let id = custom_id(IMAGE, receipt);
        out.push(output_line(&id, &results_of(receipt), shape));
        input.push(input_line(&id, &targets_of(receipt), "ACME\n12.99"));
    }
    out.push(failed_status_line(&custom_id(IMAGE, 4), 500));
    let expired = failed_error_line(
        &custom_id(IMAGE, 5),
        "batch_expired",
        "This request could not be executed before the completion window expired.",
    );
    out.push(expired.clone());
    emu.add_file("file-out", ndjson(&out));
    emu.add_file(
        "file-err",
        ndjson(&[failed_status_line(&custom_id(IMAGE, 4), 500), expired]),
    );
    emu.add_file("file-in", ndjson(&input));

    let mut metadata = Map::new();
    metadata.insert("pipeline".into(), json!("labels"));
    let mut scripted = BatchSpec::new("batch_scripted", "file-in")
        .with_steps([
            ("validating", 1),
            ("in_progress", 1),
            ("finalizing", 1),
            ("completed", 1),
        ])
        .with_output_file("file-out")
        .with_error_file("file-err")
        .with_request_counts(5, 3, 2);
    scripted.metadata = Some(metadata);
    emu.add_batch(scripted);

    let mut failed = BatchSpec::new("batch_failed", "file-in").with_steps([("failed", 1)]);
    failed.errors = vec![BatchErrorEntry {
        code: "invalid_json".into(),
        message: "Line 3 is not valid JSON.".into(),
        param: None,
        line: Some(3),
    }];
    emu.add_batch(failed);
    let mut null_data = BatchSpec::new("batch_failed_null", "file-in").with_steps([("failed", 1)]);
    null_data.errors_data_null = true;
    emu.add_batch(null_data);
    emu.add_batch(BatchSpec::completed_without_output(
        "batch_no_output",
        "file-in",
        "file-err",
        5,
    ));
    emu.add_batch(
        BatchSpec::new("batch_expired", "file-in")
            .with_steps([("in_progress", 0), ("expired", 1)])
            .with_output_file("file-out")
            .with_error_file("file-err")
            .with_request_counts(5, 3, 2),
    );
    let mut cancel = BatchSpec::new("batch_cancel", "file-in").with_steps([("in_progress", 1)]);
    cancel.cancelling_polls = 1;
    emu.add_batch(cancel);
}

fn seed_pinecone(emu: &PineconeEmulator) {
    let meta = |v: serde_json::Value| match v {
        serde_json::Value::Object(m) => m,
        _ => Map::new(),
    };
    emu.upsert(
        "words",
        "word-1",
        vec![0.1, -0.25, 0.5],
        meta(json!({"text": "ACME", "valid_labels": ["MERCHANT_NAME"], "line_id": 3})),
    );
    emu.upsert(
        "words",
        "word-2",
        vec![0.75, 0.0, -1.0],
        meta(json!({"text": "12.99", "invalid_labels": ["LINE_TOTAL"],
                    "proposed_label": "UNIT_PRICE", "is_number": true})),
    );
    emu.upsert("words", "word-3", vec![0.0, 0.0, 1.0], Map::new());
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    init_tracing();
    let args = Args::parse();
    let openai = OpenAiEmulator::start().await?;
    let pinecone = PineconeEmulator::start().await?;
    seed_openai(&openai);
    seed_pinecone(&pinecone);

    let mut child = std::process::Command::new(&args.python)
        .arg(&args.script)
        .arg("--openai-url")
        .arg(openai.url())
        .arg("--pinecone-url")
        .arg(pinecone.base_url())
        .args(&args.rest)
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting {}: {e}", args.python.display()))?;
    // Polled, so that a signal to this process also stops the check (nothing is left running).
    let wait = async {
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok::<_, std::io::Error>(status);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    let status = tokio::select! {
        status = wait => Some(status?),
        () = fleet_tests::common::shutdown_signal() => None,
    };
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        anyhow::bail!("interrupted");
    };
    openai.shutdown().await;
    pinecone.shutdown().await;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}
