//! Lenient pieces of JSON for the parts of a line that must be judged one by one.
//!
//! Derived structs reject a whole value when one field has the wrong type; the rules want one bad
//! result (or target) skipped, not its line, so those values are read through these visitors,
//! which never fail on types and borrow strings from the input whenever they carry no escapes.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// A JSON value seen only as far as the parsers care: containers are skipped, not built.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar<'a> {
    Str(Cow<'a, str>),
    Bool(bool),
    Int(i64),
    Null,
    /// A float, an array or an object.
    Other,
}

impl Scalar<'_> {
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Scalar::Str(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Scalar::Str(_) => "a string",
            Scalar::Bool(_) => "a boolean",
            Scalar::Int(_) => "an integer",
            Scalar::Null => "null",
            Scalar::Other => "a float, array or object",
        }
    }

    /// A string or number rendered for logs (error codes come as either).
    pub(crate) fn to_text(&self) -> Option<String> {
        match self {
            Scalar::Str(s) => Some(s.clone().into_owned()),
            Scalar::Int(i) => Some(i.to_string()),
            Scalar::Bool(b) => Some(b.to_string()),
            Scalar::Null | Scalar::Other => None,
        }
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(i64::try_from(v).map_or(Scalar::Other, Scalar::Int))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Scalar<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor)
    }
}

/// Derived structs also accept a JSON array (serde's tuple form), so a line or an answer must be
/// seen to be an object before it is read as one. `None` when the text is an object; otherwise
/// whether it is JSON at all.
pub(crate) fn not_an_object(text: &[u8]) -> Option<bool> {
    if text.trim_ascii_start().first() == Some(&b'{') {
        return None;
    }
    Some(serde_json::from_slice::<IgnoredAny>(text).is_ok())
}

/// The keys a [`Picked`] keeps; every other key is skipped.
pub(crate) trait FieldNames {
    const NAMES: &'static [&'static str];
}

const MAX_PICKED: usize = 4;

/// The named fields of a JSON object, each as a [`Scalar`]; any other JSON value reads as "not
/// an object" instead of failing. A key given twice keeps its last value, as Python's `json`
/// (which wrote and reads these files elsewhere) does.
pub(crate) struct Picked<'a, F> {
    pub(crate) is_object: bool,
    values: [Option<Scalar<'a>>; MAX_PICKED],
    names: PhantomData<F>,
}

impl<'a, F: FieldNames> Picked<'a, F> {
    fn not_object() -> Self {
        Picked {
            is_object: false,
            values: Default::default(),
            names: PhantomData,
        }
    }

    /// An object whose first three named fields had these values (`None`: absent).
    pub(crate) fn object(values: [Option<Scalar<'a>>; 3]) -> Self {
        let [a, b, c] = values;
        Picked {
            is_object: true,
            values: [a, b, c, None],
            names: PhantomData,
        }
    }

    /// Any JSON value other than an object.
    pub(crate) fn not_an_object() -> Self {
        Self::not_object()
    }

    /// The value of `F::NAMES[i]`, when the key was present.
    pub(crate) fn take(&mut self, i: usize) -> Option<Scalar<'a>> {
        self.values.get_mut(i).and_then(Option::take)
    }
}

pub(crate) struct KeySeed(pub(crate) &'static [&'static str]);

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|n| *n == v))
    }
}

struct PickedVisitor<'a, F>(PhantomData<(Picked<'a, F>, F)>);

impl<'de: 'a, 'a, F: FieldNames> Visitor<'de> for PickedVisitor<'a, F> {
    type Value = Picked<'a, F>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut picked = Picked {
            is_object: true,
            ..Picked::not_object()
        };
        while let Some(key) = map.next_key_seed(KeySeed(F::NAMES))? {
            match key {
                Some(i) if i < MAX_PICKED => picked.values[i] = Some(map.next_value()?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(picked)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Picked::not_object())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Picked::not_object())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Picked::not_object())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Picked::not_object())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Picked::not_object())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Picked::not_object())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Picked::not_object())
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Picked::not_object())
    }
}

impl<'de: 'a, 'a, F: FieldNames> Deserialize<'de> for Picked<'a, F> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PickedVisitor(PhantomData))
    }
}

/// The fields of one model result or one prompt target.
pub(crate) struct EntryFields;

impl EntryFields {
    pub(crate) const ID: usize = 0;
    pub(crate) const IS_VALID: usize = 1;
    pub(crate) const CORRECT_LABEL: usize = 2;
}

impl FieldNames for EntryFields {
    const NAMES: &'static [&'static str] = &["id", "is_valid", "correct_label"];
}

/// The fields of a request's `error` object.
pub(crate) struct ErrorFields;

impl ErrorFields {
    pub(crate) const CODE: usize = 0;
    pub(crate) const MESSAGE: usize = 1;
}

impl FieldNames for ErrorFields {
    const NAMES: &'static [&'static str] = &["code", "message"];
}

/// The one field of a `response` read when the rest of it has an unexpected shape.
pub(crate) struct StatusFields;

impl StatusFields {
    pub(crate) const STATUS_CODE: usize = 0;
}

impl FieldNames for StatusFields {
    const NAMES: &'static [&'static str] = &["status_code"];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalar_borrows_unescaped_strings_and_skips_containers() {
        let v: Vec<Scalar<'_>> =
            serde_json::from_str(r#"["a", "b\"c", true, 3, -4, 1.5, null, [1, [2]], {"x": {}}]"#)
                .unwrap();
        assert!(matches!(&v[0], Scalar::Str(Cow::Borrowed("a"))));
        assert!(matches!(&v[1], Scalar::Str(Cow::Owned(s)) if s == "b\"c"));
        assert_eq!(v[2], Scalar::Bool(true));
        assert_eq!(v[3], Scalar::Int(3));
        assert_eq!(v[4], Scalar::Int(-4));
        assert_eq!(v[5], Scalar::Other);
        assert_eq!(v[6], Scalar::Null);
        assert_eq!(v[7], Scalar::Other);
        assert_eq!(v[8], Scalar::Other);
    }

    #[test]
    fn picked_keeps_named_fields_last_value_wins_and_never_fails_on_types() {
        let mut v: Vec<Picked<'_, EntryFields>> = serde_json::from_str(
            r#"[{"id": "x", "confidence": [1, 2], "id": "y", "is_valid": "yes"}, 5, "s", null, []]"#,
        )
        .unwrap();
        assert!(v[0].is_object);
        assert_eq!(v[0].take(EntryFields::ID), Some(Scalar::Str("y".into())));
        assert_eq!(
            v[0].take(EntryFields::IS_VALID),
            Some(Scalar::Str("yes".into()))
        );
        assert_eq!(v[0].take(EntryFields::CORRECT_LABEL), None);
        assert!(v[1..].iter().all(|p| !p.is_object));
    }
}
