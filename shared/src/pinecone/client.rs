//! HTTP client of the Pinecone data plane (end of docs/spec/openai-batch.md): fetch metadata, update
//! metadata, and the fetch-merge-update of a batch's label verdicts.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{RequestBuilder, Url};
use secrecy::SecretString;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::bucket::TokenBucket;
pub use super::error::{Op, PineconeError};
use super::merge::{LabelSets, Metadata, MetadataChange, merge_metadata};
use crate::http::{CallError as _, Http, JSON_BODY_CAP, Service, error_chain};
use crate::retry::RetryPolicy;
use crate::secret::sensitive_header;

/// The namespace of word vectors (docs/spec/data-model.md).
pub const DEFAULT_NAMESPACE: &str = "words";
/// The data-plane API version this client speaks; pinned so that a server-side default change
/// cannot alter response shapes under us.
pub const API_VERSION: &str = "2025-10";
/// Pinecone's own cap on ids per fetch.
pub const MAX_FETCH_IDS: usize = 1000;

/// Cap of a fetch answer per id asked: a vector's values (3,072 dimensions at about 12 bytes
/// each) and its metadata (at most 40 KB) fit with room to spare.
const FETCH_BODY_CAP_PER_ID: usize = 128 * 1024;
/// The rate each adaptive bucket has settled at, by `op` (`update`, `fetch`): a process's share
/// of Pinecone's namespace and index limits.
pub const PACED_RATE: &str = "fleet_pinecone_paced_rate_per_second";

/// How the client appears in logs and metrics.
const SERVICE: Service = Service {
    name: "Pinecone",
    requests_metric: "fleet_pinecone_requests_total",
    retries_metric: "fleet_pinecone_retries_total",
    call_label: "op",
};

#[derive(Debug, Clone)]
pub struct PineconeConfig {
    /// The index's data-plane URL (`https://my-index-abc.svc….pinecone.io`, or
    /// `http://127.0.0.1:PORT` for an emulator). A bare host name means `https://`.
    pub index_host: String,
    pub api_key: SecretString,
    pub namespace: String,
    /// Sent as `X-Pinecone-Api-Version`.
    pub api_version: String,
    /// Pace of metadata updates from this client. Pinecone allows about 100 per second per
    /// namespace; the default leaves headroom. With several worker replicas, divide.
    pub updates_per_second: f64,
    /// Updates in flight at once. Latency, not the server, limits one connection's rate, so a
    /// few in flight are needed to reach `updates_per_second`; the bucket bounds the rate.
    pub update_concurrency: usize,
    /// Ids per fetch, at most 1,000 (Pinecone's limit); the query budget below usually binds.
    pub fetch_max_ids: usize,
    /// Budget of one fetch's query string. Ids travel in the URL: a word id is 78 characters,
    /// 97 bytes once its seven `#` are encoded (`%23`) and `ids=…&` added, so 1,000 ids would
    /// make a ~97 KB URL, far past the 8–16 KB request-line limits common in proxies and load
    /// balancers. 6,000 bytes (61 word ids) stays under the strictest common limit (8 KB) with
    /// room for the rest of the request line.
    pub fetch_max_query_bytes: usize,
    /// Fetches in flight at once.
    pub fetch_concurrency: usize,
    /// Pace of fetches from this client. Pinecone allows about 100 per second per index,
    /// shared by every replica; the default leaves room for a second one.
    pub fetches_per_second: f64,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    /// 1 but in the simulation, whose services run this many times faster: the adaptive
    /// pacing's own clock runs as fast ([`TokenBucket::adaptive_scaled`]).
    pub pacing_time_scale: f64,
}

impl PineconeConfig {
    pub fn new(index_host: impl Into<String>, api_key: SecretString) -> Self {
        Self {
            index_host: index_host.into(),
            api_key,
            namespace: DEFAULT_NAMESPACE.to_owned(),
            api_version: API_VERSION.to_owned(),
            updates_per_second: 90.0,
            update_concurrency: 8,
            fetch_max_ids: 100,
            fetch_max_query_bytes: 6_000,
            fetch_concurrency: 4,
            fetches_per_second: 50.0,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            pacing_time_scale: 1.0,
        }
    }
}

/// What [`PineconeClient::apply_merges`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PineconeReport {
    /// Vectors whose metadata was written.
    pub updated: u64,
    /// Vectors that already held every label: no write.
    pub unchanged: u64,
    /// Vectors absent from the index (the fetch did not return them): not written, since
    /// Pinecone would answer 200 to the update and store nothing.
    pub missing: u64,
    /// 429 answers met on the way (each retried or, past the policy, returned as an error).
    pub rate_limited: u64,
    /// The missing vectors' ids, sorted.
    pub missing_ids: Vec<String>,
    /// Vectors written only because their change asked for a [`MetadataChange::rewrite`]
    /// (the fetch showed every label).
    pub rewritten: u64,
    /// The label lists each write named, with the labels it wrote, by vector id
    /// ([`super::merge::MergeOutcome::written_sets`]): what the caller verifies against the
    /// table once the writes are done (see [`super::merge`]). Vectors not written are not here.
    pub written: BTreeMap<String, LabelSets>,
}

/// The Pinecone data-plane client for one namespace. Clones share the connection pool, the
/// update and fetch pacing and the pacing of calls while the key is rejected, so every clone in
/// a process counts against the same rates.
#[derive(Clone)]
pub struct PineconeClient {
    http: Http,
    fetch_url: Url,
    update_url: Url,
    namespace: String,
    request_timeout: Duration,
    update_concurrency: usize,
    fetch_max_ids: usize,
    fetch_max_query_bytes: usize,
    fetch_concurrency: usize,
    bucket: Arc<TokenBucket>,
    fetch_bucket: Arc<TokenBucket>,
}

impl fmt::Debug for PineconeClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PineconeClient")
            .field("fetch_url", &self.fetch_url.as_str())
            .field("api_key", &"[REDACTED]")
            .field("namespace", &self.namespace)
            .field("updates_per_second", &self.bucket.rate())
            .field("fetches_per_second", &self.fetch_bucket.rate())
            .field("update_concurrency", &self.update_concurrency)
            .field("http", &self.http)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct FetchResponse {
    #[serde(default)]
    vectors: HashMap<String, FetchedVector>,
}

#[derive(Deserialize)]
struct FetchedVector {
    #[serde(default)]
    metadata: Option<Metadata>,
}

impl PineconeClient {
    pub fn new(config: PineconeConfig) -> Result<Self, PineconeError> {
        let host = config.index_host.trim();
        let host = if host.contains("://") {
            host.to_owned()
        } else {
            format!("https://{host}")
        };
        let base = crate::http::service_url(&host)
            .map_err(|e| PineconeError::Config(format!("index host: {e}")))?;
        let endpoint = |path: &[&str]| {
            let mut url = base.clone();
            url.set_query(None);
            if let Ok(mut segments) = url.path_segments_mut() {
                segments.pop_if_empty().extend(path);
            }
            url
        };
        if config.namespace.is_empty() {
            // The default namespace is "", but the fleet's vectors live in a named one;
            // an empty value is far more likely a configuration slip.
            return Err(PineconeError::Config("namespace is empty".into()));
        }

        let mut headers = HeaderMap::new();
        let key = sensitive_header("", &config.api_key).map_err(|_| {
            PineconeError::Config("API key contains characters invalid in a header".into())
        })?;
        headers.insert("api-key", key);
        headers.insert(
            "x-pinecone-api-version",
            HeaderValue::from_str(&config.api_version)
                .map_err(|_| PineconeError::Config("invalid API version".into()))?,
        );
        let client = crate::http::client_builder(headers)
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(|e| PineconeError::Config(error_chain(&e)))?;

        Ok(Self {
            http: Http::new(SERVICE, client, config.api_key, config.retry),
            fetch_url: endpoint(&["vectors", "fetch"]),
            update_url: endpoint(&["vectors", "update"]),
            namespace: config.namespace,
            request_timeout: config.request_timeout,
            update_concurrency: config.update_concurrency.max(1),
            fetch_max_ids: config.fetch_max_ids.clamp(1, MAX_FETCH_IDS),
            fetch_max_query_bytes: config.fetch_max_query_bytes,
            fetch_concurrency: config.fetch_concurrency.max(1),
            // Both limits are shared with every other worker: each process finds its share.
            bucket: Arc::new(TokenBucket::adaptive_scaled(
                config.updates_per_second,
                config.pacing_time_scale,
            )),
            fetch_bucket: Arc::new(TokenBucket::adaptive_scaled(
                config.fetches_per_second,
                config.pacing_time_scale,
            )),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Whether calls are paced because Pinecone rejected the key and no call has succeeded
    /// since.
    pub fn is_paced(&self) -> bool {
        self.http.pacer().is_pacing()
    }

    /// Current metadata of the given vectors, by id. Ids absent from the index are absent
    /// from the result; a vector without metadata maps to an empty map. Duplicate ids are
    /// fetched once.
    pub async fn fetch_metadata(
        &self,
        ids: &[String],
    ) -> Result<HashMap<String, Metadata>, PineconeError> {
        self.fetch_counting(ids, &AtomicU64::new(0)).await
    }

    /// `setMetadata` of one vector: overwrites only the keys named. Pinecone answers 200 even
    /// when the id does not exist, so callers must know it exists (see [`Self::apply_merges`]).
    /// Paced by the client's token bucket.
    pub async fn update_metadata(
        &self,
        id: &str,
        set_metadata: &Metadata,
    ) -> Result<(), PineconeError> {
        self.update_counting(id, set_metadata, &AtomicU64::new(0))
            .await
    }

    /// Fetches the current metadata of every vector named, merges each change in
    /// ([`merge_metadata`]), and writes only the vectors whose metadata changes (or whose
    /// change asks for a [`MetadataChange::rewrite`]). Several changes for one id are folded
    /// together first ([`MetadataChange::absorb`]). The report's `written` has the lists each
    /// write left, for the caller's verification: under eventual consistency the fetch may be
    /// stale, so what this writes is only as complete as the labels it is handed (see
    /// [`super::merge`]).
    ///
    /// Safe to run again: a second run finds every label present and writes nothing. On an
    /// error the updates already made stay made, which a re-run then counts as unchanged.
    pub async fn apply_merges(
        &self,
        changes: Vec<(String, MetadataChange)>,
    ) -> Result<PineconeReport, PineconeError> {
        let mut combined: BTreeMap<String, MetadataChange> = BTreeMap::new();
        for (id, change) in changes {
            match combined.get_mut(&id) {
                Some(existing) => existing.absorb(change),
                None => {
                    combined.insert(id, change);
                }
            }
        }
        let rate_limited = AtomicU64::new(0);
        let ids: Vec<String> = combined.keys().cloned().collect();
        let current = self.fetch_counting(&ids, &rate_limited).await?;

        let mut report = PineconeReport::default();
        let mut writes = Vec::new();
        for (id, change) in &combined {
            let Some(metadata) = current.get(id) else {
                report.missing_ids.push(id.clone());
                continue;
            };
            let merged = merge_metadata(metadata, change);
            if merged.changed() {
                if change.rewrite {
                    let plain = MetadataChange {
                        rewrite: false,
                        ..change.clone()
                    };
                    if !merge_metadata(metadata, &plain).changed() {
                        report.rewritten += 1;
                    }
                }
                let sets = merged.written_sets();
                writes.push((id.as_str(), (merged.set_metadata, sets)));
            } else {
                report.unchanged += 1;
            }
        }
        report.missing = report.missing_ids.len() as u64;
        count_outcome("unchanged", report.unchanged);
        count_outcome("missing", report.missing);
        if !report.missing_ids.is_empty() {
            tracing::warn!(
                namespace = %self.namespace,
                missing = report.missing,
                sample = ?report.missing_ids.iter().take(5).collect::<Vec<_>>(),
                "vectors absent from the index; their metadata was not written"
            );
        }

        for (id, (_, sets)) in &writes {
            report.written.insert((*id).to_owned(), sets.clone());
        }
        let updated = self
            .update_all(
                writes.iter().map(|(id, (m, _))| (*id, m)).collect(),
                &rate_limited,
                "updated",
            )
            .await;
        report.rate_limited = rate_limited.load(Ordering::Relaxed);
        report.updated = updated?;
        Ok(report)
    }

    /// Writes each `setMetadata` as it is, without fetching first: the repairs of a
    /// verification (the caller knows the vectors exist, having fetched them moments before,
    /// and what to write, from the table). Counted as `fleet_pinecone_updates_total{outcome =
    /// "repaired"}`; the report has `updated` and `rate_limited` only.
    pub async fn update_many(
        &self,
        writes: Vec<(String, Metadata)>,
    ) -> Result<PineconeReport, PineconeError> {
        let rate_limited = AtomicU64::new(0);
        let updated = self
            .update_all(
                writes.iter().map(|(id, m)| (id.as_str(), m)).collect(),
                &rate_limited,
                "repaired",
            )
            .await;
        Ok(PineconeReport {
            rate_limited: rate_limited.load(Ordering::Relaxed),
            updated: updated?,
            ..PineconeReport::default()
        })
    }

    /// The updates, `update_concurrency` at a time, each paced by the bucket; the number made.
    async fn update_all(
        &self,
        writes: Vec<(&str, &Metadata)>,
        rate_limited: &AtomicU64,
        outcome: &'static str,
    ) -> Result<u64, PineconeError> {
        // The futures are built up front (not by a closure inside the stream) so the compiler
        // can prove the whole future Send (rust-lang/rust#102211).
        let updates: Vec<_> = writes
            .into_iter()
            .map(|(id, set_metadata)| async move {
                self.update_counting(id, set_metadata, rate_limited).await?;
                count_outcome(outcome, 1);
                Ok::<_, PineconeError>(())
            })
            .collect();
        futures::stream::iter(updates)
            .buffer_unordered(self.update_concurrency)
            .try_fold(0u64, |n, ()| async move { Ok(n + 1) })
            .await
    }

    async fn fetch_counting(
        &self,
        ids: &[String],
        rate_limited: &AtomicU64,
    ) -> Result<HashMap<String, Metadata>, PineconeError> {
        let mut unique: Vec<&str> = ids.iter().map(String::as_str).collect();
        unique.sort_unstable();
        unique.dedup();
        let chunks = chunk_ids(&unique, self.fetch_max_ids, self.fetch_max_query_bytes);
        let fetches: Vec<_> = chunks
            .into_iter()
            .map(|chunk| self.fetch_chunk(chunk, rate_limited))
            .collect();
        futures::stream::iter(fetches)
            .buffer_unordered(self.fetch_concurrency)
            .try_fold(HashMap::new(), |mut all, part| async move {
                all.extend(part);
                Ok(all)
            })
            .await
    }

    async fn fetch_chunk(
        &self,
        ids: &[&str],
        rate_limited: &AtomicU64,
    ) -> Result<HashMap<String, Metadata>, PineconeError> {
        let mut query: Vec<(&str, &str)> = ids.iter().map(|id| ("ids", *id)).collect();
        query.push(("namespace", self.namespace.as_str()));
        let cap = ids
            .len()
            .saturating_add(1)
            .saturating_mul(FETCH_BODY_CAP_PER_ID);
        let response: FetchResponse = self
            .paced_call(Op::Fetch, &self.fetch_bucket, cap, rate_limited, || {
                self.http.client().get(self.fetch_url.clone()).query(&query)
            })
            .await?;
        Ok(response
            .vectors
            .into_iter()
            .map(|(id, v)| (id, v.metadata.unwrap_or_default()))
            .collect())
    }

    async fn update_counting(
        &self,
        id: &str,
        set_metadata: &Metadata,
        rate_limited: &AtomicU64,
    ) -> Result<(), PineconeError> {
        let body = json!({
            "id": id,
            "setMetadata": set_metadata,
            "namespace": self.namespace,
        });
        let _: Value = self
            .paced_call(
                Op::Update,
                &self.bucket,
                JSON_BODY_CAP,
                rate_limited,
                || self.http.client().post(self.update_url.clone()).json(&body),
            )
            .await?;
        Ok(())
    }

    /// One call whose every try (retries included) takes a token of `bucket` first, and whose
    /// 429 answers are counted.
    async fn paced_call<T: DeserializeOwned>(
        &self,
        op: Op,
        bucket: &TokenBucket,
        cap: usize,
        rate_limited: &AtomicU64,
        request: impl Fn() -> RequestBuilder,
    ) -> Result<T, PineconeError> {
        self.http
            .call(op, |_| {
                let request = request().timeout(self.request_timeout);
                async move {
                    bucket.acquire().await;
                    let out: Result<T, PineconeError> =
                        self.http.send_json_as(op, request, cap).await;
                    match &out {
                        Ok(_) => bucket.on_success(),
                        Err(e) if e.status() == Some(429) => {
                            bucket.on_throttled(e.retry_after());
                            rate_limited.fetch_add(1, Ordering::Relaxed);
                            metrics::counter!("fleet_pinecone_rate_limited_total").increment(1);
                        }
                        Err(_) => {}
                    }
                    metrics::gauge!(PACED_RATE, "op" => crate::http::CallName::as_str(op))
                        .set(bucket.rate());
                    out
                }
            })
            .await
    }
}

/// Splits ids into fetch calls of at most `max_ids` ids and about `max_query_bytes` of
/// encoded query string each (an id longer than the budget still gets a call of its own).
pub fn chunk_ids<'a>(
    ids: &'a [&'a str],
    max_ids: usize,
    max_query_bytes: usize,
) -> Vec<&'a [&'a str]> {
    let max_ids = max_ids.clamp(1, MAX_FETCH_IDS);
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, id) in ids.iter().enumerate() {
        // `ids=` + the encoded id + `&`.
        let cost = 5 + encoded_len(id);
        let count = i - start;
        if count > 0 && (count >= max_ids || bytes + cost > max_query_bytes) {
            chunks.push(&ids[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += cost;
    }
    if start < ids.len() {
        chunks.push(&ids[start..]);
    }
    chunks
}

/// Length of `s` once `application/x-www-form-urlencoded` (what reqwest's `.query` produces).
fn encoded_len(s: &str) -> usize {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'*' | b'-' | b'.' | b'_' | b' ') {
                1
            } else {
                3
            }
        })
        .sum()
}

fn count_outcome(outcome: &'static str, n: u64) {
    if n > 0 {
        metrics::counter!("fleet_pinecone_updates_total", "outcome" => outcome).increment(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "pcsk_SECRET_0123456789abcdef";

    fn word_id(n: usize) -> String {
        format!("IMAGE#3f52804b-2fad-4e00-92c8-b593da3a8ed3#RECEIPT#00001#LINE#{n:05}#WORD#00001")
    }

    #[test]
    fn chunks_respect_count_and_query_budget() {
        let owned: Vec<String> = (0..250).map(word_id).collect();
        let ids: Vec<&str> = owned.iter().map(String::as_str).collect();
        // A word id: 78 characters with 7 `#`, each encoded as `%23`: 92 bytes, 97 with
        // `ids=` and `&`.
        assert_eq!(owned[0].len(), 78);
        assert_eq!(encoded_len(&owned[0]), 92);
        let chunks = chunk_ids(&ids, 100, 6_000);
        let sizes: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![61, 61, 61, 61, 6]);
        assert!(sizes.iter().all(|n| n * 97 <= 6_000));

        let chunks = chunk_ids(&ids, 100, usize::MAX);
        let sizes: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![100, 100, 50]);
        // Pinecone's cap holds whatever is configured.
        let many: Vec<&str> = vec!["a"; 2500];
        assert!(
            chunk_ids(&many, 5000, usize::MAX)
                .iter()
                .all(|c| c.len() <= MAX_FETCH_IDS)
        );
        // An id over budget still goes, alone.
        let chunks = chunk_ids(&ids[..3], 100, 10);
        assert_eq!(chunks.len(), 3);
        assert!(chunk_ids(&[], 100, 6_000).is_empty());
    }

    #[test]
    fn urls_headers_and_debug() {
        let config = PineconeConfig::new("my-index-abc.svc.pinecone.io", SecretString::from(KEY));
        assert!(!format!("{config:?}").contains("SECRET"));
        let client = PineconeClient::new(config).expect("valid");
        assert_eq!(
            client.fetch_url.as_str(),
            "https://my-index-abc.svc.pinecone.io/vectors/fetch"
        );
        assert_eq!(
            client.update_url.as_str(),
            "https://my-index-abc.svc.pinecone.io/vectors/update"
        );
        assert_eq!(client.namespace(), "words");
        let text = format!("{client:?} {client:#?}");
        assert!(!text.contains("SECRET"), "{text}");

        let client = PineconeClient::new(PineconeConfig::new(
            "http://127.0.0.1:5080/",
            SecretString::from(KEY),
        ))
        .expect("valid");
        assert_eq!(
            client.update_url.as_str(),
            "http://127.0.0.1:5080/vectors/update"
        );

        let mut bad = PineconeConfig::new("http://h", SecretString::from("SECRET\nkey-012345"));
        let err = PineconeClient::new(bad.clone()).expect_err("newline in key");
        assert!(!format!("{err} {err:?}").contains("SECRET"));
        bad.api_key = SecretString::from(KEY);
        bad.namespace = String::new();
        assert!(PineconeClient::new(bad).is_err());
    }

    #[tokio::test]
    async fn nothing_to_merge_makes_no_request() {
        // Nothing listens on port 9 here; a request would fail.
        let mut config = PineconeConfig::new("http://127.0.0.1:9", SecretString::from(KEY));
        config.retry = RetryPolicy::none();
        let client = PineconeClient::new(config).expect("valid");
        let report = client.apply_merges(Vec::new()).await.expect("no calls");
        assert_eq!(report, PineconeReport::default());
        assert!(
            client
                .fetch_metadata(&[])
                .await
                .expect("no calls")
                .is_empty()
        );
    }
}
