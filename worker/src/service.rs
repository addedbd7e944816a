//! The four things the worker asks of the batch-processing library, as a trait.
//!
//! The consumer is written against [`BatchService`] rather than the library type so that the
//! decision logic does not depend on how a batch is applied; the one production
//! implementation (for [`fleet_shared::finish::Services`]) lives at the bottom of this module.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use fleet_shared::model::{BatchStatus, BatchSummary};
use fleet_shared::openai::BatchObject;
use tokio_util::sync::CancellationToken;

/// An error of the batch service, classified so the handler can choose: retry later or
/// dead-letter.
pub trait ServiceError: std::error::Error + Send + Sync + 'static {
    /// Throttling, 5xx, timeouts, a lost lease: the same message may succeed later.
    fn is_transient(&self) -> bool;
    /// A bounded name for metrics and the dead-letter `reason` attribute.
    fn reason(&self) -> &'static str;
    /// A delay the remote side asked for; the message is not retried sooner.
    fn retry_after(&self) -> Option<Duration>;
}

/// What an apply did, as far as the worker reports it.
pub trait ApplyOutcome: serde::Serialize + std::fmt::Debug + Send + Sync + 'static {
    /// Verdicts applied, by verdict name.
    fn labels_by_verdict(&self) -> &BTreeMap<String, u64>;
    /// Results skipped, by reason.
    fn skipped(&self) -> &BTreeMap<String, u64>;
    /// The summary was no longer PENDING: someone else finished the batch.
    fn already_done(&self) -> bool;
    /// The summary's status after the apply.
    fn summary_status(&self) -> Option<BatchStatus>;
    /// A few lines for people (`worker apply-batch`).
    fn human(&self) -> String;
}

/// Reading, checking, cancelling and applying one batch.
pub trait BatchService: Send + Sync + 'static {
    type Error: ServiceError;
    type Report: ApplyOutcome;

    /// The BatchSummary; an unknown batch is a permanent error.
    fn load_summary(
        &self,
        batch_id: &str,
    ) -> impl Future<Output = Result<BatchSummary, Self::Error>> + Send;

    /// The batch as OpenAI reports it now.
    fn check(
        &self,
        summary: &BatchSummary,
    ) -> impl Future<Output = Result<BatchObject, Self::Error>> + Send;

    /// Cancels the batch at OpenAI.
    fn cancel(
        &self,
        summary: &BatchSummary,
    ) -> impl Future<Output = Result<BatchObject, Self::Error>> + Send;

    /// Applies a terminal batch as `lease_owner` (the holder of the batch's lease); returns
    /// early with a transient error once `stop` is cancelled or the lease passed to another.
    fn apply(
        &self,
        summary: &BatchSummary,
        batch: &BatchObject,
        stop: &CancellationToken,
        lease_owner: &str,
    ) -> impl Future<Output = Result<Self::Report, Self::Error>> + Send;
}

mod finish_impl {
    //! The production [`BatchService`]: the shared library's batch processing.

    use std::collections::BTreeMap;
    use std::future::Future;
    use std::time::Duration;

    use fleet_shared::finish::{ApplyReport, FinishError, Services};
    use fleet_shared::model::{BatchStatus, BatchSummary};
    use fleet_shared::openai::BatchObject;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::{AbortOnDropHandle, LocalPoolHandle};
    use tracing::Instrument;

    use super::{ApplyOutcome, BatchService, ServiceError};

    /// Single-threaded runtimes for applies (see [`BatchService::apply`] below); each runs many
    /// applies at once, as they mostly wait on the network.
    fn apply_pool() -> &'static LocalPoolHandle {
        static POOL: std::sync::OnceLock<LocalPoolHandle> = std::sync::OnceLock::new();
        POOL.get_or_init(|| {
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8));
            LocalPoolHandle::new(threads)
        })
    }

    impl ServiceError for FinishError {
        fn is_transient(&self) -> bool {
            FinishError::is_transient(self)
        }
        fn reason(&self) -> &'static str {
            FinishError::reason(self)
        }
        fn retry_after(&self) -> Option<Duration> {
            FinishError::retry_after(self)
        }
    }

    impl ApplyOutcome for ApplyReport {
        fn labels_by_verdict(&self) -> &BTreeMap<String, u64> {
            &self.labels_by_verdict
        }
        fn skipped(&self) -> &BTreeMap<String, u64> {
            &self.skipped
        }
        fn already_done(&self) -> bool {
            self.already_done
        }
        fn summary_status(&self) -> Option<BatchStatus> {
            self.summary_status
        }
        fn human(&self) -> String {
            ApplyReport::human(self)
        }
    }

    impl BatchService for Services {
        type Error = FinishError;
        type Report = ApplyReport;

        fn load_summary(
            &self,
            batch_id: &str,
        ) -> impl Future<Output = Result<BatchSummary, FinishError>> + Send {
            Services::load_summary(self, batch_id)
        }

        fn check(
            &self,
            summary: &BatchSummary,
        ) -> impl Future<Output = Result<BatchObject, FinishError>> + Send {
            Services::check(self, summary)
        }

        fn cancel(
            &self,
            summary: &BatchSummary,
        ) -> impl Future<Output = Result<BatchObject, FinishError>> + Send {
            Services::cancel(self, summary)
        }

        fn apply(
            &self,
            summary: &BatchSummary,
            batch: &BatchObject,
            stop: &CancellationToken,
            lease_owner: &str,
        ) -> impl Future<Output = Result<ApplyReport, FinishError>> + Send {
            let services = self.clone();
            let (summary, batch, stop) = (summary.clone(), batch.clone(), stop.clone());
            let owner = lease_owner.to_owned();
            async move {
                // `Services::apply` is Send in fact, but rustc cannot prove it (its stream
                // combinators over closures taking references hit rust-lang/rust#102211), so it
                // cannot be awaited on the multi-threaded runtime. It runs on a single-threaded
                // pool instead; dropping this future (deadline, shutdown) aborts it there.
                let span = tracing::Span::current();
                let task = apply_pool().spawn_pinned(move || {
                    async move { services.apply(&summary, &batch, &stop, &owner).await }
                        .instrument(span)
                });
                match AbortOnDropHandle::new(task).await {
                    Ok(result) => result,
                    Err(e) => Err(FinishError::Io {
                        what: "the apply task",
                        message: e.to_string(),
                    }),
                }
            }
        }
    }
}

/// The production service from the settings: the OpenAI and Pinecone clients beside the store.
pub fn build_services(
    settings: &crate::settings::Settings,
    store: fleet_shared::store::Store,
) -> anyhow::Result<fleet_shared::finish::Services> {
    use fleet_shared::openai::{OpenAiClient, OpenAiConfig};
    use fleet_shared::pinecone::{PineconeClient, PineconeConfig};

    let openai = OpenAiClient::new(OpenAiConfig {
        base_url: settings.openai.base_url.clone(),
        organization: settings.openai.organization.clone(),
        project: settings.openai.project.clone(),
        ..OpenAiConfig::new(settings.openai.api_key.clone())
    })?;
    let pinecone = PineconeClient::new(PineconeConfig {
        namespace: settings.pinecone.namespace.clone(),
        updates_per_second: settings.pinecone.updates_per_second,
        ..PineconeConfig::new(
            settings.pinecone.index_host.clone(),
            settings.pinecone.api_key.clone(),
        )
    })?;
    Ok(fleet_shared::finish::Services::new(store, openai, pinecone))
}
