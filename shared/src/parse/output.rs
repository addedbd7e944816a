//! Lines of a batch's output file and error file (docs/spec/openai-batch.md), classified one at a time.
//!
//! Speed matters on a file of hundreds of MB: the line is read once into borrowed views (the
//! chat completion's other fields are skipped, not built), and only the answer's `arguments`
//! string, which is JSON inside a JSON string, is unescaped and parsed a second time.

use std::borrow::Cow;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

use super::fast::{Scratch, parse_usual};
use super::json::{EntryFields, ErrorFields, KeySeed, Picked, Scalar, StatusFields, not_an_object};
use super::lines::LineTooLong;
use super::malformed::{Malformed, MalformedKind};
use super::result_id::{ResultId, ResultIdError};
use super::scan::{ScanScratch, scan_usual};
use crate::model::{LabelKey, ReceiptKey, ValidationStatus};

/// What one physical line of an output (or error) file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedLine {
    /// Empty or whitespace only: allowed anywhere, never malformed.
    Blank,
    Malformed(Malformed),
    /// The request failed: no verdicts from this line.
    Failed {
        receipt: ReceiptKey,
        /// As written, for logs.
        custom_id: String,
        failure: RequestFailure,
    },
    /// A completed request: one entry per element of `results`, in file order.
    Answered {
        receipt: ReceiptKey,
        results: Vec<Result<ParsedResult, ResultSkip>>,
    },
}

impl ParsedLine {
    pub fn receipt(&self) -> Option<&ReceiptKey> {
        match self {
            ParsedLine::Failed { receipt, .. } | ParsedLine::Answered { receipt, .. } => {
                Some(receipt)
            }
            ParsedLine::Blank | ParsedLine::Malformed(_) => None,
        }
    }
}

impl From<LineTooLong> for ParsedLine {
    fn from(e: LineTooLong) -> Self {
        ParsedLine::Malformed(e.into())
    }
}

/// Why a request counts as failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestFailure {
    /// `error` was set (the error file's shape, e.g. `batch_expired`).
    Error {
        code: Option<String>,
        message: Option<String>,
    },
    /// `response.status_code` was not 200.
    Status(i64),
    /// `response` was null or absent, with no `error` either.
    NoResponse,
}

impl RequestFailure {
    /// Bounded, for metrics: the error code when it is one, else the kind.
    pub fn kind(&self) -> &'static str {
        match self {
            RequestFailure::Error { .. } => "error",
            RequestFailure::Status(_) => "status",
            RequestFailure::NoResponse => "no_response",
        }
    }
}

/// One usable model result. Whether its label is a target, exists, and what it means for the
/// label is the plan's business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedResult {
    pub label: LabelKey,
    pub status_at_submit: ValidationStatus,
    pub is_valid: bool,
    /// As the model wrote it, when a non-empty string (any other type is ignored): whether it
    /// is a core label, differs from the judged one, or even makes sense for a valid verdict is
    /// decided by the plan, so the audit rows can record exactly what was said.
    pub correct_label: Option<String>,
}

/// Why one element of `results` (or of a prompt's targets) was skipped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultSkip {
    #[error("not a JSON object")]
    NotAnObject,
    #[error("id missing, null or not a string")]
    MissingId,
    #[error("bad id: {0}")]
    BadId(ResultIdError),
    /// A response may only judge labels of its own receipt.
    #[error("id names receipt {found}, the line is for {expected}", found = found.custom_id(), expected = expected.custom_id())]
    OtherReceipt {
        expected: ReceiptKey,
        found: ReceiptKey,
    },
    #[error("is_valid missing or not a boolean")]
    IsValidNotBool,
    /// `correct_label` longer than [`MAX_CORRECT_LABEL`] characters or with a character outside
    /// `[A-Za-z0-9_ ]`: text the model was steered into, not a label name; never stored.
    #[error("correct_label of {length} characters is not a label name")]
    BadCorrectLabel { length: usize },
}

impl ResultSkip {
    /// Bounded, for metrics and counters.
    pub fn kind(&self) -> &'static str {
        match self {
            ResultSkip::NotAnObject => "not_an_object",
            ResultSkip::MissingId => "missing_id",
            ResultSkip::BadId(_) => "bad_id",
            ResultSkip::OtherReceipt { .. } => "other_receipt",
            ResultSkip::IsValidNotBool => "is_valid_not_bool",
            ResultSkip::BadCorrectLabel { .. } => "bad_correct_label",
        }
    }
}

#[derive(Deserialize)]
struct LineDe<'a> {
    #[serde(borrow, default)]
    custom_id: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    response: Option<ResponseDe<'a>>,
    #[serde(borrow, default)]
    error: Option<Picked<'a, ErrorFields>>,
}

#[derive(Deserialize)]
struct ResponseDe<'a> {
    #[serde(borrow, default)]
    status_code: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    body: Option<BodyDe<'a>>,
}

#[derive(Deserialize)]
struct BodyDe<'a> {
    #[serde(borrow, default)]
    choices: Option<Vec<ChoiceDe<'a>>>,
}

#[derive(Deserialize)]
struct ChoiceDe<'a> {
    #[serde(borrow, default)]
    message: Option<MessageDe<'a>>,
}

#[derive(Deserialize)]
struct MessageDe<'a> {
    #[serde(borrow, default)]
    function_call: Option<CallDe<'a>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCallDe<'a>>>,
    #[serde(borrow, default)]
    content: Option<Scalar<'a>>,
}

#[derive(Deserialize)]
struct CallDe<'a> {
    #[serde(borrow, default)]
    arguments: Option<Scalar<'a>>,
}

#[derive(Deserialize)]
struct ToolCallDe<'a> {
    #[serde(borrow, default)]
    function: Option<CallDe<'a>>,
}

/// Read when [`LineDe`] refused the line: enough to tell a failed request (whose `response` may
/// hold anything) from a malformed line.
#[derive(Deserialize)]
struct LenientLineDe<'a> {
    #[serde(borrow, default)]
    custom_id: Option<Scalar<'a>>,
    #[serde(borrow, default)]
    response: Option<Picked<'a, StatusFields>>,
    #[serde(borrow, default)]
    error: Option<Picked<'a, ErrorFields>>,
}

#[derive(Deserialize)]
struct ArgumentsDe<'a> {
    #[serde(borrow, default)]
    results: Option<Vec<Picked<'a, EntryFields>>>,
}

#[derive(Deserialize)]
struct PeekDe<'a> {
    #[serde(borrow, default)]
    custom_id: Option<Scalar<'a>>,
}

fn malformed(kind: MalformedKind, detail: impl Into<String>) -> ParsedLine {
    ParsedLine::Malformed(Malformed::new(kind, detail))
}

/// Classifies one physical line (without its line ending). The line number is not needed here:
/// the reader ([`super::LineReader`]) counts lines and the caller hands the number to the plan.
/// A caller with many lines keeps one [`OutputParser`] instead (its buffer is reused).
pub fn parse_output_line(line: &[u8]) -> ParsedLine {
    OutputParser::new().parse(line)
}

/// [`parse_output_line`] with a buffer kept from line to line: the answer string (JSON inside a
/// JSON string) is unescaped into it, so a file's lines are read without allocating one per
/// line.
#[derive(Debug, Default)]
pub struct OutputParser {
    scratch: Scratch,
    scan: ScanScratch,
}

impl OutputParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// As [`parse_output_line`]. A line of the usual shape (a completed request with one
    /// choice and a `{"results": [...]}` answer) is read by the byte scanner of
    /// [`super::scan`], or, when it uses JSON the scanner leaves to serde, in one serde pass by
    /// [`super::fast`]; any other line, by the general path, which judges every way a line can
    /// be wrong.
    pub fn parse(&mut self, line: &[u8]) -> ParsedLine {
        let line = line.trim_ascii();
        if line.is_empty() {
            return ParsedLine::Blank;
        }
        if let Some(parsed) = scan_usual(line, &mut self.scan) {
            return parsed;
        }
        if let Some(parsed) = parse_usual(line, &mut self.scratch) {
            return parsed;
        }
        parse_general(line)
    }

    /// As [`parse_output_read`].
    pub fn parse_read(&mut self, line: Result<&[u8], LineTooLong>) -> ParsedLine {
        match line {
            Ok(bytes) => self.parse(bytes),
            Err(e) => e.into(),
        }
    }
}

/// Every line the fast path does not take: read with derived structs, then leniently.
fn parse_general(line: &[u8]) -> ParsedLine {
    match not_an_object(line) {
        None => {}
        Some(true) => return malformed(MalformedKind::Shape, "not a JSON object"),
        Some(false) => return malformed(MalformedKind::NotJson, "not a JSON object"),
    }
    match serde_json::from_slice::<LineDe<'_>>(line) {
        Ok(de) => classify(de),
        Err(e) if e.is_data() => classify_lenient(line, &e),
        Err(e) => malformed(MalformedKind::NotJson, e.to_string()),
    }
}

/// [`parse_output_line`] for a line as the reader yields it.
pub fn parse_output_read(line: Result<&[u8], LineTooLong>) -> ParsedLine {
    match line {
        Ok(bytes) => parse_output_line(bytes),
        Err(e) => e.into(),
    }
}

/// The receipt a line is for, without judging the rest: what the input-file fallback needs from
/// a first pass over the output and error files.
pub fn peek_custom_id(line: &[u8]) -> Option<ReceiptKey> {
    let de: PeekDe<'_> = serde_json::from_slice(line.trim_ascii()).ok()?;
    ReceiptKey::parse_custom_id(de.custom_id?.as_str()?).ok()
}

/// The receipt of a line's first `custom_id` key, reading the line only up to it (OpenAI
/// writes it second, after `id`): what a first pass over a large output file needs to know
/// where each receipt's lines are, at a fraction of the cost of reading whole lines. Nothing is
/// judged: the line is classified in full when its receipt's turn comes, and a line this
/// cannot place is classified at once (it can only be malformed).
pub fn locate_custom_id(line: &[u8]) -> Option<ReceiptKey> {
    if let Some(found) = scan_custom_id(line.trim_ascii()) {
        return found;
    }
    struct FirstCustomId<'s>(&'s mut Option<ReceiptKey>);

    impl<'de> Visitor<'de> for FirstCustomId<'_> {
        type Value = ();

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an output line object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key_seed(KeySeed(&["custom_id"]))? {
                if key.is_some() {
                    let id: Scalar<'de> = map.next_value()?;
                    *self.0 = id
                        .as_str()
                        .and_then(|id| ReceiptKey::parse_custom_id(id).ok());
                    // Stop here: the rest of the line is read when its receipt is processed.
                    return Err(de::Error::custom("custom_id found"));
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(())
        }
    }

    let mut found = None;
    let mut de = serde_json::Deserializer::from_slice(line.trim_ascii());
    let _ = de.deserialize_map(FirstCustomId(&mut found));
    found
}

/// [`locate_custom_id`] by a byte scan, for a line whose keys and values up to `custom_id` are
/// plain strings (printable ASCII, no escapes), as OpenAI writes them: `None` when the line is
/// anything else, and the deserializer decides.
fn scan_custom_id(line: &[u8]) -> Option<Option<ReceiptKey>> {
    /// A plain string starting at `at` (its opening quote): its contents and the index after it.
    fn plain_string(line: &[u8], at: usize) -> Option<(&[u8], usize)> {
        if line.get(at) != Some(&b'"') {
            return None;
        }
        let len = line[at + 1..].iter().position(|b| *b == b'"')?;
        let s = &line[at + 1..at + 1 + len];
        s.iter()
            .all(|b| (0x20..0x7f).contains(b) && *b != b'\\')
            .then_some((s, at + 2 + len))
    }
    let ws = |at: usize| {
        at + line[at..]
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
            .count()
    };
    if line.first() != Some(&b'{') {
        return None;
    }
    let mut at = 1;
    loop {
        let (key, after) = plain_string(line, ws(at))?;
        at = ws(after);
        if line.get(at) != Some(&b':') {
            return None;
        }
        let (value, after) = plain_string(line, ws(at + 1))?;
        if key == b"custom_id" {
            // Plain ASCII: a valid str.
            let id = std::str::from_utf8(value).ok()?;
            return Some(ReceiptKey::parse_custom_id(id).ok());
        }
        at = ws(after);
        match line.get(at) {
            Some(b',') => at += 1,
            _ => return None,
        }
    }
}

fn receipt_of(custom_id: Option<&Scalar<'_>>) -> Result<(ReceiptKey, String), ParsedLine> {
    let Some(Scalar::Str(id)) = custom_id else {
        let what = custom_id.map_or("missing", Scalar::type_name);
        return Err(malformed(
            MalformedKind::CustomId,
            format!("custom_id: expected a string, found {what}"),
        ));
    };
    match ReceiptKey::parse_custom_id(id) {
        Ok(r) => Ok((r, id.clone().into_owned())),
        Err(e) => Err(malformed(MalformedKind::CustomId, e.to_string())),
    }
}

fn failure_of(mut error: Picked<'_, ErrorFields>) -> RequestFailure {
    let mut text = |i| error.take(i).and_then(|v| v.to_text());
    RequestFailure::Error {
        code: text(ErrorFields::CODE),
        message: text(ErrorFields::MESSAGE),
    }
}

fn classify(de: LineDe<'_>) -> ParsedLine {
    let (receipt, custom_id) = match receipt_of(de.custom_id.as_ref()) {
        Ok(r) => r,
        Err(line) => return line,
    };
    let failed = |failure| ParsedLine::Failed {
        receipt: receipt.clone(),
        custom_id: custom_id.clone(),
        failure,
    };
    if let Some(error) = de.error {
        return failed(failure_of(error));
    }
    let Some(response) = de.response else {
        return failed(RequestFailure::NoResponse);
    };
    match response.status_code {
        Some(Scalar::Int(200)) => {}
        Some(Scalar::Int(code)) => return failed(RequestFailure::Status(code)),
        other => {
            let what = other.as_ref().map_or("missing", Scalar::type_name);
            return malformed(
                MalformedKind::Shape,
                format!("response.status_code: expected an integer, found {what}"),
            );
        }
    }
    let Some(mut choices) = response.body.and_then(|b| b.choices) else {
        return malformed(MalformedKind::Shape, "response.body.choices missing");
    };
    if choices.len() != 1 {
        return malformed(
            MalformedKind::Choices,
            format!("expected exactly one choice, found {}", choices.len()),
        );
    }
    let Some(message) = choices.pop().and_then(|c| c.message) else {
        return malformed(MalformedKind::NoAnswer, "choices[0].message missing");
    };
    let Some((source, arguments)) = answer_of(message) else {
        return malformed(
            MalformedKind::NoAnswer,
            "no function_call.arguments, tool_calls[0].function.arguments or content string",
        );
    };
    parse_arguments(receipt, source, &arguments)
}

/// The answer string. Structured calls come before `content`: a model answering with a tool call
/// may also say something in `content`, never the other way round. Only the first tool call is
/// read, as docs/spec/openai-batch.md describes; the prompt asks for exactly one.
fn answer_of(message: MessageDe<'_>) -> Option<(&'static str, Cow<'_, str>)> {
    if let Some(Scalar::Str(a)) = message.function_call.and_then(|c| c.arguments) {
        return Some(("function_call.arguments", a));
    }
    let tool = message
        .tool_calls
        .and_then(|calls| calls.into_iter().next())
        .and_then(|call| call.function)
        .and_then(|f| f.arguments);
    if let Some(Scalar::Str(a)) = tool {
        return Some(("tool_calls[0].function.arguments", a));
    }
    if let Some(Scalar::Str(a)) = message.content {
        return Some(("content", a));
    }
    None
}

fn parse_arguments(receipt: ReceiptKey, source: &str, arguments: &str) -> ParsedLine {
    if not_an_object(arguments.as_bytes()).is_some() {
        return malformed(
            MalformedKind::Arguments,
            format!("{source}: not a JSON object"),
        );
    }
    let de: ArgumentsDe<'_> = match serde_json::from_str(arguments) {
        Ok(de) => de,
        Err(e) => return malformed(MalformedKind::Arguments, format!("{source}: {e}")),
    };
    let Some(results) = de.results else {
        return malformed(
            MalformedKind::Arguments,
            format!("{source}: no \"results\" array"),
        );
    };
    let results = results
        .into_iter()
        .map(|entry| check_result(&receipt, entry))
        .collect();
    ParsedLine::Answered { receipt, results }
}

/// The id of a result or target entry; `expected`: the receipt the entry should name (see
/// [`ResultId::parse_expecting`]).
pub(crate) fn entry_id(
    entry: &mut Picked<'_, EntryFields>,
    expected: Option<&ReceiptKey>,
) -> Result<ResultId, ResultSkip> {
    if !entry.is_object {
        return Err(ResultSkip::NotAnObject);
    }
    let Some(Scalar::Str(id)) = entry.take(EntryFields::ID) else {
        return Err(ResultSkip::MissingId);
    };
    ResultId::parse_expecting(&id, expected).map_err(ResultSkip::BadId)
}

pub(crate) fn check_result(
    receipt: &ReceiptKey,
    mut entry: Picked<'_, EntryFields>,
) -> Result<ParsedResult, ResultSkip> {
    let id = entry_id(&mut entry, Some(receipt))?;
    if id.label.word.receipt != *receipt {
        return Err(ResultSkip::OtherReceipt {
            expected: receipt.clone(),
            found: id.label.word.receipt,
        });
    }
    let Some(Scalar::Bool(is_valid)) = entry.take(EntryFields::IS_VALID) else {
        return Err(ResultSkip::IsValidNotBool);
    };
    let correct_label = match entry.take(EntryFields::CORRECT_LABEL) {
        Some(Scalar::Str(s)) if !s.is_empty() => {
            if !is_label_like(&s) {
                return Err(ResultSkip::BadCorrectLabel {
                    length: s.chars().count(),
                });
            }
            Some(s.into_owned())
        }
        _ => None,
    };
    Ok(ParsedResult {
        label: id.label,
        status_at_submit: id.status_at_submit,
        is_valid,
        correct_label,
    })
}

/// The longest `correct_label` kept: the longest core label has 14 characters; prompt text can
/// steer the model into writing anything there, and the audit rows store it.
pub const MAX_CORRECT_LABEL: usize = 64;

/// At most [`MAX_CORRECT_LABEL`] characters of `[A-Za-z0-9_ ]` (spaces and lower case are a
/// model's spelling of a label name: recorded, and only a core label creates anything).
fn is_label_like(s: &str) -> bool {
    s.len() <= MAX_CORRECT_LABEL
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b' ')
}

fn classify_lenient(line: &[u8], original: &serde_json::Error) -> ParsedLine {
    let Ok(de) = serde_json::from_slice::<LenientLineDe<'_>>(line) else {
        return malformed(
            MalformedKind::Shape,
            format!("not an output line object: {original}"),
        );
    };
    let (receipt, custom_id) = match receipt_of(de.custom_id.as_ref()) {
        Ok(r) => r,
        Err(line) => return line,
    };
    let failure = match (de.error, de.response) {
        (Some(error), _) => failure_of(error),
        (None, None) => RequestFailure::NoResponse,
        (None, Some(mut response)) => match response.take(StatusFields::STATUS_CODE) {
            Some(Scalar::Int(code)) if code != 200 => RequestFailure::Status(code),
            _ => return malformed(MalformedKind::Shape, original.to_string()),
        },
    };
    ParsedLine::Failed {
        receipt,
        custom_id,
        failure,
    }
}

#[cfg(test)]
#[path = "output_tests.rs"]
mod tests;
