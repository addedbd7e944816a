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
    /// Ceiling of the adaptive pacing of fetches (Pinecone's limit is per index).
    pub fetches_per_second: f64,
    /// `SIMULATION_TIME_SCALE`: 1 but in `scripts/simulate.sh`, which runs every service
    /// this many times faster; the adaptive pacing's clock and the OpenAI and Pinecone
    /// clients' retry back-offs then run as fast.
    pub pacing_time_scale: f64,
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
    /// Disk the downloads of this process's applies may take at once, in bytes
    /// (`DOWNLOAD_BUDGET_MB`; the pod's volume is sized for it).
    pub download_budget_bytes: u64,
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
            fetches_per_second: l.float_in("PINECONE_FETCHES_PER_SECOND", 50.0, 0.1, 10_000.0),
            pacing_time_scale: l.float_in("SIMULATION_TIME_SCALE", 1.0, 1.0, 1_000.0),
        };

        let metrics_addr = l.socket_addr_or("METRICS_ADDR", "0.0.0.0:9090");
        let max_in_flight = l.number_in("MAX_IN_FLIGHT", 16, 1, 1000);
        // As low as 2 (a heartbeat of 1 s below it): the simulation runs every clock 20
        // times faster, and a visibility of 3 s there stands for one of a minute.
        let visibility = l.number_in("VISIBILITY_TIMEOUT_SECONDS", 120, 2, MAX_VISIBILITY_SECONDS);
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
        let budget_mb = l.number_in("DOWNLOAD_BUDGET_MB", 1536, 1, 1 << 20);
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
            download_budget_bytes: budget_mb << 20,
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
            pinecone_fetches_per_second = self.pinecone.fetches_per_second,
            simulation_time_scale = self.pinecone.pacing_time_scale,
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
            download_budget_mb = self.download_budget_bytes >> 20,
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
#[path = "settings_tests.rs"]
mod tests;
