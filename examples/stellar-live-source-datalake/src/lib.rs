//! Example source `stellar-live-source-datalake`: produces one `RawLedgerChunk` record per
//! Stellar ledger to its output topic.
//!
//! There is no data lake here: the ledgers are synthetic ([`synthetic`]), real
//! `LedgerCloseMeta` XDR made deterministically from the ledger sequence, with payments,
//! Soroban token invocations and their CAP-67 events, and fees. [`Generator::ledger`] also
//! reports the token events each ledger holds, so tests downstream can check exact results.
//!
//! Records: key = the ledger sequence in decimal, headers `flowctl-event-type:
//! raw_ledger_service.RawLedgerChunk` (and `flowctl-schema-id` when `SCHEMA_ID` is set), value =
//! the protobuf [`RawLedgerChunk`].
//!
//! Environment, besides the agent's (`ENABLE_FLOWCTL`, `FLOWCTL_ENDPOINT`, `HEALTH_PORT`, ...)
//! and the bus's ([`flowctl_bus::BusEnv`]: `KAFKA_BROKERS`, `OUTPUT_TOPIC`, ...):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `START_LEDGER` | 2 | first ledger |
//! | `END_LEDGER` | unset | last ledger (inclusive); unset keeps going |
//! | `LEDGERS_PER_SECOND` | unpaced with `END_LEDGER`, else 1 | pace |
//! | `NETWORK_PASSPHRASE` | testnet's | hashed into transaction hashes and contract ids |
//! | `JOB_ID` | `FLOWCTL_COMPONENT_ID` | written into each chunk |
//! | `SCHEMA_ID` | unset | `flowctl-schema-id` header |
//! | `RESUME` | true | continue after the newest ledger already in the output topic |
//! | `LIVE` | true | run the live stream above; `false` serves range replay chunks only |
//! | `REPLAY_CONCURRENCY` | 2 | replay chunks worked on at once |
//! | `REPLAY_FAIL_RETRYABLE` | unset | tests: `<chunk index>:<attempts>,...` fails those chunks retryably on their first `<attempts>` attempts |
//! | `REPLAY_FAIL_FATAL` | unset | tests: `<chunk index>,...` fails those chunks non-retryably |
//!
//! After the range is done the component stays up (healthy, idle) until it is told to stop,
//! so that a supervisor does not restart it.
//!
//! **Range replay** ([`replay`]): with the control plane enabled, the source also carries out
//! the chunks of replay jobs (`flowctl replay --pipeline P --from-ledger A --to-ledger B`)
//! that the control plane assigns to it, alongside the live stream or (with `LIVE=false`)
//! instead of it. A chunk writes exactly its ledgers `from..=to`, one record per ledger like
//! the live stream, with `RawLedgerChunk.job_id` set to the replay job's id and two more
//! headers, `flowctl-replay-job` (the job id) and `flowctl-replay-chunk` (the chunk index in
//! decimal); it reports RUNNING when it starts and DONE with the record count once the broker
//! acknowledged every record. Broker errors fail a chunk retryably, a range outside
//! `2..=4294967295` or with `from > to` non-retryably. The injected failures
//! (`REPLAY_FAIL_*`) strike after the RUNNING report and before any record is written;
//! attempts are numbered from 1 by the control plane.

pub mod events;
pub mod proto;
pub mod replay;
pub mod source;
pub mod synthetic;

pub use events::{TokenEvent, TokenEventKind};
pub use proto::{RawLedgerChunk, RAW_LEDGER_CHUNK_EVENT_TYPE};
pub use replay::{
    replay_record, run_replays, FailureInjection, ReplayConfig, DEFAULT_REPLAY_CONCURRENCY,
    HEADER_REPLAY_CHUNK, HEADER_REPLAY_JOB,
};
pub use source::{ledger_record, run_source, SourceConfig, SourceReport};
pub use synthetic::{Generator, SyntheticLedger};

use flowctl_agent::ComponentDescription;

/// What this component tells the control plane about itself.
pub fn description() -> ComponentDescription {
    ComponentDescription::source("stellar-live-source-datalake")
        .with_description(
            "Synthetic Stellar ledgers (LedgerCloseMeta XDR) as RawLedgerChunk records",
        )
        .with_version(env!("CARGO_PKG_VERSION"))
        .with_output_event_type(RAW_LEDGER_CHUNK_EVENT_TYPE)
}
