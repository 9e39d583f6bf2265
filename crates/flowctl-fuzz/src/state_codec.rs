//! The `state_codec` target: every kind of record that `flowctl-state`'s codec persists or
//! sends between nodes.

use flowctl_state::{codec, ComponentRecord, NodeId, PipelineRecord};
use serde::{de::DeserializeOwned, Serialize};
use std::fmt::Debug;

/// One decoder per record kind, named as `flowctl-store` names them in its errors. Append
/// only: a seed's first byte names its kind by its place here.
///
/// Not here: the store's private `AuthMeta` and `AuditMeta` (a flag and two counters) and
/// openraft's log id, membership and snapshot meta, which `flowctl-store` encodes with the
/// same framing but whose types this crate cannot name without linking RocksDB.
const KINDS: &[(&str, crate::Target)] = &[
    ("command", command),
    ("outcome", outcome),
    ("state", state),
    ("pipeline record", pipeline),
    ("placement", generic::<flowctl_state::placements::Placement>),
    ("replay job", generic::<flowctl_state::replay::Job>),
    ("replay chunk", generic::<flowctl_state::replay::Chunk>),
    ("DLQ entry", generic::<flowctl_state::dlq::DlqEntry>),
    ("DLQ offset", generic::<i64>),
    ("schema subject", generic::<flowctl_state::schemas::Subject>),
    ("schema", generic::<flowctl_state::schemas::SchemaRecord>),
    (
        "schema registry meta",
        generic::<flowctl_state::schemas::RegistryMeta>,
    ),
    ("auth token", generic::<flowctl_state::auth::TokenRecord>),
    ("audit record", generic::<flowctl_state::audit::AuditRecord>),
    (
        "remembered request",
        generic::<flowctl_state::requests::Remembered>,
    ),
    (
        "pipeline runtime",
        generic::<flowctl_state::runtime::PipelineRuntime>,
    ),
    ("component record", generic::<ComponentRecord>),
    ("removed node", generic::<NodeId>),
];

/// The first byte picks the record kind; the rest is its encoding, version byte first.
/// Whatever decodes must encode, and decode again to an equal value.
pub fn state_codec(data: &[u8]) {
    let Some((kind, bytes)) = crate::select(data, KINDS.len()) else {
        return;
    };
    (KINDS[kind].1)(bytes);
}

fn command(bytes: &[u8]) {
    round_trip(bytes, codec::decode_command, codec::encode_command);
}

fn outcome(bytes: &[u8]) {
    round_trip(bytes, codec::decode_outcome, codec::encode_outcome);
}

fn state(bytes: &[u8]) {
    round_trip(bytes, codec::decode_state, codec::encode_state);
}

fn pipeline(bytes: &[u8]) {
    round_trip::<PipelineRecord, _, _>(bytes, codec::decode_pipeline, codec::encode_pipeline);
}

fn generic<T>(bytes: &[u8])
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    round_trip(
        bytes,
        |b| codec::decode::<T>("record", b),
        |v| codec::encode("record", v),
    );
}

/// Decodes `bytes`; if that works, checks that the value survives encode → decode. Both
/// encodings of the value must also be equal, since a node compares nothing but bytes when
/// it writes the same record again.
pub(crate) fn round_trip<T, D, E>(bytes: &[u8], decode: D, encode: E) -> Option<T>
where
    T: PartialEq + Debug,
    D: Fn(&[u8]) -> Result<T, codec::Error>,
    E: Fn(&T) -> Result<Vec<u8>, codec::Error>,
{
    let value = decode(bytes).ok()?;
    let encoded = encode(&value).expect("a decoded value encodes");
    let again = decode(&encoded).expect("an encoding decodes");
    assert_eq!(again, value, "decode(encode(x)) != x");
    let reencoded = encode(&again).expect("a decoded value encodes");
    assert_eq!(
        reencoded, encoded,
        "encode is not stable across a round trip"
    );
    Some(value)
}
