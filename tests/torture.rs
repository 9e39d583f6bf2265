//! The torture suite: clients record what they saw while a nemesis injects faults into a real
//! 3-node cluster; then the history is checked for linearizability against a model.
//!
//! - Nodes run on their own loopback addresses (127.0.0.11-13); each node's advertised peer
//!   address is an in-test proxy (`flowctl_testkit::proxy`) that can cut, black-hole or delay
//!   every directed link, so partitions need no iptables.
//! - Faults: `kill` (SIGKILL, restart), `pause` (SIGSTOP, SIGCONT), `partition` (a minority
//!   node, a bridge node, or one direction only), `clock` (the wall clock of a node stepped by
//!   a day through libfaketime), `churn` (a member removed and a new one joined at its
//!   address), `disk` (one node's data dir on a small tmpfs, filled until ENOSPC, then freed).
//! - Clients: pipelines as registers (apply, compare-and-set on the generation, delete,
//!   linearizable get), component registrations as a set (register, list), components kept
//!   alive by a heartbeat loop (so the registry may only grow: an expiry would be a lost
//!   element).
//! - The DLQ index: an in-test broker (`flowctl_bus::EmbeddedBroker`) is every node's
//!   `--kafka-brokers` (`TORTURE_DLQ_BROKERS=spec`: named by one pipeline's `spec.bus.brokers`
//!   instead); one pipeline's DLQ topic is fed by an in-test writer throughout the run
//!   (distinct failed inputs, now and then a second dead letter for an input that has one: a
//!   redelivery). Once the cluster has recovered, `dlq ls` on every node must list each input
//!   whose dead letter the broker acknowledged exactly once, with `attempts` equal to the dead
//!   letters produced for it. A missing entry or a missing attempt counts as lost; an id listed
//!   twice, an attempt counted twice, or an entry nobody produced counts as a duplicate.
//! - A run fails on a non-linearizable key or set, an acknowledged write lost, a duplicate in
//!   a list (or in the DLQ index), and a scheduled fault that did not happen (a partition that
//!   blocked nothing, a kill of a dead process, a clock step that reached no process).
//!
//! `TORTURE_CYCLES` (default 20), `TORTURE_SEED`, `TORTURE_FAULTS` (comma-separated, default
//! every kind), `TORTURE_DLQ_BROKERS` (`flag`, the default, or `spec`) steer it;
//! `scripts/torture.sh` runs long versions. The last line printed is
//! `cycles=N faults=... ops=<ok>/<indeterminate> linearizable=yes lost=0 duplicates=0`.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

use flowctl_bus::{DlqRecord, EmbeddedBroker, Envelope, OutRecord, Producer, TopicSpec};
use flowctl_client::proto::admin::v1 as pb;
use flowctl_client::proto::admin::v1::pipeline_service_client::PipelineServiceClient;
use flowctl_client::proto::v1;
use flowctl_client::proto::v1::control_plane_service_client::ControlPlaneServiceClient;
use flowctl_client::Client;
use flowctl_testkit::linearizability::{
    check, check_keyed, Operation, Outcome, Register, RegisterInput, RegisterOutput, Set, SetInput,
    SetOutput,
};
use flowctl_testkit::proxy::{Fault, Network, ProxyHandle};
use flowctl_testkit::{wait_until, Cluster};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Code;

const NODES: usize = 3;
const KEYS: usize = 3;
const CLIENTS: u64 = 4;
/// Search steps the checker may take per key (and for the set).
const BUDGET: u64 = 20_000_000;
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
/// The node whose data dir is a small tmpfs, for the disk fault.
const DISK_NODE: usize = 2;
const TMPFS_BYTES: u64 = 256 * 1024 * 1024;
/// The pipeline whose DLQ topic the DLQ writer feeds (the clients never touch it: deleting a
/// pipeline drops its DLQ entries).
const DLQ_PIPELINE: &str = "dlq-torture";
/// Partitions of its DLQ topic: the indexer's compare-and-set is per partition.
const DLQ_PARTITIONS: i32 = 3;
/// The (made-up) topic the failed inputs were read from.
const DLQ_INPUT_TOPIC: &str = "flowctl.dlq-torture.input";
/// Dead letters the writer produces at most.
const MAX_DEAD_LETTERS: usize = 3000;
/// How long the DLQ index of every node may take to catch up once the cluster has recovered.
const DLQ_CATCH_UP: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Kill,
    Pause,
    Partition,
    Clock,
    Churn,
    Disk,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Kill,
        Kind::Pause,
        Kind::Partition,
        Kind::Clock,
        Kind::Churn,
        Kind::Disk,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Kill => "kill",
            Kind::Pause => "pause",
            Kind::Partition => "partition",
            Kind::Clock => "clock",
            Kind::Churn => "churn",
            Kind::Disk => "disk",
        }
    }

    fn parse(s: &str) -> Kind {
        Kind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .unwrap_or_else(|| panic!("TORTURE_FAULTS: unknown fault {s:?}"))
    }
}

/// xorshift64*: reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The recorded history, shared by the clients.
#[derive(Default)]
struct History {
    registers: Vec<(usize, Operation<RegisterInput, RegisterOutput>)>,
    set: Vec<Operation<SetInput, SetOutput>>,
    duplicates: Vec<String>,
}

struct Recorder {
    start: Instant,
    history: Mutex<History>,
}

impl Recorder {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

fn doc(key: usize, value: &str) -> String {
    format!(
        "apiVersion: flowctl/v1\nkind: Pipeline\nmetadata:\n  name: key-{key}\n  labels:\n    value: \"{value}\"\nspec:\n  sources:\n    - id: src\n      command: [\"true\"]\n  sinks:\n    - id: sink\n      command: [\"true\"]\n      inputs: [src]\n"
    )
}

/// The DLQ pipeline: its components never run (`true` is outside the default
/// `--allowed-commands`); the indexer needs only the stored pipeline and a broker. `brokers`:
/// its own `spec.bus.brokers`, or `None` for the nodes' `--kafka-brokers`.
fn dlq_doc(brokers: Option<&str>) -> String {
    let own = brokers
        .map(|b| format!("    brokers: [\"{b}\"]\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: flowctl/v1\nkind: Pipeline\nmetadata:\n  name: {DLQ_PIPELINE}\nspec:\n  bus:\n{own}    partitions: {DLQ_PARTITIONS}\n  sources:\n    - id: src\n      command: [\"true\"]\n  sinks:\n    - id: sink\n      command: [\"true\"]\n      inputs: [src]\n"
    )
}

/// The `value` label of a stored document.
fn value_of(yaml: &str) -> String {
    yaml.lines()
        .find_map(|l| l.trim().strip_prefix("value: "))
        .map(|v| v.trim_matches('"').to_owned())
        .unwrap_or_default()
}

fn client(c: &Cluster) -> Client {
    let eps: Vec<String> = c.nodes.iter().map(|n| n.addr.clone()).collect();
    Client::new(&eps, Duration::from_secs(4)).unwrap()
}

/// One register operation; `None` for an indeterminate one.
async fn register_op(cl: &Client, key: usize, input: &RegisterInput) -> Option<RegisterOutput> {
    let name = format!("key-{key}");
    match input {
        RegisterInput::Read => {
            let req = pb::GetPipelineRequest {
                name,
                consistency: pb::Consistency::Linearizable as i32,
            };
            let r = cl
                .call(|ch| {
                    let req = req.clone();
                    async move { PipelineServiceClient::new(ch).get_pipeline(req).await }
                })
                .await;
            match r {
                Ok(r) => {
                    let p = r.into_inner().pipeline.unwrap_or_default();
                    Some(RegisterOutput::Read(Some((
                        value_of(&p.spec_yaml),
                        p.generation,
                    ))))
                }
                Err(s) if s.code() == Code::NotFound => Some(RegisterOutput::Read(None)),
                Err(_) => None,
            }
        }
        RegisterInput::Write(v) | RegisterInput::WriteIfGeneration { value: v, .. } => {
            let if_generation = match input {
                RegisterInput::WriteIfGeneration { generation, .. } => Some(*generation),
                _ => None,
            };
            let req = pb::ApplyPipelineRequest {
                yaml: doc(key, v),
                file_name: "torture.yaml".into(),
                dry_run: false,
                allow_unregistered_types: false,
                if_generation,
            };
            let r = cl
                .call(|ch| {
                    let req = req.clone();
                    async move { PipelineServiceClient::new(ch).apply_pipeline(req).await }
                })
                .await;
            match (r, if_generation) {
                (Ok(r), g) => {
                    let generation = r.into_inner().pipeline.unwrap_or_default().generation;
                    Some(match g {
                        Some(_) => RegisterOutput::CasOk { generation },
                        None => RegisterOutput::Written { generation },
                    })
                }
                (Err(s), Some(_)) if s.code() == Code::Aborted => Some(RegisterOutput::CasFailed),
                (Err(s), _) => {
                    assert_ne!(s.code(), Code::InvalidArgument, "{s}");
                    None
                }
            }
        }
        RegisterInput::UnreadWrite { .. } => unreachable!("only the checker makes these"),
        RegisterInput::Delete => {
            let req = pb::DeletePipelineRequest { name };
            let r = cl
                .call(|ch| {
                    let req = req.clone();
                    async move { PipelineServiceClient::new(ch).delete_pipeline(req).await }
                })
                .await;
            match r {
                Ok(_) => Some(RegisterOutput::Deleted { existed: true }),
                Err(s) if s.code() == Code::NotFound => {
                    Some(RegisterOutput::Deleted { existed: false })
                }
                Err(_) => None,
            }
        }
    }
}

fn component(id: &str) -> v1::ComponentInfo {
    v1::ComponentInfo {
        id: id.into(),
        name: "torture".into(),
        r#type: v1::ComponentType::Processor as i32,
        ..Default::default()
    }
}

/// One set operation; `None` for an indeterminate one. Records duplicates in lists.
async fn set_op(cl: &Client, input: &SetInput, rec: &Recorder) -> Option<SetOutput> {
    match input {
        SetInput::Add(id) => {
            let req = v1::RegisterRequest {
                component: Some(component(id)),
                component_id: String::new(),
            };
            cl.call(|ch| {
                let req = req.clone();
                async move {
                    ControlPlaneServiceClient::new(ch)
                        .register_component(req)
                        .await
                }
            })
            .await
            .ok()
            .map(|_| SetOutput::Added)
        }
        SetInput::Read => {
            let req = v1::ListComponentsRequest {
                type_filter: 0,
                include_unhealthy: true,
            };
            let list = cl
                .call(|ch| async move {
                    ControlPlaneServiceClient::new(ch)
                        .list_components(req)
                        .await
                })
                .await
                .ok()?
                .into_inner();
            let ids: Vec<String> = list
                .components
                .into_iter()
                .filter_map(|c| c.component.map(|x| x.id))
                .collect();
            let set: BTreeSet<String> = ids.iter().cloned().collect();
            if set.len() != ids.len() {
                rec.history
                    .lock()
                    .unwrap()
                    .duplicates
                    .push(format!("ListComponents: {ids:?}"));
            }
            Some(SetOutput::Read(set))
        }
        SetInput::Remove(_) => unreachable!("the workload never removes"),
    }
}

/// A client: operations one after another until `stop`.
async fn run_client(
    id: u64,
    cl: Client,
    rec: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    attempted: Arc<Mutex<BTreeSet<String>>>,
    seed: u64,
) {
    let mut rng = Rng(seed | 1);
    let mut n = 0u64;
    // The generation this client last saw per key, for compare-and-set.
    let mut seen: HashMap<usize, u64> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let roll = rng.below(100);
        if roll < 8 {
            let input = if roll < 4 {
                let cid = format!("c{id}-{n}");
                attempted.lock().unwrap().insert(cid.clone());
                SetInput::Add(cid)
            } else {
                SetInput::Read
            };
            let call = rec.now();
            let out = set_op(&cl, &input, &rec).await;
            let ret = match out {
                Some(output) => Outcome::Ok {
                    output,
                    at: rec.now(),
                },
                None => Outcome::Indeterminate,
            };
            rec.history.lock().unwrap().set.push(Operation {
                client: id,
                input,
                call,
                ret,
            });
            continue;
        }
        let key = rng.below(KEYS as u64) as usize;
        let value = format!("c{id}-{n}");
        let input = match roll {
            8..=49 => RegisterInput::Read,
            50..=74 => RegisterInput::Write(value),
            75..=89 => RegisterInput::WriteIfGeneration {
                value,
                generation: seen.get(&key).copied().unwrap_or(0),
            },
            _ => RegisterInput::Delete,
        };
        let call = rec.now();
        let out = register_op(&cl, key, &input).await;
        match &out {
            Some(RegisterOutput::Read(r)) => {
                seen.insert(key, r.as_ref().map_or(0, |x| x.1));
            }
            Some(RegisterOutput::Written { generation } | RegisterOutput::CasOk { generation }) => {
                seen.insert(key, *generation);
            }
            Some(RegisterOutput::Deleted { .. }) => {
                seen.insert(key, 0);
            }
            _ => {}
        }
        let ret = match out {
            Some(output) => Outcome::Ok {
                output,
                at: rec.now(),
            },
            None => Outcome::Indeterminate,
        };
        rec.history.lock().unwrap().registers.push((
            key,
            Operation {
                client: id,
                input,
                call,
                ret,
            },
        ));
    }
}

/// Keeps every component a client tried to register alive, so that none may expire.
async fn run_heartbeats(
    cl: Client,
    stop: Arc<AtomicBool>,
    attempted: Arc<Mutex<BTreeSet<String>>>,
) {
    while !stop.load(Ordering::Relaxed) {
        let ids: Vec<String> = attempted.lock().unwrap().iter().cloned().collect();
        for id in ids {
            let req = v1::HeartbeatRequest {
                service_id: id,
                status: v1::HealthStatus::Healthy as i32,
                metrics: HashMap::new(),
            };
            // A heartbeat for a registration that never happened is NOT_FOUND: fine.
            let _ = cl
                .call(|ch| {
                    let req = req.clone();
                    async move { ControlPlaneServiceClient::new(ch).heartbeat(req).await }
                })
                .await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What the DLQ writer produced for one failed input record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct DeadLetters {
    /// Dead letters the broker acknowledged.
    acked: u32,
    /// Dead letters whose produce failed or timed out: they may or may not be in the topic.
    unacked: u32,
}

/// Produces dead letters to the DLQ topic until `stop` (or [`MAX_DEAD_LETTERS`]), one every
/// 50-100 ms: mostly for new inputs, sometimes a second one for an input that has exactly one
/// acknowledged dead letter (a redelivery). Records, by entry id, what it produced.
async fn run_dlq_writer(
    brokers: String,
    topic: String,
    stop: Arc<AtomicBool>,
    produced: Arc<Mutex<BTreeMap<String, DeadLetters>>>,
    seed: u64,
) {
    let producer = Producer::new(&brokers).unwrap();
    let mut rng = Rng(seed | 1);
    // Inputs with one acknowledged dead letter: (entry id, input number).
    let mut once: Vec<(String, u64)> = Vec::new();
    let mut inputs = 0u64;
    for _ in 0..MAX_DEAD_LETTERS {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50 + rng.below(51))).await;
        let (id, n, attempt) = if !once.is_empty() && rng.below(8) == 0 {
            let (id, n) = once.swap_remove(rng.below(once.len() as u64) as usize);
            (id, n, 2)
        } else {
            let n = inputs;
            inputs += 1;
            let (partition, offset) = ((n % 3) as i32, (n / 3) as i64);
            (
                flowctl_state::dlq::entry_id(DLQ_INPUT_TOPIC, partition, offset),
                n,
                1,
            )
        };
        let dead = DlqRecord {
            error: format!("torture: input {n} failed (attempt {attempt})"),
            component: "sink".into(),
            source_topic: DLQ_INPUT_TOPIC.into(),
            source_partition: (n % 3) as i32,
            source_offset: (n / 3) as i64,
            attempt,
            envelope: Some(Envelope::new("torture.DeadLetter")),
        };
        let record = OutRecord {
            topic: topic.clone(),
            // Keyed by input: a redelivery's dead letter lands in the same DLQ partition.
            key: Some(flowctl_bus::ledger_key(n)),
            payload: format!("input {n}").into_bytes(),
            headers: dead.to_headers(),
        };
        let acked = matches!(
            tokio::time::timeout(Duration::from_secs(40), producer.send(&record)).await,
            Ok(Ok(_))
        );
        let mut p = produced.lock().unwrap();
        let e = p.entry(id.clone()).or_default();
        if acked {
            e.acked += 1;
            if attempt == 1 && e.unacked == 0 {
                once.push((id, n));
            }
        } else {
            e.unacked += 1;
        }
    }
    let _ = producer.flush(Duration::from_secs(10)).await;
}

/// What a DLQ listing got wrong, one line per counted loss or duplicate.
#[derive(Debug, Default, PartialEq, Eq)]
struct DlqCheck {
    lost: Vec<String>,
    duplicates: Vec<String>,
}

impl DlqCheck {
    fn is_clean(&self) -> bool {
        self.lost.is_empty() && self.duplicates.is_empty()
    }
}

/// Compares one DLQ listing, `(entry id, attempts)` in listed order, with what was produced.
/// Lost: an input with an acknowledged dead letter that is not listed, or listed with fewer
/// attempts than its acknowledged dead letters. Duplicates: every extra listing of an id, an
/// entry with more attempts than dead letters produced for it (a record indexed twice), and
/// an entry for an input nothing was produced for.
fn check_dlq(produced: &BTreeMap<String, DeadLetters>, listed: &[(String, u32)]) -> DlqCheck {
    let mut by_id: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (id, attempts) in listed {
        by_id.entry(id.as_str()).or_default().push(*attempts);
    }
    let mut out = DlqCheck::default();
    for (id, attempts) in &by_id {
        for _ in 1..attempts.len() {
            out.duplicates
                .push(format!("{id}: listed {} times", attempts.len()));
        }
        let (min, max) = (
            *attempts.iter().min().unwrap(),
            *attempts.iter().max().unwrap(),
        );
        match produced.get(*id) {
            None => out
                .duplicates
                .push(format!("{id}: listed (attempts {max}) but never produced")),
            Some(p) => {
                if max > p.acked + p.unacked {
                    out.duplicates.push(format!(
                        "{id}: attempts {max}, but {} dead letters produced",
                        p.acked + p.unacked
                    ));
                }
                if min < p.acked {
                    out.lost.push(format!(
                        "{id}: attempts {min}, but {} dead letters acknowledged",
                        p.acked
                    ));
                }
            }
        }
    }
    for (id, p) in produced {
        if p.acked > 0 && !by_id.contains_key(id.as_str()) {
            out.lost.push(format!(
                "{id}: not listed, {} dead letters acknowledged",
                p.acked
            ));
        }
    }
    out
}

/// The DLQ pipeline's entries as node `i` lists them (`dlq ls`, a linearizable read served
/// from that node's state): `(id, attempts)` in listed order.
fn dlq_listing(c: &Cluster, i: usize) -> anyhow::Result<Vec<(String, u32)>> {
    let v = c.json(
        i,
        &["dlq", "ls", "--pipeline", DLQ_PIPELINE, "--timeout", "10"],
    )?;
    let entries = v
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("dlq ls: not a list: {v}"))?;
    entries
        .iter()
        .map(|e| {
            let id = e["id"].as_str();
            let attempts = e["attempts"].as_u64();
            match (id, attempts) {
                (Some(id), Some(a)) => Ok((id.to_owned(), a as u32)),
                _ => Err(anyhow::anyhow!("dlq ls: a malformed entry: {e}")),
            }
        })
        .collect()
}

/// A tmpfs mounted for one node's data dir; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_BYTES}")])
            .arg("torture")
            .arg(dir)
            .output()
            .unwrap_or_else(|e| panic!("the disk fault needs mount(8): {e}"));
        assert!(
            out.status.success(),
            "the disk fault needs a tmpfs (run as root, or leave disk out of TORTURE_FAULTS): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

struct World {
    c: Cluster,
    net: Network,
    _proxies: Vec<ProxyHandle>,
    clock_files: Vec<PathBuf>,
    rng: Rng,
    log: Vec<String>,
    /// A disk fault has happened: node `DISK_NODE` may exit on its own later (see
    /// [`World::wait_healthy`]).
    disk_faulted: bool,
}

impl World {
    fn status(&self) -> Option<serde_json::Value> {
        (0..NODES)
            .filter(|&i| self.c.nodes[i].pid().is_some())
            .find_map(|i| {
                self.c
                    .json(i, &["cluster", "status", "--timeout", "3"])
                    .ok()
            })
            .filter(|v| v["leader_id"].as_u64().unwrap_or(0) != 0)
    }

    /// The index of node `id` (a Raft id), by its address.
    fn index_of(&self, v: &serde_json::Value, id: u64) -> Option<usize> {
        self.c.index_of(v, id)
    }

    fn leader(&self) -> Option<usize> {
        let v = self.status()?;
        self.index_of(&v, v["leader_id"].as_u64()?)
    }

    /// A victim: the leader half of the time (the interesting case), else any node.
    fn victim(&mut self) -> usize {
        match (self.rng.below(2), self.leader()) {
            (0, Some(l)) => l,
            _ => self.rng.below(NODES as u64) as usize,
        }
    }

    /// Waits until every node runs and 3 voters agree on a leader.
    /// Restarts node `DISK_NODE` if it stopped after a disk fault; fails the run if another
    /// node stopped on its own.
    fn revive(&mut self, what: &str) {
        for i in 0..NODES {
            if self.c.nodes[i].is_running() {
                continue;
            }
            // After ENOSPC, RocksDB keeps the failed write's error, and the node may stop at a
            // later sync, after space came back: restart it, as its supervisor (systemd) would.
            // Any other node that stops on its own fails the run.
            assert!(
                i == DISK_NODE && self.disk_faulted,
                "node {i} exited on its own after {what}:\n{}",
                self.c.log_tail(i, 25)
            );
            self.log
                .push(format!("disk: node {i} stopped after the fault; restarted"));
            self.c.restart(i).unwrap();
        }
    }

    fn wait_healthy(&mut self, what: &str) {
        wait_until(Duration::from_secs(60), || {
            self.revive(what);
            (0..NODES).all(|i| {
                self.c
                    .json(i, &["cluster", "status", "--timeout", "3"])
                    .map(|v| {
                        let leader = v["leader_id"].as_u64().unwrap_or(0);
                        let ms = v["members"].as_array().cloned().unwrap_or_default();
                        leader != 0 && ms.len() == NODES && ms.iter().all(|m| m["voter"] == true)
                    })
                    .unwrap_or(false)
            })
        })
        .unwrap_or_else(|_| {
            let tails: String = (0..NODES)
                .map(|i| format!("--- node {i}\n{}\n", self.c.log_tail(i, 25)))
                .collect();
            panic!("the cluster did not recover after {what}:\n{tails}")
        });
    }

    /// Keeps a fault in place for 1.5-2.5 s while the clients run.
    fn hold(&mut self) {
        std::thread::sleep(Duration::from_millis(1500 + self.rng.below(1000)));
    }

    fn inject(&mut self, kind: Kind) {
        match kind {
            Kind::Kill => {
                let v = self.victim();
                assert!(
                    self.c.nodes[v].is_running(),
                    "kill: node {v} was not running"
                );
                self.c.kill(v);
                assert!(!self.c.nodes[v].is_running(), "kill: node {v} still runs");
                self.log.push(format!("kill node {v}"));
                self.hold();
                self.c.restart(v).unwrap();
            }
            Kind::Pause => {
                let v = self.victim();
                let pid = self.c.nodes[v].pid().unwrap();
                self.c.nodes[v]
                    .signal(flowctl_testkit::Signal::STOP)
                    .unwrap();
                assert!(
                    wait_until(Duration::from_secs(5), || proc_state(pid) == Some('T')).is_ok(),
                    "pause: node {v} (pid {pid}) did not stop"
                );
                self.log.push(format!("pause node {v}"));
                // Longer than an election timeout: the others elect a new leader.
                std::thread::sleep(Duration::from_millis(2500));
                self.c.nodes[v]
                    .signal(flowctl_testkit::Signal::CONT)
                    .unwrap();
                assert!(
                    wait_until(Duration::from_secs(5), || proc_state(pid) != Some('T')).is_ok(),
                    "pause: node {v} (pid {pid}) did not resume"
                );
            }
            Kind::Partition => {
                let bridge = self.rng.below(3) == 1;
                let v = match (bridge, self.leader()) {
                    (true, Some(l)) => (l + 1) % NODES,
                    _ => self.victim(),
                };
                let others: Vec<usize> = (0..NODES).filter(|&i| i != v).collect();
                let shape = if bridge { 1 } else { self.rng.below(2) * 2 };
                let cut: Vec<(usize, usize)> = match shape {
                    0 => {
                        self.net.partition(&[&[v], &others]);
                        self.log.push(format!("partition: node {v} alone"));
                        others.iter().flat_map(|&o| [(v, o), (o, v)]).collect()
                    }
                    1 => {
                        // v is the bridge: the other two cannot see each other. The bridge
                        // is a follower, so that the cut link is the leader's to the other
                        // follower (two followers exchange nothing to cut).
                        let (a, b) = (others[0], others[1]);
                        self.net.set(a, b, Fault::Drop);
                        self.net.set(b, a, Fault::Drop);
                        self.log
                            .push(format!("partition: node {v} bridges {a} and {b}"));
                        vec![(a, b), (b, a)]
                    }
                    _ => {
                        for &o in &others {
                            self.net.set(v, o, Fault::Drop);
                        }
                        self.log
                            .push(format!("partition: nothing from node {v} arrives"));
                        others.iter().map(|&o| (v, o)).collect()
                    }
                };
                let before: Vec<u64> = cut
                    .iter()
                    .map(|&(a, b)| self.net.stats(a, b).dropped_bytes)
                    .collect();
                self.hold();
                std::thread::sleep(Duration::from_millis(1000));
                let blocked: u64 = cut
                    .iter()
                    .zip(&before)
                    .map(|(&(a, b), was)| self.net.stats(a, b).dropped_bytes - was)
                    .sum();
                self.net.heal();
                assert!(
                    blocked > 0,
                    "partition: the cut links {cut:?} blocked nothing"
                );
            }
            Kind::Clock => {
                let v = self.victim();
                let pid = self.c.nodes[v].pid().unwrap();
                let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
                assert!(
                    maps.contains("libfaketime"),
                    "clock: node {v} runs without libfaketime"
                );
                let step = if self.rng.below(2) == 0 { "+1d" } else { "-1d" };
                std::fs::write(&self.clock_files[v], step).unwrap();
                self.log.push(format!("clock of node {v} stepped {step}"));
                self.hold();
                std::thread::sleep(Duration::from_millis(1500));
                std::fs::write(&self.clock_files[v], "+0").unwrap();
            }
            Kind::Churn => {
                let v = self.status().unwrap();
                let leader = v["leader_id"].as_u64().unwrap();
                // A follower leaves; a new member (new id, new data) joins at its address.
                let victim_id = v["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|m| m["id"].as_u64())
                    .filter(|&id| id != leader)
                    .nth(self.rng.below(2) as usize)
                    .unwrap();
                let i = self.index_of(&v, victim_id).unwrap();
                let via = (0..NODES).find(|&j| j != i).unwrap();
                let out = self
                    .c
                    .flowctl(via, &["cluster", "remove", &victim_id.to_string()])
                    .unwrap();
                assert!(
                    out.status.success(),
                    "churn: removing {victim_id}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                self.c.replace_fresh(i, via).unwrap();
                self.log
                    .push(format!("churn: node {i} ({victim_id}) replaced"));
                let ok = wait_until(Duration::from_secs(60), || {
                    self.status().is_some_and(|s| {
                        let ms = s["members"].as_array().cloned().unwrap_or_default();
                        ms.len() == NODES
                            && ms.iter().all(|m| m["voter"] == true)
                            && ms.iter().all(|m| m["id"].as_u64() != Some(victim_id))
                    })
                });
                assert!(
                    ok.is_ok(),
                    "churn: no new member replaced {victim_id}; log:\n{}",
                    self.c.log_tail(i, 30)
                );
            }
            Kind::Disk => {
                let dir = self.c.nodes[DISK_NODE].data_dir.clone();
                let filler = dir.join("filler");
                let full = fill(&filler);
                assert!(full, "disk: {} never filled up", dir.display());
                self.log.push(format!("disk of node {DISK_NODE} full"));
                self.disk_faulted = true;
                self.hold();
                std::thread::sleep(Duration::from_millis(1500));
                std::fs::remove_file(&filler).unwrap();
                // ENOSPC must stop the node loudly (it exits) or leave it running; it comes
                // back either way, with its data whole.
                if !self.c.nodes[DISK_NODE].is_running() {
                    self.log
                        .push(format!("disk: node {DISK_NODE} stopped; restarted"));
                    self.c.restart(DISK_NODE).unwrap();
                }
            }
        }
        self.wait_healthy(kind.name());
    }
}

/// Writes `path` until the file system is full; false if it never is.
fn fill(path: &Path) -> bool {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 1024 * 1024];
    for _ in 0..(2 * TMPFS_BYTES / chunk.len() as u64) {
        if let Err(e) = f.write_all(&chunk) {
            return e.raw_os_error() == Some(28);
        }
    }
    false
}

/// The state letter of a process (`T` when stopped).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// The in-test network of [`NODES`] nodes.
fn network() -> Network {
    Network::loopback(NODES)
}

/// A node that has just joined serves clients before its Join call has answered (the leader
/// answers only once it is a voter). Writes it forwards in that time must name the cluster,
/// or the leader's peer guard refuses them. Here the answer never arrives: the new member
/// joins through a follower whose link back to it drops every byte, while the leader's
/// replication to it flows.
#[test]
fn a_joining_node_forwards_writes_before_its_join_answer_arrives() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _rt = rt.enter();
    let net = network();
    let (mut c, _proxies) = Cluster::start_proxied(NODES, &rt, &net, &[], |_, _| {}).unwrap();
    let v = c.json(0, &["cluster", "status"]).unwrap();
    let leader_id = v["leader_id"].as_u64().unwrap();
    let leader = c.index_of(&v, leader_id).unwrap();
    let (via, victim) = match leader {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };
    let victim_id = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_u64())
        .find(|&id| c.index_of(&v, id) == Some(victim))
        .unwrap();
    let out = c
        .flowctl(leader, &["cluster", "remove", &victim_id.to_string()])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    net.set(via, victim, Fault::Drop);
    c.replace_fresh(victim, via).unwrap();
    // The leader made the new member a voter...
    wait_until(Duration::from_secs(60), || {
        c.json(leader, &["cluster", "status"]).is_ok_and(|s| {
            let ms = s["members"].as_array().cloned().unwrap_or_default();
            ms.len() == NODES
                && ms.iter().all(|m| m["voter"] == true)
                && ms.iter().all(|m| m["id"].as_u64() != Some(victim_id))
        })
    })
    .expect("the new member never became a voter");
    // ...whose Join has not answered (its answer is dropped on the way back).
    let log = std::fs::read_to_string(&c.nodes[victim].log_path).unwrap();
    let since_restart = log
        .rsplit("starting node")
        .next()
        .unwrap_or(&log)
        .to_owned();
    assert!(
        !since_restart.contains("joined the cluster as a voter"),
        "the Join answer got through; the test shows nothing"
    );
    assert!(
        net.stats(via, victim).dropped_bytes > 0,
        "the cut link blocked nothing"
    );
    // A write through the new member alone succeeds, and is read back there.
    let spec = c.dir().join("joining.yaml");
    std::fs::write(&spec, doc(0, "joining")).unwrap();
    let out = c
        .flowctl_at(
            &c.nodes[victim].addr,
            &["apply", "-f", spec.to_str().unwrap(), "--timeout", "20"],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "a write through the joining node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!(
        "joining: a write through the new member before its Join answered: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    net.heal();
}

/// The DLQ comparison (no cluster): it must catch a duplicate id, a missing id, and attempts
/// that do not match the dead letters produced, and accept what an unacknowledged produce
/// may or may not have left in the topic.
#[test]
fn dlq_check_counts_duplicate_missing_and_miscounted_entries() {
    let p = |acked, unacked| DeadLetters { acked, unacked };
    let produced: BTreeMap<String, DeadLetters> = [
        ("a", p(1, 0)),
        ("b", p(2, 0)),
        ("c", p(1, 0)),
        ("d", p(0, 1)),
        ("e", p(1, 1)),
        ("f", p(1, 0)),
    ]
    .into_iter()
    .map(|(id, d)| (id.to_owned(), d))
    .collect();
    let l = |v: &[(&str, u32)]| -> Vec<(String, u32)> {
        v.iter().map(|(id, a)| ((*id).to_owned(), *a)).collect()
    };
    // Exact: `d` (never acknowledged) absent, `e` with its unacknowledged one indexed.
    let good = l(&[("a", 1), ("b", 2), ("c", 1), ("e", 2), ("f", 1)]);
    assert_eq!(check_dlq(&produced, &good), DlqCheck::default());
    // `d` present, `e` without its unacknowledged one: fine too.
    let good = l(&[("a", 1), ("b", 2), ("c", 1), ("d", 1), ("e", 1), ("f", 1)]);
    assert!(check_dlq(&produced, &good).is_clean());

    // `a` twice, `c` missing, `b` short of its redelivery, `f` indexed twice over, `x` made up.
    let bad = l(&[("a", 1), ("b", 1), ("a", 1), ("e", 1), ("f", 2), ("x", 1)]);
    let r = check_dlq(&produced, &bad);
    assert_eq!(
        r.lost,
        [
            "b: attempts 1, but 2 dead letters acknowledged",
            "c: not listed, 1 dead letters acknowledged",
        ],
        "{r:?}"
    );
    assert_eq!(
        r.duplicates,
        [
            "a: listed 2 times",
            "f: attempts 2, but 1 dead letters produced",
            "x: listed (attempts 1) but never produced",
        ],
        "{r:?}"
    );
    // Nothing listed: every acknowledged input is lost.
    assert_eq!(check_dlq(&produced, &[]).lost.len(), 5);
}

#[test]
fn torture_history_is_linearizable_under_faults() {
    let cycles: usize = std::env::var("TORTURE_CYCLES")
        .ok()
        .map(|s| s.parse().expect("TORTURE_CYCLES: a number"))
        .unwrap_or(20);
    let seed: u64 = std::env::var("TORTURE_SEED")
        .ok()
        .map(|s| s.parse().expect("TORTURE_SEED: a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let kinds: Vec<Kind> = match std::env::var("TORTURE_FAULTS") {
        Ok(s) if !s.trim().is_empty() => s.split(',').map(|k| Kind::parse(k.trim())).collect(),
        _ => Kind::ALL.to_vec(),
    };
    eprintln!("torture: seed={seed} cycles={cycles} faults={kinds:?}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Clients make their channels on it.
    let _rt = rt.enter();
    let net = network();
    let work = tempfile::Builder::new()
        .prefix("flowctl-torture-")
        .tempdir()
        .unwrap();
    let mut clock_files = Vec::new();
    let clock = kinds.contains(&Kind::Clock);
    if clock {
        assert!(
            Path::new(LIBFAKETIME).exists(),
            "the clock fault needs libfaketime ({LIBFAKETIME}; scripts/setup.sh installs it)"
        );
    }
    let mut _tmpfs = None;
    // The broker outlives the cluster (declared first, dropped last). By default every node
    // gets it as `--kafka-brokers` (restarted and churned nodes too), so every pipeline, the
    // clients' too, gets topics and a DLQ indexer on the leader, re-created each time a client
    // re-creates its pipeline. That mode found librdkafka clients created and destroyed on the
    // async workers, whose init can wait a minute after a clock step (now both happen on the
    // blocking pool). With `TORTURE_DLQ_BROKERS=spec` only the DLQ pipeline names it
    // (`spec.bus.brokers`, replicated: restarted and churned nodes know it too).
    let brokers_flag = match std::env::var("TORTURE_DLQ_BROKERS") {
        Ok(s) if s == "spec" => false,
        Ok(s) if !s.is_empty() && s != "flag" => {
            panic!("TORTURE_DLQ_BROKERS: flag or spec, not {s:?}")
        }
        _ => true,
    };
    let broker = EmbeddedBroker::start(1).unwrap();
    let brokers = broker.bootstrap_servers().to_owned();
    let dlq_topic = flowctl_bus::dlq_topic(flowctl_bus::DEFAULT_TOPIC_PREFIX, DLQ_PIPELINE);
    broker
        .create_topics(&[TopicSpec::new(&dlq_topic).with_partitions(DLQ_PARTITIONS as u32)])
        .unwrap();
    // Components expire after 36 s without a heartbeat: a clock step that reached the
    // liveness decisions would expire them all.
    let mut args = vec![
        "--heartbeat-ttl",
        "5",
        "--component-expiry",
        "0.01",
        "--snapshot-threshold",
        "500",
    ];
    if brokers_flag {
        args.extend(["--kafka-brokers", &brokers]);
    }
    let (c, proxies) = Cluster::start_proxied(NODES, &rt, &net, &args, |i, node| {
        let clock_file = work.path().join(format!("faketime-{i}"));
        std::fs::write(&clock_file, "+0").unwrap();
        if clock {
            node.env = vec![
                ("LD_PRELOAD".into(), LIBFAKETIME.into()),
                (
                    "FAKETIME_TIMESTAMP_FILE".into(),
                    clock_file.to_string_lossy().into_owned(),
                ),
                ("FAKETIME_CACHE_DURATION".into(), "1".into()),
                // Only the wall clock steps; timers and Raft run on the monotonic one.
                ("DONT_FAKE_MONOTONIC".into(), "1".into()),
            ];
        }
        clock_files.push(clock_file);
        let data_dir = work.path().join(format!("data-{i}"));
        if i == DISK_NODE && kinds.contains(&Kind::Disk) {
            _tmpfs = Some(Tmpfs::mount(&data_dir));
        }
        node.data_dir = Some(data_dir);
    })
    .unwrap();
    let mut world = World {
        c,
        net,
        _proxies: proxies,
        clock_files,
        rng: Rng(seed | 1),
        log: Vec::new(),
        disk_faulted: false,
    };
    world.wait_healthy("start");
    let dlq_spec = work.path().join("dlq.yaml");
    std::fs::write(&dlq_spec, dlq_doc((!brokers_flag).then_some(&*brokers))).unwrap();
    let out = world
        .c
        .flowctl(
            0,
            &["apply", "-f", dlq_spec.to_str().unwrap(), "--timeout", "20"],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "applying the DLQ pipeline: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let rec = Arc::new(Recorder {
        start: Instant::now(),
        history: Mutex::default(),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let attempted: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for id in 0..CLIENTS {
        tasks.push(rt.spawn(run_client(
            id,
            client(&world.c),
            rec.clone(),
            stop.clone(),
            attempted.clone(),
            seed.wrapping_add(id * 7919),
        )));
    }
    tasks.push(rt.spawn(run_heartbeats(
        client(&world.c),
        stop.clone(),
        attempted.clone(),
    )));
    let produced: Arc<Mutex<BTreeMap<String, DeadLetters>>> = Arc::default();
    tasks.push(rt.spawn(run_dlq_writer(
        brokers.clone(),
        dlq_topic.clone(),
        stop.clone(),
        produced.clone(),
        seed.wrapping_add(104_729),
    )));

    let mut counts: BTreeMap<Kind, usize> = BTreeMap::new();
    let started = Instant::now();
    // Every fault kind once per round of `kinds.len()` cycles, in a random order.
    let mut round: Vec<Kind> = Vec::new();
    for cycle in 0..cycles {
        if round.is_empty() {
            round = kinds.clone();
            for i in (1..round.len()).rev() {
                let j = world.rng.below(i as u64 + 1) as usize;
                round.swap(i, j);
            }
        }
        let kind = round.pop().unwrap();
        world.inject(kind);
        *counts.entry(kind).or_default() += 1;
        eprintln!(
            "torture: cycle {cycle} {} ({:.0?})",
            world.log.last().cloned().unwrap_or_default(),
            started.elapsed()
        );
        // Some operations between faults.
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        rt.block_on(t).unwrap();
    }

    // Final reads on every node, after every client stopped: each must see the same.
    let mut lost = 0usize;
    for i in 0..NODES {
        let cl = Client::new(&[world.c.nodes[i].addr.clone()], Duration::from_secs(10)).unwrap();
        for key in 0..KEYS {
            let call = rec.now();
            let out = rt
                .block_on(register_op(&cl, key, &RegisterInput::Read))
                .unwrap_or_else(|| panic!("final read of key {key} on node {i} failed"));
            let at = rec.now();
            rec.history.lock().unwrap().registers.push((
                key,
                Operation {
                    client: 100 + i as u64,
                    input: RegisterInput::Read,
                    call,
                    ret: Outcome::Ok { output: out, at },
                },
            ));
        }
        let call = rec.now();
        let out = rt.block_on(set_op(&cl, &SetInput::Read, &rec)).unwrap();
        let at = rec.now();
        rec.history.lock().unwrap().set.push(Operation {
            client: 100 + i as u64,
            input: SetInput::Read,
            call,
            ret: Outcome::Ok { output: out, at },
        });
    }
    // The DLQ index: once every node's listing matches what the broker acknowledged (or the
    // catch-up time is up), one final listing per node is checked.
    let produced = std::mem::take(&mut *produced.lock().unwrap());
    let dlq_wait = Instant::now();
    let caught_up = (0..NODES).all(|i| {
        let left = DLQ_CATCH_UP.saturating_sub(dlq_wait.elapsed());
        wait_until(left, || {
            dlq_listing(&world.c, i).is_ok_and(|l| check_dlq(&produced, &l).is_clean())
        })
        .is_ok()
    });
    let mut dlq = DlqCheck::default();
    for i in 0..NODES {
        let listing = dlq_listing(&world.c, i)
            .unwrap_or_else(|e| panic!("final DLQ listing on node {i} failed: {e}"));
        let r = check_dlq(&produced, &listing);
        dlq.lost
            .extend(r.lost.into_iter().map(|l| format!("node {i}: {l}")));
        dlq.duplicates
            .extend(r.duplicates.into_iter().map(|d| format!("node {i}: {d}")));
    }
    lost += dlq.lost.len();
    let letters: u32 = produced.values().map(|p| p.acked + p.unacked).sum();
    eprintln!(
        "torture: dlq: {letters} dead letters for {} inputs ({} redelivered, {} unacknowledged); \
         every node {} after {:.1?}",
        produced.len(),
        produced
            .values()
            .filter(|p| p.acked + p.unacked > 1)
            .count(),
        produced.values().map(|p| p.unacked).sum::<u32>(),
        if caught_up {
            "caught up"
        } else {
            "had NOT caught up"
        },
        dlq_wait.elapsed()
    );
    assert!(
        produced.values().any(|p| p.acked > 0),
        "the DLQ writer got no dead letter acknowledged"
    );
    let h = std::mem::take(&mut *rec.history.lock().unwrap());
    // Lost: the last acknowledged write of a key (nothing else invoked on it after it
    // returned) that the final reads do not show.
    for key in 0..KEYS {
        let ops: Vec<_> = h.registers.iter().filter(|(k, _)| *k == key).collect();
        let finals: Vec<_> = ops.iter().filter(|(_, o)| o.client >= 100).collect();
        let last_write = ops
            .iter()
            .filter(|(_, o)| o.client < 100)
            .filter_map(|(_, o)| match (&o.input, &o.ret) {
                (
                    RegisterInput::Write(v) | RegisterInput::WriteIfGeneration { value: v, .. },
                    Outcome::Ok {
                        output: RegisterOutput::Written { .. } | RegisterOutput::CasOk { .. },
                        at,
                    },
                ) => Some((v.clone(), o.call, *at)),
                _ => None,
            })
            .max_by_key(|(_, _, at)| *at);
        if let Some((v, call, at)) = last_write {
            // Unambiguously last: every other change returned before it was called. (A
            // change that overlapped it, or whose answer was lost, may have come after it.)
            let later = ops.iter().any(|(_, o)| {
                o.client < 100
                    && !matches!(o.input, RegisterInput::Read)
                    && !(o.call == call && matches!(o.ret, Outcome::Ok { at: a, .. } if a == at))
                    && match o.ret {
                        Outcome::Ok { at: a, .. } => a > call,
                        Outcome::Indeterminate => true,
                    }
            });
            if !later {
                for (_, f) in &finals {
                    if let Outcome::Ok {
                        output: RegisterOutput::Read(r),
                        ..
                    } = &f.ret
                    {
                        if r.as_ref().map(|x| &x.0) != Some(&v) {
                            lost += 1;
                        }
                    }
                }
            }
        }
    }
    let ok = h
        .registers
        .iter()
        .filter(|(_, o)| matches!(o.ret, Outcome::Ok { .. }))
        .count()
        + h.set
            .iter()
            .filter(|o| matches!(o.ret, Outcome::Ok { .. }))
            .count();
    let total = h.registers.len() + h.set.len();
    let registers = check_keyed(&Register, &h.registers, BUDGET);
    let set = check(&Set, &h.set, BUDGET);
    let linearizable = registers.is_ok() && set.is_linearizable();
    let faults: Vec<String> = counts
        .iter()
        .map(|(k, n)| format!("{}:{n}", k.name()))
        .collect();
    let line = format!(
        "cycles={cycles} faults={} ops={ok}/{} linearizable={} lost={lost} duplicates={}",
        faults.join(","),
        total - ok,
        if linearizable { "yes" } else { "no" },
        h.duplicates.len() + dlq.duplicates.len()
    );
    eprintln!("torture: {:.1?} for {cycles} cycles", started.elapsed());
    println!("{line}");
    if let Err(e) = &registers {
        panic!("{line}\nregisters: {e}\nfaults: {:?}", world.log);
    }
    assert!(
        set.is_linearizable(),
        "{line}\ncomponent set: {set:?}\nfaults: {:?}",
        world.log
    );
    assert!(
        dlq.is_clean(),
        "{line}\nDLQ index:\nlost: {:#?}\nduplicates: {:#?}\nfaults: {:?}",
        dlq.lost,
        dlq.duplicates,
        world.log
    );
    assert_eq!(lost, 0, "{line}");
    assert!(h.duplicates.is_empty(), "{line}\n{:?}", h.duplicates);
    for k in &kinds {
        if cycles >= kinds.len() {
            assert!(
                counts.contains_key(k),
                "{line}: no {} fault was scheduled",
                k.name()
            );
        }
    }
}
