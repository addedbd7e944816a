//! Disk for the batch files an apply downloads: a per-process budget shared by the applies
//! running at once, checked against each file's size before downloading it.
//!
//! Why: output files reach hundreds of MB and a worker pod's `emptyDir` is small; several big
//! batches finishing together used to fill it, get the pod evicted, and have every message it
//! held redelivered to the next pod, which the same batches evicted in turn. So an apply first
//! learns its files' sizes (their `Content-Length`, through [`FileSizes`]), then reserves their
//! sum from the [`DownloadBudget`] in one step (waiting while other applies hold it; two applies
//! each holding part of what they need would wait for each other forever), and only then
//! downloads. Files that can never fit, however long the apply waits, are a permanent error
//! with a clear message ([`FinishError::DownloadTooLarge`]). Each file's share of the
//! reservation is given back as soon as the file is removed, which is as soon as the apply has
//! read the last chunk of receipts that has lines in it.
//!
//! Without a way to learn sizes beforehand (no [`FileSizes`], or it does not know), the apply
//! reserves the whole budget, downloads alone, and keeps only what the files turned out to take:
//! slower when applies overlap, and a file bigger than the budget is found (and removed, and
//! reported) only once downloaded.
//!
//! Waiting for room is not progress of the handling (its deadline keeps running): an apply that
//! cannot get room before the deadline is abandoned and retried later, like any other wait.

use std::sync::Arc;

use futures::future::BoxFuture;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::FinishError;
use crate::openai::client::OpenAiError;

/// Reservations are counted in KiB (a semaphore takes at most `u32` permits at once).
const UNIT: u64 = 1024;

/// Bytes of disk the downloads of all applies in this process may take at once
/// (`DOWNLOAD_BUDGET_MB`). Share one per process between the applies (an `Arc`).
#[derive(Debug)]
pub struct DownloadBudget {
    units: Arc<Semaphore>,
    total_units: u32,
}

impl DownloadBudget {
    pub fn new(bytes: u64) -> Arc<Self> {
        let total_units = u32::try_from(bytes / UNIT).unwrap_or(u32::MAX);
        Arc::new(DownloadBudget {
            units: Arc::new(Semaphore::new(total_units as usize)),
            total_units,
        })
    }

    /// The whole budget, in bytes.
    pub fn bytes(&self) -> u64 {
        u64::from(self.total_units) * UNIT
    }

    /// Bytes not reserved at the moment.
    pub fn available(&self) -> u64 {
        self.units.available_permits() as u64 * UNIT
    }

    fn units_for(bytes: u64) -> u64 {
        bytes.div_ceil(UNIT)
    }

    /// Reserves `bytes`, waiting until that much is free (first come, first served: a large
    /// reservation is not overtaken by smaller ones forever). `None` when `bytes` is more than
    /// the whole budget: it can never be had.
    pub async fn reserve(self: &Arc<Self>, bytes: u64) -> Option<Reservation> {
        let units = Self::units_for(bytes);
        if units > u64::from(self.total_units) {
            return None;
        }
        let permit = Arc::clone(&self.units)
            .acquire_many_owned(u32::try_from(units).unwrap_or(u32::MAX))
            .await
            .ok()?;
        Some(Reservation::new(self, permit))
    }

    /// [`reserve`](Self::reserve), given up when `stop` is cancelled.
    async fn reserve_or_stop(
        self: &Arc<Self>,
        bytes: u64,
        stop: &CancellationToken,
    ) -> Result<Option<Reservation>, FinishError> {
        tokio::select! {
            r = self.reserve(bytes) => Ok(r),
            () = stop.cancelled() => Err(FinishError::Stopped {
                writes: 0,
                why: "told to stop while waiting for download room",
            }),
        }
    }

    fn report(&self) {
        let reserved = u64::from(self.total_units) - self.units.available_permits() as u64;
        metrics::gauge!("fleet_download_budget_reserved_bytes").set((reserved * UNIT) as f64);
    }
}

/// Room reserved in a [`DownloadBudget`], given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<DownloadBudget>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    fn new(budget: &Arc<DownloadBudget>, permit: OwnedSemaphorePermit) -> Self {
        let r = Reservation {
            budget: Arc::clone(budget),
            permit: Some(permit),
        };
        budget.report();
        r
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.permit
            .as_ref()
            .map_or(0, |p| p.num_permits() as u64 * UNIT)
    }

    /// Takes `bytes` (rounded up to the budget's unit, at most what is held) out of this
    /// reservation into a reservation of its own: one file's share.
    fn split(&mut self, bytes: u64) -> Reservation {
        let held = self.permit.as_ref().map_or(0, |p| p.num_permits());
        let units = usize::try_from(DownloadBudget::units_for(bytes))
            .unwrap_or(usize::MAX)
            .min(held);
        let permit = self.permit.as_mut().and_then(|p| p.split(units));
        Reservation {
            budget: Arc::clone(&self.budget),
            permit,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.permit.take().is_some() {
            self.budget.report();
        }
    }
}

/// How an apply learns the size of an OpenAI file before downloading it: what its download
/// would announce as `Content-Length`. `Ok(None)`: unknown (the apply then downloads alone,
/// see the module's doc). The OpenAI client answers it with `GET /files/{id}`'s `bytes`.
pub trait FileSizes: Send + Sync {
    fn size<'a>(&'a self, file_id: &'a str) -> BoxFuture<'a, Result<Option<u64>, OpenAiError>>;
}

impl FileSizes for crate::openai::client::OpenAiClient {
    fn size<'a>(&'a self, file_id: &'a str) -> BoxFuture<'a, Result<Option<u64>, OpenAiError>> {
        Box::pin(self.file_size(file_id))
    }
}

/// One file to download for an apply.
pub(super) struct Wanted<'a> {
    pub(super) file_id: &'a str,
    /// The file may be gone (input, error file): 404/410 is not an error.
    pub(super) optional: bool,
}

/// The room reserved for an apply's downloads, handed out file by file.
pub(super) struct Room {
    /// Reserved and not yet handed to a file; `None` without a budget.
    held: Option<Reservation>,
    /// Sizes known beforehand, in the order of the files wanted.
    sizes: Vec<Option<u64>>,
    /// Whether the sizes were unknown and the whole budget was taken.
    whole: bool,
    budget: Option<Arc<DownloadBudget>>,
}

impl Room {
    /// Reserves the room `files` need in `budget` (none without one), waiting for it.
    pub(super) async fn reserve(
        budget: Option<&Arc<DownloadBudget>>,
        sizes: Option<&Arc<dyn FileSizes>>,
        batch_id: &str,
        files: &[Wanted<'_>],
        stop: &CancellationToken,
    ) -> Result<Room, FinishError> {
        let Some(budget) = budget else {
            return Ok(Room {
                held: None,
                sizes: Vec::new(),
                whole: false,
                budget: None,
            });
        };
        let mut known = Vec::with_capacity(files.len());
        for f in files {
            known.push(match sizes {
                Some(sizes) => match sizes.size(f.file_id).await {
                    Ok(size) => size,
                    // Gone: its download will say so and take no room.
                    Err(e) if f.optional && super::downloads::is_gone(&e) => Some(0),
                    Err(e) => return Err(FinishError::OpenAi(e)),
                },
                None => None,
            });
        }
        let whole = known.iter().any(Option::is_none);
        let needed: u64 = known.iter().map(|s| s.unwrap_or(0)).sum();
        // Each file's share is rounded up on its own: it is given back on its own.
        let ask: u64 = known
            .iter()
            .map(|s| DownloadBudget::units_for(s.unwrap_or(0)) * UNIT)
            .sum();
        if !whole && ask > budget.bytes() {
            return Err(FinishError::DownloadTooLarge {
                batch_id: batch_id.to_owned(),
                needed,
                budget: budget.bytes(),
            });
        }
        let ask = if whole { budget.bytes() } else { ask };
        let held = budget.reserve_or_stop(ask, stop).await?;
        Ok(Room {
            held,
            sizes: known,
            whole,
            budget: Some(Arc::clone(budget)),
        })
    }

    /// The share of the `i`-th file wanted, once downloaded (`len` bytes on disk); an error
    /// when the files downloaded so far took more than the whole budget (found only without
    /// sizes known beforehand).
    pub(super) fn take(
        &mut self,
        i: usize,
        len: u64,
        batch_id: &str,
        downloaded_so_far: u64,
    ) -> Result<Option<Reservation>, FinishError> {
        let Some(held) = self.held.as_mut() else {
            return Ok(None);
        };
        let budget = self.budget.as_ref().map_or(0, |b| b.bytes());
        if self.whole && downloaded_so_far > budget {
            return Err(FinishError::DownloadTooLarge {
                batch_id: batch_id.to_owned(),
                needed: downloaded_so_far,
                budget,
            });
        }
        let share = if self.whole {
            len
        } else {
            self.sizes.get(i).copied().flatten().unwrap_or(len)
        };
        Ok(Some(held.split(share)))
    }

    /// Gives back what no file took (the rest of a whole-budget reservation).
    pub(super) fn release_rest(&mut self) {
        self.held = None;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MIB: u64 = 1 << 20;

    #[tokio::test(start_paused = true)]
    async fn a_reservation_waits_for_room_and_gives_it_back_part_by_part() {
        let budget = DownloadBudget::new(10 * MIB);
        assert_eq!(budget.bytes(), 10 * MIB);
        let mut first = budget.reserve(8 * MIB).await.unwrap();
        assert_eq!(budget.available(), 2 * MIB);

        // A second apply needing 4 MiB waits until the first gives back enough.
        let waiting = {
            let budget = Arc::clone(&budget);
            tokio::spawn(async move { budget.reserve(4 * MIB).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished(), "2 MiB free: it waits");
        let output = first.split(5 * MIB); // one file's share
        assert_eq!((output.bytes(), first.bytes()), (5 * MIB, 3 * MIB));
        drop(first); // another file's share, removed: 5 MiB free
        let second = waiting.await.unwrap().unwrap();
        assert_eq!(second.bytes(), 4 * MIB);
        assert_eq!(budget.available(), MIB);
        drop((output, second));
        assert_eq!(budget.available(), 10 * MIB);
    }

    #[tokio::test(start_paused = true)]
    async fn a_large_reservation_is_not_overtaken_by_smaller_ones() {
        let budget = DownloadBudget::new(10 * MIB);
        let first = budget.reserve(8 * MIB).await.unwrap();
        let spawn = |bytes| {
            let budget = Arc::clone(&budget);
            tokio::spawn(async move { budget.reserve(bytes).await })
        };
        let large = spawn(6 * MIB);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let small = spawn(MIB);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !small.is_finished(),
            "1 MiB would fit, but the 6 MiB one asked first"
        );
        drop(first);
        let (large, small) = (large.await.unwrap(), small.await.unwrap());
        assert_eq!(large.map(|r| r.bytes()), Some(6 * MIB));
        assert_eq!(small.map(|r| r.bytes()), Some(MIB));
    }

    #[tokio::test]
    async fn a_reservation_bigger_than_the_budget_never_fits() {
        let budget = DownloadBudget::new(10 * MIB);
        assert!(budget.reserve(10 * MIB + 1).await.is_none());
        assert!(budget.reserve(10 * MIB).await.is_some());
        assert_eq!(budget.available(), 10 * MIB, "dropped at once");
        // Sizes are rounded up to whole KiB.
        let r = budget.reserve(1).await.unwrap();
        assert_eq!(r.bytes(), 1024);
    }
}
