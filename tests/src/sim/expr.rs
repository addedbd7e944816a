//! DynamoDB expressions as [`super::SimTable`] evaluates them: condition, key-condition, filter,
//! update and projection expressions, over items in the wire form (`{"S": "…"}`, `{"N": "…"}`).
//!
//! The grammar is the one the fleet writes (grep `condition_expression`, `update_expression`,
//! `key_condition_expression` in the workspace) and what DynamoDB documents around it:
//! comparisons (`=`, `<>`, `<`, `<=`, `>`, `>=`), `BETWEEN … AND …`, `IN (…)`, `AND`, `OR`,
//! `NOT`, parentheses, the functions `attribute_exists`, `attribute_not_exists`,
//! `attribute_type`, `begins_with`, `contains` and `size`; updates with `SET` (`+`, `-`,
//! `if_not_exists`, `list_append`), `REMOVE`, `ADD` and `DELETE`. Attribute paths are top-level
//! names (plain or `#placeholder`): a nested path (`a.b`, `a[0]`) fails loudly, as does every
//! other construct this module does not know, so the simulation can never quietly accept what
//! DynamoDB would treat differently. Reserved words as plain names, undefined or unused
//! placeholders are `ValidationException`s, as on DynamoDB.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashSet};
use std::sync::OnceLock;

use serde_json::{Map, Value};

/// An item (or key) in the wire form: attribute name → `{"TYPE": value}`.
pub type Attrs = Map<String, Value>;

/// A `ValidationException` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl Invalid {
    fn new(message: impl Into<String>) -> Self {
        Invalid(message.into())
    }
}

type Result<T> = std::result::Result<T, Invalid>;

fn reserved() -> &'static HashSet<&'static str> {
    static WORDS: OnceLock<HashSet<&'static str>> = OnceLock::new();
    WORDS.get_or_init(|| {
        include_str!("reserved_words.txt")
            .lines()
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .collect()
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Name(String),
    Value(String),
    LParen,
    RParen,
    Comma,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Plus,
    Minus,
}

fn tokenize(text: &str) -> Result<Vec<Tok>> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let word = |i: &mut usize| {
        let start = *i;
        while *i < chars.len() && (chars[*i].is_ascii_alphanumeric() || chars[*i] == '_') {
            *i += 1;
        }
        chars[start..*i].iter().collect::<String>()
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '#' | ':' => {
                i += 1;
                let w = word(&mut i);
                if w.is_empty() {
                    return Err(Invalid::new(format!(
                        "Invalid expression: a bare '{c}' in \"{text}\""
                    )));
                }
                out.push(if c == '#' {
                    Tok::Name(format!("#{w}"))
                } else {
                    Tok::Value(format!(":{w}"))
                });
            }
            c if c.is_ascii_alphabetic() || c == '_' => out.push(Tok::Ident(word(&mut i))),
            '(' => (out.push(Tok::LParen), i += 1).1,
            ')' => (out.push(Tok::RParen), i += 1).1,
            ',' => (out.push(Tok::Comma), i += 1).1,
            '=' => (out.push(Tok::Eq), i += 1).1,
            '+' => (out.push(Tok::Plus), i += 1).1,
            '-' => (out.push(Tok::Minus), i += 1).1,
            '<' if chars.get(i + 1) == Some(&'>') => (out.push(Tok::Ne), i += 2).1,
            '<' if chars.get(i + 1) == Some(&'=') => (out.push(Tok::Le), i += 2).1,
            '<' => (out.push(Tok::Lt), i += 1).1,
            '>' if chars.get(i + 1) == Some(&'=') => (out.push(Tok::Ge), i += 2).1,
            '>' => (out.push(Tok::Gt), i += 1).1,
            '.' | '[' => {
                return Err(Invalid::new(format!(
                    "SimTable does not support nested document paths ('{c}' in \"{text}\")"
                )));
            }
            other => {
                return Err(Invalid::new(format!(
                    "Invalid expression: unexpected character '{other}' in \"{text}\""
                )));
            }
        }
    }
    Ok(out)
}

/// The request's `ExpressionAttributeNames` and `ExpressionAttributeValues`, and which of them
/// the expressions used (DynamoDB refuses unused ones).
#[derive(Debug, Default)]
pub struct Placeholders {
    names: Map<String, Value>,
    values: Map<String, Value>,
    used_names: BTreeSet<String>,
    used_values: BTreeSet<String>,
}

impl Placeholders {
    pub fn new(names: Option<&Value>, values: Option<&Value>) -> Result<Self> {
        let map = |v: Option<&Value>, what: &str| -> Result<Map<String, Value>> {
            match v {
                None | Some(Value::Null) => Ok(Map::new()),
                Some(Value::Object(m)) if m.is_empty() => Err(Invalid::new(format!(
                    "ExpressionAttribute{what} must not be empty"
                ))),
                Some(Value::Object(m)) => Ok(m.clone()),
                Some(_) => Err(Invalid::new(format!(
                    "ExpressionAttribute{what} must be a map"
                ))),
            }
        };
        let values = map(values, "Values")?;
        for (k, v) in &values {
            check_value(v).map_err(|Invalid(m)| {
                Invalid(format!(
                    "ExpressionAttributeValues contains invalid value: {m} for key {k}"
                ))
            })?;
        }
        Ok(Placeholders {
            names: map(names, "Names")?,
            values,
            used_names: BTreeSet::new(),
            used_values: BTreeSet::new(),
        })
    }

    fn name(&mut self, placeholder: &str) -> Result<String> {
        match self.names.get(placeholder) {
            Some(Value::String(s)) => {
                self.used_names.insert(placeholder.to_owned());
                Ok(s.clone())
            }
            _ => Err(Invalid::new(format!(
                "Value provided in ExpressionAttributeNames unused in expressions or an \
                 expression attribute name used in the document path is not defined; \
                 attribute name: {placeholder}"
            ))),
        }
    }

    fn value(&mut self, placeholder: &str) -> Result<Value> {
        match self.values.get(placeholder) {
            Some(v) => {
                self.used_values.insert(placeholder.to_owned());
                Ok(v.clone())
            }
            None => Err(Invalid::new(format!(
                "An expression attribute value used in expression is not defined; \
                 attribute value: {placeholder}"
            ))),
        }
    }

    /// After every expression of the request is parsed: no placeholder may be left unused.
    pub fn finish(&self) -> Result<()> {
        let unused_names: Vec<&String> = self
            .names
            .keys()
            .filter(|k| !self.used_names.contains(*k))
            .collect();
        if !unused_names.is_empty() {
            return Err(Invalid::new(format!(
                "Value provided in ExpressionAttributeNames unused in expressions: keys: {{{}}}",
                join(&unused_names)
            )));
        }
        let unused_values: Vec<&String> = self
            .values
            .keys()
            .filter(|k| !self.used_values.contains(*k))
            .collect();
        if !unused_values.is_empty() {
            return Err(Invalid::new(format!(
                "Value provided in ExpressionAttributeValues unused in expressions: keys: {{{}}}",
                join(&unused_values)
            )));
        }
        Ok(())
    }
}

fn join(keys: &[&String]) -> String {
    keys.iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// An operand of a condition or of a `SET` action.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Path(String),
    Value(Value),
    Size(String),
    IfNotExists(String, Box<Operand>),
    ListAppend(Box<Operand>, Box<Operand>),
    Plus(Box<Operand>, Box<Operand>),
    Minus(Box<Operand>, Box<Operand>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
    Not(Box<Cond>),
    Compare(Operand, Cmp, Operand),
    Between(Operand, Operand, Operand),
    In(Operand, Vec<Operand>),
    Exists(String),
    NotExists(String),
    Type(String, Operand),
    BeginsWith(Operand, Operand),
    Contains(Operand, Operand),
}

struct Parser<'a> {
    toks: Vec<Tok>,
    at: usize,
    ph: &'a mut Placeholders,
    text: &'a str,
}

impl<'a> Parser<'a> {
    fn new(text: &'a str, ph: &'a mut Placeholders) -> Result<Self> {
        if text.trim().is_empty() {
            return Err(Invalid::new("Invalid expression: the expression is empty"));
        }
        Ok(Parser {
            toks: tokenize(text)?,
            at: 0,
            ph,
            text,
        })
    }

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }

    fn peek_keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Ident(w)) if w.eq_ignore_ascii_case(kw))
    }

    fn bump(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn error(&self, what: &str) -> Invalid {
        Invalid::new(format!(
            "Invalid expression: {what} near token {} of \"{}\"",
            self.at + 1,
            self.text
        ))
    }

    fn expect(&mut self, tok: Tok) -> Result<()> {
        if self.peek() == Some(&tok) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected {tok:?}")))
        }
    }

    fn done(&self) -> Result<()> {
        if self.at < self.toks.len() {
            Err(self.error("unexpected trailing tokens"))
        } else {
            Ok(())
        }
    }

    /// A top-level attribute name: plain (not a reserved word) or a `#placeholder`.
    fn path(&mut self) -> Result<String> {
        match self.bump() {
            Some(Tok::Name(n)) => self.ph.name(&n),
            Some(Tok::Ident(w)) => {
                if reserved().contains(w.to_ascii_uppercase().as_str()) {
                    Err(Invalid::new(format!(
                        "Invalid expression: Attribute name is a reserved keyword; reserved \
                         keyword: {w}"
                    )))
                } else {
                    Ok(w)
                }
            }
            _ => Err(self.error("expected an attribute name")),
        }
    }

    fn cond(&mut self) -> Result<Cond> {
        let mut left = self.and()?;
        while self.peek_keyword("OR") {
            self.at += 1;
            let right = self.and()?;
            left = Cond::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Cond> {
        let mut left = self.not()?;
        while self.peek_keyword("AND") {
            self.at += 1;
            let right = self.not()?;
            left = Cond::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Cond> {
        if self.peek_keyword("NOT") {
            self.at += 1;
            return Ok(Cond::Not(Box::new(self.not()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Cond> {
        if self.peek() == Some(&Tok::LParen) {
            self.at += 1;
            let c = self.cond()?;
            self.expect(Tok::RParen)?;
            return Ok(c);
        }
        if let Some(Tok::Ident(w)) = self.peek().cloned()
            && self.toks.get(self.at + 1) == Some(&Tok::LParen)
        {
            let f = w.to_ascii_lowercase();
            match f.as_str() {
                "attribute_exists" | "attribute_not_exists" => {
                    self.at += 2;
                    let p = self.path()?;
                    self.expect(Tok::RParen)?;
                    return Ok(if f == "attribute_exists" {
                        Cond::Exists(p)
                    } else {
                        Cond::NotExists(p)
                    });
                }
                "attribute_type" => {
                    self.at += 2;
                    let p = self.path()?;
                    self.expect(Tok::Comma)?;
                    let t = self.operand()?;
                    self.expect(Tok::RParen)?;
                    return Ok(Cond::Type(p, t));
                }
                "begins_with" | "contains" => {
                    self.at += 2;
                    let a = self.operand()?;
                    self.expect(Tok::Comma)?;
                    let b = self.operand()?;
                    self.expect(Tok::RParen)?;
                    return Ok(if f == "begins_with" {
                        Cond::BeginsWith(a, b)
                    } else {
                        Cond::Contains(a, b)
                    });
                }
                "size" => {} // an operand: handled below
                other => {
                    return Err(Invalid::new(format!(
                        "Invalid function name; function: {other} (SimTable knows \
                         attribute_exists, attribute_not_exists, attribute_type, begins_with, \
                         contains, size)"
                    )));
                }
            }
        }
        let left = self.operand()?;
        let cmp = match self.peek() {
            Some(Tok::Eq) => Cmp::Eq,
            Some(Tok::Ne) => Cmp::Ne,
            Some(Tok::Lt) => Cmp::Lt,
            Some(Tok::Le) => Cmp::Le,
            Some(Tok::Gt) => Cmp::Gt,
            Some(Tok::Ge) => Cmp::Ge,
            Some(Tok::Ident(w)) if w.eq_ignore_ascii_case("BETWEEN") => {
                self.at += 1;
                let low = self.operand()?;
                if !self.peek_keyword("AND") {
                    return Err(self.error("expected AND in BETWEEN"));
                }
                self.at += 1;
                let high = self.operand()?;
                return Ok(Cond::Between(left, low, high));
            }
            Some(Tok::Ident(w)) if w.eq_ignore_ascii_case("IN") => {
                self.at += 1;
                self.expect(Tok::LParen)?;
                let mut list = vec![self.operand()?];
                while self.peek() == Some(&Tok::Comma) {
                    self.at += 1;
                    list.push(self.operand()?);
                }
                self.expect(Tok::RParen)?;
                return Ok(Cond::In(left, list));
            }
            _ => return Err(self.error("expected a comparison")),
        };
        self.at += 1;
        let right = self.operand()?;
        Ok(Cond::Compare(left, cmp, right))
    }

    /// An operand of a condition: a path, a value or `size(path)`.
    fn operand(&mut self) -> Result<Operand> {
        match self.peek().cloned() {
            Some(Tok::Value(v)) => {
                self.at += 1;
                Ok(Operand::Value(self.ph.value(&v)?))
            }
            Some(Tok::Ident(w))
                if w.eq_ignore_ascii_case("size")
                    && self.toks.get(self.at + 1) == Some(&Tok::LParen) =>
            {
                self.at += 2;
                let p = self.path()?;
                self.expect(Tok::RParen)?;
                Ok(Operand::Size(p))
            }
            Some(Tok::Ident(w)) if self.toks.get(self.at + 1) == Some(&Tok::LParen) => {
                Err(Invalid::new(format!(
                    "Invalid function name in this position; function: {w}"
                )))
            }
            _ => Ok(Operand::Path(self.path()?)),
        }
    }

    /// An operand of a `SET` action: path, value, `if_not_exists`, `list_append`.
    fn set_operand(&mut self) -> Result<Operand> {
        if let Some(Tok::Ident(w)) = self.peek().cloned()
            && self.toks.get(self.at + 1) == Some(&Tok::LParen)
        {
            self.at += 2;
            let f = w.to_ascii_lowercase();
            let out = match f.as_str() {
                "if_not_exists" => {
                    let p = self.path()?;
                    self.expect(Tok::Comma)?;
                    let v = self.set_operand()?;
                    Operand::IfNotExists(p, Box::new(v))
                }
                "list_append" => {
                    let a = self.set_operand()?;
                    self.expect(Tok::Comma)?;
                    let b = self.set_operand()?;
                    Operand::ListAppend(Box::new(a), Box::new(b))
                }
                other => {
                    return Err(Invalid::new(format!(
                        "Invalid function name in SET; function: {other} (SimTable knows \
                         if_not_exists, list_append)"
                    )));
                }
            };
            self.expect(Tok::RParen)?;
            return Ok(out);
        }
        match self.peek().cloned() {
            Some(Tok::Value(v)) => {
                self.at += 1;
                Ok(Operand::Value(self.ph.value(&v)?))
            }
            _ => Ok(Operand::Path(self.path()?)),
        }
    }

    fn set_value(&mut self) -> Result<Operand> {
        let left = self.set_operand()?;
        match self.peek() {
            Some(Tok::Plus) => {
                self.at += 1;
                Ok(Operand::Plus(Box::new(left), Box::new(self.set_operand()?)))
            }
            Some(Tok::Minus) => {
                self.at += 1;
                Ok(Operand::Minus(
                    Box::new(left),
                    Box::new(self.set_operand()?),
                ))
            }
            _ => Ok(left),
        }
    }
}

pub fn parse_condition(text: &str, ph: &mut Placeholders) -> Result<Cond> {
    let mut p = Parser::new(text, ph)?;
    let c = p.cond()?;
    p.done()?;
    Ok(c)
}

/// A projection: top-level attribute names.
pub fn parse_projection(text: &str, ph: &mut Placeholders) -> Result<Vec<String>> {
    let mut p = Parser::new(text, ph)?;
    let mut names = vec![p.path()?];
    while p.peek() == Some(&Tok::Comma) {
        p.at += 1;
        names.push(p.path()?);
    }
    p.done()?;
    Ok(names)
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Set(String, Operand),
    Remove(String),
    Add(String, Value),
    Delete(String, Value),
}

pub fn parse_update(text: &str, ph: &mut Placeholders) -> Result<Vec<Action>> {
    let mut p = Parser::new(text, ph)?;
    let mut actions = Vec::new();
    let mut seen_clauses = HashSet::new();
    while p.peek().is_some() {
        let clause = match p.bump() {
            Some(Tok::Ident(w)) => w.to_ascii_uppercase(),
            _ => return Err(p.error("expected SET, REMOVE, ADD or DELETE")),
        };
        if !["SET", "REMOVE", "ADD", "DELETE"].contains(&clause.as_str()) {
            return Err(p.error(&format!("unknown update clause {clause}")));
        }
        if !seen_clauses.insert(clause.clone()) {
            return Err(Invalid::new(format!(
                "Invalid UpdateExpression: The \"{clause}\" section can only be used once in an \
                 update expression"
            )));
        }
        loop {
            match clause.as_str() {
                "SET" => {
                    let path = p.path()?;
                    p.expect(Tok::Eq)?;
                    actions.push(Action::Set(path, p.set_value()?));
                }
                "REMOVE" => actions.push(Action::Remove(p.path()?)),
                kind => {
                    let path = p.path()?;
                    let value = match p.bump() {
                        Some(Tok::Value(v)) => p.ph.value(&v)?,
                        _ => return Err(p.error("expected a value placeholder")),
                    };
                    actions.push(if kind == "ADD" {
                        Action::Add(path, value)
                    } else {
                        Action::Delete(path, value)
                    });
                }
            }
            if p.peek() == Some(&Tok::Comma) {
                p.at += 1;
            } else {
                break;
            }
        }
    }
    let mut paths = HashSet::new();
    for a in &actions {
        let path = match a {
            Action::Set(p, _) | Action::Remove(p) | Action::Add(p, _) | Action::Delete(p, _) => p,
        };
        if !paths.insert(path.clone()) {
            return Err(Invalid::new(format!(
                "Invalid UpdateExpression: Two document paths overlap with each other; must \
                 remove or rewrite one of these paths; path one: [{path}], path two: [{path}]"
            )));
        }
    }
    Ok(actions)
}

/// Checks a wire-form attribute value as DynamoDB validates request values.
pub fn check_value(v: &Value) -> Result<()> {
    let Value::Object(m) = v else {
        return Err(Invalid::new("an attribute value must be an object"));
    };
    if m.len() != 1 {
        return Err(Invalid::new(
            "Supplied AttributeValue has more than one datatypes set, must contain exactly one \
             of the supported datatypes",
        ));
    }
    let (t, inner) = m.iter().next().expect("one entry");
    match (t.as_str(), inner) {
        ("S", Value::String(_)) | ("B", Value::String(_)) | ("BOOL", Value::Bool(_)) => Ok(()),
        ("N", Value::String(n)) => parse_number(n).map(|_| ()),
        ("NULL", Value::Bool(true)) => Ok(()),
        ("NULL", _) => Err(Invalid::new(
            "One or more parameter values were invalid: Null attribute value types must have \
             the value of true",
        )),
        ("SS" | "NS" | "BS", Value::Array(items)) => {
            if items.is_empty() {
                return Err(Invalid::new(
                    "One or more parameter values were invalid: An string set  may not be empty",
                ));
            }
            let mut seen = HashSet::new();
            for i in items {
                let Value::String(s) = i else {
                    return Err(Invalid::new("set members must be strings"));
                };
                if t == "NS" {
                    parse_number(s)?;
                }
                if !seen.insert(s.clone()) {
                    return Err(Invalid::new(
                        "One or more parameter values were invalid: Input collection contains \
                         duplicates",
                    ));
                }
            }
            Ok(())
        }
        ("L", Value::Array(items)) => items.iter().try_for_each(check_value),
        ("M", Value::Object(items)) => items.values().try_for_each(check_value),
        (t, _) => Err(Invalid::new(format!(
            "Supplied AttributeValue has an unknown or malformed datatype: {t}"
        ))),
    }
}

fn parse_number(n: &str) -> Result<f64> {
    n.trim()
        .parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .ok_or_else(|| {
            Invalid::new(format!(
                "A value provided cannot be converted into a number: {n}"
            ))
        })
}

fn type_of(v: &Value) -> Option<&str> {
    v.as_object()
        .and_then(|m| m.keys().next())
        .map(String::as_str)
}

fn inner(v: &Value) -> Option<&Value> {
    v.as_object().and_then(|m| m.values().next())
}

/// Compares two numbers given as strings: as integers when both are, else as floats.
fn cmp_numbers(a: &str, b: &str) -> Option<Ordering> {
    match (a.trim().parse::<i128>(), b.trim().parse::<i128>()) {
        (Ok(x), Ok(y)) => Some(x.cmp(&y)),
        _ => parse_number(a).ok()?.partial_cmp(&parse_number(b).ok()?),
    }
}

/// Equality as DynamoDB sees it: same type, numbers by value, sets in any order.
pub fn values_equal(a: &Value, b: &Value) -> bool {
    match (type_of(a), type_of(b), inner(a), inner(b)) {
        (Some("N"), Some("N"), Some(Value::String(x)), Some(Value::String(y))) => {
            cmp_numbers(x, y) == Some(Ordering::Equal)
        }
        (Some(t @ ("SS" | "NS" | "BS")), Some(u), Some(Value::Array(x)), Some(Value::Array(y)))
            if t == u =>
        {
            let xs: BTreeSet<&str> = x.iter().filter_map(Value::as_str).collect();
            let ys: BTreeSet<&str> = y.iter().filter_map(Value::as_str).collect();
            xs == ys
        }
        (Some("L"), Some("L"), Some(Value::Array(x)), Some(Value::Array(y))) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| values_equal(p, q))
        }
        (Some("M"), Some("M"), Some(Value::Object(x)), Some(Value::Object(y))) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| values_equal(v, w)))
        }
        _ => a == b,
    }
}

/// Order of two scalar values of one type (N, S, B); `None` for anything else.
pub fn order(a: &Value, b: &Value) -> Option<Ordering> {
    match (type_of(a)?, type_of(b)?, inner(a)?, inner(b)?) {
        ("N", "N", Value::String(x), Value::String(y)) => cmp_numbers(x, y),
        ("S", "S", Value::String(x), Value::String(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        ("B", "B", Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn size_of(v: &Value) -> Option<usize> {
    match (type_of(v)?, inner(v)?) {
        ("S", Value::String(s)) => Some(s.len()),
        ("B", Value::String(s)) => Some(s.len() * 3 / 4),
        ("SS" | "NS" | "BS" | "L", Value::Array(a)) => Some(a.len()),
        ("M", Value::Object(m)) => Some(m.len()),
        _ => None,
    }
}

fn eval_operand(o: &Operand, item: &Attrs) -> Option<Value> {
    match o {
        Operand::Path(p) => item.get(p).cloned(),
        Operand::Value(v) => Some(v.clone()),
        Operand::Size(p) => item
            .get(p)
            .and_then(size_of)
            .map(|n| serde_json::json!({"N": n.to_string()})),
        // SET-only operands never reach a condition (the parser does not produce them there).
        _ => None,
    }
}

pub fn eval(c: &Cond, item: &Attrs) -> Result<bool> {
    Ok(match c {
        Cond::And(a, b) => eval(a, item)? && eval(b, item)?,
        Cond::Or(a, b) => eval(a, item)? || eval(b, item)?,
        Cond::Not(a) => !eval(a, item)?,
        Cond::Exists(p) => item.contains_key(p),
        Cond::NotExists(p) => !item.contains_key(p),
        Cond::Type(p, t) => {
            let wanted = match eval_operand(t, item) {
                Some(v) if type_of(&v) == Some("S") => inner(&v)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_default(),
                _ => return Err(Invalid::new("attribute_type needs a string type name")),
            };
            if !["S", "SS", "N", "NS", "B", "BS", "BOOL", "NULL", "L", "M"]
                .contains(&wanted.as_str())
            {
                return Err(Invalid::new(format!(
                    "Invalid FilterExpression: Invalid attribute type name found; type: \
                     {wanted}, valid types: {{B,NULL,SS,BOOL,L,BS,N,NS,S,M}}"
                )));
            }
            item.get(p).and_then(type_of) == Some(wanted.as_str())
        }
        Cond::BeginsWith(a, b) => match (eval_operand(a, item), eval_operand(b, item)) {
            (Some(x), Some(y)) => match (type_of(&x), type_of(&y), inner(&x), inner(&y)) {
                (
                    Some(t @ ("S" | "B")),
                    Some(u),
                    Some(Value::String(s)),
                    Some(Value::String(prefix)),
                ) if t == u => s.starts_with(prefix.as_str()),
                _ => false,
            },
            _ => false,
        },
        Cond::Contains(a, b) => match (eval_operand(a, item), eval_operand(b, item)) {
            (Some(x), Some(y)) => match (type_of(&x), inner(&x)) {
                (Some("S"), Some(Value::String(s))) => {
                    type_of(&y) == Some("S")
                        && inner(&y)
                            .and_then(Value::as_str)
                            .is_some_and(|sub| s.contains(sub))
                }
                (Some(t @ ("SS" | "NS" | "BS")), Some(Value::Array(members))) => {
                    let member_type = &t[..1];
                    type_of(&y) == Some(member_type)
                        && inner(&y).is_some_and(|m| {
                            members.iter().any(|x| {
                                values_equal(
                                    &serde_json::json!({ member_type: x }),
                                    &serde_json::json!({ member_type: m }),
                                )
                            })
                        })
                }
                (Some("L"), Some(Value::Array(items))) => items.iter().any(|i| values_equal(i, &y)),
                _ => false,
            },
            _ => false,
        },
        Cond::Compare(a, op, b) => {
            let (x, y) = (eval_operand(a, item), eval_operand(b, item));
            match (x, y) {
                (Some(x), Some(y)) => match op {
                    Cmp::Eq => values_equal(&x, &y),
                    Cmp::Ne => !values_equal(&x, &y),
                    _ => match order(&x, &y) {
                        Some(o) => match op {
                            Cmp::Lt => o == Ordering::Less,
                            Cmp::Le => o != Ordering::Greater,
                            Cmp::Gt => o == Ordering::Greater,
                            Cmp::Ge => o != Ordering::Less,
                            Cmp::Eq | Cmp::Ne => unreachable!("handled above"),
                        },
                        None => false,
                    },
                },
                // A missing attribute equals nothing and differs from everything.
                _ => *op == Cmp::Ne,
            }
        }
        Cond::Between(x, lo, hi) => {
            match (
                eval_operand(x, item),
                eval_operand(lo, item),
                eval_operand(hi, item),
            ) {
                (Some(x), Some(lo), Some(hi)) => {
                    if order(&lo, &hi) == Some(Ordering::Greater) {
                        return Err(Invalid::new(
                            "Invalid KeyConditionExpression: The BETWEEN operator requires upper \
                             bound to be greater than or equal to lower bound",
                        ));
                    }
                    matches!(order(&x, &lo), Some(Ordering::Greater | Ordering::Equal))
                        && matches!(order(&x, &hi), Some(Ordering::Less | Ordering::Equal))
                }
                _ => false,
            }
        }
        Cond::In(x, list) => match eval_operand(x, item) {
            Some(x) => list
                .iter()
                .filter_map(|o| eval_operand(o, item))
                .any(|v| values_equal(&x, &v)),
            None => false,
        },
    })
}

/// Every attribute name a condition reads (key conditions may read key attributes only).
pub fn paths_of(c: &Cond, out: &mut Vec<String>) {
    let op = |o: &Operand, out: &mut Vec<String>| match o {
        Operand::Path(p) | Operand::Size(p) => out.push(p.clone()),
        _ => {}
    };
    match c {
        Cond::And(a, b) | Cond::Or(a, b) => {
            paths_of(a, out);
            paths_of(b, out);
        }
        Cond::Not(a) => paths_of(a, out),
        Cond::Compare(a, _, b) | Cond::BeginsWith(a, b) | Cond::Contains(a, b) => {
            op(a, out);
            op(b, out);
        }
        Cond::Between(a, b, d) => {
            op(a, out);
            op(b, out);
            op(d, out);
        }
        Cond::In(a, l) => {
            op(a, out);
            l.iter().for_each(|o| op(o, out));
        }
        Cond::Exists(p) | Cond::NotExists(p) | Cond::Type(p, _) => out.push(p.clone()),
    }
}

fn number_text(f: f64) -> String {
    if f.fract() == 0.0 && f.abs() < 1e15 {
        format!("{}", f as i64)
    } else {
        format!("{f}")
    }
}

fn arithmetic(a: &Value, b: &Value, plus: bool) -> Result<Value> {
    match (type_of(a), type_of(b), inner(a), inner(b)) {
        (Some("N"), Some("N"), Some(Value::String(x)), Some(Value::String(y))) => {
            let text = match (x.trim().parse::<i128>(), y.trim().parse::<i128>()) {
                (Ok(x), Ok(y)) => (if plus { x + y } else { x - y }).to_string(),
                _ => {
                    let (x, y) = (parse_number(x)?, parse_number(y)?);
                    number_text(if plus { x + y } else { x - y })
                }
            };
            Ok(serde_json::json!({ "N": text }))
        }
        _ => Err(Invalid::new(
            "An operand in the update expression has an incorrect data type",
        )),
    }
}

fn eval_set(o: &Operand, item: &Attrs) -> Result<Value> {
    match o {
        Operand::Path(p) => item.get(p).cloned().ok_or_else(|| {
            Invalid::new(
                "The provided expression refers to an attribute that does not exist in the item",
            )
        }),
        Operand::Value(v) => Ok(v.clone()),
        Operand::IfNotExists(p, default) => match item.get(p) {
            Some(v) => Ok(v.clone()),
            None => eval_set(default, item),
        },
        Operand::ListAppend(a, b) => {
            let (a, b) = (eval_set(a, item)?, eval_set(b, item)?);
            match (inner(&a), inner(&b), type_of(&a), type_of(&b)) {
                (Some(Value::Array(x)), Some(Value::Array(y)), Some("L"), Some("L")) => {
                    let mut all = x.clone();
                    all.extend(y.iter().cloned());
                    Ok(serde_json::json!({ "L": all }))
                }
                _ => Err(Invalid::new(
                    "An operand in the update expression has an incorrect data type",
                )),
            }
        }
        Operand::Plus(a, b) => arithmetic(&eval_set(a, item)?, &eval_set(b, item)?, true),
        Operand::Minus(a, b) => arithmetic(&eval_set(a, item)?, &eval_set(b, item)?, false),
        Operand::Size(_) => Err(Invalid::new("size() is not allowed in an update")),
    }
}

/// Applies update actions to `item` (all operands read the item as it was before).
pub fn apply_update(actions: &[Action], item: &Attrs, keys: &[&str]) -> Result<Attrs> {
    let mut out = item.clone();
    for a in actions {
        let path = match a {
            Action::Set(p, _) | Action::Remove(p) | Action::Add(p, _) | Action::Delete(p, _) => p,
        };
        if keys.contains(&path.as_str()) {
            return Err(Invalid::new(format!(
                "One or more parameter values were invalid: Cannot update attribute {path}. \
                 This attribute is part of the key"
            )));
        }
        match a {
            Action::Set(p, o) => {
                out.insert(p.clone(), eval_set(o, item)?);
            }
            Action::Remove(p) => {
                out.remove(p);
            }
            Action::Add(p, v) => {
                let new = match (item.get(p), type_of(v)) {
                    (None, Some("N" | "SS" | "NS" | "BS")) => v.clone(),
                    (Some(old), Some("N")) if type_of(old) == Some("N") => {
                        arithmetic(old, v, true)?
                    }
                    (Some(old), Some(t @ ("SS" | "NS" | "BS"))) if type_of(old) == Some(t) => {
                        let mut members: Vec<Value> = inner(old)
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default();
                        for m in inner(v).and_then(Value::as_array).into_iter().flatten() {
                            if !members.contains(m) {
                                members.push(m.clone());
                            }
                        }
                        serde_json::json!({ t: members })
                    }
                    _ => {
                        return Err(Invalid::new(
                            "An operand in the update expression has an incorrect data type",
                        ));
                    }
                };
                out.insert(p.clone(), new);
            }
            Action::Delete(p, v) => match (item.get(p), type_of(v)) {
                (None, _) => {}
                (Some(old), Some(t @ ("SS" | "NS" | "BS"))) if type_of(old) == Some(t) => {
                    let gone: Vec<&Value> = inner(v)
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .collect();
                    let kept: Vec<Value> = inner(old)
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter(|m| !gone.contains(m))
                        .cloned()
                        .collect();
                    if kept.is_empty() {
                        out.remove(p);
                    } else {
                        out.insert(p.clone(), serde_json::json!({ t: kept }));
                    }
                }
                _ => {
                    return Err(Invalid::new(
                        "An operand in the update expression has an incorrect data type",
                    ));
                }
            },
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Placeholders from maps; an empty map stands for none (DynamoDB refuses empty ones).
    fn ph(names: Value, values: Value) -> Placeholders {
        let given = |v: &Value| v.as_object().is_some_and(|m| !m.is_empty());
        let names = given(&names).then_some(&names);
        let values = given(&values).then_some(&values);
        Placeholders::new(names, values).unwrap()
    }

    fn item(v: Value) -> Attrs {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn the_fleets_conditions_evaluate_as_dynamodb_does() {
        let mut p = ph(
            json!({"#status": "status"}),
            json!({":pending": {"S": "PENDING"}, ":now": {"N": "100"}, ":me": {"S": "w1"}}),
        );
        let c = parse_condition(
            "attribute_exists(PK) AND #status = :pending AND (attribute_not_exists(lease_owner) OR lease_expires_at <= :now OR lease_owner = :me)",
            &mut p,
        )
        .unwrap();
        p.finish().unwrap();
        let base = json!({"PK": {"S": "B"}, "status": {"S": "PENDING"}});
        assert!(eval(&c, &item(base.clone())).unwrap());
        let mut held = base.clone();
        held["lease_owner"] = json!({"S": "w2"});
        held["lease_expires_at"] = json!({"N": "101"});
        assert!(!eval(&c, &item(held.clone())).unwrap());
        held["lease_expires_at"] = json!({"N": "100.0"});
        assert!(eval(&c, &item(held)).unwrap(), "numbers compare by value");
        assert!(!eval(&c, &Attrs::new()).unwrap());
    }

    #[test]
    fn attribute_type_and_not_and_missing_attributes() {
        let mut p = ph(
            json!({}),
            json!({":null": {"S": "NULL"}, ":from": {"S": "NONE"}}),
        );
        let c = parse_condition(
            "NOT (attribute_not_exists(v) OR attribute_type(v, :null)) AND v <> :from",
            &mut p,
        )
        .unwrap();
        p.finish().unwrap();
        assert!(eval(&c, &item(json!({"v": {"S": "VALID"}}))).unwrap());
        assert!(!eval(&c, &item(json!({"v": {"NULL": true}}))).unwrap());
        assert!(!eval(&c, &item(json!({}))).unwrap());
    }

    #[test]
    fn unknown_constructs_and_placeholders_fail_loudly() {
        let mut p = ph(json!({}), json!({":v": {"S": "x"}}));
        assert!(parse_condition("a.b = :v", &mut p).is_err());
        assert!(parse_condition("frobnicate(a)", &mut p).is_err());
        assert!(parse_condition("a = :undefined", &mut p).is_err());
        assert!(
            parse_condition("status = :v", &mut p).is_err(),
            "reserved word"
        );
        assert!(parse_condition("a = :v extra", &mut p).is_err());
        let mut unused = ph(json!({"#n": "n"}), json!({":v": {"S": "x"}}));
        parse_condition("a = :v", &mut unused).unwrap();
        assert!(unused.finish().is_err(), "#n is unused");
        assert!(parse_update("SET a = :v SET b = :v", &mut p).is_err());
        assert!(parse_update("SET a = :v, a = :v", &mut p).is_err());
        assert!(parse_update("MERGE a :v", &mut p).is_err());
    }

    #[test]
    fn updates_set_remove_add_delete() {
        let mut p = ph(
            json!({"#type": "TYPE"}),
            json!({":t": {"S": "X"}, ":one": {"N": "1"}, ":l": {"L": [{"S": "b"}]}, ":s": {"SS": ["p", "q"]}, ":d": {"SS": ["p"]}}),
        );
        let actions = parse_update(
            "SET #type = :t, n = if_not_exists(n, :one) , m = m + :one, l = list_append(l, :l) REMOVE gone ADD s :s, c :one DELETE t :d",
            &mut p,
        )
        .unwrap();
        p.finish().unwrap();
        let before = item(json!({
            "PK": {"S": "k"}, "m": {"N": "41"}, "l": {"L": [{"S": "a"}]},
            "gone": {"S": "x"}, "t": {"SS": ["p", "r"]}, "s": {"SS": ["q"]}
        }));
        let after = apply_update(&actions, &before, &["PK"]).unwrap();
        assert_eq!(
            Value::Object(after),
            json!({
                "PK": {"S": "k"}, "TYPE": {"S": "X"}, "n": {"N": "1"}, "m": {"N": "42"},
                "l": {"L": [{"S": "a"}, {"S": "b"}]}, "s": {"SS": ["q", "p"]},
                "c": {"N": "1"}, "t": {"SS": ["r"]}
            })
        );
        let mut k = ph(json!({}), json!({":v": {"S": "x"}}));
        let key_update = parse_update("SET PK = :v", &mut k).unwrap();
        assert!(apply_update(&key_update, &before, &["PK"]).is_err());
    }
}
