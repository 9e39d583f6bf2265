//! openraft state-machine storage: the in-memory [`State`] mirrored into the `sm` column
//! family, and snapshots as files under `<data-dir>/snapshots`.
//!
//! # Snapshots
//!
//! A snapshot file holds the `sm` records as stored, framed one by one (the format is in
//! [`crate::snapshot_file`]), so that neither side holds the state as one buffer:
//!
//! - **Build.** [`RaftStateMachine::get_snapshot_builder`] starts a blocking thread that takes
//!   a RocksDB snapshot (a consistent point-in-time view), reads the applied log id and
//!   membership *of that view* from `sm_meta` (they are written in the same batch as the
//!   records they describe), and waits. [`RaftSnapshotBuilder::build_snapshot`] lets it stream
//!   the view's `sm` records through a `BufWriter` into a file, which is fsynced, the WAL
//!   synced, and the file renamed into place and recorded as current unless a newer snapshot
//!   is recorded already. Applies go on meanwhile; the in-memory state is never copied.
//! - **Install.** The received file is checked against [`crate::MAX_SNAPSHOT_BYTES`], then
//!   read through a `BufReader` record by record (every length bounded) into a staging range
//!   of `sm_meta` (`staged/<key>`), in write batches of about [`WRITE_BATCH_BYTES`]. The live
//!   state is not touched until the trailer's count and checksum, the meta (against openraft's)
//!   and the decoding of every staged record have passed: a truncated or corrupt snapshot is an
//!   error that leaves the node as it was. Then a synced marker (`installing`) is the point of
//!   no return: `sm` is replaced by the staged records in bounded batches, the last of which
//!   also sets the applied state and removes the staged records and the marker. A crash in
//!   between is completed by the next [`StateMachineStore::load`].
//! - **Compatibility.** A snapshot from an earlier release is one `codec::encode_state`
//!   document (first byte: the version byte 1; this format's is `F`). It still installs: it is
//!   decoded from the stream (bounded by the size cap) and its records staged the same way.
//!   Staging lives in `sm_meta` rather than a column family of its own so that the previous
//!   release can still open the database.
//!
//! Peak memory: a build holds one record, the write buffer and the view's pinned blocks; an
//! install holds one record, the read buffer, one write batch, and at the end the new
//! [`State`] decoded from the staged records, next to the old one that serves reads until the
//! swap.

use crate::{
    blocking, cf, snapshot_file, Entry, LogId, SnapshotMeta, StoredMembership, TypeConfig, CF_SM,
    CF_SM_META,
};
use flowctl_state::{codec, ComponentId, ComponentRecord, NodeId, Outcome, State, Touched};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError};
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions, DB};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// An install in progress past its point of no return (see [`InstallMarker`]).
const KEY_INSTALLING: &[u8] = b"installing";
/// The `sm_meta` prefix of records an install has staged, each `staged/<sm key>`.
const STAGED_PREFIX: &[u8] = b"staged/";
/// The first key after every staged one (`'0'` follows `'/'`).
const STAGED_END: &[u8] = b"staged0";
/// About how much one write batch of a snapshot install holds before it is written.
const WRITE_BATCH_BYTES: usize = 8 << 20;
/// The buffer of a snapshot file's reader or writer.
const IO_BUFFER_BYTES: usize = 256 << 10;
/// The suffix of a snapshot file that is still being written.
const TMP_SUFFIX: &str = ".tmp";

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

/// Decodes one record of the `sm` column family (by its key, without a staging prefix) into
/// `state`. Keys of no known kind are skipped, so that records of a newer release do not stop
/// an older one from loading.
fn load_record(state: &mut State, key: &[u8], v: &[u8]) -> Result<(), StorageError<u64>> {
    let key = String::from_utf8_lossy(key);
    if let Some(name) = key.strip_prefix(PIPELINE_PREFIX) {
        let rec = codec::decode_pipeline(v).map_err(sm_read)?;
        state.pipelines.insert(name.to_owned(), rec);
    } else if let Some(name) = key.strip_prefix(PLACEMENT_PREFIX) {
        let p = codec::decode("placement", v).map_err(sm_read)?;
        state.placements.insert(name.to_owned(), p);
    } else if key.starts_with(REPLAY_JOB_PREFIX) {
        let j: flowctl_state::replay::Job = codec::decode("replay job", v).map_err(sm_read)?;
        state.replays.jobs.insert(j.id.clone(), j);
    } else if let Some(rest) = key.strip_prefix(REPLAY_CHUNK_PREFIX) {
        let c: flowctl_state::replay::Chunk = codec::decode("replay chunk", v).map_err(sm_read)?;
        let job = rest.rsplit_once('/').map(|(j, _)| j).unwrap_or(rest);
        state
            .replays
            .chunks
            .entry(job.to_owned())
            .or_default()
            .insert(c.index, c);
    } else if let Some(id) = key.strip_prefix(DLQ_ENTRY_PREFIX) {
        let e = codec::decode("DLQ entry", v).map_err(sm_read)?;
        state.dlq.entries.insert(id.to_owned(), e);
    } else if let Some(k) = key.strip_prefix(DLQ_OFFSET_PREFIX) {
        let o = codec::decode("DLQ offset", v).map_err(sm_read)?;
        state.dlq.offsets.insert(k.to_owned(), o);
    } else if let Some(name) = key.strip_prefix(SUBJECT_PREFIX) {
        let subject = codec::decode("schema subject", v).map_err(sm_read)?;
        state.schemas.subjects.insert(name.to_owned(), subject);
    } else if key.starts_with(SCHEMA_PREFIX) {
        let rec: flowctl_state::schemas::SchemaRecord =
            codec::decode("schema", v).map_err(sm_read)?;
        state.schemas.schemas.insert(rec.id, rec);
    } else if key == SCHEMA_META_KEY {
        state.schemas.meta = codec::decode("schema registry meta", v).map_err(sm_read)?;
    } else if let Some(name) = key.strip_prefix(TOKEN_PREFIX) {
        let t = codec::decode("auth token", v).map_err(sm_read)?;
        state.auth.tokens.insert(name.to_owned(), t);
    } else if key == AUTH_META_KEY {
        let m: AuthMeta = codec::decode("auth meta", v).map_err(sm_read)?;
        state.auth.enabled = m.enabled;
        state.auth.revision = m.revision;
    } else if key.starts_with(AUDIT_PREFIX) {
        let rec: flowctl_state::audit::AuditRecord =
            codec::decode("audit record", v).map_err(sm_read)?;
        state.audit.records.insert(rec.seq, rec);
    } else if key == AUDIT_META_KEY {
        let m: AuditMeta = codec::decode("audit meta", v).map_err(sm_read)?;
        state.audit.next_seq = m.next_seq;
    } else if key.starts_with(REQUEST_PREFIX) {
        let r: flowctl_state::requests::Remembered =
            codec::decode("remembered request", v).map_err(sm_read)?;
        state.requests.insert_loaded(r);
    } else if let Some(name) = key.strip_prefix(RUNTIME_PREFIX) {
        let r = codec::decode("pipeline runtime", v).map_err(sm_read)?;
        state.runtime.insert(name.to_owned(), r);
    } else if key.starts_with(COMPONENT_PREFIX) {
        let rec: ComponentRecord = codec::decode("component record", v).map_err(sm_read)?;
        state.components.insert(rec.spec.id.clone(), rec);
    } else if key.starts_with(REMOVED_PREFIX) {
        let id: NodeId = codec::decode("removed node", v).map_err(sm_read)?;
        state.removed_nodes.insert(id);
    }
    Ok(())
}

/// Where [`read_state`] reads the records from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Records {
    /// The live records: the `sm` column family.
    Live,
    /// The records an install has staged: `sm_meta` keys under [`STAGED_PREFIX`].
    Staged,
}

/// Read options for a scan of `records`: no block-cache pollution, bounded to the range.
fn scan_options(records: Records) -> ReadOptions {
    let mut opts = ReadOptions::default();
    opts.fill_cache(false);
    if records == Records::Staged {
        opts.set_iterate_upper_bound(STAGED_END);
    }
    opts
}

/// Calls `f` with each record of `records`, in key order, keys without the staging prefix.
fn scan(
    db: &DB,
    records: Records,
    mut f: impl FnMut(&[u8], &[u8]) -> Result<(), StorageError<u64>>,
) -> Result<(), StorageError<u64>> {
    let (cf_name, from, strip) = match records {
        Records::Live => (CF_SM, &b""[..], 0),
        Records::Staged => (CF_SM_META, STAGED_PREFIX, STAGED_PREFIX.len()),
    };
    let mode = IteratorMode::From(from, Direction::Forward);
    for item in db.iterator_cf_opt(cf(db, cf_name), scan_options(records), mode) {
        let (k, v) = item.map_err(sm_read)?;
        f(&k[strip..], &v)?;
    }
    Ok(())
}

/// The state that `records` hold, decoded by the same code whether they are live or staged.
fn read_state(db: &DB, records: Records) -> Result<State, StorageError<u64>> {
    let mut state = State::default();
    scan(db, records, |k, v| load_record(&mut state, k, v))?;
    Ok(state)
}

/// Calls `put` with every record of `state`, keyed and encoded as [`apply`] writes them.
///
/// [`apply`]: RaftStateMachine::apply
fn state_records(
    state: &State,
    mut put: impl FnMut(&[u8], &[u8]) -> Result<(), StorageError<u64>>,
) -> Result<(), StorageError<u64>> {
    for (name, rec) in &state.pipelines {
        put(
            &pipeline_key(name),
            &codec::encode_pipeline(rec).map_err(sm_write)?,
        )?;
    }
    for (name, p) in &state.placements {
        put(
            &placement_key(name),
            &codec::encode("placement", p).map_err(sm_write)?,
        )?;
    }
    for (id, j) in &state.replays.jobs {
        put(
            &replay_job_key(id),
            &codec::encode("replay job", j).map_err(sm_write)?,
        )?;
    }
    for (id, chunks) in &state.replays.chunks {
        for (i, c) in chunks {
            put(
                &replay_chunk_key(id, *i),
                &codec::encode("replay chunk", c).map_err(sm_write)?,
            )?;
        }
    }
    for (id, x) in &state.dlq.entries {
        put(
            &dlq_entry_key(id),
            &codec::encode("DLQ entry", x).map_err(sm_write)?,
        )?;
    }
    for (k, x) in &state.dlq.offsets {
        put(
            &dlq_offset_key(k),
            &codec::encode("DLQ offset", x).map_err(sm_write)?,
        )?;
    }
    for (name, x) in &state.schemas.subjects {
        put(
            &subject_key(name),
            &codec::encode("schema subject", x).map_err(sm_write)?,
        )?;
    }
    for (id, x) in &state.schemas.schemas {
        put(
            &schema_key(*id),
            &codec::encode("schema", x).map_err(sm_write)?,
        )?;
    }
    put(
        SCHEMA_META_KEY.as_bytes(),
        &codec::encode("schema registry meta", &state.schemas.meta).map_err(sm_write)?,
    )?;
    for (name, x) in &state.auth.tokens {
        put(
            &token_key(name),
            &codec::encode("auth token", x).map_err(sm_write)?,
        )?;
    }
    put(
        AUTH_META_KEY.as_bytes(),
        &codec::encode("auth meta", &AuthMeta::of(&state.auth)).map_err(sm_write)?,
    )?;
    for (seq, x) in &state.audit.records {
        put(
            &audit_key(*seq),
            &codec::encode("audit record", x).map_err(sm_write)?,
        )?;
    }
    put(
        AUDIT_META_KEY.as_bytes(),
        &codec::encode("audit meta", &AuditMeta::of(&state.audit)).map_err(sm_write)?,
    )?;
    for (name, r) in &state.runtime {
        put(
            &runtime_key(name),
            &codec::encode("pipeline runtime", r).map_err(sm_write)?,
        )?;
    }
    for (id, rec) in &state.components {
        put(
            &component_key(id),
            &codec::encode("component record", rec).map_err(sm_write)?,
        )?;
    }
    for (id, r) in &state.requests.by_id {
        put(
            &request_key(id),
            &codec::encode("remembered request", r).map_err(sm_write)?,
        )?;
    }
    for id in &state.removed_nodes {
        put(
            &removed_key(*id),
            &codec::encode("removed node", id).map_err(sm_write)?,
        )?;
    }
    Ok(())
}

/// Writes puts in write batches of about [`WRITE_BATCH_BYTES`], so that no batch holds more
/// than that plus one record.
struct Batcher<'a> {
    db: &'a DB,
    batch: WriteBatch,
}

impl<'a> Batcher<'a> {
    fn new(db: &'a DB) -> Self {
        Batcher {
            db,
            batch: WriteBatch::default(),
        }
    }

    fn put(
        &mut self,
        cf: &rocksdb::ColumnFamily,
        k: &[u8],
        v: &[u8],
    ) -> Result<(), StorageError<u64>> {
        self.batch.put_cf(cf, k, v);
        if self.batch.size_in_bytes() >= WRITE_BATCH_BYTES {
            self.db
                .write(std::mem::take(&mut self.batch))
                .map_err(sm_write)?;
        }
        Ok(())
    }

    /// What is not written yet, for the caller to complete and write.
    fn rest(self) -> WriteBatch {
        self.batch
    }
}

/// `key` under the staging prefix, in `buf`.
fn staged_key<'b>(buf: &'b mut Vec<u8>, key: &[u8]) -> &'b [u8] {
    buf.clear();
    buf.extend_from_slice(STAGED_PREFIX);
    buf.extend_from_slice(key);
    buf
}

/// What [`KEY_INSTALLING`] holds: the applied state an install has passed its point of no
/// return for. While it is present, the `sm` column family may be half replaced; the staged
/// records are complete and checked, and [`finish_install`] (called again by the next
/// [`StateMachineStore::load`] after a crash) replaces `sm` with them.
#[derive(serde::Serialize, serde::Deserialize)]
struct InstallMarker {
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

/// Removes every staged record (left by an install that failed or crashed before its point
/// of no return). Does nothing, and writes nothing, if there are none.
fn clear_staging(db: &DB) -> Result<(), StorageError<u64>> {
    let meta = cf(db, CF_SM_META);
    let mode = IteratorMode::From(STAGED_PREFIX, Direction::Forward);
    let any = db
        .iterator_cf_opt(meta, scan_options(Records::Staged), mode)
        .next()
        .transpose()
        .map_err(sm_read)?
        .is_some();
    if any {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(meta, STAGED_PREFIX, STAGED_END);
        db.write(batch).map_err(sm_write)?;
        reclaim_staging(db);
    }
    Ok(())
}

/// Gives the disk space of deleted staged records back now rather than at some later
/// compaction. Best effort: the records are deleted already, this only drops their files.
fn reclaim_staging(db: &DB) {
    let meta = cf(db, CF_SM_META);
    if let Err(e) = db.delete_file_in_range_cf(meta, STAGED_PREFIX, STAGED_END) {
        tracing::debug!("cannot drop the files of staged snapshot records: {e}");
    }
    db.compact_range_cf(meta, Some(STAGED_PREFIX), Some(STAGED_END));
}

/// Marks the staged records as the state to install: the point of no return of an install.
/// Synced, so that a crash after it finds the marker and completes the install.
fn begin_install(db: &DB, applied: &AppliedState) -> Result<(), StorageError<u64>> {
    let marker = InstallMarker {
        last_applied: applied.last_applied,
        membership: applied.membership.clone(),
    };
    let v = codec::encode("install marker", &marker).map_err(sm_write)?;
    let mut w = WriteOptions::default();
    w.set_sync(true);
    db.put_cf_opt(cf(db, CF_SM_META), KEY_INSTALLING, v, &w)
        .map_err(sm_write)
}

/// If an install is marked (see [`InstallMarker`]), replaces the `sm` column family with the
/// staged records in bounded batches, then, in one synced batch with the last of them, sets
/// the applied log id and membership, removes the staged records and the marker. Repeating
/// it after a crash part way is harmless: it starts again from clearing `sm`. Returns the
/// installed applied state, or `None` if no install was marked.
fn finish_install(db: &DB) -> Result<Option<AppliedState>, StorageError<u64>> {
    let meta = cf(db, CF_SM_META);
    let Some(v) = db.get_cf(meta, KEY_INSTALLING).map_err(sm_read)? else {
        return Ok(None);
    };
    let marker: InstallMarker = codec::decode("install marker", &v).map_err(sm_read)?;
    let sm = cf(db, CF_SM);
    let mut out = Batcher::new(db);
    // Every live record goes: a range up to the last key, and the last key itself.
    let last = db
        .iterator_cf(sm, IteratorMode::End)
        .next()
        .transpose()
        .map_err(sm_read)?;
    if let Some((last, _)) = last {
        out.batch.delete_range_cf(sm, &b""[..], &last[..]);
        out.batch.delete_cf(sm, &last);
    }
    scan(db, Records::Staged, |k, v| out.put(sm, k, v))?;
    let mut batch = out.rest();
    batch.put_cf(
        meta,
        KEY_APPLIED,
        codec::encode("applied log id", &marker.last_applied).map_err(sm_write)?,
    );
    batch.put_cf(
        meta,
        KEY_MEMBERSHIP,
        codec::encode("membership", &marker.membership).map_err(sm_write)?,
    );
    batch.delete_range_cf(meta, STAGED_PREFIX, STAGED_END);
    batch.delete_cf(meta, KEY_INSTALLING);
    let mut w = WriteOptions::default();
    w.set_sync(true);
    db.write_opt(batch, &w).map_err(sm_write)?;
    reclaim_staging(db);
    Ok(Some(AppliedState {
        last_applied: marker.last_applied,
        membership: marker.membership,
    }))
}

/// An error about the content of a snapshot being installed.
fn bad_snapshot(meta: &SnapshotMeta, what: impl std::fmt::Display) -> StorageError<u64> {
    snap_read(std::io::Error::other(format!(
        "snapshot {} is refused: {what}",
        meta.snapshot_id
    )))
}

/// Stages the records of a version-2 snapshot file (see [`crate::snapshot_file`]) of `size`
/// bytes, and checks that its meta is `meta`'s. The records are staged as they are read, before
/// the checksum at the end vouches for them: staging is not live, and a failed install clears
/// it.
fn stage_records(
    db: &DB,
    input: impl Read,
    size: u64,
    meta: &SnapshotMeta,
) -> Result<(), StorageError<u64>> {
    let (mut reader, header) =
        snapshot_file::Reader::open(input, size).map_err(|e| bad_snapshot(meta, e))?;
    let staging = cf(db, CF_SM_META);
    let mut out = Batcher::new(db);
    let mut key = Vec::new();
    while let Some((k, v)) = reader.next().map_err(|e| bad_snapshot(meta, e))? {
        out.put(staging, staged_key(&mut key, k), v)?;
    }
    db.write(out.rest()).map_err(sm_write)?;
    // Checked once the checksum has vouched for the header.
    let applied: Option<LogId> =
        codec::decode("applied log id", &header.applied).map_err(|e| bad_snapshot(meta, e))?;
    let membership: StoredMembership =
        codec::decode("membership", &header.membership).map_err(|e| bad_snapshot(meta, e))?;
    if applied != meta.last_log_id || membership != meta.last_membership {
        return Err(bad_snapshot(
            meta,
            format!(
                "its records are the state at {applied:?} with membership {membership:?}, \
                 its meta says {:?} with {:?}",
                meta.last_log_id, meta.last_membership
            ),
        ));
    }
    Ok(())
}

/// Stages the records of a version-1 snapshot (one `codec::encode_state` document, from a
/// release before the streaming format). The document is decoded as it is read, not read
/// into a buffer first; the decoded state is dropped once its records are staged.
fn stage_legacy(
    db: &DB,
    mut input: impl Read,
    meta: &SnapshotMeta,
) -> Result<(), StorageError<u64>> {
    let mut version = [0u8; 1];
    input
        .read_exact(&mut version)
        .map_err(|e| bad_snapshot(meta, e))?;
    if version[0] != codec::V1 {
        return Err(bad_snapshot(
            meta,
            format!("unknown snapshot encoding version {}", version[0]),
        ));
    }
    let state: State = serde_json::from_reader(input).map_err(|e| {
        bad_snapshot(
            meta,
            format!("its version-1 (JSON) state does not decode: {e}"),
        )
    })?;
    let staging = cf(db, CF_SM_META);
    let mut out = Batcher::new(db);
    let mut key = Vec::new();
    state_records(&state, |k, v| out.put(staging, staged_key(&mut key, k), v))?;
    db.write(out.rest()).map_err(sm_write)
}

/// The meta of a snapshot of `applied`; `seq` tells apart builds of the same log id.
fn snapshot_meta(applied: &AppliedState, seq: u64) -> SnapshotMeta {
    let (term, index) = applied
        .last_applied
        .map(|l| (l.leader_id.term, l.index))
        .unwrap_or((0, 0));
    SnapshotMeta {
        last_log_id: applied.last_applied,
        last_membership: applied.membership.clone(),
        snapshot_id: format!("{term:020}-{index:020}-{seq}"),
    }
}

impl StateMachineStore {
    pub(crate) fn load(db: Arc<DB>, snap_dir: PathBuf) -> Result<Self, StorageError<u64>> {
        // An install that a crash interrupted past its point of no return completes now; one
        // that stopped before it leaves only staged records, which go.
        if finish_install(&db)?.is_none() {
            clear_staging(&db)?;
        }
        // Snapshot files that were being written when the process stopped.
        if let Ok(dir) = std::fs::read_dir(&snap_dir) {
            for e in dir.flatten() {
                if e.file_name().to_string_lossy().ends_with(TMP_SUFFIX) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let mut inner = Inner {
            state: read_state(&db, Records::Live)?,
            applied: AppliedState::default(),
        };
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

/// Serialises the recording of snapshots in this process: a build and an install may finish
/// together.
static PERSIST: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Writes a snapshot file for `snapshot_id` under a temporary name (unique by `unique`) with
/// `write`, then fsyncs it. Returns its path and size; on an error, removes it. The file is
/// written without holding [`PERSIST`], so a long build does not hold up an install.
fn write_snapshot_file(
    snap_dir: &Path,
    snapshot_id: &str,
    unique: u64,
    write: impl FnOnce(&mut BufWriter<std::fs::File>) -> Result<(), StorageError<u64>>,
) -> Result<(PathBuf, u64), StorageError<u64>> {
    let tmp = snap_dir.join(format!("{snapshot_id}.snap.{unique}{TMP_SUFFIX}"));
    let written = (|| -> Result<u64, StorageError<u64>> {
        let f = std::fs::File::create(&tmp).map_err(snap_write)?;
        let mut w = BufWriter::with_capacity(IO_BUFFER_BYTES, f);
        write(&mut w)?;
        let f = w.into_inner().map_err(|e| snap_write(e.into_error()))?;
        f.sync_all().map_err(snap_write)?;
        Ok(f.metadata().map_err(snap_write)?.len())
    })();
    match written {
        Ok(size) => Ok((tmp, size)),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Renames the written snapshot file `tmp` to the file for `meta` and, unless a newer snapshot
/// is recorded already (a slow build that an install overtook), records it as current and
/// removes older snapshot files; `force` records it in any case (an install: the state is now
/// this one). Returns the file and whether it was recorded. Runs on a blocking thread.
fn record_snapshot(
    db: &DB,
    snap_dir: &Path,
    meta: &SnapshotMeta,
    tmp: &Path,
    force: bool,
) -> Result<(PathBuf, bool), StorageError<u64>> {
    let _one_at_a_time = PERSIST.lock().unwrap_or_else(|p| p.into_inner());
    let name = format!("{}.snap", meta.snapshot_id);
    let path = snap_dir.join(&name);
    std::fs::rename(tmp, &path).map_err(snap_write)?;
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
            let n = n.to_string_lossy();
            // A file being written by a build or an install that has not finished stays.
            if n != name && !n.ends_with(TMP_SUFFIX) {
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
        let started = std::time::Instant::now();
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
        crate::record_stage("apply", started.elapsed());
        // On this task, not the blocking pool: the write is not synced (the log is the
        // durable copy; the applied index is in the same batch), so it costs a memtable insert
        // and a WAL append, less than the two thread hand-offs of `spawn_blocking`.
        let started = std::time::Instant::now();
        self.db.write(batch).map_err(sm_write)?;
        crate::record_stage("apply_write", started.elapsed());
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let (taken_tx, taken_rx) = tokio::sync::oneshot::channel();
        let (go_tx, go_rx) = std::sync::mpsc::sync_channel(1);
        let db = self.db.clone();
        let snap_dir = self.snap_dir.clone();
        let done = tokio::task::spawn_blocking(move || {
            build_from_view(db, snap_dir, seq, taken_tx, go_rx)
        });
        // Wait for the view: every apply after this returns is outside it.
        let job = match taken_rx.await {
            Ok(Ok(meta)) => Ok(BuildJob {
                meta,
                go: go_tx,
                done,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(snap_read(std::io::Error::other(
                "the snapshot thread stopped before it took its view",
            ))),
        };
        SnapshotBuilder { job: Some(job) }
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

    /// Installs a snapshot in either format, streaming it; see the module documentation.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<u64>> {
        // `into_std` first: it waits for writes still in flight, which `metadata` would miss.
        let file = (*snapshot).into_std().await;
        let (mut file, len) = blocking(move || {
            let len = file.metadata().map_err(snap_read)?.len();
            Ok((file, len))
        })
        .await?;
        if len > crate::MAX_SNAPSHOT_BYTES {
            return Err(snap_read(std::io::Error::other(format!(
                "snapshot {} is {len} bytes, over the {} byte limit",
                meta.snapshot_id,
                crate::MAX_SNAPSHOT_BYTES
            ))));
        }
        let db = self.db.clone();
        let snap_dir = self.snap_dir.clone();
        let unique = self.seq.fetch_add(1, Ordering::Relaxed);
        let applied = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let meta = meta.clone();
        let (stage_meta, applied2) = (meta.clone(), applied.clone());
        let (state, tmp) = blocking(move || {
            let meta = stage_meta;
            // Everything up to `begin_install` leaves the live state alone: the records go to
            // the staging range, and a failure clears it. Staging (rather than checking the
            // file in one pass and writing `sm` in a second) is what makes a crash part way
            // through the replacement recoverable too: the replacement reads only the staged,
            // checked records, and `load` repeats it after a crash.
            let staged = (|| -> Result<(State, PathBuf), StorageError<u64>> {
                clear_staging(&db)?;
                file.seek(SeekFrom::Start(0)).map_err(snap_read)?;
                {
                    let mut input =
                        BufReader::with_capacity(IO_BUFFER_BYTES, (&mut file).take(len));
                    let first = input.fill_buf().map_err(snap_read)?.first().copied();
                    match first {
                        Some(b) if b == snapshot_file::MAGIC[0] => {
                            stage_records(&db, &mut input, len, &meta)?
                        }
                        Some(b) if b == codec::V1 => stage_legacy(&db, &mut input, &meta)?,
                        Some(b) => {
                            return Err(bad_snapshot(
                                &meta,
                                format!("it starts with the unknown byte {b:#04x}"),
                            ))
                        }
                        None => return Err(bad_snapshot(&meta, "it is empty")),
                    }
                }
                // Decoding every staged record is the last check, and gives the new state.
                let state = read_state(&db, Records::Staged)
                    .map_err(|e| bad_snapshot(&meta, format!("a record does not decode: {e}")))?;
                // The copy this node serves to others, in the format it arrived in.
                file.seek(SeekFrom::Start(0)).map_err(snap_read)?;
                let (tmp, _) = write_snapshot_file(&snap_dir, &meta.snapshot_id, unique, |w| {
                    std::io::copy(&mut (&mut file).take(len), w).map_err(snap_write)?;
                    Ok(())
                })?;
                Ok((state, tmp))
            })();
            let (state, tmp) = match staged {
                Ok(s) => s,
                Err(e) => {
                    if let Err(clear) = clear_staging(&db) {
                        tracing::warn!("cannot clear a refused snapshot's records: {clear}");
                    }
                    return Err(e);
                }
            };
            if let Err(e) = begin_install(&db, &applied2) {
                let _ = std::fs::remove_file(&tmp);
                let _ = clear_staging(&db);
                return Err(e);
            }
            // Past the point of no return: if this fails, the next `load` finishes it.
            finish_install(&db)?;
            Ok((state, tmp))
        })
        .await?;
        {
            let mut g = self.inner.write().unwrap_or_else(|p| p.into_inner());
            g.state = state;
            g.applied = applied;
        }
        let db = self.db.clone();
        let snap_dir = self.snap_dir.clone();
        blocking(move || record_snapshot(&db, &snap_dir, &meta, &tmp, true).map(|_| ())).await?;
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

/// What a build thread gives back: the snapshot file and whether it was recorded as current;
/// `None` if it stopped because its builder went away.
type Built = Option<(PathBuf, bool)>;

/// Runs one snapshot build on a blocking thread: takes a RocksDB snapshot (a point-in-time view)
/// and reports the applied state it holds through `taken`, waits for `go`, then streams the
/// view's `sm` records into a snapshot file and records it. The view is a local of this
/// thread, so its borrow of the database never has to outlive a function.
fn build_from_view(
    db: Arc<DB>,
    snap_dir: PathBuf,
    seq: u64,
    taken: tokio::sync::oneshot::Sender<Result<SnapshotMeta, StorageError<u64>>>,
    go: std::sync::mpsc::Receiver<()>,
) -> Result<Built, StorageError<u64>> {
    let view = db.snapshot();
    // The applied state of the view itself: `apply` writes it in the same batch as the records.
    let header = (|| -> Result<_, StorageError<u64>> {
        let meta_cf = cf(&db, CF_SM_META);
        let applied = view.get_cf(meta_cf, KEY_APPLIED).map_err(snap_read)?;
        let membership = view.get_cf(meta_cf, KEY_MEMBERSHIP).map_err(snap_read)?;
        let mut state = AppliedState::default();
        if let Some(v) = &applied {
            state.last_applied = codec::decode("applied log id", v).map_err(snap_read)?;
        }
        if let Some(v) = &membership {
            state.membership = codec::decode("membership", v).map_err(snap_read)?;
        }
        // A store that has applied nothing has neither: the file holds their encodings.
        let applied = match applied {
            Some(v) => v,
            None => codec::encode("applied log id", &state.last_applied).map_err(snap_write)?,
        };
        let membership = match membership {
            Some(v) => v,
            None => codec::encode("membership", &state.membership).map_err(snap_write)?,
        };
        Ok((snapshot_meta(&state, seq), applied, membership))
    })();
    let (meta, applied, membership) = match header {
        Ok(h) => h,
        Err(e) => {
            let _ = taken.send(Err(e));
            return Ok(None);
        }
    };
    if taken.send(Ok(meta.clone())).is_err() || go.recv().is_err() {
        // No one waits for this build any more.
        return Ok(None);
    }
    let (tmp, size) = write_snapshot_file(&snap_dir, &meta.snapshot_id, seq, |w| {
        let mut out = snapshot_file::Writer::new(w, &applied, &membership).map_err(snap_write)?;
        let records = view.iterator_cf_opt(
            cf(&db, CF_SM),
            scan_options(Records::Live),
            IteratorMode::Start,
        );
        for item in records {
            let (k, v) = item.map_err(snap_read)?;
            out.record(&k, &v).map_err(snap_write)?;
        }
        out.finish().map_err(snap_write)?;
        Ok(())
    })?;
    drop(view);
    // The snapshot lets openraft purge the log, so everything the state machine wrote without
    // fsync must be durable first.
    if let Err(e) = db.flush_wal(true) {
        let _ = std::fs::remove_file(&tmp);
        return Err(snap_write(e));
    }
    metrics::gauge!("flowctl_store_snapshot_size_bytes").set(size as f64);
    let recorded = record_snapshot(&db, &snap_dir, &meta, &tmp, false)?;
    Ok(Some(recorded))
}

/// A build under way: its thread holds the view and waits for `go`.
struct BuildJob {
    meta: SnapshotMeta,
    go: std::sync::mpsc::SyncSender<()>,
    done: tokio::task::JoinHandle<Result<Built, StorageError<u64>>>,
}

/// Builds a snapshot from the RocksDB point-in-time view taken when openraft asked for the
/// builder; applies after that are not in it. Dropping the builder unused releases the view.
pub struct SnapshotBuilder {
    job: Option<Result<BuildJob, StorageError<u64>>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let job = match self.job.take() {
            Some(Ok(job)) => job,
            Some(Err(e)) => return Err(e),
            None => {
                return Err(snap_write(std::io::Error::other(
                    "this snapshot builder has built its snapshot already",
                )))
            }
        };
        // If the thread is gone, `done` says why.
        let _ = job.go.send(());
        let built = match job.done.await {
            Ok(built) => built?,
            Err(join) => return Err(StorageIOError::<u64>::write_snapshot(None, &join).into()),
        };
        let Some((path, recorded)) = built else {
            return Err(snap_write(std::io::Error::other(
                "the snapshot thread stopped before it built the snapshot",
            )));
        };
        metrics::counter!("flowctl_store_snapshots_built_total").increment(1);
        let f = open_snapshot_file(&path).await?;
        if !recorded {
            // A newer snapshot is current; this older one lives on only as the open file.
            let _ = tokio::fs::remove_file(&path).await;
        }
        Ok(Snapshot {
            meta: job.meta,
            snapshot: Box::new(f),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

    use super::*;
    use crate::{open, StoreOptions};

    fn entries(names: impl IntoIterator<Item = (u64, String)>) -> Vec<Entry> {
        names
            .into_iter()
            .map(|(index, name)| Entry {
                log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
                payload: EntryPayload::Normal(flowctl_state::Command::ApplyPipeline(
                    flowctl_state::pipelines::ApplyPipeline {
                        spec_yaml: format!("name: {name}\n"),
                        name,
                        id_if_new: flowctl_state::PipelineId::from_random(index),
                        canonical: "{}".into(),
                        at_ms: index,
                        if_generation: None,
                    },
                )),
            })
            .collect()
    }

    /// A store that applied pipelines `<prefix>1..=n`.
    async fn store(dir: &Path, prefix: &str, n: u64) -> (crate::LogStore, StateMachineStore) {
        let (log, mut sm) = open(dir, StoreOptions::default()).unwrap();
        sm.apply(entries((1..=n).map(|i| (i, format!("{prefix}{i}")))))
            .await
            .unwrap();
        (log, sm)
    }

    async fn built(sm: &mut StateMachineStore) -> (SnapshotMeta, Vec<u8>) {
        let mut snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let mut bytes = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut *snap.snapshot, &mut bytes)
            .await
            .unwrap();
        (snap.meta, bytes)
    }

    fn staged(db: &DB) -> usize {
        let mut n = 0;
        scan(db, Records::Staged, |_, _| {
            n += 1;
            Ok(())
        })
        .unwrap();
        n
    }

    #[tokio::test]
    async fn an_install_interrupted_past_its_point_of_no_return_completes_on_open() {
        let src_dir = tempfile::tempdir().unwrap();
        let (_l, mut src) = store(src_dir.path(), "src", 20).await;
        let want = src.reader().read(|s, _| s.clone());
        let (meta, bytes) = built(&mut src).await;
        let dir = tempfile::tempdir().unwrap();
        {
            let (_l, dst) = store(dir.path(), "old", 3).await;
            let db = dst.db.clone();
            stage_records(&db, &bytes[..], bytes.len() as u64, &meta).unwrap();
            assert_eq!(staged(&db), 20);
            let applied = AppliedState {
                last_applied: meta.last_log_id,
                membership: meta.last_membership.clone(),
            };
            begin_install(&db, &applied).unwrap();
            // The crash comes part way through the replacement: `sm` holds old records and new.
            let sm = cf(&db, CF_SM);
            db.delete_cf(sm, b"p/old2").unwrap();
            let new = db
                .get_cf(cf(&db, CF_SM_META), b"staged/p/src1")
                .unwrap()
                .unwrap();
            db.put_cf(sm, b"p/src1", new).unwrap();
        }
        let (_l, mut dst) = open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(dst.reader().read(|s, _| s.clone()), want);
        assert_eq!(dst.applied_state().await.unwrap().0, meta.last_log_id);
        assert_eq!(staged(&dst.db), 0);
        let marker = dst.db.get_cf(cf(&dst.db, CF_SM_META), KEY_INSTALLING);
        assert!(marker.unwrap().is_none());
    }

    #[tokio::test]
    async fn records_staged_before_the_point_of_no_return_are_dropped_on_open() {
        let src_dir = tempfile::tempdir().unwrap();
        let (_l, mut src) = store(src_dir.path(), "src", 5).await;
        let (meta, bytes) = built(&mut src).await;
        let dir = tempfile::tempdir().unwrap();
        let want = {
            let (_l, dst) = store(dir.path(), "old", 3).await;
            stage_records(&dst.db, &bytes[..], bytes.len() as u64, &meta).unwrap();
            assert_eq!(staged(&dst.db), 5);
            dst.reader().read(|s, _| s.clone())
        };
        let (_l, mut dst) = open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(dst.reader().read(|s, _| s.clone()), want);
        assert_eq!(dst.applied_state().await.unwrap().0.unwrap().index, 3);
        assert_eq!(staged(&dst.db), 0);
    }

    #[tokio::test]
    async fn a_snapshot_file_left_half_written_is_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let (_l, mut sm) = store(dir.path(), "p", 2).await;
        let (meta, _) = built(&mut sm).await;
        drop((_l, sm));
        let snaps = dir.path().join("snapshots");
        std::fs::write(snaps.join(format!("x.snap.7{TMP_SUFFIX}")), b"half").unwrap();
        let (_l, mut sm) = open(dir.path(), StoreOptions::default()).unwrap();
        let names: Vec<_> = std::fs::read_dir(&snaps)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [format!("{}.snap", meta.snapshot_id)]);
        assert_eq!(sm.get_current_snapshot().await.unwrap().unwrap().meta, meta);
    }
}
