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

    /// Applies a terminal batch; returns early with a transient error once `stop` is cancelled.
    fn apply(
        &self,
        summary: &BatchSummary,
        batch: &BatchObject,
        stop: &CancellationToken,
    ) -> impl Future<Output = Result<Self::Report, Self::Error>> + Send;
}
