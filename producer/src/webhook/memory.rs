//! The two short memories of the receiver, both pure (the caller passes `now`, a
//! `tokio::time::Instant`, so tests run them on paused time):
//!
//! - [`SeenIds`]: `webhook-id`s answered 2xx lately. OpenAI re-sends an event whose answer it
//!   did not get, with the same id; a repeat is answered 2xx again without a second enqueue.
//!   This is only a saving: a second enqueue would start a new chain, leaving the first message
//!   a stale copy the worker drops, so forgetting (a restart, another replica) is harmless.
//! - [`PendingCache`]: OpenAI batch id → our batch id, from the GSI1 `STATUS#PENDING` listing.
//!   Listing thousands of pending batches for every event would cost a query per page per
//!   event, so one listing serves every event for [`PendingCache::max_age`]. An id it does not
//!   know triggers a new listing (a batch submitted after the last one), but at most once per
//!   [`PendingCache::min_refresh`], so a stream of events about other projects' batches costs
//!   one listing per interval, not one per event. A hit is confirmed by a strongly consistent
//!   read of the summary before anything is enqueued, so a stale entry costs one read, never a
//!   wrong enqueue.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// Remembered `webhook-id`s, each for `ttl`, at most `capacity` (oldest forgotten first).
#[derive(Debug)]
pub struct SeenIds {
    ttl: Duration,
    capacity: usize,
    order: VecDeque<(Instant, String)>,
    ids: HashMap<String, Instant>,
}

impl SeenIds {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        SeenIds {
            ttl,
            capacity: capacity.max(1),
            order: VecDeque::new(),
            ids: HashMap::new(),
        }
    }

    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < self.ttl && self.order.len() <= self.capacity {
                break;
            }
            let (at, id) = self.order.pop_front().expect("front exists");
            // Only forget the id if this entry is its latest one.
            if self.ids.get(&id) == Some(&at) {
                self.ids.remove(&id);
            }
        }
    }

    /// Whether `id` was remembered (and not yet forgotten) at `now`.
    pub fn contains(&mut self, id: &str, now: Instant) -> bool {
        self.expire(now);
        self.ids.contains_key(id)
    }

    /// Remembers `id` from `now`.
    pub fn insert(&mut self, id: &str, now: Instant) {
        self.ids.insert(id.to_owned(), now);
        self.order.push_back((now, id.to_owned()));
        self.expire(now);
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// What the cache says about an OpenAI batch id at some instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheAnswer {
    /// Listed as pending in a listing younger than `max_age`: our batch id.
    Hit(String),
    /// Not in a listing younger than `min_refresh`: unknown (no new listing yet).
    Unknown,
    /// List again, then ask [`PendingCache::after_refresh`].
    Refresh,
}

#[derive(Debug)]
pub struct PendingCache {
    max_age: Duration,
    min_refresh: Duration,
    loaded_at: Option<Instant>,
    by_openai_id: HashMap<String, String>,
}

impl PendingCache {
    pub fn new(max_age: Duration, min_refresh: Duration) -> Self {
        PendingCache {
            max_age,
            min_refresh: min_refresh.min(max_age),
            loaded_at: None,
            by_openai_id: HashMap::new(),
        }
    }

    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    pub fn min_refresh(&self) -> Duration {
        self.min_refresh
    }

    pub fn get(&self, openai_batch_id: &str, now: Instant) -> CacheAnswer {
        let Some(loaded_at) = self.loaded_at else {
            return CacheAnswer::Refresh;
        };
        let age = now.duration_since(loaded_at);
        if age >= self.max_age {
            return CacheAnswer::Refresh;
        }
        match self.by_openai_id.get(openai_batch_id) {
            Some(batch_id) => CacheAnswer::Hit(batch_id.clone()),
            None if age >= self.min_refresh => CacheAnswer::Refresh,
            None => CacheAnswer::Unknown,
        }
    }

    /// Replaces the listing (pairs of OpenAI batch id and our batch id) as of `now`.
    pub fn replace(&mut self, pairs: impl IntoIterator<Item = (String, String)>, now: Instant) {
        self.by_openai_id = pairs.into_iter().collect();
        self.loaded_at = Some(now);
    }

    /// The answer from a listing just made: a hit or unknown, never another refresh.
    pub fn after_refresh(&self, openai_batch_id: &str) -> Option<String> {
        self.by_openai_id.get(openai_batch_id).cloned()
    }

    pub fn len(&self) -> usize {
        self.by_openai_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_openai_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn seen_ids_are_forgotten_after_their_ttl() {
        let mut seen = SeenIds::new(600 * SECOND, 100);
        let start = Instant::now();
        assert!(!seen.contains("wh_1", start));
        seen.insert("wh_1", start);
        advance(599 * SECOND).await;
        assert!(seen.contains("wh_1", Instant::now()));
        seen.insert("wh_2", Instant::now());
        advance(SECOND).await;
        assert!(!seen.contains("wh_1", Instant::now()), "600 s after");
        assert!(seen.contains("wh_2", Instant::now()));
        assert_eq!(seen.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_repeat_renews_the_memory() {
        let mut seen = SeenIds::new(10 * SECOND, 100);
        seen.insert("wh_1", Instant::now());
        advance(8 * SECOND).await;
        seen.insert("wh_1", Instant::now());
        advance(8 * SECOND).await;
        assert!(
            seen.contains("wh_1", Instant::now()),
            "16 s after the first, 8 after the repeat"
        );
        advance(2 * SECOND).await;
        assert!(!seen.contains("wh_1", Instant::now()));
        assert!(seen.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_memory_is_bounded() {
        let mut seen = SeenIds::new(600 * SECOND, 3);
        for i in 0..5 {
            seen.insert(&format!("wh_{i}"), Instant::now());
            advance(SECOND).await;
        }
        let now = Instant::now();
        assert!(!seen.contains("wh_0", now) && !seen.contains("wh_1", now));
        assert!(seen.contains("wh_2", now) && seen.contains("wh_4", now));
        assert_eq!(seen.len(), 3);
    }

    fn pairs(ids: &[(&str, &str)]) -> Vec<(String, String)> {
        ids.iter()
            .map(|(o, b)| ((*o).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_listing_serves_hits_until_it_is_old() {
        let mut cache = PendingCache::new(60 * SECOND, 2 * SECOND);
        assert_eq!(cache.get("batch_a", Instant::now()), CacheAnswer::Refresh);
        cache.replace(pairs(&[("batch_a", "a")]), Instant::now());
        assert_eq!(cache.after_refresh("batch_a").as_deref(), Some("a"));
        advance(59 * SECOND).await;
        assert_eq!(
            cache.get("batch_a", Instant::now()),
            CacheAnswer::Hit("a".into())
        );
        advance(SECOND).await;
        assert_eq!(cache.get("batch_a", Instant::now()), CacheAnswer::Refresh);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_id_lists_again_at_most_once_per_min_refresh() {
        let mut cache = PendingCache::new(60 * SECOND, 2 * SECOND);
        cache.replace(pairs(&[("batch_a", "a")]), Instant::now());
        assert_eq!(cache.after_refresh("batch_new"), None);
        advance(SECOND).await;
        assert_eq!(
            cache.get("batch_new", Instant::now()),
            CacheAnswer::Unknown,
            "1 s after a listing: no new one"
        );
        advance(SECOND).await;
        assert_eq!(cache.get("batch_new", Instant::now()), CacheAnswer::Refresh);
        cache.replace(
            pairs(&[("batch_a", "a"), ("batch_new", "n")]),
            Instant::now(),
        );
        assert_eq!(
            cache.get("batch_new", Instant::now()),
            CacheAnswer::Hit("n".into())
        );
        assert_eq!(cache.len(), 2);
    }
}
