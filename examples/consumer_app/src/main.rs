//! `consumer_app`: see the library docs for what it does and its environment.

use anyhow::Context as _;
use consumer_app::{description, run_consumer, ConsumerConfig, Totals};
use flowctl_agent::{Agent, AgentConfig, CancellationToken, HealthStatus};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    flowctl_agent::init_tracing();
    let agent_config = AgentConfig::from_env().context("while reading the flowctl environment")?;
    let config = ConsumerConfig::from_vars(|k| std::env::var(k).ok())?;
    let cancel = CancellationToken::new();
    let agent = Agent::start(agent_config, description(), cancel.child_token())
        .await
        .context("while starting the flowctl agent")?;
    let signal = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            flowctl_agent::shutdown_signal().await;
            cancel.cancel();
        })
    };
    agent.set_health(HealthStatus::Healthy);
    let totals = tokio::sync::watch::Sender::new(Totals::default());
    let result = run_consumer(&config, &agent, &cancel, &totals).await;
    if let Err(e) = &result {
        agent.set_health(HealthStatus::Unhealthy);
        tracing::error!(error = format!("{e:#}"), "consumer failed");
    }
    signal.abort();
    agent.shutdown().await;
    result
}
