//! Metrics of a tick, pushed to a Prometheus Pushgateway: the producer exits after each tick,
//! so nothing would be there to scrape.
//!
//! The exposition is rendered by metrics-exporter-prometheus from a recorder local to one
//! render (never installed globally), so repeated ticks in one process (tests, the demo) do
//! not add up, and the values are exactly the report's.
//!
//! A successful tick replaces the whole group (`PUT`), a failed one only the metrics it carries
//! (`POST`): it does not carry `fleet_producer_last_success_timestamp_seconds`, so the last
//! success pushed stays in the gateway and an alert on its age keeps working.

use std::time::Duration;

use fleet_shared::queue::QueueDepth;
use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::PrometheusBuilder;

use crate::enqueue::EnqueueReport;

pub const JOB: &str = "fleet_producer";
pub const BATCHES_TOTAL: &str = "fleet_producer_batches_total";
pub const OLDEST_PENDING_AGE: &str = "fleet_producer_oldest_pending_batch_age_seconds";
pub const QUEUE_MESSAGES: &str = "fleet_producer_queue_messages";
pub const LAST_SUCCESS: &str = "fleet_producer_last_success_timestamp_seconds";

const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// The Prometheus text exposition of one tick.
pub fn render_enqueue_metrics(report: &EnqueueReport) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    metrics::with_local_recorder(&recorder, || {
        describe_counter!(
            BATCHES_TOTAL,
            "Pending completion batches seen by the last tick, by what happened to them."
        );
        describe_gauge!(
            OLDEST_PENDING_AGE,
            Unit::Seconds,
            "Age of the oldest pending completion batch (since submission)."
        );
        describe_gauge!(
            QUEUE_MESSAGES,
            "Messages in the work and dead-letter queues after the last tick."
        );
        describe_gauge!(
            LAST_SUCCESS,
            Unit::Seconds,
            "When the last tick that enqueued or skipped every batch ran."
        );
        for (result, n) in [
            ("listed", report.listed),
            ("enqueued", report.enqueued),
            ("skipped", report.skipped),
            ("skipped_dead_lettered", report.skipped_dead_lettered),
            ("failed", report.failed),
            ("bad_item", report.bad_items),
        ] {
            counter!(BATCHES_TOTAL, "result" => result).increment(n);
        }
        gauge!(OLDEST_PENDING_AGE).set(report.oldest_pending_age_seconds.unwrap_or(0) as f64);
        for (queue, depth) in [
            ("work", report.work_queue),
            ("dead_letter", report.dead_letter_queue),
        ] {
            if let Some(d) = depth {
                record_depth(queue, d);
            }
        }
        if report.succeeded() {
            gauge!(LAST_SUCCESS).set(report.started_at_unix as f64);
        }
    });
    recorder.handle().render()
}

fn record_depth(queue: &'static str, d: QueueDepth) {
    for (state, n) in [
        ("visible", d.visible),
        ("in_flight", d.in_flight),
        ("delayed", d.delayed),
    ] {
        gauge!(QUEUE_MESSAGES, "queue" => queue, "state" => state).set(n as f64);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("pushing metrics to {url} failed: {message}")]
    Request { url: String, message: String },
    #[error("the Pushgateway at {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
}

/// `{base}/metrics/job/fleet_producer`.
pub fn push_url(base: &str) -> String {
    format!("{}/metrics/job/{JOB}", base.trim_end_matches('/'))
}

/// Sends `exposition` to the gateway: `replace` uses PUT (the whole group), else POST.
pub async fn push(base: &str, exposition: String, replace: bool) -> Result<(), PushError> {
    let url = push_url(base);
    let client = reqwest::Client::builder()
        .timeout(PUSH_TIMEOUT)
        .build()
        .map_err(|e| PushError::Request {
            url: url.clone(),
            message: e.to_string(),
        })?;
    let request = if replace {
        client.put(&url)
    } else {
        client.post(&url)
    };
    let response = request
        .header("content-type", "text/plain; version=0.0.4")
        .body(exposition)
        .send()
        .await
        .map_err(|e| PushError::Request {
            url: url.clone(),
            message: e.to_string(),
        })?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    Err(PushError::Status {
        url,
        status: status.as_u16(),
        body: body.chars().take(200).collect(),
    })
}

/// Pushes a tick's metrics; a failure is a warning, never a failed tick.
pub async fn push_enqueue_metrics(base: &str, report: &EnqueueReport) {
    let text = render_enqueue_metrics(report);
    match push(base, text, report.succeeded()).await {
        Ok(()) => {
            tracing::debug!(event = "metrics_pushed", url = %push_url(base), "metrics pushed")
        }
        Err(e) => {
            tracing::warn!(event = "metrics_push_failed", error = %e, "could not push metrics")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(failed: u64) -> EnqueueReport {
        EnqueueReport {
            started_at: "2025-06-20T17:03:12.000Z".into(),
            started_at_unix: 1_750_438_992,
            listed: 9 + failed,
            enqueued: 3,
            skipped: 3,
            skipped_dead_lettered: 2,
            failed,
            bad_items: 1,
            failures: Vec::new(),
            bad_item_errors: Vec::new(),
            oldest_pending_age_seconds: Some(4200),
            work_queue: Some(QueueDepth {
                visible: 3,
                in_flight: 2,
                delayed: 1,
            }),
            dead_letter_queue: Some(QueueDepth {
                visible: 4,
                in_flight: 0,
                delayed: 0,
            }),
        }
    }

    fn has_line(text: &str, line: &str) {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in\n{text}"
        );
    }

    #[test]
    fn renders_every_metric_with_the_report_values() {
        let text = render_enqueue_metrics(&report(0));
        has_line(&text, "fleet_producer_batches_total{result=\"listed\"} 9");
        has_line(&text, "fleet_producer_batches_total{result=\"enqueued\"} 3");
        has_line(&text, "fleet_producer_batches_total{result=\"skipped\"} 3");
        has_line(
            &text,
            "fleet_producer_batches_total{result=\"skipped_dead_lettered\"} 2",
        );
        has_line(&text, "fleet_producer_batches_total{result=\"failed\"} 0");
        has_line(&text, "fleet_producer_batches_total{result=\"bad_item\"} 1");
        has_line(
            &text,
            "fleet_producer_oldest_pending_batch_age_seconds 4200",
        );
        has_line(
            &text,
            "fleet_producer_queue_messages{queue=\"work\",state=\"in_flight\"} 2",
        );
        has_line(
            &text,
            "fleet_producer_queue_messages{queue=\"dead_letter\",state=\"visible\"} 4",
        );
        has_line(
            &text,
            "fleet_producer_last_success_timestamp_seconds 1750438992",
        );
        has_line(&text, "# TYPE fleet_producer_batches_total counter");
        has_line(&text, "# TYPE fleet_producer_queue_messages gauge");
    }

    #[test]
    fn a_failed_tick_carries_no_success_time() {
        let text = render_enqueue_metrics(&report(2));
        has_line(&text, "fleet_producer_batches_total{result=\"failed\"} 2");
        assert!(!text.contains(LAST_SUCCESS), "{text}");
    }

    #[test]
    fn renders_are_independent() {
        let _ = render_enqueue_metrics(&report(0));
        let text = render_enqueue_metrics(&report(0));
        has_line(&text, "fleet_producer_batches_total{result=\"enqueued\"} 3");
    }

    #[test]
    fn the_group_url() {
        assert_eq!(
            push_url("http://pgw:9091/"),
            "http://pgw:9091/metrics/job/fleet_producer"
        );
    }
}
