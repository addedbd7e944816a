//! The OpenAI and Pinecone clients of fleet-shared against the in-process emulators: retries,
//! classification of errors, truncated downloads, fetch chunking, merge-and-update.

use std::time::{Duration, Instant};

use fleet_shared::error_class::{DeploymentCause, ErrorClass};
use fleet_shared::http::CallError as _;
use fleet_shared::openai::{OpenAiClient, OpenAiConfig, OpenAiError, OpenAiStatus};
use fleet_shared::pinecone::{MetadataChange, PineconeClient, PineconeConfig, PineconeError};
use fleet_shared::retry::RetryPolicy;
use fleet_shared::secret::SecretString;
use fleet_tests::common::FaultSpec;
use fleet_tests::openai::{BatchSpec, OpenAiEmulator};
use fleet_tests::pinecone::PineconeEmulator;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

const OPENAI_KEY: &str = "sk-proj-TOPSECRET-0123456789-tail";
const PINECONE_KEY: &str = "pcsk_TOPSECRET_0123456789_tail";

/// Fast retries, so that tests measure behaviour rather than waiting.
fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        jitter: true,
        max_inline_retry_after: Duration::from_secs(5),
    }
}

fn openai(emulator: &OpenAiEmulator, download_dir: Option<&std::path::Path>) -> OpenAiClient {
    let mut config = OpenAiConfig::new(SecretString::from(OPENAI_KEY));
    config.base_url = emulator.base_url();
    config.retry = quick_retry();
    config.download_dir = download_dir.map(ToOwned::to_owned);
    OpenAiClient::new(config).expect("client")
}

fn assert_no_key(text: &str) {
    assert!(!text.contains("TOPSECRET"), "key leaked: {text}");
}

// ---------------------------------------------------------------------------------------------
// OpenAI

#[tokio::test]
async fn openai_get_and_cancel_batch() {
    let emu = OpenAiEmulator::start().await.expect("emulator");
    emu.add_batch(
        BatchSpec::new("batch_1", "file-in")
            .with_steps([("in_progress", 1), ("completed", 1)])
            .with_output_file("file-out"),
    );
    emu.add_batch(BatchSpec::new("batch_2", "file-in").with_steps([("in_progress", 1)]));
    let client = openai(&emu, None);

    let b = client.get_batch("batch_1").await.expect("get");
    assert_eq!(b.status, OpenAiStatus::InProgress);
    assert_eq!(b.output_file_id, None);
    let b = client.get_batch("batch_1").await.expect("get");
    assert_eq!(b.status, OpenAiStatus::Completed);
    assert_eq!(b.output_file_id.as_deref(), Some("file-out"));

    let b = client.cancel_batch("batch_2").await.expect("cancel");
    assert_eq!(b.status, OpenAiStatus::Cancelling);
    assert!(emu.was_cancelled("batch_2"));

    // Cancelling a finished batch is refused: permanent, not retried.
    let err = client.cancel_batch("batch_1").await.expect_err("terminal");
    assert_eq!(err.status(), Some(409));
    assert!(!err.is_transient());
    assert_eq!(emu.count("POST", "/v1/batches/batch_1/cancel"), 1);
}

#[tokio::test]
async fn openai_429_honours_retry_after() {
    let emu = OpenAiEmulator::start().await.expect("emulator");
    emu.add_batch(BatchSpec::new("batch_1", "file-in"));
    emu.fail_next(FaultSpec::rate_limited(Some(1)).on_path("/v1/batches/"));
    let client = openai(&emu, None);

    let started = Instant::now();
    let b = client.get_batch("batch_1").await.expect("retried");
    assert_eq!(b.status, OpenAiStatus::Completed);
    // The backoff alone would have waited at most 50 ms.
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let statuses: Vec<u16> = emu.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![429, 200]);
}

#[tokio::test]
async fn openai_long_retry_after_is_returned_not_slept() {
    let emu = OpenAiEmulator::start().await.expect("emulator");
    emu.add_batch(BatchSpec::new("batch_1", "file-in"));
    emu.fail_next(FaultSpec::rate_limited(Some(600)));
    let client = openai(&emu, None);

    let started = Instant::now();
    let err = client
        .get_batch("batch_1")
        .await
        .expect_err("too long to wait");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(err.is_transient());
    assert_eq!(err.status(), Some(429));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(600)));
    assert_eq!(err.label(), "rate_limited");
    assert_eq!(emu.count("GET", "/v1/batches/"), 1);
}

#[tokio::test]
async fn openai_5xx_retried_then_success() {
    let emu = OpenAiEmulator::start().await.expect("emulator");
    emu.add_batch(BatchSpec::new("batch_1", "file-in"));
    emu.fail_next(FaultSpec::status(500));
    // A load balancer's HTML page, not JSON: still a retryable 502.
    emu.fail_next(FaultSpec::status(502));
    let client = openai(&emu, None);

    let b = client.get_batch("batch_1").await.expect("retried");
    assert_eq!(b.id, "batch_1");
    let statuses: Vec<u16> = emu.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![500, 502, 200]);
}

#[tokio::test]
async fn openai_5xx_until_attempts_run_out_is_transient() {
    let emu = OpenAiEmulator::start().await.expect("emulator");
    emu.add_batch(BatchSpec::new("batch_1", "file-in"));
    emu.set_outage(true);
    let client = openai(&emu, None);

    let err = client.get_batch("batch_1").await.expect_err("outage");
    assert!(err.is_transient());
    assert_eq!(err.status(), Some(500));
    assert_eq!(emu.count("GET", "/v1/batches/"), 4, "max_attempts tries");
}

#[tokio::test]
async fn openai_404_is_permanent_and_not_retried() {
    let emu = OpenAiEmulator::start().await.expect("emulator");
    let client = openai(&emu, None);

    let err = client.get_batch("batch_unknown").await.expect_err("404");
    assert!(err.is_not_found());
    assert!(!err.is_transient());
    assert_eq!(err.label(), "not_found");
    assert!(err.to_string().contains("No batch found"), "{err}");
    assert!(
        matches!(&err, OpenAiError::Api { detail, .. } if detail.error_type.as_deref() == Some("invalid_request_error"))
    );
    assert_eq!(emu.count("GET", "/v1/batches/"), 1);
}

#[tokio::test]
async fn openai_key_never_in_errors_or_debug() {
    let emu = OpenAiEmulator::start().await.expect("emulator");
    emu.add_batch(BatchSpec::new("batch_1", "file-in"));
    emu.set_api_key(Some("sk-the-right-one".into()));
    let client = openai(&emu, None);
    assert_no_key(&format!("{client:?}"));

    let err = client.get_batch("batch_1").await.expect_err("wrong key");
    assert_eq!(err.status(), Some(401));
    assert_eq!(
        err.error_class(),
        ErrorClass::Deployment(DeploymentCause::OpenAiKey)
    );
    assert_eq!(err.label(), "unauthorized");
    assert_no_key(&format!("{err} {err:?}"));

    // A proxy that echoes the header back: scrubbed.
    emu.set_api_key(None);
    emu.fail_next(FaultSpec::status(400).with_body(format!(
        r#"{{"error":{{"message":"bad header Bearer {OPENAI_KEY}"}}}}"#
    )));
    let err = client.get_batch("batch_1").await.expect_err("400");
    assert_no_key(&format!("{err} {err:?}"));
    assert!(err.to_string().contains("[REDACTED]"), "{err}");

    // Transport errors too.
    drop(client);
    let addr = emu.base_url();
    emu.shutdown().await;
    let mut config = OpenAiConfig::new(SecretString::from(OPENAI_KEY));
    config.base_url = addr;
    config.retry = RetryPolicy::none();
    let client = OpenAiClient::new(config).expect("client");
    let err = client
        .get_batch("batch_1")
        .await
        .expect_err("nothing listens");
    assert!(err.is_transient());
    assert_no_key(&format!("{err} {err:?}"));
}

/// The emulator does not record headers: a one-shot raw server captures the request head.
#[tokio::test]
async fn openai_sends_auth_organization_and_project_headers() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let body = r#"{"id":"batch_1","status":"validating"}"#;
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(reply.as_bytes()).await.expect("write");
        String::from_utf8_lossy(&head).to_lowercase()
    });

    let mut config = OpenAiConfig::new(SecretString::from(OPENAI_KEY));
    config.base_url = format!("http://{addr}/v1");
    config.organization = Some("org-abc".into());
    config.project = Some("proj_xyz".into());
    let client = OpenAiClient::new(config).expect("client");
    let b = client.get_batch("batch_1").await.expect("get");
    assert_eq!(b.status, OpenAiStatus::Validating);

    let head = server.await.expect("server");
    assert!(
        head.starts_with("get /v1/batches/batch_1 http/1.1"),
        "{head}"
    );
    assert!(
        head.contains(&format!(
            "authorization: bearer {}",
            OPENAI_KEY.to_lowercase()
        )),
        "{head}"
    );
    assert!(head.contains("openai-organization: org-abc"), "{head}");
    assert!(head.contains("openai-project: proj_xyz"), "{head}");
}

fn ndjson(lines: usize) -> String {
    (0..lines)
        .map(|i| format!(r#"{{"id":"batch_req_{i}","custom_id":"c{i}","response":null}}"#))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[tokio::test]
async fn openai_download_streams_to_disk_and_retries_truncation() {
    let emu = OpenAiEmulator::start().await.expect("emulator");
    let content = ndjson(20_000); // ~1 MB
    emu.add_file("file-out", content.clone());
    emu.fail_next(FaultSpec::truncate(100_000).on_path("/v1/files/").times(2));
    let dir = tempfile::tempdir().expect("tempdir");
    let client = openai(&emu, Some(dir.path()));

    let file = client.download_file("file-out").await.expect("download");
    assert_eq!(file.len(), content.len() as u64);
    assert_eq!(file.file_id(), "file-out");
    assert!(file.path().starts_with(dir.path()));
    let on_disk = tokio::fs::read(file.path()).await.expect("read");
    assert_eq!(on_disk, content.as_bytes());
    let faults: Vec<Option<String>> = emu.requests().iter().map(|r| r.fault.clone()).collect();
    assert_eq!(
        faults,
        vec![
            Some("truncate".to_owned()),
            Some("truncate".to_owned()),
            None
        ]
    );
    // Only the complete file is left: partial ones were deleted.
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);

    // Readable as lines, more than once.
    for _ in 0..2 {
        let mut lines = file.open().await.expect("open").lines();
        let mut n = 0;
        while let Some(line) = lines.next_line().await.expect("line") {
            assert!(line.starts_with(r#"{"id":"batch_req_"#));
            n += 1;
        }
        assert_eq!(n, 20_000);
    }

    let path = file.path().to_owned();
    drop(file);
    assert!(!path.exists(), "dropping the download deletes it");
}

#[tokio::test]
async fn openai_download_truncated_every_time_is_transient() {
    let emu = OpenAiEmulator::start().await.expect("emulator");
    emu.add_file("file-out", ndjson(1_000));
    emu.fail_next(FaultSpec::truncate(10).on_path("/v1/files/").times(10));
    let dir = tempfile::tempdir().expect("tempdir");
    let client = openai(&emu, Some(dir.path()));

    let err = client
        .download_file("file-out")
        .await
        .expect_err("always cut");
    assert!(err.is_transient());
    assert_eq!(err.label(), "truncated");
    match &err {
        OpenAiError::TruncatedDownload {
            attempts,
            expected,
            received,
            ..
        } => {
            assert_eq!(*attempts, 4);
            assert!(expected.is_some_and(|e| e > *received), "{err}");
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(emu.count("GET", "/v1/files/"), 4);
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
}

#[tokio::test]
async fn openai_download_of_unknown_file_is_permanent() {
    let emu = OpenAiEmulator::start().await.expect("emulator");
    let client = openai(&emu, None);
    let err = client.download_file("file-gone").await.expect_err("404");
    assert!(err.is_not_found());
    assert!(!err.is_transient());
    assert_eq!(emu.count("GET", "/v1/files/"), 1);
}

// ---------------------------------------------------------------------------------------------
// Pinecone

const NS: &str = "words";

fn pinecone(emu: &PineconeEmulator) -> PineconeClient {
    let mut config = PineconeConfig::new(emu.base_url(), SecretString::from(PINECONE_KEY));
    config.retry = quick_retry();
    PineconeClient::new(config).expect("client")
}

fn word_id(line: usize, word: usize) -> String {
    format!(
        "IMAGE#3f52804b-2fad-4e00-92c8-b593da3a8ed3#RECEIPT#00001#LINE#{line:05}#WORD#{word:05}"
    )
}

fn meta(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("object expected, got {other}"),
    }
}

fn ids_in_query(query: &str) -> usize {
    query.split('&').filter(|p| p.starts_with("ids=")).count()
}

#[tokio::test]
async fn pinecone_fetch_is_chunked_and_skips_absent_ids() {
    let emu = PineconeEmulator::start().await.expect("emulator");
    let present: Vec<String> = (1..=150).map(|i| word_id(i, 1)).collect();
    for (i, id) in present.iter().enumerate() {
        emu.upsert(NS, id, vec![0.0], meta(json!({"text": format!("w{i}")})));
    }
    let mut asked = present.clone();
    asked.extend((1..=10).map(|i| word_id(i, 99)));
    asked.push(present[0].clone()); // duplicates are fetched once
    let client = pinecone(&emu);

    let got = client.fetch_metadata(&asked).await.expect("fetch");
    assert_eq!(got.len(), 150);
    assert_eq!(got[&present[3]]["text"], json!("w3"));
    assert!(!got.contains_key(&word_id(1, 99)));

    let fetches: Vec<_> = emu
        .requests()
        .into_iter()
        .filter(|r| r.path == "/vectors/fetch")
        .collect();
    // 160 distinct ids, 61 per call under the default 6,000-byte query budget.
    assert_eq!(fetches.len(), 3);
    let per_call: Vec<usize> = fetches
        .iter()
        .map(|r| ids_in_query(r.query.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(per_call.iter().sum::<usize>(), 160);
    assert!(per_call.iter().all(|n| *n <= 61), "{per_call:?}");
    for r in &fetches {
        let q = r.query.as_deref().unwrap_or("");
        assert!(q.contains("IMAGE%233f52804b"), "`#` percent-encoded: {q}");
        assert!(
            q.len() <= 6_000 + "namespace=words".len() + 1,
            "{}",
            q.len()
        );
        assert!(q.contains("namespace=words"));
        assert_eq!(r.api_version.as_deref(), Some("2025-10"));
    }
}

#[tokio::test]
async fn pinecone_fetch_retries_server_errors() {
    let emu = PineconeEmulator::start().await.expect("emulator");
    emu.upsert(NS, &word_id(1, 1), vec![0.0], Map::new());
    emu.fail_next(FaultSpec::status(503).on_path("/vectors/fetch").times(2));
    let client = pinecone(&emu);
    let got = client
        .fetch_metadata(&[word_id(1, 1)])
        .await
        .expect("fetch");
    assert_eq!(got.len(), 1);
    assert!(got[&word_id(1, 1)].is_empty(), "no metadata = empty map");
    assert_eq!(emu.count("GET", "/vectors/fetch"), 3);
}

#[tokio::test]
async fn pinecone_updates_only_changed_vectors_and_counts_missing() {
    let emu = PineconeEmulator::start().await.expect("emulator");
    let (a, b, c, d) = (word_id(1, 1), word_id(1, 2), word_id(1, 3), word_id(1, 4));
    emu.upsert(
        NS,
        &a,
        vec![0.0],
        meta(json!({"text": "12.99", "valid_labels": ["LINE_TOTAL"]})),
    );
    emu.upsert(
        NS,
        &b,
        vec![0.0],
        meta(json!({"text": "TAX", "valid_labels": "DATE"})),
    );
    emu.upsert(NS, &d, vec![0.0], Map::new());
    let client = pinecone(&emu);

    let changes = vec![
        // Already there: no write.
        (a.clone(), MetadataChange::valid("LINE_TOTAL")),
        (
            b.clone(),
            MetadataChange::invalid("TAX", Some("SUBTOTAL".into())),
        ),
        // Absent from the index: counted, not written.
        (c.clone(), MetadataChange::valid("DATE")),
        // Two changes for one vector are folded into one update.
        (d.clone(), MetadataChange::valid("TIME")),
        (d.clone(), MetadataChange::valid("DATE")),
    ];
    let report = client.apply_merges(changes.clone()).await.expect("apply");
    assert_eq!(report.updated, 2);
    assert_eq!(report.unchanged, 1);
    assert_eq!(report.missing, 1);
    assert_eq!(report.missing_ids, vec![c.clone()]);
    assert_eq!(report.rate_limited, 0);

    let mut updates = emu.updates();
    updates.sort_by(|x, y| x.id.cmp(&y.id));
    assert_eq!(updates.len(), 2);
    assert_eq!(updates[0].id, b);
    assert_eq!(
        Value::Object(updates[0].set_metadata.clone().expect("set")),
        json!({"invalid_labels": ["TAX"], "proposed_label": "SUBTOTAL"})
    );
    assert_eq!(updates[1].id, d);
    assert_eq!(
        Value::Object(updates[1].set_metadata.clone().expect("set")),
        json!({"valid_labels": ["DATE", "TIME"]})
    );
    assert!(updates.iter().all(|u| u.existed && u.namespace == NS));
    assert_eq!(
        Value::Object(emu.metadata(NS, &b).expect("b")),
        json!({"text": "TAX", "valid_labels": "DATE", "invalid_labels": ["TAX"],
               "proposed_label": "SUBTOTAL"})
    );

    // A re-run writes nothing.
    let again = client.apply_merges(changes).await.expect("re-run");
    assert_eq!((again.updated, again.unchanged, again.missing), (0, 3, 1));
    assert_eq!(emu.update_count(), 2);
}

#[tokio::test]
async fn pinecone_429_on_update_is_retried() {
    let emu = PineconeEmulator::start().await.expect("emulator");
    let id = word_id(2, 1);
    emu.upsert(NS, &id, vec![0.0], Map::new());
    emu.fail_next(
        FaultSpec::rate_limited(None)
            .on_path("/vectors/update")
            .times(2),
    );
    emu.fail_next(FaultSpec::rate_limited(Some(1)).on_path("/vectors/update"));
    let client = pinecone(&emu);

    let started = Instant::now();
    let report = client
        .apply_merges(vec![(id.clone(), MetadataChange::valid("DATE"))])
        .await
        .expect("apply");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    assert_eq!(report.updated, 1);
    assert_eq!(report.rate_limited, 3);
    assert_eq!(emu.count("POST", "/vectors/update"), 4);
    assert_eq!(
        Value::Object(emu.metadata(NS, &id).expect("v")),
        json!({"valid_labels": ["DATE"]})
    );
}

#[tokio::test]
async fn pinecone_pacing_stays_under_the_server_limit() {
    let emu = PineconeEmulator::start().await.expect("emulator");
    emu.set_rate_limit(Some(200));
    let ids: Vec<String> = (1..=250).map(|i| word_id(i, 1)).collect();
    for id in &ids {
        emu.upsert(NS, id, vec![0.0], Map::new());
    }
    let mut config = PineconeConfig::new(emu.base_url(), SecretString::from(PINECONE_KEY));
    config.updates_per_second = 180.0;
    config.retry = quick_retry();
    let client = PineconeClient::new(config).expect("client");

    let started = Instant::now();
    let report = client
        .apply_merges(
            ids.iter()
                .map(|id| (id.clone(), MetadataChange::valid("DATE")))
                .collect(),
        )
        .await
        .expect("apply");
    assert_eq!(report.updated, 250);
    assert_eq!(report.rate_limited, 0, "paced below the limit");
    // 18 free, then 232 at 180/s.
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn pinecone_permanent_errors_and_key_redaction() {
    let emu = PineconeEmulator::start().await.expect("emulator");
    let id = word_id(3, 1);
    emu.upsert(NS, &id, vec![0.0], Map::new());
    let client = pinecone(&emu);
    assert_no_key(&format!("{client:?}"));

    emu.fail_next(FaultSpec::status(400).on_path("/vectors/update"));
    let err = client
        .apply_merges(vec![(id.clone(), MetadataChange::valid("DATE"))])
        .await
        .expect_err("400");
    assert!(!err.is_transient());
    assert_eq!(err.status(), Some(400));
    assert_eq!(emu.count("POST", "/vectors/update"), 1);

    emu.set_api_key(Some("pcsk_right".into()));
    let err: PineconeError = client.fetch_metadata(&[id]).await.expect_err("401");
    assert_eq!(err.status(), Some(401));
    assert_eq!(
        err.error_class(),
        ErrorClass::Deployment(DeploymentCause::PineconeKey)
    );
    assert!(err.to_string().contains("Invalid API Key"), "{err}");
    assert_no_key(&format!("{err} {err:?}"));
}
