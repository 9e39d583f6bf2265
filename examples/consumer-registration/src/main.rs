//! Example consumer component: registers with flowctl as a consumer of
//! `token_transfer.TokenTransferEvent`, heartbeats, serves `/health` and `/metrics`, and
//! stops cleanly on SIGTERM or Ctrl-C. Its "work" is a demo loop; it consumes nothing.
//!
//! Run it against a local flowctl: `ENABLE_FLOWCTL=true FLOWCTL_COMPONENT_ID=consumer-app
//! HEALTH_PORT=8090 cargo run -p consumer-registration`.

use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use flowctl_agent::{Agent, AgentConfig, CancellationToken, ComponentDescription, HealthStatus};

/// What this component tells the control plane about itself.
fn description() -> ComponentDescription {
    ComponentDescription::consumer("consumer-app")
        .with_description("Example consumer: token transfer events (demo workload)")
        .with_version(env!("CARGO_PKG_VERSION"))
        .with_input_event_type("token_transfer.TokenTransferEvent")
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
    tracing::info!(health = %agent.health_addr(), "consumer running");
    agent.set_health(HealthStatus::Healthy);

    // Demo workload: pretend to consume three events a second. A real consumer would read its
    // input topic and write somewhere useful.
    let consumed = agent.counter("events_consumed");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = tick.tick() => consumed.add(3),
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
    fn describes_a_consumer_of_token_transfers() {
        let d = description();
        assert_eq!(d.kind, ComponentKind::Consumer);
        assert_eq!(d.input_event_types, ["token_transfer.TokenTransferEvent"]);
        assert!(d.output_event_types.is_empty());
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
