//! `flowctl dev up | down | status`: a local development environment with one command.
//!
//! `dev up` stays in the foreground, like `docker compose up`, because it owns everything it
//! starts: the control-plane nodes are its child processes, and the embedded Kafka broker
//! lives inside it. It then registers the example schemas, applies the pipeline and redraws a
//! status table until Ctrl-C or SIGTERM, when it stops what it started and exits 0.
//!
//! ```text
//!  dev up                  node 0..n (children)          components (children of nodes)
//!    │── spawn, wait /readyz ──▶│
//!    │── wait for n voters ────▶│
//!    │── schemas push, apply ──▶│── supervisor spawns ───────▶│
//!    │── ListComponents every 2 s (health, metrics) ──────────▶│ heartbeats carry metrics
//!    │   ... Ctrl-C / SIGTERM (from `dev down`) ...
//!    │── SIGTERM, SIGKILL after a grace ─▶│── stops its components
//!    │   stop the broker, remove the state file, exit 0
//! ```
//!
//! Invariants:
//! - One environment per state file (`$FLOWCTL_DEV_STATE`, else `~/.flowctl/dev/state.json`).
//!   The file is created exclusively; one left by a dead process is ignored. Every recorded pid
//!   carries its start time from `/proc`, so a reused pid is never taken for ours.
//! - Only recorded pids are ever signalled.
//! - Nodes run in their own process group, so a terminal's Ctrl-C reaches `dev up` alone and
//!   shutdown happens in order. When `setpriv` is available they also get SIGKILL as their
//!   parent-death signal, so a `dev up` that is killed outright leaves nothing behind (this
//!   crate denies `unsafe`, so `prctl` is not called directly).
//!
//! The files, by concern:
//! - `mod.rs`: the `dev` subcommands and their arguments, and the dispatch to them.
//! - `state.rs`: the state file, what `dev up` records about itself and its nodes: its
//!   path, reading, atomic rewriting, the exclusive claim and the release.
//! - `processes.rs`: processes and ports: liveness from `/proc`, signals, the port layout,
//!   and the node child processes of `dev up` (spawning, waiting until they are ready and
//!   form a cluster, watching for exits, stopping).
//! - `up.rs`: `dev up`: the pre-flight checks, the environment it owns (`DevEnv`),
//!   start-up (directory, broker, admin token, schemas, apply) and the live table loop.
//! - `status.rs`: the status table: one snapshot of the cluster API, the tables that
//!   `dev up` redraws and `dev status` prints, and `dev status` itself (table or JSON).
//! - `down.rs`: `dev down`: stopping a running environment, or cleaning up after a dead one.

mod down;
mod processes;
mod state;
mod status;
mod up;

use crate::Global;
use clap::{Args, Subcommand};
use state::DevDriver;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum DevCmd {
    /// Start nodes, a Kafka broker and the example pipeline; show live status until Ctrl-C.
    Up(UpArgs),
    /// Stop the environment `dev up` started, and wait until all of its processes are gone.
    Down,
    /// The running environment: endpoints, processes, cluster, pipeline and components.
    Status,
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// Control-plane nodes: 1, or 3 for a fault-tolerant cluster.
    #[arg(long, default_value_t = 1, value_parser = parse_nodes)]
    nodes: u16,
    /// Use these Kafka brokers (HOST:PORT,...) instead of starting an embedded one.
    #[arg(long, value_delimiter = ',')]
    kafka_brokers: Vec<String>,
    /// Node i listens for gRPC on BASE+i and serves metrics on BASE+10+i, on 127.0.0.1.
    #[arg(long, default_value_t = 18080)]
    base_port: u16,
    /// How the components run: `process` (child processes of the nodes) or `docker`
    /// (containers of the images `scripts/build-images.sh` builds, on `DOCKER_HOST`).
    #[arg(long, value_enum, default_value_t = DevDriver::Process)]
    driver: DevDriver,
    /// The pipeline to apply (default: examples/stellar-pipeline.yaml of this repository, or
    /// examples/stellar-pipeline-docker.yaml with `--driver docker`); its `spec.driver` must
    /// be `--driver`.
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// The .proto files to register first (default: the protos/ directory next to the
    /// pipeline file, when there is one).
    #[arg(long)]
    protos: Option<PathBuf>,
    /// Keep node data and logs here (default: a temporary directory, removed on exit).
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn parse_nodes(s: &str) -> Result<u16, String> {
    match s {
        "1" => Ok(1),
        "3" => Ok(3),
        _ => Err(format!("{s:?}: expected 1 or 3")),
    }
}

pub async fn run(g: &Global, cmd: DevCmd) -> anyhow::Result<()> {
    match cmd {
        DevCmd::Up(a) => up::up(g, a).await,
        DevCmd::Down => down::down().await,
        DevCmd::Status => status::status(g).await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn nodes_must_be_one_or_three() {
        assert_eq!(parse_nodes("3"), Ok(3));
        assert!(parse_nodes("2").is_err());
    }
}
