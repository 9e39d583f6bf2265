//! Range replay jobs: a ledger range split into chunks, dispatched by the leader to a
//! pipeline's source instances. Everything a job needs to resume after a failover is here.
//!
//! ```text
//!            assign (leader)          RUNNING report        DONE report
//! planned ─────────────────▶ assigned ─────────────▶ running ─────────▶ done
//!    ▲                          │                       │ FAILED report
//!    │ requeue (instance gone,  │                       ▼
//!    │ pause/cancel, retryable  └──────────────────▶ planned (retry after backoff)
//!    │ failure with tries left)                       or failed (non-retryable / exhausted)
//! ```
//!
//! Every assignment increments the chunk's `attempt`, which fences reports: a report of an
//! older attempt (a source that lost its chunk) changes nothing. Failures count separately
//! from attempts, so a chunk taken back from a dead instance is not charged a failure.

use crate::{Outcome, Rejection, State, Touched};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Ledger ranges longer than this are refused (a million chunks of 64).
pub const MAX_LEDGERS: u64 = 64_000_000;
/// Jobs that would split into more chunks than this are refused: `create` builds every chunk
/// in one apply, on every node, so the chunk count bounds the work of one log entry.
pub const MAX_CHUNKS_PER_JOB: u32 = 1_000_000;
/// Retry backoff of a retryable failure: `BASE << (failures - 1)`, capped.
pub const RETRY_BACKOFF_BASE_MS: u64 = 500;
pub const RETRY_BACKOFF_MAX_MS: u64 = 30_000;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayJobs {
    pub jobs: BTreeMap<String, Job>,
    /// By job id, then chunk index.
    pub chunks: BTreeMap<String, BTreeMap<u32, Chunk>>,
}

impl ReplayJobs {
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Paused,
    Cancelled,
    Completed,
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Paused => "paused",
            JobState::Cancelled => "cancelled",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Cancelled | JobState::Completed | JobState::Failed
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkState {
    Planned,
    Assigned,
    Running,
    Done,
    Failed,
}

impl ChunkState {
    pub fn as_str(self) -> &'static str {
        match self {
            ChunkState::Planned => "planned",
            ChunkState::Assigned => "assigned",
            ChunkState::Running => "running",
            ChunkState::Done => "done",
            ChunkState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "planned" => ChunkState::Planned,
            "assigned" => ChunkState::Assigned,
            "running" => ChunkState::Running,
            "done" => ChunkState::Done,
            "failed" => ChunkState::Failed,
            _ => return None,
        })
    }

    pub fn in_flight(self) -> bool {
        matches!(self, ChunkState::Assigned | ChunkState::Running)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub pipeline: String,
    /// The source component whose instances run the chunks.
    pub source: String,
    pub from_ledger: u64,
    pub to_ledger: u64,
    pub chunk_size: u32,
    pub max_parallel: u32,
    pub max_attempts: u32,
    pub state: JobState,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Records written by done chunks.
    pub records: u64,
}

/// Checks a job's ledger range and chunk size, and returns how many chunks it splits into.
/// The message of an error names the field at fault. The API checks a request with this
/// before proposing it, and `create` checks the command again, since a command may come from
/// anywhere that can propose.
pub fn plan_chunks(from_ledger: u64, to_ledger: u64, chunk_size: u32) -> Result<u32, String> {
    if from_ledger > to_ledger {
        return Err(format!(
            "from_ledger {from_ledger} is after to_ledger {to_ledger}"
        ));
    }
    // No ledger sequence comes near u64::MAX; keeping it out means the ledger after a chunk's
    // last one can always be named.
    if to_ledger == u64::MAX {
        return Err(format!("to_ledger must be below {}", u64::MAX));
    }
    // Cannot overflow: from_ledger <= to_ledger < u64::MAX.
    let ledgers = to_ledger - from_ledger + 1;
    if ledgers > MAX_LEDGERS {
        return Err(format!(
            "from_ledger {from_ledger} to to_ledger {to_ledger} spans {ledgers} ledgers, more \
             than {MAX_LEDGERS}"
        ));
    }
    if chunk_size == 0 {
        return Err("chunk_size must be at least 1".into());
    }
    let chunks = ledgers.div_ceil(u64::from(chunk_size));
    match u32::try_from(chunks) {
        Ok(n) if n <= MAX_CHUNKS_PER_JOB => Ok(n),
        _ => Err(format!(
            "chunk_size {chunk_size} splits {ledgers} ledgers into {chunks} chunks, more than \
             {MAX_CHUNKS_PER_JOB}"
        )),
    }
}

impl Job {
    /// The number of chunks, or why the job's range cannot be split (see [`plan_chunks`]).
    pub fn chunk_count(&self) -> Result<u32, String> {
        plan_chunks(self.from_ledger, self.to_ledger, self.chunk_size)
    }

    /// The ledger ranges of the chunks, in index order. They cover `from_ledger..=to_ledger`
    /// exactly; a chunk never ends past `to_ledger`, even when `to_ledger + chunk_size` would
    /// not fit in a u64.
    pub fn chunk_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let span = u64::from(self.chunk_size.max(1)) - 1;
        let mut next = (self.from_ledger <= self.to_ledger).then_some(self.from_ledger);
        std::iter::from_fn(move || {
            let from = next?;
            let to = from.saturating_add(span).min(self.to_ledger);
            next = to.checked_add(1).filter(|n| *n <= self.to_ledger);
            Some((from, to))
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub index: u32,
    pub from_ledger: u64,
    pub to_ledger: u64,
    pub state: ChunkState,
    /// Assignments so far; the current one's number fences reports.
    pub attempt: u32,
    /// Failed attempts; at `max_attempts` the chunk fails for good.
    pub failures: u32,
    /// The instance (component id) of the current or last assignment.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance: String,
    pub records: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// Not to be assigned before this time (retry backoff).
    pub not_before_ms: u64,
    pub updated_ms: u64,
}

/// Creates a job; apply plans its chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateReplay {
    pub job: Job,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignChunks {
    pub job: String,
    /// (chunk index, instance).
    pub assignments: Vec<(u32, String)>,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkProgress {
    Running,
    Done { records: u64 },
    Failed { error: String, retryable: bool },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportChunk {
    pub job: String,
    pub chunk: u32,
    pub attempt: u32,
    pub instance: String,
    pub progress: ChunkProgress,
    pub at_ms: u64,
    /// The reporting instance's placement epoch (`FLOWCTL_EPOCH`), where it has one; a report
    /// from an older epoch than the instance's current placement is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// Takes in-flight chunks back (their instance is gone, or never started them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequeueChunks {
    pub job: String,
    /// (chunk index, the attempt being taken back).
    pub chunks: Vec<(u32, u32)>,
    pub reason: String,
    pub at_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayAction {
    Pause,
    Resume,
    Cancel,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlReplay {
    pub job: String,
    pub action: ReplayAction,
    pub at_ms: u64,
}

fn not_found(id: &str) -> (Outcome, Vec<Touched>) {
    (
        Outcome::Rejected(Rejection::NotFound {
            kind: "replay job".into(),
            name: id.to_owned(),
        }),
        vec![],
    )
}

fn invalid(m: String) -> (Outcome, Vec<Touched>) {
    (Outcome::Rejected(Rejection::Invalid(m)), vec![])
}

pub(crate) fn create(state: &mut State, c: &CreateReplay) -> (Outcome, Vec<Touched>) {
    let j = &c.job;
    if state.replays.jobs.contains_key(&j.id) {
        return (
            Outcome::Rejected(Rejection::Conflict(format!("replay job {} exists", j.id))),
            vec![],
        );
    }
    if !state.pipelines.contains_key(&j.pipeline) {
        return (
            Outcome::Rejected(Rejection::NotFound {
                kind: "pipeline".into(),
                name: j.pipeline.clone(),
            }),
            vec![],
        );
    }
    // Checked before anything is built: the chunk count bounds the work of this apply.
    let count = match j.chunk_count() {
        Ok(n) => n,
        Err(m) => return invalid(m),
    };
    if j.max_parallel == 0 || j.max_attempts == 0 {
        return invalid("max_parallel and max_attempts must be at least 1".into());
    }
    let mut touched = vec![Touched::ReplayJob(j.id.clone())];
    let chunks: BTreeMap<u32, Chunk> = (0..count)
        .zip(j.chunk_ranges())
        .map(|(i, (from, to))| {
            touched.push(Touched::ReplayChunk(j.id.clone(), i));
            (
                i,
                Chunk {
                    index: i,
                    from_ledger: from,
                    to_ledger: to,
                    state: ChunkState::Planned,
                    attempt: 0,
                    failures: 0,
                    instance: String::new(),
                    records: 0,
                    error: String::new(),
                    not_before_ms: 0,
                    updated_ms: j.created_ms,
                },
            )
        })
        .collect();
    let mut job = j.clone();
    job.state = JobState::Running;
    job.records = 0;
    state.replays.chunks.insert(j.id.clone(), chunks);
    state.replays.jobs.insert(j.id.clone(), job);
    (
        Outcome::ReplayCreated {
            job: j.id.clone(),
            chunks: count,
        },
        touched,
    )
}

pub(crate) fn assign(state: &mut State, c: &AssignChunks) -> (Outcome, Vec<Touched>) {
    let Some(job) = state.replays.jobs.get(&c.job) else {
        return not_found(&c.job);
    };
    if job.state != JobState::Running {
        return (Outcome::ChunksChanged { changed: vec![] }, vec![]);
    }
    let Some(chunks) = state.replays.chunks.get_mut(&c.job) else {
        return not_found(&c.job);
    };
    let mut changed = Vec::new();
    let mut touched = Vec::new();
    // The orchestrator keeps to max_parallel; apply keeps to it too, whoever proposed.
    let mut in_flight = chunks.values().filter(|c| c.state.in_flight()).count();
    let max_parallel = job.max_parallel.max(1) as usize;
    for (index, instance) in &c.assignments {
        if in_flight >= max_parallel {
            break;
        }
        let Some(ch) = chunks.get_mut(index) else {
            continue;
        };
        if ch.state != ChunkState::Planned || ch.not_before_ms > c.at_ms {
            continue;
        }
        in_flight += 1;
        // The attempt number fences reports, so it must never wrap or repeat; a chunk that
        // has used every number is not handed out again.
        let Some(attempt) = ch.attempt.checked_add(1) else {
            continue;
        };
        ch.state = ChunkState::Assigned;
        ch.attempt = attempt;
        ch.instance = instance.clone();
        ch.updated_ms = c.at_ms;
        changed.push(*index);
        touched.push(Touched::ReplayChunk(c.job.clone(), *index));
    }
    (Outcome::ChunksChanged { changed }, touched)
}

/// Settles the job once no chunk is left to run.
fn settle(job: &mut Job, chunks: &BTreeMap<u32, Chunk>, at_ms: u64) -> bool {
    if job.state.is_final() {
        return false;
    }
    let open = chunks
        .values()
        .any(|c| !matches!(c.state, ChunkState::Done | ChunkState::Failed));
    if open {
        return false;
    }
    job.state = if chunks.values().any(|c| c.state == ChunkState::Failed) {
        JobState::Failed
    } else {
        JobState::Completed
    };
    job.updated_ms = at_ms;
    true
}

pub(crate) fn report(state: &mut State, c: &ReportChunk) -> (Outcome, Vec<Touched>) {
    let Some(job) = state.replays.jobs.get_mut(&c.job) else {
        return not_found(&c.job);
    };
    let Some(chunks) = state.replays.chunks.get_mut(&c.job) else {
        return not_found(&c.job);
    };
    let Some(ch) = chunks.get_mut(&c.chunk) else {
        return invalid(format!("job {} has no chunk {}", c.job, c.chunk));
    };
    // Only the current attempt of an in-flight chunk, from the instance it was given to, and
    // from that instance's current placement (not a copy left on a node it moved away from).
    if ch.attempt != c.attempt || !ch.state.in_flight() || ch.instance != c.instance {
        return (Outcome::ChunkReport { accepted: false }, vec![]);
    }
    let fenced = state.placements.get(&job.pipeline).is_some_and(|p| {
        p.key_of_instance_id(&c.instance)
            .is_some_and(|key| p.fences(key, c.epoch))
    });
    if fenced {
        return (Outcome::ChunkReport { accepted: false }, vec![]);
    }
    match &c.progress {
        ChunkProgress::Running => ch.state = ChunkState::Running,
        ChunkProgress::Done { records } => {
            ch.state = ChunkState::Done;
            ch.records = *records;
            ch.error.clear();
            // The count comes from the component's report: it may be anything.
            job.records = job.records.saturating_add(*records);
        }
        ChunkProgress::Failed { error, retryable } => {
            ch.failures = ch.failures.saturating_add(1);
            ch.error = error.clone();
            if *retryable && ch.failures < job.max_attempts {
                ch.state = ChunkState::Planned;
                let backoff = RETRY_BACKOFF_BASE_MS
                    .saturating_mul(1 << (ch.failures - 1).min(16))
                    .min(RETRY_BACKOFF_MAX_MS);
                ch.not_before_ms = c.at_ms.saturating_add(backoff);
            } else {
                ch.state = ChunkState::Failed;
            }
        }
    }
    ch.updated_ms = c.at_ms;
    let mut touched = vec![Touched::ReplayChunk(c.job.clone(), c.chunk)];
    job.updated_ms = c.at_ms;
    settle(job, chunks, c.at_ms);
    touched.push(Touched::ReplayJob(c.job.clone()));
    (Outcome::ChunkReport { accepted: true }, touched)
}

pub(crate) fn requeue(state: &mut State, c: &RequeueChunks) -> (Outcome, Vec<Touched>) {
    let Some(chunks) = state.replays.chunks.get_mut(&c.job) else {
        return not_found(&c.job);
    };
    let mut changed = Vec::new();
    let mut touched = Vec::new();
    for (index, attempt) in &c.chunks {
        let Some(ch) = chunks.get_mut(index) else {
            continue;
        };
        if ch.attempt != *attempt || !ch.state.in_flight() {
            continue;
        }
        ch.state = ChunkState::Planned;
        ch.error = c.reason.clone();
        ch.updated_ms = c.at_ms;
        changed.push(*index);
        touched.push(Touched::ReplayChunk(c.job.clone(), *index));
    }
    (Outcome::ChunksChanged { changed }, touched)
}

pub(crate) fn control(state: &mut State, c: &ControlReplay) -> (Outcome, Vec<Touched>) {
    let Some(job) = state.replays.jobs.get_mut(&c.job) else {
        return not_found(&c.job);
    };
    let next = match (c.action, job.state) {
        (_, s) if s.is_final() => {
            return invalid(format!("replay job {} is {}", c.job, s.as_str()));
        }
        (ReplayAction::Pause, _) => JobState::Paused,
        (ReplayAction::Resume, _) => JobState::Running,
        (ReplayAction::Cancel, _) => JobState::Cancelled,
    };
    job.state = next;
    job.updated_ms = c.at_ms;
    let mut touched = vec![Touched::ReplayJob(c.job.clone())];
    // Cancelling takes the in-flight chunks back (their sources are told to stop); what is
    // done stays recorded.
    if next == JobState::Cancelled {
        if let Some(chunks) = state.replays.chunks.get_mut(&c.job) {
            for ch in chunks.values_mut().filter(|ch| ch.state.in_flight()) {
                ch.state = ChunkState::Planned;
                ch.error = "job cancelled".into();
                ch.updated_ms = c.at_ms;
                touched.push(Touched::ReplayChunk(c.job.clone(), ch.index));
            }
        }
    }
    (
        Outcome::ReplayControlled {
            state: next.as_str().to_owned(),
        },
        touched,
    )
}

/// A deleted pipeline's running jobs are cancelled (their history stays). The delete carries
/// no clock, so the jobs keep their last update time.
pub(crate) fn pipeline_deleted(state: &mut State, pipeline: &str) -> Vec<Touched> {
    let jobs: Vec<(String, u64)> = state
        .replays
        .jobs
        .values()
        .filter(|j| j.pipeline == pipeline && !j.state.is_final())
        .map(|j| (j.id.clone(), j.updated_ms))
        .collect();
    let mut touched = Vec::new();
    for (job, at_ms) in jobs {
        let (_, t) = control(
            state,
            &ControlReplay {
                job,
                action: ReplayAction::Cancel,
                at_ms,
            },
        );
        touched.extend(t);
    }
    touched
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipelines::ApplyPipeline;
    use crate::{apply, Command, NodeId, PipelineId};

    fn setup(max_attempts: u32) -> State {
        let mut s = State::default();
        apply(
            &mut s,
            1,
            &Command::ApplyPipeline(ApplyPipeline {
                name: "p".into(),
                id_if_new: PipelineId("pl-1".into()),
                spec_yaml: "kind: Pipeline\n".into(),
                canonical: "{}".into(),
                at_ms: 1,
                if_generation: None,
            }),
        );
        let (o, _) = apply(
            &mut s,
            2,
            &Command::CreateReplay(CreateReplay {
                job: Job {
                    id: "rj-1".into(),
                    pipeline: "p".into(),
                    source: "src".into(),
                    from_ledger: 100,
                    to_ledger: 299,
                    chunk_size: 64,
                    max_parallel: 2,
                    max_attempts,
                    state: JobState::Running,
                    created_ms: 1,
                    updated_ms: 1,
                    records: 0,
                },
            }),
        );
        assert_eq!(
            o,
            Outcome::ReplayCreated {
                job: "rj-1".into(),
                chunks: 4
            }
        );
        s
    }

    fn assign_cmd(index: u32, instance: &str, at_ms: u64) -> Command {
        Command::AssignChunks(AssignChunks {
            job: "rj-1".into(),
            assignments: vec![(index, instance.into())],
            at_ms,
        })
    }

    fn report_cmd(index: u32, attempt: u32, instance: &str, progress: ChunkProgress) -> Command {
        Command::ReportChunk(ReportChunk {
            job: "rj-1".into(),
            chunk: index,
            attempt,
            instance: instance.into(),
            progress,
            at_ms: 10,
            epoch: None,
        })
    }

    #[test]
    fn chunks_cover_the_range_exactly() {
        let s = setup(3);
        let chunks = &s.replays.chunks["rj-1"];
        let ranges: Vec<(u64, u64)> = chunks
            .values()
            .map(|c| (c.from_ledger, c.to_ledger))
            .collect();
        assert_eq!(ranges, [(100, 163), (164, 227), (228, 291), (292, 299)]);
    }

    #[test]
    fn reports_are_fenced_by_attempt_and_jobs_settle() {
        let mut s = setup(2);
        apply(&mut s, 3, &assign_cmd(0, "src-0", 5));
        // A stale attempt or another instance changes nothing.
        let (o, _) = apply(
            &mut s,
            4,
            &report_cmd(0, 0, "src-0", ChunkProgress::Running),
        );
        assert_eq!(o, Outcome::ChunkReport { accepted: false });
        let (o, _) = apply(
            &mut s,
            4,
            &report_cmd(0, 1, "src-1", ChunkProgress::Running),
        );
        assert_eq!(o, Outcome::ChunkReport { accepted: false });
        // A retryable failure goes back to planned with a backoff, until exhausted.
        let failed = ChunkProgress::Failed {
            error: "broker down".into(),
            retryable: true,
        };
        apply(&mut s, 5, &report_cmd(0, 1, "src-0", failed.clone()));
        let c = &s.replays.chunks["rj-1"][&0];
        assert_eq!((c.state, c.failures), (ChunkState::Planned, 1));
        // Not before the backoff.
        apply(&mut s, 6, &assign_cmd(0, "src-0", 11));
        assert_eq!(s.replays.chunks["rj-1"][&0].state, ChunkState::Planned);
        apply(
            &mut s,
            7,
            &assign_cmd(0, "src-0", 10 + RETRY_BACKOFF_BASE_MS),
        );
        apply(&mut s, 8, &report_cmd(0, 2, "src-0", failed));
        assert_eq!(s.replays.chunks["rj-1"][&0].state, ChunkState::Failed);
        // The rest complete; the job ends failed because chunk 0 is exhausted.
        for i in 1..4 {
            apply(&mut s, 9, &assign_cmd(i, "src-1", 20));
            apply(
                &mut s,
                10,
                &report_cmd(i, 1, "src-1", ChunkProgress::Done { records: 64 }),
            );
        }
        assert_eq!(s.replays.jobs["rj-1"].state, JobState::Failed);
        assert_eq!(s.replays.jobs["rj-1"].records, 192);
    }

    #[test]
    fn a_report_from_an_older_placement_of_the_instance_is_refused() {
        use crate::placements::SetPlacement;
        let mut s = setup(2);
        let place = |node: u64| {
            Command::SetPlacement(SetPlacement {
                pipeline: "p".into(),
                generation: 1,
                instances: [
                    ("src/0".to_owned(), NodeId(1)),
                    ("src/1".to_owned(), NodeId(node)),
                ]
                .into(),
            })
        };
        apply(&mut s, 3, &place(1));
        apply(&mut s, 4, &assign_cmd(0, "src-1", 5));
        // src/1 moves to node 2 at index 5: the copy started at epoch 3 is fenced.
        apply(&mut s, 5, &place(2));
        let with_epoch = |epoch| match report_cmd(0, 1, "src-1", ChunkProgress::Running) {
            Command::ReportChunk(r) => Command::ReportChunk(ReportChunk {
                epoch: Some(epoch),
                ..r
            }),
            _ => unreachable!(),
        };
        assert_eq!(
            apply(&mut s, 6, &with_epoch(3)).0,
            Outcome::ChunkReport { accepted: false }
        );
        assert_eq!(s.replays.chunks["rj-1"][&0].state, ChunkState::Assigned);
        assert_eq!(
            apply(&mut s, 7, &with_epoch(5)).0,
            Outcome::ChunkReport { accepted: true }
        );
        assert_eq!(s.replays.chunks["rj-1"][&0].state, ChunkState::Running);
    }

    #[test]
    fn a_non_retryable_failure_fails_the_chunk_at_once() {
        let mut s = setup(5);
        apply(&mut s, 3, &assign_cmd(1, "src-0", 5));
        apply(
            &mut s,
            4,
            &report_cmd(
                1,
                1,
                "src-0",
                ChunkProgress::Failed {
                    error: "bad range".into(),
                    retryable: false,
                },
            ),
        );
        assert_eq!(s.replays.chunks["rj-1"][&1].state, ChunkState::Failed);
    }

    #[test]
    fn requeue_pause_and_cancel() {
        let mut s = setup(3);
        apply(&mut s, 3, &assign_cmd(0, "src-0", 5));
        apply(&mut s, 4, &assign_cmd(1, "src-1", 5));
        // src-0 died: its chunk goes back to planned without a failure.
        apply(
            &mut s,
            5,
            &Command::RequeueChunks(RequeueChunks {
                job: "rj-1".into(),
                chunks: vec![(0, 1)],
                reason: "instance src-0 is gone".into(),
                at_ms: 6,
            }),
        );
        let c = &s.replays.chunks["rj-1"][&0];
        assert_eq!(
            (c.state, c.failures, c.attempt),
            (ChunkState::Planned, 0, 1)
        );
        let ctl = |action| {
            Command::ControlReplay(ControlReplay {
                job: "rj-1".into(),
                action,
                at_ms: 7,
            })
        };
        apply(&mut s, 6, &ctl(ReplayAction::Pause));
        // Paused: nothing is assigned.
        apply(&mut s, 7, &assign_cmd(0, "src-0", 8));
        assert_eq!(s.replays.chunks["rj-1"][&0].state, ChunkState::Planned);
        apply(&mut s, 8, &ctl(ReplayAction::Resume));
        apply(
            &mut s,
            9,
            &report_cmd(1, 1, "src-1", ChunkProgress::Done { records: 64 }),
        );
        apply(&mut s, 10, &assign_cmd(2, "src-1", 8));
        apply(&mut s, 11, &ctl(ReplayAction::Cancel));
        let job = &s.replays.jobs["rj-1"];
        let chunks = &s.replays.chunks["rj-1"];
        assert_eq!(job.state, JobState::Cancelled);
        assert_eq!(chunks[&1].state, ChunkState::Done);
        assert_eq!(chunks[&2].state, ChunkState::Planned);
        let (o, _) = apply(&mut s, 12, &ctl(ReplayAction::Resume));
        assert!(matches!(o, Outcome::Rejected(Rejection::Invalid(_))));
    }

    fn create_cmd(from_ledger: u64, to_ledger: u64, chunk_size: u32) -> Command {
        Command::CreateReplay(CreateReplay {
            job: Job {
                id: "rj-2".into(),
                pipeline: "p".into(),
                source: "src".into(),
                from_ledger,
                to_ledger,
                chunk_size,
                max_parallel: 1,
                max_attempts: 1,
                state: JobState::Running,
                created_ms: 1,
                updated_ms: 1,
                records: 0,
            },
        })
    }

    /// Applies `cmd` and checks that it was rejected as invalid and changed nothing.
    fn assert_rejected_as_invalid(s: &mut State, cmd: &Command) {
        let before = s.clone();
        let (o, touched) = apply(s, 20, cmd);
        assert!(
            matches!(o, Outcome::Rejected(Rejection::Invalid(_))),
            "{cmd:?}: {o:?}"
        );
        assert!(touched.is_empty(), "{cmd:?}: {touched:?}");
        assert_eq!(*s, before, "{cmd:?}");
    }

    #[test]
    fn a_job_of_more_than_max_chunks_is_rejected_before_any_chunk_is_built() {
        let mut s = setup(3);
        assert_rejected_as_invalid(&mut s, &create_cmd(1, MAX_LEDGERS, 1));
        assert!(!s.replays.chunks.contains_key("rj-2"));
    }

    #[test]
    fn the_chunk_cap_admits_the_longest_range_in_chunks_of_64() {
        assert_eq!(plan_chunks(1, MAX_LEDGERS, 64), Ok(MAX_CHUNKS_PER_JOB));
        assert!(plan_chunks(1, MAX_LEDGERS, 63).is_err());
        assert!(plan_chunks(1, MAX_LEDGERS + 1, 64).is_err());
    }

    #[test]
    fn ranges_that_would_overflow_are_rejected_without_panicking() {
        let mut s = setup(3);
        for cmd in [
            create_cmd(10, 9, 64),
            create_cmd(0, u64::MAX, 64),
            create_cmd(100, u64::MAX, 1),
            create_cmd(u64::MAX - 1, u64::MAX, 64),
            create_cmd(u64::MAX, u64::MAX, u32::MAX),
            create_cmd(100, 200, 0),
        ] {
            assert_rejected_as_invalid(&mut s, &cmd);
        }
    }

    #[test]
    fn chunks_near_the_top_of_the_ledger_space_end_at_to_ledger() {
        let mut s = setup(3);
        let (o, _) = apply(&mut s, 20, &create_cmd(u64::MAX - 100, u64::MAX - 1, 64));
        assert_eq!(
            o,
            Outcome::ReplayCreated {
                job: "rj-2".into(),
                chunks: 2
            }
        );
        let ranges: Vec<(u64, u64)> = s.replays.chunks["rj-2"]
            .values()
            .map(|c| (c.from_ledger, c.to_ledger))
            .collect();
        assert_eq!(
            ranges,
            [
                (u64::MAX - 100, u64::MAX - 37),
                (u64::MAX - 36, u64::MAX - 1)
            ]
        );
    }

    #[test]
    fn reported_records_saturate_instead_of_overflowing() {
        let mut s = setup(3);
        apply(&mut s, 3, &assign_cmd(0, "src-0", 5));
        apply(&mut s, 4, &assign_cmd(1, "src-1", 5));
        apply(
            &mut s,
            5,
            &report_cmd(0, 1, "src-0", ChunkProgress::Done { records: 64 }),
        );
        let (o, _) = apply(
            &mut s,
            6,
            &report_cmd(1, 1, "src-1", ChunkProgress::Done { records: u64::MAX }),
        );
        assert_eq!(o, Outcome::ChunkReport { accepted: true });
        assert_eq!(s.replays.jobs["rj-1"].records, u64::MAX);
        assert_eq!(s.replays.chunks["rj-1"][&1].records, u64::MAX);
    }

    #[test]
    fn a_chunk_whose_attempt_numbers_are_used_up_is_not_assigned_again() {
        let mut s = setup(3);
        s.replays
            .chunks
            .get_mut("rj-1")
            .unwrap()
            .get_mut(&0)
            .unwrap()
            .attempt = u32::MAX;
        let (o, touched) = apply(&mut s, 3, &assign_cmd(0, "src-0", 5));
        assert_eq!(o, Outcome::ChunksChanged { changed: vec![] });
        assert!(touched.is_empty());
        let c = &s.replays.chunks["rj-1"][&0];
        assert_eq!((c.state, c.attempt), (ChunkState::Planned, u32::MAX));
    }
}
