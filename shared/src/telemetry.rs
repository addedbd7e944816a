//! Logging set-up shared by the binaries: JSON lines (default) or text on stderr, filtered by
//! `RUST_LOG`. Stdout stays free for command output (summaries, `--json`).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber; a bad filter falls back to `info` with a warning.
pub fn init(format: LogFormat, filter: &str) {
    let (env_filter, bad) = match EnvFilter::try_new(filter) {
        Ok(f) => (f, None),
        Err(e) => (EnvFilter::new("info"), Some(e.to_string())),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
    if result.is_ok()
        && let Some(e) = bad
    {
        tracing::warn!(filter, error = %e, "RUST_LOG is not a valid filter; using info");
    }
}
