//! Audit rows: batch writes with `UnprocessedItems` retried, and the verdict journal read.

use std::collections::{HashMap, HashSet};

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use backon::{BackoffBuilder, ExponentialBuilder};

use super::error::classify;
use super::{Created, Store, StoreError};
use crate::model::audit::VERDICT_SK_PREFIX;
use crate::model::batch_summary::batch_pk;
use crate::model::{CompletionBatchResult, CompletionBatchVerdict, DecodeError, Item, ReceiptKey};

/// DynamoDB's limit of items per BatchWriteItem (moto does not enforce it; we must).
pub const BATCH_WRITE_LIMIT: usize = 25;

/// What a batch write did, for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchWriteReport {
    pub items: usize,
    pub calls: usize,
    /// Calls that re-sent `UnprocessedItems`.
    pub retries: usize,
}

impl Store {
    /// Puts items unconditionally in chunks of 25. Items with the same key are written once
    /// (the last one wins), as a batch may not name one key twice.
    pub async fn put_items_batched(
        &self,
        items: Vec<Item>,
    ) -> Result<BatchWriteReport, StoreError> {
        let mut report = BatchWriteReport::default();
        let mut order: Vec<(String, String)> = Vec::new();
        let mut by_key: HashMap<(String, String), Item> = HashMap::new();
        for item in items {
            let key = (key_string(&item, "PK"), key_string(&item, "SK"));
            if by_key.insert(key.clone(), item).is_none() {
                order.push(key);
            }
        }
        report.items = order.len();
        let requests: Vec<WriteRequest> = order
            .iter()
            .filter_map(|k| by_key.remove(k))
            .map(|item| {
                let put = PutRequest::builder()
                    .set_item(Some(item))
                    .build()
                    .expect("item is set");
                WriteRequest::builder().put_request(put).build()
            })
            .collect();
        for chunk in requests.chunks(BATCH_WRITE_LIMIT) {
            self.write_chunk(chunk.to_vec(), &mut report).await?;
        }
        Ok(report)
    }

    async fn write_chunk(
        &self,
        mut pending: Vec<WriteRequest>,
        report: &mut BatchWriteReport,
    ) -> Result<(), StoreError> {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.batch_retry.min_delay)
            .with_max_delay(self.batch_retry.max_delay)
            .with_max_times(self.batch_retry.max_times)
            .with_jitter()
            .build();
        loop {
            let out = self
                .client
                .batch_write_item()
                .request_items(self.table.clone(), pending)
                .send()
                .await
                .map_err(|e| classify("BatchWriteItem", e))?;
            report.calls += 1;
            pending = out
                .unprocessed_items
                .and_then(|mut m| m.remove(&self.table))
                .unwrap_or_default();
            if pending.is_empty() {
                return Ok(());
            }
            match delays.next() {
                Some(delay) => {
                    report.retries += 1;
                    tracing::debug!(
                        unprocessed = pending.len(),
                        ?delay,
                        "retrying unprocessed items"
                    );
                    tokio::time::sleep(delay).await;
                }
                None => {
                    return Err(StoreError::Transient {
                        op: "BatchWriteItem",
                        message: format!(
                            "{} items still unprocessed after {} retries",
                            pending.len(),
                            self.batch_retry.max_times
                        ),
                    });
                }
            }
        }
    }

    /// The verdict journal of a batch (every page).
    pub async fn batch_verdicts(
        &self,
        batch_id: &str,
    ) -> Result<Vec<Result<CompletionBatchVerdict, DecodeError>>, StoreError> {
        let items = self
            .query_prefix(&batch_pk(batch_id), VERDICT_SK_PREFIX)
            .await?;
        Ok(items
            .iter()
            .map(CompletionBatchVerdict::from_item)
            .collect())
    }

    /// Whether the batch has any verdict journal row (one item read): an apply that finds none
    /// (a first run) need not look for them receipt by receipt.
    pub async fn has_batch_verdicts(&self, batch_id: &str) -> Result<bool, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("PK = :pk AND begins_with(SK, :prefix)")
            .expression_attribute_values(":pk", AttributeValue::S(batch_pk(batch_id)))
            .expression_attribute_values(":prefix", AttributeValue::S(VERDICT_SK_PREFIX.into()))
            .consistent_read(true)
            .limit(1)
            .send()
            .await
            .map_err(|e| classify("Query", e))?;
        Ok(out.count > 0)
    }

    /// The verdict journal rows of one receipt of a batch (`VERDICT#IMAGE#{img}#RECEIPT#{r:05}#`
    /// prefix, every page): what an apply working a chunk of receipts at a time reads.
    pub async fn batch_verdicts_for(
        &self,
        batch_id: &str,
        receipt: &ReceiptKey,
    ) -> Result<Vec<Result<CompletionBatchVerdict, DecodeError>>, StoreError> {
        let prefix = format!("{VERDICT_SK_PREFIX}{}#", receipt.custom_id());
        let items = self.query_prefix(&batch_pk(batch_id), &prefix).await?;
        Ok(items
            .iter()
            .map(CompletionBatchVerdict::from_item)
            .collect())
    }

    /// The verdict journal rows of a set of receipts of a batch (every page), in one Query over
    /// the range of their SK prefixes (`SK BETWEEN` the smallest and just past the largest),
    /// keeping the rows of those receipts: an apply reads a chunk of receipts' journal with
    /// one paged Query instead of one per receipt. Receipts of a chunk are neighbours in key
    /// order, so the range holds little else (a receipt id past 99999 sorts out of order in
    /// the zero-padded SK; its rows are still inside the range, and others' are dropped).
    pub async fn batch_verdicts_of(
        &self,
        batch_id: &str,
        receipts: &[&ReceiptKey],
    ) -> Result<Vec<Result<CompletionBatchVerdict, DecodeError>>, StoreError> {
        let prefixes: HashSet<String> = receipts
            .iter()
            .map(|r| format!("{VERDICT_SK_PREFIX}{}#", r.custom_id()))
            .collect();
        let (Some(lo), Some(hi)) = (prefixes.iter().min(), prefixes.iter().max()) else {
            return Ok(Vec::new());
        };
        // Every SK starting with `hi` (which ends in '#') sorts below `hi` with a '$' instead.
        let hi = format!("{}$", &hi[..hi.len() - 1]);
        let items = self.query_between(&batch_pk(batch_id), lo, &hi).await?;
        Ok(items
            .iter()
            .filter(|item| {
                let sk = key_string(item, "SK");
                // VERDICT#IMAGE#{uuid}#RECEIPT#{r}# : the first five parts and their '#'.
                sk.match_indices('#')
                    .nth(4)
                    .is_some_and(|(at, _)| prefixes.contains(&sk[..=at]))
            })
            .map(CompletionBatchVerdict::from_item)
            .collect())
    }

    /// Puts a journal row only where the label has none yet (`Created::AlreadyExists`: a row
    /// is there, left as it is). For a verdict decided from a label someone else had already
    /// changed (a conflict row): another applier of this batch may have written the label's
    /// row, from PENDING, before changing it, and that row must stand.
    pub async fn put_verdict_if_absent(
        &self,
        row: &CompletionBatchVerdict,
    ) -> Result<Created, StoreError> {
        self.put_if_absent(row.to_item()).await
    }

    /// Puts a CompletionBatchResult unless its key already holds the row of a smaller image id
    /// (docs/spec/data-model.md: the SK has no image id; the smallest image's verdict is the one kept).
    /// Colliding rows have the same receipt id, so their `GSI3PK`
    /// (`IMAGE#{uuid}#RECEIPT#{r:05}`) orders them by image id; `>=` lets a re-run write its own
    /// row again. `Ok(false)`: a smaller image's row holds the key, nothing written.
    pub async fn put_result_row(&self, row: &CompletionBatchResult) -> Result<bool, StoreError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(row.to_item()))
            .condition_expression("attribute_not_exists(PK) OR GSI3PK >= :mine")
            .expression_attribute_values(
                ":mine",
                AttributeValue::S(row.label.word.receipt.custom_id()),
            )
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(classify("PutItem", e)),
        }
    }
}

fn key_string(item: &Item, name: &str) -> String {
    match item.get(name) {
        Some(AttributeValue::S(s)) => s.clone(),
        _ => String::new(),
    }
}
