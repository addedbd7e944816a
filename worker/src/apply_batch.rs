//! `worker apply-batch BATCH_ID`: the operator's way to finish one batch now, outside the
//! queue. It takes the same lease as the consumer ([`crate::lease`]), so running it beside a
//! fleet is safe.

use anyhow::anyhow;
use fleet_shared::finish::{ApplyReport, FinishError, Services};
use fleet_shared::model::BatchStatus;
use fleet_shared::openai::OpenAiStatus;
use fleet_shared::store::Store;
use serde_json::{Value, json};

use crate::lease::{Leased, with_lease};
use crate::settings::Settings;

/// What `apply-batch` found or did.
#[derive(Debug)]
pub enum ApplyBatch {
    /// The summary is no longer PENDING.
    AlreadyDone { status: BatchStatus },
    /// OpenAI has not finished the batch: nothing to apply yet.
    NotFinished { status: OpenAiStatus },
    /// A worker is applying it right now.
    LeaseHeld { owner: String, expires_at_ms: i64 },
    Applied {
        openai_status: OpenAiStatus,
        report: Box<ApplyReport>,
    },
}

/// Checks the batch once and applies it if it is finished, under the same lease as the
/// consumer (renewed while it works, fenced once it may have passed on).
pub async fn apply_batch(
    settings: &Settings,
    store: &Store,
    services: &Services,
    batch_id: &str,
) -> anyhow::Result<ApplyBatch> {
    let summary = services.load_summary(batch_id).await.map_err(describe)?;
    if summary.status != BatchStatus::Pending {
        return Ok(ApplyBatch::AlreadyDone {
            status: summary.status,
        });
    }
    let batch = services.check(&summary).await.map_err(describe)?;
    if !batch.status.is_terminal() {
        return Ok(ApplyBatch::NotFinished {
            status: batch.status,
        });
    }
    let openai_status = batch.status.clone();
    let leased = with_lease(store, batch_id, settings.lease_terms(), |hold| async move {
        // A worker may have finished it meanwhile.
        let summary = services.load_summary(batch_id).await?;
        crate::service::apply(services, &summary, &batch, &hold).await
    })
    .await?;
    match leased {
        Leased::Busy {
            owner,
            expires_at_ms,
        } => Ok(ApplyBatch::LeaseHeld {
            owner,
            expires_at_ms,
        }),
        Leased::Stopped { why } => Err(anyhow!(
            "apply of {batch_id} stopped: {why}; run it again (finished chunks are kept)"
        )),
        Leased::Done(result) => {
            let report = result.map_err(describe)?;
            Ok(if report.already_done {
                ApplyBatch::AlreadyDone {
                    status: report.summary_status.unwrap_or(BatchStatus::Pending),
                }
            } else {
                ApplyBatch::Applied {
                    openai_status,
                    report: Box::new(report),
                }
            })
        }
    }
}

fn describe(e: FinishError) -> anyhow::Error {
    let class = match e.class() {
        fleet_shared::error_class::ErrorClass::Transient => "transient; try again later",
        fleet_shared::error_class::ErrorClass::Deployment(_) => {
            "an error of the deployment: check keys, permissions, table and queue names"
        }
        fleet_shared::error_class::ErrorClass::Permanent => "permanent",
    };
    anyhow!("{e} ({}, {class})", e.reason())
}

impl ApplyBatch {
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
