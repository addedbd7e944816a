//! Tests of [`super`] (settings.rs).
use std::collections::HashMap;

use fleet_shared::config::LogFormat;
use secrecy::ExposeSecret;

use super::*;

fn base() -> HashMap<String, String> {
    [
        ("DYNAMODB_TABLE_NAME", "receipts"),
        ("QUEUE_URL", "http://localhost:5055/123/work"),
        ("OPENAI_API_KEY", "sk-test-SECRET"),
        ("PINECONE_INDEX_HOST", "http://127.0.0.1:9999"),
        ("PINECONE_API_KEY", "pc-test-SECRET"),
        ("HOSTNAME", "worker-7f9c"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn with(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env = base();
    for (k, v) in pairs {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    env
}

fn read(env: &HashMap<String, String>) -> Result<Settings, ConfigError> {
    Settings::read(&SettingFlags::default(), false, env)
}

fn problems(env: &HashMap<String, String>) -> String {
    read(env).unwrap_err().to_string()
}

#[test]
fn defaults() {
    let s = read(&base()).unwrap();
    assert_eq!(s.openai.base_url, "https://api.openai.com/v1");
    assert_eq!(s.openai.api_key.expose_secret(), "sk-test-SECRET");
    assert_eq!(s.pinecone.namespace, "words");
    assert!((s.pinecone.updates_per_second - 90.0).abs() < f64::EPSILON);
    assert_eq!(s.metrics_addr, "0.0.0.0:9090".parse().unwrap());
    assert_eq!(s.max_in_flight, 16);
    assert_eq!(s.max_concurrent_applies, 2);
    assert_eq!(s.download_budget_bytes, 1536 << 20);
    assert_eq!(s.unready_after_deployment_error, Duration::from_secs(60));
    assert_eq!(s.visibility_timeout_seconds, 120);
    assert_eq!(s.heartbeat, Duration::from_secs(40));
    assert_eq!(
        s.recheck,
        RecheckBounds {
            min_seconds: 60,
            max_seconds: 900
        }
    );
    assert_eq!(s.message_deadline, Duration::from_secs(300));
    assert_eq!(s.stuck_validating, Duration::from_secs(300));
    assert_eq!(s.shutdown_grace, Duration::from_secs(25));
    assert_eq!(s.common.log_format, LogFormat::Json);
    assert_eq!(s.common.dead_letter_queue_url, None);
    assert!(s.worker_id.starts_with("worker-7f9c-"), "{}", s.worker_id);
    assert_eq!(s.worker_id.len(), "worker-7f9c-".len() + 6);
    assert_eq!(s.lease_ttl_ms(), 120_000);
}

#[test]
fn two_workers_on_one_pod_name_get_distinct_ids() {
    let a = read(&base()).unwrap().worker_id;
    let b = read(&base()).unwrap().worker_id;
    assert_ne!(a, b);
}

#[test]
fn the_pacing_clock_runs_at_the_wall_clock_unless_simulated() {
    let s = read(&base()).unwrap();
    assert!((s.pinecone.pacing_time_scale - 1.0).abs() < f64::EPSILON);
    assert!((s.pinecone.fetches_per_second - 50.0).abs() < f64::EPSILON);
    let s = read(&with(&[
        ("SIMULATION_TIME_SCALE", "20"),
        ("PINECONE_FETCHES_PER_SECOND", "1000"),
    ]))
    .unwrap();
    assert!((s.pinecone.pacing_time_scale - 20.0).abs() < f64::EPSILON);
    assert!((s.pinecone.fetches_per_second - 1000.0).abs() < f64::EPSILON);
}

#[test]
fn default_heartbeat_is_a_third_of_the_visibility_capped() {
    let s = read(&with(&[("VISIBILITY_TIMEOUT_SECONDS", "30")])).unwrap();
    assert_eq!(s.heartbeat, Duration::from_secs(10));
    let s = read(&with(&[("VISIBILITY_TIMEOUT_SECONDS", "43200")])).unwrap();
    assert_eq!(s.heartbeat, Duration::from_secs(300));
}

#[test]
fn flags_win_over_the_environment() {
    let flags = SettingFlags {
        max_in_flight: Some("3".into()),
        recheck_min_seconds: Some("1".into()),
        recheck_max_seconds: Some("2".into()),
        ..SettingFlags::default()
    };
    let s = Settings::read(&flags, true, &with(&[("MAX_IN_FLIGHT", "50")])).unwrap();
    assert_eq!(s.max_in_flight, 3);
    assert_eq!(s.recheck.max_seconds, 2);
    assert!(s.exit_when_idle);
    let bad = SettingFlags {
        max_in_flight: Some("many".into()),
        ..SettingFlags::default()
    };
    let err = Settings::read(&bad, false, &base())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("MAX_IN_FLIGHT=\"many\" is not a whole number"),
        "{err}"
    );
}

#[test]
fn each_bad_value_is_named() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("MAX_IN_FLIGHT", "0")],
            "MAX_IN_FLIGHT=0 is out of range (1..=1000)",
        ),
        (
            &[("MAX_IN_FLIGHT", "1001")],
            "MAX_IN_FLIGHT=1001 is out of range",
        ),
        (
            &[("MAX_IN_FLIGHT", "ten")],
            "MAX_IN_FLIGHT=\"ten\" is not a whole number",
        ),
        (
            &[("MAX_IN_FLIGHT", "-1")],
            "MAX_IN_FLIGHT=\"-1\" is not a whole number",
        ),
        (
            &[("MAX_CONCURRENT_APPLIES", "0")],
            "MAX_CONCURRENT_APPLIES=0 is out of range (1..=64)",
        ),
        (
            &[("DOWNLOAD_BUDGET_MB", "0")],
            "DOWNLOAD_BUDGET_MB=0 is out of range",
        ),
        (
            &[("DOWNLOAD_BUDGET_MB", "1.5")],
            "DOWNLOAD_BUDGET_MB=\"1.5\" is not a whole number",
        ),
        (
            &[("DEPLOYMENT_UNREADY_SECONDS", "soon")],
            "DEPLOYMENT_UNREADY_SECONDS=\"soon\" is not a whole number",
        ),
        (
            &[("LOG_FORMAT", "xml")],
            "LOG_FORMAT=\"xml\": expected json or text",
        ),
        (
            &[
                ("RECHECK_MIN_SECONDS", "120"),
                ("RECHECK_MAX_SECONDS", "60"),
            ],
            "RECHECK_MIN_SECONDS=120 is above RECHECK_MAX_SECONDS=60",
        ),
        (
            &[("RECHECK_MAX_SECONDS", "86401")],
            "RECHECK_MAX_SECONDS=86401 is out of range",
        ),
        (
            &[("RECHECK_MIN_SECONDS", "1.5")],
            "RECHECK_MIN_SECONDS=\"1.5\" is not a whole number",
        ),
        (
            &[("VISIBILITY_TIMEOUT_SECONDS", "1")],
            "VISIBILITY_TIMEOUT_SECONDS=1 is out of range (2..=43200)",
        ),
        (
            &[
                ("VISIBILITY_TIMEOUT_SECONDS", "30"),
                ("HEARTBEAT_SECONDS", "30"),
            ],
            "HEARTBEAT_SECONDS=30 must be below VISIBILITY_TIMEOUT_SECONDS=30",
        ),
        (
            &[("RETRY_MIN_SECONDS", "60"), ("RETRY_MAX_SECONDS", "10")],
            "RETRY_MIN_SECONDS=60 is above RETRY_MAX_SECONDS=10",
        ),
        (
            &[("MESSAGE_DEADLINE_SECONDS", "0")],
            "MESSAGE_DEADLINE_SECONDS=0 is out of range",
        ),
        (
            &[("STUCK_VALIDATING_SECONDS", "soon")],
            "STUCK_VALIDATING_SECONDS=\"soon\"",
        ),
        (
            &[("SHUTDOWN_GRACE_SECONDS", "3601")],
            "SHUTDOWN_GRACE_SECONDS=3601 is out of range",
        ),
        (
            &[("METRICS_ADDR", "everywhere")],
            "METRICS_ADDR=\"everywhere\"",
        ),
        (
            &[("OPENAI_BASE_URL", "api.openai.com")],
            "OPENAI_BASE_URL=\"api.openai.com\" is not an http(s) URL",
        ),
        (
            &[("PINECONE_INDEX_HOST", "ftp://x")],
            "PINECONE_INDEX_HOST=\"ftp://x\" is not an http(s) URL",
        ),
        (
            &[("PINECONE_UPDATES_PER_SECOND", "0")],
            "PINECONE_UPDATES_PER_SECOND=0 is out of range",
        ),
        (
            &[("PINECONE_FETCHES_PER_SECOND", "-1")],
            "PINECONE_FETCHES_PER_SECOND=-1 is out of range",
        ),
        (
            &[("SIMULATION_TIME_SCALE", "0.5")],
            "SIMULATION_TIME_SCALE=0.5 is out of range",
        ),
        (
            &[("SIMULATION_TIME_SCALE", "fast")],
            "SIMULATION_TIME_SCALE=\"fast\"",
        ),
        (
            &[("QUEUE_URL", "queue")],
            "QUEUE_URL=\"queue\" is not an http(s) URL",
        ),
    ];
    for (pairs, needle) in cases {
        let text = problems(&with(pairs));
        assert!(
            text.contains(needle),
            "{pairs:?}: expected {needle:?} in {text}"
        );
    }
}

#[test]
fn every_missing_required_setting_is_named_at_once() {
    let err = read(&HashMap::new()).unwrap_err();
    for name in [
        "DYNAMODB_TABLE_NAME",
        "QUEUE_URL",
        "OPENAI_API_KEY",
        "PINECONE_INDEX_HOST",
        "PINECONE_API_KEY",
    ] {
        assert!(
            err.0.contains(&format!("{name} is required but not set")),
            "{name}: {err}"
        );
    }
    assert_eq!(err.0.len(), 5, "{err}");
}

#[test]
fn secrets_never_appear_in_errors_or_debug_output() {
    let text = problems(&with(&[("MAX_IN_FLIGHT", "0")]));
    assert!(!text.contains("SECRET"), "{text}");
    let s = read(&base()).unwrap();
    let debug = format!("{s:?}");
    assert!(!debug.contains("SECRET"), "{debug}");
}

#[test]
fn a_blank_value_counts_as_unset() {
    let s = read(&with(&[
        ("MAX_IN_FLIGHT", " "),
        ("DEAD_LETTER_QUEUE_URL", ""),
    ]))
    .unwrap();
    assert_eq!(s.max_in_flight, 16);
    assert_eq!(s.common.dead_letter_queue_url, None);
}
