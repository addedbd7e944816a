//! Typed, validated settings. They are read once at start, through
//! [`fleet_shared::config::Lookup`] (flags win over the source), so every problem of a
//! misconfigured pod is reported in one go and nothing starts on a bad value.

use std::net::SocketAddr;
use std::time::Duration;

use fleet_shared::config::{CommonSettings, ConfigError, ConfigSource, Lookup};
use rand::Rng;
use secrecy::SecretString;

use crate::cli::SettingFlags;

/// Where the OpenAI Batch API is and how to authenticate.
#[derive(Debug, Clone)]
pub struct OpenAiSettings {
    pub base_url: String,
    pub api_key: SecretString,
    pub organization: Option<String>,
    pub project: Option<String>,
}

/// Where the Pinecone index is, and how fast this process may write to it.
#[derive(Debug, Clone)]
pub struct PineconeSettings {
    pub index_host: String,
    pub api_key: SecretString,
    pub namespace: String,
    pub updates_per_second: f64,
}

/// Bounds of the wait before re-checking an unfinished batch, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecheckBounds {
    pub min_seconds: u32,
    pub max_seconds: u32,
}

/// Bounds of the visibility backoff after a transient error, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBounds {
    pub min_seconds: u32,
    pub max_seconds: u32,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonSettings,
    pub openai: OpenAiSettings,
    pub pinecone: PineconeSettings,
    pub metrics_addr: SocketAddr,
    pub max_in_flight: usize,
    /// Also the lease length: a crashed holder's lease runs out when its message reappears.
    pub visibility_timeout_seconds: u32,
    pub heartbeat: Duration,
    pub recheck: RecheckBounds,
    pub retry: RetryBounds,
    pub message_deadline: Duration,
    pub stuck_validating: Duration,
    pub shutdown_grace: Duration,
    /// Finished batches applied at once by this process (status checks are bounded by
    /// `max_in_flight` alone): applies hold files on disk and memory, checks hold nothing.
    pub max_concurrent_applies: usize,
    /// How long `/readyz` answers 503 after an error of the deployment (a rejected key, access
    /// denied, a missing table or queue).
    pub unready_after_deployment_error: Duration,
    pub exit_when_idle: bool,
    /// The pod name plus a random suffix: a restarted pod keeps its name, and its leases must
    /// not be mistaken for the ones its previous incarnation held.
    pub worker_id: String,
}

/// The highest visibility SQS accepts (12 hours).
pub const MAX_VISIBILITY_SECONDS: u64 = 43_200;
/// The default heartbeat is a third of the visibility timeout, but no rarer than this.
pub const MAX_DEFAULT_HEARTBEAT_SECONDS: u64 = 300;

impl Settings {
    /// Reads every setting; `Err` lists every problem found.
    pub fn read(
        flags: &SettingFlags,
        exit_when_idle: bool,
        source: &dyn ConfigSource,
    ) -> Result<Settings, ConfigError> {
        let mut l = Lookup::new(flags.pairs(), source);
        let common = CommonSettings::read(&mut l);

        let base_url = l.string_or(
            "OPENAI_BASE_URL",
            fleet_shared::openai::client::DEFAULT_BASE_URL,
        );
        let openai = OpenAiSettings {
            base_url: l.url("OPENAI_BASE_URL", base_url),
            api_key: l.secret("OPENAI_API_KEY"),
            organization: l.optional("OPENAI_ORGANIZATION"),
            project: l.optional("OPENAI_PROJECT"),
        };

        let index_host = l.required("PINECONE_INDEX_HOST");
        let pinecone = PineconeSettings {
            index_host: l.url("PINECONE_INDEX_HOST", index_host),
            api_key: l.secret("PINECONE_API_KEY"),
            namespace: l.string_or(
                "PINECONE_NAMESPACE",
                fleet_shared::pinecone::DEFAULT_NAMESPACE,
            ),
            updates_per_second: l.float_in("PINECONE_UPDATES_PER_SECOND", 90.0, 0.1, 10_000.0),
        };

        let metrics_addr = l.socket_addr_or("METRICS_ADDR", "0.0.0.0:9090");
        let max_in_flight = l.number_in("MAX_IN_FLIGHT", 16, 1, 1000);
        let visibility = l.number_in(
            "VISIBILITY_TIMEOUT_SECONDS",
            120,
            10,
            MAX_VISIBILITY_SECONDS,
        );
        let default_heartbeat = (visibility / 3).clamp(1, MAX_DEFAULT_HEARTBEAT_SECONDS);
        let heartbeat = l.number_in(
            "HEARTBEAT_SECONDS",
            default_heartbeat,
            1,
            MAX_VISIBILITY_SECONDS,
        );
        if heartbeat >= visibility {
            l.problem(format!(
                "HEARTBEAT_SECONDS={heartbeat} must be below VISIBILITY_TIMEOUT_SECONDS={visibility}, \
                 or the message reappears between two beats"
            ));
        }
        let recheck_min = l.number_in("RECHECK_MIN_SECONDS", 60, 1, 86_400);
        let recheck_max = l.number_in("RECHECK_MAX_SECONDS", 900, 1, 86_400);
        if recheck_min > recheck_max {
            l.problem(format!(
                "RECHECK_MIN_SECONDS={recheck_min} is above RECHECK_MAX_SECONDS={recheck_max}"
            ));
        }
        let retry_min = l.number_in("RETRY_MIN_SECONDS", 5, 0, MAX_VISIBILITY_SECONDS);
        let retry_max = l.number_in("RETRY_MAX_SECONDS", 900, 1, MAX_VISIBILITY_SECONDS);
        if retry_min > retry_max {
            l.problem(format!(
                "RETRY_MIN_SECONDS={retry_min} is above RETRY_MAX_SECONDS={retry_max}"
            ));
        }
        let deadline = l.number_in("MESSAGE_DEADLINE_SECONDS", 300, 1, 86_400);
        let stuck = l.number_in("STUCK_VALIDATING_SECONDS", 300, 1, 30 * 86_400);
        let grace = l.number_in("SHUTDOWN_GRACE_SECONDS", 25, 0, 3_600);
        // More applies than messages in flight cannot happen; no need to refuse the value.
        let applies = l
            .number_in("MAX_CONCURRENT_APPLIES", 2, 1, 64)
            .min(max_in_flight);
        let unready = l.number_in("DEPLOYMENT_UNREADY_SECONDS", 60, 1, 86_400);
        let host = l
            .optional("HOSTNAME")
            .filter(|h| {
                h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            })
            .unwrap_or_else(|| "worker".to_owned());

        l.finish()?;
        let suffix: u32 = rand::rng().random();
        Ok(Settings {
            common,
            openai,
            pinecone,
            metrics_addr,
            max_in_flight: to_usize(max_in_flight),
            visibility_timeout_seconds: to_u32(visibility),
            heartbeat: Duration::from_secs(heartbeat),
            recheck: RecheckBounds {
                min_seconds: to_u32(recheck_min),
                max_seconds: to_u32(recheck_max),
            },
            retry: RetryBounds {
                min_seconds: to_u32(retry_min),
                max_seconds: to_u32(retry_max),
            },
            message_deadline: Duration::from_secs(deadline),
            stuck_validating: Duration::from_secs(stuck),
            shutdown_grace: Duration::from_secs(grace),
            max_concurrent_applies: to_usize(applies),
            unready_after_deployment_error: Duration::from_secs(unready),
            exit_when_idle,
            worker_id: format!("{host}-{:06x}", suffix & 0x00ff_ffff),
        })
    }

    /// The lease length: the visibility timeout, so a lease and its message expire together.
    pub fn lease_ttl_ms(&self) -> i64 {
        i64::from(self.visibility_timeout_seconds) * 1000
    }

    /// How the apply lease is held: its length, renewed every heartbeat on a task of its own.
    pub fn lease_terms(&self) -> crate::lease::LeaseTerms {
        crate::lease::LeaseTerms::new(
            Duration::from_secs(u64::from(self.visibility_timeout_seconds)),
            self.heartbeat,
        )
    }

    /// Logs the startup banner: version and every non-secret setting.
    pub fn log_banner(&self) {
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            worker_id = %self.worker_id,
            table = %self.common.table_name,
            queue_url = %self.common.queue_url,
            dead_letter_queue_url = self.common.dead_letter_queue_url.as_deref().unwrap_or("(none)"),
            openai_base_url = %self.openai.base_url,
            openai_organization = self.openai.organization.as_deref().unwrap_or("(none)"),
            openai_project = self.openai.project.as_deref().unwrap_or("(none)"),
            pinecone_index_host = %self.pinecone.index_host,
            pinecone_namespace = %self.pinecone.namespace,
            pinecone_updates_per_second = self.pinecone.updates_per_second,
            metrics_addr = %self.metrics_addr,
            max_in_flight = self.max_in_flight,
            visibility_timeout_seconds = self.visibility_timeout_seconds,
            heartbeat_seconds = self.heartbeat.as_secs(),
            recheck_min_seconds = self.recheck.min_seconds,
            recheck_max_seconds = self.recheck.max_seconds,
            retry_min_seconds = self.retry.min_seconds,
            retry_max_seconds = self.retry.max_seconds,
            message_deadline_seconds = self.message_deadline.as_secs(),
            stuck_validating_seconds = self.stuck_validating.as_secs(),
            shutdown_grace_seconds = self.shutdown_grace.as_secs(),
            max_concurrent_applies = self.max_concurrent_applies,
            deployment_unready_seconds = self.unready_after_deployment_error.as_secs(),
            exit_when_idle = self.exit_when_idle,
            log_format = ?self.common.log_format,
            "worker starting"
        );
        if self.common.dead_letter_queue_url.is_none() {
            tracing::warn!(
                "DEAD_LETTER_QUEUE_URL is not set: poison messages are made visible again and \
                 reach the dead-letter queue only through the redrive policy, without a reason"
            );
        }
    }
}

fn to_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use fleet_shared::config::LogFormat;
    use secrecy::ExposeSecret;

    use super::*;

    fn base() -> HashMap<String, String> {
        [
            ("DYNAMODB_TABLE_NAME", "receipts"),
            ("QUEUE_URL", "http://localhost:5055/123/work"),
            ("OPENAI_API_KEY", "sk-test-SECRET"),
            ("PINECONE_INDEX_HOST", "http://127.0.0.1:9999"),
            ("PINECONE_API_KEY", "pc-test-SECRET"),
            ("HOSTNAME", "worker-7f9c"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    fn with(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        let mut env = base();
        for (k, v) in pairs {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        env
    }

    fn read(env: &HashMap<String, String>) -> Result<Settings, ConfigError> {
        Settings::read(&SettingFlags::default(), false, env)
    }

    fn problems(env: &HashMap<String, String>) -> String {
        read(env).unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let s = read(&base()).unwrap();
        assert_eq!(s.openai.base_url, "https://api.openai.com/v1");
        assert_eq!(s.openai.api_key.expose_secret(), "sk-test-SECRET");
        assert_eq!(s.pinecone.namespace, "words");
        assert!((s.pinecone.updates_per_second - 90.0).abs() < f64::EPSILON);
        assert_eq!(s.metrics_addr, "0.0.0.0:9090".parse().unwrap());
        assert_eq!(s.max_in_flight, 16);
        assert_eq!(s.max_concurrent_applies, 2);
        assert_eq!(s.unready_after_deployment_error, Duration::from_secs(60));
        assert_eq!(s.visibility_timeout_seconds, 120);
        assert_eq!(s.heartbeat, Duration::from_secs(40));
        assert_eq!(
            s.recheck,
            RecheckBounds {
                min_seconds: 60,
                max_seconds: 900
            }
        );
        assert_eq!(s.message_deadline, Duration::from_secs(300));
        assert_eq!(s.stuck_validating, Duration::from_secs(300));
        assert_eq!(s.shutdown_grace, Duration::from_secs(25));
        assert_eq!(s.common.log_format, LogFormat::Json);
        assert_eq!(s.common.dead_letter_queue_url, None);
        assert!(s.worker_id.starts_with("worker-7f9c-"), "{}", s.worker_id);
        assert_eq!(s.worker_id.len(), "worker-7f9c-".len() + 6);
        assert_eq!(s.lease_ttl_ms(), 120_000);
    }

    #[test]
    fn two_workers_on_one_pod_name_get_distinct_ids() {
        let a = read(&base()).unwrap().worker_id;
        let b = read(&base()).unwrap().worker_id;
        assert_ne!(a, b);
    }

    #[test]
    fn default_heartbeat_is_a_third_of_the_visibility_capped() {
        let s = read(&with(&[("VISIBILITY_TIMEOUT_SECONDS", "30")])).unwrap();
        assert_eq!(s.heartbeat, Duration::from_secs(10));
        let s = read(&with(&[("VISIBILITY_TIMEOUT_SECONDS", "43200")])).unwrap();
        assert_eq!(s.heartbeat, Duration::from_secs(300));
    }

    #[test]
    fn flags_win_over_the_environment() {
        let flags = SettingFlags {
            max_in_flight: Some("3".into()),
            recheck_min_seconds: Some("1".into()),
            recheck_max_seconds: Some("2".into()),
            ..SettingFlags::default()
        };
        let s = Settings::read(&flags, true, &with(&[("MAX_IN_FLIGHT", "50")])).unwrap();
        assert_eq!(s.max_in_flight, 3);
        assert_eq!(s.recheck.max_seconds, 2);
        assert!(s.exit_when_idle);
        let bad = SettingFlags {
            max_in_flight: Some("many".into()),
            ..SettingFlags::default()
        };
        let err = Settings::read(&bad, false, &base())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("MAX_IN_FLIGHT=\"many\" is not a whole number"),
            "{err}"
        );
    }

    #[test]
    fn each_bad_value_is_named() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("MAX_IN_FLIGHT", "0")],
                "MAX_IN_FLIGHT=0 is out of range (1..=1000)",
            ),
            (
                &[("MAX_IN_FLIGHT", "1001")],
                "MAX_IN_FLIGHT=1001 is out of range",
            ),
            (
                &[("MAX_IN_FLIGHT", "ten")],
                "MAX_IN_FLIGHT=\"ten\" is not a whole number",
            ),
            (
                &[("MAX_IN_FLIGHT", "-1")],
                "MAX_IN_FLIGHT=\"-1\" is not a whole number",
            ),
            (
                &[("MAX_CONCURRENT_APPLIES", "0")],
                "MAX_CONCURRENT_APPLIES=0 is out of range (1..=64)",
            ),
            (
                &[("DEPLOYMENT_UNREADY_SECONDS", "soon")],
                "DEPLOYMENT_UNREADY_SECONDS=\"soon\" is not a whole number",
            ),
            (
                &[("LOG_FORMAT", "xml")],
                "LOG_FORMAT=\"xml\": expected json or text",
            ),
            (
                &[
                    ("RECHECK_MIN_SECONDS", "120"),
                    ("RECHECK_MAX_SECONDS", "60"),
                ],
                "RECHECK_MIN_SECONDS=120 is above RECHECK_MAX_SECONDS=60",
            ),
            (
                &[("RECHECK_MAX_SECONDS", "86401")],
                "RECHECK_MAX_SECONDS=86401 is out of range",
            ),
            (
                &[("RECHECK_MIN_SECONDS", "1.5")],
                "RECHECK_MIN_SECONDS=\"1.5\" is not a whole number",
            ),
            (
                &[("VISIBILITY_TIMEOUT_SECONDS", "5")],
                "VISIBILITY_TIMEOUT_SECONDS=5 is out of range (10..=43200)",
            ),
            (
                &[
                    ("VISIBILITY_TIMEOUT_SECONDS", "30"),
                    ("HEARTBEAT_SECONDS", "30"),
                ],
                "HEARTBEAT_SECONDS=30 must be below VISIBILITY_TIMEOUT_SECONDS=30",
            ),
            (
                &[("RETRY_MIN_SECONDS", "60"), ("RETRY_MAX_SECONDS", "10")],
                "RETRY_MIN_SECONDS=60 is above RETRY_MAX_SECONDS=10",
            ),
            (
                &[("MESSAGE_DEADLINE_SECONDS", "0")],
                "MESSAGE_DEADLINE_SECONDS=0 is out of range",
            ),
            (
                &[("STUCK_VALIDATING_SECONDS", "soon")],
                "STUCK_VALIDATING_SECONDS=\"soon\"",
            ),
            (
                &[("SHUTDOWN_GRACE_SECONDS", "3601")],
                "SHUTDOWN_GRACE_SECONDS=3601 is out of range",
            ),
            (
                &[("METRICS_ADDR", "everywhere")],
                "METRICS_ADDR=\"everywhere\"",
            ),
            (
                &[("OPENAI_BASE_URL", "api.openai.com")],
                "OPENAI_BASE_URL=\"api.openai.com\" is not an http(s) URL",
            ),
            (
                &[("PINECONE_INDEX_HOST", "ftp://x")],
                "PINECONE_INDEX_HOST=\"ftp://x\" is not an http(s) URL",
            ),
            (
                &[("PINECONE_UPDATES_PER_SECOND", "0")],
                "PINECONE_UPDATES_PER_SECOND=0 is out of range",
            ),
            (
                &[("QUEUE_URL", "queue")],
                "QUEUE_URL=\"queue\" is not an http(s) URL",
            ),
        ];
        for (pairs, needle) in cases {
            let text = problems(&with(pairs));
            assert!(
                text.contains(needle),
                "{pairs:?}: expected {needle:?} in {text}"
            );
        }
    }

    #[test]
    fn every_missing_required_setting_is_named_at_once() {
        let err = read(&HashMap::new()).unwrap_err();
        for name in [
            "DYNAMODB_TABLE_NAME",
            "QUEUE_URL",
            "OPENAI_API_KEY",
            "PINECONE_INDEX_HOST",
            "PINECONE_API_KEY",
        ] {
            assert!(
                err.0.contains(&format!("{name} is required but not set")),
                "{name}: {err}"
            );
        }
        assert_eq!(err.0.len(), 5, "{err}");
    }

    #[test]
    fn secrets_never_appear_in_errors_or_debug_output() {
        let text = problems(&with(&[("MAX_IN_FLIGHT", "0")]));
        assert!(!text.contains("SECRET"), "{text}");
        let s = read(&base()).unwrap();
        let debug = format!("{s:?}");
        assert!(!debug.contains("SECRET"), "{debug}");
    }

    #[test]
    fn a_blank_value_counts_as_unset() {
        let s = read(&with(&[
            ("MAX_IN_FLIGHT", " "),
            ("DEAD_LETTER_QUEUE_URL", ""),
        ]))
        .unwrap();
        assert_eq!(s.max_in_flight, 16);
        assert_eq!(s.common.dead_letter_queue_url, None);
    }
}
