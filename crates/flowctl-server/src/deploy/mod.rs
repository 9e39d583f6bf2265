//! Deployment with the `process` and `docker` drivers.
//!
//! ```text
//! leader:   scheduler ── probes members ── places every instance on a live node ──▶ SetPlacement
//! any node: supervisor ── reads its placements ── runs them as child processes, restarts them
//! ```
//!
//! The scheduler keeps existing placements while their node is alive and moves the instances
//! of a node that has not answered for `node_grace` (plus [`FENCE_MARGIN`]) to the least loaded
//! live nodes. A node that has not reached a quorum for `node_grace` stops its own instances
//! (it is *fenced*), so once the leader moves them, only the new copies run. The
//! supervisor starts what is placed on its node, stops what is not, restarts crashed instances
//! with exponential backoff according to `restart_policy`, and replaces instances whose spec
//! changed one at a time per component (a rolling change). Each instance's stdout and stderr
//! go to `<data-dir>/logs/<pipeline>/<instance>.log`, rotated at [`LOG_CAP_BYTES`]; the output
//! of the run before the last restart is kept as `.prev.log`.
//!
//! The code is split by role:
//!
//! - `scheduler`: the leader's loop, and the pure placement decision `place`.
//! - `supervisor`: every node's reconcile loop: restart policy and backoff, rolling
//!   replacement, fencing, runtime reports and events.
//! - `driver`: the interface the supervisor runs instances through (start, stop, exit, pid).
//! - `process`: the `process` driver: child processes, their process groups, and their log
//!   files.
//! - `kubernetes`: no driver: the manifests `flowctl render --target kubernetes` writes.
//! - `container`: the `docker` driver: containers on the node's Docker engine, their output
//!   in the same log files, and the removal of a crashed run's containers.

mod container;
mod driver;
mod kubernetes;
mod process;
mod scheduler;
mod supervisor;

pub use container::{run_reaper, AllowedImages, DockerAccess};
pub use kubernetes::{component_env, render as render_kubernetes, RenderOptions};
pub use process::{log_path, AllowedCommands, RunAs, LOG_CAP_BYTES};

use crate::spec_cache::SpecCache;
use flowctl_raft::RaftNode;
use flowctl_spec::ValidatedPipeline;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const TICK: Duration = Duration::from_millis(500);
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How often the supervisor confirms that its node reaches a quorum, and how long one check
/// may take.
const QUORUM_CHECK: Duration = Duration::from_secs(1);
/// How long a runtime report may wait to commit; the supervisor's tick waits for it.
const REPORT_TIMEOUT: Duration = Duration::from_secs(3);
/// How much longer than `node_grace` the leader waits before it moves a silent node's
/// instances. The silent node stops them itself after `node_grace` without reaching a quorum,
/// but it counts from its own last successful check (up to two check periods before the
/// leader's last successful probe), notices at a tick that a report in flight may have delayed,
/// and then gives each instance `STOP_GRACE` to exit. Waiting this much longer means that at
/// no time do two copies of an instance run.
pub const FENCE_MARGIN: Duration = Duration::from_millis(
    (2 * QUORUM_CHECK.as_millis()
        + REPORT_TIMEOUT.as_millis()
        + TICK.as_millis()
        + STOP_GRACE.as_millis()
        + 500) as u64,
);

#[derive(Clone)]
pub struct DeployOptions {
    pub data_dir: PathBuf,
    /// A node silent for this long loses its instances.
    pub node_grace: Duration,
    /// `FLOWCTL_HEARTBEAT_INTERVAL` given to components.
    pub heartbeat_interval: Duration,
    /// Brokers of pipelines that name none (`--kafka-brokers`).
    pub kafka_brokers: Vec<String>,
    /// The programs instances may run (`--allowed-commands`).
    pub allowed: AllowedCommands,
    /// The user instances run as (`--run-as`); `None` keeps the server's own.
    pub run_as: Option<RunAs>,
    /// The images the docker driver may run (`--allowed-images`), and the engine.
    pub docker: DockerAccess,
    /// This node's id, and the cluster's (empty until the node knows it; the supervisor
    /// fills it in), for the labels of its containers.
    pub node_id: u64,
    pub cluster_id: String,
    /// A random id of this server process (filled in by the supervisor), on its containers,
    /// so that its reaper removes only what this run started.
    pub run_id: String,
    /// The cluster's peer secret: each instance gets its own agent token from it
    /// (`FLOWCTL_TOKEN`).
    pub peer: Option<crate::auth::Secret>,
    /// With TLS on the public port, the CA instances trust for it (`FLOWCTL_CACERT`: the
    /// `--trusted-ca-file`, which `flowctl certs init` makes the one CA of the cluster).
    pub cacert: Option<PathBuf>,
}

impl DeployOptions {
    /// The brokers a pipeline uses: its own, else the server's; empty when neither is set.
    pub fn brokers_of(&self, p: &ValidatedPipeline) -> Vec<String> {
        brokers_of(p, &self.kafka_brokers)
    }
}

/// A pipeline's Kafka brokers: its `spec.bus.brokers`, else the server's `--kafka-brokers`
/// (`default`); empty when neither is set.
pub(crate) fn brokers_of(p: &ValidatedPipeline, default: &[String]) -> Vec<String> {
    if p.spec().bus.brokers.is_empty() {
        default.to_vec()
    } else {
        p.spec().bus.brokers.clone()
    }
}

/// Starts the scheduler and the supervisor; both stop on `cancel` (the supervisor stops its
/// children first).
pub fn start(
    node: RaftNode,
    specs: SpecCache,
    opts: DeployOptions,
    cancel: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) {
    tracker.spawn(scheduler::run_scheduler(
        node.clone(),
        specs.clone(),
        opts.clone(),
        cancel.clone(),
    ));
    tracker.spawn(supervisor::run_supervisor(node, specs, opts, cancel));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_margin_is_what_the_readme_and_the_flag_say() {
        // README "Deployment" and `--node-grace`'s help give it in seconds.
        assert_eq!(FENCE_MARGIN, Duration::from_secs(9));
    }
}
