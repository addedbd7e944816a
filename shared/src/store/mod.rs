//! The receipts table through aws-sdk-dynamodb: only the operations the fleet needs, each
//! conditional where docs/spec/data-model.md asks for it.
//!
//! Retries: every call goes through the SDK's standard retry mode (exponential backoff with
//! jitter, bounded attempts; see [`crate::aws`]); `UnprocessedItems` of batch writes are retried
//! here with backon.

mod audit;
mod batches;
mod error;
mod fleet_state;
mod labels;
mod progress;

pub use audit::{BATCH_WRITE_LIMIT, BatchWriteReport};
pub use labels::Created;
pub use progress::{APPLY_COUNTS, APPLY_CURSOR, ApplyCursor, CursorWrite};

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;

pub use error::StoreError;
pub use fleet_state::{DeadLetterMark, FleetState, LeaseOutcome, ScheduleClaim};

use crate::model::Item;

/// The outcome of a conditional status change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition<S> {
    /// The item was in the expected state and now holds the target.
    Applied,
    /// The item already held the target state (an earlier run got there): nothing written.
    AlreadyInTarget,
    /// Someone else changed the item (or it is gone): nothing overwritten.
    Conflict { current: Option<S> },
}

/// Backoff of `UnprocessedItems` retries.
#[derive(Debug, Clone, Copy)]
pub struct BatchRetry {
    pub min_delay: Duration,
    pub max_delay: Duration,
    pub max_times: usize,
}

impl Default for BatchRetry {
    fn default() -> Self {
        BatchRetry {
            min_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(5),
            max_times: 10,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    client: aws_sdk_dynamodb::Client,
    table: String,
    page_size: Option<i32>,
    batch_retry: BatchRetry,
}

impl Store {
    pub fn new(client: aws_sdk_dynamodb::Client, table: impl Into<String>) -> Self {
        Store {
            client,
            table: table.into(),
            page_size: None,
            batch_retry: BatchRetry::default(),
        }
    }

    /// Caps the items per query page (tests use it to exercise pagination on small tables).
    pub fn with_page_size(mut self, page_size: i32) -> Self {
        self.page_size = Some(page_size);
        self
    }

    pub fn with_batch_retry(mut self, retry: BatchRetry) -> Self {
        self.batch_retry = retry;
        self
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub fn client(&self) -> &aws_sdk_dynamodb::Client {
        &self.client
    }

    /// A raw, strongly consistent GetItem (tests compare whole items with it).
    pub async fn get_raw(&self, pk: &str, sk: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("PK", AttributeValue::S(pk.to_owned()))
            .key("SK", AttributeValue::S(sk.to_owned()))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| error::classify("GetItem", e))?;
        Ok(out.item)
    }

    /// Puts an item only where its key holds none yet (`Created::AlreadyExists`: left as it is).
    pub(crate) async fn put_if_absent(&self, item: Item) -> Result<Created, StoreError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(PK)")
            .send()
            .await;
        match result {
            Ok(_) => Ok(Created::Created),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
            {
                Ok(Created::AlreadyExists)
            }
            Err(e) => Err(error::classify("PutItem", e)),
        }
    }

    /// A raw PutItem with no condition: for seeding test and demo data only.
    pub async fn put_raw(&self, item: Item) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| error::classify("PutItem", e))?;
        Ok(())
    }

    /// Every item of a partition whose SK starts with `prefix`, all pages, strongly consistent.
    pub(crate) async fn query_prefix(
        &self,
        pk: &str,
        prefix: &str,
    ) -> Result<Vec<Item>, StoreError> {
        self.query_sk(pk, "begins_with(SK, :prefix)", &[(":prefix", prefix)])
            .await
    }

    /// Every item of a partition whose SK is between `lo` and `hi` (both included), all pages,
    /// strongly consistent.
    pub(crate) async fn query_between(
        &self,
        pk: &str,
        lo: &str,
        hi: &str,
    ) -> Result<Vec<Item>, StoreError> {
        self.query_sk(pk, "SK BETWEEN :lo AND :hi", &[(":lo", lo), (":hi", hi)])
            .await
    }

    async fn query_sk(
        &self,
        pk: &str,
        sk_condition: &str,
        values: &[(&str, &str)],
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut query = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression(format!("PK = :pk AND {sk_condition}"))
                .expression_attribute_values(":pk", AttributeValue::S(pk.to_owned()));
            for (name, value) in values {
                query = query
                    .expression_attribute_values(*name, AttributeValue::S((*value).to_owned()));
            }
            let out = query
                .consistent_read(true)
                .set_limit(self.page_size)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| error::classify("Query", e))?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(items),
            }
        }
    }
}
