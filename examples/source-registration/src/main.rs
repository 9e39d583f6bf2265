//! Example source component: registers with flowctl as a producer of
//! `raw_ledger_service.RawLedgerChunk`, heartbeats, serves `/health` and `/metrics`, and stops
//! cleanly on SIGTERM or Ctrl-C. Its "work" is a demo loop; it reads no ledgers.
//!
//! Run it against a local flowctl: `ENABLE_FLOWCTL=true FLOWCTL_COMPONENT_ID=stellar-live-source
//! HEALTH_PORT=8088 cargo run -p source-registration`.

use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use flowctl_agent::{Agent, AgentConfig, CancellationToken, ComponentDescription, HealthStatus};

/// What this component tells the control plane about itself.
fn description() -> ComponentDescription {
    ComponentDescription::source("stellar-live-source")
        .with_description("Example source: Stellar ledgers from a data lake (demo workload)")
        .with_version(env!("CARGO_PKG_VERSION"))
        .with_output_event_type("raw_ledger_service.RawLedgerChunk")
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
    tracing::info!(health = %agent.health_addr(), "source running");
    agent.set_health(HealthStatus::Healthy);

    // Demo workload: pretend to read one ledger a second. A real source would fetch ledgers
    // and publish them to its output topic; the counters are what flowctl sees either way.
    let produced = agent.counter("ledgers_produced");
    let last_ledger = agent.gauge("last_ledger");
    let mut ledger: u64 = 1;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = tick.tick() => {
                produced.inc();
                last_ledger.set(ledger as f64);
                ledger += 1;
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
    fn describes_a_source_of_ledgers() {
        let d = description();
        assert_eq!(d.kind, ComponentKind::Source);
        assert!(d.input_event_types.is_empty());
        assert_eq!(d.output_event_types, ["raw_ledger_service.RawLedgerChunk"]);
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
