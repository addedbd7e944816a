//! The producer against moto: enqueue ticks (no pile-up, pagination, a producer killed
//! half-way, a failed send, bad items, metrics pushed), replay-dlq (dry run, filters, max,
//! replay counters, bulk unsupported), the dead-letter mark (a batch dead-lettered for good
//! stays out until replayed, replay clears marks and starts one chain, status lists marks),
//! status, and the real binary's exit codes.

use std::collections::HashMap;
use std::process::Output;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use fleet_shared::message::BatchMessage;
use fleet_shared::model::time::{parse_timestamp, rfc3339};
use fleet_shared::model::{BatchStatus, BatchSummary, BatchType};
use fleet_shared::queue::{QueueDepth, dead_letter_attributes, queue_depth, send_one};
use fleet_shared::store::{ScheduleClaim, Store};
use producer::replay::{
    REDRIVE_REASON, REPLAY_SCHEDULE_HORIZON_SECONDS, clear_pending_marks, replay_at,
};
use producer::status::DeadLetteredBatch;
use producer::{
    BulkError, BulkSettings, CommandSettings, EnqueueSettings, ReplayFilter, ReplaySettings,
    Services, StatusSettings, enqueue, replay, replay_bulk, run_command, status,
};
use serde_json::Value;

use crate::support::process;
use crate::support::{self, TestEnv};

fn t0() -> DateTime<Utc> {
    parse_timestamp("2025-06-21T12:00:00+00:00").unwrap()
}

/// [`support::summary`] submitted at `submitted_at`.
fn summary(batch_id: &str, status: BatchStatus, submitted_at: DateTime<Utc>) -> BatchSummary {
    BatchSummary {
        submitted_at,
        ..support::summary(batch_id, status)
    }
}

/// `n` pending completion batches `{prefix}-00`…, submitted an hour apart before t0, plus
/// a completed one and a pending embedding batch that no tick may touch.
async fn seed_pending(env: &TestEnv, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}-{i:02}");
        let submitted = t0() - Duration::hours(i as i64 + 1);
        env.store
            .put_raw(summary(&id, BatchStatus::Pending, submitted).to_item())
            .await
            .unwrap();
        ids.push(id);
    }
    env.store
        .put_raw(summary(&format!("{prefix}-done"), BatchStatus::Completed, t0()).to_item())
        .await
        .unwrap();
    let mut embedding = summary(&format!("{prefix}-emb"), BatchStatus::Pending, t0());
    embedding.batch_type = BatchType::Embedding;
    env.store.put_raw(embedding.to_item()).await.unwrap();
    ids
}

fn services(env: &TestEnv) -> Services {
    Services {
        store: env.store.clone(),
        sqs: env.clients.sqs.clone(),
    }
}

fn enqueue_settings(env: &TestEnv) -> EnqueueSettings {
    EnqueueSettings {
        dead_letter_queue_url: Some(env.queues.dead_letter_url.clone()),
        ..EnqueueSettings::new(&env.queues.work_url)
    }
}

/// Every message of a queue ([`support::drain`]): its body and string attributes.
async fn drain(env: &TestEnv, url: &str) -> Vec<(String, HashMap<String, String>)> {
    support::drain(&env.clients.sqs, url)
        .await
        .into_iter()
        .map(|m| {
            let attrs = m
                .message_attributes
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(k, v)| v.string_value.map(|s| (k, s)))
                .collect();
            (m.body.unwrap_or_default(), attrs)
        })
        .collect()
}

fn messages_per_batch(bodies: &[(String, HashMap<String, String>)]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for (body, _) in bodies {
        let m = BatchMessage::parse(body).expect("the producer sends valid messages");
        *counts.entry(m.batch_id).or_insert(0) += 1;
    }
    counts
}

fn exactly_once(ids: &[String]) -> HashMap<String, usize> {
    ids.iter().map(|id| (id.clone(), 1)).collect()
}

/// The work queue holds one message for each of `ids` and for nothing else.
async fn assert_one_message_each(env: &TestEnv, ids: &[String]) {
    let messages = drain(env, &env.queues.work_url).await;
    assert_eq!(messages_per_batch(&messages), exactly_once(ids));
}

async fn depth(env: &TestEnv, url: &str) -> QueueDepth {
    queue_depth(&env.clients.sqs, url).await.unwrap()
}

#[tokio::test]
async fn two_ticks_before_any_worker_leave_one_message_per_batch() {
    let env = TestEnv::new().await;
    let ids = seed_pending(&env, "two", 5).await;
    let s = enqueue_settings(&env);

    let first = enqueue(&s, &services(&env), t0()).await.unwrap();
    assert_eq!(
        (first.listed, first.enqueued, first.skipped, first.failed),
        (5, 5, 0, 0)
    );
    assert_eq!(first.oldest_pending_age_seconds, Some(5 * 3600));
    let second = enqueue(&s, &services(&env), t0() + Duration::minutes(5))
        .await
        .unwrap();
    assert_eq!(
        (
            second.listed,
            second.enqueued,
            second.skipped,
            second.failed
        ),
        (5, 0, 5, 0)
    );
    assert_eq!(second.exit_code(), 0);
    assert_eq!(second.work_queue.map(|d| d.visible), Some(5));
    assert_eq!(second.dead_letter_queue.map(|d| d.total()), Some(0));

    let messages = drain(&env, &env.queues.work_url).await;
    assert_eq!(messages_per_batch(&messages), exactly_once(&ids));
    let m = BatchMessage::parse(&messages[0].0).unwrap();
    assert_eq!(m.openai_batch_id, Some(format!("batch_{}", m.batch_id)));
    assert_eq!((m.checks, m.replays), (0, 0));
    assert_eq!(
        m.first_enqueued_at.as_deref(),
        Some("2025-06-21T12:00:00.000Z")
    );
}

#[tokio::test]
async fn every_page_of_pending_batches_is_enqueued() {
    let env = TestEnv::new().await;
    let ids = seed_pending(&env, "page", 23).await;
    let paged = Services {
        store: env.store.clone().with_page_size(4),
        sqs: env.clients.sqs.clone(),
    };
    let report = enqueue(&enqueue_settings(&env), &paged, t0())
        .await
        .unwrap();
    assert_eq!((report.listed, report.enqueued), (23, 23));
    assert_one_message_each(&env, &ids).await;
}

#[tokio::test]
async fn a_producer_killed_after_claiming_loses_nothing() {
    let env = TestEnv::new().await;
    let ids = seed_pending(&env, "kill", 6).await;
    let horizon_ms = 900_000;
    // The killed run: claimed two batches, died before sending.
    for id in &ids[..2] {
        let claim = env
            .store
            .claim_schedule(
                id,
                t0().timestamp_millis() + horizon_ms,
                t0().timestamp_millis(),
                "killed-run",
            )
            .await
            .unwrap();
        assert_eq!(claim, ScheduleClaim::Claimed);
    }
    let s = enqueue_settings(&env);
    let rerun = enqueue(&s, &services(&env), t0() + Duration::seconds(60))
        .await
        .unwrap();
    assert_eq!((rerun.enqueued, rerun.skipped, rerun.failed), (4, 2, 0));
    // Once the dead run's markers expire, the next tick picks its batches up; the rerun's own
    // markers are still live, so nothing is sent twice.
    let later = enqueue(&s, &services(&env), t0() + Duration::seconds(901))
        .await
        .unwrap();
    assert_eq!((later.enqueued, later.skipped, later.failed), (2, 4, 0));
    assert_one_message_each(&env, &ids).await;
}

#[tokio::test]
async fn a_failed_send_gives_the_claim_back() {
    let env = TestEnv::new().await;
    let ids = seed_pending(&env, "fail", 3).await;
    let broken = EnqueueSettings::new(format!("{}-missing", env.queues.work_url));
    let report = enqueue(&broken, &services(&env), t0()).await.unwrap();
    assert_eq!((report.enqueued, report.failed), (0, 3));
    assert_eq!(report.exit_code(), 1);
    let mut failed: Vec<_> = report.failures.iter().map(|f| f.batch_id.clone()).collect();
    failed.sort();
    assert_eq!(failed, ids);
    for id in &ids {
        let state = env.store.fleet_state(id).await.unwrap();
        assert_eq!(state.scheduled_until_ms, None, "{id} still claimed");
    }
    // The next tick need not wait for the horizon.
    let retry = enqueue(
        &enqueue_settings(&env),
        &services(&env),
        t0() + Duration::seconds(1),
    )
    .await
    .unwrap();
    assert_eq!((retry.enqueued, retry.failed), (3, 0));
    assert_one_message_each(&env, &ids).await;
}

#[tokio::test]
async fn bad_items_are_reported_and_do_not_fail_the_tick() {
    let env = TestEnv::new().await;
    let ids = seed_pending(&env, "bad", 2).await;
    let mut broken = summary("bad-item", BatchStatus::Pending, t0()).to_item();
    broken.remove("submitted_at");
    env.store.put_raw(broken).await.unwrap();
    let report = enqueue(&enqueue_settings(&env), &services(&env), t0())
        .await
        .unwrap();
    assert_eq!(
        (
            report.listed,
            report.enqueued,
            report.bad_items,
            report.failed
        ),
        (3, 2, 1, 0)
    );
    assert!(report.bad_item_errors[0].contains("submitted_at"));
    assert_eq!(report.exit_code(), 0);
    assert_one_message_each(&env, &ids).await;
}

/// A Pushgateway that records what it was sent.
async fn fake_pushgateway(answer: u16) -> (String, Arc<Mutex<Vec<(String, String, String)>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = axum::Router::new().fallback(
        move |method: axum::http::Method, uri: axum::http::Uri, body: String| {
            let record = record.clone();
            async move {
                record
                    .lock()
                    .unwrap()
                    .push((method.to_string(), uri.path().to_owned(), body));
                axum::http::StatusCode::from_u16(answer).unwrap()
            }
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test]
async fn enqueue_pushes_its_metrics_and_prints_json() {
    let env = TestEnv::new().await;
    seed_pending(&env, "push", 2).await;
    let (url, pushed) = fake_pushgateway(200).await;
    let command = CommandSettings::Enqueue {
        settings: EnqueueSettings {
            pushgateway_url: Some(url.clone()),
            ..enqueue_settings(&env)
        },
        json: true,
    };
    let mut out = Vec::new();
    let code = run_command(&command, &services(&env), &mut out)
        .await
        .unwrap();
    assert_eq!(code, 0);
    let json: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(json["listed"], 2);
    assert_eq!(json["enqueued"], 2);
    assert_eq!(json["skipped"], 0);
    assert_eq!(json["failed"], 0);
    assert_eq!(json["bad_items"], 0);
    assert_eq!(json["work_queue"]["visible"], 2);
    {
        let pushed = pushed.lock().unwrap();
        let (method, path, body) = &pushed[0];
        assert_eq!(
            (method.as_str(), path.as_str()),
            ("PUT", "/metrics/job/fleet_producer")
        );
        for line in [
            "fleet_producer_batches_total{result=\"listed\"} 2",
            "fleet_producer_batches_total{result=\"enqueued\"} 2",
            "fleet_producer_batches_total{result=\"skipped\"} 0",
            "fleet_producer_batches_total{result=\"failed\"} 0",
            "fleet_producer_queue_messages{queue=\"work\",state=\"visible\"} 2",
            "fleet_producer_queue_messages{queue=\"dead_letter\",state=\"visible\"} 0",
        ] {
            assert!(body.lines().any(|l| l == line), "no {line:?} in\n{body}");
        }
        assert!(body.contains("fleet_producer_oldest_pending_batch_age_seconds "));
        assert!(body.contains("fleet_producer_last_success_timestamp_seconds "));
    }

    // A failed tick replaces only what it carries: the last success stays in the gateway.
    env.store
        .put_raw(summary("push-new", BatchStatus::Pending, t0()).to_item())
        .await
        .unwrap();
    let failing = CommandSettings::Enqueue {
        settings: EnqueueSettings {
            pushgateway_url: Some(url),
            ..EnqueueSettings::new(format!("{}-missing", env.queues.work_url))
        },
        json: false,
    };
    let mut out = Vec::new();
    let code = run_command(&failing, &services(&env), &mut out)
        .await
        .unwrap();
    assert_eq!(code, 1);
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("listed 3, enqueued 0, skipped 2 (already scheduled), skipped 0 (dead-lettered), failed 1, bad items 0"),
        "{text}"
    );
    assert!(text.contains("failed push-new:"), "{text}");
    let pushed = pushed.lock().unwrap();
    let (method, _, body) = &pushed[1];
    assert_eq!(method, "POST");
    assert!(body.contains("fleet_producer_batches_total{result=\"failed\"} 1"));
    assert!(!body.contains("fleet_producer_last_success_timestamp_seconds"));
}

#[tokio::test]
async fn a_push_failure_does_not_fail_the_tick() {
    let env = TestEnv::new().await;
    seed_pending(&env, "nopush", 1).await;
    let (url, pushed) = fake_pushgateway(500).await;
    for gateway in [url, "http://127.0.0.1:9".to_owned()] {
        let command = CommandSettings::Enqueue {
            settings: EnqueueSettings {
                pushgateway_url: Some(gateway),
                ..enqueue_settings(&env)
            },
            json: false,
        };
        let code = run_command(&command, &services(&env), &mut Vec::new())
            .await
            .unwrap();
        assert_eq!(code, 0);
    }
    assert_eq!(pushed.lock().unwrap().len(), 1);
}

// ---- replay-dlq ----

/// The dead-letter queue of the replay tests: four batches and one unparseable body.
async fn seed_dead_letters(env: &TestEnv) -> Vec<String> {
    let body = |id: &str, checks: u32, replays: u32| {
        let mut m = BatchMessage::new(id);
        m.openai_batch_id = Some(format!("batch_{id}"));
        m.checks = checks;
        m.replays = replays;
        m.first_enqueued_at = Some("2025-06-21T10:00:00.000Z".into());
        m.to_body()
    };
    let cases: Vec<(String, Option<&str>)> = vec![
        (body("b1", 7, 0), Some("openai_unavailable")),
        (body("b2", 3, 1), Some("batch_unknown")),
        (body("b3", 9, 0), Some("openai_unavailable")),
        ("this is not json".to_owned(), Some("not_json")),
        (body("b4", 5, 2), None),
    ];
    let mut bodies = Vec::new();
    for (body, reason) in cases {
        let attrs = match reason {
            Some(r) => dead_letter_attributes(r, "permanent", 1, "2025-06-21T10:00:00.000Z"),
            None => Vec::new(),
        };
        send_one(
            &env.clients.sqs,
            &env.queues.dead_letter_url,
            &body,
            0,
            &attrs,
        )
        .await
        .unwrap();
        bodies.push(body);
    }
    bodies
}

fn replay_settings(env: &TestEnv) -> ReplaySettings {
    ReplaySettings {
        visibility_seconds: 30,
        ..ReplaySettings::new(&env.queues.work_url, &env.queues.dead_letter_url)
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn bodies(messages: &[(String, HashMap<String, String>)]) -> Vec<String> {
    sorted(messages.iter().map(|(b, _)| b.clone()).collect())
}

fn moved_batches(report: &producer::ReplayReport) -> Vec<String> {
    sorted(
        report
            .moved
            .iter()
            .map(|m| m.batch_id.clone().unwrap_or_else(|| "(invalid)".into()))
            .collect(),
    )
}

#[tokio::test]
async fn a_dry_run_changes_nothing() {
    let env = TestEnv::new().await;
    let seeded = seed_dead_letters(&env).await;
    let before = depth(&env, &env.queues.dead_letter_url).await;
    assert_eq!(before.visible, 5);
    env.store
        .mark_dead_lettered("b2", "batch_unknown", t0().timestamp_millis())
        .await
        .unwrap();
    let marked = env.store.fleet_state("b2").await.unwrap();

    let report = replay(
        &ReplaySettings {
            dry_run: true,
            ..replay_settings(&env)
        },
        &services(&env),
    )
    .await
    .unwrap();
    assert!(report.dry_run);
    assert_eq!(report.received, 5);
    assert_eq!(
        moved_batches(&report),
        ["(invalid)", "b1", "b2", "b3", "b4"]
    );
    assert!(
        report
            .moved
            .iter()
            .all(|m| m.new_message_id.is_none() && !m.deleted)
    );
    assert_eq!(report.released, 5);
    let reasons: HashMap<_, _> = report
        .moved
        .iter()
        .map(|m| (m.batch_id.clone(), m.reason.clone()))
        .collect();
    assert_eq!(reasons[&Some("b4".to_owned())], REDRIVE_REASON);
    assert_eq!(reasons[&None], "not_json");
    // The mark a real run would clear is reported, and left as it was (no chain started).
    assert_eq!(report.marks_cleared, 1);
    let would_clear: Vec<_> = report
        .moved
        .iter()
        .filter(|m| m.mark_cleared)
        .map(|m| m.batch_id.as_deref())
        .collect();
    assert_eq!(would_clear, [Some("b2")]);
    assert_eq!(env.store.fleet_state("b2").await.unwrap(), marked);
    assert_eq!(
        env.store.fleet_state("b1").await.unwrap(),
        Default::default()
    );

    assert_eq!(depth(&env, &env.queues.dead_letter_url).await, before);
    assert_eq!(depth(&env, &env.queues.work_url).await.total(), 0);
    let left = drain(&env, &env.queues.dead_letter_url).await;
    assert_eq!(bodies(&left), sorted(seeded));
    assert!(
        left.iter()
            .any(|(_, a)| a.get("reason").map(String::as_str) == Some("not_json"))
    );
}

#[tokio::test]
async fn replay_moves_everything_with_counters_updated() {
    let env = TestEnv::new().await;
    seed_dead_letters(&env).await;
    let report = replay(&replay_settings(&env), &services(&env))
        .await
        .unwrap();
    assert_eq!(report.exit_code(), 0);
    assert_eq!(report.moved.len(), 5);
    assert!(
        report
            .moved
            .iter()
            .all(|m| m.deleted && m.new_message_id.is_some())
    );
    assert_eq!(depth(&env, &env.queues.dead_letter_url).await.total(), 0);

    let moved = drain(&env, &env.queues.work_url).await;
    assert_eq!(moved.len(), 5);
    let mut replays = HashMap::new();
    for (body, _) in &moved {
        match BatchMessage::parse(body) {
            Ok(m) => {
                assert_eq!(m.checks, 0, "{body}");
                assert_eq!(
                    m.first_enqueued_at.as_deref(),
                    Some("2025-06-21T10:00:00.000Z")
                );
                replays.insert(m.batch_id, m.replays);
            }
            Err(_) => assert_eq!(body, "this is not json"),
        }
    }
    let expected: HashMap<String, u32> = [("b1", 1), ("b2", 2), ("b3", 1), ("b4", 3)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    assert_eq!(replays, expected);
}

#[tokio::test]
async fn replay_filters_by_batch_id() {
    let env = TestEnv::new().await;
    seed_dead_letters(&env).await;
    let settings = ReplaySettings {
        filter: ReplayFilter {
            batch_ids: vec!["b1".into(), "b4".into()],
            reason: None,
        },
        ..replay_settings(&env)
    };
    let report = replay(&settings, &services(&env)).await.unwrap();
    assert_eq!(moved_batches(&report), ["b1", "b4"]);
    assert_eq!(report.released, 3);
    let moved = drain(&env, &env.queues.work_url).await;
    assert_eq!(
        messages_per_batch(&moved),
        exactly_once(&["b1".into(), "b4".into()])
    );
    let left = drain(&env, &env.queues.dead_letter_url).await;
    assert_eq!(left.len(), 3);
    assert!(left.iter().any(|(b, _)| b == "this is not json"));
}

#[tokio::test]
async fn replay_filters_by_reason() {
    let env = TestEnv::new().await;
    seed_dead_letters(&env).await;
    let by_reason = |reason: &str| ReplaySettings {
        filter: ReplayFilter {
            batch_ids: vec![],
            reason: Some(reason.to_owned()),
        },
        ..replay_settings(&env)
    };
    let report = replay(&by_reason("openai_unavailable"), &services(&env))
        .await
        .unwrap();
    assert_eq!(moved_batches(&report), ["b1", "b3"]);
    let report = replay(&by_reason("not_json"), &services(&env))
        .await
        .unwrap();
    assert_eq!(moved_batches(&report), ["(invalid)"]);
    assert_eq!(report.moved[0].replays, None);
    let report = replay(&by_reason(REDRIVE_REASON), &services(&env))
        .await
        .unwrap();
    assert_eq!(moved_batches(&report), ["b4"]);

    let moved = drain(&env, &env.queues.work_url).await;
    assert_eq!(moved.len(), 4);
    assert!(moved.iter().any(|(b, _)| b == "this is not json"));
    let left = drain(&env, &env.queues.dead_letter_url).await;
    assert_eq!(left.len(), 1);
    assert_eq!(BatchMessage::parse(&left[0].0).unwrap().batch_id, "b2");
}

#[tokio::test]
async fn replay_respects_max() {
    let env = TestEnv::new().await;
    seed_dead_letters(&env).await;
    let settings = ReplaySettings {
        max: Some(2),
        ..replay_settings(&env)
    };
    let report = replay(&settings, &services(&env)).await.unwrap();
    assert_eq!(report.moved.len(), 2);
    assert_eq!(depth(&env, &env.queues.work_url).await.visible, 2);
    assert_eq!(depth(&env, &env.queues.dead_letter_url).await.visible, 3);
    // A dry run with a max lists no more than that either.
    let dry = replay(
        &ReplaySettings {
            max: Some(1),
            dry_run: true,
            ..replay_settings(&env)
        },
        &services(&env),
    )
    .await
    .unwrap();
    assert_eq!(dry.moved.len(), 1);
    assert_eq!(depth(&env, &env.queues.dead_letter_url).await.visible, 3);
}

#[tokio::test]
async fn replay_prints_what_moved() {
    let env = TestEnv::new().await;
    seed_dead_letters(&env).await;
    let command = CommandSettings::ReplayDlq {
        settings: ReplaySettings {
            filter: ReplayFilter {
                batch_ids: vec!["b2".into()],
                reason: None,
            },
            ..replay_settings(&env)
        },
        json: false,
    };
    let mut out = Vec::new();
    assert_eq!(
        run_command(&command, &services(&env), &mut out)
            .await
            .unwrap(),
        0
    );
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("moved ") && text.contains("batch=b2 reason=batch_unknown replays=2"),
        "{text}"
    );
    assert!(
        text.contains("looked at 5, moved 1, failed 0, left in the dead-letter queue 4"),
        "{text}"
    );
    let json = CommandSettings::ReplayDlq {
        settings: ReplaySettings {
            dry_run: true,
            ..replay_settings(&env)
        },
        json: true,
    };
    let mut out = Vec::new();
    assert_eq!(
        run_command(&json, &services(&env), &mut out).await.unwrap(),
        0
    );
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["moved"].as_array().unwrap().len(), 4);
    assert_eq!(v["marks_cleared"], 0);
    assert_eq!(v["moved"][0]["mark_cleared"], false);
}

#[tokio::test]
async fn bulk_replay_on_moto_is_reported_as_unsupported() {
    let env = TestEnv::new().await;
    seed_dead_letters(&env).await;
    seed_pending(&env, "bulk", 1).await;
    env.store
        .mark_dead_lettered("bulk-00", "batch_unknown", t0().timestamp_millis())
        .await
        .unwrap();
    let settings = BulkSettings {
        queue_url: env.queues.work_url.clone(),
        dead_letter_queue_url: env.queues.dead_letter_url.clone(),
        rate_per_second: Some(10),
    };
    let err = replay_bulk(&settings, &services(&env)).await.unwrap_err();
    assert!(matches!(err, BulkError::Unsupported { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("does not support StartMessageMoveTask"),
        "{err}"
    );
    let command = CommandSettings::ReplayBulk {
        settings,
        json: false,
    };
    assert_eq!(
        run_command(&command, &services(&env), &mut Vec::new())
            .await
            .unwrap(),
        1
    );
    // Nothing moved, and a refused task clears no mark.
    assert_eq!(depth(&env, &env.queues.dead_letter_url).await.visible, 5);
    assert!(
        env.store
            .fleet_state("bulk-00")
            .await
            .unwrap()
            .dead_letter
            .is_some()
    );
}

/// What `--bulk` does once SQS accepted its task (moto has no StartMessageMoveTask, so the
/// step is tested on its own): every marked PENDING batch is unmarked, nothing else.
#[tokio::test]
async fn a_bulk_replay_clears_the_marks_of_pending_batches_only() {
    let env = TestEnv::new().await;
    let ids = seed_pending(&env, "bm", 4).await;
    let at = t0().timestamp_millis();
    for id in [&ids[3], &ids[1], &"bm-done".to_owned()] {
        env.store
            .mark_dead_lettered(id, "batch_unknown", at)
            .await
            .unwrap();
    }
    let paged = Services {
        store: env.store.clone().with_page_size(2),
        sqs: env.clients.sqs.clone(),
    };
    assert_eq!(
        clear_pending_marks(&paged).await.unwrap(),
        [ids[1].clone(), ids[3].clone()]
    );
    for id in &ids {
        assert_eq!(env.store.fleet_state(id).await.unwrap().dead_letter, None);
    }
    // A batch that is no longer pending keeps its mark (and is not the producer's concern).
    assert!(
        env.store
            .fleet_state("bm-done")
            .await
            .unwrap()
            .dead_letter
            .is_some()
    );
    assert!(clear_pending_marks(&paged).await.unwrap().is_empty());
    // The next tick enqueues the unmarked batches like any other.
    let tick = enqueue(&enqueue_settings(&env), &services(&env), t0())
        .await
        .unwrap();
    assert_eq!((tick.enqueued, tick.skipped_dead_lettered), (4, 0));
}

// ---- the dead-letter mark ----

/// What a worker does when it dead-letters a batch for good: the body, unchanged, to the
/// dead-letter queue with the reason attributes, and the mark in the batch's fleet state.
async fn dead_letter_like_a_worker(env: &TestEnv, body: &str, reason: &str, at: DateTime<Utc>) {
    let batch_id = BatchMessage::parse(body).unwrap().batch_id;
    send_one(
        &env.clients.sqs,
        &env.queues.dead_letter_url,
        body,
        0,
        &dead_letter_attributes(reason, "permanent", 1, &rfc3339(at)),
    )
    .await
    .unwrap();
    env.store
        .mark_dead_lettered(&batch_id, reason, at.timestamp_millis())
        .await
        .unwrap();
}

fn status_settings(env: &TestEnv) -> StatusSettings {
    StatusSettings {
        queue_url: env.queues.work_url.clone(),
        dead_letter_queue_url: Some(env.queues.dead_letter_url.clone()),
    }
}

/// issue 9, "Done when": a batch dead-lettered for good is not enqueued again by 3 later
/// ticks past the horizon, `status` lists it, `--dry-run` leaves the mark, replay brings it
/// back once and clears the mark, and the next ticks treat it like any batch. `dl-01` is the
/// control: its message is lost (a worker took it and never came back), so every tick past
/// the horizon enqueues it again.
#[tokio::test]
async fn a_batch_dead_lettered_for_good_stays_out_until_replayed() {
    let env = TestEnv::new().await;
    seed_pending(&env, "dl", 2).await;
    let settings = enqueue_settings(&env);
    let horizon = Duration::seconds(settings.schedule_horizon_seconds as i64);

    let first = enqueue(&settings, &services(&env), t0()).await.unwrap();
    assert_eq!(first.enqueued, 2);
    let taken = drain(&env, &env.queues.work_url).await;
    let body = taken
        .iter()
        .map(|(b, _)| b)
        .find(|b| BatchMessage::parse(b).unwrap().batch_id == "dl-00")
        .unwrap();
    let dead_lettered_at = t0() + Duration::minutes(1);
    dead_letter_like_a_worker(&env, body, "openai_batch_not_found", dead_lettered_at).await;

    let mut now = t0();
    for tick in 1..=3 {
        now = now + horizon + Duration::minutes(1);
        let report = enqueue(&settings, &services(&env), now).await.unwrap();
        assert_eq!(
            (
                report.listed,
                report.enqueued,
                report.skipped,
                report.skipped_dead_lettered,
                report.failed
            ),
            (2, 1, 0, 1, 0),
            "tick {tick}"
        );
        let sent = drain(&env, &env.queues.work_url).await;
        assert_eq!(
            messages_per_batch(&sent),
            exactly_once(&["dl-01".into()]),
            "tick {tick}"
        );
    }
    assert_eq!(depth(&env, &env.queues.dead_letter_url).await.visible, 1);

    // status lists it, in the report, the JSON and the table.
    now += Duration::minutes(1);
    let report = status(&status_settings(&env), &services(&env), now)
        .await
        .unwrap();
    assert_eq!(
        report.dead_lettered,
        [DeadLetteredBatch {
            batch_id: "dl-00".into(),
            reason: "openai_batch_not_found".into(),
            dead_lettered_at: rfc3339(dead_lettered_at),
            age_seconds: (now - dead_lettered_at).num_seconds() as u64,
        }]
    );
    let mut out = Vec::new();
    let json = CommandSettings::Status {
        settings: status_settings(&env),
        json: true,
    };
    run_command(&json, &services(&env), &mut out).await.unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["dead_lettered"][0]["batch_id"], "dl-00");
    assert_eq!(v["dead_lettered"][0]["reason"], "openai_batch_not_found");
    assert_eq!(
        v["dead_lettered"][0]["dead_lettered_at"],
        "2025-06-21T12:01:00.000Z"
    );
    let mut out = Vec::new();
    let table = CommandSettings::Status {
        settings: status_settings(&env),
        json: false,
    };
    run_command(&table, &services(&env), &mut out)
        .await
        .unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("dead-lettered batches: 1 (not enqueued until replay-dlq moves them back)\n  dl-00  2025-06-21T12:01:00.000Z ("),
        "{text}"
    );
    assert!(text.contains("ago)  openai_batch_not_found\n"), "{text}");

    // A dry run leaves the mark: the next tick still skips the batch.
    let dry = replay_at(
        &ReplaySettings {
            dry_run: true,
            ..replay_settings(&env)
        },
        &services(&env),
        now,
    )
    .await
    .unwrap();
    assert_eq!((dry.moved.len(), dry.marks_cleared), (1, 1));
    assert!(dry.moved[0].mark_cleared);
    let tick = enqueue(&settings, &services(&env), now).await.unwrap();
    assert_eq!(tick.skipped_dead_lettered, 1);
    assert_eq!(depth(&env, &env.queues.dead_letter_url).await.visible, 1);

    // The replay brings it back once, as a new chain, and clears the mark.
    let replayed_at = now;
    let report = replay_at(&replay_settings(&env), &services(&env), replayed_at)
        .await
        .unwrap();
    assert_eq!(report.exit_code(), 0);
    assert_eq!((report.moved.len(), report.marks_cleared), (1, 1));
    assert_eq!(report.moved[0].batch_id.as_deref(), Some("dl-00"));
    assert_eq!(report.moved[0].reason, "openai_batch_not_found");
    let state = env.store.fleet_state("dl-00").await.unwrap();
    assert_eq!(state.dead_letter, None);
    assert_eq!(
        state.scheduled_until_ms,
        Some(replayed_at.timestamp_millis() + REPLAY_SCHEDULE_HORIZON_SECONDS as i64 * 1000)
    );
    let back = drain(&env, &env.queues.work_url).await;
    assert_eq!(messages_per_batch(&back), exactly_once(&["dl-00".into()]));
    let m = BatchMessage::parse(&back[0].0).unwrap();
    assert_eq!((m.replays, m.checks), (1, 0));
    assert_eq!(
        m.chain, state.chain,
        "the replayed message is the live chain"
    );
    assert_eq!(depth(&env, &env.queues.dead_letter_url).await.total(), 0);
    let again = replay_at(&replay_settings(&env), &services(&env), replayed_at)
        .await
        .unwrap();
    assert_eq!((again.moved.len(), again.marks_cleared), (0, 0));
    let report = status(&status_settings(&env), &services(&env), now)
        .await
        .unwrap();
    assert!(report.dead_lettered.is_empty());

    // The next ticks treat it like any batch: skipped while its message may wait (the
    // replay's marker), enqueued again, as a newer chain, once the horizon has passed.
    let tick = enqueue(
        &settings,
        &services(&env),
        replayed_at + Duration::minutes(1),
    )
    .await
    .unwrap();
    assert_eq!(
        (tick.enqueued, tick.skipped, tick.skipped_dead_lettered),
        (0, 2, 0)
    );
    let later = replayed_at + horizon + Duration::minutes(1);
    let tick = enqueue(&settings, &services(&env), later).await.unwrap();
    assert_eq!(
        (tick.enqueued, tick.skipped, tick.skipped_dead_lettered),
        (2, 0, 0)
    );
    let sent = drain(&env, &env.queues.work_url).await;
    assert_eq!(
        messages_per_batch(&sent),
        exactly_once(&["dl-00".into(), "dl-01".into()])
    );
    let newer = env.store.fleet_state("dl-00").await.unwrap().chain;
    assert_ne!(newer, m.chain);
}

#[tokio::test]
async fn replay_clears_only_the_marks_of_the_batches_it_moves() {
    let env = TestEnv::new().await;
    seed_dead_letters(&env).await;
    // A second copy of b1 (a dead-letter queue filled before the marks existed), and marks
    // on b1, b2 and on b9, which has no message on the dead-letter queue.
    let mut copy = BatchMessage::new("b1");
    copy.chain = Some("oldchain".into());
    send_one(
        &env.clients.sqs,
        &env.queues.dead_letter_url,
        &copy.to_body(),
        0,
        &dead_letter_attributes(
            "openai_unavailable",
            "permanent",
            1,
            "2025-06-21T10:00:00.000Z",
        ),
    )
    .await
    .unwrap();
    for id in ["b1", "b2", "b9"] {
        env.store
            .mark_dead_lettered(id, "openai_unavailable", t0().timestamp_millis())
            .await
            .unwrap();
    }

    let only_b1 = ReplaySettings {
        filter: ReplayFilter {
            batch_ids: vec!["b1".into()],
            reason: None,
        },
        ..replay_settings(&env)
    };
    let report = replay_at(&only_b1, &services(&env), t0()).await.unwrap();
    assert_eq!(moved_batches(&report), ["b1", "b1"]);
    assert_eq!(report.marks_cleared, 1);
    assert_eq!(report.moved.iter().filter(|m| m.mark_cleared).count(), 1);
    let b1 = env.store.fleet_state("b1").await.unwrap();
    assert_eq!(b1.dead_letter, None);
    // Each copy went back with its own newer chain; the last one sent is the live one, so
    // the worker deletes the other without any OpenAI call.
    let sent = drain(&env, &env.queues.work_url).await;
    let chains: Vec<Option<String>> = sent
        .iter()
        .map(|(b, _)| BatchMessage::parse(b).unwrap().chain)
        .collect();
    assert_eq!(chains.len(), 2);
    assert_ne!(chains[0], chains[1]);
    assert!(
        chains
            .iter()
            .all(|c| c.is_some() && c.as_deref() != Some("oldchain"))
    );
    assert!(chains.contains(&b1.chain));
    for id in ["b2", "b9"] {
        assert!(
            env.store
                .fleet_state(id)
                .await
                .unwrap()
                .dead_letter
                .is_some()
        );
    }

    // Everything else: b2's mark goes; the body without a batch id moves unchanged and
    // clears nothing; b9's mark stays (nothing of it was moved).
    let mut out = Vec::new();
    let command = CommandSettings::ReplayDlq {
        settings: replay_settings(&env),
        json: false,
    };
    assert_eq!(
        run_command(&command, &services(&env), &mut out)
            .await
            .unwrap(),
        0
    );
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.contains("batch=b2 reason=batch_unknown replays=2 dead-letter mark cleared\n"),
        "{text}"
    );
    assert!(text.contains("dead-letter marks cleared 1\n"), "{text}");
    assert!(
        text.contains("batch=(not a valid message: body unchanged) reason=not_json\n"),
        "{text}"
    );
    assert_eq!(env.store.fleet_state("b2").await.unwrap().dead_letter, None);
    assert!(
        env.store
            .fleet_state("b9")
            .await
            .unwrap()
            .dead_letter
            .is_some()
    );
    let sent = drain(&env, &env.queues.work_url).await;
    assert_eq!(sent.len(), 4);
    assert!(sent.iter().any(|(b, _)| b == "this is not json"));
    assert_eq!(depth(&env, &env.queues.dead_letter_url).await.total(), 0);
}

/// Without the fleet state (here: a table that does not exist) no chain can start: the
/// batches stay on the dead-letter queue, marked, and the run says so and exits 1. The body
/// without a batch id needs no fleet state and still moves.
#[tokio::test]
async fn a_replay_that_cannot_start_the_chain_leaves_the_message() {
    let env = TestEnv::new().await;
    seed_dead_letters(&env).await;
    let broken = Services {
        store: Store::new(env.clients.dynamodb.clone(), "no-such-table"),
        sqs: env.clients.sqs.clone(),
    };
    let report = replay_at(&replay_settings(&env), &broken, t0())
        .await
        .unwrap();
    assert_eq!(report.exit_code(), 1);
    assert_eq!(moved_batches(&report), ["(invalid)"]);
    assert_eq!(report.failed.len(), 4);
    assert!(
        report.failed.iter().all(|f| f
            .error
            .starts_with("could not start a new chain for the batch")),
        "{:?}",
        report.failed
    );
    assert_eq!(report.released, 4);
    let left = drain(&env, &env.queues.dead_letter_url).await;
    assert_eq!(left.len(), 4);
    let sent = drain(&env, &env.queues.work_url).await;
    assert_eq!(bodies(&sent), ["this is not json"]);
}

// ---- status ----

#[tokio::test]
async fn status_counts_batches_and_reads_depths() {
    let env = TestEnv::new().await;
    seed_pending(&env, "st", 3).await; // 3 pending (oldest 3 h before t0), 1 completed
    for (id, s) in [
        ("st-c2", BatchStatus::Completed),
        ("st-f", BatchStatus::Failed),
        ("st-x", BatchStatus::Expired),
    ] {
        env.store
            .put_raw(summary(id, s, t0()).to_item())
            .await
            .unwrap();
    }
    for body in [
        r#"{"v":1,"batch_id":"st-00"}"#,
        r#"{"v":1,"batch_id":"st-01"}"#,
    ] {
        send_one(&env.clients.sqs, &env.queues.work_url, body, 0, &[])
            .await
            .unwrap();
    }
    send_one(
        &env.clients.sqs,
        &env.queues.work_url,
        r#"{"v":1,"batch_id":"st-02"}"#,
        600,
        &[],
    )
    .await
    .unwrap();
    send_one(
        &env.clients.sqs,
        &env.queues.dead_letter_url,
        "poison",
        0,
        &[],
    )
    .await
    .unwrap();
    // Marks: only pending batches are listed (a completed one is no longer skipped by anyone).
    for (id, minutes) in [("st-01", 20), ("st-00", 10), ("st-c2", 5)] {
        let at = t0() + Duration::minutes(minutes);
        env.store
            .mark_dead_lettered(id, "batch_unknown", at.timestamp_millis())
            .await
            .unwrap();
    }
    let settings = status_settings(&env);
    let now = t0() + Duration::minutes(30);
    let report = status(&settings, &services(&env), now).await.unwrap();
    let expected: Vec<(&str, u64)> = vec![
        ("CANCELING", 0),
        ("CANCELLED", 0),
        ("COMPLETED", 2),
        ("EXPIRED", 1),
        ("FAILED", 1),
        ("FINALIZING", 0),
        ("IN_PROGRESS", 0),
        ("PENDING", 3),
        ("VALIDATING", 0),
    ];
    let got: Vec<(&str, u64)> = report
        .batches
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(report.total_batches, 7);
    assert_eq!(
        report.work_queue,
        QueueDepth {
            visible: 2,
            in_flight: 0,
            delayed: 1
        }
    );
    assert_eq!(report.dead_letter_queue.map(|d| d.visible), Some(1));
    let oldest = report.oldest_pending.as_ref().unwrap();
    assert_eq!(oldest.batch_id, "st-02");
    assert_eq!(oldest.age_seconds, 3 * 3600 + 30 * 60);
    let marked: Vec<(&str, u64)> = report
        .dead_lettered
        .iter()
        .map(|d| (d.batch_id.as_str(), d.age_seconds))
        .collect();
    assert_eq!(marked, [("st-00", 20 * 60), ("st-01", 10 * 60)]);

    let mut out = Vec::new();
    let command = CommandSettings::Status {
        settings: settings.clone(),
        json: true,
    };
    assert_eq!(
        run_command(&command, &services(&env), &mut out)
            .await
            .unwrap(),
        0
    );
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["batches"]["PENDING"], 3);
    assert_eq!(v["work_queue"]["visible"], 2);
    assert_eq!(v["work_queue"]["delayed"], 1);
    assert_eq!(v["dead_letter_queue"]["visible"], 1);
    assert_eq!(v["oldest_pending"]["batch_id"], "st-02");

    let mut out = Vec::new();
    let command = CommandSettings::Status {
        settings,
        json: false,
    };
    assert_eq!(
        run_command(&command, &services(&env), &mut out)
            .await
            .unwrap(),
        0
    );
    let text = String::from_utf8(out).unwrap();
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().eq(["PENDING", "3"])),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().eq(["work", "2", "0", "1"])),
        "{text}"
    );
    assert!(text.contains("oldest pending batch: "), "{text}");
    assert!(text.contains("dead-lettered batches: 2 "), "{text}");
}

// ---- the binary ----

/// Runs the binary with exactly `env` (nothing inherited, so no AWS or fleet variable of the
/// developer's shell leaks in).
fn run_producer(args: &[&str], env: &[(&str, &str)]) -> Output {
    process::run("producer", args, env.iter().copied())
}

const GOOD: [(&str, &str); 3] = [
    ("DYNAMODB_TABLE_NAME", "receipts"),
    ("QUEUE_URL", "http://127.0.0.1:1/123/work"),
    ("DEAD_LETTER_QUEUE_URL", "http://127.0.0.1:1/123/dlq"),
];

type Vars = Vec<(&'static str, &'static str)>;

fn with(changes: &[(&'static str, Option<&'static str>)]) -> Vars {
    let mut env: Vec<_> = GOOD.to_vec();
    for (k, v) in changes {
        env.retain(|(name, _)| name != k);
        if let Some(v) = v {
            env.push((k, v));
        }
    }
    env
}

#[test]
fn bad_configuration_or_usage_exits_64_naming_it() {
    let cases: Vec<(Vec<&str>, Vars, &str)> = vec![
        (
            vec!["enqueue"],
            with(&[("DYNAMODB_TABLE_NAME", None)]),
            "DYNAMODB_TABLE_NAME",
        ),
        (
            vec!["status"],
            with(&[("QUEUE_URL", Some("not a url"))]),
            "QUEUE_URL=\"not a url\"",
        ),
        (
            vec!["enqueue"],
            with(&[("SCHEDULE_HORIZON_SECONDS", Some("0"))]),
            "SCHEDULE_HORIZON_SECONDS=0",
        ),
        (
            vec!["enqueue"],
            with(&[("LOG_FORMAT", Some("xml"))]),
            "LOG_FORMAT",
        ),
        (
            vec!["enqueue"],
            with(&[("PUSHGATEWAY_URL", Some("pgw"))]),
            "PUSHGATEWAY_URL",
        ),
        (vec!["replay-dlq", "--max", "0"], with(&[]), "--max"),
        (vec!["replay-dlq", "--max", "ten"], with(&[]), "--max"),
        (vec!["replay-dlq", "--rate", "0"], with(&[]), "--rate"),
        (
            vec!["replay-dlq"],
            with(&[("DEAD_LETTER_QUEUE_URL", None)]),
            "DEAD_LETTER_QUEUE_URL",
        ),
        (
            vec!["replay-dlq", "--bulk", "--dry-run"],
            with(&[]),
            "--dry-run",
        ),
        (vec!["enqueue", "--frobnicate"], with(&[]), "--frobnicate"),
        (vec!["launch"], with(&[]), "launch"),
        (vec![], with(&[]), "Usage"),
        // No region anywhere (IMDS off so the chain gives up at once): nothing can be called.
        (
            vec!["status"],
            with(&[("AWS_EC2_METADATA_DISABLED", Some("true"))]),
            "AWS_REGION",
        ),
    ];
    for (args, env, needle) in cases {
        let out = run_producer(&args, &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{args:?}: {needle:?} not in {stderr}"
        );
        assert!(out.stdout.is_empty(), "{args:?} printed to stdout");
    }
}

#[test]
fn help_exits_0_and_names_the_variables() {
    let out = run_producer(&["--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for name in [
        "DYNAMODB_TABLE_NAME",
        "QUEUE_URL",
        "DEAD_LETTER_QUEUE_URL",
        "enqueue",
        "replay-dlq",
        "status",
    ] {
        assert!(help.contains(name), "{name} not in --help");
    }
    let out = run_producer(&["replay-dlq", "--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--dry-run"));
}

#[tokio::test]
async fn the_binary_runs_against_moto() {
    let env = TestEnv::new().await;
    seed_pending(&env, "bin", 2).await;
    let mut vars: HashMap<String, String> = env.process_vars().into_iter().collect();
    vars.insert("LOG_FORMAT".into(), "text".into());
    vars.insert("RUST_LOG".into(), "warn".into());
    let run = |args: &[&str]| process::run("producer", args, &vars);
    let out = run(&["enqueue", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tick: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (tick["listed"].as_u64(), tick["enqueued"].as_u64()),
        (Some(2), Some(2))
    );
    let out = run(&["enqueue"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("enqueued 0, skipped 2"));

    let out = run(&["status", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["batches"]["PENDING"], 2);
    assert_eq!(s["work_queue"]["visible"], 2);
    assert_eq!(s["dead_lettered"], serde_json::json!([]));

    let out = run(&["replay-dlq", "--bulk"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not support StartMessageMoveTask"));
}
