//! The cluster benchmark: a 3-node flowctl cluster against a 3-node etcd cluster, both on
//! loopback with fsync on, driven with the same workload.
//!
//! Workloads, each at every `--clients` concurrency:
//! - `write`: each request applies a distinct ~256-byte pipeline document through the public
//!   gRPC API (and so through Raft); for etcd, a put of the same document under a distinct key.
//! - `read`: a linearizable `GetPipeline` of a random pre-populated name; for etcd, a default
//!   (linearizable) get of a random pre-populated key.
//!
//! Every cell runs N tokio tasks issuing requests back to back, spread evenly over the three
//! nodes, for a short warm-up and then `--seconds`; it records each request's latency. The two
//! systems run one after the other, never at the same time, so neither disturbs the other.
//! Run it on a quiet machine: the benchmark client shares the CPU with the servers.

use anyhow::{bail, Context};
use clap::Parser;
use flowctl_proto::admin::v1::{
    pipeline_service_client::PipelineServiceClient, ApplyPipelineRequest, ApplyResult,
    GetPipelineRequest,
};
use flowctl_testkit::{free_port, Cluster, ClusterOptions};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

/// The benchmark's subset of etcd's KV API (`proto/etcd_kv.proto`, compiled by protox).
mod etcd {
    #![allow(clippy::all, rust_2018_idioms)]
    tonic::include_proto!("etcdserverpb");
}
use etcd::kv_client::KvClient;

/// A gRPC client of one etcd member.
async fn etcd_connect(url: &str, timeout: Option<Duration>) -> anyhow::Result<KvClient<Channel>> {
    let mut ep = Endpoint::from_shared(url.to_string())?;
    if let Some(t) = timeout {
        ep = ep.connect_timeout(t).timeout(t);
    }
    Ok(KvClient::new(ep.connect().await?))
}

/// An etcd put of `value` under `key`.
async fn etcd_put(kv: &mut KvClient<Channel>, key: String, value: Vec<u8>) -> anyhow::Result<()> {
    kv.put(etcd::PutRequest {
        key: key.into_bytes(),
        value,
    })
    .await?;
    Ok(())
}

/// A linearizable (not serializable) etcd get of one key.
async fn etcd_get(kv: &mut KvClient<Channel>, key: &str) -> anyhow::Result<etcd::RangeResponse> {
    let req = etcd::RangeRequest {
        key: key.as_bytes().to_vec(),
        serializable: false,
    };
    Ok(kv.range(req).await?.into_inner())
}

/// Size of every document written, in bytes.
const DOC_BYTES: usize = 256;
/// How many names the read workloads choose from.
const READ_KEYS: usize = 1000;
/// Concurrency used to pre-populate the read keys.
const POPULATE_CLIENTS: usize = 32;
/// Any single request slower than this is counted as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Error messages kept per cell for the report.
const KEEP_ERRORS: usize = 3;

#[derive(Parser, Debug)]
#[command(
    name = "cluster-bench",
    about = "Benchmark a 3-node flowctl cluster against a 3-node etcd cluster on loopback"
)]
struct Args {
    /// Measured seconds per (workload, clients, system) cell.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Warm-up seconds before each cell's measurement.
    #[arg(long, default_value_t = 1)]
    warmup_seconds: u64,
    /// Concurrent clients, as a comma list.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    clients: Vec<usize>,
    /// Also write the rows as a JSON array to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Benchmark flowctl only.
    #[arg(long)]
    skip_etcd: bool,
    /// The flowctl binary (default: $FLOWCTL_BIN, else `flowctl` next to this executable).
    #[arg(long)]
    flowctl_bin: Option<PathBuf>,
    /// Record a CPU profile of the three servers of each system during the measured part of
    /// this cell (`write:64`), with `perf record -e cpu-clock --call-graph dwarf`, into
    /// `perf-<system>-<workload>-<clients>.data` in the current directory.
    #[arg(long, value_parser = parse_cell)]
    profile: Option<(Workload, usize)>,
}

fn parse_cell(s: &str) -> Result<(Workload, usize), String> {
    let (w, c) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: expected WORKLOAD:CLIENTS, such as write:64"))?;
    let w = match w {
        "write" => Workload::Write,
        "read" => Workload::Read,
        _ => return Err(format!("{w:?}: the workload is write or read")),
    };
    let c = c
        .parse::<usize>()
        .ok()
        .filter(|c| *c > 0)
        .ok_or_else(|| format!("{c:?}: the clients are a positive number"))?;
    Ok((w, c))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    Write,
    Read,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Write => "write",
            Workload::Read => "read",
        }
    }
}

/// One measured cell.
#[derive(Clone, Debug)]
struct Row {
    workload: Workload,
    clients: usize,
    system: &'static str,
    ops_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU time (user + system) of the system's three servers per 1,000 successful requests,
    /// over the measured part.
    cpu_ms_per_1k: f64,
    errors: u64,
    first_errors: Vec<String>,
}

impl Row {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "workload": self.workload.name(),
            "clients": self.clients,
            "system": self.system,
            "ops_per_sec": round(self.ops_per_sec, 1),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "cpu_ms_per_1k": round(self.cpu_ms_per_1k, 1),
        })
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.clients.is_empty() || args.clients.contains(&0) {
        bail!("--clients needs one or more positive numbers");
    }
    if args.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    if let Some(bin) = &args.flowctl_bin {
        // The testkit reads FLOWCTL_BIN; nothing else runs yet, so setting it is race-free.
        std::env::set_var("FLOWCTL_BIN", bin);
    }
    // Find (or install) etcd before spending minutes on flowctl.
    let etcd_bin = if args.skip_etcd {
        None
    } else {
        Some(ensure_etcd()?)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    eprintln!("starting a 3-node flowctl cluster (fsync on)...");
    let cluster = Cluster::start(3, ClusterOptions::default()).context("starting flowctl")?;
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.addr.clone()).collect();
    let log_starts = log_sizes(&cluster);
    let pids: Vec<u32> = cluster.nodes.iter().filter_map(|n| n.pid()).collect();
    let metrics: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| n.metrics_addr.clone())
        .collect();
    let flowctl_rows = rt.block_on(bench_flowctl(&addrs, &metrics, &pids, &args));
    report_server_log_problems(&cluster, &log_starts);
    drop(cluster);
    let flowctl_rows = flowctl_rows?;

    let etcd_rows = match &etcd_bin {
        None => Vec::new(),
        Some(bin) => {
            eprintln!("starting a 3-node etcd cluster ({})...", bin.display());
            let etcd = EtcdCluster::start(bin)?;
            let rows = rt.block_on(async {
                etcd.wait_ready(Duration::from_secs(60)).await?;
                let pids: Vec<u32> = etcd.children.iter().map(Child::id).collect();
                bench_etcd(&etcd.client_urls, &pids, &args).await
            });
            if rows.is_err() {
                eprintln!("etcd log tail:\n{}", etcd.log_tail(20));
            }
            drop(etcd);
            rows?
        }
    };

    let mut all = flowctl_rows.clone();
    all.extend(etcd_rows.iter().cloned());
    for r in &all {
        if r.errors > 0 {
            eprintln!(
                "warning: {} {} with {} clients: {} failed requests, e.g. {:?}",
                r.system,
                r.workload.name(),
                r.clients,
                r.errors,
                r.first_errors
            );
        }
    }
    print_table(&flowctl_rows, &etcd_rows, &args);
    if let Some(path) = &args.json {
        let v = serde_json::Value::Array(all.iter().map(Row::json).collect());
        std::fs::write(path, serde_json::to_string_pretty(&v)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// The pipeline document for `name`, padded to exactly [`DOC_BYTES`].
fn document(name: &str) -> String {
    // A valid pipeline for the kubernetes driver: stored through Raft like any other, but not
    // deployed (only the process driver has a runtime here), so the benchmark measures the
    // write path rather than thousands of child processes. Padded through an env value.
    let head = format!(
        "apiVersion: flowctl/v1\nkind: Pipeline\nmetadata:\n  name: {name}\nspec:\n  driver: kubernetes\n  sinks:\n    - id: sink\n      image: sink:1\n      inputs: [src]\n  sources:\n    - id: src\n      image: src:1\n      env:\n        PAD: \""
    );
    let tail = "\"\n";
    let pad = DOC_BYTES.saturating_sub(head.len() + tail.len());
    format!("{head}{}{tail}", "x".repeat(pad))
}

fn write_name(n: u64) -> String {
    format!("bench-w-{n:010}")
}

fn read_name(n: usize) -> String {
    format!("bench-r-{n:06}")
}

fn etcd_key(name: &str) -> String {
    format!("/bench/{name}")
}

/// Runs one cell: `clients` tasks call `op(task, seq)` back to back for the warm-up and then
/// the measured `seconds`; returns throughput and latency over the measured part.
async fn run_cell<F, Fut>(
    system: &'static str,
    workload: Workload,
    clients: usize,
    args: &Args,
    servers: &[u32],
    op: F,
) -> Row
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup_seconds);
    let until = measure_from + Duration::from_secs(args.seconds);
    // The servers' CPU time over the measured part (and its profile, if asked for this cell).
    let monitor = {
        let pids = servers.to_vec();
        let profile = (args.profile == Some((workload, clients)))
            .then(|| PathBuf::from(format!("perf-{system}-{}-{clients}.data", workload.name())));
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            let perf = profile.and_then(|f| start_perf(&pids, &f));
            let before = cpu_ms(&pids);
            tokio::time::sleep_until(until.into()).await;
            let used = cpu_ms(&pids) - before;
            if let Some(p) = perf {
                stop_perf(p).await;
            }
            used
        })
    };
    let seq = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(clients);
    for task in 0..clients {
        let op = op.clone();
        let seq = seq.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            let mut first = Vec::new();
            loop {
                let t0 = Instant::now();
                if t0 >= until {
                    break;
                }
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let r = match tokio::time::timeout(REQUEST_TIMEOUT, op(task, n)).await {
                    Ok(r) => r,
                    Err(_) => Err(anyhow::anyhow!("no answer within {REQUEST_TIMEOUT:?}")),
                };
                let took = t0.elapsed();
                if t0 < measure_from {
                    continue;
                }
                match r {
                    Ok(()) => lat.push(took),
                    Err(e) => {
                        errors += 1;
                        if first.len() < KEEP_ERRORS {
                            first.push(format!("{e:#}"));
                        }
                    }
                }
            }
            (lat, errors, first)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut first_errors = Vec::new();
    for t in tasks {
        match t.await {
            Ok((l, e, f)) => {
                lat.extend(l);
                errors += e;
                first_errors.extend(f);
            }
            Err(e) => {
                errors += 1;
                first_errors.push(format!("client task failed: {e}"));
            }
        }
    }
    let elapsed = measure_from.elapsed().as_secs_f64();
    let cpu = monitor.await.unwrap_or(0.0);
    first_errors.truncate(KEEP_ERRORS);
    lat.sort_unstable();
    let row = Row {
        workload,
        clients,
        system,
        ops_per_sec: lat.len() as f64 / elapsed,
        p50_ms: percentile_ms(&lat, 0.50),
        p99_ms: percentile_ms(&lat, 0.99),
        cpu_ms_per_1k: if lat.is_empty() {
            0.0
        } else {
            cpu * 1000.0 / lat.len() as f64
        },
        errors,
        first_errors,
    };
    eprintln!(
        "  {system:7} {:5} clients={clients:<4} {:>9.1} ops/s  p50 {:>8.3} ms  p99 {:>8.3} ms  cpu {:>7.1} ms/1k{}",
        workload.name(),
        row.ops_per_sec,
        row.p50_ms,
        row.p99_ms,
        row.cpu_ms_per_1k,
        if errors > 0 {
            format!("  ({errors} errors)")
        } else {
            String::new()
        }
    );
    row
}

/// Per stage of the write path, the sum of seconds and the count of
/// `flowctl_write_stage_seconds` over every node, from their `/metrics`.
fn stage_totals(metrics: &[String]) -> BTreeMap<String, (f64, f64)> {
    let mut out: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for addr in metrics {
        let Ok((200, text)) = flowctl_testkit::http_get(addr, "/metrics") else {
            continue;
        };
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("flowctl_write_stage_seconds_") else {
                continue;
            };
            let (is_sum, rest) = if let Some(r) = rest.strip_prefix("sum{stage=\"") {
                (true, r)
            } else if let Some(r) = rest.strip_prefix("count{stage=\"") {
                (false, r)
            } else {
                continue;
            };
            let Some((stage, value)) = rest.split_once("\"} ") else {
                continue;
            };
            let Ok(v) = value.trim().parse::<f64>() else {
                continue;
            };
            let e = out.entry(stage.to_owned()).or_default();
            if is_sum {
                e.0 += v;
            } else {
                e.1 += v;
            }
        }
    }
    out
}

/// The mean of each write stage over one cell (the difference of two [`stage_totals`]).
fn print_stages(before: &BTreeMap<String, (f64, f64)>, after: &BTreeMap<String, (f64, f64)>) {
    let order = [
        "validate",
        "forward",
        "batch_wait",
        "commit",
        "replicate",
        "follower_append",
        "log_write",
        "apply",
        "apply_write",
    ];
    let mut parts = Vec::new();
    for stage in order {
        let (s1, c1) = after.get(stage).copied().unwrap_or_default();
        let (s0, c0) = before.get(stage).copied().unwrap_or_default();
        let n = c1 - c0;
        if n > 0.0 {
            parts.push(format!("{stage} {:.0} us (n={n:.0})", (s1 - s0) / n * 1e6));
        }
    }
    if !parts.is_empty() {
        eprintln!("    stages, mean: {}", parts.join(", "));
    }
}

/// CPU time (user + system, all threads) these processes have used, in milliseconds, from
/// `/proc/<pid>/stat` (fields 14 and 15, in clock ticks). A process that is gone counts 0.
fn cpu_ms(pids: &[u32]) -> f64 {
    let tick_ms = 1000.0 / rustix::param::clock_ticks_per_second() as f64;
    let ticks: u64 = pids
        .iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|stat| proc_stat_cpu_ticks(&stat))
        .sum();
    ticks as f64 * tick_ms
}

/// utime + stime of one `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces, so fields are counted from its closing parenthesis.
fn proc_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); utime is field 14, stime field 15.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Starts `perf record` on `pids` into `file`; None (with a warning) if perf cannot start.
fn start_perf(pids: &[u32], file: &Path) -> Option<Child> {
    let list: Vec<String> = pids.iter().map(u32::to_string).collect();
    let child = Command::new("perf")
        .args([
            "record",
            "-e",
            "cpu-clock",
            "-F",
            "499",
            "--call-graph",
            "dwarf",
        ])
        .arg("-p")
        .arg(list.join(","))
        .arg("-o")
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match child {
        Ok(c) => {
            eprintln!("  recording a profile into {}", file.display());
            Some(c)
        }
        Err(e) => {
            eprintln!("warning: cannot start perf (Debian: linux-perf): {e}");
            None
        }
    }
}

/// Ends `perf record` as Ctrl-C would (it then writes its file) and waits for it.
async fn stop_perf(mut perf: Child) {
    if let Some(pid) = i32::try_from(perf.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
    }
    let _ = tokio::task::spawn_blocking(move || perf.wait()).await;
}

/// Nearest-rank percentile of sorted latencies, in milliseconds (0 when there are none).
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0
}

/// Runs `total` operations `op(i)` with `clients` concurrent tasks; fails on the first error.
async fn populate<F, Fut>(total: usize, clients: usize, op: F) -> anyhow::Result<()>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let op = op.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= total {
                    return anyhow::Ok(());
                }
                op(i).await.with_context(|| format!("populating key {i}"))?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// flowctl

async fn flowctl_channels(addrs: &[String]) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::new();
    for a in addrs {
        let ch = Endpoint::from_shared(format!("http://{a}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("cannot connect to flowctl at {a}"))?;
        out.push(ch);
    }
    Ok(out)
}

async fn flowctl_apply(ch: Channel, name: String) -> anyhow::Result<()> {
    let req = ApplyPipelineRequest {
        yaml: document(&name),
        file_name: String::new(),
        dry_run: false,
        // The documents declare no event types, so there is nothing to look up.
        allow_unregistered_types: false,
        if_generation: None,
    };
    let resp = PipelineServiceClient::new(ch)
        .apply_pipeline(req)
        .await
        .map_err(|s| anyhow::anyhow!("apply {name}: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    if resp.result != ApplyResult::Created as i32 {
        bail!("apply {name}: result {} instead of CREATED", resp.result);
    }
    Ok(())
}

async fn flowctl_get(ch: Channel, name: String) -> anyhow::Result<()> {
    let req = GetPipelineRequest {
        name: name.clone(),
        consistency: 0, // linearizable
    };
    let resp = PipelineServiceClient::new(ch)
        .get_pipeline(req)
        .await
        .map_err(|s| anyhow::anyhow!("get {name}: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    match resp.pipeline {
        Some(p) if p.name == name => Ok(()),
        Some(p) => bail!("get {name}: got pipeline {:?}", p.name),
        None => bail!("get {name}: no pipeline in the reply"),
    }
}

async fn bench_flowctl(
    addrs: &[String],
    metrics: &[String],
    servers: &[u32],
    args: &Args,
) -> anyhow::Result<Vec<Row>> {
    let chans = Arc::new(flowctl_channels(addrs).await?);
    let mut rows = Vec::new();
    for &c in &args.clients {
        let chans = chans.clone();
        let n = chans.len();
        // Every write, across cells, gets a fresh name.
        let base = rows.len() as u64 * 1_000_000_000;
        let before = stage_totals(metrics);
        rows.push(
            run_cell(
                "flowctl",
                Workload::Write,
                c,
                args,
                servers,
                move |task, seq| flowctl_apply(chans[task % n].clone(), write_name(base + seq)),
            )
            .await,
        );
        print_stages(&before, &stage_totals(metrics));
    }
    eprintln!("  flowctl: populating {READ_KEYS} pipelines for the reads...");
    {
        let chans = chans.clone();
        let n = chans.len();
        populate(READ_KEYS, POPULATE_CLIENTS, move |i| {
            flowctl_apply(chans[i % n].clone(), read_name(i))
        })
        .await?;
    }
    for &c in &args.clients {
        let chans = chans.clone();
        let n = chans.len();
        rows.push(
            run_cell(
                "flowctl",
                Workload::Read,
                c,
                args,
                servers,
                move |task, _| {
                    let i = rand::random_range(0..READ_KEYS);
                    flowctl_get(chans[task % n].clone(), read_name(i))
                },
            )
            .await,
        );
    }
    Ok(rows)
}

/// Each node's log size, so that only what the benchmark itself caused is reported.
fn log_sizes(cluster: &Cluster) -> Vec<usize> {
    cluster
        .nodes
        .iter()
        .map(|n| std::fs::metadata(&n.log_path).map_or(0, |m| m.len() as usize))
        .collect()
}

/// Prints how many WARN/ERROR lines each flowctl node logged during the benchmark, with a few
/// examples: a benchmark that looks fine can still hide server-side trouble.
fn report_server_log_problems(cluster: &Cluster, starts: &[usize]) {
    for (i, node) in cluster.nodes.iter().enumerate() {
        let bytes = std::fs::read(&node.log_path).unwrap_or_default();
        let from = starts.get(i).copied().unwrap_or(0).min(bytes.len());
        let text = strip_ansi(&String::from_utf8_lossy(&bytes[from..]));
        let bad: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("WARN"))
            .collect();
        if !bad.is_empty() {
            eprintln!(
                "flowctl node {i} logged {} WARN/ERROR lines during the benchmark; the first ones:",
                bad.len()
            );
            for l in bad.iter().take(3) {
                eprintln!("  {l}");
            }
        }
    }
}

/// Removes terminal colour sequences (`ESC [ ... m`) from log text.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// etcd

/// Finds `etcd` on PATH, installing Debian's `etcd-server` package when it is missing.
fn ensure_etcd() -> anyhow::Result<PathBuf> {
    if let Some(p) = find_on_path("etcd") {
        return Ok(p);
    }
    eprintln!("etcd not found on PATH; installing Debian's etcd-server package...");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", "etcd-server"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .status()
    };
    let ok = install().map(|s| s.success()).unwrap_or(false);
    if !ok {
        // A fresh machine may have no package lists yet.
        let _ = Command::new("apt-get")
            .args(["update", "-q"])
            .stdin(Stdio::null())
            .status();
        let st = install().context("cannot run apt-get (install etcd-server by hand)")?;
        if !st.success() {
            bail!("apt-get install etcd-server failed ({st}); install it or use --skip-etcd");
        }
    }
    find_on_path("etcd")
        .or_else(|| Some(PathBuf::from("/usr/bin/etcd")).filter(|p| p.is_file()))
        .context("etcd-server installed, but no etcd binary on PATH")
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Three etcd members on loopback under one temp dir; killed (by PID) and removed on drop.
struct EtcdCluster {
    children: Vec<Child>,
    client_urls: Vec<String>,
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    fn start(bin: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("flowctl-bench-etcd-")
            .tempdir()?;
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let initial = initial.join(",");
        let mut c = EtcdCluster {
            children: Vec::new(),
            client_urls: Vec::new(),
            dir,
        };
        for (i, (client, peer)) in ports.iter().enumerate() {
            let log = std::fs::File::create(c.dir.path().join(format!("m{i}.log")))?;
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let mut cmd = Command::new(bin);
            cmd.arg("--name")
                .arg(format!("m{i}"))
                .arg("--data-dir")
                .arg(c.dir.path().join(format!("m{i}")))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "flowctl-bench"])
                .args(["--logger", "zap", "--log-outputs", "stderr"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            // Only the flags above configure the members, not a stray ETCD_* environment.
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("ETCD_") {
                    cmd.env_remove(k);
                }
            }
            let child = cmd
                .spawn()
                .with_context(|| format!("cannot start {}", bin.display()))?;
            c.children.push(child);
            c.client_urls.push(client_url);
        }
        Ok(c)
    }

    /// Waits until every member serves a linearizable get (so a leader is elected).
    async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + timeout;
        for (i, url) in self.client_urls.iter().enumerate() {
            loop {
                let probe = async {
                    let mut kv = etcd_connect(url, Some(Duration::from_secs(2))).await?;
                    etcd_get(&mut kv, "bench-probe").await?;
                    anyhow::Ok(())
                };
                match probe.await {
                    Ok(()) => break,
                    Err(e) if Instant::now() > until => {
                        bail!(
                            "etcd member {i} ({url}) not ready within {timeout:?}: {e:#}\n{}",
                            self.log_tail(20)
                        )
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
        Ok(())
    }

    fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("m0.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            // SIGKILL by this child's PID, then reap it.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn bench_etcd(urls: &[String], servers: &[u32], args: &Args) -> anyhow::Result<Vec<Row>> {
    // One client (one connection) per member, as for flowctl.
    let mut kvs = Vec::new();
    for u in urls {
        let kv = etcd_connect(u, None)
            .await
            .with_context(|| format!("cannot connect to etcd at {u}"))?;
        kvs.push(kv);
    }
    let kvs = Arc::new(kvs);
    let value_of = |name: &str| document(name).into_bytes();
    let mut rows = Vec::new();
    for &c in &args.clients {
        let kvs = kvs.clone();
        let n = kvs.len();
        let base = rows.len() as u64 * 1_000_000_000;
        rows.push(
            run_cell(
                "etcd",
                Workload::Write,
                c,
                args,
                servers,
                move |task, seq| {
                    let mut kv = kvs[task % n].clone();
                    let name = write_name(base + seq);
                    async move { etcd_put(&mut kv, etcd_key(&name), value_of(&name)).await }
                },
            )
            .await,
        );
    }
    eprintln!("  etcd: populating {READ_KEYS} keys for the reads...");
    {
        let kvs = kvs.clone();
        let n = kvs.len();
        populate(READ_KEYS, POPULATE_CLIENTS, move |i| {
            let mut kv = kvs[i % n].clone();
            let name = read_name(i);
            async move { etcd_put(&mut kv, etcd_key(&name), value_of(&name)).await }
        })
        .await?;
    }
    for &c in &args.clients {
        let kvs = kvs.clone();
        let n = kvs.len();
        rows.push(
            run_cell("etcd", Workload::Read, c, args, servers, move |task, _| {
                let mut kv = kvs[task % n].clone();
                let key = etcd_key(&read_name(rand::random_range(0..READ_KEYS)));
                async move {
                    let resp = etcd_get(&mut kv, &key).await?;
                    if resp.kvs.len() != 1 || resp.kvs[0].value.len() != DOC_BYTES {
                        bail!("get {key}: {} values", resp.kvs.len());
                    }
                    Ok(())
                }
            })
            .await,
        );
    }
    Ok(rows)
}

// ---------------------------------------------------------------------------------------------
// output

fn print_table(flowctl: &[Row], etcd: &[Row], args: &Args) {
    let header = [
        "workload",
        "clients",
        "flowctl ops/s",
        "p50 ms",
        "p99 ms",
        "cpu ms/1k",
        "etcd ops/s",
        "p50 ms",
        "p99 ms",
        "cpu ms/1k",
        "ratio",
        "cpu ratio",
    ];
    let mut lines: Vec<Vec<String>> = Vec::new();
    for w in [Workload::Write, Workload::Read] {
        for &c in &args.clients {
            let f = flowctl.iter().find(|r| r.workload == w && r.clients == c);
            let e = etcd.iter().find(|r| r.workload == w && r.clients == c);
            let cells = |r: Option<&Row>| match r {
                Some(r) => vec![
                    format!("{:.0}", r.ops_per_sec),
                    format!("{:.2}", r.p50_ms),
                    format!("{:.2}", r.p99_ms),
                    format!("{:.0}", r.cpu_ms_per_1k),
                ],
                None => vec!["-".into(); 4],
            };
            let ratio = |num: f64, den: f64| {
                if den > 0.0 {
                    format!("{:.2}", num / den)
                } else {
                    "-".into()
                }
            };
            let (r, cpu) = match (f, e) {
                (Some(f), Some(e)) => (
                    ratio(f.ops_per_sec, e.ops_per_sec),
                    ratio(f.cpu_ms_per_1k, e.cpu_ms_per_1k),
                ),
                _ => ("-".into(), "-".into()),
            };
            let mut line = vec![w.name().to_owned(), c.to_string()];
            line.extend(cells(f));
            line.extend(cells(e));
            line.push(r);
            line.push(cpu);
            lines.push(line);
        }
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for l in &lines {
        for (w, cell) in widths.iter_mut().zip(l) {
            *w = (*w).max(cell.len());
        }
    }
    let fmt = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i == 0 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!(
        "{}",
        fmt(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>())
    );
    for l in &lines {
        println!("{}", fmt(l));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_256_bytes_and_valid_names() {
        for name in [write_name(0), write_name(9_999_999_999), read_name(999)] {
            let d = document(&name);
            assert_eq!(d.len(), DOC_BYTES, "{d}");
            assert!(name.len() <= 63);
            assert!(name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        }
    }

    #[test]
    fn colour_codes_are_stripped() {
        assert_eq!(strip_ansi("\u{1b}[33m WARN\u{1b}[0m x"), " WARN x");
    }

    #[test]
    fn cpu_ticks_are_read_after_the_command_name() {
        let stat = "4242 (flowctl server) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9";
        assert_eq!(proc_stat_cpu_ticks(stat), Some(325));
        assert_eq!(proc_stat_cpu_ticks("4242 (x"), None);
        assert!(cpu_ms(&[std::process::id()]) >= 0.0);
    }

    #[test]
    fn profile_cells_are_workload_and_clients() {
        assert_eq!(parse_cell("write:64"), Ok((Workload::Write, 64)));
        assert!(parse_cell("write").is_err());
        assert!(parse_cell("scan:1").is_err());
        assert!(parse_cell("read:0").is_err());
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&v, 0.50), 50.0);
        assert_eq!(percentile_ms(&v, 0.99), 99.0);
        assert_eq!(percentile_ms(&[], 0.99), 0.0);
    }
}
