//! Reading and writing raw DynamoDB attribute maps, with errors that name the item and attribute.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

/// A raw DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

/// Why an item could not be decoded; names the item's key and the attribute at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("item PK={pk:?} SK={sk:?}: attribute {attribute}: {problem}")]
pub struct DecodeError {
    pub pk: String,
    pub sk: String,
    pub attribute: String,
    pub problem: String,
}

pub fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Null optional values are stored as `{"NULL": true}`, never left out.
pub fn s_or_null(v: Option<&str>) -> AttributeValue {
    match v {
        Some(v) => s(v),
        None => AttributeValue::Null(true),
    }
}

/// Decoding view of one item: every accessor reports errors against the item's key.
pub struct Reader<'a> {
    item: &'a Item,
    pk: String,
    sk: String,
}

impl<'a> Reader<'a> {
    pub fn new(item: &'a Item) -> Self {
        let key = |name: &str| match item.get(name) {
            Some(AttributeValue::S(v)) => v.clone(),
            Some(other) => format!("{other:?}"),
            None => String::new(),
        };
        Reader {
            pk: key("PK"),
            sk: key("SK"),
            item,
        }
    }

    pub fn pk(&self) -> &str {
        &self.pk
    }

    pub fn sk(&self) -> &str {
        &self.sk
    }

    pub fn error(&self, attribute: &str, problem: impl Into<String>) -> DecodeError {
        DecodeError {
            pk: self.pk.clone(),
            sk: self.sk.clone(),
            attribute: attribute.to_owned(),
            problem: problem.into(),
        }
    }

    /// A required string attribute.
    pub fn string(&self, name: &str) -> Result<&'a str, DecodeError> {
        match self.item.get(name) {
            Some(AttributeValue::S(v)) => Ok(v),
            Some(other) => Err(self.error(name, format!("expected S, found {}", type_name(other)))),
            None => Err(self.error(name, "missing")),
        }
    }

    /// A string attribute that may be missing or `NULL`.
    pub fn opt_string(&self, name: &str) -> Result<Option<&'a str>, DecodeError> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(v)) => Ok(Some(v)),
            Some(other) => Err(self.error(
                name,
                format!("expected S or NULL, found {}", type_name(other)),
            )),
        }
    }

    /// A required string parsed with `parse`, whose error text goes into the DecodeError.
    pub fn parsed<T, E: std::fmt::Display>(
        &self,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, E>,
    ) -> Result<T, DecodeError> {
        let raw = self.string(name)?;
        parse(raw).map_err(|e| self.error(name, e.to_string()))
    }

    pub fn number(&self, name: &str) -> Result<i64, DecodeError> {
        match self.item.get(name) {
            Some(AttributeValue::N(v)) => v
                .parse::<i64>()
                .map_err(|_| self.error(name, format!("not an integer: {v:?}"))),
            Some(other) => Err(self.error(name, format!("expected N, found {}", type_name(other)))),
            None => Err(self.error(name, "missing")),
        }
    }

    pub fn opt_number(&self, name: &str) -> Result<Option<i64>, DecodeError> {
        match self.item.get(name) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(_) => self.number(name).map(Some),
        }
    }

    pub fn list(&self, name: &str) -> Result<&'a [AttributeValue], DecodeError> {
        match self.item.get(name) {
            Some(AttributeValue::L(v)) => Ok(v),
            Some(other) => Err(self.error(name, format!("expected L, found {}", type_name(other)))),
            None => Err(self.error(name, "missing")),
        }
    }

    /// Checks a fixed attribute (e.g. `TYPE`) has the expected value.
    pub fn expect(&self, name: &str, expected: &str) -> Result<(), DecodeError> {
        let v = self.string(name)?;
        if v == expected {
            Ok(())
        } else {
            Err(self.error(name, format!("expected {expected:?}, found {v:?}")))
        }
    }
}

pub fn type_name(v: &AttributeValue) -> &'static str {
    match v {
        AttributeValue::B(_) => "B",
        AttributeValue::Bool(_) => "BOOL",
        AttributeValue::Bs(_) => "BS",
        AttributeValue::L(_) => "L",
        AttributeValue::M(_) => "M",
        AttributeValue::N(_) => "N",
        AttributeValue::Ns(_) => "NS",
        AttributeValue::Null(_) => "NULL",
        AttributeValue::S(_) => "S",
        AttributeValue::Ss(_) => "SS",
        _ => "unknown type",
    }
}

/// An item in DynamoDB's JSON wire format (`{"S": "…"}`), for golden comparisons and dumps.
pub fn to_wire_json(item: &Item) -> serde_json::Value {
    serde_json::Value::Object(
        item.iter()
            .map(|(k, v)| (k.clone(), value_to_wire_json(v)))
            .collect(),
    )
}

fn value_to_wire_json(v: &AttributeValue) -> serde_json::Value {
    use serde_json::json;
    match v {
        AttributeValue::S(s) => json!({ "S": s }),
        AttributeValue::N(n) => json!({ "N": n }),
        AttributeValue::Null(b) => json!({ "NULL": b }),
        AttributeValue::Bool(b) => json!({ "BOOL": b }),
        AttributeValue::L(l) => {
            json!({ "L": l.iter().map(value_to_wire_json).collect::<Vec<_>>() })
        }
        AttributeValue::M(m) => json!({ "M": to_wire_json(m) }),
        AttributeValue::Ss(s) => json!({ "SS": s }),
        AttributeValue::Ns(s) => json!({ "NS": s }),
        other => json!({ "?": format!("{other:?}") }),
    }
}

/// The inverse of [`to_wire_json`] for the types the table uses; `None` for anything else.
pub fn from_wire_json(v: &serde_json::Value) -> Option<Item> {
    v.as_object()?
        .iter()
        .map(|(k, v)| Some((k.clone(), value_from_wire_json(v)?)))
        .collect()
}

fn value_from_wire_json(v: &serde_json::Value) -> Option<AttributeValue> {
    let (tag, inner) = v.as_object()?.iter().next()?;
    Some(match tag.as_str() {
        "S" => AttributeValue::S(inner.as_str()?.to_owned()),
        "N" => AttributeValue::N(inner.as_str()?.to_owned()),
        "NULL" => AttributeValue::Null(inner.as_bool()?),
        "BOOL" => AttributeValue::Bool(inner.as_bool()?),
        "L" => AttributeValue::L(
            inner
                .as_array()?
                .iter()
                .map(value_from_wire_json)
                .collect::<Option<_>>()?,
        ),
        "M" => AttributeValue::M(from_wire_json(inner)?),
        _ => return None,
    })
}
