//! The command line (clap derive). Every setting flag is named after its environment variable
//! (lower case, dashes: `QUEUE_URL` is `--queue-url`) so people and scripts can guess one from
//! the other, and is read as a plain string: [`crate::settings`] validates flags and
//! environment together, so one run names every problem and tests never touch the process
//! environment. Options that only make sense per run (`--max`, `--rate`, `--json`, …) have no
//! environment variable and are checked by clap.

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "producer",
    version,
    about = "Scheduler tick and operator tools of the batch fleet.",
    long_about = "Scheduler tick and operator tools of the batch fleet.\n\n\
        Every setting is also an environment variable (named in each flag's help); a flag wins \
        over its variable. Exit codes: 0 success, 64 bad configuration or usage (nothing was \
        done), 1 any other failure.",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Settings every command reads; accepted before or after the command name.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Settings of every command")]
pub struct GlobalArgs {
    /// The receipts table [env: DYNAMODB_TABLE_NAME] (required)
    #[arg(long, global = true, value_name = "NAME")]
    pub dynamodb_table_name: Option<String>,
    /// The work queue's URL [env: QUEUE_URL] (required)
    #[arg(long, global = true, value_name = "URL")]
    pub queue_url: Option<String>,
    /// The dead-letter queue's URL [env: DEAD_LETTER_QUEUE_URL] (required by replay-dlq;
    /// enqueue and status report its depth when set)
    #[arg(long, global = true, value_name = "URL")]
    pub dead_letter_queue_url: Option<String>,
    /// AWS region [env: AWS_REGION] (else the standard AWS chain)
    #[arg(long, global = true, value_name = "REGION")]
    pub aws_region: Option<String>,
    /// AWS endpoint, for emulators such as moto [env: AWS_ENDPOINT_URL]
    #[arg(long, global = true, value_name = "URL")]
    pub aws_endpoint_url: Option<String>,
    /// Log format on stderr, json or text [env: LOG_FORMAT] [default: json]
    #[arg(long, global = true, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Log filter [env: RUST_LOG] [default: info]
    #[arg(long, global = true, value_name = "FILTER")]
    pub rust_log: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One scheduler tick: enqueue every pending completion batch that has no live message.
    ///
    /// Exits 0 when every batch was enqueued or skipped (already scheduled), 1 otherwise.
    Enqueue(EnqueueArgs),
    /// Move dead-lettered messages back to the work queue (or show what would move).
    ///
    /// A message is deleted from the dead-letter queue only after its copy was sent, so a run
    /// killed half-way may duplicate a message, never lose one. Moved bodies get `replays`
    /// incremented and `checks` reset; bodies that are not valid messages move unchanged.
    /// Messages without a `reason` attribute (moved by the queue's redrive policy after too
    /// many receives) have the reason `redrive`.
    #[command(name = "replay-dlq")]
    ReplayDlq(ReplayArgs),
    /// Batches by status, queue depths and the age of the oldest pending batch.
    Status(StatusArgs),
    /// Receive OpenAI webhooks: a signed batch.completed (failed, expired, cancelled) event of
    /// a pending batch enqueues its check at once.
    ///
    /// Serves POST /openai/webhook, GET /healthz and GET /metrics on WEBHOOK_ADDR until
    /// SIGTERM or SIGINT, then exits 0. Deliveries are verified with the Standard Webhooks
    /// signature (OPENAI_WEBHOOK_SECRET); bad signatures and bodies get 400, other event types
    /// and unknown batches 200 with nothing done. Scheduled checks remain the safety net.
    #[command(name = "webhook-server")]
    WebhookServer(WebhookArgs),
}

#[derive(Debug, Clone, Default, Args)]
pub struct EnqueueArgs {
    /// How long a claimed batch counts as scheduled before another tick may enqueue it again
    /// [env: SCHEDULE_HORIZON_SECONDS] [default: 900]
    #[arg(long, value_name = "SECONDS")]
    pub schedule_horizon_seconds: Option<String>,
    /// Prometheus Pushgateway base URL; metrics are pushed after the tick when set
    /// [env: PUSHGATEWAY_URL]
    #[arg(long, value_name = "URL")]
    pub pushgateway_url: Option<String>,
    /// Print the summary as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Default, Args)]
pub struct ReplayArgs {
    /// Show what would move and change nothing
    #[arg(long, conflicts_with = "bulk")]
    pub dry_run: bool,
    /// Move only messages of this batch (repeatable); bodies that are not valid messages never
    /// match a batch id
    #[arg(long = "batch-id", value_name = "ID", conflicts_with = "bulk")]
    pub batch_ids: Vec<String>,
    /// Move only messages whose `reason` attribute is this (`redrive` for messages without one)
    #[arg(long, value_name = "TEXT", conflicts_with = "bulk")]
    pub reason: Option<String>,
    /// Move at most this many messages
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "bulk")]
    pub max: Option<u64>,
    /// Move at most this many messages per second (with --bulk: a whole number, 1 to 500)
    #[arg(long, value_name = "PER_SECOND", value_parser = positive_rate)]
    pub rate: Option<f64>,
    /// Seconds a received message stays hidden while this run decides about it
    #[arg(long, value_name = "SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u32).range(1..=43_200))]
    pub visibility_seconds: u32,
    /// Let SQS move everything (StartMessageMoveTask) instead; bodies move unchanged, no
    /// filters. Not every SQS implementation supports it (moto does not).
    #[arg(long)]
    pub bulk: bool,
    /// Print the result as JSON on stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Default, Args)]
pub struct WebhookArgs {
    /// Where POST /openai/webhook, /healthz and /metrics listen [env: WEBHOOK_ADDR]
    /// [default: 0.0.0.0:8080]
    #[arg(long, value_name = "ADDR")]
    pub webhook_addr: Option<String>,
    /// The endpoint's signing secret from OpenAI, whsec_… (secret: prefer the variable, a flag
    /// shows in the process list) [env: OPENAI_WEBHOOK_SECRET] (required)
    #[arg(long, value_name = "SECRET")]
    pub openai_webhook_secret: Option<String>,
    /// How long a batch enqueued by a webhook counts as scheduled, so producer ticks do not
    /// enqueue it again meanwhile [env: SCHEDULE_HORIZON_SECONDS] [default: 900]
    #[arg(long, value_name = "SECONDS")]
    pub schedule_horizon_seconds: Option<String>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct StatusArgs {
    /// Print JSON on stdout instead of a table
    #[arg(long)]
    pub json: bool,
}

fn positive_rate(v: &str) -> Result<f64, String> {
    match v.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        Ok(_) => Err("must be a number above 0".to_owned()),
        Err(_) => Err("is not a number".to_owned()),
    }
}

/// What a clap error means for the process: help and version go to stdout with exit 0;
/// anything else is a usage error (exit 64, message on stderr).
pub fn usage_error_exit_code(err: &clap::Error) -> i32 {
    if err.use_stderr() {
        fleet_shared::config::EXIT_USAGE
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_before_or_after_the_command() {
        let a = Cli::try_parse_from(["producer", "--queue-url", "http://q/1", "status"]).unwrap();
        let b = Cli::try_parse_from(["producer", "status", "--queue-url", "http://q/1"]).unwrap();
        assert_eq!(a.global.queue_url, b.global.queue_url);
    }

    #[test]
    fn replay_options_are_checked() {
        for (args, needle) in [
            (&["replay-dlq", "--max", "0"][..], "--max"),
            (&["replay-dlq", "--max", "ten"][..], "--max"),
            (&["replay-dlq", "--rate", "0"][..], "--rate"),
            (&["replay-dlq", "--rate", "fast"][..], "--rate"),
            (&["replay-dlq", "--bulk", "--dry-run"][..], "--dry-run"),
            (
                &["replay-dlq", "--bulk", "--batch-id", "b"][..],
                "--batch-id",
            ),
            (&["enqueue", "--frobnicate"][..], "--frobnicate"),
            (&["launch"][..], "launch"),
        ] {
            let err = Cli::try_parse_from(std::iter::once("producer").chain(args.iter().copied()))
                .unwrap_err();
            assert_eq!(usage_error_exit_code(&err), 64, "{args:?}");
            assert!(err.to_string().contains(needle), "{args:?}: {err}");
        }
    }

    #[test]
    fn help_is_not_an_error() {
        let err = Cli::try_parse_from(["producer", "--help"]).unwrap_err();
        assert_eq!(usage_error_exit_code(&err), 0);
        let help = err.to_string();
        for env in [
            "DYNAMODB_TABLE_NAME",
            "QUEUE_URL",
            "DEAD_LETTER_QUEUE_URL",
            "AWS_REGION",
            "AWS_ENDPOINT_URL",
            "LOG_FORMAT",
            "RUST_LOG",
        ] {
            assert!(help.contains(env), "{env} missing from --help");
        }
        let err = Cli::try_parse_from(["producer", "enqueue", "--help"]).unwrap_err();
        assert_eq!(usage_error_exit_code(&err), 0);
        assert!(err.to_string().contains("SCHEDULE_HORIZON_SECONDS"));
        assert!(err.to_string().contains("PUSHGATEWAY_URL"));
        assert!(help.contains("webhook-server"));
        let err = Cli::try_parse_from(["producer", "webhook-server", "--help"]).unwrap_err();
        assert_eq!(usage_error_exit_code(&err), 0);
        for env in [
            "WEBHOOK_ADDR",
            "OPENAI_WEBHOOK_SECRET",
            "SCHEDULE_HORIZON_SECONDS",
        ] {
            assert!(err.to_string().contains(env), "{env} missing from --help");
        }
    }

    #[test]
    fn webhook_server_flags() {
        let cli = Cli::try_parse_from([
            "producer",
            "webhook-server",
            "--webhook-addr",
            "127.0.0.1:0",
        ])
        .unwrap();
        let Command::WebhookServer(args) = cli.command else {
            panic!("not webhook-server")
        };
        assert_eq!(args.webhook_addr.as_deref(), Some("127.0.0.1:0"));
        assert!(args.openai_webhook_secret.is_none());
    }

    #[test]
    fn replay_defaults() {
        let cli = Cli::try_parse_from([
            "producer",
            "replay-dlq",
            "--batch-id",
            "a",
            "--batch-id",
            "b",
        ])
        .unwrap();
        let Command::ReplayDlq(args) = cli.command else {
            panic!("not replay-dlq")
        };
        assert_eq!(args.batch_ids, ["a", "b"]);
        assert_eq!(args.visibility_seconds, 60);
        assert!(!args.dry_run && !args.bulk && args.max.is_none() && args.rate.is_none());
    }
}
