//! Why a line could not be used at all.

use std::fmt;

use serde::Serialize;

use super::lines::LineTooLong;

/// The rule a malformed line broke; bounded, so it can label metrics and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MalformedKind {
    /// Not JSON at all (syntax error, truncated, not UTF-8).
    NotJson,
    /// JSON, but not the object shape the file format promises.
    Shape,
    /// `custom_id` missing, not a string, or not `IMAGE#<uuid>#RECEIPT#<n>`.
    CustomId,
    /// `choices` empty or with more than one entry.
    Choices,
    /// No `function_call.arguments`, `tool_calls[0].function.arguments` or `content` string.
    NoAnswer,
    /// The answer string is not JSON `{"results": [...]}`.
    Arguments,
    /// An input request whose prompt has no parseable `### Targets` array.
    Targets,
    /// Over the line-length cap; never buffered whole.
    TooLong,
}

impl MalformedKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MalformedKind::NotJson => "not_json",
            MalformedKind::Shape => "shape",
            MalformedKind::CustomId => "custom_id",
            MalformedKind::Choices => "choices",
            MalformedKind::NoAnswer => "no_answer",
            MalformedKind::Arguments => "arguments",
            MalformedKind::Targets => "targets",
            MalformedKind::TooLong => "too_long",
        }
    }
}

impl fmt::Display for MalformedKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The most of a detail kept, in bytes: a bad `custom_id` or a serde message quoting a value can
/// carry megabytes of model output, and the detail goes into log lines.
pub const MAX_DETAIL: usize = 200;

/// `detail` cut to at most [`MAX_DETAIL`] bytes (on a character boundary, `…` marking the cut).
fn bounded(detail: String) -> String {
    if detail.len() <= MAX_DETAIL {
        return detail;
    }
    let mut end = MAX_DETAIL;
    while !detail.is_char_boundary(end) {
        end -= 1;
    }
    let mut cut = String::with_capacity(end + 3);
    cut.push_str(&detail[..end]);
    cut.push('…');
    cut
}

/// A line that was skipped whole; `detail` (at most [`MAX_DETAIL`] bytes and a `…`) is for the log line, `kind` for the counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    pub kind: MalformedKind,
    pub detail: String,
}

impl Malformed {
    pub fn new(kind: MalformedKind, detail: impl Into<String>) -> Self {
        Malformed {
            kind,
            detail: bounded(detail.into()),
        }
    }
}

impl From<LineTooLong> for Malformed {
    fn from(e: LineTooLong) -> Self {
        Malformed::new(MalformedKind::TooLong, e.to_string())
    }
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_are_cut_to_a_bounded_excerpt_on_a_character_boundary() {
        let short = Malformed::new(MalformedKind::Shape, "short");
        assert_eq!(short.detail, "short");
        let long = Malformed::new(MalformedKind::CustomId, "é".repeat(1 << 20));
        assert!(
            long.detail.len() <= MAX_DETAIL + '…'.len_utf8(),
            "{}",
            long.detail.len()
        );
        assert!(long.detail.ends_with('…'));
        assert!(long.detail.starts_with("éé"));
    }
}
