//! openraft state-machine storage: the in-memory [`State`] mirrored into the `sm` column
//! family, and snapshots as files under `<data-dir>/snapshots`.

use crate::{
    blocking, cf, Entry, LogId, SnapshotMeta, StoredMembership, TypeConfig, CF_SM, CF_SM_META,
};
use flowctl_state::{codec, ComponentId, ComponentRecord, NodeId, Outcome, State, Touched};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError};
use rocksdb::{IteratorMode, WriteBatch, WriteOptions, DB};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

const KEY_APPLIED: &[u8] = b"applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
const KEY_SNAPSHOT: &[u8] = b"snapshot";
const PIPELINE_PREFIX: &str = "p/";
const REMOVED_PREFIX: &str = "r/";
const COMPONENT_PREFIX: &str = "c/";
const PLACEMENT_PREFIX: &str = "l/";
const RUNTIME_PREFIX: &str = "x/";
const REPLAY_JOB_PREFIX: &str = "Q/";
const REPLAY_CHUNK_PREFIX: &str = "K/";
const DLQ_ENTRY_PREFIX: &str = "D/";
const DLQ_OFFSET_PREFIX: &str = "O/";
const SUBJECT_PREFIX: &str = "S/";
const SCHEMA_PREFIX: &str = "I/";
const SCHEMA_META_KEY: &str = "M/schema-registry";
const TOKEN_PREFIX: &str = "T/";
const AUTH_META_KEY: &str = "M/auth";
const AUDIT_PREFIX: &str = "U/";
const AUDIT_META_KEY: &str = "M/audit";
const REQUEST_PREFIX: &str = "q/";

/// What [`AUTH_META_KEY`] holds: the part of [`flowctl_state::auth::AuthState`] that is not a
/// token. The tokens are records of their own, so that creating one writes one record.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct AuthMeta {
    enabled: bool,
    revision: u64,
}

impl AuthMeta {
    fn of(auth: &flowctl_state::auth::AuthState) -> Self {
        AuthMeta {
            enabled: auth.enabled,
            revision: auth.revision,
        }
    }
}

/// What [`AUDIT_META_KEY`] holds: the part of [`flowctl_state::audit::AuditLog`] that is not a
/// record. The records are records of their own, so that appending one writes one record.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct AuditMeta {
    next_seq: u64,
}

impl AuditMeta {
    fn of(audit: &flowctl_state::audit::AuditLog) -> Self {
        AuditMeta {
            next_seq: audit.next_seq,
        }
    }
}

/// What has been applied, as openraft sees it.
#[derive(Debug, Clone, Default)]
pub struct AppliedState {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

#[derive(Default)]
struct Inner {
    state: State,
    applied: AppliedState,
}

/// A cheap, cloneable read handle on the local state machine.
///
/// It reads whatever this node has applied: callers that need linearizable reads first wait
/// for the applied index to reach a read index (see `flowctl-raft`).
#[derive(Clone)]
pub struct StateReader {
    inner: Arc<RwLock<Inner>>,
}

impl StateReader {
    /// Runs `f` on the local state and the index it reflects.
    pub fn read<T>(&self, f: impl FnOnce(&State, u64) -> T) -> T {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let applied = g.applied.last_applied.map(|l| l.index).unwrap_or(0);
        f(&g.state, applied)
    }
}

/// The state machine half of the store.
pub struct StateMachineStore {
    db: Arc<DB>,
    inner: Arc<RwLock<Inner>>,
    snap_dir: PathBuf,
    seq: Arc<AtomicU64>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    file: String,
}

fn sm_read(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::<u64>::read_state_machine(&e).into()
}

fn sm_write(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::<u64>::write_state_machine(&e).into()
}

fn snap_write(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::<u64>::write_snapshot(None, &e).into()
}

fn snap_read(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::<u64>::read_snapshot(None, &e).into()
}

fn pipeline_key(name: &str) -> Vec<u8> {
    format!("{PIPELINE_PREFIX}{name}").into_bytes()
}

fn replay_job_key(id: &str) -> Vec<u8> {
    format!("{REPLAY_JOB_PREFIX}{id}").into_bytes()
}

fn replay_chunk_key(id: &str, index: u32) -> Vec<u8> {
    format!("{REPLAY_CHUNK_PREFIX}{id}/{index:010}").into_bytes()
}

fn dlq_entry_key(id: &str) -> Vec<u8> {
    format!("{DLQ_ENTRY_PREFIX}{id}").into_bytes()
}

fn dlq_offset_key(k: &str) -> Vec<u8> {
    format!("{DLQ_OFFSET_PREFIX}{k}").into_bytes()
}

fn subject_key(name: &str) -> Vec<u8> {
    format!("{SUBJECT_PREFIX}{name}").into_bytes()
}

fn schema_key(id: u64) -> Vec<u8> {
    // Zero-padded so that keys sort by id.
    format!("{SCHEMA_PREFIX}{id:020}").into_bytes()
}

fn token_key(name: &str) -> Vec<u8> {
    format!("{TOKEN_PREFIX}{name}").into_bytes()
}

fn audit_key(seq: u64) -> Vec<u8> {
    // Zero-padded so that keys sort by sequence number.
    format!("{AUDIT_PREFIX}{seq:020}").into_bytes()
}

fn request_key(id: &flowctl_state::requests::RequestId) -> Vec<u8> {
    format!("{REQUEST_PREFIX}{}", id.0).into_bytes()
}

fn runtime_key(pipeline: &str) -> Vec<u8> {
    format!("{RUNTIME_PREFIX}{pipeline}").into_bytes()
}

fn placement_key(pipeline: &str) -> Vec<u8> {
    format!("{PLACEMENT_PREFIX}{pipeline}").into_bytes()
}

fn component_key(id: &ComponentId) -> Vec<u8> {
    format!("{COMPONENT_PREFIX}{}", id.0).into_bytes()
}

fn removed_key(id: NodeId) -> Vec<u8> {
    format!("{REMOVED_PREFIX}{}", id.0).into_bytes()
}

impl StateMachineStore {
    pub(crate) fn load(db: Arc<DB>, snap_dir: PathBuf) -> Result<Self, StorageError<u64>> {
        let mut inner = Inner::default();
        for item in db.iterator_cf(cf(&db, CF_SM), IteratorMode::Start) {
            let (k, v) = item.map_err(sm_read)?;
            let key = String::from_utf8_lossy(&k);
            if let Some(name) = key.strip_prefix(PIPELINE_PREFIX) {
                let rec = codec::decode_pipeline(&v).map_err(sm_read)?;
                inner.state.pipelines.insert(name.to_owned(), rec);
            } else if let Some(name) = key.strip_prefix(PLACEMENT_PREFIX) {
                let p = codec::decode("placement", &v).map_err(sm_read)?;
                inner.state.placements.insert(name.to_owned(), p);
            } else if key.starts_with(REPLAY_JOB_PREFIX) {
                let j: flowctl_state::replay::Job =
                    codec::decode("replay job", &v).map_err(sm_read)?;
                inner.state.replays.jobs.insert(j.id.clone(), j);
            } else if let Some(rest) = key.strip_prefix(REPLAY_CHUNK_PREFIX) {
                let c: flowctl_state::replay::Chunk =
                    codec::decode("replay chunk", &v).map_err(sm_read)?;
                let job = rest.rsplit_once('/').map(|(j, _)| j).unwrap_or(rest);
                inner
                    .state
                    .replays
                    .chunks
                    .entry(job.to_owned())
                    .or_default()
                    .insert(c.index, c);
            } else if let Some(id) = key.strip_prefix(DLQ_ENTRY_PREFIX) {
                let e = codec::decode("DLQ entry", &v).map_err(sm_read)?;
                inner.state.dlq.entries.insert(id.to_owned(), e);
            } else if let Some(k) = key.strip_prefix(DLQ_OFFSET_PREFIX) {
                let o = codec::decode("DLQ offset", &v).map_err(sm_read)?;
                inner.state.dlq.offsets.insert(k.to_owned(), o);
            } else if let Some(name) = key.strip_prefix(SUBJECT_PREFIX) {
                let subject = codec::decode("schema subject", &v).map_err(sm_read)?;
                inner
                    .state
                    .schemas
                    .subjects
                    .insert(name.to_owned(), subject);
            } else if key.starts_with(SCHEMA_PREFIX) {
                let rec: flowctl_state::schemas::SchemaRecord =
                    codec::decode("schema", &v).map_err(sm_read)?;
                inner.state.schemas.schemas.insert(rec.id, rec);
            } else if key == SCHEMA_META_KEY {
                inner.state.schemas.meta =
                    codec::decode("schema registry meta", &v).map_err(sm_read)?;
            } else if let Some(name) = key.strip_prefix(TOKEN_PREFIX) {
                let t = codec::decode("auth token", &v).map_err(sm_read)?;
                inner.state.auth.tokens.insert(name.to_owned(), t);
            } else if key == AUTH_META_KEY {
                let m: AuthMeta = codec::decode("auth meta", &v).map_err(sm_read)?;
                inner.state.auth.enabled = m.enabled;
                inner.state.auth.revision = m.revision;
            } else if key.starts_with(AUDIT_PREFIX) {
                let rec: flowctl_state::audit::AuditRecord =
                    codec::decode("audit record", &v).map_err(sm_read)?;
                inner.state.audit.records.insert(rec.seq, rec);
            } else if key == AUDIT_META_KEY {
                let m: AuditMeta = codec::decode("audit meta", &v).map_err(sm_read)?;
                inner.state.audit.next_seq = m.next_seq;
            } else if key.starts_with(REQUEST_PREFIX) {
                let r: flowctl_state::requests::Remembered =
                    codec::decode("remembered request", &v).map_err(sm_read)?;
                inner.state.requests.insert_loaded(r);
            } else if let Some(name) = key.strip_prefix(RUNTIME_PREFIX) {
                let r = codec::decode("pipeline runtime", &v).map_err(sm_read)?;
                inner.state.runtime.insert(name.to_owned(), r);
            } else if key.starts_with(COMPONENT_PREFIX) {
                let rec: ComponentRecord =
                    codec::decode("component record", &v).map_err(sm_read)?;
                inner.state.components.insert(rec.spec.id.clone(), rec);
            } else if key.starts_with(REMOVED_PREFIX) {
                let id: NodeId = codec::decode("removed node", &v).map_err(sm_read)?;
                inner.state.removed_nodes.insert(id);
            }
        }
        let meta = cf(&db, CF_SM_META);
        if let Some(v) = db.get_cf(meta, KEY_APPLIED).map_err(sm_read)? {
            inner.applied.last_applied = codec::decode("applied log id", &v).map_err(sm_read)?;
        }
        if let Some(v) = db.get_cf(meta, KEY_MEMBERSHIP).map_err(sm_read)? {
            inner.applied.membership = codec::decode("membership", &v).map_err(sm_read)?;
        }
        Ok(StateMachineStore {
            db,
            inner: Arc::new(RwLock::new(inner)),
            snap_dir,
            seq: Arc::new(AtomicU64::new(0)),
        })
    }

    /// A read handle that stays valid for the life of the node.
    pub fn reader(&self) -> StateReader {
        StateReader {
            inner: self.inner.clone(),
        }
    }

    fn current_snapshot_record(db: &DB) -> Result<Option<StoredSnapshot>, StorageError<u64>> {
        match db
            .get_cf(cf(db, CF_SM_META), KEY_SNAPSHOT)
            .map_err(snap_read)?
        {
            None => Ok(None),
            Some(v) => codec::decode("snapshot record", &v)
                .map(Some)
                .map_err(snap_read),
        }
    }
}

/// Serialises snapshot writes of this process: a build and an install may finish together.
static PERSIST: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Writes `bytes` as the snapshot file for `meta` and, unless a newer snapshot is recorded
/// already (a slow build that an install overtook), records it as current and removes older
/// snapshot files; `force` records it in any case (an install: the state is now this one).
/// Returns the file and whether it was recorded. Runs on a blocking thread.
fn persist_snapshot(
    db: &DB,
    snap_dir: &Path,
    meta: &SnapshotMeta,
    bytes: &[u8],
    force: bool,
) -> Result<(PathBuf, bool), StorageError<u64>> {
    let _one_at_a_time = PERSIST.lock().unwrap_or_else(|p| p.into_inner());
    let name = format!("{}.snap", meta.snapshot_id);
    let tmp = snap_dir.join(format!("{name}.tmp"));
    let path = snap_dir.join(&name);
    {
        let mut f = std::fs::File::create(&tmp).map_err(snap_write)?;
        f.write_all(bytes).map_err(snap_write)?;
        f.sync_all().map_err(snap_write)?;
    }
    std::fs::rename(&tmp, &path).map_err(snap_write)?;
    // The rename is durable only once the directory is.
    std::fs::File::open(snap_dir)
        .and_then(|d| d.sync_all())
        .map_err(snap_write)?;
    if !force {
        if let Some(cur) = StateMachineStore::current_snapshot_record(db)? {
            if cur.meta.last_log_id > meta.last_log_id {
                metrics::counter!("flowctl_store_snapshots_superseded_total").increment(1);
                return Ok((path, false));
            }
        }
    }
    let record = StoredSnapshot {
        meta: meta.clone(),
        file: name.clone(),
    };
    let rec = codec::encode("snapshot record", &record).map_err(snap_write)?;
    let mut w = WriteOptions::default();
    w.set_sync(true);
    db.put_cf_opt(cf(db, CF_SM_META), KEY_SNAPSHOT, rec, &w)
        .map_err(snap_write)?;
    if let Ok(dir) = std::fs::read_dir(snap_dir) {
        for e in dir.flatten() {
            let n = e.file_name();
            if n.to_string_lossy() != name {
                // A leftover from an older snapshot; failing to remove it wastes disk only.
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok((path, true))
}

async fn open_snapshot_file(path: &Path) -> Result<tokio::fs::File, StorageError<u64>> {
    tokio::fs::File::open(path).await.map_err(snap_read)
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership), StorageError<u64>> {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        Ok((g.applied.last_applied, g.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut outcomes = Vec::new();
        let mut touched = BTreeSet::new();
        let mut batch = WriteBatch::default();
        {
            let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
            for e in entries {
                g.applied.last_applied = Some(e.log_id);
                match e.payload {
                    EntryPayload::Blank => outcomes.push(Outcome::None),
                    EntryPayload::Normal(cmd) => {
                        let (out, t) = flowctl_state::apply(&mut g.state, e.log_id.index, &cmd);
                        touched.extend(t);
                        outcomes.push(out);
                    }
                    EntryPayload::Membership(m) => {
                        g.applied.membership = StoredMembership::new(Some(e.log_id), m);
                        outcomes.push(Outcome::None);
                    }
                }
            }
            let sm = cf(&self.db, CF_SM);
            for t in touched {
                match t {
                    Touched::Pipeline(name) => match g.state.pipelines.get(&name) {
                        Some(rec) => batch.put_cf(
                            sm,
                            pipeline_key(&name),
                            codec::encode_pipeline(rec).map_err(sm_write)?,
                        ),
                        None => batch.delete_cf(sm, pipeline_key(&name)),
                    },
                    Touched::Placement(name) => match g.state.placements.get(&name) {
                        Some(p) => batch.put_cf(
                            sm,
                            placement_key(&name),
                            codec::encode("placement", p).map_err(sm_write)?,
                        ),
                        None => batch.delete_cf(sm, placement_key(&name)),
                    },
                    Touched::ReplayJob(id) => match g.state.replays.jobs.get(&id) {
                        Some(x) => batch.put_cf(
                            sm,
                            replay_job_key(&id),
                            codec::encode("replay job", x).map_err(sm_write)?,
                        ),
                        None => batch.delete_cf(sm, replay_job_key(&id)),
                    },
                    Touched::ReplayChunk(id, i) => {
                        match g.state.replays.chunks.get(&id).and_then(|c| c.get(&i)) {
                            Some(x) => batch.put_cf(
                                sm,
                                replay_chunk_key(&id, i),
                                codec::encode("replay chunk", x).map_err(sm_write)?,
                            ),
                            None => batch.delete_cf(sm, replay_chunk_key(&id, i)),
                        }
                    }
                    Touched::DlqEntry(id) => match g.state.dlq.entries.get(&id) {
                        Some(x) => batch.put_cf(
                            sm,
                            dlq_entry_key(&id),
                            codec::encode("DLQ entry", x).map_err(sm_write)?,
                        ),
                        None => batch.delete_cf(sm, dlq_entry_key(&id)),
                    },
                    Touched::DlqOffset(k) => match g.state.dlq.offsets.get(&k) {
                        Some(x) => batch.put_cf(
                            sm,
                            dlq_offset_key(&k),
                            codec::encode("DLQ offset", x).map_err(sm_write)?,
                        ),
                        None => batch.delete_cf(sm, dlq_offset_key(&k)),
                    },
                    Touched::Subject(name) => match g.state.schemas.subjects.get(&name) {
                        Some(x) => batch.put_cf(
                            sm,
                            subject_key(&name),
                            codec::encode("schema subject", x).map_err(sm_write)?,
                        ),
                        None => batch.delete_cf(sm, subject_key(&name)),
                    },
                    Touched::Schema(id) => match g.state.schemas.schemas.get(&id) {
                        Some(x) => batch.put_cf(
                            sm,
                            schema_key(id),
                            codec::encode("schema", x).map_err(sm_write)?,
                        ),
                        None => batch.delete_cf(sm, schema_key(id)),
                    },
                    Touched::SchemaMeta => batch.put_cf(
                        sm,
                        SCHEMA_META_KEY.as_bytes(),
                        codec::encode("schema registry meta", &g.state.schemas.meta)
                            .map_err(sm_write)?,
                    ),
                    Touched::Token(name) => match g.state.auth.tokens.get(&name) {
                        Some(x) => batch.put_cf(
                            sm,
                            token_key(&name),
                            codec::encode("auth token", x).map_err(sm_write)?,
                        ),
                        None => batch.delete_cf(sm, token_key(&name)),
                    },
                    Touched::AuthMeta => batch.put_cf(
                        sm,
                        AUTH_META_KEY.as_bytes(),
                        codec::encode("auth meta", &AuthMeta::of(&g.state.auth))
                            .map_err(sm_write)?,
                    ),
                    Touched::AuditRecord(seq) => match g.state.audit.records.get(&seq) {
                        Some(x) => batch.put_cf(
                            sm,
                            audit_key(seq),
                            codec::encode("audit record", x).map_err(sm_write)?,
                        ),
                        None => batch.delete_cf(sm, audit_key(seq)),
                    },
                    Touched::AuditMeta => batch.put_cf(
                        sm,
                        AUDIT_META_KEY.as_bytes(),
                        codec::encode("audit meta", &AuditMeta::of(&g.state.audit))
                            .map_err(sm_write)?,
                    ),
                    Touched::Runtime(name) => match g.state.runtime.get(&name) {
                        Some(r) => batch.put_cf(
                            sm,
                            runtime_key(&name),
                            codec::encode("pipeline runtime", r).map_err(sm_write)?,
                        ),
                        None => batch.delete_cf(sm, runtime_key(&name)),
                    },
                    Touched::Component(id) => match g.state.components.get(&id) {
                        Some(rec) => batch.put_cf(
                            sm,
                            component_key(&id),
                            codec::encode("component record", rec).map_err(sm_write)?,
                        ),
                        None => batch.delete_cf(sm, component_key(&id)),
                    },
                    Touched::Request(id) => match g.state.requests.by_id.get(&id) {
                        Some(r) => batch.put_cf(
                            sm,
                            request_key(&id),
                            codec::encode("remembered request", r).map_err(sm_write)?,
                        ),
                        None => batch.delete_cf(sm, request_key(&id)),
                    },
                    Touched::RemovedNode(id) => batch.put_cf(
                        sm,
                        removed_key(id),
                        codec::encode("removed node", &id).map_err(sm_write)?,
                    ),
                }
            }
            let meta = cf(&self.db, CF_SM_META);
            batch.put_cf(
                meta,
                KEY_APPLIED,
                codec::encode("applied log id", &g.applied.last_applied).map_err(sm_write)?,
            );
            batch.put_cf(
                meta,
                KEY_MEMBERSHIP,
                codec::encode("membership", &g.applied.membership).map_err(sm_write)?,
            );
        }
        let db = self.db.clone();
        blocking(move || db.write(batch).map_err(sm_write)).await?;
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let g = self.inner.read().unwrap_or_else(|p| p.into_inner());
        SnapshotBuilder {
            db: self.db.clone(),
            snap_dir: self.snap_dir.clone(),
            state: g.state.clone(),
            applied: g.applied.clone(),
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
        }
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<tokio::fs::File>, StorageError<u64>> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let path = self
            .snap_dir
            .join(format!("incoming-{}-{n}.part", std::process::id()));
        let f = blocking(move || {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .map_err(snap_write)?;
            // Unlink at once: the open handle keeps the data, and a crash leaves nothing behind.
            std::fs::remove_file(&path).map_err(snap_write)?;
            Ok(f)
        })
        .await?;
        Ok(Box::new(tokio::fs::File::from_std(f)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<u64>> {
        let len = snapshot.metadata().await.map_err(snap_read)?.len();
        if len > crate::MAX_SNAPSHOT_BYTES {
            return Err(snap_read(std::io::Error::other(format!(
                "snapshot {} is {len} bytes, over the {} byte limit",
                meta.snapshot_id,
                crate::MAX_SNAPSHOT_BYTES
            ))));
        }
        snapshot
            .seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(snap_read)?;
        let mut bytes = Vec::with_capacity(len as usize);
        snapshot.read_to_end(&mut bytes).await.map_err(snap_read)?;
        let db = self.db.clone();
        let snap_dir = self.snap_dir.clone();
        let meta = meta.clone();
        let (state, bytes) = blocking(move || {
            let state = codec::decode_state(&bytes).map_err(snap_read)?;
            Ok((state, bytes))
        })
        .await?;
        let applied = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let state2 = state.clone();
        let applied2 = applied.clone();
        blocking(move || {
            persist_snapshot(&db, &snap_dir, &meta, &bytes, true)?;
            let sm = cf(&db, CF_SM);
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(sm, b"".as_slice(), b"\xff\xff\xff\xff".as_slice());
            for (name, rec) in &state2.pipelines {
                batch.put_cf(
                    sm,
                    pipeline_key(name),
                    codec::encode_pipeline(rec).map_err(sm_write)?,
                );
            }
            for (name, p) in &state2.placements {
                batch.put_cf(
                    sm,
                    placement_key(name),
                    codec::encode("placement", p).map_err(sm_write)?,
                );
            }
            for (id, j) in &state2.replays.jobs {
                batch.put_cf(
                    sm,
                    replay_job_key(id),
                    codec::encode("replay job", j).map_err(sm_write)?,
                );
            }
            for (id, chunks) in &state2.replays.chunks {
                for (i, c) in chunks {
                    batch.put_cf(
                        sm,
                        replay_chunk_key(id, *i),
                        codec::encode("replay chunk", c).map_err(sm_write)?,
                    );
                }
            }
            for (id, x) in &state2.dlq.entries {
                batch.put_cf(
                    sm,
                    dlq_entry_key(id),
                    codec::encode("DLQ entry", x).map_err(sm_write)?,
                );
            }
            for (k, x) in &state2.dlq.offsets {
                batch.put_cf(
                    sm,
                    dlq_offset_key(k),
                    codec::encode("DLQ offset", x).map_err(sm_write)?,
                );
            }
            for (name, x) in &state2.schemas.subjects {
                batch.put_cf(
                    sm,
                    subject_key(name),
                    codec::encode("schema subject", x).map_err(sm_write)?,
                );
            }
            for (id, x) in &state2.schemas.schemas {
                batch.put_cf(
                    sm,
                    schema_key(*id),
                    codec::encode("schema", x).map_err(sm_write)?,
                );
            }
            batch.put_cf(
                sm,
                SCHEMA_META_KEY.as_bytes(),
                codec::encode("schema registry meta", &state2.schemas.meta).map_err(sm_write)?,
            );
            for (name, x) in &state2.auth.tokens {
                batch.put_cf(
                    sm,
                    token_key(name),
                    codec::encode("auth token", x).map_err(sm_write)?,
                );
            }
            batch.put_cf(
                sm,
                AUTH_META_KEY.as_bytes(),
                codec::encode("auth meta", &AuthMeta::of(&state2.auth)).map_err(sm_write)?,
            );
            for (seq, x) in &state2.audit.records {
                batch.put_cf(
                    sm,
                    audit_key(*seq),
                    codec::encode("audit record", x).map_err(sm_write)?,
                );
            }
            batch.put_cf(
                sm,
                AUDIT_META_KEY.as_bytes(),
                codec::encode("audit meta", &AuditMeta::of(&state2.audit)).map_err(sm_write)?,
            );
            for (name, r) in &state2.runtime {
                batch.put_cf(
                    sm,
                    runtime_key(name),
                    codec::encode("pipeline runtime", r).map_err(sm_write)?,
                );
            }
            for (id, rec) in &state2.components {
                batch.put_cf(
                    sm,
                    component_key(id),
                    codec::encode("component record", rec).map_err(sm_write)?,
                );
            }
            for (id, r) in &state2.requests.by_id {
                batch.put_cf(
                    sm,
                    request_key(id),
                    codec::encode("remembered request", r).map_err(sm_write)?,
                );
            }
            for id in &state2.removed_nodes {
                batch.put_cf(
                    sm,
                    removed_key(*id),
                    codec::encode("removed node", id).map_err(sm_write)?,
                );
            }
            let m = cf(&db, CF_SM_META);
            batch.put_cf(
                m,
                KEY_APPLIED,
                codec::encode("applied log id", &applied2.last_applied).map_err(sm_write)?,
            );
            batch.put_cf(
                m,
                KEY_MEMBERSHIP,
                codec::encode("membership", &applied2.membership).map_err(sm_write)?,
            );
            let mut w = WriteOptions::default();
            w.set_sync(true);
            db.write_opt(batch, &w).map_err(sm_write)
        })
        .await?;
        let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
        g.state = state;
        g.applied = applied;
        metrics::counter!("flowctl_store_snapshots_installed_total").increment(1);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let db = self.db.clone();
        let Some(rec) = blocking(move || Self::current_snapshot_record(&db)).await? else {
            return Ok(None);
        };
        let path = self.snap_dir.join(&rec.file);
        if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(None);
        }
        let f = open_snapshot_file(&path).await?;
        Ok(Some(Snapshot {
            meta: rec.meta,
            snapshot: Box::new(f),
        }))
    }
}

/// Builds a snapshot from a copy of the state taken when openraft asked for the builder.
pub struct SnapshotBuilder {
    db: Arc<DB>,
    snap_dir: PathBuf,
    state: State,
    applied: AppliedState,
    seq: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let (term, index) = self
            .applied
            .last_applied
            .map(|l| (l.leader_id.term, l.index))
            .unwrap_or((0, 0));
        let meta = SnapshotMeta {
            last_log_id: self.applied.last_applied,
            last_membership: self.applied.membership.clone(),
            snapshot_id: format!("{term:020}-{index:020}-{}", self.seq),
        };
        let state = std::mem::take(&mut self.state);
        let db = self.db.clone();
        let snap_dir = self.snap_dir.clone();
        let meta2 = meta.clone();
        let path = blocking(move || {
            let bytes = codec::encode_state(&state).map_err(snap_write)?;
            // The snapshot lets openraft purge the log, so everything the state machine wrote
            // without fsync must be durable first.
            db.flush_wal(true).map_err(snap_write)?;
            metrics::gauge!("flowctl_store_snapshot_size_bytes").set(bytes.len() as f64);
            persist_snapshot(&db, &snap_dir, &meta2, &bytes, false)
        })
        .await?;
        metrics::counter!("flowctl_store_snapshots_built_total").increment(1);
        let (path, recorded) = path;
        let f = open_snapshot_file(&path).await?;
        if !recorded {
            // A newer snapshot is current; this older one lives on only as the open file.
            let _ = std::fs::remove_file(&path);
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(f),
        })
    }
}
