//! ReceiptWordLabel: one label proposed for one word of a receipt (docs/spec/data-model.md).

use chrono::{DateTime, Utc};

use super::item::{DecodeError, Item, Reader, s, s_or_null};
use super::keys::LabelKey;
use super::status::ValidationStatus;
use super::time::{format_timestamp, parse_timestamp};

pub const TYPE_RECEIPT_WORD_LABEL: &str = "RECEIPT_WORD_LABEL";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptWordLabel {
    pub key: LabelKey,
    pub reasoning: Option<String>,
    pub timestamp_added: DateTime<Utc>,
    pub validation_status: ValidationStatus,
    pub label_proposed_by: Option<String>,
    pub label_consolidated_from: Option<String>,
}

/// `LABEL#{label}` right-padded with `_` to 40 characters (none when already that long).
pub fn label_gsi1pk(label: &str) -> String {
    format!("{:_<40}", format!("LABEL#{label}"))
}

pub fn validation_gsi3pk(status: ValidationStatus) -> String {
    format!("VALIDATION_STATUS#{status}")
}

impl ReceiptWordLabel {
    /// Always writes the current format (with GSI4 keys).
    pub fn to_item(&self) -> Item {
        let k = &self.key;
        let word_sk = format!(
            "IMAGE#{}#RECEIPT#{:05}#LINE#{:05}#WORD#{:05}",
            k.image_id(),
            k.receipt_id(),
            k.word.line_id,
            k.word.word_id
        );
        Item::from([
            ("PK".into(), s(k.pk())),
            ("SK".into(), s(k.sk())),
            ("GSI1PK".into(), s(label_gsi1pk(&k.label))),
            ("GSI1SK".into(), s(&word_sk)),
            ("GSI2PK".into(), s("RECEIPT")),
            ("GSI2SK".into(), s(&word_sk)),
            (
                "GSI3PK".into(),
                s(validation_gsi3pk(self.validation_status)),
            ),
            ("GSI3SK".into(), s(format!("{word_sk}#LABEL#{}", k.label))),
            ("GSI4PK".into(), s(k.word.receipt.custom_id())),
            (
                "GSI4SK".into(),
                s(format!(
                    "4_LABEL#{:05}#{:05}#{}",
                    k.word.line_id, k.word.word_id, k.label
                )),
            ),
            ("TYPE".into(), s(TYPE_RECEIPT_WORD_LABEL)),
            ("reasoning".into(), s_or_null(self.reasoning.as_deref())),
            (
                "timestamp_added".into(),
                s(format_timestamp(self.timestamp_added)),
            ),
            (
                "validation_status".into(),
                s(self.validation_status.as_str()),
            ),
            (
                "label_proposed_by".into(),
                s_or_null(self.label_proposed_by.as_deref()),
            ),
            (
                "label_consolidated_from".into(),
                s_or_null(self.label_consolidated_from.as_deref()),
            ),
        ])
    }

    /// Accepts older items: no GSI4 keys, missing or NULL `validation_status` (reads as NONE).
    pub fn from_item(item: &Item) -> Result<Self, DecodeError> {
        let r = Reader::new(item);
        r.expect("TYPE", TYPE_RECEIPT_WORD_LABEL)?;
        let key =
            LabelKey::from_item_key(r.pk(), r.sk()).map_err(|e| r.error("SK", e.to_string()))?;
        let validation_status = match r.opt_string("validation_status")? {
            None => ValidationStatus::None,
            Some(v) => v.parse().map_err(|e: super::status::UnknownVariant| {
                r.error("validation_status", e.to_string())
            })?,
        };
        Ok(ReceiptWordLabel {
            key,
            reasoning: r.opt_string("reasoning")?.map(str::to_owned),
            timestamp_added: r.parsed("timestamp_added", |v| {
                parse_timestamp(v).ok_or("not an ISO-8601 timestamp")
            })?,
            validation_status,
            label_proposed_by: r.opt_string("label_proposed_by")?.map(str::to_owned),
            label_consolidated_from: r.opt_string("label_consolidated_from")?.map(str::to_owned),
        })
    }
}
