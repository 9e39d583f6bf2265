//! `flowctl replay ...`: range replay jobs.

use crate::commands::{client, consistency, note_stale, now_ms, rfc3339, status_err, ts_ms};
use crate::output::{age, print};
use crate::{Format, Global};
use clap::Subcommand;
use flowctl_client::proto::admin::v1 as pb;
use flowctl_client::proto::admin::v1::replay_service_client::ReplayServiceClient;
use flowctl_client::{AuthChannel, MAX_REPLY_BYTES};
use serde_json::{json, Value};
use std::io::Write as _;
use std::time::Duration;

/// `flowctl replay --pipeline P --from-ledger A --to-ledger B`, or one of the subcommands.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ReplayArgs {
    #[command(subcommand)]
    pub what: Option<ReplayCmd>,
    #[command(flatten)]
    pub start: StartArgs,
}

#[derive(clap::Args, Debug)]
pub struct StartArgs {
    /// The pipeline whose source replays the range.
    #[arg(long)]
    pub pipeline: Option<String>,
    /// First ledger of the range.
    #[arg(long)]
    pub from_ledger: Option<u64>,
    /// Last ledger of the range (inclusive).
    #[arg(long)]
    pub to_ledger: Option<u64>,
    /// Ledgers per chunk (64 matches Stellar's checkpoints).
    #[arg(long, default_value_t = 64)]
    pub chunk_size: u32,
    /// Chunks in flight at most (default: twice the source's replica count).
    #[arg(long)]
    pub max_parallel: Option<u32>,
    /// Failed tries of a chunk before it fails for good.
    #[arg(long, default_value_t = 3)]
    pub max_attempts: u32,
    /// The source component (needed when the pipeline has several).
    #[arg(long)]
    pub source: Option<String>,
    /// Print the job id and return at once instead of showing progress.
    #[arg(long)]
    pub detach: bool,
}

#[derive(Subcommand, Debug)]
pub enum ReplayCmd {
    /// Replay jobs.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        pipeline: Option<String>,
    },
    /// A job's chunk counts, failed chunks, throughput and ETA.
    Status { job: String },
    /// A job's chunks.
    Chunks {
        job: String,
        /// planned, assigned, running, done or failed.
        #[arg(long)]
        state: Option<String>,
    },
    /// Stop dispatching new chunks (running ones finish).
    Pause { job: String },
    /// Dispatch again.
    Resume { job: String },
    /// Stop the job; done chunks stay recorded.
    Cancel { job: String },
}

fn replays(ch: AuthChannel) -> ReplayServiceClient<AuthChannel> {
    ReplayServiceClient::new(ch)
        .max_decoding_message_size(MAX_REPLY_BYTES)
        .max_encoding_message_size(MAX_REPLY_BYTES)
}

fn chunk_json(c: &pb::ReplayChunk) -> Value {
    json!({
        "index": c.index,
        "from_ledger": c.from_ledger,
        "to_ledger": c.to_ledger,
        "state": c.state,
        "attempts": c.attempts,
        "instance": c.instance,
        "records": c.records,
        "error": c.error,
        "updated_at": rfc3339(ts_ms(&c.updated_at)),
    })
}

fn job_json(j: &pb::ReplayJob) -> Value {
    let c = j.counts.unwrap_or_default();
    json!({
        "id": j.id,
        "pipeline": j.pipeline,
        "source": j.source,
        "from_ledger": j.from_ledger,
        "to_ledger": j.to_ledger,
        "chunk_size": j.chunk_size,
        "max_parallel": j.max_parallel,
        "max_attempts": j.max_attempts,
        "state": j.state,
        "created_at": rfc3339(ts_ms(&j.created_at)),
        "updated_at": rfc3339(ts_ms(&j.updated_at)),
        "chunks": {
            "planned": c.planned,
            "assigned": c.assigned,
            "running": c.running,
            "done": c.done,
            "failed": c.failed,
        },
        "records": j.records,
        "ledgers_per_second": j.ledgers_per_second,
        "eta_seconds": j.eta_seconds,
        "failed_chunks": j.failed_chunks.iter().map(chunk_json).collect::<Vec<_>>(),
    })
}

fn total_chunks(j: &pb::ReplayJob) -> u32 {
    let c = j.counts.unwrap_or_default();
    c.planned + c.assigned + c.running + c.done + c.failed
}

fn print_status(j: &pb::ReplayJob) {
    let c = j.counts.unwrap_or_default();
    println!("Job:         {}", j.id);
    println!("Pipeline:    {} (source {})", j.pipeline, j.source);
    println!(
        "Range:       {}..={} in chunks of {} ({} chunks)",
        j.from_ledger,
        j.to_ledger,
        j.chunk_size,
        total_chunks(j)
    );
    println!("State:       {}", j.state);
    println!(
        "Chunks:      {} done, {} running, {} assigned, {} planned, {} failed",
        c.done, c.running, c.assigned, c.planned, c.failed
    );
    println!("Records:     {}", j.records);
    println!("Throughput:  {:.1} ledgers/s", j.ledgers_per_second);
    if j.eta_seconds > 0 {
        println!("ETA:         {}s", j.eta_seconds);
    }
    println!("Created:     {}", rfc3339(ts_ms(&j.created_at)));
    if !j.failed_chunks.is_empty() {
        println!("Failed chunks:");
        for f in &j.failed_chunks {
            println!(
                "  #{:<6} {}..={}  attempts {}  {}",
                f.index, f.from_ledger, f.to_ledger, f.attempts, f.error
            );
        }
    }
}

async fn get(g: &Global, id: &str) -> anyhow::Result<pb::ReplayJob> {
    let req = pb::GetReplayRequest {
        id: id.to_owned(),
        consistency: consistency(g),
    };
    Ok(client(g)?
        .call(|ch| {
            let req = req.clone();
            async move { replays(ch).get(req).await }
        })
        .await
        .map_err(status_err)?
        .into_inner())
}

pub async fn run(g: &Global, args: ReplayArgs) -> anyhow::Result<()> {
    let Some(what) = args.what else {
        return start(g, args.start).await;
    };
    match what {
        ReplayCmd::Ls { pipeline } => {
            let req = pb::ListReplaysRequest {
                pipeline: pipeline.unwrap_or_default(),
                consistency: consistency(g),
            };
            let resp = client(g)?
                .call(|ch| {
                    let req = req.clone();
                    async move { replays(ch).list(req).await }
                })
                .await
                .map_err(status_err)?
                .into_inner();
            note_stale(g, &resp.meta);
            let v = Value::Array(resp.jobs.iter().map(job_json).collect());
            let now = now_ms();
            print(g.output, &v, |_| {
                let mut rows = vec![
                    ["JOB", "PIPELINE", "RANGE", "STATE", "DONE", "FAILED", "AGE"]
                        .into_iter()
                        .map(str::to_owned)
                        .collect::<Vec<_>>(),
                ];
                for j in &resp.jobs {
                    let c = j.counts.unwrap_or_default();
                    rows.push(vec![
                        j.id.clone(),
                        j.pipeline.clone(),
                        format!("{}..={}", j.from_ledger, j.to_ledger),
                        j.state.clone(),
                        format!("{}/{}", c.done, total_chunks(j)),
                        c.failed.to_string(),
                        age(ts_ms(&j.created_at), now),
                    ]);
                }
                rows
            })
        }
        ReplayCmd::Status { job } => {
            let j = get(g, &job).await?;
            note_stale(g, &j.meta);
            match g.output {
                Format::Table | Format::Wide => {
                    print_status(&j);
                    Ok(())
                }
                f => print(f, &job_json(&j), |_| Vec::new()),
            }
        }
        ReplayCmd::Chunks { job, state } => {
            let req = pb::ReplayChunksRequest {
                id: job,
                state: state.unwrap_or_default(),
                consistency: consistency(g),
            };
            let resp = client(g)?
                .call(|ch| {
                    let req = req.clone();
                    async move { replays(ch).chunks(req).await }
                })
                .await
                .map_err(status_err)?
                .into_inner();
            note_stale(g, &resp.meta);
            let v = Value::Array(resp.chunks.iter().map(chunk_json).collect());
            print(g.output, &v, |_| {
                let mut rows = vec![[
                    "CHUNK", "LEDGERS", "STATE", "ATTEMPTS", "INSTANCE", "RECORDS", "ERROR",
                ]
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>()];
                for c in &resp.chunks {
                    rows.push(vec![
                        c.index.to_string(),
                        format!("{}..={}", c.from_ledger, c.to_ledger),
                        c.state.clone(),
                        c.attempts.to_string(),
                        c.instance.clone(),
                        c.records.to_string(),
                        c.error.clone(),
                    ]);
                }
                rows
            })
        }
        ReplayCmd::Pause { job } => control(g, &job, "pause").await,
        ReplayCmd::Resume { job } => control(g, &job, "resume").await,
        ReplayCmd::Cancel { job } => control(g, &job, "cancel").await,
    }
}

async fn control(g: &Global, id: &str, action: &str) -> anyhow::Result<()> {
    let req = pb::ReplayControlRequest {
        id: id.to_owned(),
        action: action.to_owned(),
    };
    let j = client(g)?
        .call(|ch| {
            let req = req.clone();
            async move { replays(ch).control(req).await }
        })
        .await
        .map_err(status_err)?
        .into_inner();
    match g.output {
        Format::Table | Format::Wide => {
            println!("replay/{} {}", j.id, j.state);
            Ok(())
        }
        f => print(f, &job_json(&j), |_| Vec::new()),
    }
}

async fn start(g: &Global, a: StartArgs) -> anyhow::Result<()> {
    let (Some(pipeline), Some(from), Some(to)) = (a.pipeline, a.from_ledger, a.to_ledger) else {
        anyhow::bail!(
            "give --pipeline, --from-ledger and --to-ledger (or a subcommand: ls, status, chunks, pause, resume, cancel)"
        );
    };
    if from > to {
        anyhow::bail!("--from-ledger {from} is after --to-ledger {to}");
    }
    if a.chunk_size == 0 {
        anyhow::bail!("--chunk-size must be at least 1");
    }
    let req = pb::CreateReplayRequest {
        pipeline,
        from_ledger: from,
        to_ledger: to,
        chunk_size: a.chunk_size,
        max_parallel: a.max_parallel.unwrap_or(0),
        max_attempts: a.max_attempts,
        source: a.source.unwrap_or_default(),
    };
    let job = client(g)?
        .call(|ch| {
            let req = req.clone();
            async move { replays(ch).create(req).await }
        })
        .await
        .map_err(status_err)?
        .into_inner();
    if a.detach || !matches!(g.output, Format::Table | Format::Wide) {
        return match g.output {
            Format::Table | Format::Wide => {
                println!("{}", job.id);
                Ok(())
            }
            f => print(f, &job_json(&job), |_| Vec::new()),
        };
    }
    println!(
        "replay job {} started: {} chunks",
        job.id,
        total_chunks(&job)
    );
    // Progress until the job ends; the server may fail over meanwhile (the client follows).
    let mut last = job;
    loop {
        let c = last.counts.unwrap_or_default();
        let total = total_chunks(&last).max(1);
        let width = 30usize;
        let filled = (c.done as usize * width) / total as usize;
        eprint!(
            "\r[{}{}] {}/{} chunks  {:.0} ledgers/s  {}  {}      ",
            "#".repeat(filled),
            "-".repeat(width - filled),
            c.done,
            total,
            last.ledgers_per_second,
            if last.eta_seconds > 0 {
                format!("ETA {}s", last.eta_seconds)
            } else {
                String::new()
            },
            last.state
        );
        let _ = std::io::stderr().flush();
        if matches!(last.state.as_str(), "completed" | "failed" | "cancelled") {
            eprintln!();
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        match get(g, &last.id).await {
            Ok(j) => last = j,
            Err(e) => eprintln!("\n(warning: {e}; retrying)"),
        }
    }
    print_status(&last);
    match last.state.as_str() {
        "completed" => Ok(()),
        s => anyhow::bail!("replay job {} ended {s}", last.id),
    }
}
