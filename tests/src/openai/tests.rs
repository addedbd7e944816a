//! In-process tests of the OpenAI emulator, through a real HTTP client.

use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode as Rs;
use serde_json::{Value, json};

use super::fixtures;
use super::*;

const KEY: &str = "sk-test";

struct Ctx {
    emu: OpenAiEmulator,
    http: reqwest::Client,
}

impl Ctx {
    async fn new() -> Self {
        Self {
            emu: OpenAiEmulator::start().await.expect("start"),
            http: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.emu.base_url()))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("send")
    }

    async fn post(&self, path: &str) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.emu.base_url()))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("send")
    }

    async fn batch(&self, id: &str) -> Value {
        let resp = self.get(&format!("/batches/{id}")).await;
        assert_eq!(resp.status(), Rs::OK);
        resp.json().await.expect("json")
    }

    async fn status(&self, id: &str) -> String {
        self.batch(id).await["status"]
            .as_str()
            .expect("status")
            .to_owned()
    }

    async fn admin_post(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.emu.url()))
            .body(body)
            .send()
            .await
            .expect("send")
    }
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn error_of(resp: reqwest::Response) -> Value {
    let v: Value = resp.json().await.expect("error json");
    let e = &v["error"];
    assert!(e["message"].is_string(), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("code").is_some(), "{v}");
    v
}

#[tokio::test]
async fn auth_is_required() {
    let ctx = Ctx::new().await;
    ctx.emu.add_batch(BatchSpec::new("batch_1", "file-in"));
    let url = format!("{}/batches/batch_1", ctx.emu.base_url());

    let resp = ctx.http.get(&url).send().await.expect("send");
    assert_eq!(resp.status(), Rs::UNAUTHORIZED);
    error_of(resp).await;
    let resp = ctx
        .http
        .get(&url)
        .bearer_auth("")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), Rs::UNAUTHORIZED);

    // Default: any non-empty key.
    let resp = ctx
        .http
        .get(&url)
        .bearer_auth("x")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), Rs::OK);

    ctx.emu.set_api_key(Some(KEY.to_owned()));
    let resp = ctx
        .http
        .get(&url)
        .bearer_auth("x")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), Rs::UNAUTHORIZED);
    let v = error_of(resp).await;
    assert_eq!(v["error"]["code"], json!("invalid_api_key"));
    assert_eq!(ctx.status("batch_1").await, "completed");

    // Unauthorised calls do not advance the script but are logged.
    assert_eq!(ctx.emu.batch_gets("batch_1"), 2);
    let statuses: Vec<u16> = ctx.emu.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![401, 401, 200, 401, 200]);
}

#[tokio::test]
async fn unknown_ids_and_urls_are_404() {
    let ctx = Ctx::new().await;
    for path in ["/batches/nope", "/files/nope/content", "/models"] {
        let resp = ctx.get(path).await;
        assert_eq!(resp.status(), Rs::NOT_FOUND, "{path}");
        let v = error_of(resp).await;
        assert_eq!(v["error"]["type"], json!("invalid_request_error"));
    }
    let resp = ctx.post("/batches/nope/cancel").await;
    assert_eq!(resp.status(), Rs::NOT_FOUND);
    error_of(resp).await;
}

#[tokio::test]
async fn script_steps_timestamps_and_file_ids() {
    let ctx = Ctx::new().await;
    let mut spec = BatchSpec::new("batch_1", "file-in")
        .with_steps([
            ("validating", 1),
            ("in_progress", 2),
            ("finalizing", 1),
            ("completed", 1),
        ])
        .with_output_file("file-out")
        .with_error_file("file-err")
        .with_request_counts(3, 2, 1);
    spec.created_at = 1_000;
    spec.completed_at = Some(5_000);
    ctx.emu.add_batch(spec);

    let b = ctx.batch("batch_1").await;
    assert_eq!(b["status"], json!("validating"));
    assert_eq!(b["object"], json!("batch"));
    assert_eq!(b["input_file_id"], json!("file-in"));
    assert_eq!(b["output_file_id"], Value::Null);
    assert_eq!(b["error_file_id"], Value::Null);
    assert_eq!(b["created_at"], json!(1_000));
    assert_eq!(b["expires_at"], json!(1_000 + 86_400));
    assert_eq!(b["in_progress_at"], Value::Null);
    assert_eq!(
        b["request_counts"],
        json!({"total": 3, "completed": 2, "failed": 1})
    );

    let b = ctx.batch("batch_1").await;
    assert_eq!(b["status"], json!("in_progress"));
    assert_eq!(b["in_progress_at"], json!(1_060));
    assert_eq!(ctx.status("batch_1").await, "in_progress");
    let b = ctx.batch("batch_1").await;
    assert_eq!(b["status"], json!("finalizing"));
    assert_eq!(b["finalizing_at"], json!(1_120));
    assert_eq!(b["output_file_id"], Value::Null);

    for _ in 0..3 {
        let b = ctx.batch("batch_1").await;
        assert_eq!(b["status"], json!("completed"), "last step sticks");
        assert_eq!(b["completed_at"], json!(5_000));
        assert_eq!(b["in_progress_at"], json!(1_060), "stable");
        assert_eq!(b["output_file_id"], json!("file-out"));
        assert_eq!(b["error_file_id"], json!("file-err"));
        assert_eq!(b["failed_at"], Value::Null);
        assert_eq!(b["errors"], Value::Null);
    }
    assert_eq!(
        ctx.emu.batch_status("batch_1").as_deref(),
        Some("completed")
    );
    assert_eq!(ctx.emu.batch_gets("batch_1"), 7);
}

#[tokio::test]
async fn zero_poll_steps_unknown_statuses_and_no_steps() {
    let ctx = Ctx::new().await;
    let mut spec = BatchSpec::new("batch_z", "f").with_steps([
        ("in_progress", 0),
        ("finalizing", 0),
        ("paused", 2),
        ("expired", 1),
    ]);
    spec.expired_at = Some(9_999);
    spec.expires_at = Some(9_000);
    spec.output_file_id = Some("partial".into());
    ctx.emu.add_batch(spec);
    let b = ctx.batch("batch_z").await;
    assert_eq!(b["status"], json!("paused"));
    assert!(
        b["in_progress_at"].is_i64(),
        "passed-through step is stamped"
    );
    assert!(b["finalizing_at"].is_i64());
    assert_eq!(b["output_file_id"], Value::Null);
    assert_eq!(ctx.status("batch_z").await, "paused");
    let b = ctx.batch("batch_z").await;
    assert_eq!(b["status"], json!("expired"));
    assert_eq!(b["expired_at"], json!(9_999));
    assert_eq!(b["expires_at"], json!(9_000));
    assert_eq!(b["output_file_id"], json!("partial"));

    ctx.emu.add_batch(BatchSpec::new("batch_done", "f"));
    let b = ctx.batch("batch_done").await;
    assert_eq!(b["status"], json!("completed"));
    assert!(b["completed_at"].is_i64());
}

#[tokio::test]
async fn failed_batch_reports_errors_when_failed() {
    let ctx = Ctx::new().await;
    let mut spec = BatchSpec::new("batch_f", "f").with_steps([("validating", 1), ("failed", 1)]);
    spec.failed_at = Some(1_700_000_100);
    spec.errors = vec![BatchErrorEntry {
        code: "invalid_json_line".into(),
        message: "line 3 is not JSON".into(),
        param: None,
        line: Some(3),
    }];
    ctx.emu.add_batch(spec);
    assert_eq!(ctx.batch("batch_f").await["errors"], Value::Null);
    let b = ctx.batch("batch_f").await;
    assert_eq!(b["status"], json!("failed"));
    assert_eq!(b["failed_at"], json!(1_700_000_100));
    assert_eq!(b["output_file_id"], Value::Null);
    assert_eq!(
        b["errors"],
        json!({"object": "list", "data": [
            {"code": "invalid_json_line", "message": "line 3 is not JSON", "param": null, "line": 3}
        ]})
    );
}

#[tokio::test]
async fn cancel_moves_to_cancelling_then_cancelled() {
    let ctx = Ctx::new().await;
    let mut spec = BatchSpec::new("batch_c", "f").with_steps([("in_progress", 100)]);
    spec.cancelled_at = Some(7_777);
    spec.output_file_id = Some("file-partial".into());
    ctx.emu.add_batch(spec);
    assert_eq!(ctx.status("batch_c").await, "in_progress");

    let resp = ctx.post("/batches/batch_c/cancel").await;
    assert_eq!(resp.status(), Rs::OK);
    let b: Value = resp.json().await.expect("json");
    assert_eq!(b["status"], json!("cancelling"));
    assert!(b["cancelling_at"].is_i64());
    assert_eq!(b["cancelled_at"], Value::Null);
    assert_eq!(b["output_file_id"], Value::Null);
    assert!(ctx.emu.was_cancelled("batch_c"));

    // A second cancel while cancelling is accepted unchanged.
    let resp = ctx.post("/batches/batch_c/cancel").await;
    assert_eq!(resp.status(), Rs::OK);

    let b = ctx.batch("batch_c").await;
    assert_eq!(b["status"], json!("cancelled"));
    assert_eq!(b["cancelled_at"], json!(7_777));
    assert_eq!(b["output_file_id"], json!("file-partial"));

    let resp = ctx.post("/batches/batch_c/cancel").await;
    assert_eq!(resp.status(), Rs::CONFLICT);
    let v = error_of(resp).await;
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("cancelled"))
    );

    // Completed batches cannot be cancelled.
    ctx.emu.add_batch(BatchSpec::new("batch_done", "f"));
    assert_eq!(ctx.status("batch_done").await, "completed");
    assert_eq!(
        ctx.post("/batches/batch_done/cancel").await.status(),
        Rs::CONFLICT
    );

    // cancelling_polls keeps it cancelling for that many GETs.
    let mut spec = BatchSpec::new("batch_slow", "f").with_steps([("validating", 5)]);
    spec.cancelling_polls = 2;
    ctx.emu.add_batch(spec);
    assert_eq!(
        ctx.post("/batches/batch_slow/cancel").await.status(),
        Rs::OK
    );
    assert_eq!(ctx.status("batch_slow").await, "cancelling");
    assert_eq!(ctx.status("batch_slow").await, "cancelling");
    assert_eq!(ctx.status("batch_slow").await, "cancelled");
}

#[tokio::test]
async fn file_content_is_exact() {
    let ctx = Ctx::new().await;
    let cid = fixtures::custom_id("img", 1);
    let content = fixtures::ndjson(&[
        fixtures::output_line_function_call(&cid, &[fixtures::result("x", true, None)]),
        String::new(),
        fixtures::failed_error_line(&cid, "request_timeout", "timed out"),
    ]);
    ctx.emu.add_file("file-out", content.clone());
    let resp = ctx.get("/files/file-out/content").await;
    assert_eq!(resp.status(), Rs::OK);
    assert_eq!(
        resp.content_length(),
        Some(u64::try_from(content.len()).expect("len"))
    );
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/octet-stream")
    );
    assert_eq!(resp.bytes().await.expect("body"), content.as_bytes());

    assert!(ctx.emu.remove_file("file-out"));
    assert_eq!(
        ctx.get("/files/file-out/content").await.status(),
        Rs::NOT_FOUND
    );
}

#[tokio::test]
async fn status_faults_429_with_and_without_explicit_retry_after_and_5xx() {
    let ctx = Ctx::new().await;
    ctx.emu.add_batch(BatchSpec::new("b", "f"));
    ctx.emu.fail_next(FaultSpec::rate_limited(Some(7)));
    ctx.emu.fail_next(FaultSpec::rate_limited(None));
    ctx.emu.fail_next(FaultSpec::status(500));
    ctx.emu.fail_next(FaultSpec::status(502));
    ctx.emu.fail_next(FaultSpec::status(503).times(2));

    let resp = ctx.get("/batches/b").await;
    assert_eq!(resp.status(), Rs::TOO_MANY_REQUESTS);
    assert_eq!(header(&resp, "retry-after").as_deref(), Some("7"));
    assert_eq!(header(&resp, "retry-after-ms").as_deref(), Some("7000"));
    let v = error_of(resp).await;
    assert_eq!(v["error"]["code"], json!("rate_limit_exceeded"));

    // Without one of its own, a 429 announces the emulator's retry wait (default 50 ms).
    let resp = ctx.get("/batches/b").await;
    assert_eq!(resp.status(), Rs::TOO_MANY_REQUESTS);
    assert_eq!(header(&resp, "retry-after").as_deref(), Some("1"));
    assert_eq!(header(&resp, "retry-after-ms").as_deref(), Some("50"));

    let resp = ctx.get("/batches/b").await;
    assert_eq!(resp.status(), Rs::INTERNAL_SERVER_ERROR);
    assert_eq!(error_of(resp).await["error"]["type"], json!("server_error"));

    let resp = ctx.get("/batches/b").await;
    assert_eq!(resp.status(), Rs::BAD_GATEWAY);
    assert!(resp.text().await.expect("text").contains("502 Bad Gateway"));

    ctx.emu.set_retry_wait(Duration::from_millis(2500));
    for _ in 0..2 {
        let resp = ctx.get("/batches/b").await;
        assert_eq!(resp.status(), Rs::SERVICE_UNAVAILABLE);
        assert_eq!(header(&resp, "retry-after").as_deref(), Some("3"));
        assert_eq!(header(&resp, "retry-after-ms").as_deref(), Some("2500"));
        error_of(resp).await;
    }
    assert_eq!(ctx.get("/batches/b").await.status(), Rs::OK);
    assert_eq!(ctx.emu.batch_gets("b"), 1, "faulted GETs do not advance");
    let faults: Vec<Option<String>> = ctx.emu.requests().into_iter().map(|r| r.fault).collect();
    assert_eq!(
        faults,
        vec![
            Some("status 429".into()),
            Some("status 429".into()),
            Some("status 500".into()),
            Some("status 502".into()),
            Some("status 503".into()),
            Some("status 503".into()),
            None
        ]
    );
}

#[tokio::test]
async fn faults_match_path_prefix_and_method_in_fifo_order() {
    let ctx = Ctx::new().await;
    ctx.emu
        .add_batch(BatchSpec::new("b", "f").with_steps([("in_progress", 9)]));
    ctx.emu.add_file("f", "data");
    ctx.emu
        .fail_next(FaultSpec::status(500).on_path("/v1/files/").times(2));
    ctx.emu.fail_next(
        FaultSpec::status(503)
            .on_path("/v1/batches/")
            .on_method("POST"),
    );
    ctx.emu
        .fail_next(FaultSpec::status(502).with_body("{\"custom\":1}"));

    // GET batch: skips the files fault and the POST-only one, takes the global 502.
    let resp = ctx.get("/batches/b").await;
    assert_eq!(resp.status(), Rs::BAD_GATEWAY);
    assert_eq!(resp.text().await.expect("text"), "{\"custom\":1}");
    assert_eq!(ctx.get("/batches/b").await.status(), Rs::OK);
    assert_eq!(
        ctx.post("/batches/b/cancel").await.status(),
        Rs::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        ctx.get("/files/f/content").await.status(),
        Rs::INTERNAL_SERVER_ERROR
    );
    assert_eq!(ctx.emu.pending_faults().len(), 1);
    assert_eq!(ctx.emu.pending_faults()[0].times, 1);
    assert_eq!(
        ctx.get("/files/f/content").await.status(),
        Rs::INTERNAL_SERVER_ERROR
    );
    assert_eq!(ctx.get("/files/f/content").await.status(), Rs::OK);
    assert!(ctx.emu.pending_faults().is_empty());

    ctx.emu.fail_next(FaultSpec::status(500));
    ctx.emu.clear_faults();
    assert_eq!(ctx.get("/batches/b").await.status(), Rs::OK);
}

fn big_file() -> String {
    let cid = fixtures::custom_id("img", 1);
    let line = fixtures::output_line_content(&cid, &[fixtures::result("x", true, None)]);
    fixtures::ndjson(&vec![line; 2_000])
}

#[tokio::test]
async fn truncated_download_is_an_error_for_the_client() {
    let ctx = Ctx::new().await;
    let content = big_file();
    let full = content.len();
    assert!(full > 100_000);
    ctx.emu.add_file("file-out", content.clone());

    // Whole-body read: an error.
    ctx.emu
        .fail_next(FaultSpec::truncate(1_000).on_path("/v1/files/"));
    let resp = ctx.get("/files/file-out/content").await;
    assert_eq!(resp.status(), Rs::OK);
    assert_eq!(resp.content_length(), Some(full as u64));
    assert!(resp.bytes().await.is_err(), "short body must be an error");

    // Streaming read: exactly the first K bytes arrive, then an error.
    ctx.emu.fail_next(FaultSpec::truncate(70_000));
    let resp = ctx.get("/files/file-out/content").await;
    assert_eq!(resp.content_length(), Some(full as u64));
    let mut stream = resp.bytes_stream();
    let mut got = Vec::new();
    let mut error = None;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => got.extend_from_slice(&c),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    assert!(error.is_some(), "stream must end with an error");
    assert_eq!(got.len(), 70_000);
    assert_eq!(&got[..], &content.as_bytes()[..70_000]);

    // after_bytes beyond the length is clamped: still short.
    ctx.emu.fail_next(FaultSpec::truncate(usize::MAX));
    assert!(
        ctx.get("/files/file-out/content")
            .await
            .bytes()
            .await
            .is_err()
    );

    // Truncating a batch object works too.
    ctx.emu.add_batch(BatchSpec::new("b", "f"));
    ctx.emu.fail_next(FaultSpec::truncate(10));
    assert!(ctx.get("/batches/b").await.json::<Value>().await.is_err());

    // And the next download is whole.
    let resp = ctx.get("/files/file-out/content").await;
    assert_eq!(resp.bytes().await.expect("whole"), content.as_bytes());
    let log = ctx.emu.requests();
    assert_eq!(
        log.iter()
            .filter(|r| r.fault.as_deref() == Some("truncate"))
            .count(),
        4
    );
    assert!(log.iter().all(|r| r.status == 200));
}

#[tokio::test]
async fn delay_outage_and_latency() {
    let ctx = Ctx::new().await;
    ctx.emu.add_batch(BatchSpec::new("b", "f"));
    ctx.emu.fail_next(FaultSpec::delay(300));
    let t = Instant::now();
    assert_eq!(ctx.get("/batches/b").await.status(), Rs::OK);
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(ctx.emu.requests()[0].duration_ms >= 300);

    // A client timeout shorter than the delay sees a timeout.
    ctx.emu.fail_next(FaultSpec::delay(2_000));
    let err = ctx
        .http
        .get(format!("{}/batches/b", ctx.emu.base_url()))
        .bearer_auth(KEY)
        .timeout(Duration::from_millis(200))
        .send()
        .await
        .expect_err("timeout");
    assert!(err.is_timeout());

    ctx.emu.set_outage(true);
    for path in ["/batches/b", "/files/x/content", "/nothing"] {
        let resp = ctx.get(path).await;
        assert_eq!(resp.status(), Rs::INTERNAL_SERVER_ERROR, "{path}");
        error_of(resp).await;
    }
    ctx.emu.set_outage(false);
    assert_eq!(ctx.get("/batches/b").await.status(), Rs::OK);

    ctx.emu.set_latency(Duration::from_millis(150));
    let t = Instant::now();
    assert_eq!(ctx.get("/batches/b").await.status(), Rs::OK);
    assert!(t.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn request_log_and_count() {
    let ctx = Ctx::new().await;
    ctx.emu.add_batch(BatchSpec::new("b", "f"));
    ctx.emu.add_file("f", "x");
    ctx.get("/batches/b").await;
    ctx.get("/batches/b").await;
    ctx.get("/files/f/content").await;
    ctx.post("/batches/b/cancel").await;
    ctx.get("/batches/zz?x=1").await;
    assert_eq!(ctx.emu.count("GET", "/v1/batches/"), 3);
    assert_eq!(ctx.emu.count("get", "/v1/files/"), 1);
    assert_eq!(ctx.emu.count("POST", "/v1/batches/b/cancel"), 1);
    let log = ctx.emu.requests();
    assert_eq!(log.len(), 5);
    assert_eq!(log[3].status, 409);
    assert_eq!(log[4].status, 404);
    assert_eq!(log[4].path, "/v1/batches/zz");
    assert_eq!(log[4].query.as_deref(), Some("x=1"));
    assert!(log.windows(2).all(|w| w[0].unix_ms <= w[1].unix_ms));
    assert!(log[0].unix_ms > 1_600_000_000_000);
    ctx.emu.clear_requests();
    assert!(ctx.emu.requests().is_empty());
}

#[tokio::test]
async fn admin_api_drives_the_emulator() {
    let ctx = Ctx::new().await;
    let spec = json!({
        "id": "batch_a",
        "input_file_id": "file-in",
        "output_file_id": "file-out",
        "created_at": 100,
        "completed_at": 200,
        "steps": [["in_progress", 1], ["completed", 1]],
        "request_counts": {"total": 1, "completed": 1, "failed": 0}
    });
    let resp = ctx.admin_post("/_admin/batches", spec.to_string()).await;
    assert_eq!(resp.status(), Rs::CREATED);
    let resp = ctx.admin_post("/_admin/batches", "{\"steps\": 3}").await;
    assert_eq!(resp.status(), Rs::BAD_REQUEST);
    let resp = ctx.admin_post("/_admin/batches", "{}").await;
    assert_eq!(resp.status(), Rs::BAD_REQUEST);
    let resp = ctx.admin_post("/_admin/files/file-out", "line1\n").await;
    assert_eq!(resp.status(), Rs::CREATED);

    assert_eq!(ctx.status("batch_a").await, "in_progress");
    let b = ctx.batch("batch_a").await;
    assert_eq!(b["completed_at"], json!(200));
    assert_eq!(b["output_file_id"], json!("file-out"));
    let body = ctx
        .get("/files/file-out/content")
        .await
        .text()
        .await
        .expect("text");
    assert_eq!(body, "line1\n");

    let peek: Value = ctx
        .http
        .get(format!("{}/_admin/batches/batch_a", ctx.emu.url()))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(peek["last_status"], json!("completed"));
    assert_eq!(peek["gets"], json!(2));
    assert_eq!(peek["spec"]["id"], json!("batch_a"));

    let fault = json!({"type": "status", "status": 429, "retry_after": 1, "times": 2});
    let resp = ctx.admin_post("/_admin/faults", fault.to_string()).await;
    assert_eq!(resp.status(), Rs::CREATED);
    assert_eq!(
        ctx.get("/batches/batch_a").await.status(),
        Rs::TOO_MANY_REQUESTS
    );
    assert_eq!(ctx.emu.pending_faults()[0].times, 1);

    let resp = ctx.admin_post("/_admin/outage", r#"{"on": true}"#).await;
    assert_eq!(resp.status(), Rs::NO_CONTENT);
    assert_eq!(
        ctx.get("/batches/batch_a").await.status(),
        Rs::INTERNAL_SERVER_ERROR
    );
    ctx.admin_post("/_admin/outage", r#"{"on": false}"#).await;
    assert_eq!(
        ctx.get("/batches/batch_a").await.status(),
        Rs::TOO_MANY_REQUESTS
    );
    assert_eq!(ctx.get("/batches/batch_a").await.status(), Rs::OK);

    let log: Vec<RequestRecord> = ctx
        .http
        .get(format!("{}/_admin/requests", ctx.emu.url()))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(log.len(), 7, "admin calls are not logged");
    assert_eq!(log[0].path, "/v1/batches/batch_a");
    assert_eq!(log[5].status, 429);
}

#[tokio::test]
async fn state_file_loads_batches_and_files() {
    let text = json!({
        "batches": [{"id": "batch_s", "input_file_id": "in", "steps": [["finalizing", 1], ["completed", 1]],
                     "output_file_id": "out"}],
        "files": {"in": "{\"custom_id\":\"a\"}\n", "out": "x\n"}
    })
    .to_string();
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("state.json");
    std::fs::write(&path, text).expect("write");
    let state = StateFile::load(&path).expect("load");
    assert_eq!(state.batches[0].steps[0], ("finalizing".to_owned(), 1));
    assert!(StateFile::load(&dir.path().join("missing.json")).is_err());

    let ctx = Ctx::new().await;
    ctx.emu.load_state(state);
    assert_eq!(ctx.status("batch_s").await, "finalizing");
    assert_eq!(ctx.status("batch_s").await, "completed");
    let body = ctx.get("/files/in/content").await.text().await.expect("t");
    assert_eq!(body, "{\"custom_id\":\"a\"}\n");
}

#[tokio::test]
async fn spec_json_round_trips_with_defaults() {
    let spec: BatchSpec = serde_json::from_value(json!({"id": "b"})).expect("parse");
    assert_eq!(spec, BatchSpec::new("b", ""));
    assert_eq!(spec.endpoint, "/v1/chat/completions");
    let full = BatchSpec::new("b", "in")
        .with_steps([("x", 1)])
        .with_output_file("o");
    let back: BatchSpec =
        serde_json::from_str(&serde_json::to_string(&full).expect("ser")).expect("de");
    assert_eq!(back, full);
}

#[tokio::test]
async fn shutdown_and_drop_stop_the_server() {
    let emu = OpenAiEmulator::start().await.expect("start");
    let addr = emu.addr();
    assert_ne!(addr.port(), 0);
    assert_eq!(emu.base_url(), format!("http://{addr}/v1"));
    emu.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());

    let emu = OpenAiEmulator::start().await.expect("start");
    let addr = emu.addr();
    drop(emu);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn every_answer_carries_a_request_id() {
    let ctx = Ctx::new().await;
    ctx.emu.add_batch(BatchSpec::new("b", "f"));
    ctx.emu.add_file("f", "x\n");
    ctx.emu.fail_next(FaultSpec::status(502));
    let mut ids = std::collections::BTreeSet::new();
    for path in [
        "/batches/b",
        "/batches/b",
        "/batches/nope",
        "/files/f/content",
        "/nowhere",
    ] {
        let resp = ctx.get(path).await;
        let id = header(&resp, "x-request-id").expect("x-request-id");
        assert!(id.starts_with("req_") && id.len() == 36, "{id}");
        ids.insert(id);
    }
    assert_eq!(ids.len(), 5, "one id per answer");
    let resp = ctx
        .http
        .get(format!("{}/v1/batches/b", ctx.emu.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), Rs::UNAUTHORIZED);
    assert!(header(&resp, "x-request-id").is_some());
    // The admin API is not the emulated API.
    let resp = ctx
        .http
        .get(format!("{}/_admin/requests", ctx.emu.url()))
        .send()
        .await
        .expect("send");
    assert!(header(&resp, "x-request-id").is_none());
}

#[tokio::test]
async fn the_batch_object_has_every_field_of_the_real_one() {
    let ctx = Ctx::new().await;
    ctx.emu
        .add_batch(BatchSpec::new("b", "f").with_output_file("o"));
    let v = ctx.batch("b").await;
    let keys: std::collections::BTreeSet<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    for field in [
        "id",
        "object",
        "endpoint",
        "errors",
        "input_file_id",
        "completion_window",
        "status",
        "output_file_id",
        "error_file_id",
        "created_at",
        "in_progress_at",
        "expires_at",
        "finalizing_at",
        "completed_at",
        "failed_at",
        "expired_at",
        "cancelling_at",
        "cancelled_at",
        "request_counts",
        "metadata",
        "model",
        "usage",
    ] {
        assert!(keys.contains(field), "missing {field}: {v}");
    }
    assert_eq!(v["model"], json!("gpt-4.1-mini"));
    assert_eq!(
        v["usage"],
        json!({"input_tokens": 0, "input_tokens_details": {"cached_tokens": 0},
               "output_tokens": 0, "output_tokens_details": {"reasoning_tokens": 0},
               "total_tokens": 0})
    );
    assert_eq!(v["errors"], Value::Null);

    let mut spec = BatchSpec::new("n", "f").with_steps([("in_progress", 1), ("failed", 1)]);
    spec.errors_data_null = true;
    spec.usage = Some(Usage {
        input_tokens: 7,
        output_tokens: 3,
    });
    spec.model = None;
    ctx.emu.add_batch(spec);
    let v = ctx.batch("n").await;
    assert_eq!(v["errors"], Value::Null, "not terminal yet");
    assert_eq!(v["usage"]["total_tokens"], json!(10));
    assert_eq!(v["model"], Value::Null);
    let v = ctx.batch("n").await;
    assert_eq!(v["status"], json!("failed"));
    assert_eq!(v["errors"], json!({"object": "list", "data": null}));
}

#[tokio::test]
async fn a_completed_batch_without_output_has_only_an_error_file() {
    let ctx = Ctx::new().await;
    ctx.emu
        .add_batch(BatchSpec::completed_without_output("b", "in", "err", 3));
    let v = ctx.batch("b").await;
    assert_eq!(v["status"], json!("completed"));
    assert_eq!(v["output_file_id"], Value::Null);
    assert_eq!(v["error_file_id"], json!("err"));
    assert_eq!(
        v["request_counts"],
        json!({"total": 3, "completed": 0, "failed": 3})
    );
}

#[tokio::test]
async fn key_rejection_windows_answer_401_then_accept_again() {
    let ctx = Ctx::new().await;
    ctx.emu.add_batch(BatchSpec::new("b", "f"));
    ctx.emu.reject_keys_for(Duration::from_millis(300));
    assert!(ctx.emu.keys_rejected());
    let resp = ctx.get("/batches/b").await;
    assert_eq!(resp.status(), Rs::UNAUTHORIZED);
    assert_eq!(
        error_of(resp).await["error"]["code"],
        json!("invalid_api_key")
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(!ctx.emu.keys_rejected());
    assert_eq!(ctx.get("/batches/b").await.status(), Rs::OK);

    // Until cleared, over the admin API too.
    let resp = ctx.admin_post("/_admin/reject_keys", "{}").await;
    assert_eq!(resp.status(), Rs::NO_CONTENT);
    assert_eq!(ctx.get("/batches/b").await.status(), Rs::UNAUTHORIZED);
    assert_eq!(ctx.get("/files/f/content").await.status(), Rs::UNAUTHORIZED);
    let resp = ctx
        .http
        .delete(format!("{}/_admin/reject_keys", ctx.emu.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), Rs::NO_CONTENT);
    assert_eq!(ctx.get("/batches/b").await.status(), Rs::OK);
    let resp = ctx
        .admin_post("/_admin/reject_keys", r#"{"seconds": 0.2}"#)
        .await;
    assert_eq!(resp.status(), Rs::NO_CONTENT);
    assert_eq!(ctx.get("/batches/b").await.status(), Rs::UNAUTHORIZED);
    let resp = ctx
        .admin_post("/_admin/reject_keys", r#"{"seconds": -1}"#)
        .await;
    assert_eq!(resp.status(), Rs::BAD_REQUEST);
    let resp = ctx
        .admin_post("/_admin/reject_keys", r#"{"seconds": "soon"}"#)
        .await;
    assert_eq!(resp.status(), Rs::BAD_REQUEST);
    ctx.emu.reject_keys();
    ctx.emu.accept_keys();
    assert_eq!(ctx.get("/batches/b").await.status(), Rs::OK);
}

#[tokio::test]
async fn exhausted_quota_answers_429_insufficient_quota() {
    let ctx = Ctx::new().await;
    ctx.emu.add_batch(BatchSpec::new("b", "f"));
    ctx.emu.set_quota_exhausted(true);
    let resp = ctx.get("/batches/b").await;
    assert_eq!(resp.status(), Rs::TOO_MANY_REQUESTS);
    assert!(header(&resp, "retry-after-ms").is_some());
    let v = error_of(resp).await;
    assert_eq!(v["error"]["code"], json!("insufficient_quota"));
    assert_eq!(v["error"]["type"], json!("insufficient_quota"));
    let resp = ctx
        .admin_post("/_admin/quota", r#"{"exhausted": false}"#)
        .await;
    assert_eq!(resp.status(), Rs::NO_CONTENT);
    assert_eq!(ctx.get("/batches/b").await.status(), Rs::OK);
    assert_eq!(
        ctx.admin_post("/_admin/quota", "{}").await.status(),
        Rs::BAD_REQUEST
    );

    // As a one-shot fault.
    ctx.emu.fail_next(insufficient_quota().times(2));
    for _ in 0..2 {
        let resp = ctx.get("/batches/b").await;
        assert_eq!(resp.status(), Rs::TOO_MANY_REQUESTS);
        assert_eq!(
            error_of(resp).await["error"]["code"],
            json!("insufficient_quota")
        );
    }
    assert_eq!(ctx.get("/batches/b").await.status(), Rs::OK);
    let resp = ctx
        .admin_post("/_admin/retry_wait", r#"{"ms": 1200}"#)
        .await;
    assert_eq!(resp.status(), Rs::NO_CONTENT);
    ctx.emu.fail_next(FaultSpec::rate_limited(None));
    let resp = ctx.get("/batches/b").await;
    assert_eq!(header(&resp, "retry-after-ms").as_deref(), Some("1200"));
    assert_eq!(header(&resp, "retry-after").as_deref(), Some("2"));
}
