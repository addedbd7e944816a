//! The operators' view: completion batches by status, queue depths, and how long the oldest
//! pending batch has waited since submission.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use fleet_shared::model::BatchStatus;
use fleet_shared::model::time::rfc3339;
use fleet_shared::queue::{QueueDepth, queue_depth};
use serde::Serialize;

use crate::Services;
use crate::enqueue::{age_seconds, human_duration};
use crate::settings::StatusSettings;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OldestPending {
    pub batch_id: String,
    pub submitted_at: String,
    pub age_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    /// Every BatchStatus spelling, zeros included, so scripts can index without checks.
    pub batches: BTreeMap<String, u64>,
    pub total_batches: u64,
    pub work_queue: QueueDepth,
    /// `None` when DEAD_LETTER_QUEUE_URL is not set.
    pub dead_letter_queue: Option<QueueDepth>,
    pub oldest_pending: Option<OldestPending>,
    /// Pending items that are not valid BatchSummaries (left out of `oldest_pending`).
    pub bad_pending_items: u64,
}

pub async fn status(
    settings: &StatusSettings,
    services: &Services,
    now: DateTime<Utc>,
) -> anyhow::Result<StatusReport> {
    let counts = futures::future::try_join_all(
        BatchStatus::ALL
            .iter()
            .map(|s| services.store.count_completion_batches(*s)),
    )
    .await?;
    let batches: BTreeMap<String, u64> = BatchStatus::ALL
        .iter()
        .zip(counts)
        .map(|(s, n)| (s.as_str().to_owned(), n))
        .collect();
    let work_queue = queue_depth(&services.sqs, &settings.queue_url).await?;
    let dead_letter_queue = match &settings.dead_letter_queue_url {
        Some(url) => Some(queue_depth(&services.sqs, url).await?),
        None => None,
    };
    let pending = services.store.pending_completion_batches().await?;
    let bad_pending_items = pending.iter().filter(|p| p.is_err()).count() as u64;
    let oldest_pending = pending
        .into_iter()
        .filter_map(Result::ok)
        .min_by_key(|s| s.submitted_at)
        .map(|s| OldestPending {
            age_seconds: age_seconds(s.submitted_at, now),
            submitted_at: rfc3339(s.submitted_at),
            batch_id: s.batch_id,
        });
    Ok(StatusReport {
        total_batches: batches.values().sum(),
        batches,
        work_queue,
        dead_letter_queue,
        oldest_pending,
        bad_pending_items,
    })
}

/// A table for people.
pub fn render_text(report: &StatusReport) -> String {
    let mut out = String::from("completion batches\n");
    for s in BatchStatus::ALL {
        let n = report.batches.get(s.as_str()).copied().unwrap_or(0);
        out.push_str(&format!("  {:<12} {n:>8}\n", s.as_str()));
    }
    out.push_str(&format!("  {:<12} {:>8}\n", "total", report.total_batches));
    out.push_str(&format!(
        "\n{:<14} {:>8} {:>10} {:>8}\n",
        "queue", "visible", "in flight", "delayed"
    ));
    let row = |name: &str, d: &QueueDepth| {
        format!(
            "  {name:<12} {:>8} {:>10} {:>8}\n",
            d.visible, d.in_flight, d.delayed
        )
    };
    out.push_str(&row("work", &report.work_queue));
    match &report.dead_letter_queue {
        Some(d) => out.push_str(&row("dead-letter", d)),
        None => out.push_str("  dead-letter  (DEAD_LETTER_QUEUE_URL not set)\n"),
    }
    out.push('\n');
    match &report.oldest_pending {
        Some(o) => out.push_str(&format!(
            "oldest pending batch: {} ({}, submitted {})\n",
            human_duration(o.age_seconds),
            o.batch_id,
            o.submitted_at
        )),
        None => out.push_str("oldest pending batch: none pending\n"),
    }
    if report.bad_pending_items > 0 {
        out.push_str(&format!(
            "pending items that are not valid batch summaries: {}\n",
            report.bad_pending_items
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_for_people() {
        let mut batches: BTreeMap<String, u64> = BatchStatus::ALL
            .iter()
            .map(|s| (s.as_str().to_owned(), 0))
            .collect();
        batches.insert("PENDING".into(), 12);
        batches.insert("COMPLETED".into(), 30);
        let report = StatusReport {
            batches,
            total_batches: 42,
            work_queue: QueueDepth {
                visible: 5,
                in_flight: 2,
                delayed: 7,
            },
            dead_letter_queue: None,
            oldest_pending: Some(OldestPending {
                batch_id: "b-1".into(),
                submitted_at: "2025-06-20T17:03:12.000Z".into(),
                age_seconds: 3723,
            }),
            bad_pending_items: 1,
        };
        let text = render_text(&report);
        let expected = "\
completion batches
  PENDING            12
  VALIDATING          0
  IN_PROGRESS         0
  FINALIZING          0
  COMPLETED          30
  FAILED              0
  EXPIRED             0
  CANCELING           0
  CANCELLED           0
  total              42

queue           visible  in flight  delayed
  work                5          2        7
  dead-letter  (DEAD_LETTER_QUEUE_URL not set)

oldest pending batch: 1h 02m 03s (b-1, submitted 2025-06-20T17:03:12.000Z)
pending items that are not valid batch summaries: 1
";
        assert_eq!(text, expected);
    }
}
