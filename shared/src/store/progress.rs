//! How far a batch's apply got: its cursor, kept on the batch's fleet-state item (see
//! [`crate::model::fleet_state`]) beside the lease, so that a later handling resumes after the
//! last chunk of receipts done instead of starting over (docs/spec/fleet-design.md: the progress of a
//! long apply is kept).
//!
//! Two attributes of the item, written together after each chunk:
//!
//! - `apply_cursor` (S): the `custom_id` (`IMAGE#{uuid}#RECEIPT#{r:05}`) of the last receipt
//!   whose writes are all done; receipts are applied in key order, so every receipt up to it is
//!   done. An operator reading the item sees how far the batch got.
//! - `apply_counts` (S): the apply's own JSON of what the done chunks counted, so the report
//!   adds up across handlings. The store does not read it.
//!
//! The write is conditional on `lease_owner` still being the caller: a holder whose lease
//! passed to another worker must stop writing, and a failed condition is how it learns.

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};

use super::batches::conditional_failure_item;
use super::error::classify;
use super::{Store, StoreError};
use crate::model::fleet_state::{TYPE_FLEET_STATE, fleet_state_key};

pub const APPLY_CURSOR: &str = "apply_cursor";
pub const APPLY_COUNTS: &str = "apply_counts";

/// The batch's apply cursor and who holds its lease, read together (one strongly consistent
/// GetItem).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyCursor {
    pub lease_owner: Option<String>,
    /// `custom_id` of the last receipt done; `None` when no chunk was recorded yet.
    pub last_receipt: Option<String>,
    /// The apply's JSON beside it.
    pub counts: Option<String>,
}

/// What recording the cursor found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorWrite {
    Recorded,
    /// The lease is no longer the caller's (held by `owner`, or by no one): nothing written.
    LeaseLost {
        owner: Option<String>,
    },
}

impl Store {
    /// The batch's apply cursor and lease owner (a missing item reads as empty).
    pub async fn apply_cursor(&self, batch_id: &str) -> Result<ApplyCursor, StoreError> {
        let (pk, sk) = fleet_state_key(batch_id);
        let Some(item) = self.get_raw(&pk, &sk).await? else {
            return Ok(ApplyCursor::default());
        };
        let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
        Ok(ApplyCursor {
            lease_owner: text("lease_owner"),
            last_receipt: text(APPLY_CURSOR),
            counts: text(APPLY_COUNTS),
        })
    }

    /// Records that every receipt up to `last_receipt` is done, with the apply's `counts`, only
    /// while `owner` holds the batch's lease.
    pub async fn record_apply_cursor(
        &self,
        batch_id: &str,
        owner: &str,
        last_receipt: &str,
        counts: &str,
    ) -> Result<CursorWrite, StoreError> {
        let (pk, sk) = fleet_state_key(batch_id);
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("PK", AttributeValue::S(pk))
            .key("SK", AttributeValue::S(sk))
            .update_expression("SET #type = :type, #cursor = :cursor, #counts = :counts")
            .condition_expression("lease_owner = :me")
            .expression_attribute_names("#type", "TYPE")
            .expression_attribute_names("#cursor", APPLY_CURSOR)
            .expression_attribute_names("#counts", APPLY_COUNTS)
            .expression_attribute_values(":type", AttributeValue::S(TYPE_FLEET_STATE.to_owned()))
            .expression_attribute_values(":cursor", AttributeValue::S(last_receipt.to_owned()))
            .expression_attribute_values(":counts", AttributeValue::S(counts.to_owned()))
            .expression_attribute_values(":me", AttributeValue::S(owner.to_owned()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(CursorWrite::Recorded),
            Err(e) => match conditional_failure_item(&e) {
                Some(old) => Ok(CursorWrite::LeaseLost {
                    owner: old
                        .as_ref()
                        .and_then(|i| i.get("lease_owner"))
                        .and_then(|v| v.as_s().ok())
                        .cloned(),
                }),
                None => Err(classify("UpdateItem", e)),
            },
        }
    }
}
