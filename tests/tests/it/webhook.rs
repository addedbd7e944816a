//! `producer webhook-server` against moto and the emulators: a signed `batch.completed` gets a
//! waiting batch applied within seconds (real producer and worker binaries, the OpenAI
//! emulator sending the webhook); bad deliveries get 400 and enqueue nothing; other types,
//! unknown, finished or dead-lettered batches and repeats get 2xx and enqueue nothing; the
//! pending listing is refreshed for a batch it did not know; bad configuration exits 64; the
//! secret never shows in any output; SIGTERM exits 0. Also the emulator's own webhooks:
//! signed like OpenAI (checked with the receiver's verifier), sent once per batch, retried.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use fleet_shared::message::BatchMessage;
use fleet_shared::model::{BatchStatus, BatchSummary, BatchType};
use fleet_tests::openai::webhook::{WebhookConfig, WebhookSigner, event_body, new_secret};
use fleet_tests::openai::{BatchSpec, OpenAiEmulator};
use fleet_tests::scenario::ScenarioBatch;
use producer::webhook::signature::{SignedHeaders, SigningKey, verify};
use producer::webhook::{Receiver, ReceiverOptions};
use producer::{EnqueueSettings, Services, WebhookSettings};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::support::process::{self, Process};
use crate::support::{
    Fleet, SECRET, TestEnv, batch_now, eventually, get as get_text, small_shape, summary,
};

fn now() -> i64 {
    Utc::now().timestamp()
}

// ---------------------------------------------------------------------------------------------
// The binaries.

/// `producer webhook-server` on a free port of this machine.
async fn webhook_server(env: &TestEnv, secret: &str) -> Process {
    let mut vars = env.process_vars();
    vars.push(("OPENAI_WEBHOOK_SECRET".into(), secret.to_owned()));
    vars.push(("WEBHOOK_ADDR".into(), "127.0.0.1:0".into()));
    Process::spawn("producer", &["webhook-server"], vars).await
}

/// Asserts that neither the secret nor its key appear in `text`.
fn assert_secret_absent(secret: &str, text: &str) {
    let key = secret.trim_start_matches("whsec_");
    assert!(
        !text.contains(secret) && !text.contains(key),
        "the webhook secret appears in the output:\n{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// Deliveries.

async fn post(
    url: &str,
    headers: &[(&str, String)],
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(url).body(body);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.expect("POST");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

type Headers = Vec<(&'static str, String)>;

/// A body signed for delivery `webhook_id` at `timestamp`.
fn signed(
    signer: &WebhookSigner,
    webhook_id: &str,
    timestamp: i64,
    body: &str,
) -> Vec<(&'static str, String)> {
    let mut headers: Vec<_> = signer
        .headers(webhook_id, timestamp, body.as_bytes())
        .into_iter()
        .collect();
    headers.push(("content-type", "application/json".into()));
    headers
}

fn batch_event(event_type: &str, openai_batch_id: &str) -> String {
    let event_id = format!("evt_{}", uuid::Uuid::new_v4().simple());
    event_body(&event_id, event_type, openai_batch_id, now())
}

/// `fleet_webhooks_total{type=…,outcome=…}` values of a `/metrics` page, by `(type, outcome)`.
fn webhook_counts(page: &str) -> HashMap<(String, String), f64> {
    let mut counts = HashMap::new();
    for line in page
        .lines()
        .filter(|l| l.starts_with("fleet_webhooks_total{"))
    {
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let label = |name: &str| {
            let start = series.find(&format!("{name}=\"")).expect("label") + name.len() + 2;
            series[start..]
                .split('"')
                .next()
                .unwrap_or_default()
                .to_owned()
        };
        counts.insert(
            (label("type"), label("outcome")),
            value.parse().expect("number"),
        );
    }
    counts
}

/// Every message body of the work queue (received and left invisible).
async fn bodies(env: &TestEnv) -> Vec<BatchMessage> {
    env.drain_work()
        .await
        .iter()
        .map(|m| BatchMessage::parse(m.body().unwrap_or_default()).expect("valid body"))
        .collect()
}

async fn put(env: &TestEnv, s: &BatchSummary) {
    env.store.put_raw(s.to_item()).await.expect("put summary");
}

// ---------------------------------------------------------------------------------------------
// A webhook gets a waiting batch applied within seconds (real binaries, moto, emulators).

/// A batch running at the first check and completed from the next one on.
fn running_then_completed(seed: u64) -> ScenarioBatch {
    let mut b = batch_now(seed, small_shape());
    b.spec.steps = vec![("in_progress".to_owned(), 1), ("completed".to_owned(), 1)];
    b
}

/// The worker's environment for `f`, whose next check of a running batch is at least ten
/// minutes away.
fn worker_env(f: &Fleet) -> HashMap<String, String> {
    f.worker_vars(&[
        ("MAX_IN_FLIGHT", "4"),
        ("VISIBILITY_TIMEOUT_SECONDS", "30"),
        ("HEARTBEAT_SECONDS", "5"),
        ("RECHECK_MIN_SECONDS", "600"),
        ("RECHECK_MAX_SECONDS", "900"),
    ])
}

// The emulators live in this test's runtime: it needs threads to serve them while the test
// waits on the processes.
#[tokio::test(flavor = "multi_thread")]
async fn a_signed_batch_completed_gets_a_waiting_batch_applied_within_seconds() {
    let b = running_then_completed(91);
    let (batch_id, openai_id) = (b.summary.batch_id.clone(), b.spec.id.clone());
    let f = Fleet::seeded(&b).await;
    let (env, openai) = (&f.env, &f.openai);

    let secret = new_secret();
    let server = webhook_server(env, &secret).await;
    openai
        .set_webhook(Some(WebhookConfig {
            url: server.url("/openai/webhook"),
            secret: secret.clone(),
            end_after: None,
        }))
        .expect("webhooks on");
    let services = Services::new(&env.clients, &env.table);
    let tick = producer::enqueue(
        &EnqueueSettings::new(&env.queues.work_url),
        &services,
        Utc::now(),
    )
    .await
    .expect("tick");
    assert_eq!(tick.enqueued, 1);
    let worker = Process::spawn("worker", &[], worker_env(&f)).await;

    // The first check finds it running and schedules the next one ten minutes or more away.
    eventually(
        "the first check to schedule a delayed one",
        Duration::from_secs(60),
        || {
            let id = openai_id.clone();
            async move { openai.batch_gets(&id) == 1 && env.work_depth().await.delayed == 1 }
        },
    )
    .await;
    assert_eq!(
        env.store
            .batch_summary(&batch_id)
            .await
            .unwrap()
            .unwrap()
            .status,
        BatchStatus::Pending
    );

    // OpenAI finishes the batch and sends batch.completed.
    let ended = Instant::now();
    assert_eq!(openai.end_batch(&openai_id).as_deref(), Some("completed"));
    eventually("the batch to be applied", Duration::from_secs(30), || {
        let (env, id) = (env, batch_id.clone());
        async move {
            env.store.batch_summary(&id).await.unwrap().unwrap().status == BatchStatus::Completed
        }
    })
    .await;
    let took = ended.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "applied {took:?} after the webhook"
    );
    println!("webhook to applied batch: {took:?}");

    let deliveries = openai.webhook_deliveries();
    assert_eq!(deliveries.len(), 1, "{deliveries:?}");
    assert_eq!(deliveries[0].event_type, "batch.completed");
    assert_eq!(deliveries[0].status, Some(200), "{deliveries:?}");
    assert_eq!(
        openai.batch_gets(&openai_id),
        2,
        "one check before, one after the webhook"
    );
    let (status, page) = get_text(&server.url("/metrics")).await;
    assert_eq!(status, 200);
    let counts = webhook_counts(&page);
    assert_eq!(
        counts.get(&("batch.completed".into(), "enqueued".into())),
        Some(&1.0),
        "{page}"
    );
    let handling = page
        .lines()
        .find(|l| l.starts_with("fleet_webhook_handling_seconds_sum"))
        .unwrap_or_default()
        .to_owned();
    println!("webhook server: {handling}");
    assert_eq!(get_text(&server.url("/healthz")).await.0, 200);

    let server_output = server.stop(Duration::from_secs(10)).await;
    let worker_output = worker.stop(Duration::from_secs(20)).await;
    assert_secret_absent(&secret, &server_output);
    assert_secret_absent(&secret, &worker_output);
    assert!(!server_output.contains(SECRET) && !worker_output.contains(SECRET));
    let enqueued_line = server_output
        .lines()
        .find(|l| l.contains("\"outcome\":\"enqueued\""))
        .unwrap_or_else(|| panic!("no enqueued line:\n{server_output}"));
    let line: Value = serde_json::from_str(enqueued_line).expect("JSON log line");
    assert_eq!(line["batch_id"], batch_id.as_str());
    assert_eq!(line["openai_batch_id"], openai_id.as_str());
    println!("webhook answered in {} ms", line["elapsed_ms"]);
}

// ---------------------------------------------------------------------------------------------
// Bad deliveries: 400, nothing enqueued.

#[tokio::test(flavor = "multi_thread")]
async fn bad_deliveries_get_400_and_enqueue_nothing() {
    let env = TestEnv::new().await;
    let pending = summary("bad-1", BatchStatus::Pending);
    put(&env, &pending).await;
    let secret = new_secret();
    let signer = WebhookSigner::new(&secret).unwrap();
    let server = webhook_server(&env, &secret).await;
    let url = server.url("/openai/webhook");
    let good = batch_event("batch.completed", &pending.openai_batch_id);

    let other_signer = WebhookSigner::new(&new_secret()).unwrap();
    let tampered = signed(&signer, "wh_t", now(), &good);
    let oversized = format!(
        r#"{{"type":"batch.completed","data":{{"id":"{}"}},"pad":"{}"}}"#,
        pending.openai_batch_id,
        "x".repeat(300 * 1024)
    );
    let no_id =
        r#"{"id":"evt_1","object":"event","type":"batch.completed","created_at":1,"data":{}}"#;
    let cases: Vec<(&str, Headers, String, &str)> = vec![
        (
            "wrong key",
            signed(&other_signer, "wh_1", now(), &good),
            good.clone(),
            "bad_signature",
        ),
        (
            "body changed after signing",
            tampered,
            good.replace("batch.completed", "batch.failed"),
            "bad_signature",
        ),
        (
            "stale timestamp",
            signed(&signer, "wh_2", now() - 301 - 5, &good),
            good.clone(),
            "stale_timestamp",
        ),
        (
            "future timestamp",
            signed(&signer, "wh_3", now() + 301 + 5, &good),
            good.clone(),
            "stale_timestamp",
        ),
        (
            "not a number",
            {
                let mut h = signed(&signer, "wh_4", now(), &good);
                h[1].1 = "yesterday".into();
                h
            },
            good.clone(),
            "bad_timestamp",
        ),
        (
            "oversized",
            signed(&signer, "wh_5", now(), &oversized),
            oversized.clone(),
            "too_large",
        ),
        (
            "not JSON",
            signed(&signer, "wh_6", now(), "batch done!"),
            "batch done!".into(),
            "bad_json",
        ),
        (
            "no batch id",
            signed(&signer, "wh_7", now(), no_id),
            no_id.into(),
            "bad_event",
        ),
    ];
    let mut cases = cases;
    for missing in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        let mut h = signed(&signer, "wh_8", now(), &good);
        h.retain(|(n, _)| *n != missing);
        cases.push(("missing header", h, good.clone(), "missing_header"));
    }
    for (what, headers, body, outcome) in &cases {
        let (status, answer) = post(&url, headers, body.clone()).await;
        assert_eq!(status, 400, "{what}: {answer}");
        assert_eq!(answer["outcome"], *outcome, "{what}: {answer}");
    }
    // A chunked body over the cap, without Content-Length, is refused too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..40).map(|_| Ok(vec![b' '; 8 * 1024])).collect();
    let stream = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let (status, answer) = post(&url, &signed(&signer, "wh_9", now(), &oversized), stream).await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (400, Some("too_large"))
    );

    assert_eq!(env.work_depth().await.total(), 0, "nothing enqueued");
    let state = env.store.fleet_state(&pending.batch_id).await.unwrap();
    assert_eq!(state.chain, None, "no chain started");
    let (_, page) = get_text(&server.url("/metrics")).await;
    let counts = webhook_counts(&page);
    let refused: f64 = counts
        .iter()
        .filter(|((_, outcome), _)| outcome != "enqueued")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(refused, (cases.len() + 1) as f64, "{page}");

    // The control: the same event, signed right, is enqueued.
    let (status, answer) = post(&url, &signed(&signer, "wh_ok", now(), &good), good.clone()).await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (200, Some("enqueued")),
        "{answer}"
    );
    assert_eq!(env.work_depth().await.visible, 1);

    let output = server.stop(Duration::from_secs(10)).await;
    assert_secret_absent(&secret, &output);
}

// ---------------------------------------------------------------------------------------------
// 2xx without an enqueue: other types, unknown, finished and dead-lettered batches, repeats.

#[tokio::test(flavor = "multi_thread")]
async fn other_types_and_batches_not_ours_to_check_get_2xx_and_enqueue_nothing() {
    let env = TestEnv::new().await;
    let pending = summary("ok-1", BatchStatus::Pending);
    let dead = summary("ok-dead", BatchStatus::Pending);
    let done = summary("ok-done", BatchStatus::Completed);
    let mut embedding = summary("ok-emb", BatchStatus::Pending);
    embedding.batch_type = BatchType::Embedding;
    for s in [&pending, &dead, &done, &embedding] {
        put(&env, s).await;
    }
    env.store
        .mark_dead_lettered(
            &dead.batch_id,
            "openai_unavailable",
            Utc::now().timestamp_millis(),
        )
        .await
        .unwrap();
    let secret = new_secret();
    let signer = WebhookSigner::new(&secret).unwrap();
    let server = webhook_server(&env, &secret).await;
    let url = server.url("/openai/webhook");
    let deliver = |id: &'static str, body: String| {
        let (url, headers) = (url.clone(), signed(&signer, id, now(), &body));
        async move { post(&url, &headers, body).await }
    };

    let cases = [
        (
            "wh_a",
            batch_event("response.completed", "resp_1"),
            "ignored_type",
        ),
        (
            "wh_b",
            batch_event("fine_tuning.job.succeeded", &pending.openai_batch_id),
            "ignored_type",
        ),
        (
            "wh_c",
            batch_event("batch.completed", "batch_of_another_project"),
            "unknown_batch",
        ),
        (
            "wh_d",
            batch_event("batch.completed", &done.openai_batch_id),
            "unknown_batch",
        ),
        (
            "wh_e",
            batch_event("batch.completed", &embedding.openai_batch_id),
            "unknown_batch",
        ),
        (
            "wh_f",
            batch_event("batch.expired", &dead.openai_batch_id),
            "dead_lettered",
        ),
    ];
    for (id, body, outcome) in cases {
        let (status, answer) = deliver(id, body).await;
        assert_eq!(
            (status, answer["outcome"].as_str()),
            (200, Some(outcome)),
            "{id}: {answer}"
        );
    }
    assert_eq!(env.work_depth().await.total(), 0);

    // One real end, delivered twice (OpenAI did not get our first answer): enqueued once.
    let event = batch_event("batch.failed", &pending.openai_batch_id);
    let (status, answer) = deliver("wh_g", event.clone()).await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (200, Some("enqueued"))
    );
    let (status, answer) = deliver("wh_g", event.clone()).await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (200, Some("duplicate"))
    );

    // The batch is finished meanwhile: the cached listing still names it, the consistent read
    // of its summary does not enqueue it.
    env.store
        .finish_summary(&pending.batch_id, BatchStatus::Failed, None)
        .await
        .unwrap();
    let (status, answer) = deliver(
        "wh_h",
        batch_event("batch.failed", &pending.openai_batch_id),
    )
    .await;
    assert_eq!(
        (status, answer["outcome"].as_str()),
        (200, Some("not_pending"))
    );

    let messages = bodies(&env).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    let m = &messages[0];
    assert_eq!(m.batch_id, pending.batch_id);
    assert_eq!(
        m.openai_batch_id.as_deref(),
        Some(pending.openai_batch_id.as_str())
    );
    let state = env.store.fleet_state(&pending.batch_id).await.unwrap();
    assert!(m.chain.is_some());
    assert_eq!(
        state.chain, m.chain,
        "the message carries the batch's current chain"
    );
    let until = state.scheduled_until_ms.expect("schedule marker");
    assert!(
        until > Utc::now().timestamp_millis() + 800_000,
        "marker about 900 s ahead"
    );

    let (_, page) = get_text(&server.url("/metrics")).await;
    let counts = webhook_counts(&page);
    for ((t, o), n) in [
        (("other", "ignored_type"), 2.0),
        (("batch.completed", "unknown_batch"), 3.0),
        (("batch.expired", "dead_lettered"), 1.0),
        (("batch.failed", "enqueued"), 1.0),
        (("batch.failed", "duplicate"), 1.0),
        (("batch.failed", "not_pending"), 1.0),
    ] {
        assert_eq!(
            counts.get(&(t.into(), o.into())),
            Some(&n),
            "{t} {o}:\n{page}"
        );
    }
    let output = server.stop(Duration::from_secs(10)).await;
    assert_secret_absent(&secret, &output);
    // How long each answer took (moto: each DynamoDB or SQS call is a local HTTP round-trip).
    for line in output
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        if line["event"] == "webhook" {
            println!(
                "answered {} {} in {:.1} ms",
                line["status"],
                line["outcome"],
                line["elapsed_ms"].as_f64().unwrap_or(-1.0)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The pending listing (in-process receiver, moto).

#[tokio::test]
async fn a_batch_submitted_after_the_listing_is_found_once_the_listing_may_be_refreshed() {
    let env = TestEnv::new().await;
    let secret = new_secret();
    let settings = WebhookSettings {
        queue_url: env.queues.work_url.clone(),
        addr: "127.0.0.1:0".parse().unwrap(),
        key: SigningKey::parse(&secret).unwrap(),
        schedule_horizon_seconds: 900,
    };
    let options = ReceiverOptions {
        cache_min_refresh: Duration::from_millis(500),
        ..ReceiverOptions::default()
    };
    let receiver = Arc::new(Receiver::new(
        Services::new(&env.clients, &env.table),
        &settings,
        options,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/openai/webhook", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let server = tokio::spawn(producer::webhook::serve(listener, receiver, stop.clone()));
    let signer = WebhookSigner::new(&secret).unwrap();
    let fresh = summary("late-1", BatchStatus::Pending);
    let deliver = |id: &'static str| {
        let body = batch_event("batch.completed", &fresh.openai_batch_id);
        let (url, headers) = (url.clone(), signed(&signer, id, now(), &body));
        async move { post(&url, &headers, body).await.1["outcome"].clone() }
    };

    assert_eq!(
        deliver("wh_1").await,
        "unknown_batch",
        "listed: nothing pending"
    );
    put(&env, &fresh).await;
    assert_eq!(
        deliver("wh_2").await,
        "unknown_batch",
        "within the refresh interval the listing is not made again"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        deliver("wh_3").await,
        "enqueued",
        "listed again for the unknown id"
    );
    assert_eq!(env.work_depth().await.visible, 1);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server stops when cancelled")
        .unwrap()
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Configuration and --help.

fn run_producer(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    process::run("producer", args, env.iter().copied())
}

#[test]
fn bad_configuration_exits_64_naming_it_without_the_secret() {
    let base = [
        ("DYNAMODB_TABLE_NAME", "receipts"),
        ("QUEUE_URL", "http://127.0.0.1:1/123/work"),
        ("AWS_REGION", "us-east-1"),
    ];
    let good = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let cases: [(&[(&str, &str)], &str); 5] = [
        (&[], "OPENAI_WEBHOOK_SECRET is required by webhook-server"),
        (
            &[("OPENAI_WEBHOOK_SECRET", "C2FVsBQIhrscChlQIMV+b5sSYspob7oD")],
            "does not start with whsec_",
        ),
        (
            &[(
                "OPENAI_WEBHOOK_SECRET",
                "whsec_C2FVsBQIhrscCh%QIMV+b5sSYspob7oD",
            )],
            "not standard base64",
        ),
        (
            &[("OPENAI_WEBHOOK_SECRET", "whsec_dG9vIHNob3J0")],
            "fewer than the 24",
        ),
        (
            &[
                ("OPENAI_WEBHOOK_SECRET", good),
                ("WEBHOOK_ADDR", "localhost"),
            ],
            "WEBHOOK_ADDR=\"localhost\" is not an address",
        ),
    ];
    for (extra, needle) in cases {
        let env: Vec<_> = base.iter().chain(extra).copied().collect();
        let out = run_producer(&["webhook-server"], &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{extra:?}: {stderr}");
        assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
        assert!(out.stdout.is_empty());
        for (name, value) in extra {
            if *name == "OPENAI_WEBHOOK_SECRET" {
                assert_secret_absent(value, &stderr);
            }
        }
    }
    // A flag that is not the variable's value is checked the same way.
    let env = base.to_vec();
    let out = run_producer(
        &[
            "webhook-server",
            "--openai-webhook-secret",
            "whsec_dG9vIHNob3J0",
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("dG9vIHNob3J0"));
}

#[test]
fn help_names_the_settings_never_the_secret() {
    let secret = new_secret();
    let env = [("OPENAI_WEBHOOK_SECRET", secret.as_str())];
    let out = run_producer(&["--help"], &env);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("webhook-server"), "{text}");
    assert_secret_absent(&secret, &text);
    let out = run_producer(&["webhook-server", "--help"], &env);
    assert_eq!(out.status.code(), Some(0));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [
        "WEBHOOK_ADDR",
        "OPENAI_WEBHOOK_SECRET",
        "SCHEDULE_HORIZON_SECONDS",
        "/openai/webhook",
    ] {
        assert!(text.contains(name), "{name} not in --help:\n{text}");
    }
    assert_secret_absent(&secret, &text);
}

// ---------------------------------------------------------------------------------------------
// The emulator's webhooks.

/// A receiver that records what it gets and answers the status it is told (500 first, then
/// 200: OpenAI's retry must come with the same webhook-id).
async fn recording_receiver() -> (String, Arc<Mutex<Vec<(HeaderMap, String)>>>) {
    let seen: Arc<Mutex<Vec<(HeaderMap, String)>>> = Arc::default();
    let record = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let record = record.clone();
            async move {
                let mut seen = record.lock().unwrap();
                let first = seen.is_empty();
                seen.push((headers, body));
                if first {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_emulator_signs_its_batch_end_webhooks_like_openai_and_sends_each_once() {
    let openai = OpenAiEmulator::start().await.unwrap();
    let (url, seen) = recording_receiver().await;
    let secret = new_secret();
    openai
        .set_webhook(Some(WebhookConfig {
            url,
            secret: secret.clone(),
            end_after: Some(Duration::from_millis(300)),
        }))
        .unwrap();
    let spec = |id: &str, steps: &[(&str, u32)]| {
        BatchSpec::new(id, "file-in").with_steps(steps.iter().map(|(s, n)| (*s, *n)))
    };
    // Ends by end_after, 300 to 600 ms after its first GET.
    openai.add_batch(spec(
        "batch_timed",
        &[("in_progress", 100), ("completed", 1)],
    ));
    // Fails at its second GET.
    openai.add_batch(spec("batch_fails", &[("validating", 1), ("failed", 1)]));
    // Ended by hand before anyone polls.
    openai.add_batch(spec(
        "batch_expires",
        &[("in_progress", 100), ("expired", 1)],
    ));
    // Never ends by itself: end_after leaves it alone.
    openai.add_batch(spec("batch_running", &[("in_progress", 1)]));
    // Cancelled through the API: ends at the GET after the cancel.
    openai.add_batch(spec(
        "batch_cancelled",
        &[("in_progress", 100), ("completed", 1)],
    ));
    let client = reqwest::Client::new();
    let get = |id: &'static str| {
        let (client, url) = (
            client.clone(),
            format!("{}/batches/{id}", openai.base_url()),
        );
        async move {
            let v: Value = client
                .get(url)
                .bearer_auth("sk-test")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["status"].as_str().unwrap_or_default().to_owned()
        }
    };
    assert_eq!(get("batch_cancelled").await, "in_progress");
    let cancel = client
        .post(format!(
            "{}/batches/batch_cancelled/cancel",
            openai.base_url()
        ))
        .bearer_auth("sk-test")
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), 200);
    assert_eq!(get("batch_cancelled").await, "cancelled");
    assert_eq!(get("batch_timed").await, "in_progress");
    assert_eq!(get("batch_running").await, "in_progress");
    assert_eq!(get("batch_fails").await, "validating");
    assert_eq!(get("batch_fails").await, "failed");
    assert_eq!(get("batch_fails").await, "failed");
    assert_eq!(
        openai.end_batch("batch_expires").as_deref(),
        Some("expired")
    );
    assert_eq!(openai.end_batch("batch_expires"), None, "ends once");
    assert_eq!(openai.end_batch("batch_running"), None, "no terminal step");
    assert_eq!(get("batch_expires").await, "expired");
    let started = Instant::now();
    while openai
        .webhook_deliveries()
        .iter()
        .filter(|d| d.succeeded())
        .count()
        < 4
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "four events expected: {:?}",
            openai.webhook_deliveries()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get("batch_timed").await, "completed");
    assert_eq!(get("batch_running").await, "in_progress");

    let deliveries = openai.webhook_deliveries();
    assert_eq!(
        deliveries.len(),
        5,
        "four events, the first attempt refused: {deliveries:?}"
    );
    let mut types: Vec<(String, String)> = deliveries
        .iter()
        .filter(|d| d.succeeded())
        .map(|d| (d.batch_id.clone(), d.event_type.clone()))
        .collect();
    types.sort();
    assert_eq!(
        types,
        [
            ("batch_cancelled".to_owned(), "batch.cancelled".to_owned()),
            ("batch_expires".to_owned(), "batch.expired".to_owned()),
            ("batch_fails".to_owned(), "batch.failed".to_owned()),
            ("batch_timed".to_owned(), "batch.completed".to_owned()),
        ]
    );
    let refused = deliveries
        .iter()
        .find(|d| d.status == Some(500))
        .expect("the first request was refused");
    assert_eq!(refused.attempt, 1);
    let retry = deliveries
        .iter()
        .find(|d| d.event_id == refused.event_id && d.attempt == 2)
        .expect("the refused event delivered again");
    assert_eq!(
        retry.webhook_id, refused.webhook_id,
        "a retry keeps its webhook-id"
    );

    // Every request verifies with the receiver's own verifier (an independent implementation).
    let key = SigningKey::parse(&secret).unwrap();
    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 5);
    for (headers, body) in &requests {
        let text = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
        let signed = SignedHeaders {
            id: text("webhook-id"),
            timestamp: text("webhook-timestamp"),
            signature: text("webhook-signature"),
        };
        assert_eq!(
            verify(&key, signed, body.as_bytes(), now()),
            Ok(()),
            "{headers:?}"
        );
        assert_eq!(text("content-type"), Some("application/json"));
        let event: Value = serde_json::from_str(body).unwrap();
        assert_eq!(event["object"], "event");
        assert!(event["id"].as_str().unwrap().starts_with("evt_"));
        assert!(text("webhook-id").unwrap().starts_with("wh_"));
        assert!(producer::webhook::event::parse(body.as_bytes()).is_ok());
    }
    openai.set_webhook(None).unwrap();
}
