//! Wall-clock helpers shared by the services: proposers stamp commands with `now_ms`, and
//! replies carry protobuf timestamps.

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A protobuf timestamp of `ms`.
pub(crate) fn ts(ms: u64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    })
}
