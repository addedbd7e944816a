//! The writes of one chunk, in the order docs/spec/processing-rules.md prescribes, each behind the
//! [`Gate`] (stop token, drill budget).

mod vectors;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{StreamExt, TryStreamExt, stream};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::apply::Phases;
use super::report::{ApplyReport, WriteCounts};
use super::result_keys::{HeldResultKeys, SharedKeys};
use super::{FinishError, Services};
use crate::model::{CompletionBatchResult, CompletionBatchVerdict, ValidationStatus, WordKey};
use crate::plan::{Plan, StatusChange};
use crate::store::{BATCH_WRITE_LIMIT, Created, Transition};

/// Checks, before every write, that the apply may go on (stop token, drill budget), and counts.
/// A chunk's stages write through their own [`Gate::scoped`] gate, which counts their writes
/// apart and adds them to the apply's.
pub(super) struct Gate<'a> {
    stop: &'a CancellationToken,
    services: &'a Services,
    writes: AtomicU64,
    parent: Option<&'a Gate<'a>>,
}

impl<'a> Gate<'a> {
    pub(super) fn new(stop: &'a CancellationToken, services: &'a Services) -> Self {
        Gate {
            stop,
            services,
            writes: AtomicU64::new(0),
            parent: None,
        }
    }

    /// A gate with the same stop token and budget that counts its own writes (and adds them to
    /// this one's): a chunk's writes, while the stages of other chunks write at the same time.
    pub(super) fn scoped(&'a self) -> Gate<'a> {
        Gate {
            stop: self.stop,
            services: self.services,
            writes: AtomicU64::new(0),
            parent: Some(self),
        }
    }

    /// Fails when the apply was told to stop; writes nothing, counts nothing (a chunk checks
    /// it before reading, so a stopped handling does not read what it will not write).
    pub(super) fn check(&self) -> Result<(), FinishError> {
        if self.stop.is_cancelled() {
            return Err(FinishError::Stopped {
                writes: usize::try_from(self.total()).unwrap_or(usize::MAX),
                why: "told to stop",
            });
        }
        Ok(())
    }

    /// Writes made through this gate so far.
    pub(super) fn count(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// Writes made through the apply's gate (the outermost) so far.
    fn total(&self) -> u64 {
        self.parent.map_or_else(|| self.count(), Gate::total)
    }

    fn counted(&self) {
        self.writes.fetch_add(1, Ordering::SeqCst);
        if let Some(parent) = self.parent {
            parent.counted();
        }
    }

    /// Lets a write through whatever the stop token or the budget say (it still spends the
    /// budget, so a drill's "stop before write k + 1" counts it), for a write that finishes
    /// one already made: the journal rows of resets done.
    pub(super) fn pass_anyway(&self) {
        if let Some(budget) = &self.services.options.write_budget {
            budget.take();
        }
        self.counted();
    }

    pub(super) fn pass(&self) -> Result<(), FinishError> {
        self.check()?;
        let writes = usize::try_from(self.total()).unwrap_or(usize::MAX);
        if let Some(budget) = &self.services.options.write_budget
            && !budget.take()
        {
            return Err(FinishError::Stopped {
                writes,
                why: "write budget spent",
            });
        }
        self.counted();
        Ok(())
    }
}

/// A chunk whose table writes are done, waiting for its vectors and result rows.
pub(super) struct LabelsWritten {
    pub(super) plan: Plan,
    /// Words whose verdicts an earlier run (or the other applier) had applied already.
    rewrite: BTreeSet<WordKey>,
}

/// The journal of a chunk's decisions.
async fn write_journal(
    services: &Services,
    gate: &Gate<'_>,
    plan: &Plan,
    report: &mut ApplyReport,
    phases: &mut Phases,
) -> Result<(), FinishError> {
    let store = &services.store;
    let concurrency = services.options.label_concurrency.max(1);

    // 1. The journal of decisions. Rows decided from PENDING are the same whoever writes them
    // (a batch put); a row decided from a label found changed (a conflict) goes only where
    // the label has none yet: it must not replace another applier's row from PENDING.
    let (fresh, conflicts): (Vec<&CompletionBatchVerdict>, Vec<_>) = plan
        .verdicts
        .iter()
        .partition(|v| v.previous_status == ValidationStatus::Pending);
    report.verdict_rows += plan.verdicts.len() as u64;
    let fresh = fresh
        .into_iter()
        .map(CompletionBatchVerdict::to_item)
        .collect();
    put_chunks(services, gate, fresh).await?;
    let _: Vec<Created> = stream::iter(conflicts)
        .map(|row| async move {
            gate.pass()?;
            Ok::<_, FinishError>(store.put_verdict_if_absent(row).await?)
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    phases.mark(report, "write_journal");
    Ok(())
}

/// A chunk's first writes, in order: journal; status changes; corrections; resets and their
/// journal rows. [`write_vectors_and_results`] follows (the summary is written once after every
/// chunk).
pub(super) async fn write_labels(
    services: &Services,
    gate: &Gate<'_>,
    plan: Plan,
    report: &mut ApplyReport,
    phases: &mut Phases,
) -> Result<LabelsWritten, FinishError> {
    write_journal(services, gate, &plan, report, phases).await?;
    let store = &services.store;
    let concurrency = services.options.label_concurrency.max(1);

    // 2. Status changes; labels someone else changed meanwhile drop out of what follows.
    let outcomes = transitions(services, gate, &plan.status_changes, concurrency).await?;
    let mut conflicts = BTreeSet::new();
    for (change, t) in plan.status_changes.iter().zip(&outcomes) {
        match t {
            Transition::Applied | Transition::AlreadyInTarget => {
                *report
                    .labels_by_verdict
                    .entry(change.to.to_string())
                    .or_default() += 1;
            }
            Transition::Conflict { current } => {
                warn!(batch_id = %plan.batch_id, label = %change.label, ?current, "label changed by someone else; left alone");
                conflicts.insert(change.label.clone());
            }
        }
    }
    add_counts(&mut report.status_changes, &outcomes);
    // Words whose verdicts an earlier run (or the other applier) had applied already: it may
    // have written their vectors and stopped before verifying the write.
    let rewrite: BTreeSet<WordKey> = plan
        .status_changes
        .iter()
        .zip(&outcomes)
        .filter(|(_, t)| matches!(t, Transition::AlreadyInTarget))
        .map(|(c, _)| c.label.word.clone())
        .collect();
    phases.mark(report, "write_labels");
    let plan = plan.without_conflicts(&conflicts);

    // Corrections: create only if absent.
    let created: Vec<Created> = stream::iter(plan.corrections.iter())
        .map(|label| async move {
            gate.pass()?;
            Ok::<_, FinishError>(store.create_label_if_absent(label).await?)
        })
        .buffered(concurrency)
        .try_collect()
        .await?;
    let new = created.iter().filter(|c| **c == Created::Created).count() as u64;
    report.corrections_created += new;
    report.corrections_existing += created.len() as u64 - new;

    // Resets of targets without a verdict, each journaled once it succeeded. Every reset that
    // passed the gate runs to its end (a stop refuses only those not started), and the rows of
    // those done are written whatever happened to the others: a reset without its row is what
    // a re-run cannot tell from a label a newer batch claimed (only a crash between the two
    // leaves one).
    let resets: Vec<Result<Transition<ValidationStatus>, FinishError>> = stream::iter(&plan.resets)
        .map(|c| async move {
            gate.pass()?;
            Ok(store.transition_label(&c.label, c.from, c.to).await?)
        })
        .buffered(concurrency)
        .collect()
        .await;
    let rows: Vec<crate::model::Item> = plan
        .resets
        .iter()
        .zip(&resets)
        .filter(|(_, t)| matches!(t, Ok(Transition::Applied | Transition::AlreadyInTarget)))
        .map(|(c, _)| &c.label)
        .chain(&plan.already_reset)
        .map(|label| plan.reset_row(label).to_item())
        .collect();
    report.reset_rows += rows.len() as u64;
    for chunk in rows.chunks(BATCH_WRITE_LIMIT) {
        gate.pass_anyway();
        store.put_items_batched(chunk.to_vec()).await?;
    }
    let resets: Vec<Transition<ValidationStatus>> = resets.into_iter().collect::<Result<_, _>>()?;
    add_counts(&mut report.resets, &resets);
    phases.mark(report, "write_corrections_resets");
    Ok(LabelsWritten { plan, rewrite })
}

/// A chunk's last writes, after [`write_labels`]: vectors (written, then verified against the
/// table), then result rows. Chunks must come here in order (see `result_keys.rs`). The rows
/// a smaller image's row was found to hold are counted in `report.result_rows_kept`.
pub(super) async fn write_vectors_and_results(
    services: &Services,
    gate: &Gate<'_>,
    written: LabelsWritten,
    keys: &SharedKeys,
    held: &mut HeldResultKeys,
    report: &mut ApplyReport,
    phases: &mut Phases,
) -> Result<(), FinishError> {
    let LabelsWritten { plan, rewrite } = written;
    let store = &services.store;
    let concurrency = services.options.label_concurrency.max(1);

    // 3. Vector metadata: derived from the table, written, verified (`vectors.rs`).
    vectors::write_vectors(services, gate, &plan, &rewrite, report).await?;
    phases.mark(report, "write_vectors");

    // 4. CompletionBatchResult rows: those whose key no other target of the batch has, in
    // batches; each other one unless a smaller image's row holds its key.
    let (sole, shared): (Vec<_>, Vec<_>) = plan.results.iter().partition(|r| keys.sole(r));
    let sole: Vec<crate::model::Item> = sole
        .into_iter()
        .map(CompletionBatchResult::to_item)
        .collect();
    let sole_rows = sole.len() as u64;
    put_chunks(services, gate, sole).await?;
    let (known, send): (Vec<_>, Vec<_>) = shared.into_iter().partition(|r| held.held(r));
    let written: Vec<bool> = stream::iter(&send)
        .map(|row| async move {
            gate.pass()?;
            Ok::<_, FinishError>(store.put_result_row(row).await?)
        })
        .buffered(concurrency)
        .try_collect()
        .await?;
    for row in &send {
        held.hold(row);
    }
    let kept = (known.len() + written.iter().filter(|w| !**w).count()) as u64;
    report.result_rows += sole_rows + written.iter().filter(|w| **w).count() as u64;
    report.result_rows_kept += kept;
    phases.mark(report, "write_results");
    Ok(())
}

async fn transitions(
    services: &Services,
    gate: &Gate<'_>,
    changes: &[StatusChange],
    concurrency: usize,
) -> Result<Vec<Transition<ValidationStatus>>, FinishError> {
    stream::iter(changes)
        .map(|c| async move {
            gate.pass()?;
            Ok::<_, FinishError>(
                services
                    .store
                    .transition_label(&c.label, c.from, c.to)
                    .await?,
            )
        })
        .buffered(concurrency)
        .try_collect()
        .await
}

fn add_counts(c: &mut WriteCounts, outcomes: &[Transition<ValidationStatus>]) {
    for t in outcomes {
        match t {
            Transition::Applied => c.applied += 1,
            Transition::AlreadyInTarget => c.already += 1,
            Transition::Conflict { .. } => c.conflicts += 1,
        }
    }
}

/// Unconditional puts of deterministic rows, one gated call per chunk of 25, several at once.
async fn put_chunks(
    services: &Services,
    gate: &Gate<'_>,
    items: Vec<crate::model::Item>,
) -> Result<(), FinishError> {
    stream::iter(items.chunks(BATCH_WRITE_LIMIT))
        .map(|chunk| async move {
            gate.pass()?;
            services.store.put_items_batched(chunk.to_vec()).await?;
            Ok::<_, FinishError>(())
        })
        .buffer_unordered(services.options.label_concurrency.max(1))
        .try_collect()
        .await
}
