//! The binary's contract with operators (docs/spec/interface.md) that needs no AWS: help, usage errors
//! and configuration errors exit 64 before anything is done, and secrets are never printed.
//! (Being an integration test of this package also makes `cargo test` build the binary that
//! the fleet's end-to-end tests in `tests/` drive.)

// This target shares its package's dependency list; unused ones are caught on the library.
#![allow(unused_crate_dependencies)]

use std::process::{Command, Output};

const SECRET: &str = "sk-proj-VERYSECRET0123456789";

fn worker(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_worker"));
    cmd.env_clear().args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("worker runs")
}

fn valid_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("DYNAMODB_TABLE_NAME", "receipts"),
        ("QUEUE_URL", "http://127.0.0.1:9/123456789012/work"),
        ("OPENAI_API_KEY", SECRET),
        ("PINECONE_INDEX_HOST", "http://127.0.0.1:9"),
        ("PINECONE_API_KEY", SECRET),
    ]
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_names_every_variable_and_no_secret() {
    let out = worker(&["--help"], &valid_env());
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for name in [
        "DYNAMODB_TABLE_NAME",
        "QUEUE_URL",
        "DEAD_LETTER_QUEUE_URL",
        "OPENAI_BASE_URL",
        "OPENAI_API_KEY",
        "PINECONE_INDEX_HOST",
        "PINECONE_API_KEY",
        "PINECONE_NAMESPACE",
        "METRICS_ADDR",
        "MAX_IN_FLIGHT",
        "VISIBILITY_TIMEOUT_SECONDS",
        "HEARTBEAT_SECONDS",
        "RECHECK_MIN_SECONDS",
        "RECHECK_MAX_SECONDS",
        "MESSAGE_DEADLINE_SECONDS",
        "STUCK_VALIDATING_SECONDS",
        "SHUTDOWN_GRACE_SECONDS",
        "LOG_FORMAT",
        "RUST_LOG",
    ] {
        assert!(help.contains(name), "{name} missing from --help");
    }
    assert!(help.contains("--exit-when-idle"));
    assert!(help.contains("apply-batch"));
    assert!(!help.contains("VERYSECRET"), "{help}");
    let out = worker(&["apply-batch", "--help"], &valid_env());
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("--json"));
}

#[test]
fn unknown_flags_and_commands_are_usage_errors() {
    for args in [
        &["--no-such-flag"][..],
        &["frobnicate"],
        &["apply-batch"],
        &["--max-in-flight"],
    ] {
        let out = worker(args, &valid_env());
        assert_eq!(
            out.status.code(),
            Some(64),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn bad_configuration_exits_64_naming_every_problem() {
    let mut env = valid_env();
    env.retain(|(k, _)| *k != "PINECONE_INDEX_HOST");
    env.extend([
        ("MAX_IN_FLIGHT", "0"),
        ("LOG_FORMAT", "xml"),
        ("RECHECK_MIN_SECONDS", "900"),
        ("RECHECK_MAX_SECONDS", "60"),
        ("SHUTDOWN_GRACE_SECONDS", "soon"),
    ]);
    let out = worker(&[], &env);
    assert_eq!(out.status.code(), Some(64));
    assert!(out.stdout.is_empty());
    let err = text(&out.stderr);
    for needle in [
        "PINECONE_INDEX_HOST is required but not set",
        "MAX_IN_FLIGHT=0 is out of range",
        "LOG_FORMAT=\"xml\"",
        "RECHECK_MIN_SECONDS=900 is above RECHECK_MAX_SECONDS=60",
        "SHUTDOWN_GRACE_SECONDS=\"soon\" is not a whole number",
    ] {
        assert!(err.contains(needle), "{needle:?} missing from:\n{err}");
    }
    assert!(!err.contains("VERYSECRET"), "{err}");
}

#[test]
fn a_bad_flag_value_is_a_configuration_error_too() {
    let out = worker(&["--max-in-flight", "lots"], &valid_env());
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("MAX_IN_FLIGHT=\"lots\" is not a whole number"));
    let out = worker(&[], &[]);
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("OPENAI_API_KEY is required but not set"));
}
