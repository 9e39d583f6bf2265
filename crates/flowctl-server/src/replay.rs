//! Range replay jobs on the control plane.
//!
//! ```text
//! leader:   dispatcher ── every tick, per running job:
//!             take back in-flight chunks whose instance is gone (or never started them)
//!             assign planned chunks to healthy source instances, ≤ max_parallel in flight
//! any node: WatchChunks ── pushes the chunks assigned to one instance (and cancels for the
//!             ones taken away) from its local replicated state
//!           ReportChunk ── proposes the report; attempt-fenced in the state machine
//! ```
//!
//! All job state is in Raft, so a new leader simply carries on: it sees the same chunks,
//! assignments and attempts, and re-dispatches nothing that is still in flight.

use crate::clock::{now_ms, ts};
use crate::errors::ServiceError;
use crate::spec_cache::SpecCache;
use flowctl_proto::admin::v1 as pb;
use flowctl_raft::RaftNode;
use flowctl_state::replay::{
    plan_chunks, AssignChunks, ChunkProgress, ChunkState, ControlReplay, CreateReplay, Job,
    JobState, ReplayAction, ReportChunk, RequeueChunks,
};
use flowctl_state::{Command, ComponentId, Outcome};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

const TICK: Duration = Duration::from_millis(500);
/// The dispatcher and chunk streams look again at most this often.
const MIN_GAP: Duration = Duration::from_millis(10);
/// An assigned chunk whose instance has not said RUNNING by then is taken back.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a chunk stream looks for new assignments when nothing is committed.
const WATCH_POLL: Duration = Duration::from_millis(500);
/// Commands buffered per chunk stream.
const WATCH_BUFFER: usize = 64;
pub const DEFAULT_CHUNK_SIZE: u32 = 64;
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// The replica count of `source` in `pipeline`'s stored spec.
fn source_replicas(
    node: &RaftNode,
    specs: &SpecCache,
    pipeline: &str,
    source: &str,
) -> Option<u32> {
    let rec = node.read_stale(|s| s.pipelines.get(pipeline).cloned()).0?;
    let spec = specs.get(&rec.name, rec.generation, &rec.spec_yaml)?;
    let replicas = spec
        .components()
        .find(|(_, c)| c.id.as_str() == source)
        .map(|(_, c)| c.replicas);
    replicas
}

pub fn start(
    node: RaftNode,
    specs: SpecCache,
    cancel: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) {
    tracker.spawn(run_dispatcher(node, specs, cancel));
}

async fn run_dispatcher(node: RaftNode, specs: SpecCache, cancel: CancellationToken) {
    // Woken by every change of the Raft metrics (a commit, an apply) and at least every
    // TICK, so that a reported chunk's slot is reused within milliseconds.
    let mut changes = node.raft().metrics();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::timeout(TICK, changes.changed()) => {}
        }
        tokio::time::sleep(MIN_GAP).await;
        if !node.is_leader() {
            continue;
        }
        let jobs: Vec<Job> = node
            .read_stale(|s| {
                s.replays
                    .jobs
                    .values()
                    .filter(|j| matches!(j.state, JobState::Running | JobState::Paused))
                    .cloned()
                    .collect()
            })
            .0;
        for job in jobs {
            if let Err(e) = dispatch(&node, &specs, &job).await {
                tracing::debug!(job = %job.id, error = %e, "replay dispatch");
            }
        }
    }
}

async fn dispatch(node: &RaftNode, specs: &SpecCache, job: &Job) -> Result<(), ServiceError> {
    let now = now_ms();
    let replicas = source_replicas(node, specs, &job.pipeline, &job.source).unwrap_or(0);
    let ids: Vec<String> = (0..replicas)
        .map(|r| flowctl_spec::instance_id(&job.source, r, replicas))
        .collect();
    // (index, attempt, instance, state, updated) of in-flight chunks; planned ones due now;
    // healthy instances.
    let (in_flight, due, healthy) = node
        .read_stale(|s| {
            let chunks = s.replays.chunks.get(&job.id);
            let in_flight: Vec<(u32, u32, String, ChunkState, u64)> = chunks
                .into_iter()
                .flat_map(|c| c.values())
                .filter(|c| c.state.in_flight())
                .map(|c| {
                    (
                        c.index,
                        c.attempt,
                        c.instance.clone(),
                        c.state,
                        c.updated_ms,
                    )
                })
                .collect();
            let due: Vec<u32> = chunks
                .into_iter()
                .flat_map(|c| c.values())
                .filter(|c| c.state == ChunkState::Planned && c.not_before_ms <= now)
                .map(|c| c.index)
                .take(job.max_parallel as usize)
                .collect();
            let healthy: BTreeSet<String> = ids
                .iter()
                .filter(|id| {
                    s.components
                        .get(&ComponentId((*id).clone()))
                        .is_some_and(|c| c.healthy)
                })
                .cloned()
                .collect();
            (in_flight, due, healthy)
        })
        .0;
    // Take back what a gone instance holds, or what was never started.
    let mut back = Vec::new();
    let mut reason = String::new();
    for (index, attempt, instance, state, updated) in &in_flight {
        if !healthy.contains(instance) {
            back.push((*index, *attempt));
            reason = format!("instance {instance} is gone");
        } else if *state == ChunkState::Assigned
            && now.saturating_sub(*updated) > START_TIMEOUT.as_millis() as u64
        {
            back.push((*index, *attempt));
            reason = format!("instance {instance} did not start it within {START_TIMEOUT:?}");
        }
    }
    if !back.is_empty() {
        node.propose(Command::RequeueChunks(RequeueChunks {
            job: job.id.clone(),
            chunks: back.clone(),
            reason,
            at_ms: now,
        }))
        .await?;
    }
    if job.state != JobState::Running || healthy.is_empty() {
        return Ok(());
    }
    let mut load: BTreeMap<String, usize> = healthy.iter().map(|h| (h.clone(), 0)).collect();
    let mut busy = 0usize;
    for (index, _, instance, _, _) in &in_flight {
        if back.iter().any(|(i, _)| i == index) {
            continue;
        }
        busy += 1;
        if let Some(l) = load.get_mut(instance) {
            *l += 1;
        }
    }
    let free = (job.max_parallel as usize).saturating_sub(busy);
    let mut assignments = Vec::new();
    for index in due.into_iter().take(free) {
        let Some((instance, l)) = load.iter_mut().min_by_key(|(id, l)| (**l, (*id).clone())) else {
            break;
        };
        *l += 1;
        assignments.push((index, instance.clone()));
    }
    if assignments.is_empty() {
        return Ok(());
    }
    node.propose(Command::AssignChunks(AssignChunks {
        job: job.id.clone(),
        assignments,
        at_ms: now,
    }))
    .await?;
    Ok(())
}

#[derive(Clone)]
pub struct ReplayApi {
    pub node: RaftNode,
    pub specs: SpecCache,
}

fn chunk_pb(c: &flowctl_state::replay::Chunk) -> pb::ReplayChunk {
    pb::ReplayChunk {
        index: c.index,
        from_ledger: c.from_ledger,
        to_ledger: c.to_ledger,
        state: c.state.as_str().to_owned(),
        attempts: c.attempt,
        instance: c.instance.clone(),
        records: c.records,
        error: c.error.clone(),
        updated_at: ts(c.updated_ms),
    }
}

/// A job with its counts, throughput and failed chunks.
fn job_pb(s: &flowctl_state::State, j: &Job, now: u64) -> pb::ReplayJob {
    let mut counts = pb::ChunkCounts::default();
    let mut done_ledgers = 0u64;
    let mut failed_chunks = Vec::new();
    let mut last_done = j.created_ms;
    for c in s
        .replays
        .chunks
        .get(&j.id)
        .into_iter()
        .flat_map(|c| c.values())
    {
        match c.state {
            ChunkState::Planned => counts.planned += 1,
            ChunkState::Assigned => counts.assigned += 1,
            ChunkState::Running => counts.running += 1,
            ChunkState::Done => {
                counts.done += 1;
                done_ledgers += c.to_ledger - c.from_ledger + 1;
                last_done = last_done.max(c.updated_ms);
            }
            ChunkState::Failed => {
                counts.failed += 1;
                failed_chunks.push(chunk_pb(c));
            }
        }
    }
    // Throughput over the job's active time: until now while it runs, until its last done
    // chunk once it ended.
    let end = if j.state.is_final() { last_done } else { now };
    let secs = end.saturating_sub(j.created_ms) as f64 / 1000.0;
    let rate = if secs > 0.0 && done_ledgers > 0 {
        done_ledgers as f64 / secs
    } else {
        0.0
    };
    let total = j.to_ledger - j.from_ledger + 1;
    let eta = if rate > 0.0 && !j.state.is_final() {
        ((total - done_ledgers) as f64 / rate).ceil() as u64
    } else {
        0
    };
    pb::ReplayJob {
        id: j.id.clone(),
        pipeline: j.pipeline.clone(),
        source: j.source.clone(),
        from_ledger: j.from_ledger,
        to_ledger: j.to_ledger,
        chunk_size: j.chunk_size,
        max_parallel: j.max_parallel,
        max_attempts: j.max_attempts,
        state: j.state.as_str().to_owned(),
        created_at: ts(j.created_ms),
        updated_at: ts(j.updated_ms),
        counts: Some(counts),
        records: j.records,
        ledgers_per_second: rate,
        eta_seconds: eta,
        failed_chunks,
        meta: None,
    }
}

/// The chunk size a create request asks for (0 means the default), once its ledger range and
/// chunk count are within the state machine's limits. Checked before anything is read or
/// proposed; the state machine checks the command again with the same function.
fn checked_chunk_size(req: &pb::CreateReplayRequest) -> Result<u32, ServiceError> {
    let chunk_size = if req.chunk_size == 0 {
        DEFAULT_CHUNK_SIZE
    } else {
        req.chunk_size
    };
    plan_chunks(req.from_ledger, req.to_ledger, chunk_size).map_err(ServiceError::BadArgument)?;
    Ok(chunk_size)
}

impl ReplayApi {
    async fn create(&self, req: pb::CreateReplayRequest) -> Result<pb::ReplayJob, ServiceError> {
        let chunk_size = checked_chunk_size(&req)?;
        let (rec, _) = self
            .node
            .read_linearizable(|s| s.pipelines.get(&req.pipeline).cloned())
            .await?;
        let rec = rec.ok_or_else(|| {
            ServiceError::NotFound(format!("pipeline {:?} not found", req.pipeline))
        })?;
        let spec = self
            .specs
            .get(&rec.name, rec.generation, &rec.spec_yaml)
            .ok_or_else(|| {
                ServiceError::BadArgument(format!(
                    "the stored pipeline {} does not validate",
                    rec.name
                ))
            })?;
        let sources: Vec<(String, u32)> = spec
            .components()
            .filter(|(k, _)| *k == flowctl_spec::ComponentKind::Source)
            .map(|(_, c)| (c.id.to_string(), c.replicas))
            .collect();
        let (source, replicas) = if req.source.is_empty() {
            match sources.as_slice() {
                [one] => one.clone(),
                _ => {
                    return Err(ServiceError::BadArgument(format!(
                        "pipeline {} has {} sources; name one with --source ({})",
                        rec.name,
                        sources.len(),
                        sources
                            .iter()
                            .map(|s| s.0.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
            }
        } else {
            sources
                .iter()
                .find(|(id, _)| *id == req.source)
                .cloned()
                .ok_or_else(|| {
                    ServiceError::BadArgument(format!(
                        "--source {:?} is not a source of pipeline {}",
                        req.source, rec.name
                    ))
                })?
        };
        let at = now_ms();
        let job = Job {
            id: format!("rj-{:08x}", rand::random::<u32>()),
            pipeline: rec.name.clone(),
            source,
            from_ledger: req.from_ledger,
            to_ledger: req.to_ledger,
            chunk_size,
            max_parallel: if req.max_parallel == 0 {
                replicas.max(1)
            } else {
                req.max_parallel
            },
            max_attempts: if req.max_attempts == 0 {
                DEFAULT_MAX_ATTEMPTS
            } else {
                req.max_attempts
            },
            state: JobState::Running,
            created_ms: at,
            updated_ms: at,
            records: 0,
        };
        let applied = self
            .node
            .propose(Command::CreateReplay(CreateReplay { job: job.clone() }))
            .await?;
        // A retried request answers with the job its first copy created, not this one's id.
        let id = match applied.outcome {
            Outcome::ReplayCreated { job, .. } => job,
            Outcome::Rejected(r) => return Err(r.into()),
            other => return Err(ServiceError::Unexpected(format!("{other:?}"))),
        };
        let (found, _) = self
            .node
            .read_linearizable(|s| s.replays.jobs.get(&id).map(|j| job_pb(s, j, now_ms())))
            .await?;
        found.ok_or_else(|| ServiceError::Unexpected("created job not found".into()))
    }
}

#[tonic::async_trait]
impl pb::replay_service_server::ReplayService for ReplayApi {
    async fn create(
        &self,
        req: Request<pb::CreateReplayRequest>,
    ) -> Result<Response<pb::ReplayJob>, Status> {
        let job = ReplayApi::create(self, req.into_inner()).await?;
        let what = format!("replay/{}", job.id);
        Ok(crate::audit::resource(Response::new(job), what))
    }

    async fn list(
        &self,
        req: Request<pb::ListReplaysRequest>,
    ) -> Result<Response<pb::ListReplaysResponse>, Status> {
        let req = req.into_inner();
        let now = now_ms();
        let (jobs, meta) = crate::pipelines::read(
            &self.node,
            crate::pipelines::consistency_of(req.consistency),
            |s| {
                s.replays
                    .jobs
                    .values()
                    .filter(|j| req.pipeline.is_empty() || j.pipeline == req.pipeline)
                    .map(|j| job_pb(s, j, now))
                    .collect::<Vec<_>>()
            },
        )
        .await?;
        Ok(Response::new(pb::ListReplaysResponse {
            jobs,
            meta: Some(crate::api::meta_pb(meta)),
        }))
    }

    async fn get(
        &self,
        req: Request<pb::GetReplayRequest>,
    ) -> Result<Response<pb::ReplayJob>, Status> {
        let req = req.into_inner();
        let now = now_ms();
        let (job, meta) = crate::pipelines::read(
            &self.node,
            crate::pipelines::consistency_of(req.consistency),
            |s| s.replays.jobs.get(&req.id).map(|j| job_pb(s, j, now)),
        )
        .await?;
        let mut job = job
            .ok_or_else(|| ServiceError::NotFound(format!("replay job {:?} not found", req.id)))?;
        job.meta = Some(crate::api::meta_pb(meta));
        Ok(Response::new(job))
    }

    async fn chunks(
        &self,
        req: Request<pb::ReplayChunksRequest>,
    ) -> Result<Response<pb::ReplayChunksResponse>, Status> {
        let req = req.into_inner();
        let want = if req.state.is_empty() {
            None
        } else {
            Some(ChunkState::parse(&req.state).ok_or_else(|| {
                ServiceError::BadArgument(format!(
                    "--state {:?}: expected planned, assigned, running, done or failed",
                    req.state
                ))
            })?)
        };
        let (chunks, meta) = crate::pipelines::read(
            &self.node,
            crate::pipelines::consistency_of(req.consistency),
            |s| {
                s.replays.chunks.get(&req.id).map(|c| {
                    c.values()
                        .filter(|c| want.is_none_or(|w| c.state == w))
                        .map(chunk_pb)
                        .collect::<Vec<_>>()
                })
            },
        )
        .await?;
        let chunks = chunks
            .ok_or_else(|| ServiceError::NotFound(format!("replay job {:?} not found", req.id)))?;
        Ok(Response::new(pb::ReplayChunksResponse {
            chunks,
            meta: Some(crate::api::meta_pb(meta)),
        }))
    }

    async fn control(
        &self,
        req: Request<pb::ReplayControlRequest>,
    ) -> Result<Response<pb::ReplayJob>, Status> {
        let req = req.into_inner();
        let action = match req.action.as_str() {
            "pause" => ReplayAction::Pause,
            "resume" => ReplayAction::Resume,
            "cancel" => ReplayAction::Cancel,
            a => {
                return Err(ServiceError::BadArgument(format!(
                    "action {a:?}: expected pause, resume or cancel"
                ))
                .into())
            }
        };
        let applied = self
            .node
            .propose(Command::ControlReplay(ControlReplay {
                job: req.id.clone(),
                action,
                at_ms: now_ms(),
            }))
            .await
            .map_err(ServiceError::from)?;
        match applied.outcome {
            Outcome::ReplayControlled { .. } => {}
            Outcome::Rejected(r) => return Err(ServiceError::from(r).into()),
            other => return Err(ServiceError::Unexpected(format!("{other:?}")).into()),
        }
        let now = now_ms();
        let (job, _) = self
            .node
            .read_linearizable(|s| s.replays.jobs.get(&req.id).map(|j| job_pb(s, j, now)))
            .await
            .map_err(ServiceError::from)?;
        let what = format!("replay/{}", req.id);
        job.map(|j| crate::audit::resource(Response::new(j), what))
            .ok_or_else(|| {
                ServiceError::NotFound(format!("replay job {:?} not found", req.id)).into()
            })
    }

    type WatchChunksStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::ChunkCommand, Status>>;

    async fn watch_chunks(
        &self,
        req: Request<pb::WatchChunksRequest>,
    ) -> Result<Response<Self::WatchChunksStream>, Status> {
        // An instance token watches for its own component only.
        crate::auth::check_component_scope(&req, &req.get_ref().component_id)?;
        let pb::WatchChunksRequest {
            component_id: id,
            epoch,
        } = req.into_inner();
        if id.is_empty() {
            return Err(ServiceError::BadArgument("component_id must not be empty".into()).into());
        }
        // A copy left on a node the instance has moved away from gets no chunks.
        let epoch = (epoch > 0).then_some(epoch);
        let fenced_by = |s: &flowctl_state::State| {
            // The id may be placed in more than one pipeline: fenced only where every
            // placement of it is newer.
            let mut newest = None;
            for p in s.placements.values() {
                let Some(key) = p.key_of_instance_id(&id) else {
                    continue;
                };
                if !p.fences(key, epoch) {
                    return None;
                }
                newest = newest.max(p.epoch(key));
            }
            newest
        };
        if let (Some(current), _) = self.node.read_stale(fenced_by) {
            return Err(Status::failed_precondition(format!(
                "instance {id:?} runs with epoch {} but is placed at epoch {current} now: \
                 this copy is fenced",
                epoch.unwrap_or(0)
            )));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(WATCH_BUFFER);
        let node = self.node.clone();
        let mut changes = node.raft().metrics();
        tokio::spawn(async move {
            // (job, chunk) → the attempt sent.
            let mut sent: BTreeMap<(String, u32), (u32, u64, u64)> = BTreeMap::new();
            loop {
                let current: BTreeMap<(String, u32), (u32, u64, u64)> = node
                    .read_stale(|s| {
                        s.replays
                            .jobs
                            .values()
                            .filter(|j| matches!(j.state, JobState::Running | JobState::Paused))
                            // Not the chunks of a pipeline where this copy is fenced.
                            .filter(|j| {
                                !s.placements.get(&j.pipeline).is_some_and(|p| {
                                    p.key_of_instance_id(&id)
                                        .is_some_and(|key| p.fences(key, epoch))
                                })
                            })
                            .flat_map(|j| {
                                s.replays
                                    .chunks
                                    .get(&j.id)
                                    .into_iter()
                                    .flat_map(|c| c.values())
                                    .filter(|c| c.state.in_flight() && c.instance == id)
                                    .map(|c| {
                                        (
                                            (j.id.clone(), c.index),
                                            (c.attempt, c.from_ledger, c.to_ledger),
                                        )
                                    })
                            })
                            .collect()
                    })
                    .0;
                let mut out = Vec::new();
                for (k, v) in &current {
                    if sent.get(k) != Some(v) {
                        out.push(pb::ChunkCommand {
                            job_id: k.0.clone(),
                            chunk: k.1,
                            from_ledger: v.1,
                            to_ledger: v.2,
                            attempt: v.0,
                            cancel: false,
                        });
                    }
                }
                for (k, v) in &sent {
                    if current.get(k) != Some(v) && !current.contains_key(k) {
                        out.push(pb::ChunkCommand {
                            job_id: k.0.clone(),
                            chunk: k.1,
                            from_ledger: v.1,
                            to_ledger: v.2,
                            attempt: v.0,
                            cancel: true,
                        });
                    }
                }
                for c in out {
                    if tx.send(Ok(c)).await.is_err() {
                        return;
                    }
                }
                sent = current;
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::timeout(WATCH_POLL, changes.changed()) => {}
                }
                tokio::time::sleep(MIN_GAP).await;
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn report_chunk(
        &self,
        req: Request<pb::ChunkReport>,
    ) -> Result<Response<pb::ChunkReportAck>, Status> {
        // An instance token reports for its own component only.
        crate::auth::check_component_scope(&req, &req.get_ref().component_id)?;
        let r = req.into_inner();
        let progress = match pb::ChunkReportState::try_from(r.state) {
            Ok(pb::ChunkReportState::Running) => ChunkProgress::Running,
            Ok(pb::ChunkReportState::Done) => ChunkProgress::Done { records: r.records },
            Ok(pb::ChunkReportState::Failed) => ChunkProgress::Failed {
                error: r.error.chars().take(4096).collect(),
                retryable: r.retryable,
            },
            _ => {
                return Err(ServiceError::BadArgument(
                    "state must be RUNNING, DONE or FAILED".into(),
                )
                .into())
            }
        };
        let applied = self
            .node
            .propose(Command::ReportChunk(ReportChunk {
                job: r.job_id,
                chunk: r.chunk,
                attempt: r.attempt,
                instance: r.component_id,
                progress,
                at_ms: now_ms(),
                epoch: (r.epoch > 0).then_some(r.epoch),
            }))
            .await
            .map_err(ServiceError::from)?;
        match applied.outcome {
            Outcome::ChunkReport { accepted } => Ok(Response::new(pb::ChunkReportAck { accepted })),
            Outcome::Rejected(r) => Err(ServiceError::from(r).into()),
            other => Err(ServiceError::Unexpected(format!("{other:?}")).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowctl_state::replay::{MAX_CHUNKS_PER_JOB, MAX_LEDGERS};

    fn req(from_ledger: u64, to_ledger: u64, chunk_size: u32) -> pb::CreateReplayRequest {
        pb::CreateReplayRequest {
            pipeline: "p".into(),
            from_ledger,
            to_ledger,
            chunk_size,
            ..Default::default()
        }
    }

    /// The status a refused request gets, and its message.
    fn refusal(r: &pb::CreateReplayRequest) -> (tonic::Code, String) {
        let status = Status::from(checked_chunk_size(r).unwrap_err());
        (status.code(), status.message().to_owned())
    }

    #[test]
    fn a_create_request_beyond_the_limits_is_an_invalid_argument_naming_the_field() {
        for (r, field) in [
            (req(10, 9, 64), "from_ledger"),
            (req(1, MAX_LEDGERS + 1, 64), "to_ledger"),
            (req(u64::MAX - 1, u64::MAX, 64), "to_ledger"),
            (req(1, MAX_LEDGERS, 1), "chunk_size"),
        ] {
            let (code, message) = refusal(&r);
            assert_eq!(code, tonic::Code::InvalidArgument, "{r:?}");
            assert!(message.contains(field), "{r:?}: {message}");
            assert!(!message.contains('\n'), "{r:?}: {message}");
        }
    }

    #[test]
    fn a_create_request_within_the_limits_gets_its_chunk_size_or_the_default() {
        assert_eq!(
            checked_chunk_size(&req(100, 299, 0)).unwrap(),
            DEFAULT_CHUNK_SIZE
        );
        assert_eq!(checked_chunk_size(&req(100, 299, 7)).unwrap(), 7);
        let smallest = (MAX_LEDGERS / u64::from(MAX_CHUNKS_PER_JOB)) as u32;
        assert_eq!(
            checked_chunk_size(&req(1, MAX_LEDGERS, smallest)).unwrap(),
            smallest
        );
    }
}
