//! The audit rows of a batch: CompletionBatchResult (read by other programs, with its known key
//! defect kept) and CompletionBatchVerdict (the fleet's own, collision-free journal).

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::batch_summary::batch_pk;
use super::item::{DecodeError, Item, Reader, s, s_or_null};
use super::keys::{LabelKey, check_label, parse_id};
use super::status::{BatchStatus, ValidationStatus, Verdict};
use super::time::{format_timestamp, parse_timestamp};

pub const TYPE_COMPLETION_BATCH_RESULT: &str = "COMPLETION_BATCH_RESULT";
pub const TYPE_COMPLETION_BATCH_VERDICT: &str = "COMPLETION_BATCH_VERDICT";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletionBatchResult {
    /// Shared by every row of the batch (a plan holds thousands).
    pub batch_id: Arc<str>,
    /// Not part of the SK (the known defect); kept in GSI3PK.
    pub label: LabelKey,
    pub status: BatchStatus,
    pub gpt_suggested_label: Option<String>,
    pub validated_at: DateTime<Utc>,
}

impl CompletionBatchResult {
    /// `RESULT#RECEIPT#{r}#LINE#{l}#WORD#{w}#LABEL#{label}`, NOT zero-padded, no image id.
    pub fn sk(&self) -> String {
        let w = &self.label.word;
        format!(
            "RESULT#RECEIPT#{}#LINE#{}#WORD#{}#LABEL#{}",
            w.receipt.receipt_id, w.line_id, w.word_id, self.label.label
        )
    }

    pub fn to_item(&self) -> Item {
        let status = self.status.as_str();
        Item::from([
            ("PK".into(), s(batch_pk(&self.batch_id))),
            ("SK".into(), s(self.sk())),
            ("GSI1PK".into(), s(format!("LABEL#{}", self.label.label))),
            ("GSI1SK".into(), s(format!("STATUS#{status}"))),
            ("GSI2PK".into(), s(batch_pk(&self.batch_id))),
            ("GSI2SK".into(), s(format!("STATUS#{status}"))),
            ("GSI3PK".into(), s(self.label.word.receipt.custom_id())),
            (
                "GSI3SK".into(),
                s(format!("BATCH#{}#STATUS#{status}", self.batch_id)),
            ),
            ("TYPE".into(), s(TYPE_COMPLETION_BATCH_RESULT)),
            ("original_label".into(), s(&self.label.label)),
            (
                "gpt_suggested_label".into(),
                s_or_null(self.gpt_suggested_label.as_deref()),
            ),
            ("status".into(), s(status)),
            (
                "validated_at".into(),
                s(format_timestamp(self.validated_at)),
            ),
        ])
    }

    /// Accepts the older unpadded receipt id in GSI3PK. Rejects an SK without exactly 9 parts,
    /// as the current Python reader does.
    pub fn from_item(item: &Item) -> Result<Self, DecodeError> {
        let r = Reader::new(item);
        r.expect("TYPE", TYPE_COMPLETION_BATCH_RESULT)?;
        let batch_id = r
            .pk()
            .strip_prefix("BATCH#")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| r.error("PK", "expected BATCH#<batch_id>"))?
            .to_owned();
        let parts: Vec<&str> = r.sk().split('#').collect();
        let (receipt_id, line_id, word_id, label) = match parts.as_slice() {
            [
                "RESULT",
                "RECEIPT",
                rc,
                "LINE",
                l,
                "WORD",
                w,
                "LABEL",
                label,
            ] => {
                let id = |what, v| parse_id(what, v).map_err(|e| r.error("SK", e.to_string()));
                check_label(label).map_err(|e| r.error("SK", e.to_string()))?;
                (
                    id("receipt id", rc)?,
                    id("line id", l)?,
                    id("word id", w)?,
                    *label,
                )
            }
            _ => {
                return Err(r.error(
                    "SK",
                    "expected 9 parts RESULT#RECEIPT#n#LINE#n#WORD#n#LABEL#label",
                ));
            }
        };
        let gsi3 = r.string("GSI3PK")?;
        let receipt = super::keys::ReceiptKey::parse_custom_id(gsi3)
            .map_err(|e| r.error("GSI3PK", e.to_string()))?;
        if receipt.receipt_id != receipt_id {
            return Err(r.error("GSI3PK", "receipt id differs from the SK's"));
        }
        let original = r.string("original_label")?;
        if original != label {
            return Err(r.error("original_label", "differs from the SK's label"));
        }
        Ok(CompletionBatchResult {
            batch_id: batch_id.into(),
            label: LabelKey::new(receipt.image_id, receipt_id, line_id, word_id, label),
            status: r.parsed("status", str::parse)?,
            gpt_suggested_label: r.opt_string("gpt_suggested_label")?.map(str::to_owned),
            validated_at: r.parsed("validated_at", |v| {
                parse_timestamp(v).ok_or("not an ISO-8601 timestamp")
            })?,
        })
    }
}

/// The fleet's journal row: one per verdict, keyed with the image id so nothing collides; and
/// one per reset (verdict `NONE`, see [`CompletionBatchVerdict::reset`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletionBatchVerdict {
    /// Shared by every row of the batch (a plan holds thousands).
    pub batch_id: Arc<str>,
    pub label: LabelKey,
    pub verdict: Verdict,
    pub previous_status: ValidationStatus,
    pub suggested_label: Option<String>,
    /// `output:{line_number}` of the output line that carried the verdict; [`RESET_SOURCE`]
    /// for a reset.
    pub source: VerdictSource,
    pub validated_at: DateTime<Utc>,
}

/// A journal row's `source` text. Held inline when short (always, for the fleet's own
/// `output:{n}` and `reset`), so that a plan makes one per verdict without an allocation or
/// a shared count; a longer text (read from the table) is kept on the heap. Reads as the
/// `str` it spells.
#[derive(Clone, PartialEq, Eq)]
pub struct VerdictSource(SourceRepr);

#[derive(Clone, PartialEq, Eq)]
enum SourceRepr {
    /// The first `len` bytes; the rest zero, so that equal texts compare equal.
    Inline {
        len: u8,
        bytes: [u8; INLINE_SOURCE],
    },
    Heap(Box<str>),
}

const INLINE_SOURCE: usize = 30;

impl VerdictSource {
    /// `output:{line_no}`, built without the formatting machinery (one per verdict).
    pub fn output_line(line_no: u64) -> Self {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        let mut n = line_no;
        loop {
            start -= 1;
            digits[start] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let mut text = [0u8; 27];
        text[..7].copy_from_slice(b"output:");
        let digits = &digits[start..];
        text[7..7 + digits.len()].copy_from_slice(digits);
        // ASCII.
        std::str::from_utf8(&text[..7 + digits.len()])
            .unwrap_or_default()
            .into()
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            // Copied from a `str` (or ASCII digits): valid UTF-8.
            SourceRepr::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            SourceRepr::Heap(s) => s,
        }
    }
}

impl From<&str> for VerdictSource {
    fn from(s: &str) -> Self {
        match u8::try_from(s.len()) {
            Ok(len) if s.len() <= INLINE_SOURCE => {
                let mut bytes = [0u8; INLINE_SOURCE];
                bytes[..s.len()].copy_from_slice(s.as_bytes());
                VerdictSource(SourceRepr::Inline { len, bytes })
            }
            _ => VerdictSource(SourceRepr::Heap(s.into())),
        }
    }
}

impl From<String> for VerdictSource {
    fn from(s: String) -> Self {
        s.as_str().into()
    }
}

impl std::ops::Deref for VerdictSource {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for VerdictSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl std::fmt::Display for VerdictSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<str> for VerdictSource {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for VerdictSource {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

pub const VERDICT_SK_PREFIX: &str = "VERDICT#";

/// `source` of a reset's journal row: no output line carried it.
pub const RESET_SOURCE: &str = "reset";

impl CompletionBatchVerdict {
    /// The journal row of a target reset from PENDING to NONE because it got no verdict,
    /// written right after the reset succeeds: a re-run that finds the label PENDING again
    /// knows a newer batch claimed it (docs/spec/processing-rules.md, Order of writes, and re-runs).
    pub fn reset(batch_id: &str, label: &LabelKey, validated_at: DateTime<Utc>) -> Self {
        CompletionBatchVerdict {
            batch_id: batch_id.into(),
            label: label.clone(),
            verdict: Verdict::Reset,
            previous_status: ValidationStatus::Pending,
            suggested_label: None,
            source: RESET_SOURCE.into(),
            validated_at,
        }
    }

    pub fn sk(&self) -> String {
        format!("{VERDICT_SK_PREFIX}{}", self.label)
    }

    pub fn to_item(&self) -> Item {
        Item::from([
            ("PK".into(), s(batch_pk(&self.batch_id))),
            ("SK".into(), s(self.sk())),
            ("TYPE".into(), s(TYPE_COMPLETION_BATCH_VERDICT)),
            ("verdict".into(), s(self.verdict.as_str())),
            ("previous_status".into(), s(self.previous_status.as_str())),
            (
                "suggested_label".into(),
                s_or_null(self.suggested_label.as_deref()),
            ),
            ("source".into(), s(&*self.source)),
            (
                "validated_at".into(),
                s(format_timestamp(self.validated_at)),
            ),
        ])
    }

    pub fn from_item(item: &Item) -> Result<Self, DecodeError> {
        let r = Reader::new(item);
        r.expect("TYPE", TYPE_COMPLETION_BATCH_VERDICT)?;
        let batch_id = r
            .pk()
            .strip_prefix("BATCH#")
            .filter(|id| !id.is_empty())
            .ok_or_else(|| r.error("PK", "expected BATCH#<batch_id>"))?
            .to_owned();
        let rest = r
            .sk()
            .strip_prefix(VERDICT_SK_PREFIX)
            .ok_or_else(|| r.error("SK", "expected VERDICT#…"))?;
        let label = parse_label_id(rest).map_err(|e| r.error("SK", e))?;
        Ok(CompletionBatchVerdict {
            batch_id: batch_id.into(),
            label,
            verdict: r.parsed("verdict", str::parse)?,
            previous_status: r.parsed("previous_status", str::parse)?,
            suggested_label: r.opt_string("suggested_label")?.map(str::to_owned),
            source: r.string("source")?.into(),
            validated_at: r.parsed("validated_at", |v| {
                parse_timestamp(v).ok_or("not an ISO-8601 timestamp")
            })?,
        })
    }
}

/// Parses `IMAGE#{uuid}#RECEIPT#{r}#LINE#{l}#WORD#{w}#LABEL#{label}` (10 parts).
pub fn parse_label_id(s: &str) -> Result<LabelKey, String> {
    let parts: Vec<&str> = s.split('#').collect();
    match parts.as_slice() {
        [
            "IMAGE",
            image,
            "RECEIPT",
            rc,
            "LINE",
            l,
            "WORD",
            w,
            "LABEL",
            label,
        ] => {
            let image_id = super::keys::ImageId::parse(image).map_err(|e| e.to_string())?;
            check_label(label).map_err(|e| e.to_string())?;
            let id = |what, v| parse_id(what, v).map_err(|e| e.to_string());
            Ok(LabelKey::new(
                image_id,
                id("receipt id", rc)?,
                id("line id", l)?,
                id("word id", w)?,
                *label,
            ))
        }
        _ => Err(format!(
            "{s:?}: expected IMAGE#uuid#RECEIPT#n#LINE#n#WORD#n#LABEL#label"
        )),
    }
}

#[cfg(test)]
mod source_tests {
    use super::VerdictSource;

    #[test]
    fn a_verdict_source_reads_as_the_text_it_was_made_from() {
        for n in [0u64, 1, 7, 1_234_567, u64::MAX] {
            let s = VerdictSource::output_line(n);
            assert_eq!(s.as_str(), format!("output:{n}"));
            assert_eq!(s, VerdictSource::from(format!("output:{n}")));
        }
        let long = "x".repeat(100);
        for text in ["reset", "", "output:12", long.as_str()] {
            let s = VerdictSource::from(text);
            assert_eq!(&*s, text);
            assert_eq!(s, text);
            assert_eq!(format!("{s:?}"), format!("{text:?}"));
            assert_eq!(s.to_string(), text);
        }
        assert_ne!(
            VerdictSource::from("output:1"),
            VerdictSource::from("output:10")
        );
    }
}
