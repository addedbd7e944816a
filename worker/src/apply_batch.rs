//! `worker apply-batch BATCH_ID`: the operator's way to finish one batch now, outside the
//! queue. It takes the same lease as the consumer (renewed while it works), so running it
//! beside a fleet is safe.

use anyhow::anyhow;
use fleet_shared::model::BatchStatus;
use fleet_shared::openai::OpenAiStatus;
use fleet_shared::store::{LeaseOutcome, Store};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::heartbeat::{Heartbeat, LeaseKey, QueueKeepalive};
use crate::service::{ApplyOutcome, BatchService, ServiceError};
use crate::settings::Settings;

/// What `apply-batch` found or did.
#[derive(Debug)]
pub enum ApplyBatch<R> {
    /// The summary is no longer PENDING.
    AlreadyDone { status: BatchStatus },
    /// OpenAI has not finished the batch: nothing to apply yet.
    NotFinished { status: OpenAiStatus },
    /// A worker is applying it right now.
    LeaseHeld { owner: String, expires_at_ms: i64 },
    Applied {
        openai_status: OpenAiStatus,
        report: R,
    },
}

/// Checks the batch once and applies it if it is finished.
pub async fn apply_batch<S: BatchService>(
    settings: &Settings,
    sqs: &aws_sdk_sqs::Client,
    store: &Store,
    service: &S,
    batch_id: &str,
) -> anyhow::Result<ApplyBatch<S::Report>> {
    let summary = service.load_summary(batch_id).await.map_err(describe)?;
    if summary.status != BatchStatus::Pending {
        return Ok(ApplyBatch::AlreadyDone {
            status: summary.status,
        });
    }
    let batch = service.check(&summary).await.map_err(describe)?;
    if !batch.status.is_terminal() {
        return Ok(ApplyBatch::NotFinished {
            status: batch.status,
        });
    }
    let key = LeaseKey {
        batch_id: summary.batch_id.clone(),
        owner: format!("{}#apply-batch", settings.worker_id),
    };
    let ttl_ms = settings.lease_ttl_ms();
    match store
        .acquire_lease(&key.batch_id, &key.owner, ttl_ms, clock::now_ms())
        .await?
    {
        LeaseOutcome::Acquired { .. } => {}
        LeaseOutcome::HeldBy {
            owner,
            expires_at_ms,
        } => {
            return Ok(ApplyBatch::LeaseHeld {
                owner,
                expires_at_ms,
            });
        }
    }
    let heartbeat = Heartbeat::start(
        QueueKeepalive {
            sqs: sqs.clone(),
            queue_url: settings.common.queue_url.clone(),
            receipt_handle: None,
            store: store.clone(),
        },
        settings.heartbeat,
        None,
        ttl_ms,
    );
    let stop = CancellationToken::new();
    heartbeat.watch_lease(key.clone(), stop.clone());
    let result = service.apply(&summary, &batch, &stop, &key.owner).await;
    drop(heartbeat);
    if let Err(e) = store.release_lease(&key.batch_id, &key.owner).await {
        tracing::warn!(error = %e, "could not release the lease; it runs out by itself");
    }
    let report = result.map_err(describe)?;
    Ok(ApplyBatch::Applied {
        openai_status: batch.status,
        report,
    })
}

fn describe<E: ServiceError>(e: E) -> anyhow::Error {
    let class = if e.is_transient() {
        "transient; try again later"
    } else {
        "permanent"
    };
    anyhow!("{e} ({}, {class})", e.reason())
}

impl<R: ApplyOutcome> ApplyBatch<R> {
    pub fn to_json(&self, batch_id: &str) -> Value {
        match self {
            ApplyBatch::AlreadyDone { status } => {
                json!({"batch_id": batch_id, "result": "already_done", "summary_status": status.as_str()})
            }
            ApplyBatch::NotFinished { status } => {
                json!({"batch_id": batch_id, "result": "not_finished", "openai_status": status.as_str()})
            }
            ApplyBatch::LeaseHeld {
                owner,
                expires_at_ms,
            } => json!({
                "batch_id": batch_id, "result": "lease_held",
                "lease_owner": owner, "lease_expires_at_ms": expires_at_ms,
            }),
            ApplyBatch::Applied {
                openai_status,
                report,
            } => json!({
                "batch_id": batch_id, "result": "applied",
                "openai_status": openai_status.as_str(),
                "report": serde_json::to_value(report).unwrap_or(Value::Null),
            }),
        }
    }

    pub fn to_text(&self, batch_id: &str) -> String {
        match self {
            ApplyBatch::AlreadyDone { status } => {
                format!("batch {batch_id}: already finished (summary status {status})\n")
            }
            ApplyBatch::NotFinished { status } => {
                format!(
                    "batch {batch_id}: not finished at OpenAI (status {status}); nothing applied\n"
                )
            }
            ApplyBatch::LeaseHeld {
                owner,
                expires_at_ms,
            } => {
                let until = chrono::DateTime::from_timestamp_millis(*expires_at_ms)
                    .map(fleet_shared::model::time::rfc3339)
                    .unwrap_or_default();
                format!(
                    "batch {batch_id}: being applied by {owner} (lease until {until}); nothing done\n"
                )
            }
            ApplyBatch::Applied { report, .. } => report.human(),
        }
    }

    /// Exit status of the command: a batch someone else is applying is not a success.
    pub fn is_success(&self) -> bool {
        !matches!(self, ApplyBatch::LeaseHeld { .. })
    }
}
