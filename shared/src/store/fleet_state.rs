//! The fleet's own per-batch state (see [`crate::model::fleet_state`]): the apply lease, the
//! "scheduled until" marker, the current chain token and the dead-letter mark.
//! Callers pass the current time in Unix milliseconds, so tests can move the clock.
//!
//! - **Chain** (docs/spec/fleet-design.md, one chain per batch): the producer, the webhook receiver and
//!   a worker that meets a tokenless message start a chain by writing a fresh token; a message
//!   carrying any other token is a stale copy and is deleted without work.
//! - **Dead-letter mark**: set by the worker that dead-letters a batch; the producer does not
//!   claim a marked batch again until `replay-dlq` clears the mark.

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
    /// The token of the batch's one live chain of messages.
    pub chain: Option<String>,
    pub dead_letter: Option<DeadLetterMark>,
}

/// Why and when a worker dead-lettered the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterMark {
    pub reason: String,
    pub at_ms: i64,
}

impl FleetState {
    fn from_item(item: &Item) -> Self {
        let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
        FleetState {
            lease_owner: text("lease_owner"),
            lease_expires_at_ms: read_num(item, "lease_expires_at"),
            scheduled_until_ms: read_num(item, "scheduled_until"),
            chain: text("chain"),
            dead_letter: read_num(item, "dead_lettered_at").map(|at_ms| DeadLetterMark {
                reason: text("dead_letter_reason").unwrap_or_default(),
                at_ms,
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    Acquired { expires_at_ms: i64 },
    HeldBy { owner: String, expires_at_ms: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleClaim {
    Claimed,
    AlreadyScheduled {
        until_ms: i64,
    },
    /// A worker dead-lettered the batch; only `replay-dlq` brings it back.
    DeadLettered(DeadLetterMark),
}

fn num(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn read_num(item: &Item, name: &str) -> Option<i64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

/// A conditional update's answer: `true` when written, `false` when its condition did not hold.
fn applied<O, R>(
    result: Result<
        O,
        aws_sdk_dynamodb::error::SdkError<
            aws_sdk_dynamodb::operation::update_item::UpdateItemError,
            R,
        >,
    >,
) -> Result<bool, StoreError>
where
    R: std::fmt::Debug,
{
    match result {
        Ok(_) => Ok(true),
        Err(e) if conditional_failure_item(&e).is_some() => Ok(false),
        Err(e) => Err(classify("UpdateItem", e)),
    }
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
        Ok(self
            .get_raw(&pk, &sk)
            .await?
            .map(|item| FleetState::from_item(&item))
            .unwrap_or_default())
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
        applied(result)
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
        applied(result)
    }

    /// The producer's claim: records that a check is scheduled until `until_ms` and starts a
    /// new chain `chain`, only if no live marker exists and the batch is not marked
    /// dead-lettered. A producer killed after this and before sending delays the batch by at
    /// most the marker's length; it never duplicates or loses it.
    pub async fn claim_schedule(
        &self,
        batch_id: &str,
        until_ms: i64,
        now_ms: i64,
        chain: &str,
    ) -> Result<ScheduleClaim, StoreError> {
        let result = self
            .fleet_update(batch_id)
            .update_expression(
                "SET #type = :type, scheduled_until = :until, chain = :chain, time_to_live = :ttl",
            )
            .condition_expression(
                "attribute_not_exists(dead_lettered_at) AND (attribute_not_exists(scheduled_until) OR scheduled_until <= :now)",
            )
            .expression_attribute_values(":until", num(until_ms))
            .expression_attribute_values(":now", num(now_ms))
            .expression_attribute_values(":chain", AttributeValue::S(chain.to_owned()))
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
                let state = FleetState::from_item(&current);
                Ok(match state.dead_letter {
                    Some(mark) => ScheduleClaim::DeadLettered(mark),
                    None => ScheduleClaim::AlreadyScheduled {
                        until_ms: state.scheduled_until_ms.unwrap_or(now_ms),
                    },
                })
            }
        }
    }

    /// Starts a new chain unconditionally (the webhook receiver, a worker meeting a tokenless
    /// message): every older message of the batch becomes a stale copy. The marker moves to
    /// `until_ms` so that a producer tick does not start yet another chain.
    pub async fn start_chain(
        &self,
        batch_id: &str,
        chain: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.fleet_update(batch_id)
            .update_expression(
                "SET #type = :type, chain = :chain, scheduled_until = :until, time_to_live = :ttl",
            )
            .expression_attribute_values(":chain", AttributeValue::S(chain.to_owned()))
            .expression_attribute_values(":until", num(until_ms))
            .expression_attribute_values(":ttl", num(ttl(now_ms)))
            .send()
            .await
            .map_err(|e| classify("UpdateItem", e))?;
        Ok(())
    }

    /// Moves the batch's chain from `from` to `to` (the token of the follow-up just sent) and
    /// its marker to `until_ms`, only if `from` is still current: of several copies of one link,
    /// exactly one passes the chain on; `false` for the others (their follow-ups are stale).
    pub async fn advance_chain(
        &self,
        batch_id: &str,
        from: &str,
        to: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let result = self
            .fleet_update(batch_id)
            .update_expression(
                "SET #type = :type, chain = :to, scheduled_until = :until, time_to_live = :ttl",
            )
            .condition_expression("chain = :from OR attribute_not_exists(chain)")
            .expression_attribute_values(":from", AttributeValue::S(from.to_owned()))
            .expression_attribute_values(":to", AttributeValue::S(to.to_owned()))
            .expression_attribute_values(":until", num(until_ms))
            .expression_attribute_values(":ttl", num(ttl(now_ms)))
            .send()
            .await;
        applied(result)
    }

    /// Records that a worker dead-lettered the batch (the producer then leaves it alone).
    pub async fn mark_dead_lettered(
        &self,
        batch_id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.fleet_update(batch_id)
            .update_expression(
                "SET #type = :type, dead_lettered_at = :at, dead_letter_reason = :reason, time_to_live = :ttl REMOVE scheduled_until",
            )
            .expression_attribute_values(":at", num(now_ms))
            .expression_attribute_values(":reason", AttributeValue::S(reason.to_owned()))
            .expression_attribute_values(":ttl", num(ttl(now_ms)))
            .send()
            .await
            .map_err(|e| classify("UpdateItem", e))?;
        Ok(())
    }

    /// Clears the dead-letter mark (a replay brings the batch back); `false` when there was none.
    pub async fn clear_dead_letter(&self, batch_id: &str) -> Result<bool, StoreError> {
        let result = self
            .fleet_update(batch_id)
            .update_expression("SET #type = :type REMOVE dead_lettered_at, dead_letter_reason")
            .condition_expression("attribute_exists(dead_lettered_at)")
            .send()
            .await;
        applied(result)
    }

    /// The fleet states of many batches at once (BatchGetItem, 100 keys a call, unprocessed
    /// keys retried); a batch without a state item is absent from the map.
    pub async fn fleet_states(
        &self,
        batch_ids: &[String],
    ) -> Result<std::collections::HashMap<String, FleetState>, StoreError> {
        use aws_sdk_dynamodb::types::KeysAndAttributes;
        let mut found = std::collections::HashMap::new();
        for ids in batch_ids.chunks(100) {
            let mut keys: Vec<Item> = ids
                .iter()
                .map(|id| {
                    let (pk, sk) = fleet_state_key(id);
                    Item::from([
                        ("PK".to_owned(), AttributeValue::S(pk)),
                        ("SK".to_owned(), AttributeValue::S(sk)),
                    ])
                })
                .collect();
            let mut rounds = 0u32;
            while !keys.is_empty() {
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(std::mem::take(&mut keys)))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| StoreError::Permanent {
                        op: "BatchGetItem",
                        message: e.to_string(),
                    })?;
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .map_err(|e| classify("BatchGetItem", e))?;
                for item in out
                    .responses
                    .and_then(|mut r| r.remove(&self.table))
                    .unwrap_or_default()
                {
                    if let Some(id) = item
                        .get("PK")
                        .and_then(|v| v.as_s().ok())
                        .and_then(|pk| pk.strip_prefix("BATCH#"))
                    {
                        found.insert(id.to_owned(), FleetState::from_item(&item));
                    }
                }
                keys = out
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(&self.table))
                    .map(|k| k.keys)
                    .unwrap_or_default();
                rounds += 1;
                if !keys.is_empty() {
                    if rounds > 10 {
                        return Err(StoreError::Transient {
                            op: "BatchGetItem",
                            message: format!("{} keys still unprocessed", keys.len()),
                        });
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50 << rounds.min(6))).await;
                }
            }
        }
        Ok(found)
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
        applied(result)
    }

    async fn fleet_state_item(&self, batch_id: &str) -> Result<Option<Item>, StoreError> {
        let (pk, sk) = fleet_state_key(batch_id);
        self.get_raw(&pk, &sk).await
    }
}
