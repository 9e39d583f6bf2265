//! Example processor component: registers with flowctl as a consumer of
//! `raw_ledger_service.RawLedgerChunk` and a producer of `token_transfer.TokenTransferEvent`,
//! heartbeats, serves `/health` and `/metrics`, and stops cleanly on SIGTERM or Ctrl-C. Its
//! "work" is a demo loop; it processes nothing.
//!
//! Run it against a local flowctl: `ENABLE_FLOWCTL=true FLOWCTL_COMPONENT_ID=ttp-processor
//! HEALTH_PORT=8089 cargo run -p processor-registration`.

use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use flowctl_agent::{Agent, AgentConfig, CancellationToken, ComponentDescription, HealthStatus};

/// What this component tells the control plane about itself.
fn description() -> ComponentDescription {
    ComponentDescription::processor("ttp-processor")
        .with_description("Example processor: token transfers from ledgers (demo workload)")
        .with_version(env!("CARGO_PKG_VERSION"))
        .with_input_event_type("raw_ledger_service.RawLedgerChunk")
        .with_output_event_type("token_transfer.TokenTransferEvent")
        .with_metadata("network", "testnet")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    flowctl_agent::init_tracing();
    let config = AgentConfig::from_env().context("while reading the flowctl environment")?;
    run(config, flowctl_agent::shutdown_signal()).await
}

/// Runs the component until `shutdown` resolves, then unregisters.
async fn run(config: AgentConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let agent = Agent::start(config, description(), CancellationToken::new())
        .await
        .context("while starting the flowctl agent")?;
    tracing::info!(health = %agent.health_addr(), "processor running");
    agent.set_health(HealthStatus::Healthy);

    // Demo workload: pretend to turn one ledger a second into three token transfers. A real
    // processor would consume its input topic and produce to its output topic.
    let ledgers = agent.counter("ledgers_processed");
    let events = agent.counter("events_processed");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = tick.tick() => {
                ledgers.inc();
                events.add(3);
            }
        }
    }

    agent.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowctl_agent::ComponentKind;

    #[test]
    fn describes_a_ledger_to_token_transfer_processor() {
        let d = description();
        assert_eq!(d.kind, ComponentKind::Processor);
        assert_eq!(d.input_event_types, ["raw_ledger_service.RawLedgerChunk"]);
        assert_eq!(d.output_event_types, ["token_transfer.TokenTransferEvent"]);
    }

    #[tokio::test]
    async fn runs_and_stops_cleanly_without_a_control_plane() {
        let stop = tokio::time::sleep(Duration::from_millis(50));
        tokio::time::timeout(Duration::from_secs(10), run(AgentConfig::default(), stop))
            .await
            .unwrap()
            .unwrap();
    }
}
