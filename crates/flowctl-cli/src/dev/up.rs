//! `dev up`: the pre-flight checks (pipeline, programs, protos, ports), the environment one
//! `dev up` owns, its start-up (directory, broker, nodes, admin token, schemas, apply), the
//! live status table it redraws, and the orderly stop on a signal or a failure.

use super::processes::{proc_stat, setpriv, NodeProc, Ports, Signals, READY_TIMEOUT};
use super::state::{
    claim_state, release_state, state_path, write_state, DevDriver, DevState, Phase, STATE_VERSION,
};
use super::status::{print_status, Snapshot};
use super::UpArgs;
use crate::commands::{now_ms, rfc3339};
use crate::{ConsistencyArg, Format, Global};
use anyhow::{bail, Context as _};
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// The pipeline `dev up` applies when `--pipeline` is not given, by driver, looked up from the
/// current directory and the flowctl binary's directory upwards.
fn default_pipeline(driver: DevDriver) -> &'static str {
    match driver {
        DevDriver::Process => "examples/stellar-pipeline.yaml",
        DevDriver::Docker => "examples/stellar-pipeline-docker.yaml",
    }
}
const STATUS_REFRESH: Duration = Duration::from_secs(2);
/// Deadline of each API call of the live table, so a stopped cluster does not stall it.
const TABLE_API_TIMEOUT: Duration = Duration::from_secs(3);

fn resolve_pipeline(
    arg: Option<&Path>,
    driver: DevDriver,
    exe_dir: &Path,
) -> anyhow::Result<PathBuf> {
    let default = default_pipeline(driver);
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    if let Some(p) = arg {
        let p = cwd.join(p);
        if !p.is_file() {
            bail!("the pipeline file {} does not exist", p.display());
        }
        return Ok(p);
    }
    cwd.ancestors()
        .chain(exe_dir.ancestors())
        .map(|d| d.join(default))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "cannot find {default} above {} or {}; run from the repository or pass --pipeline",
                cwd.display(),
                exe_dir.display()
            )
        })
}

/// Where a bare program name resolves: next to flowctl first (the servers' PATH starts
/// there), then the inherited PATH.
fn find_program(name: &str, exe_dir: &Path) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::iter::once(exe_dir.to_path_buf())
        .chain(std::env::split_paths(&path))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Fails when a process-driver component's program cannot be found, rather than letting the
/// supervisor restart it forever.
fn check_programs(p: &flowctl_spec::ValidatedPipeline, exe_dir: &Path) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for (_, c) in p.components() {
        let Some(program) = c.command.first() else {
            continue;
        };
        let found = if program.contains('/') {
            Path::new(program).is_file()
        } else {
            find_program(program, exe_dir).is_some()
        };
        if !found && !missing.contains(program) {
            missing.push(program.clone());
        }
    }
    if !missing.is_empty() {
        bail!(
            "the pipeline's programs {} are not in {} nor on PATH; build them with `cargo build --workspace --bins`",
            missing.join(", "),
            exe_dir.display()
        );
    }
    Ok(())
}

/// The pipeline's `spec.driver` must be the one `dev up` prepares the nodes for.
fn check_driver(
    p: &flowctl_spec::ValidatedPipeline,
    file: &Path,
    driver: DevDriver,
) -> anyhow::Result<()> {
    let spec = p.spec().driver.as_str();
    if spec != driver.as_str() {
        bail!(
            "{}: spec.driver is {spec}, but dev up runs --driver {}; pass --driver {spec} or another --pipeline",
            file.display(),
            driver.as_str()
        );
    }
    Ok(())
}

/// The images of a docker-driver pipeline, each once, in document order.
fn pipeline_images(p: &flowctl_spec::ValidatedPipeline) -> Vec<String> {
    let mut images: Vec<String> = Vec::new();
    for (_, c) in p.components() {
        if let Some(i) = &c.image {
            if !images.contains(i) {
                images.push(i.clone());
            }
        }
    }
    images
}

/// Fails when no Docker engine answers, or when an image that is not pulled on every start
/// is not on it (no registry is assumed: the example's images are built locally), rather
/// than letting every instance fail to start.
async fn check_images(p: &flowctl_spec::ValidatedPipeline) -> anyhow::Result<()> {
    let engine = flowctl_server::docker::Engine::connect().await.map_err(|e| {
        anyhow::anyhow!(
            "{e}; --driver docker needs a Docker engine: start one with scripts/docker.sh start and export DOCKER_HOST as it prints"
        )
    })?;
    let mut missing = Vec::new();
    for (_, c) in p.components() {
        let Some(image) = &c.image else { continue };
        if c.image_pull_policy == Some(flowctl_spec::PullPolicy::Always) || missing.contains(image)
        {
            continue;
        }
        if !engine.has_image(image).await? {
            missing.push(image.clone());
        }
    }
    if !missing.is_empty() {
        bail!(
            "the images {} are not on the Docker engine at {}; build them with scripts/build-images.sh",
            missing.join(", "),
            engine.address()
        );
    }
    Ok(())
}

/// The `package` a .proto file declares.
fn proto_package(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("package")?;
        let name = rest.trim().strip_suffix(';')?.trim();
        (!name.is_empty() && rest.starts_with(char::is_whitespace)).then(|| name.to_owned())
    })
}

/// Everything one `dev up` owns.
pub(super) struct DevEnv {
    pub(super) exe: PathBuf,
    pub(super) exe_dir: PathBuf,
    state_path: PathBuf,
    pub(super) state: DevState,
    pub(super) ports: Ports,
    protos: Option<PathBuf>,
    pub(super) setpriv: Option<&'static str>,
    pub(super) broker: Option<flowctl_bus::EmbeddedBroker>,
    pub(super) nodes: Vec<NodeProc>,
    /// What the nodes' `--allowed-images` allows: the pipeline's images (docker driver).
    pub(super) allowed_images: Vec<String>,
    /// The invocation's token, resolved once; every call to the cluster sends it.
    token: Option<String>,
}

pub(super) async fn up(g: &Global, a: UpArgs) -> anyhow::Result<()> {
    let token = crate::credentials::token(g)?;
    let exe = std::env::current_exe().context("cannot find the flowctl binary")?;
    let exe_dir = exe
        .parent()
        .context("the flowctl binary has no directory")?
        .to_path_buf();
    let state_path = state_path()?;
    let pipeline_file = resolve_pipeline(a.pipeline.as_deref(), a.driver, &exe_dir)?;
    let text = std::fs::read_to_string(&pipeline_file)
        .with_context(|| format!("cannot read {}", pipeline_file.display()))?;
    let pipeline = flowctl_spec::validate_pipeline(&pipeline_file.display().to_string(), &text)?;
    check_driver(&pipeline, &pipeline_file, a.driver)?;
    match a.driver {
        DevDriver::Process => check_programs(&pipeline, &exe_dir)?,
        DevDriver::Docker => check_images(&pipeline).await?,
    }
    // The nodes may run exactly the pipeline's images, nothing else.
    let allowed_images = match a.driver {
        DevDriver::Process => Vec::new(),
        DevDriver::Docker => pipeline_images(&pipeline),
    };
    let protos = match a.protos {
        Some(p) if p.is_dir() => Some(p),
        Some(p) => bail!("--protos {} is not a directory", p.display()),
        None => pipeline_file
            .parent()
            .map(|d| d.join("protos"))
            .filter(|d| d.is_dir()),
    };
    let ports = Ports::new(a.base_port, a.nodes)?;
    let brokers: Vec<String> = a
        .kafka_brokers
        .iter()
        .map(|b| b.trim().to_owned())
        .filter(|b| !b.is_empty())
        .collect();

    let pid = std::process::id();
    let state = DevState {
        version: STATE_VERSION,
        pid,
        pid_start: proc_stat(pid).map_or(0, |(_, s)| s),
        phase: Phase::Starting,
        started_at: rfc3339(now_ms()),
        endpoints: (0..a.nodes)
            .map(|i| format!("127.0.0.1:{}", ports.grpc(i)))
            .collect::<Vec<_>>()
            .join(","),
        kafka_brokers: brokers.join(","),
        embedded_broker: brokers.is_empty(),
        dir: a.dir.clone().unwrap_or_default(),
        dir_is_temp: a.dir.is_none(),
        pipeline: pipeline.name().to_owned(),
        pipeline_file,
        nodes: Vec::new(),
        admin_token_file: None,
        driver: a.driver,
    };
    // Claim before checking ports: a second `dev up` should hear that one is running, not
    // that its ports are taken.
    claim_state(&state_path, &state)?;
    let mut env = DevEnv {
        exe,
        exe_dir,
        state_path,
        state,
        ports,
        protos,
        setpriv: setpriv(),
        broker: None,
        nodes: Vec::new(),
        allowed_images,
        token,
    };
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => {
            release_state(&env.state_path, pid);
            return Err(e);
        }
    };
    let outcome = tokio::select! {
        r = env.run() => r.map(|()| None),
        s = signals.recv() => Ok(Some(s)),
    };
    if let Ok(Some(sig)) = outcome {
        println!("dev: {sig} received; stopping");
    }
    env.stop(&mut signals).await;
    release_state(&env.state_path, pid);
    let dir = env.state.dir.clone();
    match outcome {
        Ok(_) => {
            if env.state.dir_is_temp && !dir.as_os_str().is_empty() {
                let _ = std::fs::remove_dir_all(&dir);
            }
            println!("dev: stopped");
            Ok(())
        }
        // The logs explain a failed start, so a temporary directory is kept then.
        Err(e) if dir.as_os_str().is_empty() => Err(e),
        Err(e) => Err(anyhow::anyhow!("{e:#} (logs are in {})", dir.display())),
    }
}

impl DevEnv {
    /// Starts everything, then shows the status table; returns only on failure.
    async fn run(&mut self) -> anyhow::Result<()> {
        self.ports.check_free()?;
        self.make_dir()?;
        if self.state.embedded_broker {
            let broker = flowctl_bus::EmbeddedBroker::start(1)
                .context("cannot start the embedded Kafka broker")?;
            self.state.kafka_brokers = broker.bootstrap_servers().to_owned();
            self.broker = Some(broker);
        }
        self.save()?;
        let n = self.ports.nodes;
        println!(
            "dev: starting {n} node{} on {}",
            if n == 1 { "" } else { "s" },
            self.state.endpoints
        );
        for i in 0..n {
            self.spawn_node(i)?;
            self.save()?;
            // Node 0 initializes the cluster; the others can only join once it serves.
            if i == 0 {
                self.wait_ready(0..1).await?;
                self.use_admin_token().await?;
            }
        }
        self.wait_ready(0..n).await?;
        self.wait_for_voters().await?;
        self.register_schemas().await?;
        self.apply().await?;
        self.state.phase = Phase::Running;
        self.save()?;
        let banner = self.banner();
        let tty = std::io::stdout().is_terminal();
        if !tty {
            print!("{banner}");
        }
        let c = self.client()?;
        loop {
            self.poll_exits();
            let snap = Snapshot::fetch(&c, &self.state.pipeline).await;
            let procs = self.processes();
            if tty {
                // Redraw in place: clear the screen and home the cursor.
                print!("\x1b[H\x1b[2J{banner}");
            } else {
                println!("--- {}", rfc3339(now_ms()));
            }
            print_status(&self.state, &procs, &snap);
            let _ = std::io::stdout().flush();
            tokio::time::sleep(STATUS_REFRESH).await;
        }
    }

    /// From now on every call of this environment carries the admin token that node 0 wrote
    /// when it created the cluster (the invocation's own token is for another cluster).
    async fn use_admin_token(&mut self) -> anyhow::Result<()> {
        let path = self.state.dir.join("node0").join("admin.token");
        let until = std::time::Instant::now() + READY_TIMEOUT;
        let token = loop {
            match std::fs::read_to_string(&path) {
                Ok(t) if !t.trim().is_empty() => break t.trim().to_owned(),
                _ if std::time::Instant::now() > until => {
                    bail!("node 0 wrote no admin token to {}", path.display())
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        self.token = Some(token);
        self.state.admin_token_file = Some(path);
        self.save()
    }

    /// A client of this environment's nodes for the live table and the startup checks.
    pub(super) fn client(&self) -> anyhow::Result<flowctl_client::Client> {
        Ok(flowctl_client::Client::new(
            &flowctl_client::parse_endpoints(&self.state.endpoints),
            TABLE_API_TIMEOUT,
        )?
        .with_token(self.token.as_deref())?)
    }

    fn make_dir(&mut self) -> anyhow::Result<()> {
        if self.state.dir_is_temp {
            let dir =
                std::env::temp_dir().join(format!("flowctl-dev-{}-{}", self.state.pid, now_ms()));
            std::fs::create_dir(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            self.state.dir = dir;
        } else {
            std::fs::create_dir_all(&self.state.dir)
                .with_context(|| format!("cannot create {}", self.state.dir.display()))?;
            self.state.dir = std::fs::canonicalize(&self.state.dir)?;
        }
        Ok(())
    }

    pub(super) fn save(&mut self) -> anyhow::Result<()> {
        self.state.nodes = self.nodes.iter().map(|n| n.state.clone()).collect();
        write_state(&self.state_path, &self.state)
    }

    /// Pushes every .proto of the protos directory as its own package, by running this
    /// binary's `schemas push`, so that `apply` finds the event types registered.
    async fn register_schemas(&self) -> anyhow::Result<()> {
        let Some(dir) = &self.protos else {
            println!("dev: no protos/ directory next to the pipeline file; registering no schemas");
            return Ok(());
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "proto"))
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            let Some(package) = proto_package(&text) else {
                println!("dev: {} declares no package; skipped", f.display());
                continue;
            };
            let out = tokio::process::Command::new(&self.exe)
                .arg("schemas")
                .arg("push")
                .arg(&f)
                .arg("--package")
                .arg(&package)
                .arg("-I")
                .arg(dir)
                .env("FLOWCTL_ENDPOINTS", &self.state.endpoints)
                // The resolved token exactly (empty means none), not a second resolution.
                .env(
                    crate::credentials::ENV_TOKEN,
                    self.token.as_deref().unwrap_or(""),
                )
                .env_remove(crate::credentials::ENV_TOKEN_FILE)
                // The dev cluster is plaintext: TLS settings of the caller's shell would switch
                // its bare endpoints to TLS.
                .env_remove(flowctl_client::ENV_CACERT)
                .env_remove(flowctl_client::ENV_CERT)
                .env_remove(flowctl_client::ENV_KEY)
                .stdin(Stdio::null())
                .output()
                .await
                .with_context(|| format!("cannot run {} schemas push", self.exe.display()))?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                bail!(
                    "cannot register {}: {}",
                    f.display(),
                    err.trim().trim_start_matches("error: ")
                );
            }
            for l in String::from_utf8_lossy(&out.stdout).lines() {
                println!("dev: {l}");
            }
        }
        Ok(())
    }

    async fn apply(&self) -> anyhow::Result<()> {
        let g = Global {
            endpoints: self.state.endpoints.clone(),
            output: Format::Table,
            consistency: ConsistencyArg::Linearizable,
            timeout: 30,
            // An explicit token (empty means none), so the environment is not read again.
            token: Some(self.token.clone().unwrap_or_default().into()),
            token_file: None,
        };
        let file = self.state.pipeline_file.display().to_string();
        crate::commands::apply(
            &g,
            &file,
            &crate::commands::ApplyOptions {
                dry_run: false,
                allow_unregistered_types: false,
                if_generation: None,
            },
        )
        .await
        .with_context(|| format!("while applying {file}"))
    }

    fn banner(&self) -> String {
        let s = &self.state;
        let broker = if s.embedded_broker {
            "embedded, inside this process"
        } else {
            "external"
        };
        let dir_note = if s.dir_is_temp {
            " (removed on exit; --dir keeps them)"
        } else {
            ""
        };
        let components = match s.driver {
            DevDriver::Process => "processes, children of the nodes".to_owned(),
            DevDriver::Docker => format!(
                "Docker containers (docker ps --filter label={}={})",
                flowctl_server::docker::LABEL_PIPELINE,
                s.pipeline
            ),
        };
        format!(
            "flowctl dev: pipeline {} from {}\n\
             \x20 components run as {components}\n\
             \x20 export FLOWCTL_ENDPOINTS={}\n\
             \x20 export FLOWCTL_TOKEN={}\n\
             \x20 Kafka brokers:  {} ({broker})\n\
             \x20 data and logs:  {}{dir_note}\n\
             \x20                 nodeN.log, nodeN/logs/{}/<component>.log, or `flowctl logs <component>`\n\
             \x20 state file:     {}\n\
             \x20 stop with Ctrl-C here, or `flowctl dev down`\n\n",
            s.pipeline,
            s.pipeline_file.display(),
            s.endpoints,
            self.token.as_deref().unwrap_or(""),
            s.kafka_brokers,
            s.dir.display(),
            s.pipeline,
            self.state_path.display(),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn proto_package_is_read_from_the_package_statement() {
        let text = "syntax = \"proto3\";\n\n  package token_transfer ;\nmessage X {}\n";
        assert_eq!(proto_package(text).as_deref(), Some("token_transfer"));
        assert_eq!(proto_package("packages x;"), None);
    }
}
