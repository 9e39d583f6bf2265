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
//!
//! After the range is done the component stays up (healthy, idle) until it is told to stop,
//! so that a supervisor does not restart it.

pub mod events;
pub mod proto;
pub mod source;
pub mod synthetic;

pub use events::{TokenEvent, TokenEventKind};
pub use proto::{RawLedgerChunk, RAW_LEDGER_CHUNK_EVENT_TYPE};
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
