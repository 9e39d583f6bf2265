//! Example processor `ttp-processor`: reads `raw_ledger_service.RawLedgerChunk` records,
//! extracts token movements (CAP-67 token events, classic payments and fees) from each ledger's
//! `LedgerCloseMeta` XDR, and writes one `token_transfer.TokenTransferEvent` record per movement
//! to its output topic, keyed by ledger sequence.
//!
//! A record it cannot process (a missing envelope, another event type, bad protobuf, bad XDR,
//! an inconsistent ledger, or an injected failure) goes to the dead-letter topic with the DLQ
//! headers ([`flowctl_bus::DlqRecord`]); it never stops the processor and is never dropped.
//! Input offsets are committed only after what a record became is acknowledged
//! ([`processor`]).
//!
//! Environment, besides the agent's and the bus's ([`flowctl_bus::BusEnv`]: `KAFKA_BROKERS`,
//! `INPUT_TOPICS`, `OUTPUT_TOPIC`, `FLOWCTL_PIPELINE`, `DLQ_TOPIC`, ...):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `TTP_FAIL_FRACTION` | 0 | fail this fraction of ledgers on purpose ([`fails_injected`]) |
//! | `CONSUMER_GROUP` | `flowctl.<pipeline>.<component id>` | where input offsets are committed |
//! | `SCHEMA_ID` | unset | `flowctl-schema-id` header of output records |
//!
//! Every replica reads every input partition (static assignment), so run one replica.

pub mod extract;
pub mod process;
pub mod processor;
pub mod proto;

pub use extract::{extract_events, ExtractError};
pub use process::{fails_injected, process, Outcome, ProcessOptions};
pub use processor::{run_processor, ProcessorConfig};
pub use proto::{TokenTransferEvent, TOKEN_TRANSFER_EVENT_TYPE};

use flowctl_agent::ComponentDescription;
use stellar_live_source_datalake::RAW_LEDGER_CHUNK_EVENT_TYPE;

/// What this component tells the control plane about itself.
pub fn description() -> ComponentDescription {
    ComponentDescription::processor("ttp-processor")
        .with_description("Token transfer events (CAP-67) from Stellar ledgers")
        .with_version(env!("CARGO_PKG_VERSION"))
        .with_input_event_type(RAW_LEDGER_CHUNK_EVENT_TYPE)
        .with_output_event_type(TOKEN_TRANSFER_EVENT_TYPE)
}
