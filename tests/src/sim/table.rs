//! The simulated DynamoDB service behind [`SimTable`]: tables in memory, the operations the
//! fleet calls, answered in DynamoDB's JSON 1.0 protocol, with a latency and throughput model
//! and fault injection (see the [module docs](super)).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::expr::{self, Action, Attrs, Cond, Invalid, Placeholders};
use crate::scenario::Rng;

/// DynamoDB's largest item.
pub const MAX_ITEM_BYTES: usize = 400 * 1024;
/// Most requests in one BatchWriteItem.
pub const MAX_BATCH_WRITE: usize = 25;
/// Most keys in one BatchGetItem.
pub const MAX_BATCH_GET: usize = 100;
/// Most data one Query or Scan page returns before it stops with a `LastEvaluatedKey`.
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;

/// How fast the simulated service is, in the simulation's own (virtual) units: rates per
/// virtual second, latencies in virtual time. `scale` compresses time: every rate is
/// multiplied by it and every latency divided by it in real time.
#[derive(Debug, Clone)]
pub struct Model {
    /// Real time runs `scale` times faster than the simulated time (1 = real time).
    pub scale: f64,
    /// Latency of every call, before it is answered.
    pub latency: Duration,
    /// Uniform extra latency in `0..jitter`.
    pub jitter: Duration,
    /// Write units per second one partition key accepts (DynamoDB: 1,000), `None` unlimited.
    pub partition_wcu: Option<f64>,
    /// Read units per second one partition key accepts (DynamoDB: 3,000).
    pub partition_rcu: Option<f64>,
    /// Write units per second of the whole table (on-demand default quota: 40,000).
    pub table_wcu: Option<f64>,
    /// Read units per second of the whole table.
    pub table_rcu: Option<f64>,
    /// Unused capacity kept for bursts, in seconds of the rate (DynamoDB keeps up to 300).
    pub burst_seconds: f64,
}

impl Default for Model {
    /// Unlimited and instant: what the conformance suite and property tests use.
    fn default() -> Self {
        Model {
            scale: 1.0,
            latency: Duration::ZERO,
            jitter: Duration::ZERO,
            partition_wcu: None,
            partition_rcu: None,
            table_wcu: None,
            table_rcu: None,
            burst_seconds: 1.0,
        }
    }
}

impl Model {
    /// DynamoDB on demand as documented: single-digit-millisecond calls, 1,000 WCU and 3,000
    /// RCU per partition key, 40,000 of each per table, compressed by `scale`.
    pub fn dynamodb(scale: f64) -> Self {
        Model {
            scale,
            latency: Duration::from_millis(4),
            jitter: Duration::from_millis(4),
            partition_wcu: Some(1_000.0),
            partition_rcu: Some(3_000.0),
            table_wcu: Some(40_000.0),
            table_rcu: Some(40_000.0),
            burst_seconds: 1.0,
        }
    }
}

/// What an injected fault does to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// 400 `ProvisionedThroughputExceededException`, nothing done.
    Throughput,
    /// 400 `ThrottlingException`, nothing done.
    Throttling,
    /// 500 `InternalServerError`, nothing done.
    ServerError,
    /// BatchWriteItem/BatchGetItem: the last third of the request comes back unprocessed
    /// (at least one entry); other operations are not affected.
    Unprocessed,
}

/// A fault for the next `times` calls of `op` (or of any operation).
#[derive(Debug, Clone)]
pub struct ScriptedFault {
    pub op: Option<String>,
    pub kind: FaultKind,
    pub times: u32,
}

/// Random faults: per call, the chance of each kind (0.0..=1.0), drawn from a seeded RNG.
#[derive(Debug, Clone, Copy, Default)]
pub struct FaultRates {
    pub throughput: f64,
    pub server_error: f64,
    pub unprocessed: f64,
}

/// Counters of one operation.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpStats {
    pub calls: u64,
    /// Answered with a throttling error (model or fault).
    pub throttled: u64,
    /// Answered with another injected fault (5xx, or partly unprocessed).
    pub faults: u64,
    pub read_units: f64,
    pub write_units: f64,
}

/// Counters by operation name (`GetItem`, `Query`, …).
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub by_op: BTreeMap<String, OpStats>,
}

impl Stats {
    pub fn total(&self) -> OpStats {
        let mut t = OpStats::default();
        for s in self.by_op.values() {
            t.calls += s.calls;
            t.throttled += s.throttled;
            t.faults += s.faults;
            t.read_units += s.read_units;
            t.write_units += s.write_units;
        }
        t
    }

    /// Calls of the data operations (not CreateTable and the like).
    pub fn data_calls(&self) -> u64 {
        self.by_op
            .iter()
            .filter(|(op, _)| DATA_OPS.contains(&op.as_str()))
            .map(|(_, s)| s.calls)
            .sum()
    }
}

const DATA_OPS: &[&str] = &[
    "GetItem",
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "Query",
    "Scan",
    "BatchWriteItem",
    "BatchGetItem",
];

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(cap: f64) -> Self {
        Bucket {
            tokens: cap,
            last: Instant::now(),
        }
    }

    /// Takes `units` if the bucket (refilled at `rate` per real second, holding at most `cap`)
    /// has them.
    fn take(&mut self, units: f64, rate: f64, cap: f64) -> bool {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(cap);
        self.last = now;
        if self.tokens >= units.min(cap) {
            self.tokens -= units;
            true
        } else {
            false
        }
    }
}

/// A stored item: its compact JSON (wire form) and the size DynamoDB bills for it. Text, not
/// a parsed `Map`: a parsed attribute costs a `BTreeMap` node of its own (hundreds of bytes),
/// the text a few dozen, and most reads hand the text back as it is (Get and Query splice it
/// into the answer unparsed).
struct Stored {
    text: Box<str>,
    size: u32,
}

#[derive(Default)]
struct Partition {
    items: BTreeMap<String, Stored>,
    reads: Option<Bucket>,
    writes: Option<Bucket>,
}

struct Index {
    hash: String,
    range: Option<String>,
    upkeep: bool,
    /// Index hash value → (index range value, table hash, table range).
    entries: HashMap<String, BTreeSet<(String, String, String)>>,
    description: Value,
}

struct Table {
    hash: String,
    range: Option<String>,
    definitions: Value,
    indexes: BTreeMap<String, Index>,
    partitions: BTreeMap<String, Partition>,
    ttl: Option<String>,
    created: f64,
    items: u64,
    bytes: u64,
    reads: Option<Bucket>,
    writes: Option<Bucket>,
}

impl Table {
    fn keys(&self) -> Vec<&str> {
        let mut k = vec![self.hash.as_str()];
        if let Some(r) = &self.range {
            k.push(r);
        }
        k
    }

    fn description(&self, name: &str) -> Value {
        let mut schema = vec![json!({"AttributeName": self.hash, "KeyType": "HASH"})];
        if let Some(r) = &self.range {
            schema.push(json!({"AttributeName": r, "KeyType": "RANGE"}));
        }
        let mut d = json!({
            "TableName": name,
            "TableArn": format!("arn:aws:dynamodb:us-east-1:123456789012:table/{name}"),
            "TableStatus": "ACTIVE",
            "KeySchema": schema,
            "AttributeDefinitions": self.definitions,
            "CreationDateTime": self.created,
            "ItemCount": self.items,
            "TableSizeBytes": self.bytes,
            "BillingModeSummary": {"BillingMode": "PAY_PER_REQUEST"},
        });
        if !self.indexes.is_empty() {
            d["GlobalSecondaryIndexes"] = Value::Array(
                self.indexes
                    .values()
                    .map(|i| i.description.clone())
                    .collect(),
            );
        }
        d
    }

    fn get(&self, pk: &str, sk: &str) -> Option<&str> {
        self.stored(pk, sk).map(|s| &*s.text)
    }

    fn stored(&self, pk: &str, sk: &str) -> Option<&Stored> {
        self.partitions.get(pk).and_then(|p| p.items.get(sk))
    }

    /// The billed size of the item at the key (0 when there is none).
    fn size_at(&self, pk: &str, sk: &str) -> usize {
        self.stored(pk, sk).map_or(0, |s| s.size as usize)
    }

    /// Stores `new` (or deletes when `None`) at the key, keeping the indexes in step.
    fn write(&mut self, pk: &str, sk: &str, new: Option<&Attrs>) {
        // The old item is parsed only when it may hold an index key (its text names one of
        // the indexes' attributes): most writes touch items no index covers.
        let old = self.get(pk, sk).and_then(|text| {
            self.indexes
                .values()
                .filter(|i| i.upkeep)
                .any(|i| mentions(text, &i.hash))
                .then(|| parse_item(text))
        });
        for index in self.indexes.values_mut() {
            if !index.upkeep {
                continue;
            }
            if let Some(entry) = old.as_ref().and_then(|o| index_entry(index, o, pk, sk))
                && let Some(set) = index.entries.get_mut(&entry.0)
            {
                set.remove(&entry.1);
                if set.is_empty() {
                    index.entries.remove(&entry.0);
                }
            }
            if let Some((h, e)) = new.and_then(|n| index_entry(index, n, pk, sk)) {
                index.entries.entry(h).or_default().insert(e);
            }
        }
        let partition = self.partitions.entry(pk.to_owned()).or_default();
        let old_len = match new {
            Some(item) => {
                let text = serde_json::to_string(item)
                    .unwrap_or_default()
                    .into_boxed_str();
                let new_len = text.len() as u64;
                self.bytes += new_len;
                let size = u32::try_from(item_size(item)).unwrap_or(u32::MAX);
                partition
                    .items
                    .insert(sk.to_owned(), Stored { text, size })
                    .map(|o| o.text.len())
            }
            None => partition.items.remove(sk).map(|o| o.text.len()),
        };
        match old_len {
            Some(len) => self.bytes -= len as u64,
            None if new.is_some() => self.items += 1,
            None => {}
        }
        if new.is_none() && old_len.is_some() {
            self.items -= 1;
            if partition.items.is_empty() && partition.reads.is_none() && partition.writes.is_none()
            {
                self.partitions.remove(pk);
            }
        }
    }
}

fn index_entry(
    index: &Index,
    item: &Attrs,
    pk: &str,
    sk: &str,
) -> Option<(String, (String, String, String))> {
    let h = s_value(item.get(&index.hash)?)?.to_owned();
    let r = match &index.range {
        Some(r) => s_value(item.get(r)?)?.to_owned(),
        None => String::new(),
    };
    Some((h, (r, pk.to_owned(), sk.to_owned())))
}

fn s_value(v: &Value) -> Option<&str> {
    v.as_object()?.get("S")?.as_str()
}

/// Whether an item's JSON text names attribute `name` (possibly also as a key nested in a map:
/// a `true` only costs a parse). A quote inside a string value is escaped, so a value can
/// never contain `"name":`.
fn mentions(text: &str, name: &str) -> bool {
    let mut pattern = String::with_capacity(name.len() + 3);
    pattern.push('"');
    pattern.push_str(name);
    pattern.push_str("\":");
    text.contains(&pattern)
}

fn parse_item(text: &str) -> Attrs {
    match serde_json::from_str(text) {
        Ok(Value::Object(m)) => m,
        _ => Attrs::new(),
    }
}

/// An error answer: HTTP status, the error type's short name, the message, and for a failed
/// condition the old item when asked for.
#[derive(Debug)]
struct Fail {
    status: u16,
    kind: &'static str,
    message: String,
    item: Option<Attrs>,
}

impl Fail {
    fn invalid(message: impl Into<String>) -> Self {
        Fail {
            status: 400,
            kind: "ValidationException",
            message: message.into(),
            item: None,
        }
    }
    fn not_found() -> Self {
        Fail {
            status: 400,
            kind: "ResourceNotFoundException",
            message: "Requested resource not found".into(),
            item: None,
        }
    }
    fn throughput() -> Self {
        Fail {
            status: 400,
            kind: "ProvisionedThroughputExceededException",
            message: "The level of configured provisioned throughput for the table was exceeded. \
                      Consider increasing your provisioning level with the UpdateTable API."
                .into(),
            item: None,
        }
    }
}

impl From<Invalid> for Fail {
    fn from(Invalid(m): Invalid) -> Self {
        Fail::invalid(m)
    }
}

type Answer = Result<Value, Fail>;

struct State {
    tables: BTreeMap<String, Table>,
    model: Model,
    rates: FaultRates,
    scripted: VecDeque<ScriptedFault>,
    rng: Rng,
    stats: Stats,
    /// Indexes to keep (None: all). An index not kept refuses queries loudly.
    index_upkeep: Option<Vec<String>>,
}

/// The simulated DynamoDB service: any number of tables, in memory. Cheap to clone (shared).
#[derive(Clone)]
pub struct SimTable {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SimTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimTable")
    }
}

impl Default for SimTable {
    fn default() -> Self {
        Self::new(0)
    }
}

/// What one call answers: HTTP status and JSON body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

impl SimTable {
    /// An empty service, unlimited and instant; `seed` drives jitter and random faults.
    pub fn new(seed: u64) -> Self {
        SimTable {
            state: Arc::new(Mutex::new(State {
                tables: BTreeMap::new(),
                model: Model::default(),
                rates: FaultRates::default(),
                scripted: VecDeque::new(),
                rng: Rng::new(seed),
                stats: Stats::default(),
                index_upkeep: None,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_model(&self, model: Model) {
        let mut s = self.lock();
        s.model = model;
        for t in s.tables.values_mut() {
            t.reads = None;
            t.writes = None;
            for p in t.partitions.values_mut() {
                p.reads = None;
                p.writes = None;
            }
        }
    }

    pub fn set_fault_rates(&self, rates: FaultRates) {
        self.lock().rates = rates;
    }

    /// Queues a fault for the next matching calls.
    pub fn fail_next(&self, fault: ScriptedFault) {
        self.lock().scripted.push_back(fault);
    }

    /// Keeps only these indexes of tables created from now on (the others answer queries
    /// with a ValidationException): memory for a simulation that queries only some.
    pub fn keep_only_indexes(&self, names: &[&str]) {
        self.lock().index_upkeep = Some(names.iter().map(|s| (*s).to_owned()).collect());
    }

    /// Items in a table and the bytes of their stored text.
    pub fn table_size(&self, table: &str) -> (u64, u64) {
        self.lock()
            .tables
            .get(table)
            .map_or((0, 0), |t| (t.items, t.bytes))
    }

    /// Drops a table and everything in it (memory back between two phases of a run).
    pub fn drop_table(&self, table: &str) -> bool {
        self.lock().tables.remove(table).is_some()
    }

    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    pub fn reset_stats(&self) {
        self.lock().stats = Stats::default();
    }

    /// Every item of a table in key order (wire form), for whole-state comparisons.
    pub fn items(&self, table: &str) -> Vec<Attrs> {
        let s = self.lock();
        let Some(t) = s.tables.get(table) else {
            return Vec::new();
        };
        t.partitions
            .values()
            .flat_map(|p| p.items.values().map(|s| parse_item(&s.text)))
            .collect()
    }

    /// Calls `f` with every item of a table in key order, without copying the table.
    pub fn for_each_item(&self, table: &str, mut f: impl FnMut(&str, &str, &str)) {
        let s = self.lock();
        if let Some(t) = s.tables.get(table) {
            for (pk, p) in &t.partitions {
                for (sk, stored) in &p.items {
                    f(pk, sk, &stored.text);
                }
            }
        }
    }

    /// A stored item by key (wire form), bypassing the model.
    pub fn item(&self, table: &str, pk: &str, sk: &str) -> Option<Attrs> {
        self.lock()
            .tables
            .get(table)
            .and_then(|t| t.get(pk, sk))
            .map(parse_item)
    }

    /// One attribute of a stored item (wire form), bypassing the model: cheap also on a large
    /// item (the others are skipped over, not built), for a driver that polls one field.
    pub fn attribute(&self, table: &str, pk: &str, sk: &str, name: &str) -> Option<Value> {
        let s = self.lock();
        let text = s.tables.get(table)?.get(pk, sk)?;
        match serde_json::from_str::<HashMap<&str, &serde_json::value::RawValue>>(text) {
            Ok(attrs) => attrs
                .get(name)
                .and_then(|raw| serde_json::from_str(raw.get()).ok()),
            Err(_) => parse_item(text).remove(name),
        }
    }

    /// Writes an item directly (seeding), bypassing model and faults; the item is validated.
    pub fn put(&self, table: &str, item: Attrs) -> Result<(), String> {
        let mut s = self.lock();
        let t = s.tables.get_mut(table).ok_or("no such table")?;
        let (pk, sk) = check_item(t, &item).map_err(|f| f.message)?;
        t.write(&pk, &sk, Some(&item));
        Ok(())
    }

    /// Answers one DynamoDB call: `target` is the `X-Amz-Target` header
    /// (`DynamoDB_20120810.GetItem`), `body` the JSON request.
    pub async fn handle(&self, target: &str, body: &[u8]) -> Reply {
        let arrived = Instant::now();
        let op = target.strip_prefix("DynamoDB_20120810.").unwrap_or(target);
        let request = serde_json::from_slice::<Value>(body);
        // The call takes effect when it arrives and is answered once its latency has passed
        // since then: the driver's own time to answer is part of the modelled latency, not
        // added to it (in scaled real time it would be unscaled, K times too long).
        let (answer, delay) = {
            let mut s = self.lock();
            let m = &s.model;
            let (latency, jitter, scale) = (m.latency, m.jitter, m.scale.max(1e-9));
            let extra = if jitter.is_zero() {
                Duration::ZERO
            } else {
                let nanos = u64::try_from(jitter.as_nanos()).unwrap_or(u64::MAX);
                Duration::from_nanos(s.rng.below(nanos))
            };
            let delay = (latency + extra).div_f64(scale);
            if let Some(stats) = s.stats.by_op.get_mut(op) {
                stats.calls += 1;
            } else {
                s.stats.by_op.entry(op.to_owned()).or_default().calls += 1;
            }
            let answer = match request {
                Ok(Value::Object(req)) => s.dispatch(op, &req),
                _ => Err(Fail {
                    status: 400,
                    kind: "SerializationException",
                    message: "the request body is not a JSON object".into(),
                    item: None,
                }),
            };
            (answer, delay)
        };
        if !delay.is_zero() {
            tokio::time::sleep_until(arrived + delay).await;
        }
        match answer {
            Ok(text) => Reply {
                status: 200,
                body: text.into_bytes(),
            },
            Err(f) => {
                let mut body = json!({
                    "__type": format!("com.amazonaws.dynamodb.v20120810#{}", f.kind),
                    "message": f.message,
                });
                if let Some(item) = f.item {
                    body["Item"] = Value::Object(item);
                }
                Reply {
                    status: f.status,
                    body: body.to_string().into_bytes(),
                }
            }
        }
    }
}

fn str_field<'a>(req: &'a Map<String, Value>, name: &str) -> Result<&'a str, Fail> {
    req.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| Fail::invalid(format!("1 validation error detected: {name} is required")))
}

fn opt_str<'a>(req: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    req.get(name).and_then(Value::as_str)
}

fn obj<'a>(req: &'a Map<String, Value>, name: &str) -> Result<&'a Attrs, Fail> {
    req.get(name)
        .and_then(Value::as_object)
        .ok_or_else(|| Fail::invalid(format!("1 validation error detected: {name} is required")))
}

/// Checks an item to be written; returns its key values.
fn check_item(t: &Table, item: &Attrs) -> Result<(String, String), Fail> {
    for (name, v) in item {
        expr::check_value(v).map_err(|Invalid(m)| {
            Fail::invalid(format!(
                "One or more parameter values were invalid: {m} (attribute {name})"
            ))
        })?;
    }
    let key = |name: &str| -> Result<String, Fail> {
        match item.get(name) {
            None => Err(Fail::invalid(format!(
                "One or more parameter values were invalid: Missing the key {name} in the item"
            ))),
            Some(v) => match s_value(v) {
                Some("") => Err(Fail::invalid(format!(
                    "One or more parameter values are not valid. The AttributeValue for a key \
                     attribute cannot contain an empty string value. Key: {name}"
                ))),
                Some(s) => Ok(s.to_owned()),
                None => Err(Fail::invalid(format!(
                    "One or more parameter values were invalid: Type mismatch for key {name} \
                     expected: S"
                ))),
            },
        }
    };
    let pk = key(&t.hash)?;
    let sk = match &t.range {
        Some(r) => key(r)?,
        None => String::new(),
    };
    for index in t.indexes.values() {
        for name in std::iter::once(&index.hash).chain(index.range.as_ref()) {
            if let Some(v) = item.get(name) {
                match s_value(v) {
                    Some("") => {
                        return Err(Fail::invalid(format!(
                            "One or more parameter values are not valid. A value specified for \
                             a secondary index key is not supported. The AttributeValue for a \
                             key attribute cannot contain an empty string value. IndexName: {}, \
                             IndexKey: {name}",
                            index_name_of(t, index)
                        )));
                    }
                    Some(_) => {}
                    None => {
                        return Err(Fail::invalid(format!(
                            "One or more parameter values were invalid: Type mismatch for Index \
                             Key {name} Expected: S Actual: {} IndexName: {}",
                            v.as_object()
                                .and_then(|m| m.keys().next())
                                .map_or("?", String::as_str),
                            index_name_of(t, index)
                        )));
                    }
                }
            }
        }
    }
    let size = item_size(item);
    if size > MAX_ITEM_BYTES {
        return Err(Fail::invalid(
            "Item size has exceeded the maximum allowed size",
        ));
    }
    Ok((pk, sk))
}

fn index_name_of<'a>(t: &'a Table, index: &Index) -> &'a str {
    t.indexes
        .iter()
        .find(|(_, i)| std::ptr::eq(*i, index))
        .map_or("?", |(n, _)| n.as_str())
}

/// The size DynamoDB bills: attribute names plus values (approximated from the wire form).
fn item_size(item: &Attrs) -> usize {
    fn value_size(v: &Value) -> usize {
        match v {
            Value::Object(m) => m
                .iter()
                .map(|(k, v)| match k.as_str() {
                    "S" | "N" | "B" => v.as_str().map_or(0, str::len),
                    "BOOL" | "NULL" => 1,
                    "SS" | "NS" | "BS" => v.as_array().map_or(0, |a| {
                        a.iter().filter_map(Value::as_str).map(str::len).sum()
                    }),
                    "L" => {
                        3 + v
                            .as_array()
                            .map_or(0, |a| a.iter().map(|x| 1 + value_size(x)).sum())
                    }
                    "M" => {
                        3 + v.as_object().map_or(0, |m| {
                            m.iter().map(|(k, x)| 1 + k.len() + value_size(x)).sum()
                        })
                    }
                    _ => 0,
                })
                .sum(),
            _ => 0,
        }
    }
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

fn write_units(bytes: usize) -> f64 {
    bytes.div_ceil(1024).max(1) as f64
}

fn read_units(bytes: usize, consistent: bool) -> f64 {
    let units = bytes.div_ceil(4096).max(1) as f64;
    if consistent { units } else { units / 2.0 }
}

/// The key of a Get/Update/Delete: exactly the table's key attributes.
fn key_of(t: &Table, key: &Attrs) -> Result<(String, String), Fail> {
    let names = t.keys();
    if key.len() != names.len() || names.iter().any(|n| !key.contains_key(*n)) {
        return Err(Fail::invalid(
            "The provided key element does not match the schema",
        ));
    }
    let get = |n: &str| {
        key.get(n)
            .and_then(s_value)
            .map(str::to_owned)
            .ok_or_else(|| Fail::invalid("The provided key element does not match the schema"))
    };
    let pk = get(&t.hash)?;
    let sk = match &t.range {
        Some(r) => get(r)?,
        None => String::new(),
    };
    Ok((pk, sk))
}

/// Parses the request's expressions and checks every placeholder was used.
struct Exprs {
    condition: Option<Cond>,
    update: Option<Vec<Action>>,
    key: Option<Cond>,
    filter: Option<Cond>,
    projection: Option<Vec<String>>,
}

fn exprs(req: &Map<String, Value>) -> Result<Exprs, Fail> {
    for legacy in [
        "Expected",
        "AttributeUpdates",
        "KeyConditions",
        "QueryFilter",
        "ScanFilter",
        "AttributesToGet",
        "ConditionalOperator",
    ] {
        if req.contains_key(legacy) {
            return Err(Fail::invalid(format!(
                "SimTable does not implement the legacy parameter {legacy}; use expressions"
            )));
        }
    }
    let mut ph = Placeholders::new(
        req.get("ExpressionAttributeNames"),
        req.get("ExpressionAttributeValues"),
    )?;
    let mut parse = |name: &str| -> Result<Option<Cond>, Fail> {
        opt_str(req, name)
            .map(|text| expr::parse_condition(text, &mut ph))
            .transpose()
            .map_err(|Invalid(m)| Fail::invalid(format!("Invalid {name}: {m}")))
    };
    let condition = parse("ConditionExpression")?;
    let key = parse("KeyConditionExpression")?;
    let filter = parse("FilterExpression")?;
    let update = opt_str(req, "UpdateExpression")
        .map(|text| expr::parse_update(text, &mut ph))
        .transpose()?;
    let projection = opt_str(req, "ProjectionExpression")
        .map(|text| expr::parse_projection(text, &mut ph))
        .transpose()?;
    ph.finish()?;
    Ok(Exprs {
        condition,
        update,
        key,
        filter,
        projection,
    })
}

fn project(item: Attrs, projection: &Option<Vec<String>>) -> Attrs {
    match projection {
        None => item,
        Some(names) => item
            .into_iter()
            .filter(|(k, _)| names.contains(k))
            .collect(),
    }
}

/// A sort-key condition of a Query.
enum Range {
    All,
    Eq(String),
    Lt(String),
    Le(String),
    Gt(String),
    Ge(String),
    Between(String, String),
    Prefix(String),
}

impl Range {
    fn matches(&self, v: &str) -> bool {
        match self {
            Range::All => true,
            Range::Eq(x) => v == x,
            Range::Lt(x) => v < x.as_str(),
            Range::Le(x) => v <= x.as_str(),
            Range::Gt(x) => v > x.as_str(),
            Range::Ge(x) => v >= x.as_str(),
            Range::Between(a, b) => v >= a.as_str() && v <= b.as_str(),
            Range::Prefix(p) => v.starts_with(p.as_str()),
        }
    }

    fn lower(&self) -> Bound<String> {
        match self {
            Range::Eq(x) | Range::Ge(x) | Range::Between(x, _) | Range::Prefix(x) => {
                Bound::Included(x.clone())
            }
            Range::Gt(x) => Bound::Excluded(x.clone()),
            _ => Bound::Unbounded,
        }
    }
}

fn s_operand(o: &expr::Operand) -> Option<String> {
    match o {
        expr::Operand::Value(v) => s_value(v).map(str::to_owned),
        _ => None,
    }
}

/// Splits a key condition into the hash value and the range condition, refusing any shape
/// DynamoDB refuses.
fn key_condition(c: &Cond, hash: &str, range: Option<&str>) -> Result<(String, Range), Fail> {
    let bad = || {
        Fail::invalid(
            "Query key condition not supported: use hash = :v, optionally AND one condition \
             on the range key",
        )
    };
    let mut parts = Vec::new();
    fn flatten<'c>(c: &'c Cond, out: &mut Vec<&'c Cond>) -> bool {
        match c {
            Cond::And(a, b) => flatten(a, out) && flatten(b, out),
            Cond::Or(..) | Cond::Not(_) => false,
            other => {
                out.push(other);
                true
            }
        }
    }
    if !flatten(c, &mut parts) || parts.is_empty() || parts.len() > 2 {
        return Err(bad());
    }
    let mut hash_value = None;
    let mut range_cond = Range::All;
    for p in parts {
        match p {
            Cond::Compare(expr::Operand::Path(a), expr::Cmp::Eq, v) if a == hash => {
                if hash_value.is_some() {
                    return Err(bad());
                }
                hash_value = Some(s_operand(v).ok_or_else(bad)?);
            }
            Cond::Compare(expr::Operand::Path(a), op, v) if Some(a.as_str()) == range => {
                let v = s_operand(v).ok_or_else(bad)?;
                range_cond = match op {
                    expr::Cmp::Eq => Range::Eq(v),
                    expr::Cmp::Lt => Range::Lt(v),
                    expr::Cmp::Le => Range::Le(v),
                    expr::Cmp::Gt => Range::Gt(v),
                    expr::Cmp::Ge => Range::Ge(v),
                    expr::Cmp::Ne => return Err(bad()),
                };
            }
            Cond::Between(expr::Operand::Path(a), lo, hi) if Some(a.as_str()) == range => {
                let (lo, hi) = (
                    s_operand(lo).ok_or_else(bad)?,
                    s_operand(hi).ok_or_else(bad)?,
                );
                if lo > hi {
                    return Err(Fail::invalid(
                        "Invalid KeyConditionExpression: The BETWEEN operator requires upper \
                         bound to be greater than or equal to lower bound",
                    ));
                }
                range_cond = Range::Between(lo, hi);
            }
            Cond::BeginsWith(expr::Operand::Path(a), v) if Some(a.as_str()) == range => {
                range_cond = Range::Prefix(s_operand(v).ok_or_else(bad)?);
            }
            _ => return Err(bad()),
        }
    }
    Ok((
        hash_value.ok_or_else(|| {
            Fail::invalid("Query condition missed key schema element: ".to_owned() + hash)
        })?,
        range_cond,
    ))
}

impl State {
    fn table(&mut self, name: &str) -> Result<&mut Table, Fail> {
        self.tables.get_mut(name).ok_or_else(Fail::not_found)
    }

    fn count(&mut self, op: &str) -> &mut OpStats {
        self.stats.by_op.entry(op.to_owned()).or_default()
    }

    /// A scripted or random fault for this call, if any.
    fn fault(&mut self, op: &str) -> Option<FaultKind> {
        if let Some(pos) = self
            .scripted
            .iter()
            .position(|f| f.op.as_deref().is_none_or(|o| o == op))
        {
            let f = &mut self.scripted[pos];
            let kind = f.kind;
            f.times = f.times.saturating_sub(1);
            if f.times == 0 {
                self.scripted.remove(pos);
            }
            return Some(kind);
        }
        if !DATA_OPS.contains(&op) {
            return None;
        }
        let r = self.rates;
        let roll = |rng: &mut Rng, p: f64| p > 0.0 && (rng.below(1_000_000) as f64) < p * 1e6;
        if roll(&mut self.rng, r.throughput) {
            return Some(FaultKind::Throughput);
        }
        if roll(&mut self.rng, r.server_error) {
            return Some(FaultKind::ServerError);
        }
        if op.starts_with("Batch") && roll(&mut self.rng, r.unprocessed) {
            return Some(FaultKind::Unprocessed);
        }
        None
    }

    /// Takes capacity for `units` on the table and the partition; `false`: throttled.
    fn capacity(&mut self, table: &str, pk: &str, units: f64, write: bool) -> bool {
        let m = self.model.clone();
        let (part_rate, table_rate) = if write {
            (m.partition_wcu, m.table_wcu)
        } else {
            (m.partition_rcu, m.table_rcu)
        };
        let Some(t) = self.tables.get_mut(table) else {
            return true;
        };
        let scale = m.scale.max(1e-9);
        if let Some(rate) = table_rate {
            let (rate, cap) = (rate * scale, rate * m.burst_seconds);
            let b = if write { &mut t.writes } else { &mut t.reads };
            if !b
                .get_or_insert_with(|| Bucket::new(cap))
                .take(units, rate, cap)
            {
                return false;
            }
        }
        if let Some(rate) = part_rate {
            let (rate, cap) = (rate * scale, rate * m.burst_seconds);
            let p = t.partitions.entry(pk.to_owned()).or_default();
            let b = if write { &mut p.writes } else { &mut p.reads };
            if !b
                .get_or_insert_with(|| Bucket::new(cap))
                .take(units, rate, cap)
            {
                return false;
            }
        }
        true
    }

    /// Answers one call: the JSON text of the answer, or the failure.
    fn dispatch(&mut self, op: &str, req: &Map<String, Value>) -> Result<String, Fail> {
        match self.fault(op) {
            Some(FaultKind::Throughput) => {
                self.count(op).throttled += 1;
                return Err(Fail::throughput());
            }
            Some(FaultKind::Throttling) => {
                self.count(op).throttled += 1;
                return Err(Fail {
                    status: 400,
                    kind: "ThrottlingException",
                    message: "Rate of requests exceeds the allowed throughput.".into(),
                    item: None,
                });
            }
            Some(FaultKind::ServerError) => {
                self.count(op).faults += 1;
                return Err(Fail {
                    status: 500,
                    kind: "InternalServerError",
                    message: "Internal server error (injected by SimTable)".into(),
                    item: None,
                });
            }
            Some(FaultKind::Unprocessed) if op.starts_with("Batch") => {
                self.count(op).faults += 1;
                return match op {
                    "BatchWriteItem" => self.batch_write(req, true).map(|v| v.to_string()),
                    _ => self.batch_get(req, true),
                };
            }
            _ => {}
        }
        match op {
            "GetItem" => self.get_item(req),
            "Query" => self.query(req, false),
            "Scan" => self.query(req, true),
            "BatchGetItem" => self.batch_get(req, false),
            _ => self.dispatch_json(op, req).map(|v| v.to_string()),
        }
    }

    /// The operations whose answers are small: built as JSON values.
    fn dispatch_json(&mut self, op: &str, req: &Map<String, Value>) -> Answer {
        match op {
            "CreateTable" => self.create_table(req),
            "DescribeTable" => {
                let name = str_field(req, "TableName")?;
                let t = self.table(name)?;
                Ok(json!({"Table": t.description(name)}))
            }
            "DeleteTable" => {
                let name = str_field(req, "TableName")?;
                let t = self.tables.remove(name).ok_or_else(Fail::not_found)?;
                let mut d = t.description(name);
                d["TableStatus"] = json!("DELETING");
                Ok(json!({"TableDescription": d}))
            }
            "ListTables" => Ok(json!({"TableNames": self.tables.keys().collect::<Vec<_>>()})),
            "UpdateTimeToLive" => {
                let name = str_field(req, "TableName")?;
                let spec = obj(req, "TimeToLiveSpecification")?.clone();
                let attr = spec
                    .get("AttributeName")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let enabled = spec.get("Enabled").and_then(Value::as_bool) == Some(true);
                self.table(name)?.ttl = if enabled { attr } else { None };
                Ok(json!({"TimeToLiveSpecification": spec}))
            }
            "DescribeTimeToLive" => {
                let name = str_field(req, "TableName")?;
                let t = self.table(name)?;
                Ok(match &t.ttl {
                    Some(a) => {
                        json!({"TimeToLiveDescription": {"TimeToLiveStatus": "ENABLED", "AttributeName": a}})
                    }
                    None => json!({"TimeToLiveDescription": {"TimeToLiveStatus": "DISABLED"}}),
                })
            }
            "PutItem" => self.put_item(req),
            "UpdateItem" => self.update_item(req),
            "DeleteItem" => self.delete_item(req),
            "BatchWriteItem" => self.batch_write(req, false),
            other => Err(Fail {
                status: 400,
                kind: "UnknownOperationException",
                message: format!("SimTable does not implement {other}"),
                item: None,
            }),
        }
    }

    fn create_table(&mut self, req: &Map<String, Value>) -> Answer {
        let name = str_field(req, "TableName")?.to_owned();
        if self.tables.contains_key(&name) {
            return Err(Fail {
                status: 400,
                kind: "ResourceInUseException",
                message: format!("Table already exists: {name}"),
                item: None,
            });
        }
        let definitions = req
            .get("AttributeDefinitions")
            .cloned()
            .unwrap_or(json!([]));
        let types: HashMap<String, String> = definitions
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| {
                Some((
                    d.get("AttributeName")?.as_str()?.to_owned(),
                    d.get("AttributeType")?.as_str()?.to_owned(),
                ))
            })
            .collect();
        let schema = |v: Option<&Value>| -> Result<(String, Option<String>), Fail> {
            let mut hash = None;
            let mut range = None;
            for k in v.and_then(Value::as_array).into_iter().flatten() {
                let n = k
                    .get("AttributeName")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                match types.get(&n).map(String::as_str) {
                    Some("S") => {}
                    Some(other) => {
                        return Err(Fail::invalid(format!(
                            "SimTable supports string key attributes only ({n} is {other})"
                        )));
                    }
                    None => {
                        return Err(Fail::invalid(format!(
                            "One or more parameter values were invalid: Some index key \
                             attributes are not defined in AttributeDefinitions ({n})"
                        )));
                    }
                }
                match k.get("KeyType").and_then(Value::as_str) {
                    Some("HASH") => hash = Some(n),
                    Some("RANGE") => range = Some(n),
                    _ => return Err(Fail::invalid("KeyType must be HASH or RANGE")),
                }
            }
            Ok((hash.ok_or_else(|| Fail::invalid("no HASH key"))?, range))
        };
        let (hash, range) = schema(req.get("KeySchema"))?;
        let mut indexes = BTreeMap::new();
        for g in req
            .get("GlobalSecondaryIndexes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let iname = g
                .get("IndexName")
                .and_then(Value::as_str)
                .ok_or_else(|| Fail::invalid("IndexName is required"))?
                .to_owned();
            let (h, r) = schema(g.get("KeySchema"))?;
            let upkeep = self
                .index_upkeep
                .as_ref()
                .is_none_or(|keep| keep.contains(&iname));
            let mut description = g.clone();
            description["IndexStatus"] = json!("ACTIVE");
            indexes.insert(
                iname,
                Index {
                    hash: h,
                    range: r,
                    upkeep,
                    entries: HashMap::new(),
                    description,
                },
            );
        }
        if req.contains_key("LocalSecondaryIndexes") {
            return Err(Fail::invalid(
                "SimTable does not implement local secondary indexes",
            ));
        }
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let t = Table {
            hash,
            range,
            definitions,
            indexes,
            partitions: BTreeMap::new(),
            ttl: None,
            created,
            items: 0,
            bytes: 0,
            reads: None,
            writes: None,
        };
        let d = t.description(&name);
        self.tables.insert(name, t);
        Ok(json!({"TableDescription": d}))
    }

    fn get_item(&mut self, req: &Map<String, Value>) -> Result<String, Fail> {
        let name = str_field(req, "TableName")?;
        let e = exprs(req)?;
        let t = self.table(name)?;
        let (pk, sk) = key_of(t, obj(req, "Key")?)?;
        let consistent = req.get("ConsistentRead").and_then(Value::as_bool) == Some(true);
        let units = read_units(t.size_at(&pk, &sk), consistent);
        // The answer is built before the capacity is taken (it borrows the table); a
        // throttled call drops it.
        let answer = match t.get(&pk, &sk) {
            Some(text) => match &e.projection {
                None => format!("{{\"Item\":{text}}}"),
                Some(_) => json!({"Item": project(parse_item(text), &e.projection)}).to_string(),
            },
            None => "{}".to_owned(),
        };
        if !self.capacity(name, &pk, units, false) {
            self.count("GetItem").throttled += 1;
            return Err(Fail::throughput());
        }
        self.count("GetItem").read_units += units;
        Ok(answer)
    }

    /// Checks the condition of a single-item write against the current item.
    fn check_condition(
        cond: &Option<Cond>,
        current: Option<&Attrs>,
        req: &Map<String, Value>,
    ) -> Result<(), Fail> {
        let Some(c) = cond else { return Ok(()) };
        let empty = Attrs::new();
        if expr::eval(c, current.unwrap_or(&empty))? {
            return Ok(());
        }
        let all_old = opt_str(req, "ReturnValuesOnConditionCheckFailure") == Some("ALL_OLD");
        Err(Fail {
            status: 400,
            kind: "ConditionalCheckFailedException",
            message: "The conditional request failed".into(),
            item: if all_old { current.cloned() } else { None },
        })
    }

    fn return_values(req: &Map<String, Value>, allowed: &[&str]) -> Result<String, Fail> {
        let rv = opt_str(req, "ReturnValues").unwrap_or("NONE").to_owned();
        if rv != "NONE" && !allowed.contains(&rv.as_str()) {
            return Err(Fail::invalid(format!(
                "ReturnValues can only be one of {allowed:?} or NONE for this operation"
            )));
        }
        if let Some(f) = opt_str(req, "ReturnValuesOnConditionCheckFailure")
            && f != "ALL_OLD"
            && f != "NONE"
        {
            return Err(Fail::invalid(
                "ReturnValuesOnConditionCheckFailure must be ALL_OLD or NONE",
            ));
        }
        Ok(rv)
    }

    fn write_capacity(
        &mut self,
        op: &str,
        table: &str,
        pk: &str,
        bytes: usize,
    ) -> Result<(), Fail> {
        let units = write_units(bytes);
        if !self.capacity(table, pk, units, true) {
            self.count(op).throttled += 1;
            return Err(Fail::throughput());
        }
        self.count(op).write_units += units;
        Ok(())
    }

    fn put_item(&mut self, req: &Map<String, Value>) -> Answer {
        let name = str_field(req, "TableName")?;
        let e = exprs(req)?;
        if e.update.is_some() || e.key.is_some() || e.filter.is_some() || e.projection.is_some() {
            return Err(Fail::invalid("PutItem takes a ConditionExpression only"));
        }
        let rv = Self::return_values(req, &["ALL_OLD"])?;
        let item = obj(req, "Item")?;
        let t = self.table(name)?;
        let (pk, sk) = check_item(t, item)?;
        // The old item is parsed only when the call looks at it.
        let old = if e.condition.is_some() || rv == "ALL_OLD" {
            t.get(&pk, &sk).map(parse_item)
        } else {
            None
        };
        let bytes = item_size(item).max(t.size_at(&pk, &sk));
        self.write_capacity("PutItem", name, &pk, bytes)?;
        Self::check_condition(&e.condition, old.as_ref(), req)?;
        self.table(name)?.write(&pk, &sk, Some(item));
        Ok(match (rv.as_str(), old) {
            ("ALL_OLD", Some(o)) => json!({"Attributes": o}),
            _ => json!({}),
        })
    }

    fn update_item(&mut self, req: &Map<String, Value>) -> Answer {
        let name = str_field(req, "TableName")?;
        let e = exprs(req)?;
        if e.key.is_some() || e.filter.is_some() || e.projection.is_some() {
            return Err(Fail::invalid(
                "UpdateItem takes an UpdateExpression and a ConditionExpression only",
            ));
        }
        let rv = Self::return_values(req, &["ALL_OLD", "ALL_NEW", "UPDATED_OLD", "UPDATED_NEW"])?;
        let t = self.table(name)?;
        let key = obj(req, "Key")?.clone();
        let (pk, sk) = key_of(t, &key)?;
        let old = t.get(&pk, &sk).map(parse_item);
        let old_size = t.size_at(&pk, &sk);
        let base = old.as_ref().unwrap_or(&key);
        let keys: Vec<String> = t.keys().iter().map(|k| (*k).to_owned()).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        let actions = e.update.unwrap_or_default();
        let new = expr::apply_update(&actions, base, &keys)?;
        let bytes = item_size(&new).max(old_size);
        self.write_capacity("UpdateItem", name, &pk, bytes)?;
        Self::check_condition(&e.condition, old.as_ref(), req)?;
        let t = self.table(name)?;
        check_item(t, &new)?;
        t.write(&pk, &sk, Some(&new));
        let changed: Vec<&String> = actions
            .iter()
            .map(|a| match a {
                Action::Set(p, _)
                | Action::Remove(p)
                | Action::Add(p, _)
                | Action::Delete(p, _) => p,
            })
            .collect();
        let pick = |item: &Attrs| -> Attrs {
            item.iter()
                .filter(|(k, _)| changed.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        let attributes = match rv.as_str() {
            "ALL_OLD" => old,
            "ALL_NEW" => Some(new),
            "UPDATED_OLD" => old.as_ref().map(pick),
            "UPDATED_NEW" => Some(pick(&new)),
            _ => None,
        };
        Ok(match attributes {
            Some(a) if !a.is_empty() => json!({"Attributes": a}),
            _ => json!({}),
        })
    }

    fn delete_item(&mut self, req: &Map<String, Value>) -> Answer {
        let name = str_field(req, "TableName")?;
        let e = exprs(req)?;
        let rv = Self::return_values(req, &["ALL_OLD"])?;
        let t = self.table(name)?;
        let (pk, sk) = key_of(t, obj(req, "Key")?)?;
        let old = if e.condition.is_some() || rv == "ALL_OLD" {
            t.get(&pk, &sk).map(parse_item)
        } else {
            None
        };
        let old_size = t.size_at(&pk, &sk);
        self.write_capacity("DeleteItem", name, &pk, old_size)?;
        Self::check_condition(&e.condition, old.as_ref(), req)?;
        self.table(name)?.write(&pk, &sk, None);
        Ok(match (rv.as_str(), old) {
            ("ALL_OLD", Some(o)) => json!({"Attributes": o}),
            _ => json!({}),
        })
    }

    /// Query (or Scan, `scan`): key order, `Limit` items evaluated per page, a page ends at
    /// 1 MB, `LastEvaluatedKey` whenever the page stopped before the end.
    fn query(&mut self, req: &Map<String, Value>, scan: bool) -> Result<String, Fail> {
        let op = if scan { "Scan" } else { "Query" };
        let name = str_field(req, "TableName")?;
        let e = exprs(req)?;
        if e.update.is_some() || e.condition.is_some() {
            return Err(Fail::invalid(format!(
                "{op} takes key, filter and projection expressions only"
            )));
        }
        let limit = match req.get("Limit") {
            None => usize::MAX,
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => usize::try_from(n).unwrap_or(usize::MAX),
                _ => {
                    return Err(Fail::invalid(
                        "1 validation error detected: Value at 'limit' failed to satisfy \
                         constraint: Member must have value greater than or equal to 1",
                    ));
                }
            },
        };
        let forward = req.get("ScanIndexForward").and_then(Value::as_bool) != Some(false);
        let consistent = req.get("ConsistentRead").and_then(Value::as_bool) == Some(true);
        let select = opt_str(req, "Select").unwrap_or(if e.projection.is_some() {
            "SPECIFIC_ATTRIBUTES"
        } else {
            "ALL_ATTRIBUTES"
        });
        if ![
            "ALL_ATTRIBUTES",
            "ALL_PROJECTED_ATTRIBUTES",
            "COUNT",
            "SPECIFIC_ATTRIBUTES",
        ]
        .contains(&select)
        {
            return Err(Fail::invalid(format!("unknown Select {select}")));
        }
        let index_name = opt_str(req, "IndexName");
        let start = req.get("ExclusiveStartKey").and_then(Value::as_object);
        let t = self.table(name)?;
        // (hash value, range value, table pk, table sk) in the order of the index or table.
        let mut keys: Vec<(String, String, String)> = Vec::new();
        let mut hash_for_capacity = String::new();
        let mut index_attrs: Option<(String, Option<String>)> = None;
        match index_name {
            Some(iname) => {
                if consistent {
                    return Err(Fail::invalid(
                        "Consistent reads are not supported on global secondary indexes",
                    ));
                }
                let index = t.indexes.get(iname).ok_or_else(|| {
                    Fail::invalid(format!(
                        "The table does not have the specified index: {iname}"
                    ))
                })?;
                if !index.upkeep {
                    return Err(Fail::invalid(format!(
                        "SimTable was told not to maintain index {iname}; it cannot be queried"
                    )));
                }
                index_attrs = Some((index.hash.clone(), index.range.clone()));
                let start_at = match start {
                    Some(s) => Some(start_tuple(s, &index.hash, index.range.as_deref(), t)?),
                    None => None,
                };
                if scan {
                    let mut hashes: Vec<&String> = index.entries.keys().collect();
                    hashes.sort();
                    for h in hashes {
                        for (r, pk, sk) in &index.entries[h] {
                            keys.push((pk.clone(), sk.clone(), format!("{h}\u{0}{r}")));
                        }
                    }
                    if let Some((h, r, pk, sk)) = start_at {
                        let mark = format!("{h}\u{0}{r}");
                        keys.retain(|(p, s, m)| {
                            (m.as_str(), p.as_str(), s.as_str())
                                > (mark.as_str(), pk.as_str(), sk.as_str())
                        });
                    }
                } else {
                    let c = e.key.as_ref().ok_or_else(|| {
                        Fail::invalid("Either the KeyConditions or KeyConditionExpression parameter must be specified in the request.")
                    })?;
                    let (h, range) = key_condition(c, &index.hash, index.range.as_deref())?;
                    hash_for_capacity = h.clone();
                    if let Some(set) = index.entries.get(&h) {
                        let lower = match range.lower() {
                            Bound::Included(x) => {
                                Bound::Included((x, String::new(), String::new()))
                            }
                            Bound::Excluded(x) => {
                                Bound::Excluded((x, "\u{10ffff}".into(), String::new()))
                            }
                            Bound::Unbounded => Bound::Unbounded,
                        };
                        let rows: Box<dyn Iterator<Item = &(String, String, String)>> = if forward {
                            Box::new(set.range((lower, Bound::Unbounded)))
                        } else {
                            Box::new(set.iter().rev())
                        };
                        for (r, pk, sk) in rows {
                            if forward
                                && let Range::Prefix(p) = &range
                                && !r.starts_with(p.as_str())
                            {
                                break;
                            }
                            if !range.matches(r) {
                                continue;
                            }
                            if let Some((_, sr, spk, ssk)) = &start_at {
                                let here = (r.as_str(), pk.as_str(), sk.as_str());
                                let there = (sr.as_str(), spk.as_str(), ssk.as_str());
                                if (forward && here <= there) || (!forward && here >= there) {
                                    continue;
                                }
                            }
                            keys.push((pk.clone(), sk.clone(), r.clone()));
                            if keys.len() > limit {
                                break;
                            }
                        }
                    }
                }
            }
            None => {
                let start_at = match start {
                    Some(s) => {
                        let (pk, sk) = key_of(t, s)
                            .map_err(|_| Fail::invalid("The provided starting key is invalid"))?;
                        Some((pk, sk))
                    }
                    None => None,
                };
                if scan {
                    for (pk, p) in &t.partitions {
                        if let Some((spk, _)) = &start_at
                            && pk < spk
                        {
                            continue;
                        }
                        for sk in p.items.keys() {
                            if let Some((spk, ssk)) = &start_at
                                && (pk.as_str(), sk.as_str()) <= (spk.as_str(), ssk.as_str())
                            {
                                continue;
                            }
                            keys.push((pk.clone(), sk.clone(), String::new()));
                            if keys.len() > limit {
                                break;
                            }
                        }
                        if keys.len() > limit {
                            break;
                        }
                    }
                } else {
                    let c = e.key.as_ref().ok_or_else(|| {
                        Fail::invalid("Either the KeyConditions or KeyConditionExpression parameter must be specified in the request.")
                    })?;
                    let (h, range) = key_condition(c, &t.hash, t.range.as_deref())?;
                    if let Some((spk, _)) = &start_at
                        && *spk != h
                    {
                        return Err(Fail::invalid(
                            "The provided starting key is invalid: The provided key element does not match the schema",
                        ));
                    }
                    hash_for_capacity = h.clone();
                    if let Some(p) = t.partitions.get(&h) {
                        let lower = match (&start_at, forward) {
                            (Some((_, ssk)), true) => Bound::Excluded(ssk.clone()),
                            _ => range.lower(),
                        };
                        let upper = match (&start_at, forward) {
                            (Some((_, ssk)), false) => Bound::Excluded(ssk.clone()),
                            _ => Bound::Unbounded,
                        };
                        let rows: Box<dyn Iterator<Item = &String>> = if forward {
                            Box::new(p.items.range::<String, _>((lower, upper)).map(|(k, _)| k))
                        } else {
                            Box::new(
                                p.items
                                    .range::<String, _>((Bound::Unbounded, upper))
                                    .rev()
                                    .map(|(k, _)| k),
                            )
                        };
                        for sk in rows {
                            if forward
                                && let Range::Prefix(pre) = &range
                                && !sk.starts_with(pre.as_str())
                            {
                                break;
                            }
                            if !range.matches(sk) {
                                continue;
                            }
                            keys.push((h.clone(), sk.clone(), String::new()));
                            if keys.len() > limit {
                                break;
                            }
                        }
                    }
                }
            }
        }
        // Read the page: up to `limit` items and 1 MB. Without a filter or a projection the
        // stored texts go into the answer as they are; only the last item is parsed, for its
        // key.
        let more_beyond = keys.len() > limit;
        keys.truncate(limit);
        let raw = e.filter.is_none() && e.projection.is_none();
        let mut items = String::from("[");
        let mut count = 0usize;
        let mut bytes = 0usize;
        let mut scanned = 0usize;
        let mut last: Option<&str> = None;
        let mut stopped_early = more_beyond;
        let total = keys.len();
        for (i, (pk, sk, _)) in keys.iter().enumerate() {
            let Some(stored) = t.stored(pk, sk) else {
                continue;
            };
            bytes += stored.size as usize;
            scanned += 1;
            last = Some(&stored.text);
            let kept = if raw {
                Some(std::borrow::Cow::Borrowed(&*stored.text))
            } else {
                let item = parse_item(&stored.text);
                let keep = match &e.filter {
                    Some(f) => expr::eval(f, &item)?,
                    None => true,
                };
                keep.then(|| {
                    std::borrow::Cow::Owned(
                        serde_json::to_string(&project(item, &e.projection)).unwrap_or_default(),
                    )
                })
            };
            if let Some(text) = kept {
                if count > 0 {
                    items.push(',');
                }
                items.push_str(&text);
                count += 1;
            }
            if bytes >= MAX_PAGE_BYTES && i + 1 < total {
                stopped_early = true;
                break;
            }
        }
        items.push(']');
        let mut out = format!("{{\"Count\":{count},\"ScannedCount\":{scanned}");
        if select != "COUNT" {
            out.push_str(",\"Items\":");
            out.push_str(&items);
        }
        // DynamoDB does not look ahead: a page that reached its Limit names its last key.
        if (stopped_early || (scanned == limit && limit != usize::MAX))
            && let Some(text) = last
        {
            let item = parse_item(text);
            let mut key = Attrs::new();
            let names = t.keys().into_iter().map(str::to_owned).chain(
                index_attrs
                    .iter()
                    .flat_map(|(h, r)| std::iter::once(h.clone()).chain(r.clone())),
            );
            for k in names {
                if let Some(v) = item.get(&k) {
                    key.insert(k, v.clone());
                }
            }
            out.push_str(",\"LastEvaluatedKey\":");
            out.push_str(&Value::Object(key).to_string());
        }
        out.push('}');
        let units = read_units(bytes, consistent);
        if !self.capacity(name, &hash_for_capacity, units, false) {
            self.count(op).throttled += 1;
            return Err(Fail::throughput());
        }
        self.count(op).read_units += units;
        Ok(out)
    }

    fn batch_write(&mut self, req: &Map<String, Value>, withhold: bool) -> Answer {
        let request_items = obj(req, "RequestItems")?;
        let total: usize = request_items
            .values()
            .map(|v| v.as_array().map_or(0, Vec::len))
            .sum();
        if total == 0 {
            return Err(Fail::invalid(
                "1 validation error detected: Value at 'requestItems' failed to satisfy \
                 constraint: Member must have length greater than or equal to 1",
            ));
        }
        if total > MAX_BATCH_WRITE {
            return Err(Fail::invalid(format!(
                "1 validation error detected: Value at 'requestItems' failed to satisfy \
                 constraint: Map value must satisfy constraint: [Member must have length less \
                 than or equal to 25] ({total} requests)"
            )));
        }
        // Validate everything first: DynamoDB rejects the whole batch on any bad entry.
        let mut planned = Vec::new();
        for (name, list) in request_items {
            let t = self.table(name)?;
            let mut seen = BTreeSet::new();
            for w in list.as_array().into_iter().flatten() {
                let w = w
                    .as_object()
                    .ok_or_else(|| Fail::invalid("a write request must be an object"))?;
                let (key, item) = match (
                    w.get("PutRequest")
                        .and_then(|p| p.get("Item"))
                        .and_then(Value::as_object),
                    w.get("DeleteRequest")
                        .and_then(|d| d.get("Key"))
                        .and_then(Value::as_object),
                ) {
                    (Some(item), None) => (check_item(t, item)?, Some(item)),
                    (None, Some(key)) => (key_of(t, key)?, None),
                    _ => {
                        return Err(Fail::invalid(
                            "Supplied AttributeValue has more than one datatypes set, or a \
                             write request has neither or both of PutRequest and DeleteRequest",
                        ));
                    }
                };
                if !seen.insert(key.clone()) {
                    return Err(Fail::invalid(
                        "Provided list of item keys contains duplicates",
                    ));
                }
                planned.push((name, key, item, w));
            }
        }
        let keep = if withhold {
            total - total.div_ceil(3).max(1)
        } else {
            total
        };
        let mut unprocessed: Map<String, Value> = Map::new();
        let mut done = 0usize;
        for (i, (name, (pk, sk), item, raw)) in planned.into_iter().enumerate() {
            let old_size = self.table(name)?.size_at(&pk, &sk);
            let bytes = item.map_or(0, item_size).max(old_size);
            let units = write_units(bytes);
            if i >= keep || !self.capacity(name, &pk, units, true) {
                unprocessed
                    .entry(name.clone())
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
                    .expect("array")
                    .push(Value::Object(raw.clone()));
                continue;
            }
            self.count("BatchWriteItem").write_units += units;
            self.table(name)?.write(&pk, &sk, item);
            done += 1;
        }
        if done == 0 && !withhold {
            self.count("BatchWriteItem").throttled += 1;
            return Err(Fail::throughput());
        }
        if !unprocessed.is_empty() && !withhold {
            self.count("BatchWriteItem").throttled += 1;
        }
        Ok(json!({"UnprocessedItems": unprocessed}))
    }

    /// BatchGetItem; found items go into the answer as stored (parsed only for a projection).
    fn batch_get(&mut self, req: &Map<String, Value>, withhold: bool) -> Result<String, Fail> {
        let request_items = obj(req, "RequestItems")?;
        let mut total = 0usize;
        for spec in request_items.values() {
            total += spec
                .get("Keys")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
        }
        if total == 0 || total > MAX_BATCH_GET {
            return Err(Fail::invalid(format!(
                "Too many items requested for the BatchGetItem call (or none): {total}"
            )));
        }
        let keep = if withhold {
            total - total.div_ceil(3).max(1)
        } else {
            total
        };
        // `{"Responses": {table: [item, …], …}, "UnprocessedKeys": {…}}`, built as text.
        let mut responses = String::new();
        let mut unprocessed: Map<String, Value> = Map::new();
        let mut i = 0usize;
        for (name, spec) in request_items {
            let spec = spec
                .as_object()
                .ok_or_else(|| Fail::invalid("KeysAndAttributes must be an object"))?;
            let e = exprs(spec)?;
            let consistent = spec.get("ConsistentRead").and_then(Value::as_bool) == Some(true);
            let keys = spec
                .get("Keys")
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice);
            let mut seen = BTreeSet::new();
            let mut parsed = Vec::new();
            {
                let t = self.table(name)?;
                for k in keys {
                    let key = k
                        .as_object()
                        .ok_or_else(|| Fail::invalid("a key must be an object"))?;
                    let pk_sk = key_of(t, key)?;
                    if !seen.insert(pk_sk.clone()) {
                        return Err(Fail::invalid(
                            "Provided list of item keys contains duplicates",
                        ));
                    }
                    parsed.push((pk_sk, k));
                }
            }
            if !responses.is_empty() {
                responses.push(',');
            }
            responses.push_str(&Value::String(name.clone()).to_string());
            responses.push_str(":[");
            let mut found = 0usize;
            let mut left = Vec::new();
            for ((pk, sk), raw) in parsed {
                let units = read_units(self.table(name)?.size_at(&pk, &sk), consistent);
                if i >= keep || !self.capacity(name, &pk, units, false) {
                    left.push(raw.clone());
                } else {
                    self.count("BatchGetItem").read_units += units;
                    if let Some(text) = self.table(name)?.get(&pk, &sk) {
                        if found > 0 {
                            responses.push(',');
                        }
                        match &e.projection {
                            None => responses.push_str(text),
                            Some(_) => responses.push_str(
                                &serde_json::to_string(&project(parse_item(text), &e.projection))
                                    .unwrap_or_default(),
                            ),
                        }
                        found += 1;
                    }
                }
                i += 1;
            }
            responses.push(']');
            if !left.is_empty() {
                let mut rest = spec.clone();
                rest.insert("Keys".into(), Value::Array(left));
                unprocessed.insert(name.clone(), Value::Object(rest));
            }
        }
        Ok(format!(
            "{{\"Responses\":{{{responses}}},\"UnprocessedKeys\":{}}}",
            Value::Object(unprocessed)
        ))
    }
}

/// The position an `ExclusiveStartKey` names in an index: (index hash, index range, pk, sk).
fn start_tuple(
    s: &Attrs,
    hash: &str,
    range: Option<&str>,
    t: &Table,
) -> Result<(String, String, String, String), Fail> {
    let bad = || Fail::invalid("The provided starting key is invalid");
    let get = |n: &str| {
        s.get(n)
            .and_then(s_value)
            .map(str::to_owned)
            .ok_or_else(bad)
    };
    let h = get(hash)?;
    let r = match range {
        Some(r) => get(r)?,
        None => String::new(),
    };
    let pk = get(&t.hash)?;
    let sk = match &t.range {
        Some(r) => get(r)?,
        None => String::new(),
    };
    Ok((h, r, pk, sk))
}
