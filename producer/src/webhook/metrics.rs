//! The receiver's metrics, on its own `/metrics`.
//!
//! The recorder belongs to one [`super::Receiver`] and is never installed globally: the
//! producer's other commands render theirs locally too ([`crate::push`]), and tests run several
//! receivers in one process without their counts adding up.

use metrics::{Unit, counter, describe_counter, describe_histogram, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

/// Deliveries by event type (`batch.completed`, `batch.failed`, `batch.expired`,
/// `batch.cancelled`, `other`; `unknown` when the delivery was refused before its type was
/// known) and outcome (`enqueued`, `duplicate`, `ignored_type`, `unknown_batch`,
/// `not_pending`, `dead_lettered`, `missing_header`, `bad_timestamp`, `stale_timestamp`,
/// `bad_signature`, `too_large`, `bad_body`, `bad_json`, `bad_event`, `error`).
pub const WEBHOOKS_TOTAL: &str = "fleet_webhooks_total";
/// Time from the request's start to its answer, by outcome class (`ok`, `rejected`, `error`).
pub const HANDLING_SECONDS: &str = "fleet_webhook_handling_seconds";

/// Milliseconds are the norm (a few DynamoDB and SQS calls); the tail shows AWS retries.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub struct Metrics {
    recorder: PrometheusRecorder,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(HANDLING_SECONDS.to_owned()), BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        metrics::with_local_recorder(&recorder, || {
            describe_counter!(
                WEBHOOKS_TOTAL,
                "OpenAI webhook deliveries, by type and outcome."
            );
            describe_histogram!(
                HANDLING_SECONDS,
                Unit::Seconds,
                "Time to answer a webhook delivery."
            );
        });
        Metrics { recorder }
    }
}

impl Metrics {
    pub fn count(&self, event_type: &'static str, outcome: &'static str) {
        metrics::with_local_recorder(&self.recorder, || {
            counter!(WEBHOOKS_TOTAL, "type" => event_type, "outcome" => outcome).increment(1);
        });
    }

    pub fn observe(&self, class: &'static str, seconds: f64) {
        metrics::with_local_recorder(&self.recorder, || {
            histogram!(HANDLING_SECONDS, "class" => class).record(seconds);
        });
    }

    pub fn render(&self) -> String {
        let handle = self.recorder.handle();
        handle.run_upkeep();
        handle.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_render_by_type_and_outcome() {
        let m = Metrics::default();
        m.count("batch.completed", "enqueued");
        m.count("batch.completed", "enqueued");
        m.count("unknown", "bad_signature");
        m.observe("ok", 0.003);
        let page = m.render();
        assert!(
            page.contains(r#"fleet_webhooks_total{type="batch.completed",outcome="enqueued"} 2"#),
            "{page}"
        );
        assert!(page.contains(r#"fleet_webhooks_total{type="unknown",outcome="bad_signature"} 1"#));
        assert!(
            page.contains(r#"fleet_webhook_handling_seconds_bucket{class="ok",le="0.005"} 1"#),
            "{page}"
        );
        // Another receiver's counts are its own.
        assert!(!Metrics::default().render().contains("enqueued"));
    }
}
