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

use crate::commands::{client, now_ms, rfc3339, status_err, ts_ms};
use crate::output::{age, print_table};
use crate::{ConsistencyArg, Format, Global};
use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use flowctl_client::proto::admin::v1 as pb;
use flowctl_client::proto::admin::v1::cluster_service_client::ClusterServiceClient;
use flowctl_client::proto::admin::v1::component_service_client::ComponentServiceClient;
use flowctl_client::proto::admin::v1::pipeline_service_client::PipelineServiceClient;
use flowctl_client::MAX_REPLY_BYTES;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// The state file's format version; bump it when a field changes meaning.
const STATE_VERSION: u32 = 1;
/// The pipeline `dev up` applies when `--pipeline` is not given, looked up from the current
/// directory and the flowctl binary's directory upwards.
const DEFAULT_PIPELINE: &str = "examples/stellar-pipeline.yaml";
/// Node `i` serves gRPC on `base + i`, metrics on `base + METRICS_PORT_OFFSET + i` and its
/// peer port on `base + PEER_PORT_OFFSET + i`.
const METRICS_PORT_OFFSET: u16 = 10;
const PEER_PORT_OFFSET: u16 = 20;
const STATUS_REFRESH: Duration = Duration::from_secs(2);
/// Deadline of each API call of the live table, so a stopped cluster does not stall it.
const TABLE_API_TIMEOUT: Duration = Duration::from_secs(3);
const READY_TIMEOUT: Duration = Duration::from_secs(90);
const VOTERS_TIMEOUT: Duration = Duration::from_secs(60);
/// Nodes get this long after SIGTERM (to stop their components) before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(20);
/// `dev down` waits this long for `dev up` to clean up before it SIGKILLs what is left.
const DOWN_TIMEOUT: Duration = Duration::from_secs(30);
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(100);

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
    /// The pipeline to apply (default: examples/stellar-pipeline.yaml of this repository).
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
        DevCmd::Up(a) => up(g, a).await,
        DevCmd::Down => down().await,
        DevCmd::Status => status(g).await,
    }
}

// ---------------------------------------------------------------------------------------------
// The state file.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Phase {
    Starting,
    Running,
    Stopping,
}

/// What `dev up` records about itself; `dev down` and `dev status` read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct DevState {
    version: u32,
    /// The `dev up` process.
    pid: u32,
    /// Its start time in clock ticks since boot (`/proc/PID/stat` field 22), against pid reuse.
    pid_start: u64,
    phase: Phase,
    started_at: String,
    /// As `FLOWCTL_ENDPOINTS` takes them.
    endpoints: String,
    kafka_brokers: String,
    /// Whether the brokers are the embedded one inside `dev up`.
    embedded_broker: bool,
    /// Node data and logs.
    dir: PathBuf,
    /// Whether `dir` is a temporary directory that `dev up` removes on exit.
    dir_is_temp: bool,
    pipeline: String,
    pipeline_file: PathBuf,
    nodes: Vec<NodeState>,
    /// The admin token's file (node 0 creates the cluster with `--auth`).
    #[serde(default)]
    admin_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct NodeState {
    index: u16,
    pid: u32,
    pid_start: u64,
    addr: String,
    metrics_addr: String,
    data_dir: PathBuf,
    log: PathBuf,
}

impl DevState {
    fn up_alive(&self) -> bool {
        alive(self.pid, self.pid_start)
    }

    /// Every recorded process, `dev up` first, with whether it is still running.
    fn processes(&self) -> Vec<(String, u32, bool)> {
        let mut out = vec![("dev up".to_owned(), self.pid, self.up_alive())];
        out.extend(self.nodes.iter().map(|n| {
            (
                format!("node {}", n.index),
                n.pid,
                alive(n.pid, n.pid_start),
            )
        }));
        out
    }
}

fn state_path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("FLOWCTL_DEV_STATE").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".flowctl/dev/state.json")),
        None => bail!("neither FLOWCTL_DEV_STATE nor HOME is set; set one to say where the dev state file lives"),
    }
}

fn read_state(path: &Path) -> anyhow::Result<Option<DevState>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("the dev state file {} is not valid JSON", path.display()))?;
    if v["version"].as_u64() != Some(u64::from(STATE_VERSION)) {
        bail!(
            "the dev state file {} has version {}; this flowctl understands version {STATE_VERSION}",
            path.display(),
            v["version"]
        );
    }
    let s = serde_json::from_value(v)
        .with_context(|| format!("the dev state file {} is malformed", path.display()))?;
    Ok(Some(s))
}

/// Replaces the state file atomically (write a sibling, then rename), so that readers never
/// see half a file.
fn write_state(path: &Path, s: &DevState) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(s)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Creates the state file exclusively, after making sure no other environment is alive.
fn claim_state(path: &Path, s: &DevState) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    match read_state(path) {
        Ok(Some(old)) if old.up_alive() => bail!(
            "a development environment is already running (pid {}, endpoints {}); stop it with `flowctl dev down`",
            old.pid,
            old.endpoints
        ),
        Ok(Some(old)) => {
            let left: Vec<String> = old
                .processes()
                .into_iter()
                .filter(|(_, _, a)| *a)
                .map(|(what, pid, _)| format!("{what} pid {pid}"))
                .collect();
            if !left.is_empty() {
                bail!(
                    "a previous development environment left processes running ({}); stop them with `flowctl dev down`",
                    left.join(", ")
                );
            }
            remove_if_exists(path)?;
        }
        Ok(None) => {}
        Err(e) => {
            eprintln!("warning: ignoring the unreadable dev state file: {e:#}");
            remove_if_exists(path)?;
        }
    }
    let mut f = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "another `flowctl dev up` is starting (state file {})",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
    };
    f.write_all(&serde_json::to_vec_pretty(s)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn remove_if_exists(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Removes the state file if it is still the one `pid` wrote.
fn release_state(path: &Path, pid: u32) {
    if let Ok(Some(s)) = read_state(path) {
        if s.pid == pid {
            let _ = std::fs::remove_file(path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes.

/// The state letter and start time of a process, from `/proc/PID/stat`.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<(char, u64)> {
    // The command name may hold spaces and parentheses; everything after the last ')' is
    // fields 3 onwards, and the start time is field 22.
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Whether `pid` is running and is the process that started at `start` (0: any).
fn alive(pid: u32, start: u64) -> bool {
    match proc_stat(pid) {
        Some((state, s)) => !matches!(state, 'Z' | 'X') && (start == 0 || s == start),
        None => false,
    }
}

/// Sends `sig` to `pid`; false if there is no such process (or it is not ours).
fn send_signal(pid: u32, sig: rustix::process::Signal) -> bool {
    rustix::process::Pid::from_raw(pid as i32)
        .is_some_and(|p| rustix::process::kill_process(p, sig).is_ok())
}

/// `setpriv` if it can set a parent-death signal here.
fn setpriv() -> Option<&'static str> {
    std::process::Command::new("setpriv")
        .args(["--pdeathsig", "KILL", "--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        .then_some("setpriv")
}

struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        let on = |k: SignalKind| signal(k).context("cannot install a signal handler");
        Ok(Signals {
            term: on(SignalKind::terminate())?,
            int: on(SignalKind::interrupt())?,
            hup: on(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// dev up.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ports {
    base: u16,
    nodes: u16,
}

impl Ports {
    fn new(base: u16, nodes: u16) -> anyhow::Result<Self> {
        if base == 0 || u32::from(base) + u32::from(PEER_PORT_OFFSET) + u32::from(nodes) > 65_536 {
            bail!(
                "--base-port {base}: the ports {base}..{} must be between 1 and 65535",
                u32::from(base) + u32::from(PEER_PORT_OFFSET) + u32::from(nodes)
            );
        }
        Ok(Ports { base, nodes })
    }

    fn grpc(&self, i: u16) -> u16 {
        self.base + i
    }

    fn metrics(&self, i: u16) -> u16 {
        self.base + METRICS_PORT_OFFSET + i
    }

    fn peer(&self, i: u16) -> u16 {
        self.base + PEER_PORT_OFFSET + i
    }

    /// Every port with what it is for.
    fn all(&self) -> Vec<(u16, String)> {
        (0..self.nodes)
            .flat_map(|i| {
                [
                    (self.grpc(i), format!("node {i} gRPC")),
                    (self.metrics(i), format!("node {i} metrics")),
                    (self.peer(i), format!("node {i} peer")),
                ]
            })
            .collect()
    }

    fn check_free(&self) -> anyhow::Result<()> {
        for (port, what) in self.all() {
            if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", port)) {
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    bail!(
                        "port {port} ({what}) on 127.0.0.1 is in use; stop what holds it or choose another --base-port"
                    );
                }
                bail!("cannot bind port {port} ({what}) on 127.0.0.1: {e}");
            }
        }
        Ok(())
    }
}

fn resolve_pipeline(arg: Option<&Path>, exe_dir: &Path) -> anyhow::Result<PathBuf> {
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
        .map(|d| d.join(DEFAULT_PIPELINE))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "cannot find {DEFAULT_PIPELINE} above {} or {}; run from the repository or pass --pipeline",
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

/// The `package` a .proto file declares.
fn proto_package(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("package")?;
        let name = rest.trim().strip_suffix(';')?.trim();
        (!name.is_empty() && rest.starts_with(char::is_whitespace)).then(|| name.to_owned())
    })
}

struct NodeProc {
    state: NodeState,
    child: tokio::process::Child,
    /// How it ended, once it has.
    exited: Option<String>,
}

/// Everything one `dev up` owns.
struct DevEnv {
    exe: PathBuf,
    exe_dir: PathBuf,
    state_path: PathBuf,
    state: DevState,
    ports: Ports,
    protos: Option<PathBuf>,
    setpriv: Option<&'static str>,
    broker: Option<flowctl_bus::EmbeddedBroker>,
    nodes: Vec<NodeProc>,
    /// The invocation's token, resolved once; every call to the cluster sends it.
    token: Option<String>,
}

async fn up(g: &Global, a: UpArgs) -> anyhow::Result<()> {
    let token = crate::credentials::token(g)?;
    let exe = std::env::current_exe().context("cannot find the flowctl binary")?;
    let exe_dir = exe
        .parent()
        .context("the flowctl binary has no directory")?
        .to_path_buf();
    let state_path = state_path()?;
    let pipeline_file = resolve_pipeline(a.pipeline.as_deref(), &exe_dir)?;
    let text = std::fs::read_to_string(&pipeline_file)
        .with_context(|| format!("cannot read {}", pipeline_file.display()))?;
    let pipeline = flowctl_spec::validate_pipeline(&pipeline_file.display().to_string(), &text)?;
    check_programs(&pipeline, &exe_dir)?;
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
    fn client(&self) -> anyhow::Result<flowctl_client::Client> {
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

    fn save(&mut self) -> anyhow::Result<()> {
        self.state.nodes = self.nodes.iter().map(|n| n.state.clone()).collect();
        write_state(&self.state_path, &self.state)
    }

    /// Spawns node `i` from the calling thread, which is the runtime's main thread: the
    /// parent-death signal fires when the *thread* that forked exits, and that one lives
    /// as long as `dev up`.
    fn spawn_node(&mut self, i: u16) -> anyhow::Result<()> {
        let dir = &self.state.dir;
        let st = NodeState {
            index: i,
            pid: 0,
            pid_start: 0,
            addr: format!("127.0.0.1:{}", self.ports.grpc(i)),
            metrics_addr: format!("127.0.0.1:{}", self.ports.metrics(i)),
            data_dir: dir.join(format!("node{i}")),
            log: dir.join(format!("node{i}.log")),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&st.log)
            .with_context(|| format!("cannot open {}", st.log.display()))?;
        let mut cmd = match self.setpriv {
            Some(sp) => {
                let mut c = tokio::process::Command::new(sp);
                c.args(["--pdeathsig", "KILL", "--"]).arg(&self.exe);
                c
            }
            None => tokio::process::Command::new(&self.exe),
        };
        cmd.arg("server")
            .arg("--listen")
            .arg(&st.addr)
            .arg("--peer-listen")
            .arg(format!("127.0.0.1:{}", self.ports.peer(i)))
            .arg("--metrics-port")
            .arg(self.ports.metrics(i).to_string())
            .arg("--data-dir")
            .arg(&st.data_dir);
        // Authentication on: node 0 creates the credentials, the others join with its peer
        // secret.
        if i == 0 {
            cmd.arg("--auth");
        } else {
            cmd.arg("--join")
                .arg(format!("127.0.0.1:{}", self.ports.peer(0)))
                .arg("--peer-token-file")
                .arg(self.state.dir.join("node0").join("peer.token"));
        }
        // Always given, so that an empty one (no broker) does not mean localhost:9092.
        cmd.arg(format!("--kafka-brokers={}", self.state.kafka_brokers));
        // Components are bare program names resolved through the server's PATH; the example
        // binaries are built next to flowctl.
        let mut path = vec![self.exe_dir.clone()];
        path.extend(std::env::split_paths(
            &std::env::var_os("PATH").unwrap_or_default(),
        ));
        cmd.env("PATH", std::env::join_paths(path)?);
        if std::env::var_os("FLOWCTL_LOG").is_none() {
            cmd.env("FLOWCTL_LOG", "info,openraft=warn");
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", self.exe.display()))?;
        let pid = child.id().context("a just-spawned node has no pid")?;
        let st = NodeState {
            pid,
            pid_start: proc_stat(pid).map_or(0, |(_, s)| s),
            ..st
        };
        self.nodes.push(NodeProc {
            state: st,
            child,
            exited: None,
        });
        Ok(())
    }

    fn poll_exits(&mut self) {
        for n in &mut self.nodes {
            if n.exited.is_none() {
                if let Ok(Some(status)) = n.child.try_wait() {
                    n.exited = Some(status.to_string());
                }
            }
        }
    }

    /// A node that exited while we wait for it, as an error naming its log's last line.
    fn check_exited(&mut self) -> anyhow::Result<()> {
        self.poll_exits();
        if let Some(n) = self.nodes.iter().find(|n| n.exited.is_some()) {
            bail!(
                "node {} exited during start-up ({}): {}",
                n.state.index,
                n.exited.as_deref().unwrap_or_default(),
                last_line(&n.state.log)
            );
        }
        Ok(())
    }

    async fn wait_ready(&mut self, which: std::ops::Range<u16>) -> anyhow::Result<()> {
        let until = Instant::now() + READY_TIMEOUT;
        loop {
            self.check_exited()?;
            let mut waiting = None;
            for n in &self.nodes[usize::from(which.start)..usize::from(which.end)] {
                if readyz(&n.state.metrics_addr).await != Some(200) {
                    waiting = Some(n.state.index);
                    break;
                }
            }
            let Some(i) = waiting else {
                return Ok(());
            };
            if Instant::now() > until {
                bail!(
                    "node {i} did not become ready within {READY_TIMEOUT:?} (see {})",
                    self.nodes[usize::from(i)].state.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_for_voters(&mut self) -> anyhow::Result<()> {
        let n = self.nodes.len();
        let c = self.client()?;
        let until = Instant::now() + VOTERS_TIMEOUT;
        loop {
            self.check_exited()?;
            if let Ok(s) = cluster_status(&c).await {
                if all_voters(&s, n) {
                    return Ok(());
                }
            }
            if Instant::now() > until {
                bail!("the cluster did not form {n} voters within {VOTERS_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
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
        format!(
            "flowctl dev: pipeline {} from {}\n\
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

    fn processes(&self) -> Vec<ProcRow> {
        self.nodes
            .iter()
            .map(|n| ProcRow {
                node: Some(n.state.clone()),
                what: format!("node {}", n.state.index),
                pid: n.state.pid,
                process: match &n.exited {
                    None => "running".to_owned(),
                    Some(how) => format!("exited ({how})"),
                },
            })
            .collect()
    }

    /// SIGTERM every node, SIGKILL after [`STOP_GRACE`] or a second signal, then stop the
    /// broker. The nodes stop their components themselves.
    async fn stop(&mut self, signals: &mut Signals) {
        self.state.phase = Phase::Stopping;
        let _ = self.save();
        self.poll_exits();
        for n in self.nodes.iter().filter(|n| n.exited.is_none()) {
            send_signal(n.state.pid, rustix::process::Signal::TERM);
        }
        let until = Instant::now() + STOP_GRACE;
        loop {
            self.poll_exits();
            if self.nodes.iter().all(|n| n.exited.is_some()) {
                break;
            }
            let escalate = tokio::select! {
                () = tokio::time::sleep(POLL) => Instant::now() > until,
                s = signals.recv() => {
                    println!("dev: {s} received again; killing the nodes");
                    true
                }
            };
            if escalate {
                for n in self.nodes.iter_mut().filter(|n| n.exited.is_none()) {
                    let _ = n.child.start_kill();
                    if let Ok(status) = n.child.wait().await {
                        n.exited = Some(status.to_string());
                    }
                }
                break;
            }
        }
        if let Some(b) = self.broker.take() {
            b.shutdown();
        }
    }
}

fn last_line(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    match text.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(l) => format!("{} (log {})", l.trim(), path.display()),
        None => format!("see {}", path.display()),
    }
}

/// The status code of `GET /readyz`, if the node answered.
async fn readyz(addr: &str) -> Option<u16> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET /readyz HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        String::from_utf8_lossy(&buf)
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    tokio::time::timeout(Duration::from_secs(2), get)
        .await
        .ok()
        .flatten()
}

fn all_voters(s: &pb::ClusterStatusResponse, n: usize) -> bool {
    s.leader_id != 0
        && s.members.len() == n
        && s.members
            .iter()
            .all(|m| m.voter && m.leader_id == s.leader_id)
}

// ---------------------------------------------------------------------------------------------
// The cluster as the API shows it.

async fn cluster_status(c: &flowctl_client::Client) -> anyhow::Result<pb::ClusterStatusResponse> {
    Ok(c.call(|ch| async move {
        ClusterServiceClient::new(ch)
            .max_decoding_message_size(MAX_REPLY_BYTES)
            .status(pb::ClusterStatusRequest {})
            .await
    })
    .await
    .map_err(status_err)?
    .into_inner())
}

/// One look at the cluster, the pipeline and the components; each part fails on its own.
struct Snapshot {
    cluster: anyhow::Result<pb::ClusterStatusResponse>,
    pipeline: anyhow::Result<pb::Pipeline>,
    components: anyhow::Result<Vec<pb::Component>>,
}

impl Snapshot {
    async fn fetch(c: &flowctl_client::Client, pipeline: &str) -> Self {
        let consistency = pb::Consistency::Linearizable as i32;
        let pipeline_req = pb::GetPipelineRequest {
            name: pipeline.to_owned(),
            consistency,
        };
        let (cluster, pipeline, components) = tokio::join!(
            cluster_status(c),
            c.call(|ch| {
                let req = pipeline_req.clone();
                async move {
                    PipelineServiceClient::new(ch)
                        .max_decoding_message_size(MAX_REPLY_BYTES)
                        .get_pipeline(req)
                        .await
                }
            }),
            c.call(|ch| async move {
                ComponentServiceClient::new(ch)
                    .max_decoding_message_size(MAX_REPLY_BYTES)
                    .list_components(pb::ListComponentsRequest { consistency })
                    .await
            }),
        );
        Snapshot {
            cluster,
            pipeline: pipeline
                .map_err(status_err)
                .map(|r| r.into_inner().pipeline.unwrap_or_default()),
            components: components
                .map_err(status_err)
                .map(|r| r.into_inner().components),
        }
    }
}

/// One recorded process as the status shows it.
struct ProcRow {
    what: String,
    pid: u32,
    process: String,
    node: Option<NodeState>,
}

fn role_name(r: i32) -> &'static str {
    match pb::MemberRole::try_from(r) {
        Ok(pb::MemberRole::Leader) => "leader",
        Ok(pb::MemberRole::Follower) => "follower",
        Ok(pb::MemberRole::Learner) => "learner",
        Ok(pb::MemberRole::Candidate) => "candidate",
        Ok(pb::MemberRole::Unreachable) => "unreachable",
        _ => "unknown",
    }
}

fn node_rows(procs: &[ProcRow], cluster: Option<&pb::ClusterStatusResponse>) -> Vec<Vec<String>> {
    let mut rows = vec![["NODE", "ADDRESS", "METRICS", "PID", "PROCESS", "ROLE"]
        .map(String::from)
        .to_vec()];
    for p in procs {
        let (index, addr, metrics) = match &p.node {
            Some(n) => (n.index.to_string(), n.addr.clone(), n.metrics_addr.clone()),
            None => (p.what.clone(), "-".into(), "-".into()),
        };
        let role = cluster
            .and_then(|c| c.members.iter().find(|m| m.addr == addr))
            .map_or("-", |m| role_name(m.role));
        rows.push(vec![
            index,
            addr,
            metrics,
            p.pid.to_string(),
            p.process.clone(),
            role.to_owned(),
        ]);
    }
    rows
}

/// A metric value without a needless `.0`.
fn number(v: &str) -> String {
    match v.parse::<f64>() {
        Ok(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
        _ => v.to_owned(),
    }
}

/// The few metrics that say whether events flow, from a component's heartbeat metrics:
/// `flowctl_<who>_{ledgers_total,ledgers_seen,events_total,dlq_total,undecodable_total,
/// last_ledger}`; other components get their first three metrics.
fn flow_summary(metrics: &HashMap<String, String>) -> String {
    const KNOWN: [(&str, &str); 6] = [
        ("ledgers_total", "ledgers"),
        ("ledgers_seen", "ledgers"),
        ("events_total", "events"),
        ("dlq_total", "dlq"),
        ("undecodable_total", "undecodable"),
        ("last_ledger", "last"),
    ];
    let sorted: BTreeMap<&str, &str> = metrics
        .iter()
        .filter(|(k, _)| !k.starts_with("flowctl_agent_"))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let short = |k: &str| {
        k.strip_prefix("flowctl_")
            .and_then(|r| r.split_once('_'))
            .map(|(_, rest)| rest.to_owned())
    };
    let mut parts = Vec::new();
    for (suffix, label) in KNOWN {
        if let Some((_, v)) = sorted
            .iter()
            .find(|(k, _)| short(k).as_deref() == Some(suffix))
        {
            parts.push(format!("{label}={}", number(v)));
        }
    }
    if parts.is_empty() {
        parts = sorted
            .iter()
            .take(3)
            .map(|(k, v)| format!("{k}={}", number(v)))
            .collect();
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(" ")
    }
}

/// One row per pipeline instance (sources, processors, sinks), joined with its registration,
/// then the other registered components. `nodes` names a node address by its `dev up` index.
fn component_rows(
    pipeline: Option<&pb::Pipeline>,
    components: &[pb::Component],
    nodes: &HashMap<String, u16>,
    now: u64,
) -> Vec<Vec<String>> {
    let mut rows = vec![[
        "COMPONENT",
        "TYPE",
        "STATE",
        "HEALTH",
        "NODE",
        "PID",
        "RESTARTS",
        "HEARTBEAT",
        "FLOW",
    ]
    .map(String::from)
    .to_vec()];
    let by_id: HashMap<&str, &pb::Component> =
        components.iter().map(|c| (c.id.as_str(), c)).collect();
    let registered = |c: Option<&&pb::Component>| -> [String; 4] {
        match c {
            Some(c) => [
                c.r#type.clone(),
                c.status.clone(),
                c.last_heartbeat.as_ref().map_or("-".into(), |_| {
                    format!("{} ago", age(ts_ms(&c.last_heartbeat), now))
                }),
                flow_summary(&c.metrics),
            ],
            None => ["-", "not registered", "-", "-"].map(String::from),
        }
    };
    let mut instances: Vec<&pb::Instance> =
        pipeline.map_or(vec![], |p| p.instances.iter().collect());
    let rank = |i: &pb::Instance| {
        let kind = by_id
            .get(i.component_id.as_str())
            .map(|c| c.r#type.as_str());
        match kind {
            Some("source") => 0,
            Some("processor") => 1,
            Some("sink") => 2,
            _ => 3,
        }
    };
    instances.sort_by(|a, b| (rank(a), &a.key).cmp(&(rank(b), &b.key)));
    for i in &instances {
        let [kind, health, heartbeat, flow] = registered(by_id.get(i.component_id.as_str()));
        rows.push(vec![
            i.component_id.clone(),
            kind,
            i.state.clone(),
            health,
            nodes
                .get(&i.node_addr)
                .map_or_else(|| i.node_id.to_string(), u16::to_string),
            if i.pid == 0 {
                "-".into()
            } else {
                i.pid.to_string()
            },
            i.restarts.to_string(),
            heartbeat,
            flow,
        ]);
    }
    let mut others: Vec<&pb::Component> = components
        .iter()
        .filter(|c| !instances.iter().any(|i| i.component_id == c.id))
        .collect();
    others.sort_by(|a, b| a.id.cmp(&b.id));
    for c in others {
        let [kind, health, heartbeat, flow] = registered(Some(&c));
        rows.push(vec![
            c.id.clone(),
            kind,
            "-".into(),
            health,
            "-".into(),
            "-".into(),
            "-".into(),
            heartbeat,
            flow,
        ]);
    }
    rows
}

fn print_status(state: &DevState, procs: &[ProcRow], snap: &Snapshot) {
    match &snap.cluster {
        Ok(c) => println!(
            "cluster {}  leader {}  term {}",
            c.cluster_id, c.leader_id, c.term
        ),
        Err(e) => println!("cluster: {e:#}"),
    }
    print_table(&node_rows(procs, snap.cluster.as_ref().ok()));
    println!();
    match &snap.pipeline {
        Ok(p) => println!(
            "pipeline {}  {}  {}/{} ready  generation {}",
            p.name, p.status, p.ready, p.desired, p.generation
        ),
        Err(e) => println!("pipeline {}: {e:#}", state.pipeline),
    }
    match &snap.components {
        Ok(cs) => {
            let nodes: HashMap<String, u16> = procs
                .iter()
                .filter_map(|p| p.node.as_ref())
                .map(|n| (n.addr.clone(), n.index))
                .collect();
            print_table(&component_rows(
                snap.pipeline.as_ref().ok(),
                cs,
                &nodes,
                now_ms(),
            ));
        }
        Err(e) => println!("components: {e:#}"),
    }
}

// ---------------------------------------------------------------------------------------------
// dev status.

async fn status(g: &Global) -> anyhow::Result<()> {
    let path = state_path()?;
    let Some(state) = read_state(&path)? else {
        bail!(
            "no development environment is running (no state file at {})",
            path.display()
        );
    };
    if !state.up_alive() {
        bail!(
            "no development environment is running (the state file {} is from pid {}, which has exited; `flowctl dev down` cleans up)",
            path.display(),
            state.pid
        );
    }
    // The environment's own admin token, not the invocation's.
    let g = Global {
        endpoints: state.endpoints.clone(),
        token: None,
        token_file: state
            .admin_token_file
            .clone()
            .or_else(|| g.token_file.clone()),
        ..g.clone()
    };
    let c = client(&g)?;
    let snap = Snapshot::fetch(&c, &state.pipeline).await;
    let procs: Vec<(String, u32, bool)> = state.processes();
    match g.output {
        Format::Json | Format::Yaml => {
            let v = status_json(&state, &procs, &snap);
            crate::output::print(g.output, &v, |_| vec![])
        }
        _ => {
            println!("export FLOWCTL_ENDPOINTS={}", state.endpoints);
            if let Some(f) = &state.admin_token_file {
                println!("export FLOWCTL_TOKEN_FILE={}", f.display());
            }
            println!(
                "Kafka brokers: {}{}",
                state.kafka_brokers,
                if state.embedded_broker {
                    " (embedded in dev up)"
                } else {
                    ""
                }
            );
            println!(
                "dev up: pid {} ({}), since {}, {:?}",
                state.pid,
                if procs[0].2 { "alive" } else { "dead" },
                state.started_at,
                state.phase
            );
            println!("data and logs: {}", state.dir.display());
            println!();
            let rows: Vec<ProcRow> = state
                .nodes
                .iter()
                .map(|n| ProcRow {
                    what: format!("node {}", n.index),
                    pid: n.pid,
                    process: if alive(n.pid, n.pid_start) {
                        "alive"
                    } else {
                        "dead"
                    }
                    .to_owned(),
                    node: Some(n.clone()),
                })
                .collect();
            print_status(&state, &rows, &snap);
            Ok(())
        }
    }
}

fn status_json(state: &DevState, procs: &[(String, u32, bool)], snap: &Snapshot) -> Value {
    let mut errors = Vec::new();
    let mut err = |what: &str, e: &anyhow::Error| {
        errors.push(format!("{what}: {e:#}"));
        Value::Null
    };
    let cluster = match &snap.cluster {
        Ok(c) => json!({
            "cluster_id": c.cluster_id,
            "leader_id": c.leader_id,
            "term": c.term,
            "members": c.members.iter().map(|m| json!({
                "id": m.id,
                "addr": m.addr,
                "role": role_name(m.role),
                "voter": m.voter,
            })).collect::<Vec<_>>(),
        }),
        Err(e) => err("cluster", e),
    };
    let pipeline = match &snap.pipeline {
        Ok(p) => json!({
            "name": p.name,
            "status": p.status,
            "ready": p.ready,
            "desired": p.desired,
            "generation": p.generation,
            "instances": p.instances.iter().map(|i| json!({
                "key": i.key,
                "component_id": i.component_id,
                "node_id": i.node_id,
                "state": i.state,
                "healthy": i.healthy,
                "pid": i.pid,
                "restarts": i.restarts,
            })).collect::<Vec<_>>(),
        }),
        Err(e) => err("pipeline", e),
    };
    let components = match &snap.components {
        Ok(cs) => Value::Array(
            cs.iter()
                .map(|c| {
                    json!({
                        "id": c.id,
                        "type": c.r#type,
                        "pipeline": c.pipeline,
                        "status": c.status,
                        "reported_status": c.reported_status,
                        "last_heartbeat": c.last_heartbeat.as_ref().map(|_| rfc3339(ts_ms(&c.last_heartbeat))),
                        "metrics": c.metrics.iter().collect::<BTreeMap<_, _>>(),
                    })
                })
                .collect(),
        ),
        Err(e) => err("components", e),
    };
    json!({
        "state": state,
        "processes": procs.iter().map(|(what, pid, alive)| json!({
            "what": what, "pid": pid, "alive": alive,
        })).collect::<Vec<_>>(),
        "cluster": cluster,
        "pipeline": pipeline,
        "components": components,
        "errors": errors,
    })
}

// ---------------------------------------------------------------------------------------------
// dev down.

async fn down() -> anyhow::Result<()> {
    let path = state_path()?;
    let Some(state) = read_state(&path)? else {
        println!("no development environment is running");
        return Ok(());
    };
    let running: Vec<(String, u32, bool)> = state.processes();
    if running.iter().all(|(_, _, a)| !a) {
        remove_if_exists(&path)?;
        remove_temp_dir(&state);
        println!(
            "no development environment is running (removed the stale state file of pid {})",
            state.pid
        );
        return Ok(());
    }
    // `dev up` stops its nodes in order; nodes whose `dev up` is gone are stopped here.
    if state.up_alive() {
        send_signal(state.pid, rustix::process::Signal::TERM);
    } else {
        for n in state.nodes.iter().filter(|n| alive(n.pid, n.pid_start)) {
            send_signal(n.pid, rustix::process::Signal::TERM);
        }
    }
    let starts: HashMap<u32, u64> = std::iter::once((state.pid, state.pid_start))
        .chain(state.nodes.iter().map(|n| (n.pid, n.pid_start)))
        .collect();
    let left = |pids: &HashMap<u32, u64>| -> Vec<u32> {
        let mut v: Vec<u32> = pids
            .iter()
            .filter(|(pid, start)| alive(**pid, **start))
            .map(|(pid, _)| *pid)
            .collect();
        v.sort_unstable();
        v
    };
    let until = Instant::now() + DOWN_TIMEOUT;
    while !left(&starts).is_empty() && Instant::now() < until {
        tokio::time::sleep(POLL).await;
    }
    let stuck = left(&starts);
    if !stuck.is_empty() {
        for pid in &stuck {
            send_signal(*pid, rustix::process::Signal::KILL);
        }
        let until = Instant::now() + KILL_TIMEOUT;
        while !left(&starts).is_empty() && Instant::now() < until {
            tokio::time::sleep(POLL).await;
        }
        let still = left(&starts);
        if !still.is_empty() {
            bail!("processes {still:?} did not exit after SIGKILL");
        }
        println!("killed pids {stuck:?}, which did not stop within {DOWN_TIMEOUT:?}");
    }
    release_state(&path, state.pid);
    remove_temp_dir(&state);
    println!(
        "development environment stopped (dev up pid {}, nodes {})",
        state.pid,
        state
            .nodes
            .iter()
            .map(|n| n.pid.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Removes the temporary directory of an environment whose `dev up` did not (it was killed),
/// but only one that `dev up` made: a state file must not be able to name any directory.
fn remove_temp_dir(state: &DevState) {
    let made_by_dev_up = state.dir_is_temp
        && state.dir.parent() == Some(std::env::temp_dir().as_path())
        && state
            .dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("flowctl-dev-"));
    if made_by_dev_up {
        let _ = std::fs::remove_dir_all(&state.dir);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn stat_start_time_is_field_22_even_with_parentheses_in_the_name() {
        let line = "4242 (a (weird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 987654 1000 10 18446744073709551615";
        assert_eq!(parse_stat(line), Some(('S', 987_654)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not_it() {
        let pid = std::process::id();
        let (_, start) = proc_stat(pid).unwrap();
        assert!(alive(pid, start));
        assert!(alive(pid, 0));
        assert!(!alive(pid, start + 1));
    }

    #[test]
    fn ports_are_laid_out_from_the_base_and_must_fit() {
        let p = Ports::new(18080, 3).unwrap();
        assert_eq!(
            (p.grpc(2), p.metrics(0), p.metrics(2), p.peer(2)),
            (18082, 18090, 18092, 18102)
        );
        assert_eq!(p.all().len(), 9);
        assert!(Ports::new(65_530, 1).is_err());
        assert!(Ports::new(0, 1).is_err());
    }

    #[test]
    fn nodes_must_be_one_or_three() {
        assert_eq!(parse_nodes("3"), Ok(3));
        assert!(parse_nodes("2").is_err());
    }

    #[test]
    fn proto_package_is_read_from_the_package_statement() {
        let text = "syntax = \"proto3\";\n\n  package token_transfer ;\nmessage X {}\n";
        assert_eq!(proto_package(text).as_deref(), Some("token_transfer"));
        assert_eq!(proto_package("packages x;"), None);
    }

    #[test]
    fn flow_summary_picks_the_flow_metrics_in_a_fixed_order() {
        let m = |kv: &[(&str, &str)]| -> HashMap<String, String> {
            kv.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let consumer = m(&[
            ("flowctl_consumer_events_total", "1200"),
            ("flowctl_consumer_payment_events_total", "900"),
            ("flowctl_consumer_ledgers_seen", "40.0"),
            ("flowctl_consumer_last_ledger", "123495"),
            ("flowctl_agent_heartbeats_total", "7"),
        ]);
        assert_eq!(
            flow_summary(&consumer),
            "ledgers=40 events=1200 last=123495"
        );
        let other = m(&[("b", "2.5"), ("a", "1"), ("flowctl_agent_x", "3")]);
        assert_eq!(flow_summary(&other), "a=1 b=2.5");
        assert_eq!(flow_summary(&HashMap::new()), "-");
    }

    #[test]
    fn component_rows_join_instances_with_registrations() {
        let p = pb::Pipeline {
            instances: vec![pb::Instance {
                key: "sink/0".into(),
                component_id: "sink".into(),
                node_id: 7,
                node_addr: "127.0.0.1:9".into(),
                state: "running".into(),
                pid: 99,
                ..Default::default()
            }],
            ..Default::default()
        };
        let cs = vec![
            pb::Component {
                id: "sink".into(),
                r#type: "sink".into(),
                status: "healthy".into(),
                ..Default::default()
            },
            pb::Component {
                id: "manual".into(),
                r#type: "source".into(),
                status: "unhealthy".into(),
                ..Default::default()
            },
        ];
        let nodes = HashMap::from([("127.0.0.1:9".to_owned(), 2)]);
        let rows = component_rows(Some(&p), &cs, &nodes, 0);
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[1][..6],
            ["sink", "sink", "running", "healthy", "2", "99"]
        );
        assert_eq!(rows[2][..4], ["manual", "source", "-", "unhealthy"]);
    }

    #[test]
    fn a_second_claim_is_refused_while_the_first_is_alive_and_a_stale_one_is_replaced() {
        let dir = std::env::temp_dir().join(format!("flowctl-dev-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("state.json");
        let pid = std::process::id();
        let mut s = DevState {
            version: STATE_VERSION,
            pid,
            pid_start: proc_stat(pid).unwrap().1,
            phase: Phase::Running,
            started_at: "2025-01-01T00:00:00Z".into(),
            endpoints: "127.0.0.1:1".into(),
            kafka_brokers: String::new(),
            embedded_broker: true,
            dir: dir.clone(),
            dir_is_temp: false,
            pipeline: "p".into(),
            pipeline_file: "p.yaml".into(),
            nodes: vec![],
            admin_token_file: None,
        };
        claim_state(&path, &s).unwrap();
        assert_eq!(read_state(&path).unwrap().unwrap(), s);
        let err = claim_state(&path, &s).unwrap_err().to_string();
        assert!(err.contains("already running"), "{err}");
        // The same pid with another start time is a different, dead process.
        s.pid_start += 1;
        write_state(&path, &s).unwrap();
        s.pid_start -= 1;
        claim_state(&path, &s).unwrap();
        release_state(&path, pid);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
