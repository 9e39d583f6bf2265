//! The `docker` driver: each instance is a container on this node's Docker engine
//! ([`crate::docker::Engine`], through its API), started from the component's `image` when
//! `--allowed-images` allows it, with the same injected environment as the process driver, its
//! `resources` as CPU and memory limits, on `spec.docker.network` (default `host`), as the
//! `--run-as` user. Its output goes to the same per-instance log file as a process's, so
//! `flowctl logs` works unchanged. Stopping it is SIGTERM, then SIGKILL after `STOP_GRACE`,
//! and the container is removed.
//!
//! Every container is labelled with the cluster, the node, the node's run (a random id per
//! server process), the pipeline, the component, the replica, the instance key, the pipeline
//! generation it was started under and the placement epoch.
//!
//! Containers die with their node, as the process driver's children do: a small reaper
//! process ([`spawn_reaper`], `flowctl container-reaper`) waits on a pipe from the server and,
//! when the server is gone however it ended (SIGKILL included), removes the containers of that
//! run. So the leader may move a dead node's instances without two copies running. Should the
//! reaper die too (the whole machine), a node that starts removes every container labelled
//! with its cluster and node ([`remove_orphans`]) before it starts anything.

use super::process::{glob_match, log_writer, prepare_log};
use super::supervisor::Desired;
use super::{DeployOptions, STOP_GRACE};
use crate::docker::{
    ContainerSpec, DockerError, Engine, Output, Pull, LABEL_CLUSTER, LABEL_COMPONENT,
    LABEL_GENERATION, LABEL_INSTANCE, LABEL_NODE, LABEL_PIPELINE, LABEL_REPLICA,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_stream::StreamExt;

/// Where the CA file (`FLOWCTL_CACERT`) is mounted, read-only, inside a container.
const CACERT_IN_CONTAINER: &str = "/etc/flowctl/ca.pem";
/// Label with the placement epoch the container was started for.
pub const LABEL_EPOCH: &str = "io.flowctl.epoch";
/// Label with the run (server process) of the node that started the container.
pub const LABEL_RUN: &str = "io.flowctl.run";
/// Longest line kept from a container's output; the rest of it is cut.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// What a container of one instance runs, besides the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ContainerRun {
    pub(super) image: String,
    pub(super) pull: Pull,
    /// The component's `command` (the entrypoint), when it sets one.
    pub(super) entrypoint: Option<Vec<String>>,
    pub(super) network: String,
    pub(super) cpu_millis: Option<u64>,
    pub(super) memory_bytes: Option<u64>,
}

/// The images the docker driver may run (`--allowed-images`): glob patterns over the image
/// reference as written in the pipeline (`*` matches any run of characters, `?` one). None by
/// default: a node runs containers only when its operator says which.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedImages(Vec<String>);

impl AllowedImages {
    pub fn new(patterns: Vec<String>) -> Result<Self, String> {
        for p in &patterns {
            if p.is_empty() || p.chars().any(char::is_whitespace) {
                return Err(format!(
                    "--allowed-images pattern {p:?} must be an image reference pattern, such as flowctl/* or *"
                ));
            }
        }
        Ok(AllowedImages(patterns))
    }

    pub fn patterns(&self) -> &[String] {
        &self.0
    }

    fn allows(&self, image: &str) -> bool {
        self.0
            .iter()
            .any(|p| glob_match(p.as_bytes(), image.as_bytes()))
    }
}

/// This node's Docker engine, connected on first use (and again after a failed attempt).
#[derive(Clone, Default)]
pub struct DockerAccess {
    pub allowed: AllowedImages,
    engine: Arc<tokio::sync::Mutex<Option<Engine>>>,
}

impl DockerAccess {
    pub fn new(allowed: AllowedImages) -> Self {
        DockerAccess {
            allowed,
            engine: Arc::default(),
        }
    }

    async fn engine(&self) -> Result<Engine, DockerError> {
        let mut e = self.engine.lock().await;
        if let Some(engine) = &*e {
            return Ok(engine.clone());
        }
        let engine = Engine::connect().await?;
        *e = Some(engine.clone());
        Ok(engine)
    }
}

/// A started container.
pub(super) struct ContainerInstance {
    engine: Engine,
    id: String,
    pid: Option<u32>,
    /// Set once it is stopped and removed, so that dropping it has nothing left to do.
    removed: bool,
}

fn io_err(e: DockerError) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// A name the engine accepts (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`), unique per node and instance.
fn container_name(node: u64, d: &Desired) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    format!(
        "flowctl-{node:x}-{}-{}",
        clean(&d.pipeline),
        clean(&d.key.replace('/', "-"))
    )
}

impl ContainerInstance {
    /// Makes sure the image is there (by its pull policy), then creates and starts the
    /// container, its output going to the instance's log file (the pump runs on `tracker`).
    pub(super) async fn start(
        d: &Desired,
        run: &ContainerRun,
        opts: &DeployOptions,
        tracker: &tokio_util::task::TaskTracker,
    ) -> std::io::Result<Self> {
        if !opts.docker.allowed.allows(&run.image) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                if opts.docker.allowed.patterns().is_empty() {
                    format!(
                        "image {:?}: this node runs no containers (start it with --allowed-images)",
                        run.image
                    )
                } else {
                    format!(
                        "image {:?} is outside this node's --allowed-images ({})",
                        run.image,
                        opts.docker.allowed.patterns().join(",")
                    )
                },
            ));
        }
        let engine = opts.docker.engine().await.map_err(io_err)?;
        engine
            .ensure_image(&run.image, run.pull)
            .await
            .map_err(io_err)?;
        let path = prepare_log(opts, d).await?;
        let (cid, replica) = d.key.rsplit_once('/').unwrap_or((&d.key, "0"));
        let mut labels: BTreeMap<String, String> = [
            (LABEL_CLUSTER, opts.cluster_id.clone()),
            (LABEL_NODE, opts.node_id.to_string()),
            (LABEL_RUN, opts.run_id.clone()),
            (LABEL_PIPELINE, d.pipeline.clone()),
            (LABEL_COMPONENT, cid.to_owned()),
            (LABEL_REPLICA, replica.to_owned()),
            (LABEL_INSTANCE, d.key.clone()),
            (LABEL_GENERATION, d.generation.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if let Some(epoch) = d.env.get("FLOWCTL_EPOCH") {
            labels.insert(LABEL_EPOCH.into(), epoch.clone());
        }
        let mut env: BTreeMap<String, String> = d
            .env
            .iter()
            .filter(|(k, _)| !flowctl_spec::is_loader_variable(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut mounts = Vec::new();
        if let Some(ca) = env.get("FLOWCTL_CACERT").cloned() {
            mounts.push((ca, CACERT_IN_CONTAINER.to_owned()));
            env.insert("FLOWCTL_CACERT".into(), CACERT_IN_CONTAINER.into());
        }
        let spec = ContainerSpec {
            name: container_name(opts.node_id, d),
            image: run.image.clone(),
            entrypoint: run.entrypoint.clone(),
            cmd: d.args.clone(),
            env,
            labels,
            network: run.network.clone(),
            cpu_millis: run.cpu_millis,
            memory_bytes: run.memory_bytes,
            user: opts.run_as.map(|u| format!("{}:{}", u.uid, u.gid)),
            read_only_mounts: mounts,
        };
        let id = engine.run(&spec).await.map_err(io_err)?;
        let pid = match engine.state(&id).await {
            Ok(Some(s)) => s.pid,
            _ => None,
        };
        let lines = log_writer(path, tracker);
        tracker.spawn(pump_output(engine.output(&id), lines));
        Ok(ContainerInstance {
            engine,
            id,
            pid,
            removed: false,
        })
    }

    /// SIGTERM, SIGKILL after [`STOP_GRACE`], then the container is removed.
    pub(super) async fn stop(&mut self) {
        if let Err(e) = self.engine.stop(&self.id, STOP_GRACE).await {
            tracing::warn!(container = %self.id, error = %e, "cannot stop the container; removing it");
        }
        match self.engine.remove(&self.id).await {
            Ok(()) => self.removed = true,
            Err(e) => {
                tracing::warn!(container = %self.id, error = %e, "cannot remove the container")
            }
        }
    }

    /// `Some((success, how))` once the container has exited (or is gone, or the engine cannot
    /// tell); `None` while it runs.
    pub(super) async fn exited(&mut self) -> Option<(bool, String)> {
        match self.engine.state(&self.id).await {
            Ok(Some(s)) if s.running => None,
            Ok(Some(s)) => Some((s.exit_code == Some(0) && !s.oom_killed, s.exit_text())),
            Ok(None) => Some((false, "the container was removed".into())),
            Err(e) => Some((false, e.to_string())),
        }
    }

    pub(super) fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// The container's id, short form.
    pub(super) fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }
}

impl Drop for ContainerInstance {
    /// A container whose handle is dropped without [`stop`](Self::stop) (the supervisor's task
    /// cancelled) is removed in the background; should the node die first, the next start's
    /// [`remove_orphans`] does it.
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (engine, id) = (self.engine.clone(), self.id.clone());
            rt.spawn(async move {
                let _ = engine.remove(&id).await;
            });
        }
    }
}

/// Splits the container's output into lines for the log writer (a line longer than
/// [`MAX_LINE_BYTES`] is cut there); stops when the output ends or the writer is gone.
async fn pump_output(
    output: impl tokio_stream::Stream<Item = Result<Output, DockerError>>,
    lines: tokio::sync::mpsc::Sender<String>,
) {
    tokio::pin!(output);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some(chunk) = output.next().await {
        let (buf, bytes) = match chunk {
            Ok(Output::Stdout(b)) => (&mut out, b),
            Ok(Output::Stderr(b)) => (&mut err, b),
            Err(e) => {
                tracing::debug!(error = %e, "container output ended");
                break;
            }
        };
        buf.extend_from_slice(&bytes);
        while let Some(n) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=n).collect();
            let text = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            if lines.send(text).await.is_err() {
                return;
            }
        }
        if buf.len() > MAX_LINE_BYTES {
            let text = String::from_utf8_lossy(&buf[..MAX_LINE_BYTES]).into_owned();
            buf.clear();
            if lines.send(text).await.is_err() {
                return;
            }
        }
    }
    for rest in [out, err] {
        if !rest.is_empty() {
            let _ = lines
                .send(String::from_utf8_lossy(&rest).into_owned())
                .await;
        }
    }
}

/// Removes every container this node of this cluster made in an earlier run. Called once when
/// the supervisor starts, before it starts anything, when the node may run containers.
pub(super) async fn remove_orphans(opts: &DeployOptions) {
    if opts.docker.allowed.patterns().is_empty() {
        return;
    }
    let engine = match opts.docker.engine().await {
        Ok(e) => e,
        Err(e) => {
            tracing::info!(error = %e, "no Docker engine: no orphaned containers to remove");
            return;
        }
    };
    let mine: BTreeMap<String, String> = [
        (LABEL_CLUSTER.to_owned(), opts.cluster_id.clone()),
        (LABEL_NODE.to_owned(), opts.node_id.to_string()),
    ]
    .into();
    match engine.list(&mine).await {
        Ok(found) => {
            for name in found.keys() {
                match engine.remove(name).await {
                    Ok(()) => {
                        tracing::info!(container = %name, "removed a container of an earlier run of this node")
                    }
                    Err(e) => {
                        tracing::warn!(container = %name, error = %e, "cannot remove an orphaned container")
                    }
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list this node's containers"),
    }
}

/// Starts `flowctl container-reaper` for this run when the node may run containers: it
/// removes this run's containers once this process is gone. The returned child must be kept
/// for as long as the server runs (its stdin is the pipe the reaper waits on).
pub(super) fn spawn_reaper(opts: &DeployOptions) -> Option<tokio::process::Child> {
    if opts.docker.allowed.patterns().is_empty() {
        return None;
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "no container reaper: cannot find the flowctl binary");
            return None;
        }
    };
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args([
        "container-reaper",
        "--cluster",
        &opts.cluster_id,
        "--node",
        &opts.node_id.to_string(),
        "--run",
        &opts.run_id,
    ])
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::null())
    // Its own process group: a Ctrl-C meant for the server must not end it first.
    .process_group(0)
    .kill_on_drop(false);
    match cmd.spawn() {
        Ok(child) => Some(child),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the container reaper");
            None
        }
    }
}

/// `flowctl container-reaper`: waits until its standard input closes (the server that started
/// it is gone), then removes the containers of that server's run.
pub async fn run_reaper(cluster: &str, node: u64, run: &str) -> Result<usize, DockerError> {
    let _ =
        tokio::task::spawn_blocking(|| std::io::copy(&mut std::io::stdin(), &mut std::io::sink()))
            .await;
    let engine = Engine::connect().await?;
    let labels: BTreeMap<String, String> = [
        (LABEL_CLUSTER.to_owned(), cluster.to_owned()),
        (LABEL_NODE.to_owned(), node.to_string()),
        (LABEL_RUN.to_owned(), run.to_owned()),
    ]
    .into();
    let found = engine.list(&labels).await?;
    for name in found.keys() {
        engine.remove(name).await?;
    }
    Ok(found.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_allowed_by_pattern_and_none_by_default() {
        assert!(!AllowedImages::default().allows("flowctl/ttp-processor:dev"));
        let a = AllowedImages::new(vec!["flowctl/*".into()]).unwrap();
        assert!(a.allows("flowctl/ttp-processor:dev"));
        assert!(!a.allows("evil/flowctl:dev"));
        assert!(AllowedImages::new(vec!["".into()]).is_err());
        assert!(AllowedImages::new(vec!["a b".into()]).is_err());
    }

    #[tokio::test]
    async fn output_is_split_into_lines_per_stream() {
        let chunks = vec![
            Ok(Output::Stdout(b"one\ntw".to_vec())),
            Ok(Output::Stderr(b"err\n".to_vec())),
            Ok(Output::Stdout(b"o\nthree".to_vec())),
        ];
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        pump_output(tokio_stream::iter(chunks), tx).await;
        let mut got = Vec::new();
        while let Some(l) = rx.recv().await {
            got.push(l);
        }
        assert_eq!(got, ["one", "err", "two", "three"]);
    }
}
