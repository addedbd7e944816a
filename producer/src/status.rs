//! The operators' view: completion batches by status, queue depths, how long the oldest
//! pending batch has waited since submission, and the batches a worker dead-lettered.
//!
//! The dead-letter marks are read for the PENDING batches only, by key (BatchGetItem on their
//! fleet states), never by scanning the table: a mark matters while the batch is pending (the
//! producer skips it), and the pending list is already read for the oldest batch.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use fleet_shared::model::BatchStatus;
use fleet_shared::model::time::rfc3339;
use fleet_shared::queue::{QueueDepth, queue_depth};
use fleet_shared::store::DeadLetterMark;
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

/// A pending batch a worker dead-lettered: `producer enqueue` skips it until `replay-dlq`
/// moves its message back (which clears the mark).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetteredBatch {
    pub batch_id: String,
    /// The worker's reason (the `reason` attribute of its dead-lettered message).
    pub reason: String,
    /// RFC 3339.
    pub dead_lettered_at: String,
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
    /// Pending batches marked dead-lettered, oldest mark first.
    pub dead_lettered: Vec<DeadLetteredBatch>,
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
    let pending: Vec<_> = pending.into_iter().filter_map(Result::ok).collect();
    let ids: Vec<String> = pending.iter().map(|s| s.batch_id.clone()).collect();
    let states = services.store.fleet_states(&ids).await?;
    let dead_lettered = dead_lettered_batches(
        states
            .into_iter()
            .filter_map(|(id, state)| state.dead_letter.map(|mark| (id, mark))),
        now,
    );
    let oldest_pending =
        pending
            .into_iter()
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
        dead_lettered,
    })
}

/// The marks for the report, oldest first (ties by batch id, so the order is stable). A mark
/// whose time is out of range (written by hand) shows as the Unix epoch rather than failing
/// the whole report.
pub fn dead_lettered_batches(
    marks: impl IntoIterator<Item = (String, DeadLetterMark)>,
    now: DateTime<Utc>,
) -> Vec<DeadLetteredBatch> {
    let mut marks: Vec<(String, DeadLetterMark)> = marks.into_iter().collect();
    marks.sort_by(|(a_id, a), (b_id, b)| a.at_ms.cmp(&b.at_ms).then_with(|| a_id.cmp(b_id)));
    marks
        .into_iter()
        .map(|(batch_id, mark)| {
            let at = DateTime::from_timestamp_millis(mark.at_ms).unwrap_or_default();
            DeadLetteredBatch {
                batch_id,
                reason: mark.reason,
                dead_lettered_at: rfc3339(at),
                age_seconds: age_seconds(at, now),
            }
        })
        .collect()
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
    if report.dead_lettered.is_empty() {
        out.push_str("dead-lettered batches: none\n");
    } else {
        out.push_str(&format!(
            "dead-lettered batches: {} (not enqueued until replay-dlq moves them back)\n",
            report.dead_lettered.len()
        ));
        for d in &report.dead_lettered {
            out.push_str(&format!(
                "  {}  {} ({} ago)  {}\n",
                d.batch_id,
                d.dead_lettered_at,
                human_duration(d.age_seconds),
                if d.reason.is_empty() {
                    "(no reason recorded)"
                } else {
                    &d.reason
                }
            ));
        }
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
            dead_lettered: vec![],
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
dead-lettered batches: none
";
        assert_eq!(text, expected);
    }

    #[test]
    fn dead_lettered_batches_oldest_first_for_people() {
        let now = DateTime::from_timestamp(1_750_500_000, 0).unwrap();
        let mark = |reason: &str, ago_s: i64| DeadLetterMark {
            reason: reason.into(),
            at_ms: (now.timestamp() - ago_s) * 1000,
        };
        let listed = dead_lettered_batches(
            [
                ("b-new".to_owned(), mark("batch_unknown", 61)),
                ("b-old".to_owned(), mark("openai_batch_not_found", 3723)),
                ("b-blank".to_owned(), mark("", 61)),
            ],
            now,
        );
        let ids: Vec<&str> = listed.iter().map(|d| d.batch_id.as_str()).collect();
        assert_eq!(ids, ["b-old", "b-blank", "b-new"]);
        assert_eq!(listed[0].age_seconds, 3723);
        assert_eq!(listed[0].dead_lettered_at, "2025-06-21T08:57:57.000Z");

        let report = StatusReport {
            batches: BTreeMap::new(),
            total_batches: 0,
            work_queue: QueueDepth::default(),
            dead_letter_queue: None,
            oldest_pending: None,
            bad_pending_items: 0,
            dead_lettered: listed,
        };
        let text = render_text(&report);
        let tail: Vec<&str> = text.lines().rev().take(4).collect();
        assert_eq!(
            tail,
            [
                "  b-new  2025-06-21T09:58:59.000Z (1m 01s ago)  batch_unknown",
                "  b-blank  2025-06-21T09:58:59.000Z (1m 01s ago)  (no reason recorded)",
                "  b-old  2025-06-21T08:57:57.000Z (1h 02m 03s ago)  openai_batch_not_found",
                "dead-lettered batches: 3 (not enqueued until replay-dlq moves them back)",
            ]
        );
    }

    #[test]
    fn a_mark_with_a_time_out_of_range_still_lists() {
        let now = DateTime::from_timestamp(1_750_500_000, 0).unwrap();
        let listed = dead_lettered_batches(
            [(
                "b".to_owned(),
                DeadLetterMark {
                    reason: "x".into(),
                    at_ms: i64::MAX,
                },
            )],
            now,
        );
        assert_eq!(listed[0].dead_lettered_at, "1970-01-01T00:00:00.000Z");
    }
}
