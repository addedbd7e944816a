//! The shared library's batch processing as the worker runs it: the services built from the
//! settings, and the apply run on a single-threaded pool, inside the handling's progress and
//! lease fence.

use fleet_shared::finish::{ApplyReport, FinishError, Services};
use fleet_shared::model::BatchSummary;
use fleet_shared::openai::BatchObject;
use fleet_shared::{fence, progress};
use tokio_util::task::{AbortOnDropHandle, LocalPoolHandle};
use tracing::Instrument;

use crate::lease::LeaseHold;

/// Single-threaded runtimes for applies (see [`apply`]); each runs many applies at once, as
/// they mostly wait on the network.
fn apply_pool() -> &'static LocalPoolHandle {
    static POOL: std::sync::OnceLock<LocalPoolHandle> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8));
        LocalPoolHandle::new(threads)
    })
}

/// Applies a terminal batch while `hold` is ours. Dropping this future (deadline, shutdown, a
/// lost lease) aborts the apply.
pub async fn apply(
    services: &Services,
    summary: &BatchSummary,
    batch: &BatchObject,
    hold: &LeaseHold,
) -> Result<ApplyReport, FinishError> {
    let services = services.clone();
    let (summary, batch) = (summary.clone(), batch.clone());
    let (stop, owner) = (hold.stop.clone(), hold.owner.clone());
    // The task-locals of this handling do not cross into the pool's task by themselves.
    let progress = progress::current().unwrap_or_default();
    let fence = fence::current();
    let span = tracing::Span::current();
    // `Services::apply` is Send in fact, but rustc cannot prove it (its stream combinators
    // over closures taking references hit rust-lang/rust#102211), so it cannot be awaited on
    // the multi-threaded runtime. It runs on a single-threaded pool instead.
    let task = apply_pool().spawn_pinned(move || {
        let work = async move { services.apply(&summary, &batch, &stop, &owner).await };
        let work = progress.scope(work);
        async move {
            match fence {
                Some(fence) => fence.scope(work).await,
                None => work.await,
            }
        }
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

/// The production services from the settings: the OpenAI and Pinecone clients beside the store.
pub fn build_services(
    settings: &crate::settings::Settings,
    store: fleet_shared::store::Store,
) -> anyhow::Result<Services> {
    use fleet_shared::openai::{OpenAiClient, OpenAiConfig};
    use fleet_shared::pinecone::{PineconeClient, PineconeConfig};
    use fleet_shared::retry::RetryPolicy;

    let openai = OpenAiClient::new(OpenAiConfig {
        base_url: settings.openai.base_url.clone(),
        organization: settings.openai.organization.clone(),
        project: settings.openai.project.clone(),
        retry: RetryPolicy::default().scaled(settings.pinecone.pacing_time_scale),
        ..OpenAiConfig::new(settings.openai.api_key.clone())
    })?;
    let pinecone = PineconeClient::new(PineconeConfig {
        namespace: settings.pinecone.namespace.clone(),
        updates_per_second: settings.pinecone.updates_per_second,
        fetches_per_second: settings.pinecone.fetches_per_second,
        pacing_time_scale: settings.pinecone.pacing_time_scale,
        retry: RetryPolicy::default().scaled(settings.pinecone.pacing_time_scale),
        ..PineconeConfig::new(
            settings.pinecone.index_host.clone(),
            settings.pinecone.api_key.clone(),
        )
    })?;
    let mut services = Services::new(store, openai.clone(), pinecone);
    // One budget per process, shared by its applies; sizes asked of OpenAI before downloading.
    services.options.download_budget = Some(fleet_shared::finish::DownloadBudget::new(
        settings.download_budget_bytes,
    ));
    services.file_sizes = Some(std::sync::Arc::new(openai));
    Ok(services)
}
