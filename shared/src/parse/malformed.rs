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

/// A line that was skipped whole; `detail` is for the log line, `kind` for the counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    pub kind: MalformedKind,
    pub detail: String,
}

impl Malformed {
    pub fn new(kind: MalformedKind, detail: impl Into<String>) -> Self {
        Malformed {
            kind,
            detail: detail.into(),
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
