//! ReceiptWordLabel reads, conditional status changes and create-if-absent.

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValuesOnConditionCheckFailure};

use super::batches::conditional_failure_item;
use super::error::classify;
use super::{Store, StoreError, Transition};
use crate::model::status::PROPOSED_BY_COMPLETION_BATCH;
use crate::model::word_label::{TYPE_RECEIPT_WORD_LABEL, validation_gsi3pk};
use crate::model::{DecodeError, LabelKey, ReceiptKey, ReceiptWordLabel, ValidationStatus};

/// Whether a PutItem created the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Created,
    AlreadyExists,
}

impl Store {
    /// All labels of one receipt (base table, every page; items with and without GSI4 keys).
    /// Items that do not decode come back as errors beside the good ones.
    pub async fn receipt_labels(
        &self,
        receipt: &ReceiptKey,
    ) -> Result<Vec<Result<ReceiptWordLabel, DecodeError>>, StoreError> {
        let items = self
            .query_prefix(&receipt.image_pk(), &receipt.label_sk_prefix())
            .await?;
        Ok(items
            .iter()
            .filter(|i| {
                i.get("TYPE")
                    .and_then(|t| t.as_s().ok())
                    .map(String::as_str)
                    == Some(TYPE_RECEIPT_WORD_LABEL)
            })
            .map(ReceiptWordLabel::from_item)
            .collect())
    }

    /// Changes a label's status from `from` to `to` (with `GSI3PK`, and
    /// `label_proposed_by = COMPLETION_BATCH`), only if it still holds `from`.
    pub async fn transition_label(
        &self,
        key: &LabelKey,
        from: ValidationStatus,
        to: ValidationStatus,
    ) -> Result<Transition<ValidationStatus>, StoreError> {
        let condition = if from == ValidationStatus::None {
            "attribute_exists(PK) AND (attribute_not_exists(validation_status) OR attribute_type(validation_status, :null_type) OR validation_status = :from)"
        } else {
            "attribute_exists(PK) AND validation_status = :from"
        };
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("PK", AttributeValue::S(key.pk()))
            .key("SK", AttributeValue::S(key.sk()))
            .update_expression(
                "SET validation_status = :to, GSI3PK = :gsi3pk, label_proposed_by = :by",
            )
            .condition_expression(condition)
            .expression_attribute_values(":from", AttributeValue::S(from.as_str().to_owned()))
            .expression_attribute_values(":to", AttributeValue::S(to.as_str().to_owned()))
            .expression_attribute_values(":gsi3pk", AttributeValue::S(validation_gsi3pk(to)))
            .expression_attribute_values(
                ":by",
                AttributeValue::S(PROPOSED_BY_COMPLETION_BATCH.to_owned()),
            )
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if from == ValidationStatus::None {
            req = req.expression_attribute_values(":null_type", AttributeValue::S("NULL".into()));
        }
        match req.send().await {
            Ok(_) => Ok(Transition::Applied),
            Err(e) => {
                let current = match conditional_failure_item(&e) {
                    Some(Some(item)) => Some(item),
                    Some(None) => self.get_raw(&key.pk(), &key.sk()).await?,
                    None => return Err(classify("UpdateItem", e)),
                };
                let status = current
                    .as_ref()
                    .map(|item| match item.get("validation_status") {
                        Some(AttributeValue::S(s)) => s.parse().unwrap_or(ValidationStatus::None),
                        _ => ValidationStatus::None,
                    });
                Ok(if status == Some(to) {
                    Transition::AlreadyInTarget
                } else {
                    Transition::Conflict { current: status }
                })
            }
        }
    }

    /// Writes a new label only if no item has its key yet.
    pub async fn create_label_if_absent(
        &self,
        label: &ReceiptWordLabel,
    ) -> Result<Created, StoreError> {
        self.put_if_absent(label.to_item()).await
    }
}
