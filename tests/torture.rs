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
//! - A run fails on a non-linearizable key or set, an acknowledged write lost, a duplicate in
//!   a list, and a scheduled fault that did not happen (a partition that blocked nothing, a
//!   kill of a dead process, a clock step that reached no process).
//!
//! `TORTURE_CYCLES` (default 20), `TORTURE_SEED`, `TORTURE_FAULTS` (comma-separated, default
//! every kind) steer it; `scripts/torture.sh` runs long versions. The last line printed is
//! `cycles=N faults=... ops=<ok>/<indeterminate> linearizable=yes lost=0 duplicates=0`.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

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
    let (c, proxies) = Cluster::start_proxied(
        NODES,
        &rt,
        &net,
        // Components expire after 36 s without a heartbeat: a clock step that reached the
        // liveness decisions would expire them all.
        &[
            "--heartbeat-ttl",
            "5",
            "--component-expiry",
            "0.01",
            "--snapshot-threshold",
            "500",
        ],
        |i, node| {
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
        },
    )
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
        h.duplicates.len()
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
