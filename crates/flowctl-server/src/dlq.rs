//! The dead-letter path on the control plane.
//!
//! ```text
//! leader:   indexer ── one task per pipeline DLQ topic ── consume from the replicated offsets
//!                      ── IndexDlq { entries, from, next } per partition (compare-and-set)
//! any node: DlqService ── list (linearizable) ── show (reads the record from Kafka, decodes it
//!                      through the schema registry) ── replay / discard (state transitions
//!                      around a produce to the original topic)
//! ```
//!
//! Exactly-once indexing: a batch names the offset it was read from, and apply refuses it if
//! the replicated offset differs. A new leader starts from the replicated offsets, so nothing
//! is indexed twice or lost; a task whose proposal is refused re-reads the offsets and
//! re-assigns its consumer.
//!
//! Replay is `pending → replaying` (attempt + 1) → produce → `replayed`. Only one replay of
//! an entry can be in flight, and an entry already replayed is not published again, so a
//! client that retries a replay does not publish twice. A node that dies between the produce
//! and `replayed` leaves the entry `replaying`; a later replay of such an entry (after
//! [`STALE_REPLAY`]) publishes again, and downstream deduplicates by key (the ledger sequence).

use crate::clock::{now_ms, ts};
use crate::errors::ServiceError;
use crate::spec_cache::SpecCache;
use flowctl_bus::{Consumer, ConsumerOptions, DlqRecord, OutRecord, Producer, StartAt};
use flowctl_proto::admin::v1 as pb;
use flowctl_raft::RaftNode;
use flowctl_state::dlq::{
    entry_id, DlqEntry, DlqState, ExpireDlq, IndexDlq, KafkaPos, SetDlqState,
};
use flowctl_state::{Command, Outcome, Rejection};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// Records per proposal, at most.
const MAX_BATCH: usize = 256;
/// How long a batch waits to fill.
const BATCH_WINDOW: Duration = Duration::from_millis(200);
/// A `replaying` entry older than this may be replayed again (its replayer died).
pub const STALE_REPLAY: Duration = Duration::from_secs(60);
/// How long reading one record back from Kafka may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(15);
/// Header on replayed records: the DLQ entry they replay.
pub const HEADER_REPLAY_OF: &str = "flowctl-replay-of";

/// Where a pipeline's dead letters go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DlqSource {
    pipeline: String,
    topic: String,
    brokers: String,
}

/// What the indexer knows of each stored pipeline, by name: the generation it looked at and
/// the DLQ topic it found (if the pipeline has brokers).
type Known = HashMap<String, (u64, Option<DlqSource>)>;

/// The DLQ topics of every stored pipeline that has brokers. Only pipelines that are new or
/// changed since the last call are looked at, and a document that cannot name brokers (none
/// in it, none on the server) is not even parsed: the store may hold many thousands.
fn sources(
    node: &RaftNode,
    specs: &SpecCache,
    default_brokers: &[String],
    known: &mut Known,
) -> Vec<DlqSource> {
    let changed: Vec<(String, u64, Option<String>)> = node
        .read_stale(|s| {
            known.retain(|name, _| s.pipelines.contains_key(name));
            s.pipelines
                .values()
                .filter(|p| known.get(&p.name).is_none_or(|(g, _)| *g != p.generation))
                .map(|p| {
                    let may_have_brokers =
                        !default_brokers.is_empty() || p.canonical.contains("\"brokers\"");
                    (
                        p.name.clone(),
                        p.generation,
                        may_have_brokers.then(|| p.spec_yaml.clone()),
                    )
                })
                .collect()
        })
        .0;
    for (name, generation, yaml) in changed {
        let source = yaml.and_then(|yaml| {
            let spec = specs.get(&name, generation, &yaml)?;
            let brokers = brokers_of(&spec, default_brokers);
            (!brokers.is_empty()).then(|| DlqSource {
                pipeline: name.clone(),
                topic: flowctl_spec::dlq_topic_name(&spec),
                brokers,
            })
        });
        known.insert(name, (generation, source));
    }
    known.values().filter_map(|(_, s)| s.clone()).collect()
}

fn brokers_of(spec: &flowctl_spec::ValidatedPipeline, default_brokers: &[String]) -> String {
    crate::deploy::brokers_of(spec, default_brokers).join(",")
}

/// Starts the leader's indexer and retention loops.
pub fn start(
    node: RaftNode,
    specs: SpecCache,
    brokers: Vec<String>,
    retention: Option<Duration>,
    cancel: CancellationToken,
    tracker: &tokio_util::task::TaskTracker,
) {
    tracker.spawn(run_indexer(node.clone(), specs, brokers, cancel.clone()));
    if let Some(retention) = retention {
        tracker.spawn(run_retention(node, retention, cancel));
    }
}

async fn run_retention(node: RaftNode, retention: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !node.is_leader() {
            continue;
        }
        let before_ms = now_ms().saturating_sub(retention.as_millis() as u64);
        let any = node
            .read_stale(|s| s.dlq.entries.values().any(|e| e.first_seen_ms < before_ms))
            .0;
        if any {
            if let Err(e) = node
                .propose(Command::ExpireDlq(ExpireDlq { before_ms }))
                .await
            {
                tracing::warn!(error = %e, "DLQ retention not committed");
            }
        }
    }
}

async fn run_indexer(
    node: RaftNode,
    specs: SpecCache,
    brokers: Vec<String>,
    cancel: CancellationToken,
) {
    let mut tasks: HashMap<DlqSource, CancellationToken> = HashMap::new();
    // The per-topic indexers: this loop owns them and waits for them when it stops.
    let children = tokio_util::task::TaskTracker::new();
    let mut known = Known::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let wanted: Vec<DlqSource> = if node.is_leader() {
            sources(&node, &specs, &brokers, &mut known)
        } else {
            known.clear();
            Vec::new()
        };
        tasks.retain(|src, stop| {
            let keep = wanted.contains(src) && !stop.is_cancelled();
            if !keep {
                stop.cancel();
            }
            keep
        });
        for src in wanted {
            if tasks.contains_key(&src) {
                continue;
            }
            let stop = cancel.child_token();
            tasks.insert(src.clone(), stop.clone());
            children.spawn(index_topic(node.clone(), src, stop));
        }
    }
    for stop in tasks.values() {
        stop.cancel();
    }
    children.close();
    children.wait().await;
}

/// Indexes one DLQ topic while this node leads, restarting from the replicated offsets after
/// any refused proposal or error.
async fn index_topic(node: RaftNode, src: DlqSource, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(200);
    while !stop.is_cancelled() {
        match index_once(&node, &src, &stop).await {
            Ok(()) => return,
            Err(e) => {
                tracing::debug!(pipeline = %src.pipeline, topic = %src.topic, error = %e, "DLQ indexer restarts");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn index_once(
    node: &RaftNode,
    src: &DlqSource,
    stop: &CancellationToken,
) -> Result<(), String> {
    let prefix = format!("{}/", src.topic);
    let stored: BTreeMap<(String, i32), i64> = node
        .read_stale(|s| {
            s.dlq
                .offsets
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .filter_map(|(k, v)| {
                    k[prefix.len()..]
                        .parse::<i32>()
                        .ok()
                        .map(|p| ((src.topic.clone(), p), *v))
                })
                .collect()
        })
        .0;
    let consumer = Consumer::assign(
        ConsumerOptions::from_beginning(src.brokers.clone(), vec![src.topic.clone()])
            .with_start(StartAt::Offsets(stored.clone())),
        stop,
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut from: BTreeMap<i32, Option<i64>> =
        stored.iter().map(|((_, p), o)| (*p, Some(*o))).collect();
    loop {
        // Wait for one record, then gather more for a short window.
        let first = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            r = consumer.recv() => r.map_err(|e| e.to_string())?,
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + BATCH_WINDOW;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(r)) => batch.push(r),
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => break,
            }
        }
        let mut by_partition: BTreeMap<i32, Vec<flowctl_bus::Record>> = BTreeMap::new();
        for r in batch {
            by_partition.entry(r.partition).or_default().push(r);
        }
        for (partition, records) in by_partition {
            let Some(last) = records.last().map(|r| r.offset) else {
                continue;
            };
            let at_ms = now_ms();
            let entries = records
                .iter()
                .map(|r| entry_of(&src.pipeline, r, at_ms))
                .collect();
            let cmd = Command::IndexDlq(IndexDlq {
                topic: src.topic.clone(),
                partition,
                from: from.get(&partition).copied().flatten(),
                next: last + 1,
                entries,
            });
            let applied = node.propose(cmd).await.map_err(|e| e.to_string())?;
            match applied.outcome {
                Outcome::DlqIndexed { added } => {
                    metrics::counter!("flowctl_dlq_indexed_total").increment(added as u64);
                    from.insert(partition, Some(last + 1));
                }
                Outcome::Rejected(Rejection::Conflict(m)) => return Err(m),
                other => return Err(format!("unexpected outcome {other:?}")),
            }
        }
    }
}

/// The index entry of a dead-letter record. A record whose headers cannot be read is still
/// indexed (with the reason as its error), never dropped.
fn entry_of(pipeline: &str, r: &flowctl_bus::Record, at_ms: u64) -> DlqEntry {
    let dlq = KafkaPos {
        topic: r.topic.clone(),
        partition: r.partition,
        offset: r.offset,
    };
    let key = r
        .key
        .as_ref()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default();
    let (component, error, source, attempts, envelope) = match DlqRecord::from_headers(&r.headers) {
        Ok(d) => (
            d.component,
            d.error,
            KafkaPos {
                topic: d.source_topic,
                partition: d.source_partition,
                offset: d.source_offset,
            },
            d.attempt,
            d.envelope,
        ),
        Err(e) => (
            String::new(),
            format!("unreadable dead-letter headers: {e}"),
            dlq.clone(),
            1,
            r.envelope().ok(),
        ),
    };
    // One entry per failed input record: a component that fails the same record again (it
    // re-read it after a restart) adds an attempt, not an entry.
    DlqEntry {
        id: entry_id(&source.topic, source.partition, source.offset),
        pipeline: pipeline.to_owned(),
        component,
        error,
        event_type: envelope
            .as_ref()
            .map(|e| e.event_type.clone())
            .unwrap_or_default(),
        schema_id: envelope
            .and_then(|e| e.schema_id)
            .and_then(|s| s.parse().ok()),
        key,
        source,
        dlq,
        first_seen_ms: r
            .timestamp_ms
            .and_then(|t| u64::try_from(t).ok())
            .unwrap_or(at_ms),
        attempts,
        state: DlqState::Pending,
        updated_ms: at_ms,
    }
}

// ---------------------------------------------------------------------------------------------
// The service

#[derive(Clone)]
pub struct DlqApi {
    pub node: RaftNode,
    pub specs: SpecCache,
    pub brokers: Arc<Vec<String>>,
}

fn pos_pb(p: &KafkaPos) -> pb::KafkaPosition {
    pb::KafkaPosition {
        topic: p.topic.clone(),
        partition: p.partition,
        offset: p.offset,
    }
}

fn entry_pb(e: &DlqEntry) -> pb::DlqEntry {
    pb::DlqEntry {
        id: e.id.clone(),
        pipeline: e.pipeline.clone(),
        component: e.component.clone(),
        error: e.error.clone(),
        event_type: e.event_type.clone(),
        schema_id: e.schema_id.unwrap_or(0),
        key: e.key.clone(),
        source: Some(pos_pb(&e.source)),
        dlq: Some(pos_pb(&e.dlq)),
        first_seen: ts(e.first_seen_ms),
        attempts: e.attempts,
        state: e.state.as_str().to_owned(),
        updated_at: ts(e.updated_ms),
    }
}

impl DlqApi {
    /// The brokers of an entry's pipeline.
    fn brokers_for(&self, pipeline: &str) -> Result<String, ServiceError> {
        let rec = self
            .node
            .read_stale(|s| s.pipelines.get(pipeline).cloned())
            .0
            .ok_or_else(|| ServiceError::NotFound(format!("pipeline {pipeline:?} not found")))?;
        let spec = self
            .specs
            .get(&rec.name, rec.generation, &rec.spec_yaml)
            .ok_or_else(|| {
                ServiceError::BadArgument(format!(
                    "the stored pipeline {pipeline} does not validate"
                ))
            })?;
        let b = brokers_of(&spec, &self.brokers);
        if b.is_empty() {
            return Err(ServiceError::FailedPrecondition(format!(
                "pipeline {pipeline} has no Kafka brokers (spec.bus.brokers or server --kafka-brokers)"
            )));
        }
        Ok(b)
    }

    async fn entry(&self, id: &str) -> Result<DlqEntry, ServiceError> {
        let (e, _) = self
            .node
            .read_linearizable(|s| s.dlq.entries.get(id).cloned())
            .await?;
        e.ok_or_else(|| ServiceError::NotFound(format!("DLQ entry {id:?} not found")))
    }

    /// Reads the dead-letter record of `e` back from Kafka.
    async fn fetch(&self, e: &DlqEntry) -> Result<flowctl_bus::Record, ServiceError> {
        let brokers = self.brokers_for(&e.pipeline)?;
        let cancel = CancellationToken::new();
        let want = (e.dlq.topic.clone(), e.dlq.partition);
        let read = async {
            let c = Consumer::assign(
                ConsumerOptions::from_beginning(brokers, vec![e.dlq.topic.clone()]).with_start(
                    StartAt::Offsets([(want.clone(), e.dlq.offset)].into_iter().collect()),
                ),
                &cancel,
            )
            .await?;
            loop {
                let r = c.recv().await?;
                if r.partition == want.1 && r.offset >= e.dlq.offset {
                    return Ok::<_, flowctl_bus::Error>(r);
                }
            }
        };
        let r = tokio::time::timeout(FETCH_TIMEOUT, read).await;
        cancel.cancel();
        match r {
            Ok(Ok(r)) if r.offset == e.dlq.offset => Ok(r),
            Ok(Ok(_)) => Err(ServiceError::NotFound(format!(
                "the dead letter {}/{}@{} is no longer in Kafka (retention?)",
                e.dlq.topic, e.dlq.partition, e.dlq.offset
            ))),
            Ok(Err(err)) => Err(ServiceError::Unavailable(format!("reading the DLQ: {err}"))),
            Err(_) => Err(ServiceError::Unavailable(format!(
                "the dead letter {}/{}@{} could not be read within {FETCH_TIMEOUT:?}",
                e.dlq.topic, e.dlq.partition, e.dlq.offset
            ))),
        }
    }

    /// The registered schema for an entry: by its schema id, else the latest version of its
    /// event type.
    fn schema_for(&self, e: &DlqEntry) -> Option<flowctl_schema::SubjectSchema> {
        self.node
            .read_stale(|s| {
                let reg = &s.schemas;
                let rec = e
                    .schema_id
                    .and_then(|id| reg.schemas.get(&id))
                    .or_else(|| {
                        reg.subjects
                            .get(&e.event_type)
                            .and_then(|x| x.latest())
                            .and_then(|v| reg.schemas.get(&v.schema_id))
                    })?;
                Some(flowctl_schema::SubjectSchema {
                    subject: e.event_type.clone(),
                    package: rec.package.clone(),
                    file: rec.file.clone(),
                    source: rec.source.clone(),
                    descriptor_set: rec.descriptor_set.clone(),
                })
            })
            .0
    }

    async fn set_state(
        &self,
        ids: Vec<String>,
        from: Vec<DlqState>,
        to: DlqState,
        attempt: bool,
    ) -> Result<Vec<String>, ServiceError> {
        let applied = self
            .node
            .propose(Command::SetDlqState(SetDlqState {
                ids,
                from,
                to,
                attempt,
                at_ms: now_ms(),
            }))
            .await?;
        match applied.outcome {
            Outcome::DlqStateSet { changed } => Ok(changed),
            Outcome::Rejected(r) => Err(r.into()),
            other => Err(ServiceError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Replays one entry; see the module docs for why a retry does not publish twice.
    async fn replay_one(&self, producer: &Producer, id: &str) -> pb::DlqActionResult {
        let result = |result: &str, message: String| pb::DlqActionResult {
            id: id.to_owned(),
            result: result.to_owned(),
            message,
            written: None,
        };
        let e = match self.entry(id).await {
            Ok(e) => e,
            Err(err) => return result("failed", err.to_string()),
        };
        let stale = e.state == DlqState::Replaying
            && now_ms().saturating_sub(e.updated_ms) >= STALE_REPLAY.as_millis() as u64;
        let from = match e.state {
            DlqState::Pending => vec![DlqState::Pending],
            DlqState::Replaying if stale => vec![DlqState::Replaying],
            s => return result("skipped", format!("entry is {}", s.as_str())),
        };
        // Fetch first: an entry whose record is gone stays pending.
        let record = match self.fetch(&e).await {
            Ok(r) => r,
            Err(err) => return result("failed", err.to_string()),
        };
        match self
            .set_state(vec![id.to_owned()], from, DlqState::Replaying, true)
            .await
        {
            Ok(changed) if changed.is_empty() => {
                return result("skipped", "another replay got there first".into())
            }
            Ok(_) => {}
            Err(ServiceError::Conflict(m)) => return result("skipped", m),
            Err(err) => return result("failed", err.to_string()),
        }
        let mut out = OutRecord::new(e.source.topic.clone(), record.payload.unwrap_or_default());
        if let Some(k) = record.key {
            out = out.with_key(k);
        }
        if let Ok(Some(env)) = DlqRecord::from_headers(&record.headers).map(|d| d.envelope) {
            out = out.with_envelope(&env);
        }
        out = out
            .with_header(HEADER_REPLAY_OF, id.as_bytes())
            .with_header(flowctl_bus::HEADER_ATTEMPT, (e.attempts + 1).to_string());
        match producer.send(&out).await {
            Ok(d) => {
                let done = self
                    .set_state(
                        vec![id.to_owned()],
                        vec![DlqState::Replaying],
                        DlqState::Replayed,
                        false,
                    )
                    .await;
                metrics::counter!("flowctl_dlq_replayed_total").increment(1);
                pb::DlqActionResult {
                    id: id.to_owned(),
                    result: "replayed".into(),
                    message: match done {
                        Ok(_) => String::new(),
                        Err(err) => format!("published, but not yet marked replayed: {err}"),
                    },
                    written: Some(pb::KafkaPosition {
                        topic: e.source.topic.clone(),
                        partition: d.partition,
                        offset: d.offset,
                    }),
                }
            }
            Err(err) => {
                let _ = self
                    .set_state(
                        vec![id.to_owned()],
                        vec![DlqState::Replaying],
                        DlqState::Pending,
                        false,
                    )
                    .await;
                result("failed", format!("producing to {}: {err}", e.source.topic))
            }
        }
    }

    /// The ids an action applies to: one, or every pending entry of a pipeline.
    async fn targets(
        &self,
        req: &pb::DlqActionRequest,
    ) -> Result<(String, Vec<String>), ServiceError> {
        if !req.id.is_empty() {
            let e = self.entry(&req.id).await?;
            return Ok((e.pipeline, vec![e.id]));
        }
        if req.pipeline.is_empty() || !req.all {
            return Err(ServiceError::BadArgument(
                "give --id ID, or --pipeline NAME --all".into(),
            ));
        }
        let (ids, _) = self
            .node
            .read_linearizable(|s| {
                s.dlq
                    .entries
                    .values()
                    .filter(|e| e.pipeline == req.pipeline && e.state == DlqState::Pending)
                    .map(|e| e.id.clone())
                    .collect::<Vec<_>>()
            })
            .await?;
        Ok((req.pipeline.clone(), ids))
    }
}

#[tonic::async_trait]
impl pb::dlq_service_server::DlqService for DlqApi {
    async fn list(
        &self,
        req: Request<pb::ListDlqRequest>,
    ) -> Result<Response<pb::ListDlqResponse>, Status> {
        let req = req.into_inner();
        if !req.state.is_empty() && DlqState::parse(&req.state).is_none() {
            return Err(ServiceError::BadArgument(format!(
                "state {:?}: expected pending, replaying, replayed or discarded",
                req.state
            ))
            .into());
        }
        let filter = |e: &&DlqEntry| {
            (req.pipeline.is_empty() || e.pipeline == req.pipeline)
                && (req.component.is_empty() || e.component == req.component)
                && (req.state.is_empty() || e.state.as_str() == req.state)
                && e.first_seen_ms >= req.since_ms
        };
        let read = |s: &flowctl_state::State| {
            let mut v: Vec<pb::DlqEntry> = s
                .dlq
                .entries
                .values()
                .filter(filter)
                .map(entry_pb)
                .collect();
            v.sort_by(|a, b| {
                (a.first_seen.as_ref().map(|t| (t.seconds, t.nanos)), &a.id)
                    .cmp(&(b.first_seen.as_ref().map(|t| (t.seconds, t.nanos)), &b.id))
            });
            v
        };
        let (entries, meta) = match pb::Consistency::try_from(req.consistency) {
            Ok(pb::Consistency::Stale) => self.node.read_stale(read),
            _ => self
                .node
                .read_linearizable(read)
                .await
                .map_err(ServiceError::from)?,
        };
        Ok(Response::new(pb::ListDlqResponse {
            entries,
            meta: Some(crate::api::meta_pb(meta)),
        }))
    }

    async fn show(
        &self,
        req: Request<pb::ShowDlqRequest>,
    ) -> Result<Response<pb::ShowDlqResponse>, Status> {
        let id = req.into_inner().id;
        let e = self.entry(&id).await?;
        let r = self.fetch(&e).await?;
        let payload = r.payload.clone().unwrap_or_default();
        let (payload_json, decode_error) = match self.schema_for(&e) {
            Some(schema) => match flowctl_schema::decode_json(&schema, &payload) {
                Ok(v) => (v.to_string(), String::new()),
                Err(err) => (String::new(), err.to_string()),
            },
            None => (
                String::new(),
                format!("event type {:?} is not a registered schema", e.event_type),
            ),
        };
        Ok(Response::new(pb::ShowDlqResponse {
            entry: Some(entry_pb(&e)),
            payload,
            payload_json,
            decode_error,
            headers: r
                .headers
                .iter()
                .map(|(k, v)| (k.to_owned(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
        }))
    }

    async fn replay(
        &self,
        req: Request<pb::DlqActionRequest>,
    ) -> Result<Response<pb::DlqActionResponse>, Status> {
        let req = req.into_inner();
        let (pipeline, ids) = self.targets(&req).await?;
        let what = format!("dlq/{pipeline} ({} entries)", ids.len());
        let brokers = self.brokers_for(&pipeline)?;
        let producer = Producer::connect(&brokers)
            .await
            .map_err(|e| ServiceError::Unavailable(format!("Kafka producer: {e}")))?;
        let mut results = Vec::with_capacity(ids.len());
        for id in ids {
            results.push(self.replay_one(&producer, &id).await);
        }
        let resp = Response::new(pb::DlqActionResponse { results });
        Ok(crate::audit::resource(resp, what))
    }

    async fn discard(
        &self,
        req: Request<pb::DlqActionRequest>,
    ) -> Result<Response<pb::DlqActionResponse>, Status> {
        let req = req.into_inner();
        let (pipeline, ids) = self.targets(&req).await?;
        let what = format!("dlq/{pipeline} ({} entries)", ids.len());
        if ids.is_empty() {
            return Ok(Response::new(pb::DlqActionResponse { results: vec![] }));
        }
        let changed = self
            .set_state(
                ids.clone(),
                vec![DlqState::Pending],
                DlqState::Discarded,
                false,
            )
            .await?;
        let results = ids
            .into_iter()
            .map(|id| {
                let done = changed.contains(&id);
                pb::DlqActionResult {
                    result: if done { "discarded" } else { "skipped" }.into(),
                    message: if done {
                        String::new()
                    } else {
                        "not pending".into()
                    },
                    id,
                    written: None,
                }
            })
            .collect();
        let resp = Response::new(pb::DlqActionResponse { results });
        Ok(crate::audit::resource(resp, what))
    }
}
