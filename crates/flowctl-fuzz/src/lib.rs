//! Fuzz targets for the parts of flowctl that read untrusted bytes, and the regression seeds
//! that keep what the fuzzers found.
//!
//! Each target is a plain function `fn(&[u8])` that must return normally for every input: a
//! panic (including a failed `assert!` of a round-trip property) is a finding. The functions
//! live here, in an ordinary library, so that the same code runs under libFuzzer (the
//! cargo-fuzz project in `fuzz/`, built with nightly flags) and in `tests/seeds.rs`, which
//! replays every file of `seeds/<target>/` on stable Rust in CI.
//!
//! | target | what it reads |
//! |---|---|
//! | [`spec`] | a `flowctl/v1` Pipeline document: `parse_pipeline`, `validate_pipeline`, the graph renderers |
//! | [`state_codec`] | one persisted record of any kind, by the versioned codec, with an encode/decode round trip |
//! | [`command`] | one encoded `Command`: round trip, then `apply` to a fresh state and a snapshot round trip |
//! | [`schema`] | `.proto` text through `flowctl_schema::compile`, or a pushed descriptor set through `Compiled::from_parts` |
//! | [`requests`] | one public gRPC request message, decoded with prost and checked as the service layer checks it |
//!
//! This crate is not a test of behaviour: it checks only that nothing panics and that encodings
//! round-trip. It never touches RocksDB, the network or a server.

mod command;
mod requests;
mod schema;
mod spec;
mod state_codec;

pub use command::command;
pub use requests::requests;
pub use schema::schema;
pub use spec::spec;
pub use state_codec::state_codec;

/// A fuzz target: any bytes in, no panic out.
pub type Target = fn(&[u8]);

/// Every target by name, in the order `scripts/fuzz.sh` runs them. The name is also the
/// directory of its seeds (`seeds/<name>/`) and the name of its cargo-fuzz binary.
pub const TARGETS: &[(&str, Target)] = &[
    ("spec", spec),
    ("state_codec", state_codec),
    ("command", command),
    ("schema", schema),
    ("requests", requests),
];

/// Picks one of `n` variants from the first byte of `data` and returns it with the rest:
/// targets that cover several types put the type selector in front of the payload, so that the
/// fuzzer can move an input from one type to another with a one-byte mutation.
pub(crate) fn select(data: &[u8], n: usize) -> Option<(usize, &[u8])> {
    let (&first, rest) = data.split_first()?;
    Some((usize::from(first) % n, rest))
}
