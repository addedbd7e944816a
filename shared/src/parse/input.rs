//! The batch's input file: which labels each request asked about (its targets).
//!
//! The targets are what the batch may touch: reading them from the requests, instead of taking
//! every PENDING label of a receipt, keeps one batch from resetting labels another batch still
//! has in flight (docs/spec/processing-rules.md, Inputs).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::json::{EntryFields, Picked, Scalar, not_an_object};
use super::lines::LineTooLong;
use super::malformed::{Malformed, MalformedKind};
use super::output::{ResultSkip, entry_id};
use super::result_id::ResultId;
use crate::model::{LabelKey, ReceiptKey};

/// The line of the prompt after which the targets' JSON array starts.
pub const TARGETS_HEADER: &str = "### Targets";

/// What one physical line of the input file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputLine {
    Blank,
    Malformed(Malformed),
    Request(RequestTargets),
}

impl From<LineTooLong> for InputLine {
    fn from(e: LineTooLong) -> Self {
        InputLine::Malformed(e.into())
    }
}

/// The targets of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTargets {
    /// The request's `custom_id`, when it parses. Not required: the target ids name the labels.
    pub receipt: Option<ReceiptKey>,
    pub targets: Vec<ResultId>,
    /// Entries of the array that name no label; counted, not fatal for the request.
    pub skipped: Vec<ResultSkip>,
}

#[derive(Deserialize)]
struct RequestDe<'a> {
    #[serde(borrow, default)]
    custom_id: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    body: Option<RequestBodyDe<'a>>,
}

#[derive(Deserialize)]
struct RequestBodyDe<'a> {
    #[serde(borrow, default)]
    messages: Option<Vec<RequestMessageDe<'a>>>,
}

#[derive(Deserialize)]
struct RequestMessageDe<'a> {
    #[serde(borrow, default)]
    content: Option<Scalar<'a>>,
}

fn malformed(kind: MalformedKind, detail: impl Into<String>) -> InputLine {
    InputLine::Malformed(Malformed::new(kind, detail))
}

/// Classifies one physical line of the input file (without its line ending).
pub fn parse_input_line(line: &[u8]) -> InputLine {
    let line = line.trim_ascii();
    if line.is_empty() {
        return InputLine::Blank;
    }
    match not_an_object(line) {
        None => {}
        Some(true) => return malformed(MalformedKind::Shape, "not a JSON object"),
        Some(false) => return malformed(MalformedKind::NotJson, "not a JSON object"),
    }
    let de: RequestDe<'_> = match serde_json::from_slice(line) {
        Ok(de) => de,
        Err(e) if e.is_data() => return malformed(MalformedKind::Shape, e.to_string()),
        Err(e) => return malformed(MalformedKind::NotJson, e.to_string()),
    };
    let receipt = de
        .custom_id
        .as_ref()
        .and_then(Scalar::as_str)
        .and_then(|id| ReceiptKey::parse_custom_id(id).ok());
    let prompt = de
        .body
        .and_then(|b| b.messages)
        .and_then(|m| m.into_iter().next())
        .and_then(|m| m.content);
    let Some(Scalar::Str(prompt)) = prompt else {
        return malformed(
            MalformedKind::Shape,
            "body.messages[0].content: expected a string",
        );
    };
    let Some(array) = after_targets_header(&prompt) else {
        return malformed(
            MalformedKind::Targets,
            format!("no {TARGETS_HEADER:?} line in the prompt"),
        );
    };
    // Only the array itself is read: the receipt text that follows is not JSON.
    let mut de = serde_json::Deserializer::from_str(array);
    let entries = match Vec::<Picked<'_, EntryFields>>::deserialize(&mut de) {
        Ok(entries) => entries,
        Err(e) => return malformed(MalformedKind::Targets, format!("targets array: {e}")),
    };
    let mut targets = Vec::with_capacity(entries.len());
    let mut skipped = Vec::new();
    for mut entry in entries {
        match entry_id(&mut entry, receipt.as_ref()) {
            Ok(id) => targets.push(id),
            Err(skip) => skipped.push(skip),
        }
    }
    InputLine::Request(RequestTargets {
        receipt,
        targets,
        skipped,
    })
}

/// [`parse_input_line`] for a line as the reader yields it.
pub fn parse_input_read(line: Result<&[u8], LineTooLong>) -> InputLine {
    match line {
        Ok(bytes) => parse_input_line(bytes),
        Err(e) => e.into(),
    }
}

/// The text after the first line that is exactly the header (trailing spaces allowed).
fn after_targets_header(prompt: &str) -> Option<&str> {
    let mut from = 0;
    while let Some(i) = prompt[from..].find(TARGETS_HEADER) {
        let start = from + i;
        let end = start + TARGETS_HEADER.len();
        let rest = &prompt[end..];
        let eol = rest.find('\n').unwrap_or(rest.len());
        let at_line_start = start == 0 || prompt.as_bytes()[start - 1] == b'\n';
        if at_line_start && rest[..eol].trim().is_empty() {
            return Some(&rest[eol..]);
        }
        from = end;
    }
    None
}

/// What reading the input file found, for the worker's report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct InputCounters {
    pub lines: u64,
    pub blank: u64,
    pub requests: u64,
    /// By [`MalformedKind::as_str`].
    pub malformed: BTreeMap<String, u64>,
    /// Distinct target labels.
    pub targets: u64,
    /// Target ids named more than once (across or within requests).
    pub duplicate_targets: u64,
    /// By [`ResultSkip::kind`].
    pub skipped_targets: BTreeMap<String, u64>,
}

/// Collects the target set of a whole input file, line by line.
#[derive(Debug, Clone, Default)]
pub struct TargetCollector {
    targets: BTreeSet<LabelKey>,
    counters: InputCounters,
}

impl TargetCollector {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_line(&mut self, line: InputLine) {
        let c = &mut self.counters;
        c.lines += 1;
        match line {
            InputLine::Blank => c.blank += 1,
            InputLine::Malformed(m) => *c.malformed.entry(m.kind.as_str().into()).or_default() += 1,
            InputLine::Request(r) => {
                c.requests += 1;
                for skip in r.skipped {
                    *c.skipped_targets.entry(skip.kind().into()).or_default() += 1;
                }
                for id in r.targets {
                    if !self.targets.insert(id.label) {
                        c.duplicate_targets += 1;
                    }
                }
            }
        }
    }

    pub fn finish(mut self) -> (BTreeSet<LabelKey>, InputCounters) {
        self.counters.targets = self.targets.len() as u64;
        (self.targets, self.counters)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const IMG: &str = "3f52804b-2fad-4e00-92c8-b593da3a8ed3";

    fn tid(line: u32, word: u32, label: &str) -> String {
        format!(
            "IMAGE#{IMG}#RECEIPT#00001#LINE#{line:05}#WORD#{word:05}#LABEL#{label}#VALIDATION_STATUS#NONE"
        )
    }

    fn request(prompt: &str) -> String {
        json!({
            "custom_id": format!("IMAGE#{IMG}#RECEIPT#00001"),
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-4.1-mini",
                "messages": [{"role": "system", "content": prompt}],
                "functions": [{"name": "validate_labels", "parameters": {"type": "object"}}]
            }
        })
        .to_string()
    }

    fn prompt(targets: &serde_json::Value) -> String {
        format!(
            "You validate receipt labels.\n\n{TARGETS_HEADER}\n{targets}\n\n### Receipt\nWALMART [1] 3.99\n### Targets? no"
        )
    }

    fn request_targets(line: &str) -> RequestTargets {
        match parse_input_line(line.as_bytes()) {
            InputLine::Request(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn targets_come_from_the_targets_array_of_the_system_prompt() {
        let targets = json!([
            {"id": tid(3, 1, "MERCHANT_NAME"), "text": "WALMART", "line_id": 3, "proposed_label": "MERCHANT_NAME"},
            {"id": tid(10, 2, "LINE_TOTAL"), "text": "3.99", "line_id": 10, "proposed_label": "LINE_TOTAL",
             "invalid_labels": ["UNIT_PRICE"]}
        ]);
        let r = request_targets(&request(&prompt(&targets)));
        assert_eq!(r.receipt.unwrap().receipt_id, 1);
        let labels: Vec<_> = r.targets.iter().map(|t| t.label.label.as_str()).collect();
        assert_eq!(labels, ["MERCHANT_NAME", "LINE_TOTAL"]);
        assert!(r.skipped.is_empty());
    }

    #[test]
    fn pretty_printed_array_and_crlf_header_are_read() {
        let targets = json!([{"id": tid(1, 1, "DATE")}]);
        let text = format!(
            "intro\r\n{TARGETS_HEADER}  \r\n{}\r\n\r\n### Receipt\r\n",
            serde_json::to_string_pretty(&targets).unwrap()
        );
        assert_eq!(request_targets(&request(&text)).targets.len(), 1);
    }

    #[test]
    fn a_bad_target_id_is_counted_and_skipped_not_fatal() {
        let targets = json!([
            {"id": tid(1, 1, "DATE")},
            {"id": "IMAGE#x#RECEIPT#1"},
            {"id": 7},
            "just a string",
            {"id": tid(1, 2, "TIME")}
        ]);
        let r = request_targets(&request(&prompt(&targets)));
        assert_eq!(r.targets.len(), 2);
        let kinds: Vec<_> = r.skipped.iter().map(ResultSkip::kind).collect();
        assert_eq!(kinds, ["bad_id", "missing_id", "not_an_object"]);
    }

    #[test]
    fn malformed_requests_say_why() {
        let cases: Vec<(String, MalformedKind)> = vec![
            ("{not json".into(), MalformedKind::NotJson),
            ("[1,2]".into(), MalformedKind::Shape),
            (
                json!({"body": {"messages": []}}).to_string(),
                MalformedKind::Shape,
            ),
            (
                json!({"body": {"messages": [{"content": [{"type": "text"}]}]}}).to_string(),
                MalformedKind::Shape,
            ),
            (request("no header here"), MalformedKind::Targets),
            (request("x ### Targets\n[]"), MalformedKind::Targets),
            (
                request(&format!("{TARGETS_HEADER}\n[{{\"id\": ")),
                MalformedKind::Targets,
            ),
            (
                request(&format!("{TARGETS_HEADER}\n{{\"id\": 1}}")),
                MalformedKind::Targets,
            ),
        ];
        for (line, kind) in cases {
            match parse_input_line(line.as_bytes()) {
                InputLine::Malformed(m) => assert_eq!(m.kind, kind, "{line}: {m}"),
                other => panic!("{line}: {other:?}"),
            }
        }
        assert_eq!(parse_input_line(b"  \r"), InputLine::Blank);
    }

    #[test]
    fn collector_dedups_targets_and_counts_lines() {
        let a = request(&prompt(&json!([{"id": tid(1, 1, "DATE")}, {"id": "bad"}])));
        let b = request(&prompt(
            &json!([{"id": tid(1, 1, "DATE")}, {"id": tid(2, 1, "TAX")}]),
        ));
        let mut c = TargetCollector::new();
        for line in [a.as_str(), "", "garbage", b.as_str()] {
            c.add_line(parse_input_line(line.as_bytes()));
        }
        c.add_line(
            LineTooLong {
                length: 9,
                limit: 1,
            }
            .into(),
        );
        let (targets, counters) = c.finish();
        assert_eq!(targets.len(), 2);
        assert_eq!(counters.lines, 5);
        assert_eq!(counters.blank, 1);
        assert_eq!(counters.requests, 2);
        assert_eq!(counters.targets, 2);
        assert_eq!(counters.duplicate_targets, 1);
        assert_eq!(counters.skipped_targets["bad_id"], 1);
        assert_eq!(counters.malformed["not_json"], 1);
        assert_eq!(counters.malformed["too_long"], 1);
    }
}
