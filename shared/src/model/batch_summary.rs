//! BatchSummary: one per submitted OpenAI batch (docs/spec/data-model.md).

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};

use super::item::{DecodeError, Item, Reader, n, s};
use super::keys::{ImageId, ReceiptKey};
use super::status::{BatchStatus, BatchType};
use super::time::{format_timestamp, parse_timestamp};

pub const TYPE_BATCH_SUMMARY: &str = "BATCH_SUMMARY";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSummary {
    pub batch_id: String,
    pub batch_type: BatchType,
    pub openai_batch_id: String,
    pub submitted_at: DateTime<Utc>,
    pub status: BatchStatus,
    pub result_file_id: String,
    pub receipt_refs: Vec<ReceiptKey>,
}

pub fn batch_pk(batch_id: &str) -> String {
    format!("BATCH#{batch_id}")
}

pub fn status_gsi1pk(status: BatchStatus) -> String {
    format!("STATUS#{status}")
}

impl BatchSummary {
    pub fn pk(&self) -> String {
        batch_pk(&self.batch_id)
    }

    pub fn to_item(&self) -> Item {
        let refs = self
            .receipt_refs
            .iter()
            .map(|r| {
                AttributeValue::M(
                    [
                        ("image_id".to_owned(), s(r.image_id.as_str())),
                        ("receipt_id".to_owned(), n(r.receipt_id)),
                    ]
                    .into(),
                )
            })
            .collect();
        Item::from([
            ("PK".into(), s(self.pk())),
            ("SK".into(), s("STATUS")),
            ("GSI1PK".into(), s(status_gsi1pk(self.status))),
            (
                "GSI1SK".into(),
                s(format!(
                    "BATCH_TYPE#{}#BATCH_ID#{}",
                    self.batch_type, self.batch_id
                )),
            ),
            ("TYPE".into(), s(TYPE_BATCH_SUMMARY)),
            ("batch_type".into(), s(self.batch_type.as_str())),
            ("openai_batch_id".into(), s(&self.openai_batch_id)),
            (
                "submitted_at".into(),
                s(format_timestamp(self.submitted_at)),
            ),
            ("status".into(), s(self.status.as_str())),
            ("result_file_id".into(), s(&self.result_file_id)),
            ("receipt_refs".into(), AttributeValue::L(refs)),
        ])
    }

    pub fn from_item(item: &Item) -> Result<Self, DecodeError> {
        let r = Reader::new(item);
        r.expect("TYPE", TYPE_BATCH_SUMMARY)?;
        r.expect("SK", "STATUS")?;
        let batch_id = r
            .pk()
            .strip_prefix("BATCH#")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| r.error("PK", "expected BATCH#<batch_id>"))?
            .to_owned();
        let receipt_refs = r
            .list("receipt_refs")?
            .iter()
            .enumerate()
            .map(|(i, v)| decode_ref(&r, i, v))
            .collect::<Result<_, _>>()?;
        Ok(BatchSummary {
            batch_type: r.parsed("batch_type", str::parse)?,
            openai_batch_id: r.string("openai_batch_id")?.to_owned(),
            submitted_at: r.parsed("submitted_at", |v| {
                parse_timestamp(v).ok_or("not an ISO-8601 timestamp")
            })?,
            status: r.parsed("status", str::parse)?,
            result_file_id: r.string("result_file_id")?.to_owned(),
            receipt_refs,
            batch_id,
        })
    }
}

fn decode_ref(r: &Reader<'_>, i: usize, v: &AttributeValue) -> Result<ReceiptKey, DecodeError> {
    let attr = format!("receipt_refs[{i}]");
    let AttributeValue::M(m) = v else {
        return Err(r.error(&attr, "expected M"));
    };
    let image_id = match m.get("image_id") {
        Some(AttributeValue::S(v)) => {
            ImageId::parse(v).map_err(|e| r.error(&attr, e.to_string()))?
        }
        _ => return Err(r.error(&attr, "image_id: expected S")),
    };
    let receipt_id = match m.get("receipt_id") {
        Some(AttributeValue::N(v)) => v
            .parse::<u32>()
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| r.error(&attr, format!("receipt_id: not a positive integer: {v}")))?,
        _ => return Err(r.error(&attr, "receipt_id: expected N")),
    };
    Ok(ReceiptKey {
        image_id,
        receipt_id,
    })
}
