//! The heartbeat load generator: N simulated components, each heartbeating on its own
//! interval, against a 3-node flowctl cluster on loopback.
//!
//! It registers the components (through Raft), then offers heartbeats at N / interval per
//! second, spread over the three nodes (followers relay to the leader). Once the log has
//! settled (each registration's one-time confirmation after its first heartbeat, and the
//! components marked down during a long registration coming back up, are written; the commit
//! index then stays put for 3 s), it measures for `--seconds` and reports: sustained heartbeats per second, p50/p99 heartbeat latency, leader CPU, Raft log
//! entries appended per second (the commit index; it must stay flat in steady state), and the
//! leader's RSS. Run it on a quiet machine: the generator shares the CPU with the servers.

use anyhow::Context;
use clap::Parser;
use flowctl_proto::v1::control_plane_service_client::ControlPlaneServiceClient;
use flowctl_proto::v1::{ComponentInfo, ComponentType, HeartbeatRequest, RegisterRequest};
use flowctl_testkit::{http_get, Cluster, ClusterOptions};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

#[derive(Parser, Debug)]
#[command(
    name = "heartbeat-bench",
    about = "Heartbeat load against a 3-node flowctl cluster"
)]
struct Args {
    /// Simulated components.
    #[arg(long, default_value_t = 100_000)]
    components: usize,
    /// Each component's heartbeat interval, in seconds.
    #[arg(long, default_value_t = 5.0)]
    interval: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Concurrent heartbeat senders (gRPC streams in flight).
    #[arg(long, default_value_t = 512)]
    senders: usize,
    /// Also write the result as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cluster = Cluster::start(
        3,
        ClusterOptions {
            extra_args: vec!["--heartbeat-ttl".into(), (args.interval * 6.0).to_string()],
            ..Default::default()
        },
    )?;
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.addr.clone()).collect();
    rt.block_on(run(&cluster, &addrs, &args))
}

async fn channels(addrs: &[String]) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::new();
    for a in addrs {
        // Several connections per node, as many independent components would have.
        for _ in 0..4 {
            out.push(
                Endpoint::from_shared(format!("http://{a}"))?
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .with_context(|| format!("connect {a}"))?,
            );
        }
    }
    Ok(out)
}

fn component_id(i: usize) -> String {
    format!("bench-component-{i:06}")
}

async fn register_all(chans: &[Channel], n: usize) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..256 {
        let ch = chans[w % chans.len()].clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = ControlPlaneServiceClient::new(ch);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    return Ok::<_, anyhow::Error>(());
                }
                let id = component_id(i);
                let req = RegisterRequest {
                    component: Some(ComponentInfo {
                        id: id.clone(),
                        name: "bench".into(),
                        r#type: ComponentType::Processor as i32,
                        ..Default::default()
                    }),
                    component_id: id,
                };
                // As a component's agent does: an overloaded or leaderless cluster is retried
                // after a pause, anything else ends the benchmark.
                let mut attempts = 0;
                loop {
                    match c.register_component(req.clone()).await {
                        Ok(_) => break,
                        Err(s)
                            if attempts < 50
                                && matches!(
                                    s.code(),
                                    tonic::Code::ResourceExhausted | tonic::Code::Unavailable
                                ) =>
                        {
                            attempts += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(s) => return Err(s.into()),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

fn proc_cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is 14th, stime 15th.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

fn proc_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn commit_index(cluster: &Cluster, node: usize) -> u64 {
    http_get(&cluster.nodes[node].metrics_addr, "/metrics")
        .ok()
        .and_then(|(_, body)| {
            body.lines()
                .find(|l| l.starts_with("flowctl_raft_commit_index "))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0) as u64
}

async fn run(cluster: &Cluster, addrs: &[String], args: &Args) -> anyhow::Result<()> {
    let chans = channels(addrs).await?;
    let started = Instant::now();
    register_all(&chans, args.components).await?;
    eprintln!(
        "registered {} components in {:.1}s",
        args.components,
        started.elapsed().as_secs_f64()
    );
    let leader = cluster.leader_index()?;
    let leader_pid = cluster.nodes[leader].pid().context("leader pid")?;

    let target_rate = args.components as f64 / args.interval;
    let per_sender = target_rate / args.senders as f64;
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    // Failed heartbeats counted by gRPC code, with the first message of each code.
    let errors: Arc<std::sync::Mutex<BTreeMap<String, (u64, String)>>> = Arc::default();
    // The senders run until `stop`; they count and time heartbeats while `measuring`.
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for s in 0..args.senders {
        let ch = chans[s % chans.len()].clone();
        let sent = sent.clone();
        let failed = failed.clone();
        let stop = stop.clone();
        let measuring = measuring.clone();
        let errors = errors.clone();
        let n = args.components;
        let senders = args.senders;
        tasks.push(tokio::spawn(async move {
            let mut c = ControlPlaneServiceClient::new(ch);
            let mut lat = Vec::new();
            let gap = Duration::from_secs_f64(1.0 / per_sender.max(0.001));
            let mut next_at = tokio::time::Instant::now() + gap.mul_f64(s as f64 / senders as f64);
            // Each sender owns every `senders`-th component and walks them in turn.
            let mut i = s;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep_until(next_at).await;
                next_at += gap;
                let t0 = Instant::now();
                let r = c
                    .heartbeat(HeartbeatRequest {
                        service_id: component_id(i % n),
                        status: 0,
                        metrics: HashMap::from([("events".into(), "1".into())]),
                    })
                    .await;
                i += senders;
                if measuring.load(Ordering::Relaxed) {
                    match r {
                        Ok(_) => {
                            lat.push(t0.elapsed());
                            sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(status) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            let mut e = errors.lock().unwrap_or_else(|p| p.into_inner());
                            let slot = e
                                .entry(format!("{:?}", status.code()))
                                .or_insert_with(|| (0, status.message().to_owned()));
                            slot.0 += 1;
                        }
                    }
                }
            }
            lat
        }));
    }
    // Steady state first: every registration is confirmed once by the leader after its first
    // heartbeat (a one-time write), and components marked down while the others registered
    // come back up. Measure once the commit index has stayed put for a few seconds.
    let settle_from = Instant::now();
    let mut last = commit_index(cluster, leader);
    let mut still = 0;
    while still < 3 && settle_from.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = commit_index(cluster, leader);
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    eprintln!(
        "settled after {:.0}s of heartbeats (commit index {last})",
        settle_from.elapsed().as_secs_f64()
    );
    measuring.store(true, Ordering::Relaxed);
    let cpu0 = proc_cpu_ticks(leader_pid);
    let commit0 = commit_index(cluster, leader);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let wall = t0.elapsed().as_secs_f64();
    let cpu1 = proc_cpu_ticks(leader_pid);
    measuring.store(false, Ordering::Relaxed);
    // The metrics gauge refreshes every 500 ms.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let commit1 = commit_index(cluster, leader);
    let rss = proc_rss_mb(leader_pid);
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await?);
    }
    lat.sort();
    let pct = |p: f64| {
        if lat.is_empty() {
            0.0
        } else {
            lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1].as_secs_f64()
                * 1000.0
        }
    };
    let ok = sent.load(Ordering::Relaxed) as f64;
    // The senders ran a little longer than the measured window; rate over their own window.
    let rate = ok / (args.seconds as f64).max(wall);
    let ticks_per_sec = 100.0;
    let leader_cpu = (cpu1 - cpu0) as f64 / ticks_per_sec / wall * 100.0;
    let entries_per_sec = (commit1.saturating_sub(commit0)) as f64 / wall;
    println!("components          {}", args.components);
    println!(
        "offered heartbeats  {:.0}/s ({}s interval)",
        target_rate, args.interval
    );
    println!("sustained           {:.0}/s", rate);
    println!("failed              {}", failed.load(Ordering::Relaxed));
    for (code, (n, first)) in errors.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        println!("  {code}: {n}, e.g. {first:?}");
    }
    println!(
        "latency p50 / p99   {:.2} ms / {:.2} ms",
        pct(0.50),
        pct(0.99)
    );
    println!("leader CPU          {:.0}% of one core", leader_cpu);
    println!(
        "log entries         {:.2}/s (commit index {} -> {})",
        entries_per_sec, commit0, commit1
    );
    println!("leader RSS          {:.0} MB", rss);
    if let Some(path) = &args.json {
        let v = serde_json::json!({
            "components": args.components,
            "offered_per_sec": target_rate,
            "heartbeats_per_sec": rate,
            "failed": failed.load(Ordering::Relaxed),
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "leader_cpu_percent": leader_cpu,
            "log_entries_per_sec": entries_per_sec,
            "leader_rss_mb": rss,
        });
        std::fs::write(path, serde_json::to_string_pretty(&v)?)?;
    }
    Ok(())
}
