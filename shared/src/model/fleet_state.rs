//! The fleet's own bookkeeping item for a batch: the apply lease and the producer's
//! "scheduled until" marker.
//!
//! It lives beside the BatchSummary, at `PK = BATCH#{batch_id}`, `SK = FLEET#STATE`, with
//! `TYPE = COMPLETION_BATCH_FLEET_STATE` and no GSI key attributes, so no index query other
//! programs run can return it, and the BatchSummary item they read and write stays exactly as
//! docs/spec/data-model.md says (another program replacing the summary item cannot wipe our lease either).
//! Times are Unix milliseconds (N) so that conditions compare numbers, not strings.
//! `time_to_live` lets the table's TTL remove the item 30 days after its last write.

use super::batch_summary::batch_pk;

pub const FLEET_STATE_SK: &str = "FLEET#STATE";
pub const TYPE_FLEET_STATE: &str = "COMPLETION_BATCH_FLEET_STATE";
/// How long a fleet-state item outlives its last write before DynamoDB's TTL removes it.
pub const FLEET_STATE_TTL_SECONDS: i64 = 30 * 24 * 3600;

pub fn fleet_state_key(batch_id: &str) -> (String, String) {
    (batch_pk(batch_id), FLEET_STATE_SK.to_owned())
}
