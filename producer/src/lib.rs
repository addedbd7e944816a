//! The producer: one scheduler tick enqueues pending completion batches; the same binary
//! receives OpenAI's batch-end webhooks (enqueueing a finished batch at once) and is the
//! operators' tool for the dead-letter queue and the fleet's status.
//!
//! The binary only parses and validates ([`cli`], [`settings`]) and calls [`run`]; every
//! command is a library function taking its settings, the [`Services`] and (where time
//! matters) the clock, so tests drive it directly against moto.
//!
//! # Layout
//!
//! - [`cli`]: the command line (flags named after their environment variables).
//! - [`settings`]: typed settings validated from flags and a `ConfigSource` (exit 64).
//! - [`enqueue`]: one scheduler tick (claim the schedule marker, then send).
//! - [`push`]: the tick's metrics, rendered and pushed to a Prometheus Pushgateway.
//! - [`replay`]: `replay-dlq` (send, then delete) and `--bulk` (StartMessageMoveTask).
//! - [`status`]: batches by status, queue depths, oldest pending batch.
//! - [`webhook`]: `webhook-server`, the receiver of OpenAI's signed batch-end webhooks.

pub mod cli;
pub mod enqueue;
pub mod push;
pub mod replay;
pub mod settings;
pub mod status;
pub mod webhook;

use std::io::Write;

use aws_config::{BehaviorVersion, Region};
use chrono::Utc;
use fleet_shared::aws::AwsClients;
use fleet_shared::store::Store;
use serde::Serialize;

pub use enqueue::{EnqueueReport, enqueue};
pub use replay::{BulkError, BulkReport, ReplayReport, replay, replay_bulk};
pub use settings::{
    AwsSettings, BulkSettings, CommandSettings, EnqueueSettings, ReplayFilter, ReplaySettings,
    Settings, StatusSettings, WebhookSettings,
};
pub use status::{StatusReport, status};

/// What the commands talk to. Tests build it from moto clients (and a Store with a small page
/// size, to exercise pagination).
#[derive(Debug, Clone)]
pub struct Services {
    pub store: Store,
    pub sqs: aws_sdk_sqs::Client,
}

impl Services {
    pub fn new(clients: &AwsClients, table: &str) -> Self {
        Services {
            store: Store::new(clients.dynamodb.clone(), table),
            sqs: clients.sqs.clone(),
        }
    }

    /// Clients from the standard AWS chain, with the region and endpoint of the settings
    /// (which already include `AWS_REGION` and `AWS_ENDPOINT_URL`) taking precedence.
    pub async fn connect(aws: &AwsSettings, table: &str) -> Result<Self, MissingRegion> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(fleet_shared::aws::retry_config())
            .timeout_config(fleet_shared::aws::timeout_config());
        if let Some(region) = &aws.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &aws.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let config = loader.load().await;
        if config.region().is_none() {
            return Err(MissingRegion);
        }
        Ok(Self::new(&AwsClients::from_config(&config), table))
    }
}

/// No region anywhere in the chain: every AWS call would fail, so it is a configuration error.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid configuration:\n  - AWS_REGION is not set (nor --aws-region, nor a region in the AWS profile)"
)]
pub struct MissingRegion;

/// Exit code of any failure that is not bad configuration or usage.
pub const EXIT_FAILURE: i32 = 1;

fn print_json<T: Serialize>(out: &mut dyn Write, value: &T) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)
}

/// Runs the command of `settings` with `services`, printing to `out`; returns the exit code.
/// `webhook-server` runs until SIGTERM or SIGINT.
pub async fn run_command(
    command: &CommandSettings,
    services: &Services,
    out: &mut dyn Write,
) -> anyhow::Result<i32> {
    match command {
        CommandSettings::Enqueue { settings, json } => {
            let report = enqueue(settings, services, Utc::now()).await?;
            if *json {
                print_json(out, &report)?;
            } else {
                out.write_all(
                    enqueue::render_text(&report, settings.dead_letter_queue_url.is_some())
                        .as_bytes(),
                )?;
            }
            out.flush()?;
            if let Some(url) = &settings.pushgateway_url {
                push::push_enqueue_metrics(url, &report).await;
            }
            Ok(report.exit_code())
        }
        CommandSettings::ReplayDlq { settings, json } => {
            let report = replay(settings, services).await?;
            if *json {
                print_json(out, &report)?;
            } else {
                out.write_all(replay::render_text(&report).as_bytes())?;
            }
            Ok(report.exit_code())
        }
        CommandSettings::ReplayBulk { settings, json } => {
            match replay_bulk(settings, services).await {
                Ok(report) => {
                    if *json {
                        print_json(out, &report)?;
                    } else {
                        out.write_all(replay::render_bulk_text(&report).as_bytes())?;
                    }
                    Ok(0)
                }
                Err(e) => {
                    tracing::error!(event = "move_task_failed", error = %e, "bulk replay failed");
                    eprintln!("producer: {e}");
                    Ok(EXIT_FAILURE)
                }
            }
        }
        CommandSettings::Status { settings, json } => {
            let report = status(settings, services, Utc::now()).await?;
            if *json {
                print_json(out, &report)?;
            } else {
                out.write_all(status::render_text(&report).as_bytes())?;
            }
            Ok(0)
        }
        CommandSettings::WebhookServer { settings } => Ok(webhook::run(settings, services).await),
    }
}

/// The binary after validation: connect, run, and turn any error into exit 1 with a message.
pub async fn run(settings: Settings, out: &mut dyn Write) -> i32 {
    let services = match Services::connect(&settings.aws, &settings.table_name).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("producer: {e}");
            return fleet_shared::config::EXIT_USAGE;
        }
    };
    match run_command(&settings.command, &services, out).await {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "command failed");
            eprintln!("producer: {e:#}");
            EXIT_FAILURE
        }
    }
}
