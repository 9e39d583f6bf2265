//! The Docker Engine API, as the Docker driver needs it: images present or pulled by policy,
//! containers created, started, inspected, stopped and removed, their output streamed, and
//! the containers a node labelled listed (to remove orphans after a crash). It talks to the
//! engine over its socket through `bollard` (`DOCKER_HOST`, else `/var/run/docker.sock`); no
//! `docker` command is run.
//!
//! Every container flowctl makes carries [`LABEL_MANAGED`] and the labels of
//! [`ContainerSpec::labels`] (cluster, pipeline, component, replica, generation, node), so a
//! node finds its own containers again by label and never touches anyone else's.

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
    TagImageOptionsBuilder,
};
use bollard::Docker;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;
use tokio_stream::{Stream, StreamExt};

/// Set to `true` on every container flowctl creates.
pub const LABEL_MANAGED: &str = "io.flowctl.managed";
/// The node that created the container.
pub const LABEL_NODE: &str = "io.flowctl.node";
/// The pipeline, component, replica and instance key (`component/replica`).
pub const LABEL_PIPELINE: &str = "io.flowctl.pipeline";
pub const LABEL_COMPONENT: &str = "io.flowctl.component";
pub const LABEL_REPLICA: &str = "io.flowctl.replica";
pub const LABEL_INSTANCE: &str = "io.flowctl.instance";
/// The pipeline generation the container was started for, and the cluster id.
pub const LABEL_GENERATION: &str = "io.flowctl.generation";
pub const LABEL_CLUSTER: &str = "io.flowctl.cluster";
/// How long one engine call may take before it is an error (image pulls excepted).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an image pull may take.
pub const PULL_TIMEOUT: Duration = Duration::from_secs(600);

/// When an image is pulled (Kubernetes' names and meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pull {
    /// Pull only if the engine does not have the image.
    IfNotPresent,
    /// Never pull: a missing image is an error.
    Never,
    /// Pull before every start.
    Always,
}

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("no Docker engine answers at {at}: {reason} (start one, e.g. scripts/docker.sh start, or set DOCKER_HOST)")]
    Unreachable { at: String, reason: String },
    #[error("image {image:?} is not present on this node and image_pull_policy is Never")]
    ImageMissing { image: String },
    #[error("image {image:?} could not be pulled: {reason}")]
    PullFailed { image: String, reason: String },
    #[error("the Docker engine did not answer {what} within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    #[error("Docker engine: {what}: {reason}")]
    Engine { what: String, reason: String },
}

/// What a container runs: the supervisor's instance, in Docker's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// The container's name; unique on the engine.
    pub name: String,
    pub image: String,
    /// Overrides the image's entrypoint when set (the spec's `command`).
    pub entrypoint: Option<Vec<String>>,
    /// Passed as the command (the spec's `args`).
    pub cmd: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Added to [`LABEL_MANAGED`].
    pub labels: BTreeMap<String, String>,
    /// `host` unless the pipeline sets another network.
    pub network: String,
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    /// `uid:gid` to run as; `None`: the image's user.
    pub user: Option<String>,
    /// Host files or directories bound read-only: (host path, path in the container).
    pub read_only_mounts: Vec<(String, String)>,
}

/// What the engine says of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    pub running: bool,
    /// The main process's pid on the host while it runs.
    pub pid: Option<u32>,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    /// The engine's own word: created, running, exited, dead…
    pub status: String,
    /// The image reference it was created from.
    pub image: String,
}

impl ContainerState {
    /// How it ended, in the words the process driver uses (`exit status: 1`).
    pub fn exit_text(&self) -> String {
        match (self.oom_killed, self.exit_code) {
            (true, _) => "killed: out of memory".into(),
            (false, Some(code)) if code > 128 && code < 160 => {
                format!("killed by signal {}", code - 128)
            }
            (false, Some(code)) => format!("exit status: {code}"),
            (false, None) => format!("container {}", self.status),
        }
    }
}

/// One line of a container's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

/// A connection to one Docker engine.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    at: String,
}

fn engine_err(what: &str) -> impl Fn(bollard::errors::Error) -> DockerError + '_ {
    move |e| DockerError::Engine {
        what: what.to_owned(),
        reason: e.to_string(),
    }
}

async fn timed<T>(
    what: &str,
    timeout: Duration,
    f: impl std::future::Future<Output = Result<T, DockerError>>,
) -> Result<T, DockerError> {
    tokio::time::timeout(timeout, f)
        .await
        .map_err(|_| DockerError::Timeout {
            what: what.to_owned(),
            timeout,
        })?
}

fn is_not_found(e: &bollard::errors::Error) -> bool {
    matches!(
        e,
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// `repo[:tag]` → (repo, tag), the tag `latest` when none is given; a registry's port
/// (`host:5000/repo`) is part of the repository.
fn split_reference(image: &str) -> (&str, &str) {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (image, "latest"),
    }
}

impl Engine {
    /// Connects to `DOCKER_HOST` (or the default socket), checks that the engine answers and
    /// agrees an API version with it (Debian's engine speaks an older one than bollard's
    /// default).
    pub async fn connect() -> Result<Self, DockerError> {
        let at =
            std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
        let unreachable = |reason: String| DockerError::Unreachable {
            at: at.clone(),
            reason,
        };
        let docker =
            Docker::connect_with_local_defaults().map_err(|e| unreachable(e.to_string()))?;
        let docker = tokio::time::timeout(CALL_TIMEOUT, docker.negotiate_version())
            .await
            .map_err(|_| unreachable("no answer".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::time::timeout(CALL_TIMEOUT, docker.ping())
            .await
            .map_err(|_| unreachable("no answer".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Engine { docker, at })
    }

    /// Where it connected.
    pub fn address(&self) -> &str {
        &self.at
    }

    /// Whether the engine has `image`.
    pub async fn has_image(&self, image: &str) -> Result<bool, DockerError> {
        timed("an image inspection", CALL_TIMEOUT, async {
            match self.docker.inspect_image(image).await {
                Ok(_) => Ok(true),
                Err(e) if is_not_found(&e) => Ok(false),
                Err(e) => Err(engine_err("inspect image")(e)),
            }
        })
        .await
    }

    /// Makes sure `image` is there, pulling it as `policy` says.
    pub async fn ensure_image(&self, image: &str, policy: Pull) -> Result<(), DockerError> {
        let present = self.has_image(image).await?;
        match (policy, present) {
            (Pull::Never, false) => Err(DockerError::ImageMissing {
                image: image.to_owned(),
            }),
            (Pull::Never | Pull::IfNotPresent, true) => Ok(()),
            (Pull::Always, _) | (Pull::IfNotPresent, false) => self.pull(image).await,
        }
    }

    async fn pull(&self, image: &str) -> Result<(), DockerError> {
        let failed = |reason: String| DockerError::PullFailed {
            image: image.to_owned(),
            reason,
        };
        let opts = CreateImageOptionsBuilder::default()
            .from_image(image)
            .build();
        let pulled = tokio::time::timeout(PULL_TIMEOUT, async {
            let mut progress = self.docker.create_image(Some(opts), None, None);
            while let Some(step) = progress.next().await {
                step.map_err(|e| failed(e.to_string()))?;
            }
            Ok(())
        })
        .await;
        match pulled {
            Err(_) => Err(failed(format!("no answer within {PULL_TIMEOUT:?}"))),
            Ok(r) => r,
        }
    }

    /// Makes image `image` (`repo:tag`) from a root-filesystem tarball, as `docker import`
    /// does: how images are made where no registry can be reached.
    pub async fn import_rootfs(&self, tar: Vec<u8>, image: &str) -> Result<(), DockerError> {
        let (repo, tag) = split_reference(image);
        let opts = CreateImageOptionsBuilder::default()
            .from_src("-")
            .repo(repo)
            .tag(tag)
            .build();
        timed("an image import", PULL_TIMEOUT, async {
            let mut progress =
                self.docker
                    .create_image(Some(opts), Some(bollard::body_full(tar.into())), None);
            while let Some(step) = progress.next().await {
                step.map_err(engine_err("import image"))?;
            }
            Ok(())
        })
        .await
    }

    /// Gives image `image` a second reference `target` (`repo:tag`), as `docker tag` does.
    pub async fn tag(&self, image: &str, target: &str) -> Result<(), DockerError> {
        let (repo, tag) = split_reference(target);
        let opts = TagImageOptionsBuilder::default()
            .repo(repo)
            .tag(tag)
            .build();
        timed("an image tag", CALL_TIMEOUT, async {
            self.docker
                .tag_image(image, Some(opts))
                .await
                .map_err(engine_err("tag image"))
        })
        .await
    }

    /// Creates and starts a container; returns its id. A container of the same name left
    /// over (a crash between create and record) is removed first.
    pub async fn run(&self, spec: &ContainerSpec) -> Result<String, DockerError> {
        self.remove(&spec.name).await?;
        let mut labels: HashMap<String, String> = spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.insert(LABEL_MANAGED.into(), "true".into());
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: spec.entrypoint.clone(),
            cmd: (!spec.cmd.is_empty()).then(|| spec.cmd.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            user: spec.user.clone(),
            host_config: Some(HostConfig {
                binds: (!spec.read_only_mounts.is_empty()).then(|| {
                    spec.read_only_mounts
                        .iter()
                        .map(|(host, inside)| format!("{host}:{inside}:ro"))
                        .collect()
                }),
                network_mode: Some(spec.network.clone()),
                nano_cpus: spec
                    .cpu_millis
                    .map(|m| i64::try_from(m.saturating_mul(1_000_000)).unwrap_or(i64::MAX)),
                memory: spec
                    .memory_bytes
                    .map(|b| i64::try_from(b).unwrap_or(i64::MAX)),
                // A small init reaps the component's children and forwards signals.
                init: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let id = timed("a container creation", CALL_TIMEOUT, async {
            self.docker
                .create_container(Some(opts), body)
                .await
                .map(|r| r.id)
                .map_err(engine_err("create container"))
        })
        .await?;
        let started = timed("a container start", CALL_TIMEOUT, async {
            self.docker
                .start_container(&id, None)
                .await
                .map_err(engine_err("start container"))
        })
        .await;
        if let Err(e) = started {
            // Leave nothing behind that was never started.
            let _ = self.remove(&id).await;
            return Err(e);
        }
        Ok(id)
    }

    /// The container's state; `None` when the engine has no such container.
    pub async fn state(&self, id: &str) -> Result<Option<ContainerState>, DockerError> {
        timed("a container inspection", CALL_TIMEOUT, async {
            let c = match self.docker.inspect_container(id, None).await {
                Ok(c) => c,
                Err(e) if is_not_found(&e) => return Ok(None),
                Err(e) => return Err(engine_err("inspect container")(e)),
            };
            let s = c.state.unwrap_or_default();
            let running = s.running.unwrap_or(false);
            Ok(Some(ContainerState {
                running,
                pid: s
                    .pid
                    .filter(|p| running && *p > 0)
                    .and_then(|p| u32::try_from(p).ok()),
                exit_code: (!running).then_some(s.exit_code).flatten(),
                oom_killed: s.oom_killed.unwrap_or(false),
                status: s.status.map(|x| x.to_string()).unwrap_or_default(),
                image: c.config.and_then(|c| c.image).unwrap_or_default(),
            }))
        })
        .await
    }

    /// Stops the container (SIGTERM, then SIGKILL after `grace`).
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), DockerError> {
        let secs = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        let opts = StopContainerOptionsBuilder::default().t(secs).build();
        timed("a container stop", grace + CALL_TIMEOUT, async {
            match self.docker.stop_container(id, Some(opts)).await {
                Ok(()) => Ok(()),
                // Gone, or already stopped (304).
                Err(e) if is_not_found(&e) => Ok(()),
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 304, ..
                }) => Ok(()),
                Err(e) => Err(engine_err("stop container")(e)),
            }
        })
        .await
    }

    /// Removes the container, killing it if it still runs. A missing one is not an error.
    pub async fn remove(&self, id: &str) -> Result<(), DockerError> {
        let opts = RemoveContainerOptionsBuilder::default().force(true).build();
        timed("a container removal", CALL_TIMEOUT, async {
            match self.docker.remove_container(id, Some(opts)).await {
                Ok(()) => Ok(()),
                Err(e) if is_not_found(&e) => Ok(()),
                Err(e) => Err(engine_err("remove container")(e)),
            }
        })
        .await
    }

    /// The containers (running or not) carrying every label of `labels`: name → labels.
    pub async fn list(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, BTreeMap<String, String>>, DockerError> {
        let mut filters: HashMap<String, Vec<String>> = HashMap::new();
        let mut want = vec![format!("{LABEL_MANAGED}=true")];
        want.extend(labels.iter().map(|(k, v)| format!("{k}={v}")));
        filters.insert("label".into(), want);
        let opts = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list = timed("a container listing", CALL_TIMEOUT, async {
            self.docker
                .list_containers(Some(opts))
                .await
                .map_err(engine_err("list containers"))
        })
        .await?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let name = c.names?.first()?.trim_start_matches('/').to_owned();
                Some((name, c.labels.unwrap_or_default().into_iter().collect()))
            })
            .collect())
    }

    /// The container's output from its start, followed until it ends.
    pub fn output(&self, id: &str) -> impl Stream<Item = Result<Output, DockerError>> + use<> {
        let opts = LogsOptionsBuilder::default()
            .follow(true)
            .stdout(true)
            .stderr(true)
            .build();
        self.docker
            .logs(id, Some(opts))
            .filter_map(|item| match item {
                Ok(bollard::container::LogOutput::StdOut { message })
                | Ok(bollard::container::LogOutput::Console { message }) => {
                    Some(Ok(Output::Stdout(message.to_vec())))
                }
                Ok(bollard::container::LogOutput::StdErr { message }) => {
                    Some(Ok(Output::Stderr(message.to_vec())))
                }
                Ok(bollard::container::LogOutput::StdIn { .. }) => None,
                Err(e) => Some(Err(engine_err("container output")(e))),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_read_like_the_process_drivers() {
        let s = |code, oom| ContainerState {
            running: false,
            pid: None,
            exit_code: Some(code),
            oom_killed: oom,
            status: "exited".into(),
            image: "i:1".into(),
        };
        assert_eq!(s(1, false).exit_text(), "exit status: 1");
        assert_eq!(s(137, false).exit_text(), "killed by signal 9");
        assert_eq!(s(137, true).exit_text(), "killed: out of memory");
        assert_eq!(s(0, false).exit_text(), "exit status: 0");
    }

    #[test]
    fn references_split_at_the_tag_not_at_a_registry_port() {
        assert_eq!(split_reference("flowctl/x:dev"), ("flowctl/x", "dev"));
        assert_eq!(split_reference("flowctl/x"), ("flowctl/x", "latest"));
        assert_eq!(
            split_reference("reg:5000/flowctl/x"),
            ("reg:5000/flowctl/x", "latest")
        );
        assert_eq!(
            split_reference("reg:5000/flowctl/x:v2"),
            ("reg:5000/flowctl/x", "v2")
        );
    }
}
