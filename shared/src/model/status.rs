//! The enumerations of docs/spec/data-model.md, spelled exactly as the other programs write them.

use std::fmt;
use std::str::FromStr;

/// Error for a string that is not one of an enumeration's spellings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownVariant {
    pub kind: &'static str,
    pub value: String,
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident, $kind:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownVariant;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownVariant { kind: $kind, value: s.to_owned() }),
                }
            }
        }
    };
}

string_enum!(
    /// The review state of one word label.
    ValidationStatus, "validation status", {
        None => "NONE",
        Pending => "PENDING",
        Valid => "VALID",
        Invalid => "INVALID",
        NeedsReview => "NEEDS_REVIEW",
    }
);

string_enum!(
    /// A BatchSummary's status. Older items only hold PENDING, COMPLETED and FAILED.
    BatchStatus, "batch status", {
        Pending => "PENDING",
        Validating => "VALIDATING",
        InProgress => "IN_PROGRESS",
        Finalizing => "FINALIZING",
        Completed => "COMPLETED",
        Failed => "FAILED",
        Expired => "EXPIRED",
        Canceling => "CANCELING",
        Cancelled => "CANCELLED",
    }
);

string_enum!(
    /// What kind of OpenAI batch a summary records; the fleet handles COMPLETION only.
    BatchType, "batch type", {
        Completion => "COMPLETION",
        Embedding => "EMBEDDING",
        LineEmbedding => "LINE_EMBEDDING",
        WordEmbedding => "WORD_EMBEDDING",
    }
);

string_enum!(
    /// What a finished batch decided about one label: a verdict of the model, or (`NONE`) a
    /// reset of a target that got none (docs/spec/processing-rules.md: resets are decisions too, and
    /// are journaled as verdict rows with verdict `NONE`).
    Verdict, "verdict", {
        Valid => "VALID",
        Invalid => "INVALID",
        NeedsReview => "NEEDS_REVIEW",
        Reset => "NONE",
    }
);

impl Verdict {
    /// The label status a verdict sets.
    pub fn status(self) -> ValidationStatus {
        match self {
            Verdict::Valid => ValidationStatus::Valid,
            Verdict::Invalid => ValidationStatus::Invalid,
            Verdict::NeedsReview => ValidationStatus::NeedsReview,
            Verdict::Reset => ValidationStatus::None,
        }
    }

    pub fn is_valid(self) -> bool {
        self == Verdict::Valid
    }
}

/// The labels the model may propose as corrections. Anything else is recorded, never created.
pub const CORE_LABELS: &[&str] = &[
    "MERCHANT_NAME",
    "STORE_HOURS",
    "PHONE_NUMBER",
    "WEBSITE",
    "LOYALTY_ID",
    "ADDRESS_LINE",
    "DATE",
    "TIME",
    "PAYMENT_METHOD",
    "COUPON",
    "DISCOUNT",
    "PRODUCT_NAME",
    "QUANTITY",
    "UNIT_PRICE",
    "LINE_TOTAL",
    "SUBTOTAL",
    "TAX",
    "TIP",
    "GRAND_TOTAL",
    "CHANGE",
    "CASH_BACK",
    "REFUND",
];

pub fn is_core_label(label: &str) -> bool {
    CORE_LABELS.contains(&label)
}

/// `label_proposed_by` value of every label this fleet changes or creates.
pub const PROPOSED_BY_COMPLETION_BATCH: &str = "COMPLETION_BATCH";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_spelling() {
        for s in ValidationStatus::ALL {
            assert_eq!(s.as_str().parse::<ValidationStatus>().unwrap(), *s);
        }
        for s in BatchStatus::ALL {
            assert_eq!(s.as_str().parse::<BatchStatus>().unwrap(), *s);
        }
        assert_eq!(
            "CANCELING".parse::<BatchStatus>(),
            Ok(BatchStatus::Canceling)
        );
        assert_eq!(
            "CANCELLED".parse::<BatchStatus>(),
            Ok(BatchStatus::Cancelled)
        );
    }

    #[test]
    fn rejects_other_spellings() {
        let err = "valid".parse::<ValidationStatus>().unwrap_err();
        assert_eq!(err.to_string(), "unknown validation status \"valid\"");
        assert!("CANCELED".parse::<BatchStatus>().is_err());
        assert!("".parse::<BatchType>().is_err());
    }
}
