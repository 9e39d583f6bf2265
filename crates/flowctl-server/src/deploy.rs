//! Deployment with the `process` driver.
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

use crate::clock::now_ms;
use flowctl_proto::internal::v1 as ipb;
use flowctl_raft::RaftNode;
use flowctl_spec::{Component, RestartPolicy, ValidatedPipeline};
use flowctl_state::placements::{instance_key, SetPlacement};
use flowctl_state::runtime::{
    InstanceState, InstanceStatus, PipelineReport, ReportRuntime, RuntimeEvent,
};
use flowctl_state::{Command, ComponentId, NodeId};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// A log file is rotated (to `.log.1`) when it grows past this.
pub const LOG_CAP_BYTES: u64 = 8 * 1024 * 1024;
const TICK: Duration = Duration::from_millis(500);
const STOP_GRACE: Duration = Duration::from_secs(3);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
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
    /// The cluster's peer secret: each instance gets its own agent token from it
    /// (`FLOWCTL_TOKEN`).
    pub peer: Option<crate::auth::Secret>,
    /// With TLS on the public port, the CA instances trust for it (`FLOWCTL_CACERT`: the
    /// `--trusted-ca-file`, which `flowctl certs init` makes the one CA of the cluster).
    pub cacert: Option<PathBuf>,
}

/// The programs the process driver may start: glob patterns over a program's canonical path
/// (symbolic links and `..` resolved), where `*` matches any run of characters (`/` included)
/// and `?` one character. The default is the directory of the running `flowctl` binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedCommands(Vec<String>);

impl AllowedCommands {
    /// Every pattern must be an absolute path pattern, or `*` (anything: the old behaviour).
    pub fn new(patterns: Vec<String>) -> Result<Self, String> {
        if patterns.is_empty() {
            return Err("--allowed-commands must name at least one pattern".into());
        }
        for p in &patterns {
            if p != "*" && !p.starts_with('/') {
                return Err(format!(
                    "--allowed-commands pattern {p:?} must be an absolute path pattern (or *)"
                ));
            }
        }
        Ok(AllowedCommands(patterns))
    }

    /// `<directory of the running flowctl>/*`.
    pub fn beside_flowctl() -> Result<Self, String> {
        let exe = std::env::current_exe()
            .and_then(std::fs::canonicalize)
            .map_err(|e| format!("cannot find the flowctl binary's directory: {e}"))?;
        let dir = exe
            .parent()
            .ok_or("the flowctl binary has no directory")?
            .to_string_lossy()
            .into_owned();
        Ok(AllowedCommands(vec![format!("{dir}/*")]))
    }

    pub fn patterns(&self) -> &[String] {
        &self.0
    }

    /// The pattern that allows `program` (a canonical path), if one does.
    fn allowing(&self, program: &Path) -> Option<&str> {
        let text = program.to_string_lossy();
        self.0
            .iter()
            .find(|p| glob_match(p.as_bytes(), text.as_bytes()))
            .map(String::as_str)
    }
}

/// `*` matches any run of bytes, `?` any one byte; everything else itself.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and the text position it has consumed up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// The uid and gid instances run as (`--run-as USER|UID[:GID]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

impl RunAs {
    /// A user name (looked up in /etc/passwd) or a numeric uid, with an optional `:GID`
    /// (default: the user's primary group, or the uid's number when it has no entry).
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (user, group) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        // name:password:uid:gid:...
        let entry = passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let (uid, gid) = (
                f.get(2)?.parse::<u32>().ok()?,
                f.get(3)?.parse::<u32>().ok()?,
            );
            (f[0] == user || user.parse::<u32>() == Ok(uid)).then_some((uid, gid))
        });
        let (uid, primary) = match (entry, user.parse::<u32>()) {
            (Some(e), _) => e,
            (None, Ok(uid)) => (uid, uid),
            (None, Err(_)) => return Err(format!("--run-as: no user {user:?} in /etc/passwd")),
        };
        let gid = match group {
            None => primary,
            Some(g) => g
                .parse::<u32>()
                .map_err(|_| format!("--run-as: group {g:?} must be a numeric gid"))?,
        };
        Ok(RunAs { uid, gid })
    }
}

/// The variables of the node's own environment that instances keep; everything else of the
/// server's environment (credentials, `LD_*`, ...) is withheld from them.
const KEPT_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "RUST_LOG",
    "RUST_BACKTRACE",
];

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

use crate::spec_cache::SpecCache;

/// Starts the scheduler and the supervisor; both stop on `cancel` (the supervisor stops its
/// children first).
pub fn start(
    node: RaftNode,
    specs: SpecCache,
    opts: DeployOptions,
    cancel: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) {
    tracker.spawn(run_scheduler(
        node.clone(),
        specs.clone(),
        opts.clone(),
        cancel.clone(),
    ));
    tracker.spawn(run_supervisor(node, specs, opts, cancel));
}

// ---------------------------------------------------------------------------------------------
// Scheduler (leader only)

/// Whether a stored document uses the `process` driver (the default).
fn runs_as_processes(canonical: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Doc {
        #[serde(default)]
        spec: Spec,
    }
    #[derive(serde::Deserialize, Default)]
    struct Spec {
        #[serde(default)]
        driver: Option<String>,
    }
    match serde_json::from_str::<Doc>(canonical) {
        Ok(d) => d.spec.driver.is_none_or(|d| d == "process"),
        Err(_) => true,
    }
}

async fn probe(node: &RaftNode, addr: &str) -> bool {
    let Ok(mut c) = node.peers().client(addr) else {
        return false;
    };
    let mut req = tonic::Request::new(ipb::NodeStatusRequest {});
    req.set_timeout(Duration::from_secs(1));
    c.node_status(req).await.is_ok()
}

async fn run_scheduler(
    node: RaftNode,
    specs: SpecCache,
    opts: DeployOptions,
    cancel: CancellationToken,
) {
    let mut last_ok: HashMap<u64, Instant> = HashMap::new();
    // Pipelines (name, generation) whose topics exist; a failure is reported once.
    let mut topics_ready: HashSet<(String, u64)> = HashSet::new();
    let mut topics_failed: HashSet<(String, u64)> = HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !node.is_leader() {
            last_ok.clear();
            topics_ready.clear();
            topics_failed.clear();
            continue;
        }
        let st = node.status();
        let now = Instant::now();
        let probes = st.peers.iter().map(|(&id, addr)| {
            let node = node.clone();
            let addr = addr.clone();
            async move { (id, id == node.id() || probe(&node, &addr).await) }
        });
        for (id, ok) in futures::future::join_all(probes).await {
            // A node first seen now (or by a new leader) gets a full grace period.
            let seen = last_ok.entry(id).or_insert(now);
            if ok {
                *seen = now;
            }
        }
        last_ok.retain(|id, _| st.nodes.contains_key(id));
        let live: Vec<u64> = st
            .nodes
            .keys()
            .copied()
            .filter(|id| {
                last_ok
                    .get(id)
                    .is_some_and(|t| now.duration_since(*t) < opts.node_grace + FENCE_MARGIN)
            })
            .collect();
        if live.is_empty() {
            continue;
        }
        // Copy only what is needed: names and generations, the documents not yet parsed at
        // their generation, and the (process-driver only) placements.
        let (pipelines, placements, all_names) = node
            .read_stale(|s| {
                let pipelines: Vec<(String, u64, Option<String>)> = s
                    .pipelines
                    .values()
                    // Only process-driver pipelines are deployed; the driver is read from the
                    // canonical JSON, which is much cheaper than validating the YAML again.
                    .filter(|p| runs_as_processes(&p.canonical))
                    .map(|p| {
                        let yaml = specs
                            .cached(&p.name, p.generation)
                            .is_none()
                            .then(|| p.spec_yaml.clone());
                        (p.name.clone(), p.generation, yaml)
                    })
                    .collect();
                let names: HashSet<String> = s.pipelines.keys().cloned().collect();
                (pipelines, s.placements.clone(), names)
            })
            .0;
        specs.retain(|name| all_names.contains(name));
        // Load: instances kept where they are, counted first across all pipelines.
        let mut load: BTreeMap<u64, usize> = live.iter().map(|&n| (n, 0)).collect();
        for p in placements.values() {
            for n in p.instances.values() {
                if let Some(l) = load.get_mut(&n.0) {
                    *l += 1;
                }
            }
        }
        for (name, generation, yaml) in &pipelines {
            let generation = *generation;
            let spec = match (specs.cached(name, generation), yaml) {
                (Some(v), _) => v,
                (None, Some(y)) => specs.get(name, generation, y),
                (None, None) => None,
            };
            let Some(spec) = spec else {
                continue;
            };
            if spec.spec().driver != flowctl_spec::Driver::Process {
                // Only the process driver has a runtime here; other pipelines are stored, not run.
                continue;
            }
            let old = placements.get(name);
            // Topics first, so that instances find them when they start.
            let key = (name.clone(), generation);
            if old.is_none_or(|o| o.generation != generation) && !topics_ready.contains(&key) {
                match ensure_topics(&spec, &opts).await {
                    Ok(()) => {
                        topics_ready.insert(key);
                    }
                    Err(e) => {
                        tracing::warn!(pipeline = %name, error = %e, "pipeline topics not created; will retry");
                        if topics_failed.insert(key) {
                            let event = Command::ReportRuntime(ReportRuntime {
                                node: NodeId(node.id()),
                                pipelines: vec![PipelineReport {
                                    pipeline: name.clone(),
                                    instances: Vec::new(),
                                    events: vec![RuntimeEvent {
                                        at_ms: now_ms(),
                                        node: NodeId(node.id()),
                                        instance: String::new(),
                                        reason: "TopicsFailed".into(),
                                        message: e,
                                        warning: true,
                                    }],
                                }],
                            });
                            let _ = node.propose(event).await;
                        }
                        continue;
                    }
                }
            }
            let mut instances = BTreeMap::new();
            for (_, c) in spec.components() {
                for r in 0..c.replicas {
                    let key = instance_key(c.id.as_str(), r);
                    let kept = old
                        .and_then(|o| o.instances.get(&key))
                        .filter(|n| live.contains(&n.0))
                        .copied();
                    let n = match kept {
                        Some(n) => n,
                        None => {
                            let (&best, _) = load
                                .iter()
                                .min_by_key(|(id, l)| (**l, **id))
                                .expect("live is not empty");
                            *load.entry(best).or_default() += 1;
                            NodeId(best)
                        }
                    };
                    instances.insert(key, n);
                }
            }
            let unchanged =
                old.is_some_and(|o| o.generation == generation && o.instances == instances);
            if unchanged {
                continue;
            }
            // Say why instances moved: the events go in the same log entry as the placement.
            let me = NodeId(node.id());
            let at_ms = now_ms();
            let events: Vec<RuntimeEvent> = instances
                .iter()
                .filter_map(|(key, n)| {
                    let message = match old.and_then(|o| o.instances.get(key)) {
                        Some(prev) if prev == n => return None,
                        Some(prev) => format!(
                            "moved from node {} (not answering for {:?}) to node {}",
                            prev.0,
                            opts.node_grace + FENCE_MARGIN,
                            n.0
                        ),
                        None => format!("placed on node {}", n.0),
                    };
                    Some(RuntimeEvent {
                        at_ms,
                        node: me,
                        instance: key.clone(),
                        reason: "Scheduled".into(),
                        message,
                        warning: old.is_some_and(|o| o.instances.contains_key(key)),
                    })
                })
                .collect();
            let mut cmds = vec![Command::SetPlacement(SetPlacement {
                pipeline: name.clone(),
                generation,
                instances,
            })];
            if !events.is_empty() {
                cmds.push(Command::ReportRuntime(ReportRuntime {
                    node: me,
                    pipelines: vec![PipelineReport {
                        pipeline: name.clone(),
                        instances: Vec::new(),
                        events,
                    }],
                }));
            }
            let cmd = Command::Batch(cmds);
            match node.propose(cmd).await {
                Ok(_) => {
                    tracing::info!(pipeline = %name, generation = generation, "placed pipeline instances")
                }
                Err(e) => tracing::warn!(pipeline = %name, error = %e, "placement not committed"),
            }
        }
    }
}

/// Creates the pipeline's topics (one per producing component, and its DLQ) when it has
/// brokers; partitions and replication come from `spec.bus`.
async fn ensure_topics(spec: &ValidatedPipeline, opts: &DeployOptions) -> Result<(), String> {
    let brokers = opts.brokers_of(spec);
    if brokers.is_empty() {
        return Ok(());
    }
    let bus = &spec.spec().bus;
    let mut names: Vec<String> = spec
        .components()
        .filter(|(kind, _)| *kind != flowctl_spec::ComponentKind::Sink)
        .map(|(_, c)| flowctl_spec::topic_name(spec, &c.id))
        .collect();
    names.push(flowctl_spec::dlq_topic_name(spec));
    let topics: Vec<flowctl_bus::TopicSpec> = names
        .into_iter()
        .map(|n| {
            let mut t = flowctl_bus::TopicSpec::new(n);
            if let Some(p) = bus.partitions {
                t = t.with_partitions(p);
            }
            if let Some(r) = bus.replication_factor {
                t = t.with_replication_factor(r);
            }
            t
        })
        .collect();
    let brokers = brokers.join(",");
    flowctl_bus::ensure_topics(&brokers, &topics, Duration::from_secs(15))
        .await
        .map_err(|e| format!("cannot create the topics on the Kafka broker {brokers}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Supervisor (every node)

/// What one instance should run.
#[derive(Debug, Clone, PartialEq)]
struct Desired {
    pipeline: String,
    key: String,
    component: String,
    program: String,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    policy: RestartPolicy,
}

struct Running {
    desired: Desired,
    /// [`spec_hash`] of `desired`.
    hash: String,
    child: Option<tokio::process::Child>,
    restarts: u32,
    next_start: Instant,
    /// Set once the instance exited and will not be restarted (policy).
    done: bool,
    started_at_ms: u64,
    last_exit: Option<String>,
}

impl Running {
    fn status(&self, node: NodeId) -> InstanceStatus {
        let state = match (&self.child, self.done) {
            (Some(_), _) => InstanceState::Running,
            (None, true) => InstanceState::Exited,
            (None, false) if self.last_exit.is_none() => InstanceState::StartFailed,
            (None, false) => InstanceState::Backoff,
        };
        InstanceStatus {
            node,
            spec_hash: self.hash.clone(),
            state,
            pid: self.child.as_ref().and_then(tokio::process::Child::id),
            restarts: self.restarts,
            started_at_ms: self.started_at_ms,
            last_exit: self.last_exit.clone(),
        }
    }
}

/// `config` keys become UPPER_SNAKE environment variables.
fn instance_env(
    p: &ValidatedPipeline,
    c: &Component,
    replica: u32,
    endpoints: &str,
    opts: &DeployOptions,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for (k, v) in &c.config {
        let v = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        env.insert(flowctl_spec::config_env_name(k), v);
    }
    for (k, v) in &c.env {
        env.insert(k.clone(), v.clone());
    }
    let id = c.instance_id(replica);
    if let Some(peer) = &opts.peer {
        env.insert(
            "FLOWCTL_TOKEN".into(),
            crate::auth::instance_token(peer, &id),
        );
    }
    if let Some(ca) = &opts.cacert {
        env.insert("FLOWCTL_CACERT".into(), ca.display().to_string());
    }
    env.insert("ENABLE_FLOWCTL".into(), "true".into());
    env.insert("FLOWCTL_ENDPOINT".into(), endpoints.to_owned());
    env.insert("FLOWCTL_COMPONENT_ID".into(), id);
    // A Go duration, as the original SDK reads it.
    env.insert(
        "FLOWCTL_HEARTBEAT_INTERVAL".into(),
        format!("{}ms", opts.heartbeat_interval.as_millis()),
    );
    env.insert("FLOWCTL_PIPELINE".into(), p.name().to_owned());
    env.insert("FLOWCTL_REPLICA".into(), replica.to_string());
    if let Some(port) = c.health_port_of(replica) {
        env.insert("HEALTH_PORT".into(), port.to_string());
    }
    env.insert("KAFKA_BROKERS".into(), opts.brokers_of(p).join(","));
    env.insert("DLQ_TOPIC".into(), flowctl_spec::dlq_topic_name(p));
    let inputs: Vec<String> = c
        .inputs
        .iter()
        .map(|i| flowctl_spec::topic_name(p, i))
        .collect();
    env.insert("INPUT_TOPICS".into(), inputs.join(","));
    env.insert("OUTPUT_TOPIC".into(), flowctl_spec::topic_name(p, &c.id));
    env
}

fn desired_here(
    node: &RaftNode,
    specs: &SpecCache,
    opts: &DeployOptions,
) -> BTreeMap<(String, String), Desired> {
    let me = NodeId(node.id());
    // Copy only the placements that name this node, and their pipelines.
    let (pipelines, placements) = node
        .read_stale(|s| {
            let placements: BTreeMap<String, flowctl_state::placements::Placement> = s
                .placements
                .iter()
                .filter(|(_, p)| p.instances.values().any(|n| *n == me))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let pipelines: BTreeMap<String, flowctl_state::PipelineRecord> = placements
                .keys()
                .filter_map(|k| s.pipelines.get(k).map(|p| (k.clone(), p.clone())))
                .collect();
            (pipelines, placements)
        })
        .0;
    let endpoints = node
        .status()
        .nodes
        .values()
        .cloned()
        .collect::<Vec<_>>()
        .join(",");
    let mut out = BTreeMap::new();
    for (name, placement) in &placements {
        let Some(rec) = pipelines.get(name) else {
            continue;
        };
        // A placement of an older generation still holds for the instances it names: they run
        // the current spec (unchanged components keep running; changed ones are replaced one
        // by one; removed ones stop), and new components wait for the scheduler.
        let Some(spec) = specs.get(name, rec.generation, &rec.spec_yaml) else {
            continue;
        };
        for (key, n) in &placement.instances {
            if *n != me {
                continue;
            }
            let Some((cid, replica)) = key.rsplit_once('/') else {
                continue;
            };
            let Ok(replica) = replica.parse::<u32>() else {
                continue;
            };
            let Some((_, c)) = spec.components().find(|(_, c)| c.id.as_str() == cid) else {
                continue;
            };
            let Some((program, rest)) = c.command.split_first() else {
                continue;
            };
            let mut args = rest.to_vec();
            args.extend(c.args.iter().cloned());
            out.insert(
                (name.clone(), key.clone()),
                Desired {
                    pipeline: name.clone(),
                    key: key.clone(),
                    component: cid.to_owned(),
                    program: program.clone(),
                    args,
                    env: {
                        let mut env = instance_env(&spec, c, replica, &endpoints, opts);
                        if let Some(epoch) = placement.epoch(key) {
                            env.insert("FLOWCTL_EPOCH".into(), epoch.to_string());
                        }
                        env
                    },
                    policy: c.restart_policy,
                },
            );
        }
    }
    out
}

/// The log file of an instance.
pub fn log_path(data_dir: &Path, pipeline: &str, key: &str) -> PathBuf {
    data_dir
        .join("logs")
        .join(pipeline)
        .join(format!("{}.log", key.replace('/', "-")))
}

async fn start_instance(
    d: &Desired,
    opts: &DeployOptions,
    tracker: &tokio_util::task::TaskTracker,
) -> std::io::Result<tokio::process::Child> {
    let path = log_path(&opts.data_dir, &d.pipeline, &d.key);
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    // Keep the previous run's output for `logs --previous`.
    if tokio::fs::try_exists(&path).await.unwrap_or(false) {
        let _ = tokio::fs::rename(&path, path.with_extension("prev.log")).await;
    }
    let workdir = opts
        .data_dir
        .join("work")
        .join(&d.pipeline)
        .join(d.key.replace('/', "-"));
    tokio::fs::create_dir_all(&workdir).await?;
    let program = allowed_program(d, &opts.allowed)?;
    let mut cmd = tokio::process::Command::new(&program);
    cmd.env_clear();
    for k in KEPT_ENV {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
    if let Some(u) = opts.run_as {
        cmd.uid(u.uid).gid(u.gid);
    }
    // Its own process group, so that stopping it reaches the programs it starts too.
    cmd.process_group(0);
    cmd.args(&d.args)
        .envs(
            d.env
                .iter()
                .filter(|(k, _)| !flowctl_spec::is_loader_variable(k)),
        )
        .current_dir(&workdir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn()?;
    if let (Some(out), Some(err)) = (child.stdout.take(), child.stderr.take()) {
        let (tx, rx) = tokio::sync::mpsc::channel::<String>(1024);
        let tx2 = tx.clone();
        tracker.spawn(pump(tokio::io::BufReader::new(out), tx));
        tracker.spawn(pump(tokio::io::BufReader::new(err), tx2));
        tracker.spawn(write_log(path, rx));
    }
    Ok(child)
}

/// Where a component's `command` is: a path (with a `/`) as given; a bare name on the `PATH`
/// (the instance's own `env.PATH` if it sets one, else the node's), else beside the running
/// `flowctl` binary, where `scripts/install.sh` and `cargo build` put the example components.
/// A name found nowhere is returned as it is, so that the spawn error names it.
fn resolve_program(program: &str, env: &BTreeMap<String, String>) -> PathBuf {
    if program.contains('/') {
        return PathBuf::from(program);
    }
    let path = env
        .get("PATH")
        .map(std::ffi::OsString::from)
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_default();
    let beside_flowctl = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    std::env::split_paths(&path)
        .chain(beside_flowctl)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
        .unwrap_or_else(|| PathBuf::from(program))
}

/// The canonical path of `d`'s program, if `allowed` lets it run; otherwise an error naming
/// the program and the rules.
fn allowed_program(d: &Desired, allowed: &AllowedCommands) -> std::io::Result<PathBuf> {
    let found = resolve_program(&d.program, &d.env);
    let canonical = std::fs::canonicalize(&found).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound && !d.program.contains('/') {
            std::io::Error::new(
                e.kind(),
                "not found on the node's PATH nor beside the flowctl binary",
            )
        } else {
            e
        }
    })?;
    match allowed.allowing(&canonical) {
        Some(_) => Ok(canonical),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is outside this node's --allowed-commands ({})",
                canonical.display(),
                allowed.patterns().join(",")
            ),
        )),
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Makes the child receive SIGKILL when this node's process dies, even by SIGKILL, so that
/// a lost node leaves no orphaned instance running next to its replacement.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
    // is async-signal-safe; it allocates nothing and touches no shared state.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

async fn pump<R: tokio::io::AsyncBufRead + Unpin>(r: R, tx: tokio::sync::mpsc::Sender<String>) {
    let mut lines = r.lines();
    while let Ok(Some(line)) = lines.next_line().await {
        // A full channel slows the child's output down rather than growing memory.
        if tx.send(line).await.is_err() {
            return;
        }
    }
}

/// Appends lines to the log file, rotating it at [`LOG_CAP_BYTES`].
async fn write_log(path: PathBuf, mut rx: tokio::sync::mpsc::Receiver<String>) {
    let open = |p: PathBuf| async move {
        tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .await
    };
    let Ok(mut f) = open(path.clone()).await else {
        return;
    };
    let mut size = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    while let Some(line) = rx.recv().await {
        if size > LOG_CAP_BYTES {
            let _ = f.flush().await;
            let _ = tokio::fs::rename(&path, path.with_extension("log.1")).await;
            let Ok(nf) = open(path.clone()).await else {
                return;
            };
            f = nf;
            size = 0;
        }
        // Every line carries its write time (Unix milliseconds) for `logs --since`.
        let bytes = format!("{} {line}\n", now_ms());
        size += bytes.len() as u64;
        if f.write_all(bytes.as_bytes()).await.is_err() {
            return;
        }
        let _ = f.flush().await;
    }
}

/// Sends `signal` to the process group an instance leads (the instance and every program it
/// started). A group that is gone already is not an error: the instance has exited.
fn signal_group(pgid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pgid as i32) {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

/// SIGTERM to the instance's process group, then SIGKILL to the group after [`STOP_GRACE`];
/// the group goes too when the instance exits early, so no grandchild outlives it.
async fn stop_instance(child: &mut tokio::process::Child) {
    let Some(pid) = child.id() else {
        let _ = child.kill().await;
        return;
    };
    signal_group(pid, rustix::process::Signal::TERM);
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    signal_group(pid, rustix::process::Signal::KILL);
}

fn backoff(restarts: u32) -> Duration {
    Duration::from_millis(500)
        .saturating_mul(1u32 << restarts.min(8))
        .min(MAX_BACKOFF)
}

/// An instance that is running but not (yet) healthy lets the rollout go on after this long
/// only if it never registered: a program that does not use the agent cannot report health.
const ROLLOUT_UNREGISTERED_GRACE: Duration = Duration::from_secs(20);
/// Pending events kept while reports cannot be committed; the oldest are dropped first.
const MAX_PENDING_EVENTS: usize = 256;
/// Environment entries that differ between replicas of one component version.
/// (`FLOWCTL_EPOCH` differs between placements of one replica, too: an instance that stays on
/// its node keeps its epoch, so it never changes under a running copy.)
const PER_REPLICA_ENV: [&str; 4] = [
    "FLOWCTL_COMPONENT_ID",
    "FLOWCTL_REPLICA",
    "HEALTH_PORT",
    "FLOWCTL_EPOCH",
];

/// A stable hash of what a component version runs, equal across its replicas (FNV-1a).
fn spec_hash(d: &Desired) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |s: &str| {
        for b in s.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    feed(&d.program);
    for a in &d.args {
        feed(a);
    }
    for (k, v) in &d.env {
        if !PER_REPLICA_ENV.contains(&k.as_str()) {
            feed(k);
            feed(v);
        }
    }
    feed(&format!("{:?}", d.policy));
    format!("{h:016x}")
}

/// Whether replica `replica` of a changed component may be replaced now: every lower replica
/// of the component (on any node) already runs `hash` and is healthy, exited for good, or
/// is a program that never registers and has run for [`ROLLOUT_UNREGISTERED_GRACE`]. So a
/// changed component rolls one replica at a time across the cluster, and a new version that
/// crashes or stays unhealthy stops the rollout.
fn may_replace(node: &RaftNode, d: &Desired, hash: &str, now_ms: u64) -> bool {
    let Some((cid, replica)) = d.key.rsplit_once('/') else {
        return true;
    };
    let Ok(replica) = replica.parse::<u32>() else {
        return true;
    };
    node.read_stale(|s| {
        let Some(p) = s.placements.get(&d.pipeline) else {
            return true;
        };
        let rt = s.runtime.get(&d.pipeline);
        let replicas: Vec<u32> = p
            .instances
            .keys()
            .filter_map(|k| k.rsplit_once('/'))
            .filter(|(c, _)| *c == cid)
            .filter_map(|(_, r)| r.parse::<u32>().ok())
            .collect();
        let count = replicas.len();
        replicas.iter().filter(|r| **r < replica).all(|r| {
            let Some(st) = rt.and_then(|rt| rt.instances.get(&instance_key(cid, *r))) else {
                return false;
            };
            if st.spec_hash != hash {
                return false;
            }
            match st.state {
                InstanceState::Exited => true,
                InstanceState::Backoff | InstanceState::StartFailed => false,
                InstanceState::Running => {
                    let id = ComponentId(flowctl_spec::instance_id(cid, *r, count as u32));
                    // Registrations carry the leader's clock; allow a little skew.
                    let rec = s
                        .components
                        .get(&id)
                        .filter(|c| c.registered_at_ms + 2_000 >= st.started_at_ms);
                    match rec {
                        Some(c) => c.healthy,
                        None => {
                            now_ms.saturating_sub(st.started_at_ms)
                                >= ROLLOUT_UNREGISTERED_GRACE.as_millis() as u64
                        }
                    }
                }
            }
        })
    })
    .0
}

/// Collects this node's events and commits them, with the status of its instances, as
/// [`Command::ReportRuntime`].
struct Reporter {
    node: RaftNode,
    events: Vec<(String, RuntimeEvent)>,
}

impl Reporter {
    fn event(
        &mut self,
        pipeline: &str,
        instance: &str,
        reason: &str,
        message: String,
        warning: bool,
    ) {
        if self.events.len() >= MAX_PENDING_EVENTS {
            self.events.remove(0);
            metrics::counter!("flowctl_supervisor_events_dropped_total").increment(1);
        }
        self.events.push((
            pipeline.to_owned(),
            RuntimeEvent {
                at_ms: now_ms(),
                node: NodeId(self.node.id()),
                instance: instance.to_owned(),
                reason: reason.to_owned(),
                message,
                warning,
            },
        ));
    }

    /// Sends what differs from the replicated state (so a restarted node also clears what it
    /// no longer runs), plus the pending events. Kept for the next tick when not committed.
    async fn flush(&mut self, current: BTreeMap<(String, String), InstanceStatus>) {
        let me = NodeId(self.node.id());
        let stored: BTreeMap<(String, String), InstanceStatus> = self
            .node
            .read_stale(|s| {
                s.runtime
                    .iter()
                    .flat_map(|(p, rt)| {
                        rt.instances
                            .iter()
                            .filter(|(_, st)| st.node == me)
                            .map(|(k, st)| ((p.clone(), k.clone()), st.clone()))
                    })
                    .collect()
            })
            .0;
        let mut by_pipeline: BTreeMap<String, PipelineReport> = BTreeMap::new();
        fn entry<'a>(
            m: &'a mut BTreeMap<String, PipelineReport>,
            p: &str,
        ) -> &'a mut PipelineReport {
            m.entry(p.to_owned()).or_insert_with(|| PipelineReport {
                pipeline: p.to_owned(),
                instances: Vec::new(),
                events: Vec::new(),
            })
        }
        for (k, st) in &current {
            if stored.get(k) != Some(st) {
                entry(&mut by_pipeline, &k.0)
                    .instances
                    .push((k.1.clone(), Some(st.clone())));
            }
        }
        for k in stored.keys() {
            if !current.contains_key(k) {
                entry(&mut by_pipeline, &k.0)
                    .instances
                    .push((k.1.clone(), None));
            }
        }
        for (p, e) in &self.events {
            entry(&mut by_pipeline, p).events.push(e.clone());
        }
        if by_pipeline.is_empty() {
            return;
        }
        let cmd = Command::ReportRuntime(ReportRuntime {
            node: me,
            pipelines: by_pipeline.into_values().collect(),
        });
        match tokio::time::timeout(REPORT_TIMEOUT, self.node.propose(cmd)).await {
            Ok(Ok(_)) => self.events.clear(),
            Ok(Err(e)) => tracing::debug!(error = %e, "runtime report not committed; retrying"),
            Err(_) => tracing::debug!("runtime report timed out; retrying"),
        }
    }
}

fn exit_text(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

async fn run_supervisor(
    node: RaftNode,
    specs: SpecCache,
    opts: DeployOptions,
    cancel: CancellationToken,
) {
    let mut running: BTreeMap<(String, String), Running> = BTreeMap::new();
    let mut reporter = Reporter {
        node: node.clone(),
        events: Vec::new(),
    };
    let pumps = tokio_util::task::TaskTracker::new();
    let quorum = QuorumContact::new();
    pumps.spawn(quorum.clone().watch(node.clone(), cancel.clone()));
    let mut fenced = false;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let silent = quorum.age();
        if (silent >= opts.node_grace) != fenced {
            fenced = !fenced;
            if fenced {
                tracing::warn!(
                    seconds = silent.as_secs_f64(),
                    instances = running.len(),
                    "no quorum reached for the node grace: fenced, stopping every instance here"
                );
            } else {
                tracing::info!("a quorum answers again: no longer fenced");
            }
            metrics::gauge!("flowctl_supervisor_fenced").set(if fenced { 1.0 } else { 0.0 });
        }
        // Fenced, nothing runs here: the leader moves this node's instances elsewhere.
        let desired = if fenced {
            BTreeMap::new()
        } else {
            desired_here(&node, &specs, &opts)
        };
        // Stop what is no longer placed here.
        let gone: Vec<_> = running
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect();
        for k in gone {
            if let Some(mut r) = running.remove(&k) {
                if let Some(c) = r.child.as_mut() {
                    stop_instance(c).await;
                }
                tracing::info!(pipeline = %k.0, instance = %k.1, fenced, "stopped instance");
                let why = if fenced {
                    format!("fenced: this node reached no quorum for {silent:.1?}")
                } else {
                    "no longer placed on this node".into()
                };
                reporter.event(&k.0, &k.1, "Stopped", why, fenced);
            }
        }
        // One rolling replacement per component per tick, and only once the lower replicas
        // run the new version and are healthy (see `may_replace`).
        let mut rolled: HashSet<(String, String)> = HashSet::new();
        let now = Instant::now();
        for (k, d) in &desired {
            let comp = (d.pipeline.clone(), d.component.clone());
            match running.get_mut(k) {
                None => {
                    let mut r = Running {
                        desired: d.clone(),
                        hash: spec_hash(d),
                        restarts: 0,
                        next_start: now + backoff(0),
                        done: false,
                        child: None,
                        started_at_ms: now_ms(),
                        last_exit: None,
                    };
                    launch(&mut r, &opts, &pumps, &mut reporter, "Started").await;
                    running.insert(k.clone(), r);
                }
                Some(r) if r.desired != *d => {
                    let hash = spec_hash(d);
                    // Only the epoch changed (placed elsewhere and back while this node did
                    // not see it): the copy here is fenced, so replace it now, not as a
                    // rollout step.
                    let epoch_only = {
                        let (mut a, mut b) = (r.desired.clone(), d.clone());
                        a.env.remove("FLOWCTL_EPOCH");
                        b.env.remove("FLOWCTL_EPOCH");
                        a == b
                    };
                    if !epoch_only {
                        if rolled.contains(&comp) || !may_replace(&node, d, &hash, now_ms()) {
                            continue;
                        }
                        rolled.insert(comp);
                    }
                    if let Some(c) = r.child.as_mut() {
                        stop_instance(c).await;
                    }
                    r.child = None;
                    r.desired = d.clone();
                    r.hash = hash;
                    r.restarts = 0;
                    r.done = false;
                    r.last_exit = None;
                    launch(r, &opts, &pumps, &mut reporter, "Replaced").await;
                    metrics::counter!("flowctl_supervisor_replacements_total").increment(1);
                }
                Some(r) => {
                    if r.done {
                        continue;
                    }
                    let exited = match r.child.as_mut() {
                        Some(c) => match c.try_wait() {
                            Ok(Some(status)) => Some((status.success(), exit_text(status))),
                            Ok(None) => None,
                            Err(e) => Some((false, e.to_string())),
                        },
                        None => Some((false, String::new())),
                    };
                    let Some((success, how)) = exited else {
                        continue;
                    };
                    if r.child.is_some() {
                        tracing::info!(pipeline = %d.pipeline, instance = %d.key, success, restarts = r.restarts, "instance exited");
                        reporter.event(&d.pipeline, &d.key, "Exited", how.clone(), !success);
                        r.last_exit = Some(how);
                        r.child = None;
                        r.next_start = now + backoff(r.restarts);
                    }
                    let restart = match d.policy {
                        RestartPolicy::Always => true,
                        RestartPolicy::OnFailure => !success,
                        RestartPolicy::Never => false,
                    };
                    if !restart {
                        r.done = true;
                        continue;
                    }
                    if now >= r.next_start {
                        r.restarts += 1;
                        r.next_start = now + backoff(r.restarts);
                        launch(r, &opts, &pumps, &mut reporter, "Restarted").await;
                        metrics::counter!("flowctl_supervisor_restarts_total").increment(1);
                    }
                }
            }
        }
        metrics::gauge!("flowctl_supervisor_instances")
            .set(running.values().filter(|r| r.child.is_some()).count() as f64);
        // A report cannot commit without a quorum; it waits (and its events with it) rather
        // than hold up the next tick.
        if quorum.age() < 2 * QUORUM_CHECK {
            let me = NodeId(node.id());
            let current = running
                .iter()
                .map(|(k, r)| (k.clone(), r.status(me)))
                .collect();
            reporter.flush(current).await;
        }
    }
    // Shutting down: stop every child before the node exits.
    for (_, mut r) in std::mem::take(&mut running) {
        if let Some(c) = r.child.as_mut() {
            stop_instance(c).await;
        }
    }
    pumps.close();
    let _ = tokio::time::timeout(Duration::from_secs(2), pumps.wait()).await;
}

/// When this node last confirmed that it reaches a quorum (see [`RaftNode::confirm_quorum`]):
/// the supervisor's fence. It starts fresh, so a node that has just started gets a full grace.
#[derive(Clone)]
struct QuorumContact(std::sync::Arc<std::sync::Mutex<Instant>>);

impl QuorumContact {
    fn new() -> Self {
        QuorumContact(std::sync::Arc::new(std::sync::Mutex::new(Instant::now())))
    }

    fn age(&self) -> Duration {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).elapsed()
    }

    async fn watch(self, node: RaftNode, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(QUORUM_CHECK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let started = Instant::now();
            if let Ok(Ok(())) = tokio::time::timeout(QUORUM_CHECK, node.confirm_quorum()).await {
                // The quorum answered at some point after the check began.
                *self.0.lock().unwrap_or_else(|p| p.into_inner()) = started;
            }
        }
    }
}

/// Starts `r`'s process and records the outcome as an event named `reason`.
async fn launch(
    r: &mut Running,
    opts: &DeployOptions,
    pumps: &tokio_util::task::TaskTracker,
    reporter: &mut Reporter,
    reason: &str,
) {
    let d = &r.desired;
    r.started_at_ms = now_ms();
    match start_instance(d, opts, pumps).await {
        Ok(c) => {
            let pid = c.id().unwrap_or(0);
            tracing::info!(pipeline = %d.pipeline, instance = %d.key, pid, restarts = r.restarts, "{}", reason.to_lowercase());
            let message = match reason {
                "Restarted" => format!("pid {pid}, restart {}", r.restarts),
                "Replaced" => format!("pid {pid}, with the changed spec {}", r.hash),
                _ => format!("pid {pid}"),
            };
            reporter.event(&d.pipeline, &d.key, reason, message, reason == "Restarted");
            r.child = Some(c);
        }
        Err(e) => {
            tracing::warn!(pipeline = %d.pipeline, instance = %d.key, error = %e, "cannot start instance");
            reporter.event(
                &d.pipeline,
                &d.key,
                "StartFailed",
                format!("cannot start {:?}: {e}", d.program),
                true,
            );
            r.child = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys_become_upper_snake_env_names() {
        assert_eq!(flowctl_spec::config_env_name("startLedger"), "START_LEDGER");
        assert_eq!(
            flowctl_spec::config_env_name("network.passphrase"),
            "NETWORK_PASSPHRASE"
        );
        assert_eq!(flowctl_spec::config_env_name("batch_size"), "BATCH_SIZE");
    }

    #[test]
    fn spec_hash_ignores_per_replica_env_only() {
        let d = |id: &str, brokers: &str| Desired {
            pipeline: "p".into(),
            key: "c/0".into(),
            component: "c".into(),
            program: "prog".into(),
            args: vec!["-v".into()],
            env: [
                ("FLOWCTL_COMPONENT_ID".to_owned(), id.to_owned()),
                ("KAFKA_BROKERS".to_owned(), brokers.to_owned()),
            ]
            .into(),
            policy: RestartPolicy::Always,
        };
        assert_eq!(
            spec_hash(&d("c-0", "b:9092")),
            spec_hash(&d("c-1", "b:9092"))
        );
        assert_ne!(
            spec_hash(&d("c-0", "b:9092")),
            spec_hash(&d("c-0", "b:9093"))
        );
    }

    #[test]
    fn the_fence_margin_is_what_the_readme_and_the_flag_say() {
        // README "Deployment" and `--node-grace`'s help give it in seconds.
        assert_eq!(FENCE_MARGIN, Duration::from_secs(9));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(20), MAX_BACKOFF);
    }
}
