//! Processes and ports: whether a recorded pid is still the process we started (from
//! `/proc`), signalling it, the port layout of the nodes, and the node child processes of
//! `dev up`: spawning them, waiting until they are ready and form a cluster, noticing exits
//! and stopping them.

use super::state::{NodeState, Phase};
use super::status::{cluster_status, ProcRow};
use super::up::DevEnv;
use anyhow::{bail, Context as _};
use flowctl_client::proto::admin::v1 as pb;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// Node `i` serves gRPC on `base + i`, metrics on `base + METRICS_PORT_OFFSET + i` and its
/// peer port on `base + PEER_PORT_OFFSET + i`.
const METRICS_PORT_OFFSET: u16 = 10;
const PEER_PORT_OFFSET: u16 = 20;
pub(super) const READY_TIMEOUT: Duration = Duration::from_secs(90);
const VOTERS_TIMEOUT: Duration = Duration::from_secs(60);
/// Nodes get this long after SIGTERM (to stop their components) before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(20);
pub(super) const POLL: Duration = Duration::from_millis(100);

/// The state letter and start time of a process, from `/proc/PID/stat`.
pub(super) fn proc_stat(pid: u32) -> Option<(char, u64)> {
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
pub(super) fn alive(pid: u32, start: u64) -> bool {
    match proc_stat(pid) {
        Some((state, s)) => !matches!(state, 'Z' | 'X') && (start == 0 || s == start),
        None => false,
    }
}

/// Sends `sig` to `pid`; false if there is no such process (or it is not ours).
pub(super) fn send_signal(pid: u32, sig: rustix::process::Signal) -> bool {
    rustix::process::Pid::from_raw(pid as i32)
        .is_some_and(|p| rustix::process::kill_process(p, sig).is_ok())
}

/// `setpriv` if it can set a parent-death signal here.
pub(super) fn setpriv() -> Option<&'static str> {
    std::process::Command::new("setpriv")
        .args(["--pdeathsig", "KILL", "--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        .then_some("setpriv")
}

pub(super) struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    pub(super) fn new() -> anyhow::Result<Self> {
        let on = |k: SignalKind| signal(k).context("cannot install a signal handler");
        Ok(Signals {
            term: on(SignalKind::terminate())?,
            int: on(SignalKind::interrupt())?,
            hup: on(SignalKind::hangup())?,
        })
    }

    pub(super) async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ports {
    base: u16,
    pub(super) nodes: u16,
}

impl Ports {
    pub(super) fn new(base: u16, nodes: u16) -> anyhow::Result<Self> {
        if base == 0 || u32::from(base) + u32::from(PEER_PORT_OFFSET) + u32::from(nodes) > 65_536 {
            bail!(
                "--base-port {base}: the ports {base}..{} must be between 1 and 65535",
                u32::from(base) + u32::from(PEER_PORT_OFFSET) + u32::from(nodes)
            );
        }
        Ok(Ports { base, nodes })
    }

    pub(super) fn grpc(&self, i: u16) -> u16 {
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

    pub(super) fn check_free(&self) -> anyhow::Result<()> {
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

pub(super) struct NodeProc {
    pub(super) state: NodeState,
    child: tokio::process::Child,
    /// How it ended, once it has.
    exited: Option<String>,
}

impl DevEnv {
    /// Spawns node `i` from the calling thread, which is the runtime's main thread: the
    /// parent-death signal fires when the *thread* that forked exits, and that one lives
    /// as long as `dev up`.
    pub(super) fn spawn_node(&mut self, i: u16) -> anyhow::Result<()> {
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
        if !self.allowed_images.is_empty() {
            cmd.arg(format!(
                "--allowed-images={}",
                self.allowed_images.join(",")
            ));
        }
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

    pub(super) fn poll_exits(&mut self) {
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

    pub(super) async fn wait_ready(&mut self, which: std::ops::Range<u16>) -> anyhow::Result<()> {
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

    pub(super) async fn wait_for_voters(&mut self) -> anyhow::Result<()> {
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

    pub(super) fn processes(&self) -> Vec<ProcRow> {
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
    pub(super) async fn stop(&mut self, signals: &mut Signals) {
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
}
