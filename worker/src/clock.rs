//! Wall-clock time as the store and the OpenAI API count it. The decision logic takes the time
//! as an argument; only the edges of the worker read the clock, through here.

/// Unix milliseconds (leases and schedule markers).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Unix seconds (OpenAI timestamps).
pub fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}
