//! The worker's metric names (the deploy's dashboards and alerts use exactly these), their
//! descriptions, and the Prometheus recorder.
//!
//! Metrics go through the `metrics` facade's global recorder, which the shared clients
//! (OpenAI, Pinecone, store) also report to, so one `/metrics` page shows them all.

use std::sync::OnceLock;

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const MESSAGES: &str = "fleet_messages_total";
pub const BATCH_CHECKS: &str = "fleet_batch_checks_total";
pub const MESSAGE_HANDLING_SECONDS: &str = "fleet_message_handling_seconds";
pub const APPLY_SECONDS: &str = "fleet_apply_seconds";
pub const LABELS: &str = "fleet_labels_total";
pub const SKIPPED_RESULTS: &str = "fleet_skipped_results_total";
pub const DEAD_LETTER_SENDS: &str = "fleet_dead_letter_sends_total";
pub const IN_FLIGHT: &str = "fleet_in_flight_messages";
pub const LEASE_CONFLICTS: &str = "fleet_lease_conflicts_total";
pub const STUCK_BATCHES: &str = "fleet_stuck_batches_total";
pub const MESSAGE_ERRORS: &str = "fleet_message_errors_total";
pub const LOOP_HEARTBEAT: &str = "fleet_worker_loop_heartbeat_timestamp_seconds";
pub const RECEIVE_ERRORS: &str = "fleet_receive_errors_total";
pub const HEARTBEAT_ERRORS: &str = "fleet_heartbeat_errors_total";
pub const LEASES_LOST: &str = "fleet_leases_lost_total";
pub const BATCHES_CANCELLED: &str = "fleet_batches_cancelled_total";
pub const DEPLOYMENT_ERRORS: &str = "fleet_deployment_errors_total";
pub const SUPERSEDED: &str = "fleet_superseded_messages_total";

/// Message handling: most take well under a second (one check), applies take seconds to
/// minutes, and the deadline defaults to 300 s.
const HANDLING_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// Applies: seconds for small batches, minutes for 50,000-request ones.
const APPLY_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// A recorder with the histograms as histograms (buckets), not summaries.
pub fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(MESSAGE_HANDLING_SECONDS.to_owned()),
            HANDLING_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(APPLY_SECONDS.to_owned()), APPLY_BUCKETS)
        })
        .expect("bucket lists are non-empty")
}

/// Installs the global recorder once per process and returns its handle; later calls (tests
/// running several workers in one process) share it. If another recorder was installed
/// first, the handle renders an empty page rather than failing the worker.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = match builder().install_recorder() {
                Ok(handle) => handle,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed; /metrics will be empty");
                    builder().build_recorder().handle()
                }
            };
            describe();
            handle
        })
        .clone()
}

fn describe() {
    describe_counter!(MESSAGES, "Messages handled, by outcome.");
    describe_counter!(
        BATCH_CHECKS,
        "OpenAI batch status checks, by the status seen."
    );
    describe_histogram!(
        MESSAGE_HANDLING_SECONDS,
        Unit::Seconds,
        "Time from receiving a message to its outcome."
    );
    describe_histogram!(
        APPLY_SECONDS,
        Unit::Seconds,
        "Time to apply a finished batch."
    );
    describe_counter!(LABELS, "Label verdicts applied, by verdict.");
    describe_counter!(SKIPPED_RESULTS, "Output results skipped, by reason.");
    describe_counter!(
        DEAD_LETTER_SENDS,
        "Messages sent to the dead-letter queue, by reason."
    );
    describe_gauge!(IN_FLIGHT, "Messages being handled by this worker.");
    describe_counter!(
        LEASE_CONFLICTS,
        "Finished batches whose lease another worker held."
    );
    describe_counter!(
        STUCK_BATCHES,
        "Checks that found a batch validating for too long."
    );
    describe_counter!(MESSAGE_ERRORS, "Failed message handlings, by class.");
    describe_gauge!(
        LOOP_HEARTBEAT,
        Unit::Seconds,
        "Unix time of the receive loop's last turn."
    );
    describe_counter!(RECEIVE_ERRORS, "Failed ReceiveMessage calls.");
    describe_counter!(
        HEARTBEAT_ERRORS,
        "Failed visibility extensions or lease renewals, by kind."
    );
    describe_counter!(
        LEASES_LOST,
        "Applies stopped because their lease was taken over or not renewed in time."
    );
    describe_counter!(
        DEPLOYMENT_ERRORS,
        "Errors of the deployment (rejected key, access denied, missing table or queue, billing), by cause; they never dead-letter a batch."
    );
    describe_counter!(
        SUPERSEDED,
        "Stale copies of a batch's chain of messages, deleted without work."
    );
    describe_counter!(
        BATCHES_CANCELLED,
        "Batches cancelled at OpenAI long after their expiry."
    );
}

/// Parses a Prometheus text page into `(name{labels}, value)` pairs, for tests and the
/// benchmark. Labels are kept in the order the exporter prints them.
pub fn parse_text(page: &str) -> Vec<(String, f64)> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_as_histograms() {
        let recorder = builder().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!(MESSAGE_HANDLING_SECONDS).record(0.3);
            metrics::histogram!(APPLY_SECONDS).record(2.0);
            metrics::counter!(MESSAGES, "outcome" => "applied").increment(2);
        });
        let page = handle.render();
        let series = parse_text(&page);
        let get = |name: &str| {
            series
                .iter()
                .find(|(s, _)| s == name)
                .map(|(_, v)| *v)
                .unwrap_or_else(|| panic!("{name} missing in\n{page}"))
        };
        assert_eq!(
            get("fleet_message_handling_seconds_bucket{le=\"0.25\"}"),
            0.0
        );
        assert_eq!(
            get("fleet_message_handling_seconds_bucket{le=\"0.5\"}"),
            1.0
        );
        assert_eq!(get("fleet_message_handling_seconds_count"), 1.0);
        assert_eq!(get("fleet_apply_seconds_bucket{le=\"2.5\"}"), 1.0);
        assert_eq!(get("fleet_messages_total{outcome=\"applied\"}"), 2.0);
    }
}
