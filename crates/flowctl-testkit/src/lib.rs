//! Dev-only: start, stop, SIGKILL and restart clusters of real `flowctl server` processes on
//! loopback, each with its own temp data dir and free ports.
//!
//! It is not a mock: every node is the real binary, talking real gRPC over TCP and writing a
//! real RocksDB. Tests drive it through the CLI (`Cluster::flowctl`) or `flowctl-client`.

use anyhow::{bail, Context};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Finds the `flowctl` binary: `$FLOWCTL_BIN`, else next to the running test or bench binary
/// (`target/<profile>/flowctl`).
pub fn flowctl_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("FLOWCTL_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().map(Path::to_path_buf);
    while let Some(d) = dir {
        let cand = d.join("flowctl");
        if cand.is_file() {
            return Ok(cand);
        }
        dir = d.parent().map(Path::to_path_buf);
        if dir.as_ref().is_some_and(|d| d.ends_with("target")) {
            break;
        }
    }
    bail!(
        "cannot find the flowctl binary; build it (cargo build -p flowctl-cli) or set FLOWCTL_BIN"
    )
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
///
/// Ports come from below Linux's ephemeral range (32768–60999): a port the kernel handed out
/// could be handed out again, while its node is down, to some process's outgoing connection
/// or `:0` bind (a component's health server), and the node could not restart on it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Spread concurrent test processes over the range; within one process, never repeat.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 500) as u16 * 24;
    for _ in 0..12_000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (base - 20_000 + n) % 12_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("loopback has free ports")
}

/// Extra `flowctl server` flags for every node.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    pub extra_args: Vec<String>,
}

/// One node of a test cluster.
pub struct Node {
    pub addr: String,
    pub metrics_addr: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    child: Option<Child>,
    join: Vec<String>,
}

impl Node {
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A cluster of real server processes under one temp dir, removed on drop (processes are
/// killed first).
pub struct Cluster {
    pub nodes: Vec<Node>,
    bin: PathBuf,
    opts: ClusterOptions,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` nodes: the first initializes the cluster, the others join it. Returns once
    /// every node reports the same leader and all are voters.
    pub fn start(n: usize, opts: ClusterOptions) -> anyhow::Result<Self> {
        let bin = flowctl_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("flowctl-cluster-")
            .tempdir()?;
        let mut c = Cluster {
            nodes: Vec::new(),
            bin,
            opts,
            _dir: dir,
        };
        for i in 0..n {
            let port = free_port();
            let mport = free_port();
            let data_dir = c._dir.path().join(format!("node{i}"));
            let join = if i == 0 {
                vec![]
            } else {
                vec![c.nodes[0].addr.clone()]
            };
            c.nodes.push(Node {
                addr: format!("127.0.0.1:{port}"),
                metrics_addr: format!("127.0.0.1:{mport}"),
                log_path: c._dir.path().join(format!("node{i}.log")),
                data_dir,
                child: None,
                join,
            });
            c.spawn(i)?;
            if i == 0 {
                c.wait_ready(0, Duration::from_secs(30))?;
            }
        }
        c.wait_for_voters(n, Duration::from_secs(60))?;
        Ok(c)
    }

    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("server")
            .arg("--listen")
            .arg(&node.addr)
            .arg("--metrics-port")
            .arg(node.metrics_addr.rsplit(':').next().unwrap_or("0"))
            .arg("--data-dir")
            .arg(&node.data_dir);
        if !node.join.is_empty() {
            cmd.arg("--join").arg(node.join.join(","));
        }
        cmd.args(&self.opts.extra_args)
            .env("FLOWCTL_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        self.nodes[i].child = Some(child);
        Ok(())
    }

    /// Comma list of every node's address.
    pub fn endpoints(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGKILL a node and reap it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM a node and wait (up to `timeout`) for it to exit; returns its exit status code.
    pub fn terminate(&mut self, i: usize, timeout: Duration) -> anyhow::Result<Option<i32>> {
        let Some(mut c) = self.nodes[i].child.take() else {
            return Ok(None);
        };
        // `kill -TERM` keeps this crate free of unsafe code.
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status()?;
        if !sent.success() {
            bail!("kill -TERM {} failed", c.id());
        }
        let until = Instant::now() + timeout;
        loop {
            if let Some(st) = c.try_wait()? {
                return Ok(st.code());
            }
            if Instant::now() > until {
                let _ = c.kill();
                let _ = c.wait();
                bail!("node {i} did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Restarts a stopped node on its data dir (with its original flags).
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if self.nodes[i].is_running() {
            bail!("node {i} is still running");
        }
        self.spawn(i)
    }

    /// Runs the CLI against the given endpoints.
    pub fn flowctl_at(&self, endpoints: &str, args: &[&str]) -> anyhow::Result<Output> {
        Ok(Command::new(&self.bin)
            .args(args)
            .env("FLOWCTL_ENDPOINTS", endpoints)
            .stdin(Stdio::null())
            .output()?)
    }

    /// Runs the CLI against node `i`.
    pub fn flowctl(&self, i: usize, args: &[&str]) -> anyhow::Result<Output> {
        self.flowctl_at(&self.nodes[i].addr, args)
    }

    /// Runs the CLI against node `i` with `-o json` and parses standard output; errors carry
    /// standard error.
    pub fn json(&self, i: usize, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let out = self.flowctl(i, &a)?;
        if !out.status.success() {
            bail!(
                "flowctl {:?} on node {i} failed: {}",
                args,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Waits until node `i` answers `/readyz` with 200.
    pub fn wait_ready(&self, i: usize, timeout: Duration) -> anyhow::Result<()> {
        let addr = self.nodes[i].metrics_addr.clone();
        wait_until(timeout, || {
            http_get(&addr, "/readyz")
                .map(|(code, _)| code == 200)
                .unwrap_or(false)
        })
        .with_context(|| {
            format!(
                "node {i} did not become ready; log:\n{}",
                self.log_tail(i, 30)
            )
        })
    }

    /// Waits until a node's `cluster status` shows `n` voters all agreeing on one leader.
    pub fn wait_for_voters(&self, n: usize, timeout: Duration) -> anyhow::Result<()> {
        wait_until(timeout, || {
            let Ok(v) = self.json(0, &["cluster", "status", "--timeout", "3"]) else {
                return false;
            };
            let Some(members) = v["members"].as_array() else {
                return false;
            };
            let leader = v["leader_id"].as_u64().unwrap_or(0);
            members.len() == n
                && leader != 0
                && members
                    .iter()
                    .all(|m| m["voter"] == true && m["leader_id"].as_u64() == Some(leader))
        })
        .with_context(|| {
            format!(
                "cluster did not form {n} voters; node 0 log:\n{}",
                self.log_tail(0, 30)
            )
        })
    }

    /// The index of the node that is currently leader, by asking any live node.
    pub fn leader_index(&self) -> anyhow::Result<usize> {
        for (i, n) in self.nodes.iter().enumerate() {
            if n.child.is_none() {
                continue;
            }
            if let Ok(v) = self.json(i, &["cluster", "status", "--timeout", "3"]) {
                let leader = v["leader_id"].as_u64().unwrap_or(0);
                let addr = v["members"]
                    .as_array()
                    .and_then(|ms| ms.iter().find(|m| m["id"].as_u64() == Some(leader)))
                    .and_then(|m| m["addr"].as_str().map(str::to_owned));
                if let Some(addr) = addr {
                    if let Some(idx) = self.nodes.iter().position(|n| n.addr == addr) {
                        return Ok(idx);
                    }
                }
            }
        }
        bail!("no live node knows a leader")
    }

    /// The last `lines` lines of node `i`'s log, for failure messages.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.nodes[i].log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// Polls `f` every 100 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let until = Instant::now() + timeout;
    loop {
        if f() {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("condition not met within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A minimal HTTP/1.0 GET against loopback, returning the status code and body.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("malformed HTTP reply")?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}
