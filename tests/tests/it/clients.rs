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

// ---------------------------------------------------------------------------------------------
// Errors of the deployment, pacing, progress, and the emulators' real-service behaviours

#[tokio::test]
async fn openai_key_rejection_window_is_paced_then_accepted_again() {
    let emu = OpenAiEmulator::start().await.expect("emulator");
    emu.add_batch(BatchSpec::new("batch_1", "file-in").with_steps([("in_progress", 1)]));
    let client = openai(&emu, None);
    emu.reject_keys_for(Duration::from_millis(2_600));

    let err = client.get_batch("batch_1").await.expect_err("rejected");
    assert_eq!(
        err.error_class(),
        ErrorClass::Deployment(DeploymentCause::OpenAiKey)
    );
    assert_eq!(emu.count("GET", "/v1/batches/"), 1, "never retried hot");
    assert!(client.is_paced());

    // Calls from every clone go out at most about twice a second while rejected.
    let started = Instant::now();
    let clone = client.clone();
    let calls = (0..4).map(|_| clone.get_batch("batch_1"));
    for out in futures::future::join_all(calls).await {
        assert!(out.is_err());
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1_400),
        "4 paced calls in {elapsed:?}"
    );
    assert_eq!(emu.count("GET", "/v1/batches/"), 5);

    // Once the window has passed, the next call succeeds and the pacing ends.
    while emu.keys_rejected() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b = client.get_batch("batch_1").await.expect("accepted again");
    assert_eq!(b.status, OpenAiStatus::InProgress);
    assert!(!client.is_paced());
    let started = Instant::now();
    let calls = (0..5).map(|_| client.get_batch("batch_1"));
    for out in futures::future::join_all(calls).await {
        out.expect("accepted");
    }
    assert!(started.elapsed() < Duration::from_millis(400), "no pacing");
}

#[tokio::test]
async fn openai_insufficient_quota_is_of_the_deployment_and_never_retried_hot() {
    let emu = OpenAiEmulator::start().await.expect("emulator");
    emu.add_batch(BatchSpec::new("batch_1", "file-in"));
    emu.set_quota_exhausted(true);
    let client = openai(&emu, None);

    let err = client.get_batch("batch_1").await.expect_err("quota");
    assert_eq!(err.status(), Some(429));
    assert_eq!(
        err.error_class(),
        ErrorClass::Deployment(DeploymentCause::OpenAiQuota)
    );
    assert_eq!(err.label(), "insufficient_quota");
    assert_eq!(err.reason(), "openai_insufficient_quota");
    assert_eq!(emu.count("GET", "/v1/batches/"), 1, "no retry loop");
    assert!(client.is_paced());

    // A plain rate limit is still retried, and its success ends the pacing.
    emu.set_quota_exhausted(false);
    emu.fail_next(FaultSpec::rate_limited(None));
    client.get_batch("batch_1").await.expect("retried");
    assert!(!client.is_paced());
    // The one-shot fault too.
    emu.fail_next(fleet_tests::openai::insufficient_quota());
    let err = client.get_batch("batch_1").await.expect_err("quota");
    assert!(matches!(
        err.error_class(),
        ErrorClass::Deployment(DeploymentCause::OpenAiQuota)
    ));
}

#[tokio::test]
async fn openai_retry_after_ms_is_preferred_to_retry_after() {
    let emu = OpenAiEmulator::start().await.expect("emulator");
    emu.add_batch(BatchSpec::new("batch_1", "file-in"));
    // Announced as `retry-after-ms: 300` and `Retry-After: 1`.
    emu.set_retry_wait(Duration::from_millis(300));
    emu.fail_next(FaultSpec::rate_limited(None).on_path("/v1/batches/"));
    let client = openai(&emu, None);

    let started = Instant::now();
    client.get_batch("batch_1").await.expect("retried");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "the backoff alone waits at most 50 ms: {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(900),
        "Retry-After (1 s) was not used: {waited:?}"
    );

    // And a 503 whose wait is too long to sleep inline returns it, in milliseconds.
    emu.set_retry_wait(Duration::from_millis(7_250));
    emu.fail_next(FaultSpec::status(503));
    let err = client.get_batch("batch_1").await.expect_err("too long");
    assert_eq!(err.retry_after(), Some(Duration::from_millis(7_250)));
}

#[tokio::test]
async fn openai_errors_keep_the_request_id() {
    let emu = OpenAiEmulator::start().await.expect("emulator");
    let client = openai(&emu, None);
    let err = client.get_batch("batch_unknown").await.expect_err("404");
    let id = err.request_id().expect("request id").to_owned();
    assert!(id.starts_with("req_"), "{id}");
    assert!(err.to_string().contains(&id), "{err}");
    let logged: Vec<_> = emu.requests();
    assert_eq!(logged.len(), 1);

    emu.fail_next(FaultSpec::status(200).with_body("not json"));
    emu.add_batch(BatchSpec::new("batch_1", "file-in"));
    let err = client.get_batch("batch_1").await.expect_err("undecodable");
    assert!(matches!(err, OpenAiError::Decode { .. }), "{err:?}");
    assert!(err.to_string().contains("[request req_"), "{err}");
}

#[tokio::test]
async fn openai_batches_with_null_error_data_or_without_output_decode() {
    let emu = OpenAiEmulator::start().await.expect("emulator");
    let mut spec = BatchSpec::new("batch_1", "file-in").with_steps([("failed", 1)]);
    spec.errors_data_null = true;
    emu.add_batch(spec);
    emu.add_batch(BatchSpec::completed_without_output(
        "batch_2", "file-in", "file-err", 4,
    ));
    let client = openai(&emu, None);

    let b = client.get_batch("batch_1").await.expect("errors.data null");
    assert_eq!(b.status, OpenAiStatus::Failed);
    assert_eq!(b.errors.map(|e| e.data.len()), Some(0));
    let b = client.get_batch("batch_2").await.expect("no output");
    assert_eq!(b.status, OpenAiStatus::Completed);
    assert_eq!(b.output_file_id, None);
    assert_eq!(b.error_file_id.as_deref(), Some("file-err"));
}

#[tokio::test]
async fn openai_403_on_a_file_is_transient_and_on_a_batch_of_the_deployment() {
    let emu = OpenAiEmulator::start().await.expect("emulator");
    emu.add_batch(BatchSpec::new("batch_1", "file-in"));
    emu.add_file("file-in", "x\n");
    let client = openai(&emu, None);

    emu.fail_next(FaultSpec::status(403).on_path("/v1/files/"));
    let err = client.download_file("file-in").await.expect_err("403");
    assert_eq!(err.error_class(), ErrorClass::Transient);
    assert_eq!(emu.count("GET", "/v1/files/"), 1, "not retried hot");
    assert!(!client.is_paced());

    emu.fail_next(FaultSpec::status(403).on_path("/v1/batches/"));
    let err = client.cancel_batch("batch_1").await.expect_err("403");
    assert_eq!(
        err.error_class(),
        ErrorClass::Deployment(DeploymentCause::OpenAiKey)
    );
}

#[tokio::test]
async fn successful_calls_and_long_downloads_are_progress() {
    let emu = OpenAiEmulator::start().await.expect("emulator");
    emu.add_batch(BatchSpec::new("batch_1", "file-in"));
    let content = ndjson(60_000); // ~3 MB
    emu.add_file("file-out", content.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let client = openai(&emu, Some(dir.path()));
    let progress = fleet_shared::progress::Progress::new();

    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = progress.scope(client.get_batch("batch_unknown")).await;
    assert!(
        progress.idle_for() >= Duration::from_millis(200),
        "a 404 is no progress"
    );
    progress
        .scope(client.get_batch("batch_1"))
        .await
        .expect("get");
    assert!(progress.idle_for() < Duration::from_millis(100));

    // A slow download (the emulator adds 300 ms before it) ticks as its MiBs arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    emu.set_latency(Duration::from_millis(300));
    let ticks = std::sync::Mutex::new(Vec::new());
    let watch = async {
        loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            ticks.lock().unwrap().push(progress.idle_for());
        }
    };
    let file = tokio::select! {
        f = progress.scope(client.download_file("file-out")) => f.expect("download"),
        () = watch => unreachable!(),
    };
    assert_eq!(file.len(), content.len() as u64);
    assert!(progress.idle_for() < Duration::from_millis(100));
    // Before the first byte, idle time grew past the latency.
    assert!(
        ticks
            .lock()
            .unwrap()
            .iter()
            .any(|d| *d >= Duration::from_millis(250)),
        "the wait for the answer is not progress"
    );
}

#[tokio::test]
async fn pinecone_key_rejection_window_is_of_the_deployment_and_paced() {
    let emu = PineconeEmulator::start().await.expect("emulator");
    let id = word_id(4, 1);
    emu.upsert(NS, &id, vec![0.0], Map::new());
    let client = pinecone(&emu);
    emu.reject_keys_for(Duration::from_millis(1_800));

    let err = client
        .fetch_metadata(std::slice::from_ref(&id))
        .await
        .expect_err("401");
    assert_eq!(
        err.error_class(),
        ErrorClass::Deployment(DeploymentCause::PineconeKey)
    );
    assert_eq!(err.reason(), "pinecone_unauthorized");
    assert!(client.is_paced());
    let started = Instant::now();
    for _ in 0..3 {
        let _ = client.fetch_metadata(std::slice::from_ref(&id)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(900), "paced");
    assert_eq!(emu.count("GET", "/vectors/fetch"), 4, "never retried hot");

    while emu.keys_rejected() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = client
        .apply_merges(vec![(id.clone(), MetadataChange::valid("DATE"))])
        .await
        .expect("accepted again");
    assert_eq!(report.updated, 1);
    assert!(!client.is_paced());
}

#[tokio::test]
async fn pinecone_fetch_rate_limit_is_retried_after_its_retry_after() {
    let emu = PineconeEmulator::start().await.expect("emulator");
    emu.set_fetch_rate_limit(Some(2));
    let ids: Vec<String> = (1..=100).map(|i| word_id(i, 7)).collect();
    for id in &ids {
        emu.upsert(NS, id, vec![0.0], Map::new());
    }
    let client = pinecone(&emu);
    let started = Instant::now();
    // 100 ids, 61 per fetch: 2 fetches fit the burst, then one more after Retry-After.
    let got = client.fetch_metadata(&ids).await.expect("fetch");
    assert_eq!(got.len(), 100);
    let got = client.fetch_metadata(&ids[..10]).await.expect("fetch");
    assert_eq!(got.len(), 10);
    assert!(started.elapsed() >= Duration::from_millis(900));
    let statuses: Vec<u16> = emu.requests().iter().map(|r| r.status).collect();
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&200));
}

#[tokio::test]
async fn pinecone_client_fetches_stay_under_the_url_limit_and_a_longer_url_is_permanent() {
    let emu = PineconeEmulator::start().await.expect("emulator");
    let ids: Vec<String> = (1..=500).map(|i| word_id(i, 3)).collect();
    for id in &ids {
        emu.upsert(NS, id, vec![0.0], Map::new());
    }
    // The default budget: every fetch URL stays under the emulator's 8 KB.
    let client = pinecone(&emu);
    assert_eq!(client.fetch_metadata(&ids).await.expect("fetch").len(), 500);
    assert!(emu.requests().iter().all(|r| r.status == 200));

    // A client configured past it gets a 414: permanent, not retried.
    let mut config = PineconeConfig::new(emu.base_url(), SecretString::from(PINECONE_KEY));
    config.fetch_max_query_bytes = 20_000;
    config.retry = quick_retry();
    let client = PineconeClient::new(config).expect("client");
    emu.clear_requests();
    let err = client.fetch_metadata(&ids).await.expect_err("414");
    assert_eq!(err.status(), Some(414));
    assert_eq!(err.error_class(), ErrorClass::Permanent);
    assert!(emu.requests().iter().all(|r| r.status == 414));
}

#[tokio::test]
async fn pinecone_eventual_consistency_is_visible_to_the_client() {
    let emu = PineconeEmulator::start().await.expect("emulator");
    let id = word_id(5, 1);
    emu.upsert(NS, &id, vec![0.0], meta(json!({"valid_labels": ["DATE"]})));
    emu.set_consistency_delay(Duration::from_millis(500));
    let client = pinecone(&emu);

    client
        .apply_merges(vec![(id.clone(), MetadataChange::valid("TIME"))])
        .await
        .expect("apply");
    // The write landed; a fetch right after does not see it.
    assert_eq!(
        emu.metadata(NS, &id).expect("v")["valid_labels"],
        json!(["DATE", "TIME"])
    );
    let seen = client
        .fetch_metadata(std::slice::from_ref(&id))
        .await
        .expect("fetch");
    assert_eq!(seen[&id]["valid_labels"], json!(["DATE"]));
    tokio::time::sleep(Duration::from_millis(550)).await;
    let seen = client
        .fetch_metadata(std::slice::from_ref(&id))
        .await
        .expect("fetch");
    assert_eq!(seen[&id]["valid_labels"], json!(["DATE", "TIME"]));
}

/// docs/spec/openai-batch.md: a `completed` batch whose requests all failed has no output file, only an
/// error file, and every target is reset. (The apply already does it; this pins it down
/// against the emulator's batch of that shape.)
#[tokio::test]
async fn a_completed_batch_without_output_resets_every_pending_target_and_counts_the_failures() {
    use fleet_shared::model::{BatchStatus, ValidationStatus};
    use fleet_tests::openai::fixtures::{failed_status_line, ndjson};
    use fleet_tests::scenario::{self, Shape};

    let f = crate::support::Fleet::new().await;
    let shape = Shape {
        receipts: 4,
        targets_per_receipt: 5,
        ..Shape::default()
    };
    let mut b = scenario::batch(&mut scenario::Rng::new(7), 0, &shape);
    let failed: Vec<String> = b
        .summary
        .receipt_refs
        .iter()
        .map(|r| failed_status_line(&r.custom_id(), 500))
        .collect();
    let mut spec = BatchSpec::completed_without_output(
        b.spec.id.clone(),
        b.spec.input_file_id.clone(),
        "file-all-failed",
        failed.len() as u64,
    );
    spec.created_at = b.spec.created_at;
    b.spec = spec;
    b.files.push(("file-all-failed".into(), ndjson(&failed)));
    f.seed(&b).await;
    let before = f.snapshot().await;

    let summary = f
        .services
        .load_summary(&b.summary.batch_id)
        .await
        .expect("summary");
    let batch = f.services.check(&summary).await.expect("check");
    assert_eq!(batch.output_file_id, None);
    // The apply records its progress only while it holds the batch's lease.
    let now_ms = chrono::Utc::now().timestamp_millis();
    f.services
        .store
        .acquire_lease(&summary.batch_id, "it-clients", 60_000, now_ms)
        .await
        .expect("lease");
    let report = f
        .services
        .apply(
            &summary,
            &batch,
            &tokio_util::sync::CancellationToken::new(),
            "it-clients",
        )
        .await
        .expect("apply");
    assert_eq!(report.summary_status, Some(BatchStatus::Completed));
    assert_eq!(report.plan.error_lines.failed, failed.len() as u64);
    assert_eq!(report.plan.output_lines.total, 0);

    let pending = b
        .labels
        .iter()
        .filter(|l| b.targets.contains(&l.key) && l.validation_status == ValidationStatus::Pending)
        .count() as u64;
    assert!(pending > 0);
    assert_eq!(report.plan.targets.resets, pending, "every pending target");
    assert_eq!(report.resets.applied, pending);
    let after = f.snapshot().await;
    for key in &b.targets {
        let item = &after.items[&(key.pk(), key.sk())];
        let seeded = b.labels.iter().find(|l| &l.key == key).expect("seeded");
        let expected = if seeded.validation_status == ValidationStatus::Pending {
            "NONE"
        } else {
            seeded.validation_status.as_str()
        };
        assert_eq!(item["validation_status"], json!({"S": expected}), "{key}");
    }
    assert_eq!(
        after.vectors, before.vectors,
        "no verdict, no vector change"
    );
}

#[tokio::test]
async fn pinecone_an_unknown_api_version_is_refused_and_errors_keep_the_request_id() {
    let emu = PineconeEmulator::start().await.expect("emulator");
    let id = word_id(6, 1);
    emu.upsert(NS, &id, vec![0.0], Map::new());
    let mut config = PineconeConfig::new(emu.base_url(), SecretString::from(PINECONE_KEY));
    config.api_version = "1999-01".into();
    config.retry = quick_retry();
    let client = PineconeClient::new(config).expect("client");
    let err = client
        .fetch_metadata(std::slice::from_ref(&id))
        .await
        .expect_err("unknown version");
    assert_eq!(err.status(), Some(400));
    assert_eq!(err.error_class(), ErrorClass::Permanent);
    assert!(err.to_string().contains("1999-01"), "{err}");
    let request_id = err.request_id().expect("x-request-id kept");
    assert!(err.to_string().contains(request_id), "{err}");
    assert_eq!(emu.count("GET", "/vectors/fetch"), 1, "not retried");
    // The pinned version is accepted.
    let got = pinecone(&emu)
        .fetch_metadata(std::slice::from_ref(&id))
        .await
        .expect("2025-10");
    assert_eq!(got.len(), 1);
}
