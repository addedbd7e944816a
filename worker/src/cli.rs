//! The command line. Every setting of docs/spec/interface.md is also a flag of the same meaning; flags
//! are plain strings here so that a bad flag value and a bad environment value are reported the
//! same way, by [`crate::settings::Settings::read`], with exit code 64.

use clap::{Parser, Subcommand};

/// Declares the setting flags once, so the flag list and the variable names cannot drift apart.
macro_rules! setting_flags {
    ($( $field:ident => $env:literal, $help:literal; )*) => {
        /// The flags that mirror environment variables.
        #[derive(Debug, Default, Clone, clap::Args)]
        pub struct SettingFlags {
            $(
                #[arg(
                    long,
                    global = true,
                    value_name = "VALUE",
                    help = concat!($help, " [env: ", $env, "]")
                )]
                pub $field: Option<String>,
            )*
        }

        impl SettingFlags {
            /// `(variable name, flag value)` for [`fleet_shared::config::Lookup::new`].
            pub fn pairs(&self) -> Vec<(&'static str, Option<String>)> {
                vec![$(($env, self.$field.clone())),*]
            }
        }
    };
}

setting_flags! {
    dynamodb_table_name => "DYNAMODB_TABLE_NAME", "The receipts table";
    queue_url => "QUEUE_URL", "The work queue's URL";
    dead_letter_queue_url => "DEAD_LETTER_QUEUE_URL",
        "Dead-letter queue for poison messages (without it they are left to the redrive policy)";
    openai_base_url => "OPENAI_BASE_URL", "OpenAI API base, including /v1 [default: https://api.openai.com/v1]";
    openai_api_key => "OPENAI_API_KEY", "OpenAI API key (secret; prefer the variable)";
    openai_organization => "OPENAI_ORGANIZATION", "Sent as OpenAI-Organization";
    openai_project => "OPENAI_PROJECT", "Sent as OpenAI-Project";
    pinecone_index_host => "PINECONE_INDEX_HOST", "The Pinecone index's data-plane URL";
    pinecone_api_key => "PINECONE_API_KEY", "Pinecone API key (secret; prefer the variable)";
    pinecone_namespace => "PINECONE_NAMESPACE", "Namespace of word vectors [default: words]";
    pinecone_updates_per_second => "PINECONE_UPDATES_PER_SECOND",
        "Ceiling of this process's adaptive pacing of metadata updates, per second [default: 90]";
    pinecone_fetches_per_second => "PINECONE_FETCHES_PER_SECOND",
        "Ceiling of this process's adaptive pacing of fetches, per second (Pinecone's limit is per index) [default: 50]";
    simulation_time_scale => "SIMULATION_TIME_SCALE",
        "Only for scripts/simulate.sh, whose services run this many times faster: the pacing's clock and the clients' retry back-offs run as fast, 1..=1000 [default: 1]";
    metrics_addr => "METRICS_ADDR", "Where /metrics, /healthz and /readyz listen [default: 0.0.0.0:9090]";
    max_in_flight => "MAX_IN_FLIGHT", "Messages handled at once, 1..=1000 [default: 16]";
    visibility_timeout_seconds => "VISIBILITY_TIMEOUT_SECONDS",
        "Visibility taken on receive and renewed by the heartbeat; also the lease length, 2..=43200 [default: 120]";
    heartbeat_seconds => "HEARTBEAT_SECONDS",
        "How often visibility and lease are renewed (each on its own); below the visibility timeout [default: a third of it, at most 300]";
    recheck_min_seconds => "RECHECK_MIN_SECONDS", "Shortest delay before re-checking an unfinished batch [default: 60]";
    recheck_max_seconds => "RECHECK_MAX_SECONDS", "Longest delay before re-checking an unfinished batch, at most 86400 [default: 900]";
    retry_min_seconds => "RETRY_MIN_SECONDS",
        "Back-off after a transient error or an error of the deployment, on the first try [default: 5]";
    retry_max_seconds => "RETRY_MAX_SECONDS",
        "Cap of the back-off after transient errors and errors of the deployment [default: 900]";
    message_deadline_seconds => "MESSAGE_DEADLINE_SECONDS",
        "Longest a handling may go without progress before it is abandoned and retried [default: 300]";
    stuck_validating_seconds => "STUCK_VALIDATING_SECONDS",
        "A batch validating longer than this after submission is reported stuck [default: 300]";
    shutdown_grace_seconds => "SHUTDOWN_GRACE_SECONDS", "Drain time after SIGTERM/SIGINT [default: 25]";
    max_concurrent_applies => "MAX_CONCURRENT_APPLIES",
        "Finished batches applied at once, 1..=64, at most MAX_IN_FLIGHT [default: 2]";
    download_budget_mb => "DOWNLOAD_BUDGET_MB",
        "Disk the downloads of this worker's applies may take at once, in MiB; size the pod's volume above it [default: 1536]";
    deployment_unready_seconds => "DEPLOYMENT_UNREADY_SECONDS",
        "How long /readyz answers 503 after an error of the deployment (rejected key, access denied, missing table or queue) [default: 60]";
    log_format => "LOG_FORMAT", "json or text [default: json]";
    rust_log => "RUST_LOG", "Log filter [default: info]";
}

/// Consumes the work queue: checks OpenAI batches, re-schedules unfinished ones and applies
/// finished ones. Without a command it runs until SIGTERM/SIGINT, then drains and exits 0.
///
/// Exit codes: 0 success; 64 bad configuration or usage; 1 other failure.
#[derive(Debug, Parser)]
#[command(name = "worker", version)]
pub struct Cli {
    #[command(flatten)]
    pub settings: SettingFlags,

    /// Also exit 0 once the work queue has no visible, in-flight or delayed messages and this
    /// worker holds none.
    #[arg(long)]
    pub exit_when_idle: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check one batch once; when it is finished at OpenAI, take its lease and apply it.
    ApplyBatch {
        /// The batch id (the BatchSummary's, not OpenAI's).
        batch_id: String,
        /// Print the apply report as JSON instead of a readable summary.
        #[arg(long)]
        json: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_parse_and_map_to_variables() {
        let cli = Cli::try_parse_from([
            "worker",
            "--max-in-flight",
            "4",
            "--exit-when-idle",
            "apply-batch",
            "b-1",
            "--json",
            "--queue-url",
            "http://q/1",
        ])
        .unwrap();
        assert!(cli.exit_when_idle);
        let pairs = cli.settings.pairs();
        assert!(pairs.contains(&("MAX_IN_FLIGHT", Some("4".into()))));
        assert!(pairs.contains(&("QUEUE_URL", Some("http://q/1".into()))));
        assert!(pairs.contains(&("DYNAMODB_TABLE_NAME", None)));
        match cli.command {
            Some(Command::ApplyBatch { batch_id, json }) => {
                assert_eq!(batch_id, "b-1");
                assert!(json);
            }
            None => panic!("expected apply-batch"),
        }
    }

    #[test]
    fn help_names_every_variable() {
        let help = Cli::command().render_long_help().to_string();
        for (name, _) in SettingFlags::default().pairs() {
            assert!(
                help.contains(&format!("[env: {name}]")),
                "{name} missing in help"
            );
        }
        Cli::command().debug_assert();
    }

    #[test]
    fn unknown_flags_are_usage_errors() {
        let err = Cli::try_parse_from(["worker", "--no-such-flag"]).unwrap_err();
        assert!(err.use_stderr());
    }
}
