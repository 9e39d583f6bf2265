//! Example sink `consumer_app`: reads `token_transfer.TokenTransferEvent` records and keeps
//! running totals: events by kind, amounts per asset and kind, ledgers seen and the last ledger.
//!
//! The totals are published four ways: agent metrics (served on `/metrics` and sent with every
//! heartbeat: `flowctl_consumer_events_total`, `flowctl_consumer_<kind>_events_total`,
//! `flowctl_consumer_ledgers_seen`, `flowctl_consumer_last_ledger`,
//! `flowctl_consumer_<kind>_amount_<asset>` for up to [`app::MAX_ASSET_METRICS`] assets); a
//! summary log line every `SUMMARY_INTERVAL_SECS`; a JSON file (`TOTALS_FILE`) replaced
//! atomically after every batch; and a `watch` channel for in-process callers and tests.
//!
//! Environment, besides the agent's and the bus's ([`flowctl_bus::BusEnv`]: `KAFKA_BROKERS`,
//! `INPUT_TOPICS`, `FLOWCTL_PIPELINE`, `DLQ_TOPIC`, ...):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `TOTALS_FILE` | unset | write the totals here as JSON |
//! | `SUMMARY_INTERVAL_SECS` | 10 | how often the summary is logged |
//!
//! Undecodable records are counted and, when a DLQ topic is known, sent to it.

pub mod app;
pub mod totals;

pub use app::{decode, run_consumer, ConsumerConfig};
pub use totals::Totals;

use flowctl_agent::ComponentDescription;
use ttp_processor::TOKEN_TRANSFER_EVENT_TYPE;

/// What this component tells the control plane about itself.
pub fn description() -> ComponentDescription {
    ComponentDescription::consumer("consumer-app")
        .with_description("Running totals of token transfer events")
        .with_version(env!("CARGO_PKG_VERSION"))
        .with_input_event_type(TOKEN_TRANSFER_EVENT_TYPE)
}
