//! The one-pass reading of an output line of the usual shape (a completed request with one
//! choice): hand-written visitors that go straight to the answer string, unescape it once into
//! a buffer reused from line to line, and judge its results as they are read (no intermediate
//! vectors of choices or entries).
//!
//! It only ever accepts: anything unusual (a failed request, a duplicate key, a field of an
//! unexpected type, no answer, an answer that is not `{"results": [...]}`) makes it give up,
//! and the line is classified by the general path in [`super::output`], which then reads it
//! exactly as it always has. So the fast path cannot change how any line is classified; it
//! only makes the common line cheaper. It reads with the same `serde_json` deserializer and
//! skips unknown fields with the same [`IgnoredAny`], so a line it accepts is one the general
//! path accepts with the same values.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::json::{EntryFields, KeySeed, Picked, Scalar};
use super::output::{ParsedLine, check_result};
use crate::model::ReceiptKey;

/// Where the answer candidates of a message are in [`Scratch::buf`], in the order of
/// preference (`function_call.arguments`, `tool_calls[0].function.arguments`, `content`).
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    buf: String,
    answers: [Option<Range<usize>>; 3],
}

/// Gives up on the fast path; the error text is never shown.
fn give_up<E: de::Error>() -> E {
    E::custom("not the usual shape")
}

fn once<E: de::Error>(seen: &mut bool) -> Result<(), E> {
    if std::mem::replace(seen, true) {
        Err(give_up())
    } else {
        Ok(())
    }
}

/// The fast reading of `line` (trimmed, non-empty), `None` when it is not of the usual shape.
pub(crate) fn parse_usual(line: &[u8], scratch: &mut Scratch) -> Option<ParsedLine> {
    scratch.buf.clear();
    scratch.answers = Default::default();
    let mut de = serde_json::Deserializer::from_slice(line);
    let custom_id = de.deserialize_map(LineVisitor(scratch)).ok()?;
    de.end().ok()?;
    let receipt = ReceiptKey::parse_custom_id(&custom_id).ok()?;
    let answer = scratch.answers.iter().flatten().next()?.clone();
    parse_results(receipt, &scratch.buf[answer])
}

/// `{"results": [...]}` judged entry by entry; `None` when it is anything else.
fn parse_results(receipt: ReceiptKey, arguments: &str) -> Option<ParsedLine> {
    if arguments.trim_ascii_start().as_bytes().first() != Some(&b'{') {
        return None;
    }
    let mut de = serde_json::Deserializer::from_str(arguments);
    let results = de.deserialize_map(ArgumentsVisitor(&receipt)).ok()?;
    de.end().ok()?;
    Some(ParsedLine::Answered { receipt, results })
}

type Results = Vec<Result<super::output::ParsedResult, super::output::ResultSkip>>;

struct ArgumentsVisitor<'r>(&'r ReceiptKey);

impl<'de> Visitor<'de> for ArgumentsVisitor<'_> {
    type Value = Results;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an arguments object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Results, A::Error> {
        let mut results = None;
        while let Some(key) = map.next_key_seed(KeySeed(&["results"]))? {
            match key {
                Some(_) if results.is_some() => return Err(give_up()),
                Some(_) => results = Some(map.next_value_seed(ResultsSeed(self.0))?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        results.ok_or_else(give_up)
    }
}

struct ResultsSeed<'r>(&'r ReceiptKey);

impl<'de> DeserializeSeed<'de> for ResultsSeed<'_> {
    type Value = Results;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Results, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ResultsSeed<'_> {
    type Value = Results;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a results array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Results, A::Error> {
        let mut results = Vec::with_capacity(seq.size_hint().unwrap_or(32));
        while let Some(entry) = seq.next_element::<Picked<'_, EntryFields>>()? {
            results.push(check_result(self.0, entry));
        }
        Ok(results)
    }
}

/// The line object: its `custom_id`, with the answer candidates left in the scratch buffer.
struct LineVisitor<'s>(&'s mut Scratch);

impl<'de> Visitor<'de> for LineVisitor<'_> {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an output line object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut custom_id, mut response, mut error) = (None, false, false);
        while let Some(key) = map.next_key_seed(KeySeed(&["custom_id", "response", "error"]))? {
            match key {
                Some(0) => match map.next_value::<Scalar<'de>>()? {
                    Scalar::Str(s) if custom_id.is_none() => custom_id = Some(s),
                    _ => return Err(give_up()),
                },
                Some(1) => {
                    once(&mut response)?;
                    map.next_value_seed(Object(ResponseVisitor(&mut *self.0)))?;
                }
                Some(_) => {
                    once(&mut error)?;
                    // A set `error` is a failed request: the general path's business.
                    if map.next_value::<Scalar<'_>>()? != Scalar::Null {
                        return Err(give_up());
                    }
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if !response {
            return Err(give_up());
        }
        custom_id.ok_or_else(give_up)
    }
}

/// An object read by the visitor it wraps; any other JSON value gives up.
struct Object<V>(V);

impl<'de, V: Visitor<'de, Value = ()>> DeserializeSeed<'de> for Object<V> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self.0)
    }
}

/// `null` (nothing) or an object read by the visitor it wraps.
struct NullOr<V>(V);

impl<'de, V: Visitor<'de, Value = ()>> DeserializeSeed<'de> for NullOr<V> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, V: Visitor<'de, Value = ()>> Visitor<'de> for NullOr<V> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("null or an object")
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self.0)
    }
}

/// Declares a visitor of an object whose known keys are each read at most once.
macro_rules! object_visitor {
    ($name:ident, $what:literal, $keys:expr, |$self:ident, $map:ident, $key:ident| $body:block, |$done:ident| $finish:block) => {
        impl<'de> Visitor<'de> for $name<'_> {
            type Value = ();

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str($what)
            }

            fn visit_map<A: MapAccess<'de>>(self, mut $map: A) -> Result<(), A::Error> {
                const KEYS: &[&str] = $keys;
                let $self = self;
                let mut $done = [false; KEYS.len()];
                while let Some(key) = $map.next_key_seed(KeySeed(KEYS))? {
                    match key {
                        Some($key) => {
                            once(&mut $done[$key])?;
                            $body
                        }
                        None => {
                            $map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                $finish
            }
        }
    };
}

struct ResponseVisitor<'s>(&'s mut Scratch);

object_visitor!(
    ResponseVisitor,
    "a response object",
    &["status_code", "body"],
    |this, map, key| {
        if key == 0 {
            // Any other status is a failed request: the general path's business.
            if map.next_value::<Scalar<'_>>()? != Scalar::Int(200) {
                return Err(give_up());
            }
        } else {
            map.next_value_seed(Object(BodyVisitor(&mut *this.0)))?;
        }
    },
    |done| {
        if done == [true, true] {
            Ok(())
        } else {
            Err(give_up())
        }
    }
);

struct BodyVisitor<'s>(&'s mut Scratch);

object_visitor!(
    BodyVisitor,
    "a response body",
    &["choices"],
    |this, map, _key| {
        map.next_value_seed(Choices(&mut *this.0))?;
    },
    |done| { if done[0] { Ok(()) } else { Err(give_up()) } }
);

/// Exactly one choice; any other number is the general path's business.
struct Choices<'s>(&'s mut Scratch);

impl<'de> DeserializeSeed<'de> for Choices<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Choices<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a choices array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        seq.next_element_seed(Object(ChoiceVisitor(self.0)))?
            .ok_or_else(give_up)?;
        match seq.next_element::<IgnoredAny>()? {
            None => Ok(()),
            Some(_) => Err(give_up()),
        }
    }
}

struct ChoiceVisitor<'s>(&'s mut Scratch);

object_visitor!(
    ChoiceVisitor,
    "a choice",
    &["message"],
    |this, map, _key| {
        map.next_value_seed(Object(MessageVisitor(&mut *this.0)))?;
    },
    |done| { if done[0] { Ok(()) } else { Err(give_up()) } }
);

struct MessageVisitor<'s>(&'s mut Scratch);

object_visitor!(
    MessageVisitor,
    "a message",
    &["function_call", "tool_calls", "content"],
    |this, map, key| {
        match key {
            0 => map.next_value_seed(NullOr(CallVisitor(&mut *this.0, Some(0))))?,
            1 => map.next_value_seed(ToolCalls(&mut *this.0))?,
            _ => map.next_value_seed(Answer(&mut *this.0, Some(2)))?,
        }
    },
    |_done| { Ok(()) }
);

/// `function_call` or a tool call's `function`; its `arguments` go to answer slot `.1` (none:
/// read, not kept).
struct CallVisitor<'s>(&'s mut Scratch, Option<usize>);

object_visitor!(
    CallVisitor,
    "a function call",
    &["arguments"],
    |this, map, _key| {
        map.next_value_seed(Answer(&mut *this.0, this.1))?;
    },
    |_done| { Ok(()) }
);

/// `null` or an array of tool calls: the first one's arguments are the candidate.
struct ToolCalls<'s>(&'s mut Scratch);

impl<'de> DeserializeSeed<'de> for ToolCalls<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> Visitor<'de> for ToolCalls<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("null or an array of tool calls")
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut slot = Some(1);
        while seq
            .next_element_seed(Object(ToolCallVisitor(&mut *self.0, slot.take())))?
            .is_some()
        {}
        Ok(())
    }
}

struct ToolCallVisitor<'s>(&'s mut Scratch, Option<usize>);

object_visitor!(
    ToolCallVisitor,
    "a tool call",
    &["function"],
    |this, map, _key| {
        map.next_value_seed(NullOr(CallVisitor(&mut *this.0, this.1)))?;
    },
    |_done| { Ok(()) }
);

/// An answer candidate: a string is copied (unescaped by the deserializer, once) into the
/// scratch buffer for slot `.1`; `null`, booleans and numbers are no answer; containers give up.
struct Answer<'s>(&'s mut Scratch, Option<usize>);

impl<'de> DeserializeSeed<'de> for Answer<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Answer<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an answer string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        if let Some(slot) = self.1 {
            let start = self.0.buf.len();
            self.0.buf.push_str(v);
            self.0.answers[slot] = Some(start..self.0.buf.len());
        }
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
}
