//! The component side of range replay jobs: a watched stream of chunk commands and the reports
//! of their progress.
//!
//! ```text
//!  agent (source instance)                 control plane (any node)
//!    │── WatchChunks(component_id) ─────────▶│   one stream, kept open
//!    │◀──── ChunkCommand(job, chunk, attempt) │   as the leader assigns chunks
//!    │── ReportChunk(RUNNING, attempt) ──────▶│
//!    │◀──────────────────── accepted ─────────│   false: another attempt owns it, stop
//!    │── ReportChunk(DONE, records) ─────────▶│
//!    │        ... stream breaks ...           │
//!    │── WatchChunks (next endpoint) ────────▶│   after a jittered backoff
//!    │◀──── unreported assignments again ─────│   duplicates are dropped here
//! ```
//!
//! The stream feeds a bounded channel of [`CHUNK_COMMAND_CAPACITY`]; when the consumer falls
//! behind, the task stops reading the stream, so HTTP/2 flow control pushes back on the server
//! and no command is dropped.
//!
//! Duplicates: after a reconnect the server sends every unreported assignment again. An
//! assignment (job, chunk, attempt) this process has already handed out is not handed out
//! again while it is being worked on or after it was finished; a cancel always passes. A
//! terminal report that could not be delivered makes the agent forget the assignment, so that
//! the server's next re-send hands it out again and the work is redone rather than lost.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowctl_client::Client;
use flowctl_proto::admin::v1 as proto;
use flowctl_proto::admin::v1::replay_service_client::ReplayServiceClient;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use crate::agent::{jitter, Shared};
use crate::Error;

/// How many chunk commands may wait for the consumer before the agent stops reading the
/// stream.
pub const CHUNK_COMMAND_CAPACITY: usize = 64;
/// The first wait before opening the command stream again; it doubles up to
/// [`MAX_WATCH_BACKOFF`].
pub const FIRST_WATCH_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait between attempts to open the command stream.
pub const MAX_WATCH_BACKOFF: Duration = Duration::from_secs(30);
/// A stream that stayed open this long counts as healthy: the next reconnect starts over at
/// [`FIRST_WATCH_BACKOFF`].
const HEALTHY_STREAM: Duration = Duration::from_secs(10);
/// How many times one report is tried (each try fails over across endpoints within
/// `request_timeout`).
pub const REPORT_TRIES: u32 = 4;
/// The first wait between report tries; it doubles up to [`MAX_REPORT_BACKOFF`].
pub const FIRST_REPORT_BACKOFF: Duration = Duration::from_millis(200);
pub const MAX_REPORT_BACKOFF: Duration = Duration::from_secs(2);
/// How many assignments the de-duplication remembers; the oldest are forgotten first.
pub const REMEMBERED_ASSIGNMENTS: usize = 4096;

/// The id of a range replay job.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplayJobId(String);

impl ReplayJobId {
    pub fn new(id: impl Into<String>) -> Self {
        ReplayJobId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReplayJobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One attempt at one chunk of a job. The attempt number is the fencing token: the control
/// plane accepts reports only of the chunk's current attempt, from the instance it gave it to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkAttempt {
    pub job: ReplayJobId,
    /// The chunk's index within its job.
    pub index: u32,
    /// Counted from 1; every assignment of the chunk increments it.
    pub attempt: u32,
}

impl fmt::Display for ChunkAttempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "job {} chunk {} attempt {}",
            self.job, self.index, self.attempt
        )
    }
}

/// What the control plane asks of this instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkCommand {
    /// Emit exactly the ledgers `from_ledger..=to_ledger`, then report.
    Run {
        chunk: ChunkAttempt,
        from_ledger: u64,
        to_ledger: u64,
    },
    /// Stop working on this chunk: its job was paused or cancelled, or it was taken away. It
    /// needs no report.
    Cancel { chunk: ChunkAttempt },
}

impl ChunkCommand {
    pub fn chunk(&self) -> &ChunkAttempt {
        match self {
            ChunkCommand::Run { chunk, .. } | ChunkCommand::Cancel { chunk } => chunk,
        }
    }

    /// `None` for a command without a job id, which no server sends on purpose.
    fn from_proto(p: proto::ChunkCommand) -> Option<Self> {
        if p.job_id.is_empty() {
            return None;
        }
        let chunk = ChunkAttempt {
            job: ReplayJobId(p.job_id),
            index: p.chunk,
            attempt: p.attempt,
        };
        Some(if p.cancel {
            ChunkCommand::Cancel { chunk }
        } else {
            ChunkCommand::Run {
                chunk,
                from_ledger: p.from_ledger,
                to_ledger: p.to_ledger,
            }
        })
    }
}

/// How an attempt is going.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkProgress {
    Running,
    /// Every record was acknowledged by the broker.
    Done {
        records: u64,
    },
    Failed {
        error: String,
        /// Whether another attempt may succeed (a broker error) or not (a bad range).
        retryable: bool,
    },
}

/// A report of one attempt's progress; the agent adds the component id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkReport {
    pub chunk: ChunkAttempt,
    pub progress: ChunkProgress,
}

impl ChunkReport {
    pub fn running(chunk: &ChunkAttempt) -> Self {
        ChunkReport {
            chunk: chunk.clone(),
            progress: ChunkProgress::Running,
        }
    }

    pub fn done(chunk: &ChunkAttempt, records: u64) -> Self {
        ChunkReport {
            chunk: chunk.clone(),
            progress: ChunkProgress::Done { records },
        }
    }

    pub fn failed(chunk: &ChunkAttempt, error: impl Into<String>, retryable: bool) -> Self {
        ChunkReport {
            chunk: chunk.clone(),
            progress: ChunkProgress::Failed {
                error: error.into(),
                retryable,
            },
        }
    }

    /// Done or failed: nothing more will be reported for this attempt.
    pub fn is_terminal(&self) -> bool {
        !matches!(self.progress, ChunkProgress::Running)
    }

    fn to_proto(&self, component_id: &str, epoch: Option<u64>) -> proto::ChunkReport {
        let (state, records, error, retryable) = match &self.progress {
            ChunkProgress::Running => (proto::ChunkReportState::Running, 0, String::new(), false),
            ChunkProgress::Done { records } => (
                proto::ChunkReportState::Done,
                *records,
                String::new(),
                false,
            ),
            ChunkProgress::Failed { error, retryable } => (
                proto::ChunkReportState::Failed,
                0,
                error.clone(),
                *retryable,
            ),
        };
        proto::ChunkReport {
            component_id: component_id.to_owned(),
            job_id: self.chunk.job.0.clone(),
            chunk: self.chunk.index,
            attempt: self.chunk.attempt,
            state: state as i32,
            records,
            error,
            retryable,
            epoch: epoch.unwrap_or(0),
        }
    }
}

/// The receiving end of [`AgentHandle::chunk_commands`](crate::AgentHandle::chunk_commands).
/// Dropping it stops the watch.
#[derive(Debug)]
pub struct ChunkCommands {
    /// `None` when the control plane is disabled: nothing ever arrives.
    rx: Option<mpsc::Receiver<ChunkCommand>>,
    cancel: CancellationToken,
}

impl ChunkCommands {
    /// The next command; `None` once the agent has stopped. With the control plane disabled it
    /// waits until the agent stops.
    pub async fn recv(&mut self) -> Option<ChunkCommand> {
        match &mut self.rx {
            Some(rx) => tokio::select! {
                c = rx.recv() => c,
                () = self.cancel.cancelled() => None,
            },
            None => {
                self.cancel.cancelled().await;
                None
            }
        }
    }
}

/// The chunk side of a running agent: its own client (so the long-lived stream has its own
/// connections, apart from heartbeats), the de-duplication, and the id the stream was opened
/// under.
pub(crate) struct Chunks {
    client: Option<Client>,
    seen: Mutex<Seen>,
    watching: std::sync::atomic::AtomicBool,
    watched_as: Mutex<Option<String>>,
}

impl Chunks {
    pub(crate) fn new(client: Option<Client>) -> Self {
        Chunks {
            client,
            seen: Mutex::new(Seen::default()),
            watching: std::sync::atomic::AtomicBool::new(false),
            watched_as: Mutex::new(None),
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Opens the command channel; the caller spawns the returned task (if any) on the agent's
/// tracker.
pub(crate) fn open(
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
) -> Result<(ChunkCommands, Option<impl std::future::Future<Output = ()>>), Error> {
    if shared
        .chunks
        .watching
        .swap(true, std::sync::atomic::Ordering::AcqRel)
    {
        return Err(Error::ChunksAlreadyWatched);
    }
    if shared.chunks.client.is_none() {
        return Ok((
            ChunkCommands {
                rx: None,
                cancel: cancel.clone(),
            },
            None,
        ));
    }
    let (tx, rx) = mpsc::channel(CHUNK_COMMAND_CAPACITY);
    let task = watch(shared.clone(), tx, cancel.clone());
    Ok((
        ChunkCommands {
            rx: Some(rx),
            cancel: cancel.clone(),
        },
        Some(task),
    ))
}

/// The component id to watch and report under: `FLOWCTL_COMPONENT_ID`, else the registered
/// service id (waited for).
async fn component_id(shared: &Shared, cancel: &CancellationToken) -> Option<String> {
    if let Some(id) = &shared.config.component_id {
        return Some(id.as_str().to_owned());
    }
    let mut rx = shared.registration.subscribe();
    tokio::select! {
        r = rx.wait_for(Option::is_some) => r
            .ok()
            .and_then(|r| r.as_ref().map(|r| r.service_id.as_str().to_owned())),
        () = cancel.cancelled() => None,
    }
}

#[tracing::instrument(name = "flowctl_chunks", skip_all, fields(component = %shared.component.name))]
async fn watch(shared: Arc<Shared>, tx: mpsc::Sender<ChunkCommand>, cancel: CancellationToken) {
    let Some(client) = shared.chunks.client.as_ref() else {
        return;
    };
    let mut backoff = FIRST_WATCH_BACKOFF;
    loop {
        let Some(id) = component_id(&shared, &cancel).await else {
            break;
        };
        *shared
            .chunks
            .watched_as
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(id.clone());
        let req = proto::WatchChunksRequest {
            component_id: id.clone(),
            epoch: shared.config.epoch.unwrap_or(0),
        };
        let opened = tokio::select! {
            r = client.call(|ch| {
                let req = req.clone();
                async move { ReplayServiceClient::new(ch).watch_chunks(req).await }
            }) => r,
            () = cancel.cancelled() => break,
            () = tx.closed() => break,
        };
        match opened {
            Ok(response) => {
                let opened_at = tokio::time::Instant::now();
                tracing::info!(
                    component_id = %id,
                    endpoint = client.last_endpoint().as_deref().unwrap_or(""),
                    "watching chunk commands"
                );
                let mut stream = response.into_inner();
                let mut got_any = false;
                let ended = loop {
                    let message = tokio::select! {
                        m = stream.message() => m,
                        () = cancel.cancelled() => return,
                        () = tx.closed() => return,
                    };
                    let p = match message {
                        Ok(Some(p)) => p,
                        Ok(None) => break Status::unavailable("the server ended the stream"),
                        Err(status) => break status,
                    };
                    got_any = true;
                    let Some(command) = ChunkCommand::from_proto(p) else {
                        tracing::warn!("ignoring a chunk command without a job id");
                        continue;
                    };
                    if !shared.chunks.seen().admit(&command) {
                        tracing::debug!(chunk = %command.chunk(), "dropping a duplicate assignment");
                        continue;
                    }
                    tracing::debug!(?command, "chunk command");
                    tokio::select! {
                        sent = tx.send(command) => if sent.is_err() { return },
                        () = cancel.cancelled() => return,
                    }
                };
                if got_any || opened_at.elapsed() >= HEALTHY_STREAM {
                    backoff = FIRST_WATCH_BACKOFF;
                }
                tracing::warn!(
                    code = ?ended.code(),
                    message = ended.message(),
                    "chunk command stream broke; reconnecting"
                );
            }
            Err(status) => tracing::warn!(
                code = ?status.code(),
                message = status.message(),
                "cannot open the chunk command stream"
            ),
        }
        let wait = jitter(backoff, 0.5);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = cancel.cancelled() => break,
            () = tx.closed() => break,
        }
        backoff = (backoff * 2).min(MAX_WATCH_BACKOFF);
    }
    tracing::debug!("chunk command watch stopped");
}

/// Sends `report`, trying up to [`REPORT_TRIES`] times with backoff on errors that another try
/// may fix. Returns whether the control plane accepted it.
pub(crate) async fn report(
    shared: &Shared,
    cancel: &CancellationToken,
    report: &ChunkReport,
) -> Result<bool, Error> {
    let Some(client) = shared.chunks.client.as_ref() else {
        return Err(Error::Disabled);
    };
    let id = shared
        .config
        .component_id
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .or_else(|| {
            shared
                .chunks
                .watched_as
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        })
        .or_else(|| {
            shared
                .registration
                .borrow()
                .as_ref()
                .map(|r| r.service_id.as_str().to_owned())
        })
        .ok_or(Error::NotRegistered {
            waited: Duration::ZERO,
        })?;
    let req = report.to_proto(&id, shared.config.epoch);
    let mut backoff = FIRST_REPORT_BACKOFF;
    let mut tries = 0;
    let result = loop {
        tries += 1;
        let r = client
            .call(|ch| {
                let req = req.clone();
                async move { ReplayServiceClient::new(ch).report_chunk(req).await }
            })
            .await;
        match r {
            Ok(ack) => break Ok(ack.into_inner().accepted),
            Err(status) if tries < REPORT_TRIES && retryable(&status) => {
                let wait = jitter(backoff, 0.5);
                tracing::warn!(
                    chunk = %report.chunk,
                    code = ?status.code(),
                    message = status.message(),
                    retry_in = ?wait,
                    "chunk report failed; trying again"
                );
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = cancel.cancelled() => break Err(status),
                }
                backoff = (backoff * 2).min(MAX_REPORT_BACKOFF);
            }
            Err(status) => break Err(status),
        }
    };
    shared
        .chunks
        .seen()
        .reported(report, result.as_ref().ok().copied());
    result.map_err(|source| Error::ChunkReport {
        chunk: report.chunk.clone(),
        tries,
        source,
    })
}

/// Errors another try may fix: no node answered, or one answered while the cluster was busy
/// (leadership moving, overload). `NOT_FOUND`, `FAILED_PRECONDITION` and the rest are final.
fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Aborted | Code::ResourceExhausted
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Handed to the consumer, not finished.
    Delivered,
    /// Reported done or failed, refused as stale, or cancelled.
    Finished,
}

/// The assignments this process has handed out, oldest first, bounded by
/// [`REMEMBERED_ASSIGNMENTS`].
#[derive(Debug, Default)]
struct Seen {
    phase: HashMap<ChunkAttempt, Phase>,
    order: VecDeque<ChunkAttempt>,
}

impl Seen {
    /// Whether `command` goes to the consumer.
    fn admit(&mut self, command: &ChunkCommand) -> bool {
        match command {
            ChunkCommand::Run { chunk, .. } => {
                if self.phase.contains_key(chunk) {
                    return false;
                }
                self.set(chunk, Phase::Delivered);
                true
            }
            // A late re-send of a cancelled attempt must not start it again.
            ChunkCommand::Cancel { chunk } => {
                self.set(chunk, Phase::Finished);
                true
            }
        }
    }

    /// Notes what became of a report: `Some(accepted)`, or `None` when it was not delivered.
    fn reported(&mut self, report: &ChunkReport, outcome: Option<bool>) {
        match outcome {
            Some(false) => self.set(&report.chunk, Phase::Finished),
            Some(true) if report.is_terminal() => self.set(&report.chunk, Phase::Finished),
            None if report.is_terminal() => self.forget(&report.chunk),
            _ => {}
        }
    }

    fn set(&mut self, chunk: &ChunkAttempt, phase: Phase) {
        if let Some(p) = self.phase.get_mut(chunk) {
            *p = phase;
            return;
        }
        while self.order.len() >= REMEMBERED_ASSIGNMENTS {
            if let Some(old) = self.order.pop_front() {
                self.phase.remove(&old);
            }
        }
        self.order.push_back(chunk.clone());
        self.phase.insert(chunk.clone(), phase);
    }

    fn forget(&mut self, chunk: &ChunkAttempt) {
        if self.phase.remove(chunk).is_some() {
            self.order.retain(|c| c != chunk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(index: u32, attempt: u32) -> ChunkAttempt {
        ChunkAttempt {
            job: ReplayJobId::new("job"),
            index,
            attempt,
        }
    }

    fn run(index: u32, attempt: u32) -> ChunkCommand {
        ChunkCommand::Run {
            chunk: chunk(index, attempt),
            from_ledger: 1,
            to_ledger: 2,
        }
    }

    #[test]
    fn a_resent_assignment_is_handed_out_once() {
        let mut seen = Seen::default();
        assert!(seen.admit(&run(0, 1)));
        assert!(!seen.admit(&run(0, 1)), "still being worked on");
        assert!(seen.admit(&run(0, 2)), "a new attempt is new work");
        seen.reported(&ChunkReport::done(&chunk(0, 1), 2), Some(true));
        assert!(!seen.admit(&run(0, 1)), "finished");
    }

    #[test]
    fn an_undelivered_terminal_report_lets_the_resend_through() {
        let mut seen = Seen::default();
        assert!(seen.admit(&run(0, 1)));
        seen.reported(&ChunkReport::running(&chunk(0, 1)), None);
        assert!(!seen.admit(&run(0, 1)), "running reports change nothing");
        seen.reported(&ChunkReport::done(&chunk(0, 1), 2), None);
        assert!(seen.admit(&run(0, 1)), "the work must be redone");
    }

    #[test]
    fn cancels_pass_and_fence_off_late_resends() {
        let mut seen = Seen::default();
        let cancel = ChunkCommand::Cancel { chunk: chunk(3, 1) };
        assert!(seen.admit(&run(3, 1)));
        assert!(seen.admit(&cancel));
        assert!(seen.admit(&cancel));
        assert!(!seen.admit(&run(3, 1)));
        // A stale (refused) running report finishes the attempt too.
        assert!(seen.admit(&run(4, 1)));
        seen.reported(&ChunkReport::running(&chunk(4, 1)), Some(false));
        assert!(!seen.admit(&run(4, 1)));
    }

    #[test]
    fn memory_is_bounded_and_forgets_the_oldest() {
        let mut seen = Seen::default();
        let n = u32::try_from(REMEMBERED_ASSIGNMENTS).unwrap() + 10;
        for i in 0..n {
            assert!(seen.admit(&run(i, 1)));
        }
        assert_eq!(seen.phase.len(), REMEMBERED_ASSIGNMENTS);
        assert_eq!(seen.order.len(), REMEMBERED_ASSIGNMENTS);
        assert!(seen.admit(&run(0, 1)), "the oldest was forgotten");
        assert!(!seen.admit(&run(n - 1, 1)));
    }

    #[test]
    fn reports_carry_the_attempt_and_their_state() {
        let c = chunk(7, 3);
        let p = ChunkReport::failed(&c, "broker down", true).to_proto("src-1", Some(12));
        assert_eq!(p.epoch, 12);
        assert_eq!(
            (
                p.component_id.as_str(),
                p.job_id.as_str(),
                p.chunk,
                p.attempt
            ),
            ("src-1", "job", 7, 3)
        );
        assert_eq!(p.state, proto::ChunkReportState::Failed as i32);
        assert!(p.retryable);
        assert_eq!(p.error, "broker down");
        let p = ChunkReport::done(&c, 64).to_proto("src-1", None);
        assert_eq!(p.epoch, 0);
        assert_eq!(
            (p.state, p.records),
            (proto::ChunkReportState::Done as i32, 64)
        );
    }

    #[test]
    fn commands_decode_runs_and_cancels() {
        let p = proto::ChunkCommand {
            job_id: "j".into(),
            chunk: 2,
            from_ledger: 10,
            to_ledger: 20,
            attempt: 1,
            cancel: false,
        };
        assert_eq!(
            ChunkCommand::from_proto(p.clone()),
            Some(ChunkCommand::Run {
                chunk: ChunkAttempt {
                    job: ReplayJobId::new("j"),
                    index: 2,
                    attempt: 1
                },
                from_ledger: 10,
                to_ledger: 20
            })
        );
        let c = ChunkCommand::from_proto(proto::ChunkCommand {
            cancel: true,
            ..p.clone()
        });
        assert!(matches!(c, Some(ChunkCommand::Cancel { .. })));
        let none = ChunkCommand::from_proto(proto::ChunkCommand {
            job_id: String::new(),
            ..p
        });
        assert_eq!(none, None);
    }
}
