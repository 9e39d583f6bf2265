//! Range replay: carrying out the chunk commands the control plane assigns to this instance.
//!
//! ```text
//!  control plane          dispatcher (run_replays)            worker (at most N)
//!    │── Run(chunk) ──────────▶│ queue (≤ MAX_QUEUED_CHUNKS)
//!    │                         │── start when a slot is free ──────▶│
//!    │◀───────────────────────────────────────── RUNNING ───────────│ accepted=false: stop
//!    │                         │                                    │ produce from..=to,
//!    │                         │                                    │ wait for every ack
//!    │◀──────────────────────────────────────── DONE(records) ──────│
//!    │── Cancel(chunk) ───────▶│── stop token ─────────────────────▶│ stops, reports nothing
//! ```
//!
//! A chunk produces one record per ledger, exactly as the live path does (same key, envelope
//! and payload), except that `RawLedgerChunk.job_id` is the replay job's id and two headers
//! name the job ([`HEADER_REPLAY_JOB`]) and the chunk index ([`HEADER_REPLAY_CHUNK`]).
//!
//! Failure classes: anything the broker says (a produce or delivery error, the topic not
//! ready) is retryable; a range this source cannot produce (`from > to`, below
//! [`FIRST_LEDGER`] or above [`LAST_LEDGER`]) or a ledger that cannot be encoded is not.
//!
//! When the source shuts down, running chunks stop without a report: the attempt is not the
//! chunk's fault, and the control plane takes the chunk back from an instance that is gone
//! without charging it a failure.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use flowctl_agent::{
    AgentHandle, CancellationToken, ChunkAttempt, ChunkCommand, ChunkCommands, ChunkReport,
    Counter, Error as AgentError, Gauge, ReplayJobId,
};
use flowctl_bus::{Delivered, OutRecord, Producer, TopicSpec};
use tokio::sync::OnceCell;
use tokio::task::JoinSet;

use crate::source::{build_record, SourceConfig, MAX_IN_FLIGHT};
use crate::synthetic::Generator;

/// Header naming the replay job a record was written for.
pub const HEADER_REPLAY_JOB: &str = "flowctl-replay-job";
/// Header with the index (decimal) of the chunk a record was written for.
pub const HEADER_REPLAY_CHUNK: &str = "flowctl-replay-chunk";
/// Chunks worked on at once when `REPLAY_CONCURRENCY` is not set.
pub const DEFAULT_REPLAY_CONCURRENCY: usize = 2;
/// Chunks that may wait for a free worker; beyond that the dispatcher stops taking commands,
/// which pushes back through the agent's bounded channel to the command stream.
pub const MAX_QUEUED_CHUNKS: usize = 64;
/// The first ledger the generator makes (ledger 1 is the genesis ledger, which has no close
/// meta in a real data lake either).
pub const FIRST_LEDGER: u64 = 2;
/// The last ledger the generator can make: sequences are `u32`.
pub const LAST_LEDGER: u64 = u32::MAX as u64;
/// How long the first chunk may wait for the output topic.
const TOPIC_TIMEOUT: Duration = Duration::from_secs(30);

/// The replay part of the source's configuration (see the crate docs for the variables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayConfig {
    /// Chunks worked on at once (`REPLAY_CONCURRENCY`).
    pub concurrency: usize,
    pub inject: FailureInjection,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            concurrency: DEFAULT_REPLAY_CONCURRENCY,
            inject: FailureInjection::default(),
        }
    }
}

/// Deterministic failures for tests, by chunk index. They strike after the RUNNING report and
/// before any record is produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailureInjection {
    /// `REPLAY_FAIL_RETRYABLE`: chunk index → the number of first attempts (attempts are
    /// counted from 1 by the control plane) that fail retryably.
    pub retryable: BTreeMap<u32, u32>,
    /// `REPLAY_FAIL_FATAL`: chunk indexes that fail non-retryably.
    pub fatal: BTreeSet<u32>,
}

impl FailureInjection {
    /// The injected failure for `chunk`, if any: `(message, retryable)`.
    pub fn failure(&self, chunk: &ChunkAttempt) -> Option<(String, bool)> {
        if self.fatal.contains(&chunk.index) {
            return Some((
                format!("injected fatal failure of chunk {}", chunk.index),
                false,
            ));
        }
        match self.retryable.get(&chunk.index) {
            Some(&n) if chunk.attempt <= n => Some((
                format!(
                    "injected broker failure of chunk {} (attempt {} of the first {n})",
                    chunk.index, chunk.attempt
                ),
                true,
            )),
            _ => None,
        }
    }
}

impl ReplayConfig {
    /// Reads `REPLAY_CONCURRENCY`, `REPLAY_FAIL_RETRYABLE` and `REPLAY_FAIL_FATAL` from `get`
    /// (blank values already removed), adding a line to `problems` for each bad one.
    pub(crate) fn from_vars(
        get: impl Fn(&str) -> Option<String>,
        problems: &mut Vec<String>,
    ) -> Self {
        let mut config = ReplayConfig::default();
        if let Some(v) = get("REPLAY_CONCURRENCY") {
            match v.parse::<usize>() {
                Ok(n) if n > 0 => config.concurrency = n,
                _ => problems.push(format!(
                    "REPLAY_CONCURRENCY={v:?}: expected a positive number"
                )),
            }
        }
        if let Some(v) = get("REPLAY_FAIL_RETRYABLE") {
            for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let parsed = item
                    .split_once(':')
                    .and_then(|(c, n)| Some((c.trim().parse().ok()?, n.trim().parse().ok()?)));
                match parsed {
                    Some((chunk, attempts)) => {
                        config.inject.retryable.insert(chunk, attempts);
                    }
                    None => problems.push(format!(
                        "REPLAY_FAIL_RETRYABLE item {item:?}: expected <chunk index>:<attempts>"
                    )),
                }
            }
        }
        if let Some(v) = get("REPLAY_FAIL_FATAL") {
            for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                match item.parse() {
                    Ok(chunk) => {
                        config.inject.fatal.insert(chunk);
                    }
                    Err(_) => problems.push(format!(
                        "REPLAY_FAIL_FATAL item {item:?}: expected a chunk index"
                    )),
                }
            }
        }
        config
    }
}

/// The record for ledger `sequence` written by a replay of `chunk`.
pub fn replay_record(
    generator: &Generator,
    config: &SourceConfig,
    chunk: &ChunkAttempt,
    sequence: u32,
) -> anyhow::Result<OutRecord> {
    Ok(
        build_record(generator, config, sequence, chunk.job.as_str())?
            .with_header(HEADER_REPLAY_JOB, chunk.job.as_str())
            .with_header(HEADER_REPLAY_CHUNK, chunk.index.to_string()),
    )
}

/// What became of one chunk attempt (logged and counted by the worker).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Done {
        records: u64,
    },
    Failed {
        retryable: bool,
    },
    /// A cancel command, the control plane refusing a report, or the source shutting down.
    Stopped,
}

/// What the workers share.
struct Ctx {
    config: SourceConfig,
    generator: Generator,
    producer: Producer,
    agent: AgentHandle,
    topic_ready: OnceCell<()>,
    ledgers: Counter,
    done: Counter,
    failed: Counter,
    stopped: Counter,
    running: Gauge,
}

/// A chunk waiting for or holding a worker.
struct Work {
    chunk: ChunkAttempt,
    from_ledger: u64,
    to_ledger: u64,
}

/// Carries out chunk commands until `cancel` fires or the commands end (the agent stopped),
/// with at most `config.replay.concurrency` chunks at once. Returns after every worker ended.
#[tracing::instrument(name = "replay", skip_all, fields(topic = %config.output_topic))]
pub async fn run_replays(
    config: &SourceConfig,
    agent: &AgentHandle,
    mut commands: ChunkCommands,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let generator = Generator::new(&config.network_passphrase)
        .context("while setting up the ledger generator")?;
    let producer = Producer::new(&config.brokers).context("while creating the producer")?;
    let ctx = Arc::new(Ctx {
        config: config.clone(),
        generator,
        producer,
        agent: agent.clone(),
        topic_ready: OnceCell::new(),
        ledgers: agent.counter("flowctl_source_replay_ledgers_total"),
        done: agent.counter("flowctl_source_replay_chunks_done_total"),
        failed: agent.counter("flowctl_source_replay_chunks_failed_total"),
        stopped: agent.counter("flowctl_source_replay_chunks_stopped_total"),
        running: agent.gauge("flowctl_source_replay_chunks_running"),
    });
    let concurrency = config.replay.concurrency.max(1);
    tracing::info!(concurrency, "serving chunk commands");

    let mut board = Board::default();
    let mut tasks: HashMap<tokio::task::Id, ChunkAttempt> = HashMap::new();
    let mut workers: JoinSet<Outcome> = JoinSet::new();
    loop {
        while workers.len() < concurrency {
            let Some((work, stop)) = board.start_next(cancel) else {
                break;
            };
            let chunk = work.chunk.clone();
            let handle = workers.spawn(run_chunk(ctx.clone(), work, stop));
            tasks.insert(handle.id(), chunk);
        }
        ctx.running.set(workers.len() as f64);
        tokio::select! {
            () = cancel.cancelled() => break,
            command = commands.recv(), if board.queued.len() < MAX_QUEUED_CHUNKS => match command {
                None => break,
                Some(command) => board.apply(command),
            },
            Some(joined) = workers.join_next_with_id(), if !workers.is_empty() => {
                let (id, panicked) = match joined {
                    Ok((id, _)) => (id, false),
                    Err(e) => (e.id(), true),
                };
                if let Some(chunk) = tasks.remove(&id) {
                    if panicked {
                        tracing::error!(%chunk, "chunk worker panicked; the control plane will reassign the chunk");
                    }
                    board.ended(&chunk);
                }
            }
        }
    }
    board.stop_all();
    while workers.join_next().await.is_some() {}
    ctx.running.set(0.0);
    tracing::info!("stopped serving chunk commands");
    Ok(())
}

/// The chunks waiting for a worker and the stop tokens of those running. What a command
/// does to them is decided here, apart from the tasks.
#[derive(Default)]
struct Board {
    queued: VecDeque<Work>,
    running: HashMap<(ReplayJobId, u32), (u32, CancellationToken)>,
}

impl Board {
    fn apply(&mut self, command: ChunkCommand) {
        match command {
            ChunkCommand::Run {
                chunk,
                from_ledger,
                to_ledger,
            } => {
                // A newer attempt at a chunk supersedes an older one still here: the control
                // plane would refuse the older one's reports anyway.
                self.stop(&chunk, |attempt| attempt < chunk.attempt);
                tracing::debug!(%chunk, from_ledger, to_ledger, "chunk queued");
                self.queued.push_back(Work {
                    chunk,
                    from_ledger,
                    to_ledger,
                });
            }
            // A cancel stops the attempt it names and older ones (attempt 0 names any), never
            // a newer attempt that may already be here.
            ChunkCommand::Cancel { chunk } => {
                tracing::info!(%chunk, "chunk cancelled by the control plane");
                self.stop(&chunk, |attempt| {
                    chunk.attempt == 0 || attempt <= chunk.attempt
                });
            }
        }
    }

    /// Drops queued attempts at `chunk`'s chunk and stops running ones, where `applies`.
    fn stop(&mut self, chunk: &ChunkAttempt, applies: impl Fn(u32) -> bool) {
        self.queued.retain(|w| {
            !(w.chunk.job == chunk.job && w.chunk.index == chunk.index && applies(w.chunk.attempt))
        });
        if let Some((attempt, stop)) = self.running.get(&(chunk.job.clone(), chunk.index)) {
            if applies(*attempt) {
                stop.cancel();
            }
        }
    }

    /// The next queued chunk, now counted as running under a new stop token.
    fn start_next(&mut self, cancel: &CancellationToken) -> Option<(Work, CancellationToken)> {
        let work = self.queued.pop_front()?;
        let stop = cancel.child_token();
        self.running.insert(
            (work.chunk.job.clone(), work.chunk.index),
            (work.chunk.attempt, stop.clone()),
        );
        Some((work, stop))
    }

    fn ended(&mut self, chunk: &ChunkAttempt) {
        let key = (chunk.job.clone(), chunk.index);
        // A newer attempt may have taken the slot already.
        if self
            .running
            .get(&key)
            .is_some_and(|(a, _)| *a == chunk.attempt)
        {
            self.running.remove(&key);
        }
    }

    fn stop_all(&mut self) {
        self.queued.clear();
        for (_, stop) in self.running.values() {
            stop.cancel();
        }
    }
}

type Ack = Pin<Box<dyn Future<Output = Result<Delivered, flowctl_bus::Error>> + Send>>;

#[tracing::instrument(name = "chunk", skip_all, fields(job = %work.chunk.job, chunk = work.chunk.index, attempt = work.chunk.attempt))]
async fn run_chunk(ctx: Arc<Ctx>, work: Work, stop: CancellationToken) -> Outcome {
    let chunk = &work.chunk;
    match ctx.agent.report_chunk(&ChunkReport::running(chunk)).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!("the control plane gave this chunk to another attempt; not starting");
            ctx.stopped.inc();
            return Outcome::Stopped;
        }
        Err(AgentError::ChunkReport { source, .. }) if is_final(&source) => {
            tracing::info!(code = ?source.code(), message = source.message(), "the control plane refused the chunk; not starting");
            ctx.stopped.inc();
            return Outcome::Stopped;
        }
        // The control plane is unreachable for now: do the work, the final report may get
        // through.
        Err(e) => tracing::warn!(error = %e, "could not report the chunk as running"),
    }
    let outcome = match produce(&ctx, &work, &stop).await {
        Ok(Some(records)) => {
            let outcome = Outcome::Done { records };
            finish(&ctx, ChunkReport::done(chunk, records)).await;
            outcome
        }
        Ok(None) => Outcome::Stopped,
        Err(ChunkError { message, retryable }) => {
            tracing::warn!(error = %message, retryable, "chunk failed");
            finish(&ctx, ChunkReport::failed(chunk, message, retryable)).await;
            Outcome::Failed { retryable }
        }
    };
    match &outcome {
        Outcome::Done { records } => {
            ctx.done.inc();
            tracing::info!(records, "chunk done");
        }
        Outcome::Failed { .. } => ctx.failed.inc(),
        Outcome::Stopped => {
            ctx.stopped.inc();
            tracing::info!("chunk stopped");
        }
    }
    outcome
}

/// Sends a terminal report; what the control plane answers changes nothing here any more.
async fn finish(ctx: &Ctx, report: ChunkReport) {
    match ctx.agent.report_chunk(&report).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::info!("the control plane did not accept the report: the chunk had moved on")
        }
        Err(e) => {
            tracing::error!(error = %e, "could not report the chunk; the control plane will hand it out again")
        }
    }
}

/// The control plane's answer is final: the job or chunk is gone or not in a state to run.
fn is_final(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::NotFound | Code::FailedPrecondition | Code::InvalidArgument | Code::PermissionDenied
    )
}

#[derive(Debug)]
struct ChunkError {
    message: String,
    retryable: bool,
}

impl ChunkError {
    fn fatal(message: impl Into<String>) -> Self {
        ChunkError {
            message: message.into(),
            retryable: false,
        }
    }

    fn retryable(message: impl Into<String>) -> Self {
        ChunkError {
            message: message.into(),
            retryable: true,
        }
    }
}

/// Produces the chunk's ledgers and waits for every acknowledgement. `Ok(None)`: stopped.
async fn produce(
    ctx: &Ctx,
    work: &Work,
    stop: &CancellationToken,
) -> Result<Option<u64>, ChunkError> {
    let chunk = &work.chunk;
    if let Some((message, retryable)) = ctx.config.replay.inject.failure(chunk) {
        return Err(ChunkError { message, retryable });
    }
    let (from, to) = checked_range(work.from_ledger, work.to_ledger)?;
    let topic = ctx.topic_ready.get_or_try_init(|| async {
        flowctl_bus::ensure_topics(
            &ctx.config.brokers,
            &[TopicSpec::new(&ctx.config.output_topic)],
            TOPIC_TIMEOUT,
        )
        .await
    });
    tokio::select! {
        () = stop.cancelled() => return Ok(None),
        r = topic => r.map_err(|e| ChunkError::retryable(format!("output topic not ready: {e}")))?,
    };
    tracing::info!(from, to, "replaying ledgers");
    let mut in_flight: VecDeque<(u32, Ack)> = VecDeque::new();
    let mut records = 0u64;
    for seq in from..=to {
        if in_flight.len() >= MAX_IN_FLIGHT {
            if let Some((s, ack)) = in_flight.pop_front() {
                if !settle(s, ack, stop).await? {
                    return Ok(None);
                }
                records += 1;
            }
        }
        if stop.is_cancelled() {
            return Ok(None);
        }
        let record = replay_record(&ctx.generator, &ctx.config, chunk, seq)
            .map_err(|e| ChunkError::fatal(format!("{e:#}")))?;
        let ack = tokio::select! {
            () = stop.cancelled() => return Ok(None),
            r = ctx.producer.enqueue(&record) => r.map_err(|e| ChunkError::retryable(e.to_string()))?,
        };
        in_flight.push_back((seq, Box::pin(ack)));
        ctx.ledgers.inc();
    }
    while let Some((s, ack)) = in_flight.pop_front() {
        if !settle(s, ack, stop).await? {
            return Ok(None);
        }
        records += 1;
    }
    Ok(Some(records))
}

/// Waits for one acknowledgement; `Ok(false)`: stopped first.
async fn settle(seq: u32, ack: Ack, stop: &CancellationToken) -> Result<bool, ChunkError> {
    tokio::select! {
        () = stop.cancelled() => Ok(false),
        r = ack => r
            .map(|_| true)
            .map_err(|e| ChunkError::retryable(format!("ledger {seq} was not delivered: {e}"))),
    }
}

/// The range as ledger sequences, or a non-retryable error naming what is wrong with it.
fn checked_range(from: u64, to: u64) -> Result<(u32, u32), ChunkError> {
    if from > to {
        return Err(ChunkError::fatal(format!(
            "bad range {from}..={to}: the first ledger is after the last"
        )));
    }
    if from < FIRST_LEDGER || to > LAST_LEDGER {
        return Err(ChunkError::fatal(format!(
            "bad range {from}..={to}: this source produces ledgers {FIRST_LEDGER}..={LAST_LEDGER}"
        )));
    }
    let narrow = |l: u64| u32::try_from(l).map_err(|_| ChunkError::fatal("unreachable"));
    Ok((narrow(from)?, narrow(to)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(index: u32, attempt: u32) -> ChunkAttempt {
        ChunkAttempt {
            job: ReplayJobId::new("j"),
            index,
            attempt,
        }
    }

    fn parse(pairs: &[(&str, &str)]) -> (ReplayConfig, Vec<String>) {
        let m: HashMap<&str, &str> = pairs.iter().copied().collect();
        let mut problems = Vec::new();
        let c = ReplayConfig::from_vars(|k| m.get(k).map(|v| (*v).to_owned()), &mut problems);
        (c, problems)
    }

    #[test]
    fn failure_injection_is_read_and_applies_to_the_first_attempts() {
        let (c, problems) = parse(&[
            ("REPLAY_CONCURRENCY", "3"),
            ("REPLAY_FAIL_RETRYABLE", "2:1, 5:2"),
            ("REPLAY_FAIL_FATAL", "7,8"),
        ]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(c.concurrency, 3);
        assert_eq!(c.inject.failure(&chunk(2, 1)).map(|f| f.1), Some(true));
        assert_eq!(c.inject.failure(&chunk(2, 2)), None);
        assert_eq!(c.inject.failure(&chunk(5, 2)).map(|f| f.1), Some(true));
        assert_eq!(c.inject.failure(&chunk(5, 3)), None);
        assert_eq!(c.inject.failure(&chunk(7, 9)).map(|f| f.1), Some(false));
        assert_eq!(c.inject.failure(&chunk(0, 1)), None);
    }

    #[test]
    fn every_bad_replay_variable_is_reported() {
        let (c, problems) = parse(&[
            ("REPLAY_CONCURRENCY", "0"),
            ("REPLAY_FAIL_RETRYABLE", "2"),
            ("REPLAY_FAIL_FATAL", "x"),
        ]);
        assert_eq!(c.concurrency, DEFAULT_REPLAY_CONCURRENCY);
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    fn run(index: u32, attempt: u32) -> ChunkCommand {
        ChunkCommand::Run {
            chunk: chunk(index, attempt),
            from_ledger: 10,
            to_ledger: 20,
        }
    }

    fn queued(board: &Board) -> Vec<(u32, u32)> {
        board
            .queued
            .iter()
            .map(|w| (w.chunk.index, w.chunk.attempt))
            .collect()
    }

    #[test]
    fn cancels_stop_their_attempt_and_older_ones_but_not_newer_ones() {
        let cancel = CancellationToken::new();
        let mut board = Board::default();
        board.apply(run(0, 2));
        board.apply(run(1, 1));
        board.apply(run(2, 1));
        let (_, stop0) = board.start_next(&cancel).unwrap();
        board.apply(ChunkCommand::Cancel { chunk: chunk(0, 1) });
        assert!(!stop0.is_cancelled(), "a stale cancel");
        board.apply(ChunkCommand::Cancel { chunk: chunk(0, 2) });
        assert!(stop0.is_cancelled());
        board.apply(ChunkCommand::Cancel { chunk: chunk(1, 0) });
        assert_eq!(queued(&board), [(2, 1)]);
        board.ended(&chunk(0, 2));
        assert!(board.running.is_empty());
    }

    #[test]
    fn a_newer_attempt_supersedes_the_older_one() {
        let cancel = CancellationToken::new();
        let mut board = Board::default();
        board.apply(run(0, 1));
        let (_, old) = board.start_next(&cancel).unwrap();
        board.apply(run(1, 1));
        board.apply(run(1, 2));
        board.apply(run(0, 2));
        assert!(old.is_cancelled());
        assert_eq!(queued(&board), [(1, 2), (0, 2)]);
        let (_, new) = board.start_next(&cancel).unwrap();
        let (_, newer) = board.start_next(&cancel).unwrap();
        // The old attempt ending does not forget the new one's token.
        board.ended(&chunk(0, 1));
        board.stop_all();
        assert!(new.is_cancelled() && newer.is_cancelled());
    }

    #[test]
    fn bad_ranges_are_not_retryable() {
        assert_eq!(checked_range(10, 12).unwrap(), (10, 12));
        assert_eq!(checked_range(2, 2).unwrap(), (2, 2));
        for (from, to) in [(12, 10), (0, 5), (1, 1), (10, LAST_LEDGER + 1)] {
            let e = checked_range(from, to).unwrap_err();
            assert!(!e.retryable, "{from}..={to}");
            assert!(e.message.contains("bad range"), "{}", e.message);
        }
    }
}
