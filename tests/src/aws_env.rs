//! Local AWS for tests and the demo: finds (or starts) moto_server, and creates a receipts
//! table and a work queue with its dead-letter queue, uniquely named so tests never share them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;
use fleet_shared::aws::AwsClients;

pub const REGION: &str = "us-east-1";

/// The workspace root (this crate lives in `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The emulator endpoint: `FLEET_TEST_AWS_ENDPOINT` or `AWS_ENDPOINT_URL` when set, else the
/// moto_server that `scripts/moto.sh start` runs (started here if it is not running).
pub fn local_endpoint() -> anyhow::Result<String> {
    for var in ["FLEET_TEST_AWS_ENDPOINT", "AWS_ENDPOINT_URL"] {
        if let Ok(url) = std::env::var(var)
            && !url.is_empty()
        {
            return Ok(url);
        }
    }
    let script = workspace_root().join("scripts/moto.sh");
    let status = Command::new("bash")
        .arg(&script)
        .arg("start")
        .status()
        .with_context(|| format!("running {}", script.display()))?;
    if !status.success() {
        bail!("{} start failed", script.display());
    }
    let out = Command::new("bash").arg(&script).arg("url").output()?;
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

pub fn local_clients() -> anyhow::Result<(String, AwsClients)> {
    let endpoint = local_endpoint()?;
    let clients = AwsClients::for_endpoint(&endpoint, REGION);
    Ok((endpoint, clients))
}

/// A short unique suffix for resource names.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &id[..12])
}

fn key(name: &str, kind: KeyType) -> KeySchemaElement {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .expect("key schema")
}

fn string_attr(name: &str) -> AttributeDefinition {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(ScalarAttributeType::S)
        .build()
        .expect("attribute definition")
}

fn gsi(name: &str, hash: &str, range: Option<&str>) -> GlobalSecondaryIndex {
    let mut b = GlobalSecondaryIndex::builder()
        .index_name(name)
        .key_schema(key(hash, KeyType::Hash))
        .projection(
            Projection::builder()
                .projection_type(ProjectionType::All)
                .build(),
        );
    if let Some(range) = range {
        b = b.key_schema(key(range, KeyType::Range));
    }
    b.build().expect("gsi")
}

/// Creates the receipts table of docs/spec/data-model.md: PK/SK, GSI1–GSI4, GSITYPE, on demand, TTL.
pub async fn create_receipts_table(
    client: &aws_sdk_dynamodb::Client,
    name: &str,
) -> anyhow::Result<()> {
    let mut req = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(key("PK", KeyType::Hash))
        .key_schema(key("SK", KeyType::Range))
        .attribute_definitions(string_attr("PK"))
        .attribute_definitions(string_attr("SK"))
        .attribute_definitions(string_attr("TYPE"))
        .global_secondary_indexes(gsi("GSITYPE", "TYPE", None));
    for i in 1..=4 {
        let (pk, sk) = (format!("GSI{i}PK"), format!("GSI{i}SK"));
        req = req
            .attribute_definitions(string_attr(&pk))
            .attribute_definitions(string_attr(&sk))
            .global_secondary_indexes(gsi(&format!("GSI{i}"), &pk, Some(&sk)));
    }
    req.send()
        .await
        .with_context(|| format!("creating table {name}"))?;
    client
        .update_time_to_live()
        .table_name(name)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .attribute_name("time_to_live")
                .enabled(true)
                .build()
                .expect("ttl spec"),
        )
        .send()
        .await
        .with_context(|| format!("enabling TTL on {name}"))?;
    Ok(())
}

/// The work queue and its dead-letter queue (redrive after `max_receive_count`).
#[derive(Debug, Clone)]
pub struct Queues {
    pub work_url: String,
    pub dead_letter_url: String,
}

pub async fn create_queues(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    max_receive_count: u32,
    visibility_timeout_seconds: u32,
) -> anyhow::Result<Queues> {
    let dlq = sqs
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .attributes(QueueAttributeName::MessageRetentionPeriod, "1209600")
        .send()
        .await
        .context("creating the dead-letter queue")?;
    let dead_letter_url = dlq.queue_url.context("no dead-letter queue url")?;
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&dead_letter_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await?
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .context("no dead-letter queue ARN")?;
    let redrive = serde_json::json!({
        "deadLetterTargetArn": arn,
        "maxReceiveCount": max_receive_count.to_string(),
    });
    let work = sqs
        .create_queue()
        .queue_name(name)
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility_timeout_seconds.to_string(),
        )
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .send()
        .await
        .context("creating the work queue")?;
    Ok(Queues {
        work_url: work.queue_url.context("no work queue url")?,
        dead_letter_url,
    })
}
