//! The byte-level reading of an output line of the usual shape: the first of the three
//! readings [`super::OutputParser`] tries, and the one nearly every line of a real file takes.
//!
//! Why a hand-written scanner and not `serde_json`: reading a 200 MB output file was slower
//! than parsing it into `serde_json::Value`, which builds every map and string. A line is
//! mostly one big escaped string (the answer), and the work that matters is finding its end,
//! unescaping it once and reading the few fields of each result. This scanner does exactly
//! that, without allocating: it validates every byte of the line as JSON, skips unneeded values
//! in place (eight bytes at a time inside strings), and borrows each result's id from the
//! answer.
//!
//! It only ever accepts a subset of JSON and of the line shapes: anything it is not sure of
//! (an escape `\u` of a surrogate, an escaped key, a number where a value is read, nesting
//! deeper than [`super::cursor::MAX_DEPTH`], a duplicate key where one is read, a failed
//! request, ...) makes it give up, and the line goes to the serde-based readings ([`super::fast`], then the
//! general path), which then read it exactly as they always have. So what it accepts is valid
//! JSON that the general path reads with the same values (a test compares them line for line,
//! on hand-picked and on randomly mutated lines); it only makes the common line cheaper.

use std::borrow::Cow;

use super::cursor::Cursor;
use super::escaped::{Results, results_in_place};
use super::json::{EntryFields, Picked, Scalar};
use super::output::{ParsedLine, ParsedResult, ResultSkip, check_result};
use crate::model::ReceiptKey;

/// Buffers kept from line to line.
#[derive(Debug, Default)]
pub(crate) struct ScanScratch {
    /// The unescaped answer (valid UTF-8: see [`unescape`]; its strings are checked again as
    /// they are read).
    answer: Vec<u8>,
}

/// A cursor over the bytes of one JSON text. Every method returns `None` to give up.
struct Scan<'a> {
    s: &'a [u8],
    i: usize,
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// The index of the first byte at or after `i` that ends a plain run inside a string: `"`,
/// `\`, a control character or a non-ASCII byte; `s.len()` when there is none.
#[inline]
pub(crate) fn skip_plain(s: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = s.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        let quote = w ^ (LO * u64::from(b'"'));
        let backslash = w ^ (LO * u64::from(b'\\'));
        // A byte is flagged when it is zero in `quote` or `backslash`, below 0x20, or has its
        // high bit set; borrows only run upwards from a flagged byte, so the lowest flag is
        // exact.
        let found = ((quote.wrapping_sub(LO) & !quote)
            | (backslash.wrapping_sub(LO) & !backslash)
            | (w.wrapping_sub(LO * 0x20) & !w)
            | w)
            & HI;
        if found != 0 {
            return i + (found.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&b) = s.get(i) {
        if b == b'"' || b == b'\\' || !(0x20..0x80).contains(&b) {
            return i;
        }
        i += 1;
    }
    i
}

fn hex4(digits: &[u8]) -> Option<u32> {
    let mut v = 0;
    for d in digits {
        v = v * 16 + char::from(*d).to_digit(16)?;
    }
    Some(v)
}

/// The contents of a string as found, and whether they hold escapes.
#[derive(Clone, Copy)]
struct Str<'a> {
    raw: &'a [u8],
    escaped: bool,
}

impl<'a> Str<'a> {
    /// The string's value: borrowed when it has no escapes. Its bytes were validated.
    fn text(self) -> Option<Cow<'a, str>> {
        if self.escaped {
            let mut out = Vec::new();
            unescape(self.raw, &mut out)?;
            String::from_utf8(out).ok().map(Cow::Owned)
        } else {
            std::str::from_utf8(self.raw).ok().map(Cow::Borrowed)
        }
    }
}

/// Appends the value of string contents the scan validated to `out`: the bytes of a valid
/// UTF-8 string (escapes are ASCII, and `\u` of a surrogate never gets this far). `None` when
/// an escape cannot be read (never, after the scan).
fn unescape(raw: &[u8], out: &mut Vec<u8>) -> Option<()> {
    let mut i = 0;
    loop {
        let run = raw[i..]
            .iter()
            .position(|b| *b == b'\\')
            .map_or(raw.len(), |p| i + p);
        out.extend_from_slice(&raw[i..run]);
        if run == raw.len() {
            return Some(());
        }
        let simple = match *raw.get(run + 1)? {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 8,
            b'f' => 12,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            _ => {
                let c = char::from_u32(hex4(raw.get(run + 2..run + 6)?)?)?;
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                i = run + 6;
                continue;
            }
        };
        out.push(simple);
        i = run + 2;
    }
}

impl<'a> Cursor<'a> for Scan<'a> {
    const STRING_START: u8 = b'"';

    #[inline]
    fn bytes(&self) -> &'a [u8] {
        self.s
    }

    #[inline]
    fn at(&mut self) -> &mut usize {
        &mut self.i
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.s.get(self.i) {
            self.i += 1;
        }
    }

    fn skip_string(&mut self) -> Option<()> {
        self.string().map(drop)
    }

    /// A key with escapes gives up.
    fn key(&mut self) -> Option<&'a [u8]> {
        let key = self.string()?;
        (!key.escaped).then_some(key.raw)
    }
}

impl<'a> Scan<'a> {
    fn new(s: &'a [u8]) -> Self {
        Scan { s, i: 0 }
    }

    /// Only whitespace left.
    fn end(&mut self) -> Option<()> {
        self.ws();
        (self.i == self.s.len()).then_some(())
    }

    /// A string at the cursor, validated as serde_json validates a string it reads (escapes,
    /// no control characters, UTF-8), and stricter: `\u` of a surrogate gives up.
    fn string(&mut self) -> Option<Str<'a>> {
        self.string_to(None)
    }

    /// [`string`](Self::string), appending its value to `out` on the way (one pass over a
    /// long answer instead of two). On `None`, `out` holds a part of it.
    fn string_to(&mut self, mut out: Option<&mut Vec<u8>>) -> Option<Str<'a>> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.i + 1;
        let mut i = start;
        let (mut escaped, mut non_ascii) = (false, false);
        loop {
            let from = i;
            i = skip_plain(self.s, i);
            if let Some(out) = out.as_deref_mut() {
                out.extend_from_slice(&self.s[from..i]);
            }
            match *self.s.get(i)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    let (len, value) = match *self.s.get(i + 1)? {
                        b'"' => (2, '"'),
                        b'\\' => (2, '\\'),
                        b'/' => (2, '/'),
                        b'b' => (2, '\u{8}'),
                        b'f' => (2, '\u{c}'),
                        b'n' => (2, '\n'),
                        b'r' => (2, '\r'),
                        b't' => (2, '\t'),
                        b'u' => {
                            let v = hex4(self.s.get(i + 2..i + 6)?)?;
                            // A surrogate (half of a pair, or lone) is left to serde.
                            (6, char::from_u32(v)?)
                        }
                        _ => return None,
                    };
                    if let Some(out) = out.as_deref_mut() {
                        out.extend_from_slice(value.encode_utf8(&mut [0; 4]).as_bytes());
                    }
                    i += len;
                }
                b if b >= 0x80 => {
                    non_ascii = true;
                    if let Some(out) = out.as_deref_mut() {
                        out.push(b);
                    }
                    i += 1;
                }
                _ => return None,
            }
        }
        let raw = &self.s[start..i];
        if non_ascii {
            std::str::from_utf8(raw).ok()?;
        }
        self.i = i + 1;
        Some(Str { raw, escaped })
    }

    /// `null`, or an object read by `then`.
    fn null_or_object(
        &mut self,
        depth: usize,
        then: impl FnMut(&mut Self, &'a [u8]) -> Option<()>,
    ) -> Option<()> {
        if self.peek()? == b'n' {
            self.literal(b"null")
        } else {
            self.object(depth, then)
        }
    }
}

/// Sets `seen`, giving up when it was set already (a known key given twice).
fn once(seen: &mut bool) -> Option<()> {
    (!std::mem::replace(seen, true)).then_some(())
}

/// The answer candidates of a message, in the order of preference (`function_call.arguments`,
/// `tool_calls[0].function.arguments`, `content`).
struct Answers<'b> {
    /// The unescaped candidates, one after another.
    buf: &'b mut Vec<u8>,
    found: [Option<Found>; 3],
    /// The line's receipt, once its `custom_id` was read: a candidate is read in place
    /// ([`results_in_place`]) only then, as its results are judged against it.
    receipt: Option<ReceiptKey>,
}

/// An answer candidate: read in place, or unescaped into [`Answers::buf`] to be read after
/// the line.
enum Found {
    InPlace(Results),
    Buffered(std::ops::Range<usize>),
}

/// A number serde reads as an `i64` or `u64` for sure (where serde reads a number rather than
/// skipping it, a float could be out of its range and fail the line).
fn small_integer(n: &[u8]) -> Option<()> {
    (n.len() <= 18 && n.iter().all(|b| b.is_ascii_digit() || *b == b'-')).then_some(())
}

/// An answer candidate: a string is kept for `slot` (none: validated only); `null`, booleans
/// and integers are no answer; anything else gives up.
fn answer(sc: &mut Scan<'_>, answers: &mut Answers<'_>, slot: Option<usize>) -> Option<()> {
    match sc.peek()? {
        b'"' => {
            if let Some(slot) = slot {
                if let Some(receipt) = &answers.receipt
                    && let Some((results, after)) = results_in_place(sc.s, sc.i, receipt)
                {
                    sc.i = after;
                    answers.found[slot] = Some(Found::InPlace(results));
                    return Some(());
                }
                let start = answers.buf.len();
                sc.string_to(Some(answers.buf))?;
                answers.found[slot] = Some(Found::Buffered(start..answers.buf.len()));
            } else {
                sc.string()?;
            }
            Some(())
        }
        b't' => sc.literal(b"true"),
        b'f' => sc.literal(b"false"),
        b'n' => sc.literal(b"null"),
        _ => small_integer(sc.number()?),
    }
}

/// `function_call` or a tool call's `function`: its `arguments` go to `slot`.
fn call<'a>(
    sc: &mut Scan<'a>,
    depth: usize,
    answers: &mut Answers<'_>,
    slot: Option<usize>,
) -> Option<()> {
    let mut seen = false;
    sc.null_or_object(depth, |sc, key| match key {
        b"arguments" => {
            once(&mut seen)?;
            answer(sc, answers, slot)
        }
        _ => sc.skip(depth + 1),
    })
}

fn message<'a>(sc: &mut Scan<'a>, depth: usize, answers: &mut Answers<'_>) -> Option<()> {
    let mut seen = [false; 3];
    sc.object(depth, |sc, key| match key {
        b"function_call" => {
            once(&mut seen[0])?;
            call(sc, depth + 1, answers, Some(0))
        }
        b"tool_calls" => {
            once(&mut seen[1])?;
            if sc.peek()? == b'n' {
                return sc.literal(b"null");
            }
            sc.array(depth + 1, |sc, n| {
                let slot = (n == 0).then_some(1);
                let mut function = false;
                sc.object(depth + 2, |sc, key| match key {
                    b"function" => {
                        once(&mut function)?;
                        call(sc, depth + 3, answers, slot)
                    }
                    _ => sc.skip(depth + 3),
                })
            })
        }
        b"content" => {
            once(&mut seen[2])?;
            answer(sc, answers, Some(2))
        }
        _ => sc.skip(depth + 1),
    })
}

/// `response`: status 200 and a body with exactly one choice that has a message.
fn response<'a>(sc: &mut Scan<'a>, answers: &mut Answers<'_>) -> Option<()> {
    let (mut status, mut body) = (false, false);
    sc.object(1, |sc, key| match key {
        b"status_code" => {
            once(&mut status)?;
            (sc.number()? == b"200").then_some(())
        }
        b"body" => {
            once(&mut body)?;
            let mut choices = false;
            sc.object(2, |sc, key| match key {
                b"choices" => {
                    once(&mut choices)?;
                    let mut n = 0;
                    sc.array(3, |sc, i| {
                        n += 1;
                        if i > 0 {
                            return None;
                        }
                        let mut seen = false;
                        sc.object(4, |sc, key| match key {
                            b"message" => {
                                once(&mut seen)?;
                                message(sc, 5, answers)
                            }
                            _ => sc.skip(5),
                        })?;
                        seen.then_some(())
                    })?;
                    (n == 1).then_some(())
                }
                _ => sc.skip(3),
            })?;
            choices.then_some(())
        }
        _ => sc.skip(2),
    })?;
    (status && body).then_some(())
}

/// The reading of `line` (trimmed, non-empty), `None` when it is not of the usual shape or
/// uses JSON this scanner leaves to serde.
pub(crate) fn scan_usual(line: &[u8], scratch: &mut ScanScratch) -> Option<ParsedLine> {
    let mut sc = Scan::new(line);
    scratch.answer.clear();
    let mut answers = Answers {
        buf: &mut scratch.answer,
        found: Default::default(),
        receipt: None,
    };
    let (mut seen_custom_id, mut seen_response, mut seen_error) = (false, false, false);
    sc.object(0, |sc, key| match key {
        b"custom_id" => {
            once(&mut seen_custom_id)?;
            // A custom_id that names no receipt gives up here rather than after the line.
            let receipt = ReceiptKey::parse_custom_id(&sc.string()?.text()?).ok()?;
            answers.receipt = Some(receipt);
            Some(())
        }
        b"response" => {
            once(&mut seen_response)?;
            response(sc, &mut answers)
        }
        b"error" => {
            once(&mut seen_error)?;
            // A set `error` is a failed request: the general path's business.
            sc.literal(b"null")
        }
        _ => sc.skip(1),
    })?;
    sc.end()?;
    if !seen_response {
        return None;
    }
    let receipt = answers.receipt?;
    let results = match answers.found.into_iter().flatten().next()? {
        Found::InPlace(results) => results,
        Found::Buffered(answer) => scan_results(&receipt, &scratch.answer[answer])?,
    };
    Some(ParsedLine::Answered { receipt, results })
}

/// `{"results": [...]}` judged entry by entry; `None` when it is anything else.
fn scan_results(receipt: &ReceiptKey, arguments: &[u8]) -> Option<Results> {
    let mut sc = Scan::new(arguments);
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
    sc.end()?;
    results
}

/// A value of an entry's field as [`Scalar`] reads it; numbers give up (a float could be out
/// of serde's range).
fn scalar<'a>(sc: &mut Scan<'a>, depth: usize) -> Option<Scalar<'a>> {
    Some(match sc.peek()? {
        b'"' => Scalar::Str(sc.string()?.text()?),
        b't' => sc.literal(b"true").map(|()| Scalar::Bool(true))?,
        b'f' => sc.literal(b"false").map(|()| Scalar::Bool(false))?,
        b'n' => sc.literal(b"null").map(|()| Scalar::Null)?,
        b'{' | b'[' => sc.skip(depth).map(|()| Scalar::Other)?,
        _ => return None,
    })
}

/// One element of `results`, read as [`Picked`] reads it (the last of a repeated key wins)
/// and judged by [`check_result`].
fn entry<'a>(sc: &mut Scan<'a>, receipt: &ReceiptKey) -> Option<Result<ParsedResult, ResultSkip>> {
    let mut values: [Option<Scalar<'a>>; 3] = Default::default();
    let picked = match sc.peek()? {
        b'{' => {
            sc.object(2, |sc, key| {
                let at = match key {
                    b"id" => EntryFields::ID,
                    b"is_valid" => EntryFields::IS_VALID,
                    b"correct_label" => EntryFields::CORRECT_LABEL,
                    _ => return sc.skip(3),
                };
                values[at] = Some(scalar(sc, 3)?);
                Some(())
            })?;
            Picked::object(values)
        }
        b'"' | b'[' | b't' | b'f' | b'n' => {
            sc.skip(2)?;
            Picked::not_an_object()
        }
        _ => {
            small_integer(sc.number()?)?;
            Picked::not_an_object()
        }
    };
    Some(check_result(receipt, picked))
}
