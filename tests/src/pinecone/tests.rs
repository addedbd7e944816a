//! In-process tests of the Pinecone emulator, through a real HTTP client.

use std::time::Duration;

use reqwest::StatusCode as Rs;
use serde_json::{Map, Value, json};

use super::*;

const NS: &str = "words";
const W1: &str = "IMAGE#3f52804b-2fad-4e00-92c8-b593da3a8ed3#RECEIPT#00001#LINE#00003#WORD#00001";
const W2: &str = "IMAGE#3f52804b-2fad-4e00-92c8-b593da3a8ed3#RECEIPT#00001#LINE#00010#WORD#00002";

struct Ctx {
    emu: PineconeEmulator,
    http: reqwest::Client,
}

fn meta(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("not an object"),
    }
}

impl Ctx {
    async fn new() -> Self {
        let emu = PineconeEmulator::start().await.expect("start");
        emu.upsert(
            NS,
            W1,
            vec![0.5, -1.0],
            meta(json!({"valid_labels": ["MERCHANT_NAME"], "text": "ACME"})),
        );
        emu.upsert(NS, W2, vec![0.25], Map::new());
        Self {
            emu,
            http: reqwest::Client::new(),
        }
    }

    async fn fetch(&self, ids: &[&str], namespace: &str) -> reqwest::Response {
        let mut query: Vec<(&str, &str)> = ids.iter().map(|id| ("ids", *id)).collect();
        query.push(("namespace", namespace));
        self.http
            .get(format!("{}/vectors/fetch", self.emu.base_url()))
            .query(&query)
            .header("Api-Key", "pc-key")
            .header("X-Pinecone-Api-Version", "2025-10")
            .send()
            .await
            .expect("send")
    }

    async fn update(&self, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}/vectors/update", self.emu.base_url()))
            .header("Api-Key", "pc-key")
            .header("X-Pinecone-Api-Version", "2025-10")
            .json(&body)
            .send()
            .await
            .expect("send")
    }

    async fn admin_post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.emu.base_url()))
            .body(body.to_string())
            .send()
            .await
            .expect("send")
    }
}

async fn error_of(resp: reqwest::Response) -> Value {
    let v: Value = resp.json().await.expect("error json");
    assert!(v["code"].is_u64(), "{v}");
    assert!(v["message"].is_string(), "{v}");
    v
}

#[tokio::test]
async fn auth_and_api_version_logging() {
    let ctx = Ctx::new().await;
    let url = format!("{}/vectors/fetch?ids=a&namespace=words", ctx.emu.base_url());
    let resp = ctx.http.get(&url).send().await.expect("send");
    assert_eq!(resp.status(), Rs::UNAUTHORIZED);
    assert_eq!(error_of(resp).await["code"], json!(16));

    ctx.emu.set_api_key(Some("right".into()));
    let resp = ctx
        .http
        .get(&url)
        .header("Api-Key", "wrong")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), Rs::UNAUTHORIZED);
    let resp = ctx
        .http
        .get(&url)
        .header("api-key", "right")
        .header("X-Pinecone-Api-Version", "2025-10")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), Rs::OK);

    let log = ctx.emu.requests();
    assert_eq!(
        log.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![401, 401, 200]
    );
    assert_eq!(log[0].api_version, None);
    assert_eq!(log[2].api_version.as_deref(), Some("2025-10"));
    assert_eq!(log[2].path, "/vectors/fetch");
    assert_eq!(log[2].query.as_deref(), Some("ids=a&namespace=words"));
}

#[tokio::test]
async fn fetch_decodes_ids_and_omits_absent_ones() {
    let ctx = Ctx::new().await;
    let resp = ctx.fetch(&[W1, W2, "IMAGE#missing"], NS).await;
    assert_eq!(resp.status(), Rs::OK);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["namespace"], json!(NS));
    assert_eq!(v["usage"], json!({"readUnits": 1}));
    let vectors = v["vectors"].as_object().expect("map");
    assert_eq!(vectors.len(), 2);
    assert_eq!(
        vectors[W1],
        json!({"id": W1, "values": [0.5, -1.0],
               "metadata": {"valid_labels": ["MERCHANT_NAME"], "text": "ACME"}})
    );
    assert_eq!(vectors[W2], json!({"id": W2, "values": [0.25]}));
    ctx.emu.upsert(NS, "tenth", vec![0.1], Map::new());
    let text = ctx.fetch(&["tenth"], NS).await.text().await.expect("text");
    assert!(text.contains("\"values\":[0.1]"), "{text}");

    // Hand-encoded query, as a client building the URL itself would send it.
    let raw = format!(
        "{}/vectors/fetch?namespace=words&ids={}",
        ctx.emu.base_url(),
        W1.replace('#', "%23")
    );
    let v: Value = ctx
        .http
        .get(raw)
        .header("Api-Key", "k")
        .header("X-Pinecone-Api-Version", "2025-10")
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert!(v["vectors"].get(W1).is_some());

    // Other namespace: nothing; default namespace is "".
    let v: Value = ctx.fetch(&[W1], "other").await.json().await.expect("json");
    assert_eq!(v["vectors"], json!({}));
    ctx.emu.upsert("", "d", vec![], Map::new());
    let url = format!("{}/vectors/fetch?ids=d", ctx.emu.base_url());
    let v: Value = ctx
        .http
        .get(url)
        .header("Api-Key", "k")
        .header("X-Pinecone-Api-Version", "2025-10")
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(v["namespace"], json!(""));
    assert!(v["vectors"].get("d").is_some());
}

#[tokio::test]
async fn fetch_limits() {
    let ctx = Ctx::new().await;
    // The id count limit, apart from the URL length limit.
    ctx.emu.set_max_url_bytes(None);
    let ids: Vec<String> = (0..1001).map(|i| format!("id{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let resp = ctx.fetch(&refs, NS).await;
    assert_eq!(resp.status(), Rs::BAD_REQUEST);
    assert_eq!(error_of(resp).await["code"], json!(3));
    assert_eq!(ctx.fetch(&refs[..1000], NS).await.status(), Rs::OK);
    assert_eq!(ctx.fetch(&[], NS).await.status(), Rs::BAD_REQUEST);
    let bad = format!("{}/vectors/fetch?ids=%zz", ctx.emu.base_url());
    let resp = ctx
        .http
        .get(bad)
        .header("Api-Key", "k")
        .header("X-Pinecone-Api-Version", "2025-10")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), Rs::BAD_REQUEST);
}

#[tokio::test]
async fn update_merges_named_keys_only() {
    let ctx = Ctx::new().await;
    let resp = ctx
        .update(json!({"id": W1, "namespace": NS,
                       "setMetadata": {"invalid_labels": ["TOTAL"], "proposed_label": "UNIT_PRICE"}}))
        .await;
    assert_eq!(resp.status(), Rs::OK);
    assert_eq!(resp.json::<Value>().await.expect("json"), json!({}));
    assert_eq!(
        ctx.emu.metadata(NS, W1).expect("stored"),
        meta(json!({"valid_labels": ["MERCHANT_NAME"], "text": "ACME",
                    "invalid_labels": ["TOTAL"], "proposed_label": "UNIT_PRICE"}))
    );
    // Overwrite one key.
    ctx.update(json!({"id": W1, "namespace": NS, "setMetadata": {"valid_labels": ["A", "B"]}}))
        .await;
    let m = ctx.emu.metadata(NS, W1).expect("stored");
    assert_eq!(m["valid_labels"], json!(["A", "B"]));
    assert_eq!(m["text"], json!("ACME"));
    assert_eq!(ctx.emu.vector(NS, W1).expect("v").values, vec![0.5, -1.0]);

    // Absent id: 200 {} and nothing stored.
    let before = ctx.emu.all(NS);
    let resp = ctx
        .update(json!({"id": "IMAGE#nope", "namespace": NS, "setMetadata": {"a": "b"}}))
        .await;
    assert_eq!(resp.status(), Rs::OK);
    assert_eq!(resp.json::<Value>().await.expect("json"), json!({}));
    assert_eq!(ctx.emu.all(NS), before);
    assert!(ctx.emu.metadata(NS, "IMAGE#nope").is_none());

    // Same values again: accepted, counted, not a change.
    ctx.update(json!({"id": W1, "namespace": NS, "setMetadata": {"valid_labels": ["A", "B"]}}))
        .await;

    assert_eq!(ctx.emu.update_count(), 4);
    let updates = ctx.emu.updates();
    assert_eq!(
        updates
            .iter()
            .map(|u| (u.existed, u.changed))
            .collect::<Vec<_>>(),
        vec![(true, true), (true, true), (false, false), (true, false)]
    );
    assert_eq!(updates[2].id, "IMAGE#nope");
    assert_eq!(ctx.emu.count("POST", "/vectors/update"), 4);

    // all() gives the whole namespace.
    let all = ctx.emu.all(NS);
    assert_eq!(all.keys().collect::<Vec<_>>(), vec![W1, W2]);
    assert_eq!(all[W2], Map::new());
}

#[tokio::test]
async fn update_rejects_bad_metadata() {
    let ctx = Ctx::new().await;
    let before = ctx.emu.all(NS);
    for body in [
        json!({"id": W1, "namespace": NS, "setMetadata": {"proposed_label": null}}),
        json!({"id": W1, "namespace": NS, "setMetadata": {"nested": {"a": 1}}}),
        json!({"id": W1, "namespace": NS, "setMetadata": {"list": [1, 2]}}),
        json!({"id": W1, "namespace": NS, "setMetadata": "x"}),
        json!({"namespace": NS, "setMetadata": {"a": "b"}}),
        json!({"id": "", "namespace": NS}),
        json!([1, 2]),
    ] {
        let resp = ctx.update(body.clone()).await;
        assert_eq!(resp.status(), Rs::BAD_REQUEST, "{body}");
        assert_eq!(error_of(resp).await["code"], json!(3));
    }
    // Too large on its own.
    let big = "x".repeat(MAX_METADATA_BYTES);
    let resp = ctx
        .update(json!({"id": W1, "namespace": NS, "setMetadata": {"big": big}}))
        .await;
    assert_eq!(resp.status(), Rs::BAD_REQUEST);
    // Too large only once merged with what is stored.
    let half = "y".repeat(MAX_METADATA_BYTES / 2);
    ctx.emu
        .upsert(NS, "w3", vec![], meta(json!({"a": half.clone()})));
    let resp = ctx
        .update(json!({"id": "w3", "namespace": NS, "setMetadata": {"b": half.clone()}}))
        .await;
    assert_eq!(resp.status(), Rs::BAD_REQUEST);
    assert_eq!(ctx.emu.metadata(NS, "w3").expect("w3").len(), 1);
    ctx.emu.delete(NS, "w3");
    assert_eq!(ctx.emu.all(NS), before);
    assert_eq!(ctx.emu.update_count(), 0);
}

#[tokio::test]
async fn rate_limit_per_namespace() {
    let ctx = Ctx::new().await;
    ctx.emu.set_rate_limit(Some(2));
    let started = std::time::Instant::now();
    let mut ok = 0;
    let mut limited = 0;
    for _ in 0..10 {
        let resp = ctx
            .update(json!({"id": W1, "namespace": NS, "setMetadata": {"k": "v"}}))
            .await;
        match resp.status() {
            Rs::OK => ok += 1,
            Rs::TOO_MANY_REQUESTS => {
                limited += 1;
                let v = error_of(resp).await;
                assert_eq!(v["code"], json!(8));
                assert!(
                    v["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("TOO_MANY_REQUESTS"))
                );
            }
            s => panic!("unexpected {s}"),
        }
    }
    // Burst of 2, then 2 per second (bounded by how long the loop took, for slow machines).
    // Seconds of a short test times two: small and non-negative.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let refilled = (started.elapsed().as_secs_f64() * 2.0).floor() as usize;
    assert!(ok >= 2 && ok <= 2 + refilled, "ok = {ok}");
    assert!(limited >= 1);
    assert_eq!(ok + limited, 10);
    assert_eq!(ctx.emu.update_count(), ok);
    // Another namespace has its own bucket; fetches are not limited.
    let resp = ctx
        .update(json!({"id": W1, "namespace": "other", "setMetadata": {"k": "v"}}))
        .await;
    assert_eq!(resp.status(), Rs::OK);
    assert_eq!(ctx.fetch(&[W1], NS).await.status(), Rs::OK);
    // Tokens come back.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let resp = ctx
        .update(json!({"id": W1, "namespace": NS, "setMetadata": {"k": "v"}}))
        .await;
    assert_eq!(resp.status(), Rs::OK);
    ctx.emu.set_rate_limit(None);
    for _ in 0..20 {
        let resp = ctx
            .update(json!({"id": W1, "namespace": NS, "setMetadata": {"k": "v"}}))
            .await;
        assert_eq!(resp.status(), Rs::OK);
    }
}

/// What a long simulation relies on: a burst smaller than a second's worth (the limit of a
/// time-compressed run), 429s counted without the request log, updates counted without being
/// recorded, and a namespace dropped whole.
#[tokio::test]
async fn burst_429_count_unrecorded_updates_and_dropped_namespaces() {
    let ctx = Ctx::new().await;
    // 50 per second but a burst of 3 (not 50): of 20 updates at once, about 3 pass.
    ctx.emu.set_rate_limit_with_burst(50, 3);
    ctx.emu.set_record_updates(false);
    let body = json!({"id": W1, "namespace": NS, "setMetadata": {"k": "v"}});
    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(ctx.update(body.clone()).await.status());
    }
    // Seconds of a short test times 50: small and non-negative.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let refilled = (started.elapsed().as_secs_f64() * 50.0).floor() as usize;
    let ok = statuses.iter().filter(|s| **s == Rs::OK).count();
    let limited = statuses.len() - ok;
    assert!(
        statuses[..3].iter().all(|s| *s == Rs::OK),
        "the burst is free: {statuses:?}"
    );
    assert!(ok <= 3 + refilled, "a burst of 3: {statuses:?}");
    assert_eq!(ctx.emu.update_count(), ok, "counted");
    assert!(ctx.emu.updates().is_empty(), "not recorded");
    // The count of 429s survives the request log; an injected 429 counts too.
    ctx.emu.clear_requests();
    assert_eq!(ctx.emu.answered_429(), limited as u64);
    ctx.emu.set_rate_limit(None);
    ctx.emu
        .fail_next(FaultSpec::rate_limited(None).on_path("/vectors/update"));
    assert_eq!(
        ctx.update(body.clone()).await.status(),
        Rs::TOO_MANY_REQUESTS
    );
    assert_eq!(ctx.emu.answered_429(), limited as u64 + 1);
    // Recording back on; clearing sets the count back to 0.
    ctx.emu.set_record_updates(true);
    assert_eq!(ctx.update(body).await.status(), Rs::OK);
    assert_eq!(ctx.emu.updates().len(), 1);
    assert_eq!(ctx.emu.update_count(), ok + 1);
    ctx.emu.clear_updates();
    assert_eq!(ctx.emu.update_count(), 0);
    // A dropped namespace is gone whole; others stay.
    ctx.emu.upsert("other", W1, vec![0.0], Map::new());
    assert_eq!(ctx.emu.vector_count(NS), 2);
    assert!(ctx.emu.drop_namespace(NS));
    assert!(!ctx.emu.drop_namespace(NS));
    assert_eq!(ctx.emu.vector_count(NS), 0);
    assert!(ctx.emu.all(NS).is_empty());
    assert_eq!(ctx.emu.vector_count("other"), 1);
}

#[tokio::test]
async fn faults_and_outage() {
    let ctx = Ctx::new().await;
    ctx.emu
        .fail_next(FaultSpec::status(429).on_path("/vectors/update").times(2));
    ctx.emu
        .fail_next(FaultSpec::status(500).on_path("/vectors/fetch"));
    for _ in 0..2 {
        let resp = ctx
            .update(json!({"id": W1, "namespace": NS, "setMetadata": {"k": "v"}}))
            .await;
        assert_eq!(resp.status(), Rs::TOO_MANY_REQUESTS);
        let v = error_of(resp).await;
        assert_eq!(v["code"], json!(8));
    }
    assert!(ctx.emu.metadata(NS, W1).expect("w1").get("k").is_none());
    let resp = ctx.fetch(&[W1], NS).await;
    assert_eq!(resp.status(), Rs::INTERNAL_SERVER_ERROR);
    assert_eq!(error_of(resp).await["code"], json!(13));
    assert_eq!(ctx.fetch(&[W1], NS).await.status(), Rs::OK);
    let resp = ctx
        .update(json!({"id": W1, "namespace": NS, "setMetadata": {"k": "v"}}))
        .await;
    assert_eq!(resp.status(), Rs::OK);
    assert_eq!(ctx.emu.update_count(), 1);

    ctx.emu.set_outage(true);
    assert_eq!(
        ctx.fetch(&[W1], NS).await.status(),
        Rs::INTERNAL_SERVER_ERROR
    );
    ctx.emu.set_outage(false);
    assert_eq!(ctx.fetch(&[W1], NS).await.status(), Rs::OK);
    assert_eq!(
        ctx.emu
            .requests()
            .iter()
            .filter(|r| r.fault.is_some())
            .count(),
        4
    );
}

#[tokio::test]
async fn admin_api_drives_the_emulator() {
    let ctx = Ctx::new().await;
    let resp = ctx
        .admin_post(
            "/_admin/upsert",
            json!({"namespace": NS, "id": "w9", "values": [1.0], "metadata": {"proposed_label": "TOTAL"}}),
        )
        .await;
    assert_eq!(resp.status(), Rs::CREATED);
    let resp = ctx
        .admin_post(
            "/_admin/upsert",
            json!([{"namespace": NS, "id": "w10"}, {"namespace": NS, "id": "w11", "metadata": {"a": "b"}}]),
        )
        .await;
    assert_eq!(resp.status(), Rs::CREATED);
    assert_eq!(
        ctx.admin_post("/_admin/upsert", json!({"nope": 1}))
            .await
            .status(),
        Rs::BAD_REQUEST
    );
    assert_eq!(
        ctx.emu.metadata(NS, "w9").expect("w9")["proposed_label"],
        json!("TOTAL")
    );

    let v: Value = ctx
        .http
        .get(format!(
            "{}/_admin/vectors?namespace=words",
            ctx.emu.base_url()
        ))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(v["namespace"], json!(NS));
    assert_eq!(v["vectors"].as_object().expect("map").len(), 5);
    assert_eq!(v["vectors"]["w10"]["metadata"], json!({}));

    let resp = ctx
        .admin_post("/_admin/rate_limit", json!({"per_second": 1}))
        .await;
    assert_eq!(resp.status(), Rs::NO_CONTENT);
    assert_eq!(
        ctx.update(json!({"id": "w9", "namespace": NS, "setMetadata": {"a": "b"}}))
            .await
            .status(),
        Rs::OK
    );
    assert_eq!(
        ctx.update(json!({"id": "w9", "namespace": NS, "setMetadata": {"a": "b"}}))
            .await
            .status(),
        Rs::TOO_MANY_REQUESTS
    );
    ctx.admin_post("/_admin/rate_limit", json!({"per_second": null}))
        .await;

    let resp = ctx
        .admin_post(
            "/_admin/faults",
            json!({"type": "status", "status": 500, "path_prefix": "/vectors/fetch"}),
        )
        .await;
    assert_eq!(resp.status(), Rs::CREATED);
    assert_eq!(
        ctx.fetch(&["w9"], NS).await.status(),
        Rs::INTERNAL_SERVER_ERROR
    );

    let log: Vec<RequestRecord> = ctx
        .http
        .get(format!("{}/_admin/requests", ctx.emu.base_url()))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(
        log.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![200, 429, 500]
    );
    let updates: Vec<UpdateRecord> = ctx
        .http
        .get(format!("{}/_admin/updates", ctx.emu.base_url()))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].set_metadata, Some(meta(json!({"a": "b"}))));
}

#[tokio::test]
async fn delay_and_truncate_apply_to_pinecone_too() {
    let ctx = Ctx::new().await;
    ctx.emu.fail_next(FaultSpec::delay(200));
    let t = std::time::Instant::now();
    assert_eq!(ctx.fetch(&[W1], NS).await.status(), Rs::OK);
    assert!(t.elapsed() >= Duration::from_millis(200));
    ctx.emu.fail_next(FaultSpec::truncate(5));
    assert!(ctx.fetch(&[W1], NS).await.json::<Value>().await.is_err());
    let url = ctx.emu.base_url();
    ctx.emu.shutdown().await;
    assert!(ctx.http.get(url).send().await.is_err());
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[tokio::test]
async fn the_api_version_is_required_and_checked() {
    let ctx = Ctx::new().await;
    let url = format!("{}/vectors/fetch?ids=a&namespace=words", ctx.emu.base_url());
    let send = |version: Option<&'static str>| {
        let mut req = ctx.http.get(&url).header("Api-Key", "k");
        if let Some(v) = version {
            req = req.header("X-Pinecone-Api-Version", v);
        }
        req.send()
    };
    let resp = send(None).await.expect("send");
    assert_eq!(resp.status(), Rs::BAD_REQUEST);
    let v = error_of(resp).await;
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("X-Pinecone-Api-Version")),
        "{v}"
    );
    let resp = send(Some("2023-01")).await.expect("send");
    assert_eq!(resp.status(), Rs::BAD_REQUEST);
    assert!(
        error_of(resp).await["message"]
            .as_str()
            .is_some_and(|m| m.contains("2023-01"))
    );
    for version in API_VERSIONS {
        assert_eq!(send(Some(version)).await.expect("send").status(), Rs::OK);
    }
    let body = json!({"id": W1, "setMetadata": {"x": "y"}, "namespace": NS});
    let resp = ctx
        .http
        .post(format!("{}/vectors/update", ctx.emu.base_url()))
        .header("Api-Key", "k")
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), Rs::BAD_REQUEST);
    assert_eq!(ctx.emu.update_count(), 0);
}

#[tokio::test]
async fn urls_over_8_kb_answer_414() {
    let ctx = Ctx::new().await;
    // 90 word ids: 90 × 97 bytes of query, over 8 KB.
    let ids: Vec<String> = (0..90)
        .map(|i| format!("{}{i:03}", &W1[..W1.len() - 3]))
        .collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let resp = ctx.fetch(&refs, NS).await;
    assert_eq!(resp.status(), Rs::URI_TOO_LONG);
    assert!(resp.text().await.expect("text").contains("414"));
    assert_eq!(ctx.fetch(&refs[..80], NS).await.status(), Rs::OK);
    assert_eq!(
        ctx.emu
            .requests()
            .iter()
            .map(|r| r.status)
            .collect::<Vec<_>>(),
        vec![414, 200]
    );
    ctx.emu.set_max_url_bytes(Some(100));
    assert_eq!(ctx.fetch(&[W1, W2], NS).await.status(), Rs::URI_TOO_LONG);
}

#[tokio::test]
async fn fetches_are_rate_limited_per_index() {
    let ctx = Ctx::new().await;
    ctx.emu.set_fetch_rate_limit(Some(5));
    let mut statuses = Vec::new();
    for ns in [
        "words", "other", "words", "other", "words", "other", "words",
    ] {
        let resp = ctx.fetch(&[W1], ns).await;
        statuses.push(resp.status());
        if resp.status() == Rs::TOO_MANY_REQUESTS {
            assert_eq!(header(&resp, "retry-after").as_deref(), Some("1"));
            let v = error_of(resp).await;
            assert_eq!(v["code"], json!(8));
            assert!(
                v["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("TOO_MANY_REQUESTS"))
            );
        }
    }
    // One bucket for the whole index, whatever the namespace: a burst of 5, then 429.
    assert_eq!(
        statuses.iter().filter(|s| **s == Rs::OK).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(statuses[5], Rs::TOO_MANY_REQUESTS);
    // Updates are not fetches.
    let resp = ctx
        .update(json!({"id": W1, "setMetadata": {"a": "b"}, "namespace": NS}))
        .await;
    assert_eq!(resp.status(), Rs::OK);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(ctx.fetch(&[W1], NS).await.status(), Rs::OK, "refilled");
    ctx.emu.set_fetch_rate_limit(None);
    for _ in 0..20 {
        assert_eq!(ctx.fetch(&[W1], NS).await.status(), Rs::OK);
    }
    let resp = ctx
        .admin_post("/_admin/fetch_rate_limit", json!({"per_second": 1}))
        .await;
    assert_eq!(resp.status(), Rs::NO_CONTENT);
    assert_eq!(ctx.fetch(&[W1], NS).await.status(), Rs::OK);
    assert_eq!(ctx.fetch(&[W1], NS).await.status(), Rs::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn the_default_fetch_limit_is_about_100_per_second() {
    let ctx = Ctx::new().await;
    let mut ok = 0;
    for _ in 0..130 {
        if ctx.fetch(&[W1], NS).await.status() == Rs::OK {
            ok += 1;
        }
    }
    // A full bucket of 100, plus what refills while the 130 calls run.
    assert!((100..130).contains(&ok), "{ok}");
}

#[tokio::test]
async fn updates_become_visible_to_fetches_after_the_consistency_delay() {
    let ctx = Ctx::new().await;
    ctx.emu.set_consistency_delay(Duration::from_millis(400));
    let labels = |v: &Value| v["vectors"][W1]["metadata"]["valid_labels"].clone();
    let resp = ctx
        .update(json!({"id": W1, "setMetadata": {"valid_labels": ["A"]}, "namespace": NS}))
        .await;
    assert_eq!(resp.status(), Rs::OK);
    // The latest state has it; a fetch does not see it yet.
    assert_eq!(
        ctx.emu.metadata(NS, W1).expect("w1")["valid_labels"],
        json!(["A"])
    );
    let v: Value = ctx.fetch(&[W1], NS).await.json().await.expect("json");
    assert_eq!(labels(&v), json!(["MERCHANT_NAME"]), "stale read");
    assert_eq!(
        ctx.emu.visible_metadata(NS, W1).expect("w1")["valid_labels"],
        json!(["MERCHANT_NAME"])
    );
    // A second write 200 ms later applies to the latest state, and shows 400 ms after it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = ctx
        .update(json!({"id": W1, "setMetadata": {"text": "ACME CO"}, "namespace": NS}))
        .await;
    assert_eq!(resp.status(), Rs::OK);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let v: Value = ctx.fetch(&[W1], NS).await.json().await.expect("json");
    assert_eq!(labels(&v), json!(["A"]), "the first write is visible");
    assert_eq!(v["vectors"][W1]["metadata"]["text"], json!("ACME"));
    tokio::time::sleep(Duration::from_millis(250)).await;
    let v: Value = ctx.fetch(&[W1], NS).await.json().await.expect("json");
    assert_eq!(v["vectors"][W1]["metadata"]["text"], json!("ACME CO"));
    assert_eq!(labels(&v), json!(["A"]));

    // Off again over the admin API: every write is visible at once.
    let resp = ctx
        .admin_post("/_admin/consistency", json!({"delay_ms": 0}))
        .await;
    assert_eq!(resp.status(), Rs::NO_CONTENT);
    let resp = ctx
        .update(json!({"id": W2, "setMetadata": {"valid_labels": ["B"]}, "namespace": NS}))
        .await;
    assert_eq!(resp.status(), Rs::OK);
    let v: Value = ctx.fetch(&[W2], NS).await.json().await.expect("json");
    assert_eq!(v["vectors"][W2]["metadata"]["valid_labels"], json!(["B"]));
    assert_eq!(
        ctx.admin_post("/_admin/consistency", json!({"delay": 1}))
            .await
            .status(),
        Rs::BAD_REQUEST
    );
}

#[tokio::test]
async fn key_rejection_windows_and_request_ids() {
    let ctx = Ctx::new().await;
    let resp = ctx.fetch(&[W1], NS).await;
    let first = header(&resp, "x-request-id").expect("x-request-id");
    let resp = ctx.fetch(&[W1], NS).await;
    assert_ne!(header(&resp, "x-request-id"), Some(first));

    ctx.emu.reject_keys_for(Duration::from_millis(300));
    let resp = ctx.fetch(&[W1], NS).await;
    assert_eq!(resp.status(), Rs::UNAUTHORIZED);
    assert!(header(&resp, "x-request-id").is_some());
    assert_eq!(error_of(resp).await["code"], json!(16));
    let resp = ctx
        .update(json!({"id": W1, "setMetadata": {"a": "b"}, "namespace": NS}))
        .await;
    assert_eq!(resp.status(), Rs::UNAUTHORIZED);
    assert_eq!(ctx.emu.update_count(), 0);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(ctx.fetch(&[W1], NS).await.status(), Rs::OK);

    let resp = ctx
        .admin_post("/_admin/reject_keys", json!({"seconds": null}))
        .await;
    assert_eq!(resp.status(), Rs::NO_CONTENT);
    assert!(ctx.emu.keys_rejected());
    assert_eq!(ctx.fetch(&[W1], NS).await.status(), Rs::UNAUTHORIZED);
    ctx.emu.accept_keys();
    assert_eq!(ctx.fetch(&[W1], NS).await.status(), Rs::OK);
}
