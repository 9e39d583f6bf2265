//! `stellar-live-source-datalake`: see the library docs for what it does and its environment.

use anyhow::Context as _;
use flowctl_agent::{Agent, AgentConfig, CancellationToken, HealthStatus};
use stellar_live_source_datalake::{description, run_replays, run_source, SourceConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    flowctl_agent::init_tracing();
    let agent_config = AgentConfig::from_env().context("while reading the flowctl environment")?;
    let config = SourceConfig::from_vars(|k| std::env::var(k).ok())?;
    let cancel = CancellationToken::new();
    let agent = Agent::start(agent_config, description(), cancel.clone())
        .await
        .context("while starting the flowctl agent")?;

    let shutdown = {
        let cancel = cancel.clone();
        async move {
            flowctl_agent::shutdown_signal().await;
            cancel.cancel();
        }
    };
    tokio::pin!(shutdown);
    let commands = agent
        .chunk_commands()
        .context("while opening the replay chunk commands")?;
    agent.set_health(HealthStatus::Healthy);
    let live = async {
        if config.live {
            let report = run_source(&config, &agent, &cancel).await?;
            tracing::info!(?report, "ledger range done; idle until stopped");
        } else {
            tracing::info!("LIVE=false: serving replay chunks only");
        }
        Ok(())
    };
    // The replay loop runs until the agent stops, so the work ends only on an error (or
    // when the agent was stopped some other way); either way, wait for the signal after it.
    let work = async { tokio::try_join!(live, run_replays(&config, &agent, commands, &cancel)) };
    let result = tokio::select! {
        () = &mut shutdown => Ok(None),
        r = work => r.map(Some),
    };
    match result {
        Ok(Some(_)) => shutdown.await,
        Ok(None) => {}
        Err(e) => {
            agent.set_health(HealthStatus::Unhealthy);
            tracing::error!(error = format!("{e:#}"), "source failed");
            agent.shutdown().await;
            return Err(e);
        }
    }
    agent.shutdown().await;
    Ok(())
}
