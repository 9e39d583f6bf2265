//! The supervisor (every node): runs what is placed on this node through its driver
//! ([`Instance`]), stops what is not, restarts crashed instances with exponential backoff
//! according to `restart_policy`, replaces changed instances one at a time per component
//! ([`may_replace`]), stops everything when the node is fenced (no quorum for `node_grace`),
//! and reports its instances' status and events ([`Reporter`]).

use super::container::{remove_orphans, spawn_reaper, ContainerRun};
use super::driver::Instance;
use super::kubernetes::component_env;
use super::{DeployOptions, QUORUM_CHECK, REPORT_TIMEOUT, TICK};
use crate::clock::now_ms;
use crate::docker::Pull;
use crate::spec_cache::SpecCache;
use flowctl_raft::RaftNode;
use flowctl_spec::{Component, RestartPolicy, ValidatedPipeline};
use flowctl_state::placements::instance_key;
use flowctl_state::runtime::{
    InstanceState, InstanceStatus, PipelineReport, ReportRuntime, RuntimeEvent,
};
use flowctl_state::{Command, ComponentId, NodeId};
use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What one instance should run.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Desired {
    pub(super) pipeline: String,
    pub(super) key: String,
    pub(super) component: String,
    pub(super) program: String,
    pub(super) args: Vec<String>,
    pub(super) env: BTreeMap<String, String>,
    pub(super) policy: RestartPolicy,
    /// Set under the `docker` driver: what the container runs (`program` is then empty and
    /// `args` the container's command).
    pub(super) container: Option<ContainerRun>,
    /// The pipeline generation this was read from; a copy keeps the generation it started
    /// under (a container's label), as a new generation that leaves it unchanged does not
    /// replace it (see [`Desired::runs_like`]).
    pub(super) generation: u64,
}

impl Desired {
    /// Whether `other` runs the same thing: everything but the generation is equal.
    fn runs_like(&self, other: &Desired) -> bool {
        let mut o = other.clone();
        o.generation = self.generation;
        *self == o
    }

    /// The program or image, for events.
    fn what(&self) -> &str {
        match &self.container {
            Some(c) => &c.image,
            None => &self.program,
        }
    }
}

struct Running {
    desired: Desired,
    /// [`spec_hash`] of `desired`.
    hash: String,
    /// The started instance, while it runs (see [`Instance`]).
    instance: Option<Instance>,
    restarts: u32,
    next_start: Instant,
    /// Set once the instance exited and will not be restarted (policy).
    done: bool,
    started_at_ms: u64,
    last_exit: Option<String>,
}

impl Running {
    fn status(&self, node: NodeId) -> InstanceStatus {
        let state = match (&self.instance, self.done) {
            (Some(_), _) => InstanceState::Running,
            (None, true) => InstanceState::Exited,
            (None, false) if self.last_exit.is_none() => InstanceState::StartFailed,
            (None, false) => InstanceState::Backoff,
        };
        InstanceStatus {
            node,
            spec_hash: self.hash.clone(),
            state,
            pid: self.instance.as_ref().and_then(Instance::pid),
            restarts: self.restarts,
            started_at_ms: self.started_at_ms,
            last_exit: self.last_exit.clone(),
            epoch: self.desired.env.get(EPOCH_ENV).and_then(|e| e.parse().ok()),
        }
    }
}

/// [`component_env`] and what is this instance's: its id, token, replica, health port, and
/// the node's endpoints and heartbeat interval.
fn instance_env(
    p: &ValidatedPipeline,
    c: &Component,
    replica: u32,
    endpoints: &str,
    opts: &DeployOptions,
) -> BTreeMap<String, String> {
    let mut env = component_env(p, c, &opts.brokers_of(p));
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
    env.insert("FLOWCTL_ENDPOINT".into(), endpoints.to_owned());
    env.insert("FLOWCTL_COMPONENT_ID".into(), id);
    // A Go duration, as the original SDK reads it.
    env.insert(
        "FLOWCTL_HEARTBEAT_INTERVAL".into(),
        format!("{}ms", opts.heartbeat_interval.as_millis()),
    );
    env.insert("FLOWCTL_REPLICA".into(), replica.to_string());
    if let Some(port) = c.health_port_of(replica) {
        env.insert("HEALTH_PORT".into(), port.to_string());
    }
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
            let (program, args, container) = match spec.spec().driver {
                flowctl_spec::Driver::Docker => {
                    let Some(image) = &c.image else {
                        continue;
                    };
                    let run = ContainerRun {
                        image: image.clone(),
                        pull: match c.pull_policy() {
                            flowctl_spec::PullPolicy::IfNotPresent => Pull::IfNotPresent,
                            flowctl_spec::PullPolicy::Never => Pull::Never,
                            flowctl_spec::PullPolicy::Always => Pull::Always,
                        },
                        entrypoint: (!c.command.is_empty()).then(|| c.command.clone()),
                        network: spec.spec().docker_network().unwrap_or("host").to_owned(),
                        cpu_millis: c.resources.as_ref().and_then(|r| r.cpu_millis()),
                        memory_bytes: c.resources.as_ref().and_then(|r| r.memory_bytes()),
                    };
                    (String::new(), c.args.clone(), Some(run))
                }
                flowctl_spec::Driver::Process => {
                    let Some((program, rest)) = c.command.split_first() else {
                        continue;
                    };
                    let mut args = rest.to_vec();
                    args.extend(c.args.iter().cloned());
                    (program.clone(), args, None)
                }
                flowctl_spec::Driver::Kubernetes => continue,
            };
            out.insert(
                (name.clone(), key.clone()),
                Desired {
                    pipeline: name.clone(),
                    key: key.clone(),
                    component: cid.to_owned(),
                    program,
                    args,
                    env: {
                        let mut env = instance_env(&spec, c, replica, &endpoints, opts);
                        if let Some(epoch) = placement.epoch(key) {
                            env.insert(EPOCH_ENV.into(), epoch.to_string());
                        }
                        env
                    },
                    policy: c.restart_policy,
                    container,
                    generation: rec.generation,
                },
            );
        }
    }
    out
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
/// (`FLOWCTL_TOKEN` too: each instance's own token names its component id, so with
/// authentication on it differs between replicas; left in, it stalled every rollout of a
/// component with more than one replica after its first.)
const PER_REPLICA_ENV: [&str; 5] = [
    "FLOWCTL_COMPONENT_ID",
    "FLOWCTL_REPLICA",
    "HEALTH_PORT",
    "FLOWCTL_TOKEN",
    EPOCH_ENV,
];
/// The placement epoch of the copy (see `flowctl_state::placements::Placement::epochs`).
const EPOCH_ENV: &str = "FLOWCTL_EPOCH";

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
    // What a container runs: image, pull policy, entrypoint, network and limits.
    if let Some(c) = &d.container {
        feed(&format!("{c:?}"));
    }
    format!("{h:016x}")
}

/// Whether replica `replica` of a changed component may be replaced now: every lower replica
/// of the component (on any node) already runs `hash` and is healthy (a heartbeat since it
/// registered, as the leader confirms), exited for good, or
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
                        // Healthy and heard from since it registered: a registration alone
                        // does not show that the new copy runs.
                        Some(c) => c.healthy && !c.awaiting_heartbeat,
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

pub(super) async fn run_supervisor(
    node: RaftNode,
    specs: SpecCache,
    mut opts: DeployOptions,
    cancel: CancellationToken,
) {
    let mut running: BTreeMap<(String, String), Running> = BTreeMap::new();
    // Containers of an earlier run of this node are removed once the cluster id (their
    // label) is known, before anything is started.
    let mut orphans_removed = false;
    opts.run_id = format!("{:016x}", rand::random::<u64>());
    // Kept while the supervisor runs: dropping it closes the pipe the reaper waits on.
    let mut _reaper = None;
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
        if !orphans_removed {
            let id = node.cluster_id();
            if !id.is_empty() {
                opts.cluster_id = id;
                remove_orphans(&opts).await;
                _reaper = spawn_reaper(&opts);
                orphans_removed = true;
            }
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
                if let Some(i) = r.instance.as_mut() {
                    i.stop().await;
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
                        instance: None,
                        started_at_ms: now_ms(),
                        last_exit: None,
                    };
                    launch(&mut r, &opts, &pumps, &mut reporter, "Started").await;
                    running.insert(k.clone(), r);
                }
                Some(r) if !r.desired.runs_like(d) => {
                    let hash = spec_hash(d);
                    // Only the epoch changed (placed elsewhere and back while this node did
                    // not see it): the copy here is fenced, so replace it now, not as a
                    // rollout step.
                    let epoch_only = {
                        let (mut a, mut b) = (r.desired.clone(), d.clone());
                        a.env.remove(EPOCH_ENV);
                        b.env.remove(EPOCH_ENV);
                        a.runs_like(&b)
                    };
                    if !epoch_only {
                        if rolled.contains(&comp) || !may_replace(&node, d, &hash, now_ms()) {
                            continue;
                        }
                        rolled.insert(comp);
                    }
                    if let Some(i) = r.instance.as_mut() {
                        i.stop().await;
                    }
                    r.instance = None;
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
                    let exited = match r.instance.as_mut() {
                        Some(i) => i.exited().await,
                        None => Some((false, String::new())),
                    };
                    let Some((success, how)) = exited else {
                        continue;
                    };
                    if r.instance.is_some() {
                        tracing::info!(pipeline = %d.pipeline, instance = %d.key, success, restarts = r.restarts, "instance exited");
                        reporter.event(&d.pipeline, &d.key, "Exited", how.clone(), !success);
                        r.last_exit = Some(how);
                        r.instance = None;
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
            .set(running.values().filter(|r| r.instance.is_some()).count() as f64);
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
        if let Some(i) = r.instance.as_mut() {
            i.stop().await;
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

/// Starts `r`'s instance (through its driver) and records the outcome as an event named `reason`.
async fn launch(
    r: &mut Running,
    opts: &DeployOptions,
    pumps: &tokio_util::task::TaskTracker,
    reporter: &mut Reporter,
    reason: &str,
) {
    let d = &r.desired;
    r.started_at_ms = now_ms();
    match Instance::start(d, opts, pumps).await {
        Ok(i) => {
            let pid = i.pid().unwrap_or(0);
            tracing::info!(pipeline = %d.pipeline, instance = %d.key, pid, restarts = r.restarts, "{}", reason.to_lowercase());
            let what = i.describe();
            let message = match reason {
                "Restarted" => format!("{what}, restart {}", r.restarts),
                "Replaced" => format!("{what}, with the changed spec {}", r.hash),
                _ => what,
            };
            reporter.event(&d.pipeline, &d.key, reason, message, reason == "Restarted");
            r.instance = Some(i);
        }
        Err(e) => {
            tracing::warn!(pipeline = %d.pipeline, instance = %d.key, error = %e, "cannot start instance");
            reporter.event(
                &d.pipeline,
                &d.key,
                "StartFailed",
                format!("cannot start {:?}: {e}", d.what()),
                true,
            );
            r.instance = None;
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
                ("FLOWCTL_TOKEN".to_owned(), format!("token-of-{id}")),
                ("KAFKA_BROKERS".to_owned(), brokers.to_owned()),
            ]
            .into(),
            policy: RestartPolicy::Always,
            container: None,
            generation: 3,
        };
        assert_eq!(
            spec_hash(&d("c-0", "b:9092")),
            spec_hash(&d("c-1", "b:9092"))
        );
        // A new generation that leaves the instance as it was does not replace it.
        let later = Desired {
            generation: 4,
            ..d("c-0", "b:9092")
        };
        assert!(d("c-0", "b:9092").runs_like(&later));
        assert!(!d("c-0", "b:9092").runs_like(&d("c-0", "b:9093")));
        assert_ne!(
            spec_hash(&d("c-0", "b:9092")),
            spec_hash(&d("c-0", "b:9093"))
        );
    }

    #[test]
    fn spec_hash_covers_what_a_container_runs() {
        let run = ContainerRun {
            image: "flowctl/ttp-processor:dev".into(),
            pull: Pull::IfNotPresent,
            entrypoint: None,
            network: "host".into(),
            cpu_millis: None,
            memory_bytes: None,
        };
        let d = |run: ContainerRun| Desired {
            pipeline: "p".into(),
            key: "c/0".into(),
            component: "c".into(),
            program: String::new(),
            args: vec![],
            env: BTreeMap::new(),
            policy: RestartPolicy::Always,
            container: Some(run),
            generation: 1,
        };
        let base = spec_hash(&d(run.clone()));
        let changed = [
            ContainerRun {
                image: "flowctl/ttp-processor:v2".into(),
                ..run.clone()
            },
            ContainerRun {
                pull: Pull::Always,
                ..run.clone()
            },
            ContainerRun {
                entrypoint: Some(vec!["/bin/x".into()]),
                ..run.clone()
            },
            ContainerRun {
                network: "bridge".into(),
                ..run.clone()
            },
            ContainerRun {
                cpu_millis: Some(500),
                ..run.clone()
            },
            ContainerRun {
                memory_bytes: Some(64 << 20),
                ..run.clone()
            },
        ];
        for c in changed {
            assert_ne!(spec_hash(&d(c.clone())), base, "{c:?}");
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(500));
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(20), MAX_BACKOFF);
    }
}
