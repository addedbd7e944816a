//! Typed settings of one run, built from the parsed command line and a [`ConfigSource`]
//! before anything touches AWS: a bad value stops the run with exit 64 and a message naming
//! every problem, and tests pass a map instead of setting the process environment.

use std::net::SocketAddr;

use fleet_shared::config::{CommonSettings, ConfigError, ConfigSource, LogFormat, Lookup};
use fleet_shared::secret::ExposeSecret;

use crate::cli::{Cli, Command};
use crate::webhook::signature::SigningKey;

/// Default of `SCHEDULE_HORIZON_SECONDS`: SQS's longest delay, and three scheduler ticks.
pub const DEFAULT_SCHEDULE_HORIZON_SECONDS: u64 = 900;
/// A day: past that a lost send (see [`crate::enqueue`]) would leave a batch unattended too long.
pub const MAX_SCHEDULE_HORIZON_SECONDS: u64 = 86_400;
/// Long enough for SQS to search all its servers (a zero wait may miss messages), short enough
/// that an empty dead-letter queue ends a replay quickly.
pub const REPLAY_POLL_WAIT_SECONDS: u32 = 1;
/// StartMessageMoveTask's limits of MaxNumberOfMessagesPerSecond.
pub const BULK_RATE_MAX: u32 = 500;
/// Default of `WEBHOOK_ADDR` (docs/spec/interface.md).
pub const DEFAULT_WEBHOOK_ADDR: &str = "0.0.0.0:8080";

/// Where AWS is; `None` leaves the choice to the standard chain (profile, IRSA, IMDS).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsSettings {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EnqueueSettings {
    pub queue_url: String,
    pub dead_letter_queue_url: Option<String>,
    pub schedule_horizon_seconds: u64,
    pub pushgateway_url: Option<String>,
}

impl EnqueueSettings {
    /// Defaults for everything but the queue (tests and the demo build settings this way).
    pub fn new(queue_url: impl Into<String>) -> Self {
        EnqueueSettings {
            queue_url: queue_url.into(),
            dead_letter_queue_url: None,
            schedule_horizon_seconds: DEFAULT_SCHEDULE_HORIZON_SECONDS,
            pushgateway_url: None,
        }
    }
}

/// Which dead-lettered messages to move.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayFilter {
    /// Empty: every batch (and bodies that are not valid messages).
    pub batch_ids: Vec<String>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReplaySettings {
    pub queue_url: String,
    pub dead_letter_queue_url: String,
    pub filter: ReplayFilter,
    pub max: Option<u64>,
    pub rate_per_second: Option<f64>,
    pub dry_run: bool,
    pub visibility_seconds: u32,
    pub poll_wait_seconds: u32,
}

impl ReplaySettings {
    pub fn new(queue_url: impl Into<String>, dead_letter_queue_url: impl Into<String>) -> Self {
        ReplaySettings {
            queue_url: queue_url.into(),
            dead_letter_queue_url: dead_letter_queue_url.into(),
            filter: ReplayFilter::default(),
            max: None,
            rate_per_second: None,
            dry_run: false,
            visibility_seconds: 60,
            poll_wait_seconds: REPLAY_POLL_WAIT_SECONDS,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BulkSettings {
    pub queue_url: String,
    pub dead_letter_queue_url: String,
    pub rate_per_second: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSettings {
    pub queue_url: String,
    pub dead_letter_queue_url: Option<String>,
}

/// `webhook-server`: where to listen, the signing key, and where batches go.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookSettings {
    pub queue_url: String,
    pub addr: SocketAddr,
    /// From `OPENAI_WEBHOOK_SECRET`; its `Debug` is redacted.
    pub key: SigningKey,
    /// The "scheduled until" marker a webhook's new chain writes (as a tick's claim does).
    pub schedule_horizon_seconds: u64,
}

/// The command to run with its settings, and whether to print JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandSettings {
    Enqueue {
        settings: EnqueueSettings,
        json: bool,
    },
    ReplayDlq {
        settings: ReplaySettings,
        json: bool,
    },
    ReplayBulk {
        settings: BulkSettings,
        json: bool,
    },
    Status {
        settings: StatusSettings,
        json: bool,
    },
    WebhookServer {
        settings: WebhookSettings,
    },
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub table_name: String,
    pub log_format: LogFormat,
    pub log_filter: String,
    pub aws: AwsSettings,
    pub command: CommandSettings,
}

impl Settings {
    /// Validates flags and `source` together; every problem is in the error.
    pub fn from_cli(cli: &Cli, source: &dyn ConfigSource) -> Result<Settings, ConfigError> {
        let g = &cli.global;
        let mut flags = vec![
            ("DYNAMODB_TABLE_NAME", g.dynamodb_table_name.clone()),
            ("QUEUE_URL", g.queue_url.clone()),
            ("DEAD_LETTER_QUEUE_URL", g.dead_letter_queue_url.clone()),
            ("AWS_REGION", g.aws_region.clone()),
            ("AWS_ENDPOINT_URL", g.aws_endpoint_url.clone()),
            ("LOG_FORMAT", g.log_format.clone()),
            ("RUST_LOG", g.rust_log.clone()),
        ];
        if let Command::Enqueue(a) = &cli.command {
            flags.push((
                "SCHEDULE_HORIZON_SECONDS",
                a.schedule_horizon_seconds.clone(),
            ));
            flags.push(("PUSHGATEWAY_URL", a.pushgateway_url.clone()));
        }
        if let Command::WebhookServer(a) = &cli.command {
            flags.push(("WEBHOOK_ADDR", a.webhook_addr.clone()));
            flags.push(("OPENAI_WEBHOOK_SECRET", a.openai_webhook_secret.clone()));
            flags.push((
                "SCHEDULE_HORIZON_SECONDS",
                a.schedule_horizon_seconds.clone(),
            ));
        }
        let mut l = Lookup::new(flags, source);
        let common = CommonSettings::read(&mut l);
        let aws = AwsSettings {
            region: l.optional("AWS_REGION"),
            endpoint_url: l
                .optional("AWS_ENDPOINT_URL")
                .map(|v| l.url("AWS_ENDPOINT_URL", v)),
        };
        let command = match &cli.command {
            Command::Enqueue(a) => CommandSettings::Enqueue {
                settings: EnqueueSettings {
                    queue_url: common.queue_url.clone(),
                    dead_letter_queue_url: common.dead_letter_queue_url.clone(),
                    schedule_horizon_seconds: l.number_in(
                        "SCHEDULE_HORIZON_SECONDS",
                        DEFAULT_SCHEDULE_HORIZON_SECONDS,
                        1,
                        MAX_SCHEDULE_HORIZON_SECONDS,
                    ),
                    pushgateway_url: l
                        .optional("PUSHGATEWAY_URL")
                        .map(|v| l.url("PUSHGATEWAY_URL", v)),
                },
                json: a.json,
            },
            Command::ReplayDlq(a) => {
                let dlq = match &common.dead_letter_queue_url {
                    Some(url) => url.clone(),
                    None => {
                        l.problem(
                            "DEAD_LETTER_QUEUE_URL is required by replay-dlq but not set \
                             (or pass --dead-letter-queue-url)",
                        );
                        String::new()
                    }
                };
                if a.bulk {
                    let rate = a.rate.and_then(|r| bulk_rate(&mut l, r));
                    CommandSettings::ReplayBulk {
                        settings: BulkSettings {
                            queue_url: common.queue_url.clone(),
                            dead_letter_queue_url: dlq,
                            rate_per_second: rate,
                        },
                        json: a.json,
                    }
                } else {
                    CommandSettings::ReplayDlq {
                        settings: ReplaySettings {
                            filter: ReplayFilter {
                                batch_ids: a.batch_ids.clone(),
                                reason: a.reason.clone(),
                            },
                            max: a.max,
                            rate_per_second: a.rate,
                            dry_run: a.dry_run,
                            visibility_seconds: a.visibility_seconds,
                            ..ReplaySettings::new(common.queue_url.clone(), dlq)
                        },
                        json: a.json,
                    }
                }
            }
            Command::Status(a) => CommandSettings::Status {
                settings: StatusSettings {
                    queue_url: common.queue_url.clone(),
                    dead_letter_queue_url: common.dead_letter_queue_url.clone(),
                },
                json: a.json,
            },
            Command::WebhookServer(_) => CommandSettings::WebhookServer {
                settings: WebhookSettings {
                    queue_url: common.queue_url.clone(),
                    addr: l.socket_addr_or("WEBHOOK_ADDR", DEFAULT_WEBHOOK_ADDR),
                    key: webhook_key(&mut l),
                    schedule_horizon_seconds: l.number_in(
                        "SCHEDULE_HORIZON_SECONDS",
                        DEFAULT_SCHEDULE_HORIZON_SECONDS,
                        1,
                        MAX_SCHEDULE_HORIZON_SECONDS,
                    ),
                },
            },
        };
        l.finish()?;
        Ok(Settings {
            table_name: common.table_name,
            log_format: common.log_format,
            log_filter: common.log_filter,
            aws,
            command,
        })
    }
}

/// The signing key of `OPENAI_WEBHOOK_SECRET`; problems are named without the value.
fn webhook_key(l: &mut Lookup<'_>) -> SigningKey {
    // Any valid key: the run stops at `finish` when a problem was recorded.
    let placeholder =
        || SigningKey::parse("whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").expect("valid");
    if l.optional("OPENAI_WEBHOOK_SECRET").is_none() {
        l.problem(
            "OPENAI_WEBHOOK_SECRET is required by webhook-server but not set (the endpoint's \
             signing secret, whsec_…, from the OpenAI dashboard)",
        );
        return placeholder();
    }
    let secret = l.secret("OPENAI_WEBHOOK_SECRET");
    match SigningKey::parse(secret.expose_secret()) {
        Ok(key) => key,
        Err(e) => {
            l.problem(format!(
                "OPENAI_WEBHOOK_SECRET is not a webhook signing secret: {e}"
            ));
            placeholder()
        }
    }
}

fn bulk_rate(l: &mut Lookup<'_>, rate: f64) -> Option<u32> {
    if rate.fract() == 0.0 && (1.0..=f64::from(BULK_RATE_MAX)).contains(&rate) {
        // A whole number within 1..=BULK_RATE_MAX: the conversion is exact.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let rate = rate as u32;
        Some(rate)
    } else {
        l.problem(format!(
            "--rate {rate} with --bulk: SQS moves a whole number of messages per second, \
             1 to {BULK_RATE_MAX}"
        ));
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::collections::HashMap;

    const BASE: [(&str, &str); 2] = [
        ("DYNAMODB_TABLE_NAME", "receipts"),
        ("QUEUE_URL", "http://localhost:5055/123/work"),
    ];

    fn parse(args: &[&str], env: &dyn ConfigSource) -> Result<Settings, ConfigError> {
        let cli = Cli::try_parse_from(std::iter::once("producer").chain(args.iter().copied()))
            .expect("valid command line");
        Settings::from_cli(&cli, env)
    }

    fn env(extra: &[(&str, &str)]) -> HashMap<String, String> {
        BASE.iter()
            .chain(extra)
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn problems(args: &[&str], env: &dyn ConfigSource) -> String {
        parse(args, env).unwrap_err().to_string()
    }

    #[test]
    fn enqueue_defaults() {
        let s = parse(&["enqueue"], &BASE).unwrap();
        assert_eq!(s.table_name, "receipts");
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.aws, AwsSettings::default());
        let CommandSettings::Enqueue { settings, json } = s.command else {
            panic!("not enqueue")
        };
        assert!(!json);
        assert_eq!(
            settings,
            EnqueueSettings::new("http://localhost:5055/123/work")
        );
    }

    #[test]
    fn flags_win_over_the_environment() {
        let e = env(&[("SCHEDULE_HORIZON_SECONDS", "600"), ("LOG_FORMAT", "text")]);
        let s = parse(
            &[
                "enqueue",
                "--schedule-horizon-seconds",
                "120",
                "--dynamodb-table-name",
                "other",
                "--pushgateway-url",
                "http://pgw:9091/",
                "--aws-endpoint-url",
                "http://127.0.0.1:5055",
                "--json",
            ],
            &e,
        )
        .unwrap();
        assert_eq!(s.table_name, "other");
        assert_eq!(s.log_format, LogFormat::Text);
        assert_eq!(s.aws.endpoint_url.as_deref(), Some("http://127.0.0.1:5055"));
        let CommandSettings::Enqueue { settings, json } = s.command else {
            panic!("not enqueue")
        };
        assert!(json);
        assert_eq!(settings.schedule_horizon_seconds, 120);
        assert_eq!(settings.pushgateway_url.as_deref(), Some("http://pgw:9091"));
    }

    #[test]
    fn horizon_and_pushgateway_come_from_the_environment() {
        let e = env(&[
            ("SCHEDULE_HORIZON_SECONDS", "600"),
            ("PUSHGATEWAY_URL", "http://pgw:9091"),
            ("DEAD_LETTER_QUEUE_URL", "http://localhost:5055/123/dlq"),
        ]);
        let CommandSettings::Enqueue { settings, .. } = parse(&["enqueue"], &e).unwrap().command
        else {
            panic!("not enqueue")
        };
        assert_eq!(settings.schedule_horizon_seconds, 600);
        assert_eq!(settings.pushgateway_url.as_deref(), Some("http://pgw:9091"));
        assert_eq!(
            settings.dead_letter_queue_url.as_deref(),
            Some("http://localhost:5055/123/dlq")
        );
    }

    #[test]
    fn every_bad_value_is_named() {
        let e: [(&str, &str); 5] = [
            ("QUEUE_URL", "not a url"),
            ("SCHEDULE_HORIZON_SECONDS", "0"),
            ("PUSHGATEWAY_URL", "pgw:9091"),
            ("LOG_FORMAT", "xml"),
            ("AWS_ENDPOINT_URL", "localhost"),
        ];
        let text = problems(&["enqueue"], &e);
        for needle in [
            "DYNAMODB_TABLE_NAME is required",
            "QUEUE_URL=\"not a url\" is not an http(s) URL",
            "SCHEDULE_HORIZON_SECONDS=0 is out of range",
            "PUSHGATEWAY_URL=\"pgw:9091\" is not an http(s) URL",
            "LOG_FORMAT=\"xml\"",
            "AWS_ENDPOINT_URL=\"localhost\"",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in {text}");
        }
        let text = problems(&["enqueue", "--schedule-horizon-seconds", "soon"], &BASE);
        assert!(text.contains("SCHEDULE_HORIZON_SECONDS=\"soon\" is not a whole number"));
        let text = problems(&["status"], &[("DYNAMODB_TABLE_NAME", "t")]);
        assert!(text.contains("QUEUE_URL is required"), "{text}");
    }

    #[test]
    fn replay_needs_the_dead_letter_queue() {
        let text = problems(&["replay-dlq"], &BASE);
        assert!(
            text.contains("DEAD_LETTER_QUEUE_URL is required by replay-dlq"),
            "{text}"
        );
        let text = problems(&["replay-dlq", "--bulk"], &BASE);
        assert!(text.contains("DEAD_LETTER_QUEUE_URL"), "{text}");
        // enqueue and status only report its depth
        assert!(parse(&["enqueue"], &BASE).is_ok());
        assert!(parse(&["status"], &BASE).is_ok());
    }

    #[test]
    fn replay_settings() {
        let e = env(&[("DEAD_LETTER_QUEUE_URL", "http://localhost:5055/123/dlq")]);
        let s = parse(
            &[
                "replay-dlq",
                "--dry-run",
                "--batch-id",
                "a",
                "--reason",
                "openai_unavailable",
                "--max",
                "5",
                "--rate",
                "2.5",
            ],
            &e,
        )
        .unwrap();
        let CommandSettings::ReplayDlq { settings, json } = s.command else {
            panic!("not replay-dlq")
        };
        assert!(!json);
        assert_eq!(
            settings,
            ReplaySettings {
                filter: ReplayFilter {
                    batch_ids: vec!["a".into()],
                    reason: Some("openai_unavailable".into()),
                },
                max: Some(5),
                rate_per_second: Some(2.5),
                dry_run: true,
                ..ReplaySettings::new(
                    "http://localhost:5055/123/work",
                    "http://localhost:5055/123/dlq"
                )
            }
        );
    }

    const WEBHOOK_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

    #[test]
    fn webhook_server_defaults_and_flags() {
        let e = env(&[("OPENAI_WEBHOOK_SECRET", WEBHOOK_SECRET)]);
        let CommandSettings::WebhookServer { settings } =
            parse(&["webhook-server"], &e).unwrap().command
        else {
            panic!("not webhook-server")
        };
        assert_eq!(settings.addr, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(settings.queue_url, "http://localhost:5055/123/work");
        assert_eq!(settings.schedule_horizon_seconds, 900);
        assert_eq!(settings.key, SigningKey::parse(WEBHOOK_SECRET).unwrap());
        let e = env(&[
            ("OPENAI_WEBHOOK_SECRET", "whsec_wrong"),
            ("WEBHOOK_ADDR", "0.0.0.0:1"),
        ]);
        let CommandSettings::WebhookServer { settings } = parse(
            &[
                "webhook-server",
                "--webhook-addr",
                "127.0.0.1:0",
                "--openai-webhook-secret",
                WEBHOOK_SECRET,
                "--schedule-horizon-seconds",
                "60",
            ],
            &e,
        )
        .unwrap()
        .command
        else {
            panic!("not webhook-server")
        };
        assert_eq!(settings.addr, "127.0.0.1:0".parse().unwrap());
        assert_eq!(settings.schedule_horizon_seconds, 60);
        assert_eq!(settings.key, SigningKey::parse(WEBHOOK_SECRET).unwrap());
    }

    #[test]
    fn webhook_server_configuration_problems_are_named_without_the_secret() {
        let text = problems(&["webhook-server"], &BASE);
        assert!(
            text.contains("OPENAI_WEBHOOK_SECRET is required by webhook-server"),
            "{text}"
        );
        for (secret, needle) in [
            (
                "C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
                "does not start with whsec_",
            ),
            (
                "whsec_C2FVsBQIhrsc*ChlQIMV+b5sSYspob7oD",
                "not standard base64",
            ),
            ("whsec_c2hvcnRrZXk=", "fewer than the 24"),
        ] {
            let e = env(&[
                ("OPENAI_WEBHOOK_SECRET", secret),
                ("WEBHOOK_ADDR", "nowhere"),
            ]);
            let text = problems(&["webhook-server"], &e);
            assert!(text.contains(needle), "{needle:?} not in {text}");
            assert!(
                text.contains("WEBHOOK_ADDR=\"nowhere\" is not an address"),
                "{text}"
            );
            assert!(!text.contains(secret), "the secret leaked: {text}");
        }
        let s = parse(
            &["webhook-server"],
            &env(&[("OPENAI_WEBHOOK_SECRET", WEBHOOK_SECRET)]),
        )
        .unwrap();
        assert!(
            !format!("{s:?}").contains("C2FVsBQ"),
            "Debug of the settings shows the key"
        );
    }

    #[test]
    fn bulk_rate_is_a_whole_number_sqs_accepts() {
        let e = env(&[("DEAD_LETTER_QUEUE_URL", "http://localhost:5055/123/dlq")]);
        let s = parse(&["replay-dlq", "--bulk", "--rate", "50"], &e).unwrap();
        let CommandSettings::ReplayBulk { settings, .. } = s.command else {
            panic!("not bulk")
        };
        assert_eq!(settings.rate_per_second, Some(50));
        for rate in ["2.5", "501"] {
            let text = problems(&["replay-dlq", "--bulk", "--rate", rate], &e);
            assert!(text.contains("--rate") && text.contains("--bulk"), "{text}");
        }
    }
}
