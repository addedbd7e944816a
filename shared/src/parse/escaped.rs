//! The answer of an output line read in place, inside the JSON string that carries it: the
//! one-pass reading [`super::scan`] tries before unescaping the answer into a buffer and
//! reading it a second time.
//!
//! Why: the answer (`{"results": [...]}`, JSON inside a JSON string) is most of a line's bytes.
//! Unescaping it and then scanning the copy reads each byte twice and stops at every `\"`
//! twice. The answers OpenAI writes have a plain form: their only escapes are the `\"` around
//! their own strings, whose contents are printable ASCII without quotes or backslashes, and
//! their only whitespace is spaces. For such a string the unescaped text is the raw text with
//! each `\"` read as `"`, so the answer's JSON can be read from the line's bytes directly: a
//! `\"` opens or closes an inner string, and everything else is read as it stands.
//!
//! It only ever accepts that subset: any other escape (`\\`, `\n`, `\u`, ...), a raw quote, a
//! control or non-ASCII byte, a number where an entry's field is read, an answer that is not
//! `{"results": [...]}` makes it give up, and [`super::scan`] reads the string the usual way
//! (unescaped into its buffer, then scanned), which then decides exactly as it always has. So
//! what it accepts is read with the same values as the two-pass reading: the outer string is
//! valid JSON (printable ASCII and `\"` only), and the inner text it reads is the unescaped
//! string. Each result is judged by the same rules ([`check_result`]); the common result (a
//! canonical id of the line's receipt, a boolean `is_valid`, no or a label-like
//! `correct_label`) is built without going through [`Picked`].

use std::borrow::Cow;

use super::cursor::Cursor;
use super::json::{Picked, Scalar};
use super::output::{MAX_CORRECT_LABEL, ParsedResult, ResultSkip, check_result};
use super::result_id::ResultId;
use crate::model::ReceiptKey;

pub(crate) type Results = Vec<Result<ParsedResult, ResultSkip>>;

/// A cursor inside the contents of a JSON string holding JSON. Every method returns `None` to
/// give up.
struct Esc<'a> {
    s: &'a [u8],
    i: usize,
}

/// The value of one of an entry's three fields, as [`Scalar`] would read it.
#[derive(Clone, Copy)]
enum Value<'a> {
    Str(&'a [u8]),
    Bool(bool),
    Null,
    /// An array or an object.
    Other,
}

impl<'a> Cursor<'a> for Esc<'a> {
    const STRING_START: u8 = b'\\';

    #[inline]
    fn bytes(&self) -> &'a [u8] {
        self.s
    }

    #[inline]
    fn at(&mut self) -> &mut usize {
        &mut self.i
    }

    /// Inside a string only spaces: a line break or tab there would be an escape.
    #[inline]
    fn ws(&mut self) {
        while self.s.get(self.i) == Some(&b' ') {
            self.i += 1;
        }
    }

    fn skip_string(&mut self) -> Option<()> {
        self.string().map(drop)
    }

    fn key(&mut self) -> Option<&'a [u8]> {
        self.string()
    }
}

impl<'a> Esc<'a> {
    /// An inner string (`\"...\"`, plain contents); its contents.
    #[inline]
    fn string(&mut self) -> Option<&'a [u8]> {
        self.ws();
        if self.s.get(self.i..self.i + 2)? != b"\\\"" {
            return None;
        }
        let start = self.i + 2;
        let end = super::scan::skip_plain(self.s, start);
        // The first byte that is not plain must be the `\` of the closing `\"`.
        if self.s.get(end..end + 2)? != b"\\\"" {
            return None;
        }
        self.i = end + 2;
        Some(&self.s[start..end])
    }

    /// An inner string holding a canonical result id
    /// ([`ResultId::parse_canonical_prefix`]), read and parsed in one pass: the id and the
    /// string's contents. `None` (the cursor unmoved) for any other string or value.
    #[inline]
    fn id_string(&mut self, receipt: &ReceiptKey) -> Option<(ResultId, &'a [u8])> {
        self.ws();
        let start = self.i + 2;
        if self.s.get(self.i..start)? != b"\\\"" {
            return None;
        }
        let (id, len) = ResultId::parse_canonical_prefix(&self.s[start..], Some(receipt))?;
        // The id's bytes are printable ASCII without quotes or backslashes: a plain string
        // when its closing `\"` follows.
        let end = start + len;
        if self.s.get(end..end + 2)? != b"\\\"" {
            return None;
        }
        self.i = end + 2;
        Some((id, &self.s[start..end]))
    }

    /// A field value as [`Scalar`] reads it; numbers give up (as the two-pass reading does).
    fn value(&mut self, depth: usize) -> Option<Value<'a>> {
        Some(match self.peek()? {
            b'\\' => Value::Str(self.string()?),
            b't' => self.literal(b"true").map(|()| Value::Bool(true))?,
            b'f' => self.literal(b"false").map(|()| Value::Bool(false))?,
            b'n' => self.literal(b"null").map(|()| Value::Null)?,
            b'{' | b'[' => self.skip(depth).map(|()| Value::Other)?,
            _ => return None,
        })
    }
}

/// Reads the answer string whose opening quote is at `line[at]`, in place: its results and
/// the index after its closing quote; `None` when it is not of the plain form or not
/// `{"results": [...]}`.
pub(crate) fn results_in_place(
    line: &[u8],
    at: usize,
    receipt: &ReceiptKey,
) -> Option<(Results, usize)> {
    if line.get(at) != Some(&b'"') {
        return None;
    }
    let mut sc = Esc { s: line, i: at + 1 };
    if sc.peek()? != b'{' {
        return None;
    }
    let mut results = None;
    sc.object(0, |sc, key| match key {
        b"results" => {
            if results.is_some() {
                return None;
            }
            let mut entries = Vec::with_capacity(32);
            sc.array(1, |sc, _| {
                entries.push(entry(sc, receipt)?);
                Some(())
            })?;
            results = Some(entries);
            Some(())
        }
        _ => sc.skip(1),
    })?;
    sc.ws();
    // The end of the answer must be the end of the string.
    if sc.s.get(sc.i) != Some(&b'"') {
        return None;
    }
    Some((results?, sc.i + 1))
}

/// A number serde reads as an `i64` or `u64` for sure.
fn small_integer(n: &[u8]) -> Option<()> {
    (n.len() <= 18 && n.iter().all(|b| b.is_ascii_digit() || *b == b'-')).then_some(())
}

/// One element of `results` (the last of a repeated key wins, as [`Picked`] reads it), judged.
fn entry(sc: &mut Esc<'_>, receipt: &ReceiptKey) -> Option<Result<ParsedResult, ResultSkip>> {
    let at = sc.i;
    if let Some(result) = usual_entry(sc, receipt) {
        return Some(Ok(result));
    }
    sc.i = at;
    let mut values: [Option<Value<'_>>; 3] = [None; 3];
    // The value of `values[0]` parsed, when it is a canonical id (the last `id` wins).
    let mut parsed_id = None;
    match sc.peek()? {
        b'{' => {
            sc.object(2, |sc, key| {
                let at = match key {
                    b"id" => {
                        parsed_id = None;
                        if let Some((id, raw)) = sc.id_string(receipt) {
                            parsed_id = Some(id);
                            values[0] = Some(Value::Str(raw));
                            return Some(());
                        }
                        0
                    }
                    b"is_valid" => 1,
                    b"correct_label" => 2,
                    _ => return sc.skip(3),
                };
                values[at] = Some(sc.value(3)?);
                Some(())
            })?;
        }
        b'\\' | b'[' | b't' | b'f' | b'n' => {
            sc.skip(2)?;
            return Some(check_result(receipt, Picked::not_an_object()));
        }
        _ => {
            small_integer(sc.number()?)?;
            return Some(check_result(receipt, Picked::not_an_object()));
        }
    }
    if let Some(result) = usual_result(&values, parsed_id, receipt) {
        return Some(Ok(result));
    }
    // Anything else is judged as the two-pass reading judges it.
    let [id, is_valid, correct] = values;
    let picked = Picked::object([scalar(id)?, scalar(is_valid)?, scalar(correct)?]);
    Some(check_result(receipt, picked))
}

/// The usual entry, `{"id": <canonical id of the line's receipt>, "is_valid": <bool>}` with
/// an optional label-like `"correct_label"` string (or `null`), its keys in any order, each
/// once, read in one go: what [`entry`] and [`usual_result`] make of it, without looking up
/// each key. `None` (the cursor anywhere) for anything else, which [`entry`] then reads field
/// by field.
#[inline]
fn usual_entry(sc: &mut Esc<'_>, receipt: &ReceiptKey) -> Option<ParsedResult> {
    /// Whether `"key":` is at the cursor (after spaces), the key spelled with its escaped
    /// quotes; the cursor moves past the colon only if it is.
    #[inline]
    fn key(sc: &mut Esc<'_>, quoted: &[u8]) -> Option<bool> {
        sc.ws();
        let end = sc.i + quoted.len();
        if sc.s.get(sc.i..end) != Some(quoted) {
            return Some(false);
        }
        sc.i = end;
        sc.eat(b':').map(|()| true)
    }
    sc.eat(b'{')?;
    let (mut id, mut is_valid, mut correct_label) = (None, None, None);
    loop {
        if key(sc, b"\\\"id\\\"")? {
            if id.is_some() {
                return None;
            }
            id = Some(sc.id_string(receipt)?.0);
        } else if key(sc, b"\\\"is_valid\\\"")? {
            if is_valid.is_some() {
                return None;
            }
            is_valid = Some(match sc.peek()? {
                b't' => sc.literal(b"true").map(|()| true)?,
                b'f' => sc.literal(b"false").map(|()| false)?,
                _ => return None,
            });
        } else if key(sc, b"\\\"correct_label\\\"")? {
            if correct_label.is_some() {
                return None;
            }
            correct_label = Some(match sc.peek()? {
                b'n' => sc.literal(b"null").map(|()| None)?,
                _ => {
                    let s = sc.string()?;
                    let label_like = s.len() <= MAX_CORRECT_LABEL
                        && s.iter()
                            .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b' ');
                    if !label_like {
                        return None;
                    }
                    // Empty: no suggestion, as `check_result` reads it.
                    if s.is_empty() {
                        None
                    } else {
                        Some(std::str::from_utf8(s).ok()?.to_owned())
                    }
                }
            });
        } else {
            return None;
        }
        match sc.peek()? {
            b',' => sc.i += 1,
            b'}' => {
                sc.i += 1;
                break;
            }
            _ => return None,
        }
    }
    let id = id?;
    if id.label.word.receipt != *receipt {
        return None;
    }
    Some(ParsedResult {
        label: id.label,
        status_at_submit: id.status_at_submit,
        is_valid: is_valid?,
        correct_label: correct_label.flatten(),
    })
}

/// A field as [`Scalar`] holds it (`None` inside: absent); `None` never happens (plain
/// contents are printable ASCII).
fn scalar(v: Option<Value<'_>>) -> Option<Option<Scalar<'_>>> {
    Some(match v {
        None => None,
        Some(Value::Str(s)) => Some(Scalar::Str(Cow::Borrowed(std::str::from_utf8(s).ok()?))),
        Some(Value::Bool(b)) => Some(Scalar::Bool(b)),
        Some(Value::Null) => Some(Scalar::Null),
        Some(Value::Other) => Some(Scalar::Other),
    })
}

/// The result of an entry that [`check_result`] accepts, built directly; `None` when anything
/// about it needs judging (the id, its receipt, `is_valid`, `correct_label`).
#[inline]
fn usual_result(
    values: &[Option<Value<'_>>; 3],
    parsed_id: Option<ResultId>,
    receipt: &ReceiptKey,
) -> Option<ParsedResult> {
    let (Some(Value::Str(id)), Some(Value::Bool(is_valid))) = (values[0], values[1]) else {
        return None;
    };
    let id = match parsed_id {
        Some(parsed) => parsed,
        None => ResultId::parse_canonical(id, Some(receipt))?,
    };
    if id.label.word.receipt != *receipt {
        return None;
    }
    let correct_label = match values[2] {
        Some(Value::Str(s)) if !s.is_empty() => {
            let label_like = s.len() <= MAX_CORRECT_LABEL
                && s.iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b' ');
            if !label_like {
                return None;
            }
            Some(std::str::from_utf8(s).ok()?.to_owned())
        }
        _ => None,
    };
    Some(ParsedResult {
        label: id.label,
        status_at_submit: id.status_at_submit,
        is_valid,
        correct_label,
    })
}
