//! The 12-part result id that names one judged label (docs/spec/openai-batch.md).

use std::fmt;

use crate::model::ValidationStatus;
use crate::model::keys::{
    ImageId, KeyError, LabelKey, LabelName, ReceiptKey, check_label, parse_id,
};
use crate::model::label_name::same_bytes;

/// A label as a request named it, with the status it had when the batch was submitted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResultId {
    pub label: LabelKey,
    /// Informational only: verdicts are decided from the label's status now, not at submit.
    pub status_at_submit: ValidationStatus,
}

/// Which rule of the result id a string broke. The parts are checked left to right, so the
/// error names the first one at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultIdError {
    #[error("expected 12 '#'-separated parts, found {found}")]
    PartCount { found: usize },
    #[error("part {position}: expected tag {expected}, found {found:?}")]
    Tag {
        /// 1-based.
        position: usize,
        expected: &'static str,
        found: String,
    },
    #[error("bad image id: {0}")]
    ImageId(KeyError),
    #[error("non-numeric id: {0}")]
    NotNumeric(KeyError),
    #[error("bad label: {0}")]
    Label(KeyError),
    #[error("bad validation status {0:?}")]
    Status(String),
}

impl ResultIdError {
    /// A bounded name of the broken rule, for metrics.
    pub fn rule(&self) -> &'static str {
        match self {
            ResultIdError::PartCount { .. } => "part_count",
            ResultIdError::Tag { .. } => "tag",
            ResultIdError::ImageId(_) => "image_id",
            ResultIdError::NotNumeric(_) => "not_numeric",
            ResultIdError::Label(_) => "label",
            ResultIdError::Status(_) => "status",
        }
    }
}

const PARTS: usize = 12;

/// Tag position (0-based part index) and spelling.
const TAGS: [(usize, &str); 6] = [
    (0, "IMAGE"),
    (2, "RECEIPT"),
    (4, "LINE"),
    (6, "WORD"),
    (8, "LABEL"),
    (10, "VALIDATION_STATUS"),
];

/// Model output is echoed into errors and logs; a runaway value must not make them huge.
fn excerpt(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl ResultId {
    /// `IMAGE#{uuid}#RECEIPT#{r}#LINE#{l}#WORD#{w}#LABEL#{label}#VALIDATION_STATUS#{status}`.
    /// Ids may be zero-padded or not; they must be positive.
    pub fn parse(s: &str) -> Result<Self, ResultIdError> {
        Self::parse_expecting(s, None)
    }

    /// As [`parse`](Self::parse); an image id spelled exactly as `expected`'s (already checked)
    /// is taken from it instead of being checked again (a line's results name its receipt).
    pub(crate) fn parse_expecting(
        s: &str,
        expected: Option<&ReceiptKey>,
    ) -> Result<Self, ResultIdError> {
        if let Some(id) = Self::parse_canonical(s.as_bytes(), expected) {
            return Ok(id);
        }
        Self::parse_parts(s, expected)
    }

    /// The reading of a valid id in one left-to-right pass over its bytes (a batch has one per
    /// result, millions in a large file): `None` at the first thing it does not expect, and
    /// [`parse_parts`](Self::parse_parts) then reads the id again and names what is wrong. It
    /// only accepts ids that `parse_parts` accepts with the same value: twelve parts, the tags,
    /// ids of digits, a label of `check_label`'s alphabet, a known status.
    ///
    /// On bytes, so that an id borrowed from an answer read in place (see
    /// [`super::escaped`]) needs no UTF-8 check first.
    pub(crate) fn parse_canonical(b: &[u8], expected: Option<&ReceiptKey>) -> Option<Self> {
        match Self::parse_canonical_prefix(b, expected)? {
            (id, len) if len == b.len() => Some(id),
            _ => None,
        }
    }

    /// [`parse_canonical`](Self::parse_canonical) of the id at the start of `b`, and its
    /// length: the id ends after its status (upper-case letters and `_`), so that an id can be
    /// read straight from a file, where its string's closing quote follows.
    pub(crate) fn parse_canonical_prefix(
        b: &[u8],
        expected: Option<&ReceiptKey>,
    ) -> Option<(Self, usize)> {
        /// A positive id of at most 9 digits at the start of `b` (the part ends at the first
        /// other byte, which the next tag must then match); the rest.
        #[inline]
        fn number(b: &[u8]) -> Option<(u32, &[u8])> {
            let mut v: u32 = 0;
            let mut len = 0;
            while let Some(d) = b.get(len).map(|d| d.wrapping_sub(b'0')).filter(|d| *d <= 9) {
                if len == 9 {
                    return None;
                }
                v = v * 10 + u32::from(d);
                len += 1;
            }
            (v > 0).then_some((v, &b[len..]))
        }
        /// `b` after `tag`, when it starts with it.
        #[inline]
        fn tag<'b>(b: &'b [u8], tag: &[u8]) -> Option<&'b [u8]> {
            let (head, rest) = b.split_at_checked(tag.len())?;
            same_bytes(head, tag).then_some(rest)
        }
        let rest = tag(b, b"IMAGE#")?;
        // The line's own image, compared in place; any other is parsed in full.
        let (image_id, rest) = match expected {
            Some(r) if rest.get(36) == Some(&b'#') && r.image_id.prefix_of(rest) => {
                (r.image_id.clone(), &rest[36..])
            }
            _ => {
                let len = rest.iter().position(|c| *c == b'#').unwrap_or(rest.len());
                let image = ImageId::parse(std::str::from_utf8(&rest[..len]).ok()?).ok()?;
                (image, &rest[len..])
            }
        };
        let (receipt_id, rest) = number(tag(rest, b"#RECEIPT#")?)?;
        let (line_id, rest) = number(tag(rest, b"#LINE#")?)?;
        let (word_id, rest) = number(tag(rest, b"#WORD#")?)?;
        let rest = tag(rest, b"#LABEL#")?;
        // check_label's alphabet; the part ends at the first other byte, which must be the
        // next tag's `#`.
        let len = rest
            .iter()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || **c == b'_')
            .count();
        if len == 0 {
            return None;
        }
        let (label, rest) = rest.split_at(len);
        // ASCII: the conversion cannot fail.
        let label = LabelName::from_bytes(label)?;
        let rest = tag(rest, b"#VALIDATION_STATUS#")?;
        // Every status is spelled with upper-case letters and `_`.
        let len = rest
            .iter()
            .take_while(|c| c.is_ascii_uppercase() || **c == b'_')
            .count();
        let status = &rest[..len];
        let status_at_submit = *ValidationStatus::ALL
            .iter()
            .find(|s| same_bytes(s.as_str().as_bytes(), status))?;
        let id = ResultId {
            label: LabelKey::new(image_id, receipt_id, line_id, word_id, label),
            status_at_submit,
        };
        Some((id, b.len() - rest.len() + len))
    }

    /// The general reading: splits into parts, checks them left to right, names the first
    /// one at fault.
    fn parse_parts(s: &str, expected: Option<&ReceiptKey>) -> Result<Self, ResultIdError> {
        let mut parts = [""; PARTS];
        let mut found = 0;
        for part in s.split('#') {
            if found < PARTS {
                parts[found] = part;
            }
            found += 1;
        }
        if found != PARTS {
            return Err(ResultIdError::PartCount { found });
        }
        for (i, tag) in TAGS {
            if parts[i] != tag {
                return Err(ResultIdError::Tag {
                    position: i + 1,
                    expected: tag,
                    found: excerpt(parts[i]),
                });
            }
        }
        let image_id = match expected {
            Some(r) if r.image_id.is(parts[1]) => r.image_id.clone(),
            _ => ImageId::parse(parts[1]).map_err(ResultIdError::ImageId)?,
        };
        let id = |what, v| parse_id(what, v).map_err(ResultIdError::NotNumeric);
        let receipt_id = id("receipt id", parts[3])?;
        let line_id = id("line id", parts[5])?;
        let word_id = id("word id", parts[7])?;
        check_label(parts[9]).map_err(ResultIdError::Label)?;
        let status_at_submit = parts[11]
            .parse()
            .map_err(|_| ResultIdError::Status(excerpt(parts[11])))?;
        Ok(ResultId {
            label: LabelKey::new(image_id, receipt_id, line_id, word_id, parts[9]),
            status_at_submit,
        })
    }
}

/// The canonical (zero-padded) spelling, as the submitter writes it.
impl fmt::Display for ResultId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}#VALIDATION_STATUS#{}",
            self.label, self.status_at_submit
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMG: &str = "3f52804b-2fad-4e00-92c8-b593da3a8ed3";

    fn id(rest: &str) -> String {
        format!("IMAGE#{IMG}#{rest}")
    }

    #[test]
    fn parses_a_padded_and_an_unpadded_id() {
        let padded =
            id("RECEIPT#00001#LINE#00003#WORD#00012#LABEL#MERCHANT_NAME#VALIDATION_STATUS#NONE");
        let r = ResultId::parse(&padded).unwrap();
        assert_eq!(r.label.receipt_id(), 1);
        assert_eq!(r.label.word.line_id, 3);
        assert_eq!(r.label.word.word_id, 12);
        assert_eq!(r.label.label, "MERCHANT_NAME");
        assert_eq!(r.status_at_submit, ValidationStatus::None);
        assert_eq!(r.to_string(), padded);
        let plain = ResultId::parse(&id(
            "RECEIPT#1#LINE#3#WORD#12#LABEL#MERCHANT_NAME#VALIDATION_STATUS#PENDING",
        ))
        .unwrap();
        assert_eq!(plain.label, r.label);
        assert_eq!(plain.status_at_submit, ValidationStatus::Pending);
    }

    #[test]
    fn result_id_with_11_or_13_parts_is_a_part_count_error() {
        let eleven = id("RECEIPT#1#LINE#3#WORD#12#LABEL#MERCHANT_NAME#VALIDATION_STATUS");
        assert_eq!(
            ResultId::parse(&eleven),
            Err(ResultIdError::PartCount { found: 11 })
        );
        let thirteen = id("RECEIPT#1#LINE#3#WORD#12#LABEL#A#B#VALIDATION_STATUS#NONE");
        assert_eq!(
            ResultId::parse(&thirteen),
            Err(ResultIdError::PartCount { found: 13 })
        );
        assert_eq!(
            ResultId::parse(""),
            Err(ResultIdError::PartCount { found: 1 })
        );
    }

    #[test]
    fn wrong_tag_names_its_position() {
        let e = ResultId::parse(&id(
            "RECEIPT#1#LINES#3#WORD#12#LABEL#MERCHANT_NAME#VALIDATION_STATUS#NONE",
        ))
        .unwrap_err();
        assert_eq!(
            e,
            ResultIdError::Tag {
                position: 5,
                expected: "LINE",
                found: "LINES".into()
            }
        );
        assert_eq!(e.rule(), "tag");
        let e = ResultId::parse(&format!(
            "IMG#{IMG}#RECEIPT#1#LINE#3#WORD#12#LABEL#X#VALIDATION_STATUS#NONE"
        ))
        .unwrap_err();
        assert!(matches!(e, ResultIdError::Tag { position: 1, .. }));
        let e = ResultId::parse(&id("RECEIPT#1#LINE#3#WORD#12#LABEL#X#STATUS#NONE")).unwrap_err();
        assert!(matches!(e, ResultIdError::Tag { position: 11, .. }));
    }

    #[test]
    fn non_numeric_zero_or_huge_ids_are_refused() {
        for rest in [
            "RECEIPT#x#LINE#3#WORD#12#LABEL#X#VALIDATION_STATUS#NONE",
            "RECEIPT#1#LINE##WORD#12#LABEL#X#VALIDATION_STATUS#NONE",
            "RECEIPT#1#LINE#3#WORD#-1#LABEL#X#VALIDATION_STATUS#NONE",
            "RECEIPT#1#LINE#0#WORD#1#LABEL#X#VALIDATION_STATUS#NONE",
            "RECEIPT#1#LINE#3#WORD#99999999999#LABEL#X#VALIDATION_STATUS#NONE",
        ] {
            let e = ResultId::parse(&id(rest)).unwrap_err();
            assert_eq!(e.rule(), "not_numeric", "{rest}: {e}");
        }
    }

    #[test]
    fn bad_uuid_bad_label_and_bad_status_are_named() {
        let e =
            ResultId::parse("IMAGE#nope#RECEIPT#1#LINE#3#WORD#1#LABEL#X#VALIDATION_STATUS#NONE")
                .unwrap_err();
        assert_eq!(e.rule(), "image_id");
        let e = ResultId::parse(&id(
            "RECEIPT#1#LINE#3#WORD#1#LABEL#merchant#VALIDATION_STATUS#NONE",
        ))
        .unwrap_err();
        assert_eq!(e.rule(), "label");
        let e = ResultId::parse(&id("RECEIPT#1#LINE#3#WORD#1#LABEL##VALIDATION_STATUS#NONE"))
            .unwrap_err();
        assert_eq!(e.rule(), "label");
        let e = ResultId::parse(&id(
            "RECEIPT#1#LINE#3#WORD#1#LABEL#X#VALIDATION_STATUS#valid",
        ))
        .unwrap_err();
        assert_eq!(e, ResultIdError::Status("valid".into()));
        assert!(e.to_string().contains("valid"));
    }

    #[test]
    fn errors_quote_only_an_excerpt_of_runaway_values() {
        let long = "L".repeat(10_000);
        let e = ResultId::parse(&id(&format!(
            "RECEIPT#1#{long}#3#WORD#1#LABEL#X#VALIDATION_STATUS#NONE"
        )))
        .unwrap_err();
        assert!(e.to_string().len() < 200, "{e}");
    }
}
