//! The apply lease and the "scheduled until" marker (see [`crate::model::fleet_state`]).
//! Callers pass the current time in Unix milliseconds, so tests can move the clock.

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};

use super::batches::conditional_failure_item;
use super::error::classify;
use super::{Store, StoreError};
use crate::model::Item;
use crate::model::fleet_state::{FLEET_STATE_TTL_SECONDS, TYPE_FLEET_STATE, fleet_state_key};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FleetState {
    pub lease_owner: Option<String>,
    pub lease_expires_at_ms: Option<i64>,
    pub scheduled_until_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    Acquired { expires_at_ms: i64 },
    HeldBy { owner: String, expires_at_ms: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleClaim {
    Claimed,
    AlreadyScheduled { until_ms: i64 },
}

fn num(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn read_num(item: &Item, name: &str) -> Option<i64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

fn ttl(now_ms: i64) -> i64 {
    now_ms / 1000 + FLEET_STATE_TTL_SECONDS
}

impl Store {
    fn fleet_update(
        &self,
        batch_id: &str,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        let (pk, sk) = fleet_state_key(batch_id);
        self.client
            .update_item()
            .table_name(&self.table)
            .key("PK", AttributeValue::S(pk))
            .key("SK", AttributeValue::S(sk))
            .expression_attribute_names("#type", "TYPE")
            .expression_attribute_values(":type", AttributeValue::S(TYPE_FLEET_STATE.to_owned()))
    }

    pub async fn fleet_state(&self, batch_id: &str) -> Result<FleetState, StoreError> {
        let (pk, sk) = fleet_state_key(batch_id);
        Ok(match self.get_raw(&pk, &sk).await? {
            Some(item) => FleetState {
                lease_owner: item.get("lease_owner").and_then(|v| v.as_s().ok()).cloned(),
                lease_expires_at_ms: read_num(&item, "lease_expires_at"),
                scheduled_until_ms: read_num(&item, "scheduled_until"),
            },
            None => FleetState::default(),
        })
    }

    /// Takes the batch's lease for `ttl_ms` if it is free, expired, or already ours.
    pub async fn acquire_lease(
        &self,
        batch_id: &str,
        owner: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<LeaseOutcome, StoreError> {
        let expires_at_ms = now_ms + ttl_ms;
        let result = self
            .fleet_update(batch_id)
            .update_expression("SET #type = :type, lease_owner = :me, lease_expires_at = :exp, time_to_live = :ttl")
            .condition_expression(
                "attribute_not_exists(lease_owner) OR lease_expires_at <= :now OR lease_owner = :me",
            )
            .expression_attribute_values(":me", AttributeValue::S(owner.to_owned()))
            .expression_attribute_values(":exp", num(expires_at_ms))
            .expression_attribute_values(":now", num(now_ms))
            .expression_attribute_values(":ttl", num(ttl(now_ms)))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(LeaseOutcome::Acquired { expires_at_ms }),
            Err(e) => {
                let current = match conditional_failure_item(&e) {
                    Some(Some(item)) => Some(item),
                    Some(None) => {
                        let (pk, sk) = fleet_state_key(batch_id);
                        self.get_raw(&pk, &sk).await?
                    }
                    None => return Err(classify("UpdateItem", e)),
                };
                let current = current.unwrap_or_default();
                Ok(LeaseOutcome::HeldBy {
                    owner: current
                        .get("lease_owner")
                        .and_then(|v| v.as_s().ok())
                        .cloned()
                        .unwrap_or_default(),
                    expires_at_ms: read_num(&current, "lease_expires_at").unwrap_or(now_ms),
                })
            }
        }
    }

    /// Extends our lease; `false` when it is no longer ours (lost: stop applying).
    pub async fn renew_lease(
        &self,
        batch_id: &str,
        owner: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let result = self
            .fleet_update(batch_id)
            .update_expression("SET #type = :type, lease_expires_at = :exp, time_to_live = :ttl")
            .condition_expression("lease_owner = :me")
            .expression_attribute_values(":me", AttributeValue::S(owner.to_owned()))
            .expression_attribute_values(":exp", num(now_ms + ttl_ms))
            .expression_attribute_values(":ttl", num(ttl(now_ms)))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if conditional_failure_item(&e).is_some() => Ok(false),
            Err(e) => Err(classify("UpdateItem", e)),
        }
    }

    /// Gives up our lease; `false` when it was not ours.
    pub async fn release_lease(&self, batch_id: &str, owner: &str) -> Result<bool, StoreError> {
        let result = self
            .fleet_update(batch_id)
            .update_expression("SET #type = :type REMOVE lease_owner, lease_expires_at")
            .condition_expression("lease_owner = :me")
            .expression_attribute_values(":me", AttributeValue::S(owner.to_owned()))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if conditional_failure_item(&e).is_some() => Ok(false),
            Err(e) => Err(classify("UpdateItem", e)),
        }
    }

    /// The producer's claim: records that a check is scheduled until `until_ms`, only if no
    /// live marker exists. A producer killed after this and before sending delays the batch by
    /// at most the marker's length; it never duplicates or loses it.
    pub async fn claim_schedule(
        &self,
        batch_id: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<ScheduleClaim, StoreError> {
        let result = self
            .fleet_update(batch_id)
            .update_expression("SET #type = :type, scheduled_until = :until, time_to_live = :ttl")
            .condition_expression(
                "attribute_not_exists(scheduled_until) OR scheduled_until <= :now",
            )
            .expression_attribute_values(":until", num(until_ms))
            .expression_attribute_values(":now", num(now_ms))
            .expression_attribute_values(":ttl", num(ttl(now_ms)))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(ScheduleClaim::Claimed),
            Err(e) => {
                let current = match conditional_failure_item(&e) {
                    Some(Some(item)) => item,
                    Some(None) => self.fleet_state_item(batch_id).await?.unwrap_or_default(),
                    None => return Err(classify("UpdateItem", e)),
                };
                Ok(ScheduleClaim::AlreadyScheduled {
                    until_ms: read_num(&current, "scheduled_until").unwrap_or(now_ms),
                })
            }
        }
    }

    /// Takes back our claim (the send failed), only if the marker is still the one we wrote.
    pub async fn unclaim_schedule(
        &self,
        batch_id: &str,
        until_ms: i64,
    ) -> Result<bool, StoreError> {
        let result = self
            .fleet_update(batch_id)
            .update_expression("SET #type = :type REMOVE scheduled_until")
            .condition_expression("scheduled_until = :until")
            .expression_attribute_values(":until", num(until_ms))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if conditional_failure_item(&e).is_some() => Ok(false),
            Err(e) => Err(classify("UpdateItem", e)),
        }
    }

    /// The worker keeps the marker current when it schedules the next check itself.
    pub async fn set_schedule(
        &self,
        batch_id: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.fleet_update(batch_id)
            .update_expression("SET #type = :type, scheduled_until = :until, time_to_live = :ttl")
            .expression_attribute_values(":until", num(until_ms))
            .expression_attribute_values(":ttl", num(ttl(now_ms)))
            .send()
            .await
            .map_err(|e| classify("UpdateItem", e))?;
        Ok(())
    }

    async fn fleet_state_item(&self, batch_id: &str) -> Result<Option<Item>, StoreError> {
        let (pk, sk) = fleet_state_key(batch_id);
        self.get_raw(&pk, &sk).await
    }
}
