//! BatchSummary reads and the final status change.

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};

use super::error::classify;
use super::{Store, StoreError, Transition};
use crate::model::batch_summary::{batch_pk, status_gsi1pk};
use crate::model::{BatchStatus, BatchSummary, DecodeError, Item};

impl Store {
    /// Every PENDING COMPLETION BatchSummary (GSI1, every page). Items that do not decode are
    /// returned as errors beside the good ones, so one bad item blocks nothing.
    pub async fn pending_completion_batches(
        &self,
    ) -> Result<Vec<Result<BatchSummary, DecodeError>>, StoreError> {
        let mut found = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name("GSI1")
                .key_condition_expression("GSI1PK = :pk AND begins_with(GSI1SK, :prefix)")
                .expression_attribute_values(
                    ":pk",
                    AttributeValue::S(status_gsi1pk(BatchStatus::Pending)),
                )
                .expression_attribute_values(
                    ":prefix",
                    AttributeValue::S("BATCH_TYPE#COMPLETION".to_owned()),
                )
                .set_limit(self.page_size)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| classify("Query", e))?;
            found.extend(
                out.items
                    .unwrap_or_default()
                    .iter()
                    .map(BatchSummary::from_item),
            );
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(found),
            }
        }
    }

    /// Counts summaries by status across GSI1 (operators' `status` view); COMPLETION only.
    pub async fn count_completion_batches(&self, status: BatchStatus) -> Result<u64, StoreError> {
        let mut count = 0u64;
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .index_name("GSI1")
                .key_condition_expression("GSI1PK = :pk AND begins_with(GSI1SK, :prefix)")
                .expression_attribute_values(":pk", AttributeValue::S(status_gsi1pk(status)))
                .expression_attribute_values(
                    ":prefix",
                    AttributeValue::S("BATCH_TYPE#COMPLETION".to_owned()),
                )
                .select(aws_sdk_dynamodb::types::Select::Count)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| classify("Query", e))?;
            count += u64::try_from(out.count).unwrap_or(0);
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(count),
            }
        }
    }

    pub async fn batch_summary(&self, batch_id: &str) -> Result<Option<BatchSummary>, StoreError> {
        match self.get_raw(&batch_pk(batch_id), "STATUS").await? {
            Some(item) => Ok(Some(BatchSummary::from_item(&item)?)),
            None => Ok(None),
        }
    }

    /// Marks a batch done: `status`, `GSI1PK` and (when given) `result_file_id`, only from
    /// PENDING. This is the last write of an apply.
    pub async fn finish_summary(
        &self,
        batch_id: &str,
        to: BatchStatus,
        result_file_id: Option<&str>,
    ) -> Result<Transition<BatchStatus>, StoreError> {
        let mut update = String::from("SET #status = :to, GSI1PK = :gsi1pk");
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("PK", AttributeValue::S(batch_pk(batch_id)))
            .key("SK", AttributeValue::S("STATUS".to_owned()))
            .condition_expression("attribute_exists(PK) AND #status = :pending")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":to", AttributeValue::S(to.as_str().to_owned()))
            .expression_attribute_values(":gsi1pk", AttributeValue::S(status_gsi1pk(to)))
            .expression_attribute_values(
                ":pending",
                AttributeValue::S(BatchStatus::Pending.as_str().to_owned()),
            )
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if let Some(file) = result_file_id {
            update.push_str(", result_file_id = :file");
            req = req.expression_attribute_values(":file", AttributeValue::S(file.to_owned()));
        }
        match req.update_expression(update).send().await {
            Ok(_) => Ok(Transition::Applied),
            Err(e) => {
                let current = match conditional_failure_item(&e) {
                    Some(Some(item)) => Some(item),
                    Some(None) => self.get_raw(&batch_pk(batch_id), "STATUS").await?,
                    None => return Err(classify("UpdateItem", e)),
                };
                let status = current
                    .as_ref()
                    .and_then(|i| i.get("status"))
                    .and_then(|v| v.as_s().ok())
                    .and_then(|s| s.parse::<BatchStatus>().ok());
                Ok(if status == Some(to) {
                    Transition::AlreadyInTarget
                } else {
                    Transition::Conflict { current: status }
                })
            }
        }
    }
}

/// `Some(old item if returned)` when the error is a failed condition, `None` otherwise.
pub(crate) fn conditional_failure_item<R>(
    err: &aws_sdk_dynamodb::error::SdkError<
        aws_sdk_dynamodb::operation::update_item::UpdateItemError,
        R,
    >,
) -> Option<Option<Item>> {
    match err.as_service_error() {
        Some(aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c)) => {
            Some(c.item.clone())
        }
        _ => None,
    }
}
