//! Dev-only: start, stop, SIGKILL and restart clusters of real `flowctl server` processes on
//! loopback, each with its own temp data dir and free ports.
//!
//! It is not a mock: every node is the real binary, talking real gRPC over TCP and writing a
//! real RocksDB. Tests drive it through the CLI (`Cluster::flowctl`) or `flowctl-client`.

pub mod linearizability;
pub mod proxy;

/// Signals for [`Node::signal`].
pub use rustix::process::Signal;

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

/// A base port for one `flowctl dev up` node: its gRPC (base), metrics (base + 10) and peer
/// (base + 20) ports are free.
pub fn dev_base_port() -> u16 {
    let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
    for _ in 0..100 {
        let base = free_port();
        if base <= 65_000 && free(base) && free(base + 10) && free(base + 20) {
            return base;
        }
    }
    panic!("no free base port found for dev up");
}

/// Extra `flowctl server` flags for every node.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    pub extra_args: Vec<String>,
    /// Authentication on (`--auth` on the first node, its peer secret given to the others);
    /// the CLI calls of [`Cluster::flowctl`] then carry the admin token.
    pub secure: bool,
    /// TLS everywhere: `flowctl_tls::generate` writes a CA and node certificates under
    /// [`Cluster::certs_dir`]; every node serves its public port over TLS (trusting the CA
    /// for client certificates) and its peer port with mTLS; the CLI calls of
    /// [`Cluster::flowctl`] trust the CA (`FLOWCTL_CACERT`).
    pub tls: bool,
    /// Per node (by index; missing entries take the defaults).
    pub nodes: Vec<NodeOptions>,
}

/// How one node of a cluster listens and runs.
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// The loopback address it listens on (default 127.0.0.1); its calls to other nodes leave
    /// from it too.
    pub ip: Option<String>,
    /// The real peer listener's port (default: a free one).
    pub peer_port: Option<u16>,
    /// The peer address the others use, when it is not the listener (a fault proxy).
    pub peer_advertise: Option<String>,
    /// Extra environment (libfaketime, say).
    pub env: Vec<(String, String)>,
    /// The data dir (default: one in the cluster's temp dir), e.g. on a small tmpfs.
    pub data_dir: Option<PathBuf>,
}

/// One node of a test cluster.
pub struct Node {
    /// The public API address.
    pub addr: String,
    /// The peer address the other nodes use (node-to-node RPCs; the advertised one).
    pub peer_addr: String,
    /// Where the node's peer port listens (the same as `peer_addr` unless proxied).
    pub peer_listen: String,
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

    /// Sends `sig` to the node's process; an error if it is not running.
    pub fn signal(&self, sig: rustix::process::Signal) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
            .context("the node is not running")?;
        rustix::process::kill_process(pid, sig).with_context(|| format!("signal to {pid:?}"))
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
    /// The extra arguments every node gets when it starts or restarts from now on.
    pub fn set_extra_args(&mut self, args: &[&str]) {
        self.opts.extra_args = args.iter().map(|a| a.to_string()).collect();
    }

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
        if c.opts.tls {
            let certs = c.certs_dir();
            flowctl_tls::generate(&certs, &["127.0.0.1".to_owned()], n.max(1))?;
            // The peer port gets copies, so that a test can swap the public certificate
            // alone.
            for i in 1..=n {
                for ext in ["crt", "key"] {
                    std::fs::copy(
                        certs.join(format!("node-{i}.{ext}")),
                        certs.join(format!("peer-{i}.{ext}")),
                    )?;
                }
            }
        }
        for i in 0..n {
            let o = c.opts.nodes.get(i).cloned().unwrap_or_default();
            let ip = o.ip.unwrap_or_else(|| "127.0.0.1".into());
            let port = free_port();
            let pport = o.peer_port.unwrap_or_else(free_port);
            let mport = free_port();
            let data_dir = o
                .data_dir
                .clone()
                .unwrap_or_else(|| c._dir.path().join(format!("node{i}")));
            let join = if i == 0 {
                vec![]
            } else {
                vec![c.nodes[0].peer_addr.clone()]
            };
            let peer_listen = format!("{ip}:{pport}");
            c.nodes.push(Node {
                addr: format!("{ip}:{port}"),
                peer_addr: o.peer_advertise.unwrap_or_else(|| peer_listen.clone()),
                peer_listen,
                metrics_addr: format!("{ip}:{mport}"),
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

    /// Starts `n` nodes, node `i` on its own IP ([`proxy::loopback_ip`]) and advertising a
    /// proxy of `net` (made with [`proxy::Network::loopback`]) as its peer address, so that a
    /// test can fault every directed link between nodes. `customize` sets a node's
    /// environment or data dir. Keep the proxies as long as the cluster.
    pub fn start_proxied(
        n: usize,
        rt: &tokio::runtime::Runtime,
        net: &proxy::Network,
        extra_args: &[&str],
        mut customize: impl FnMut(usize, &mut NodeOptions),
    ) -> anyhow::Result<(Cluster, Vec<proxy::ProxyHandle>)> {
        let mut proxies = Vec::new();
        let mut nodes = Vec::new();
        for i in 0..n {
            let ip = proxy::loopback_ip(i);
            let real = free_port();
            let advertised = std::net::SocketAddr::new(ip, free_port());
            proxies.push(rt.block_on(net.proxy(
                i,
                advertised,
                std::net::SocketAddr::new(ip, real),
            ))?);
            let mut node = NodeOptions {
                ip: Some(ip.to_string()),
                peer_port: Some(real),
                peer_advertise: Some(advertised.to_string()),
                ..Default::default()
            };
            customize(i, &mut node);
            nodes.push(node);
        }
        let c = Cluster::start(
            n,
            ClusterOptions {
                extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
                nodes,
                ..Default::default()
            },
        )?;
        Ok((c, proxies))
    }

    /// The index of node `id` (a Raft id), found by its address in a `cluster status`.
    pub fn index_of(&self, status: &serde_json::Value, id: u64) -> Option<usize> {
        let addr = status["members"]
            .as_array()?
            .iter()
            .find(|m| m["id"].as_u64() == Some(id))?["addr"]
            .as_str()?
            .to_owned();
        self.nodes.iter().position(|n| n.addr == addr)
    }

    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// Where a TLS cluster's certificates are: `ca.crt`, `node-N.crt`/`.key` (node `i` is
    /// N = i + 1; its public port's files), `peer-N.crt`/`.key` (its peer port's), and
    /// `admin.crt`/`.key` (a client certificate naming the admin role).
    pub fn certs_dir(&self) -> PathBuf {
        self._dir.path().join("certs")
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
            .arg("--peer-listen")
            .arg(&node.peer_listen)
            .arg("--peer-advertise")
            .arg(&node.peer_addr)
            .arg("--metrics-port")
            .arg(node.metrics_addr.rsplit(':').next().unwrap_or("0"))
            .arg("--data-dir")
            .arg(&node.data_dir);
        if !node.join.is_empty() {
            cmd.arg("--join").arg(node.join.join(","));
        }
        if self.opts.tls {
            let certs = self.certs_dir();
            let n = i + 1;
            cmd.arg("--cert-file")
                .arg(certs.join(format!("node-{n}.crt")))
                .arg("--key-file")
                .arg(certs.join(format!("node-{n}.key")))
                .arg("--trusted-ca-file")
                .arg(certs.join("ca.crt"))
                .arg("--peer-cert-file")
                .arg(certs.join(format!("peer-{n}.crt")))
                .arg("--peer-key-file")
                .arg(certs.join(format!("peer-{n}.key")))
                .arg("--peer-trusted-ca-file")
                .arg(certs.join("ca.crt"));
        }
        if self.opts.secure {
            if i == 0 {
                cmd.arg("--auth");
            } else {
                cmd.arg("--peer-token-file").arg(self.peer_token_file());
            }
        }
        // No broker unless the test names one in `extra_args` (a later `--kafka-brokers`
        // adds to this empty one): nothing reaches for the default localhost:9092.
        if let Some(o) = self.opts.nodes.get(i) {
            cmd.envs(o.env.iter().map(|(k, v)| (k, v)));
        }
        cmd.arg("--kafka-brokers=")
            .args(&self.opts.extra_args)
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
        let pid = rustix::process::Pid::from_raw(c.id() as i32).context("a child's pid")?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)
            .with_context(|| format!("SIGTERM to {}", c.id()))?;
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
    /// Replaces node `i` by a new member at the same addresses (membership churn): stops it,
    /// empties its data dir (a new node id), and starts it joining through node `via`.
    pub fn replace_fresh(&mut self, i: usize, via: usize) -> anyhow::Result<()> {
        self.kill(i);
        let dir = self.nodes[i].data_dir.clone();
        if dir.exists() {
            // The directory stays: it may be a mount point.
            for e in std::fs::read_dir(&dir)? {
                let p = e?.path();
                if p.is_dir() {
                    std::fs::remove_dir_all(&p)?;
                } else {
                    std::fs::remove_file(&p)?;
                }
            }
        }
        self.nodes[i].join = vec![self.nodes[via].peer_addr.clone()];
        self.spawn(i)
    }

    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        if self.nodes[i].is_running() {
            bail!("node {i} is still running");
        }
        self.spawn(i)
    }

    /// The first node's peer secret file (secure clusters).
    pub fn peer_token_file(&self) -> PathBuf {
        self.nodes[0].data_dir.join("peer.token")
    }

    /// The bootstrap admin token's file (secure clusters).
    pub fn admin_token_file(&self) -> PathBuf {
        self.nodes[0].data_dir.join("admin.token")
    }

    /// Runs the CLI against the given endpoints (with the admin token in a secure cluster).
    pub fn flowctl_at(&self, endpoints: &str, args: &[&str]) -> anyhow::Result<Output> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("FLOWCTL_ENDPOINTS", endpoints)
            .env_remove("FLOWCTL_TOKEN")
            .env_remove("FLOWCTL_TOKEN_FILE")
            .stdin(Stdio::null());
        if self.opts.secure {
            cmd.env("FLOWCTL_TOKEN_FILE", self.admin_token_file());
        }
        self.tls_env(&mut cmd);
        Ok(cmd.output()?)
    }

    /// Runs the CLI against node `i` with no credentials, or with `token`.
    pub fn flowctl_as(
        &self,
        i: usize,
        token: Option<&str>,
        args: &[&str],
    ) -> anyhow::Result<Output> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .env("FLOWCTL_ENDPOINTS", &self.nodes[i].addr)
            .env_remove("FLOWCTL_TOKEN")
            .env_remove("FLOWCTL_TOKEN_FILE")
            .stdin(Stdio::null());
        if let Some(t) = token {
            cmd.env("FLOWCTL_TOKEN", t);
        }
        self.tls_env(&mut cmd);
        Ok(cmd.output()?)
    }

    /// A CLI command trusts the cluster's CA (TLS clusters), and nothing from the caller's
    /// environment.
    fn tls_env(&self, cmd: &mut Command) {
        cmd.env_remove("FLOWCTL_CACERT")
            .env_remove("FLOWCTL_CERT")
            .env_remove("FLOWCTL_KEY");
        if self.opts.tls {
            cmd.env("FLOWCTL_CACERT", self.certs_dir().join("ca.crt"));
        }
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

    /// `flowctl apply [extra...] -f file` on node `i`, which must succeed; returns stdout.
    pub fn apply_file(&self, i: usize, extra: &[&str], file: &Path) -> anyhow::Result<String> {
        let mut args = vec!["apply"];
        args.extend_from_slice(extra);
        let file = file.to_string_lossy();
        args.extend(["-f", &file]);
        let out = self.flowctl(i, &args)?;
        if !out.status.success() {
            bail!(
                "flowctl apply -f {file} on node {i} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Registers the example pipelines' event types (examples/protos: raw_ledger_service and
    /// token_transfer) through node `i`, each file as its own package.
    pub fn push_example_schemas(&self, i: usize) -> anyhow::Result<()> {
        let protos = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/protos");
        for (file, pkg) in [
            ("raw_ledger_service.proto", "raw_ledger_service"),
            ("token_transfer.proto", "token_transfer"),
        ] {
            let p = protos.join(file);
            let out = self.flowctl(
                i,
                &["schemas", "push", &p.to_string_lossy(), "--package", pkg],
            )?;
            if !out.status.success() {
                bail!(
                    "flowctl schemas push {} on node {i} failed: {}",
                    p.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(())
    }

    /// The ids of the components node `i` lists as healthy (none when it does not answer).
    pub fn healthy(&self, i: usize) -> Vec<String> {
        self.json(i, &["list", "--timeout", "5"])
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter(|x| x["status"] == "healthy")
            .filter_map(|x| x["id"].as_str().map(str::to_owned))
            .collect()
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
            // Every node serving knows the cluster's id: a node that has joined but not yet
            // learned it cannot forward writes (the peer guard refuses them).
            (0..self.nodes.len()).all(|i| {
                self.nodes[i].child.is_none()
                    || self
                        .json(i, &["cluster", "status", "--timeout", "3"])
                        .is_ok_and(|s| s["cluster_id"].as_str().is_some_and(|c| !c.is_empty()))
            }) && members.len() == n
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

/// A tarball (for `docker import`) of `files`, each a host file copied to the same path or to
/// the path given, with the shared libraries and the loader `ldd` lists for each: how the
/// Docker tests make images without a registry.
pub fn rootfs_tar(files: &[(PathBuf, Option<&str>)]) -> anyhow::Result<Vec<u8>> {
    let root = tempfile::tempdir()?;
    std::fs::create_dir_all(root.path().join("tmp"))?;
    let copy = |from: &Path, to: &str| -> anyhow::Result<()> {
        let dest = root.path().join(to.trim_start_matches('/'));
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::copy(from, &dest).with_context(|| format!("copying {}", from.display()))?;
        Ok(())
    };
    for (file, to) in files {
        let same = file.to_string_lossy();
        copy(file, to.unwrap_or(&same))?;
        let ldd = Command::new("ldd").arg(file).output()?;
        for word in String::from_utf8_lossy(&ldd.stdout).split_whitespace() {
            if word.starts_with('/') {
                copy(Path::new(word), word)?;
            }
        }
    }
    let tar = Command::new("tar")
        .arg("-C")
        .arg(root.path())
        .args(["-c", "."])
        .output()?;
    if !tar.status.success() {
        bail!("tar failed: {}", String::from_utf8_lossy(&tar.stderr));
    }
    Ok(tar.stdout)
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
