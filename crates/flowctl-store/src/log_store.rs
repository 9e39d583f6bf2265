//! openraft log storage on the `log` and `raft` column families, with group commit.
//!
//! ```text
//!  append(entries, cb) ──▶ pending (in memory, readable at once) ──▶ queue ──▶ writer thread
//!  writer: take every queued op ─▶ one WriteBatch ─▶ one synced write ─▶ complete every cb
//! ```
//!
//! openraft 0.9 hands the store one client write at a time, so the store itself must merge
//! them: while one synced write is on the disk, later appends gather in the queue and share
//! the next one. openraft's core never waits for the disk; it learns of durability through the
//! `LogFlushed` callbacks. Entries stay in `pending` until they are durable, so readers (the
//! replication streams) see them as soon as `append` returns.

use crate::{blocking, cf, Entry, LogId, TypeConfig, Vote, CF_LOG, CF_RAFT};
use flowctl_state::codec;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogId, RaftLogReader, StorageError, StorageIOError};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex, Weak};

const KEY_VOTE: &[u8] = b"vote";
const KEY_PURGED: &[u8] = b"purged";

/// Operations waiting for the writer. When the queue is full, `append` waits (on a blocking
/// thread) for room: backpressure, not unbounded memory.
const WRITE_QUEUE: usize = 16 * 1024;

/// One queued log operation, applied by the writer thread in queue order.
enum Op {
    Append {
        entries: Vec<(u64, LogId, Vec<u8>)>,
        done: LogFlushed<TypeConfig>,
    },
    /// Delete entries at and after `from`.
    Truncate {
        from: u64,
        done: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
    /// Delete entries up to and including `upto.index` and remember `upto`.
    Purge {
        upto: u64,
        record: Vec<u8>,
        done: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
}

type Pending = Arc<Mutex<BTreeMap<u64, Entry>>>;

/// The Raft log. Cheap to clone: clones share one RocksDB, one pending map and one writer.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    sync: bool,
    committed: Arc<AtomicU64>,
    pending: Pending,
    writer: SyncSender<Op>,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn key_index(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[..8]);
    u64::from_be_bytes(b)
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::<u64>::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<u64> {
    StorageIOError::<u64>::write_logs(&e).into()
}

fn lock(p: &Pending) -> std::sync::MutexGuard<'_, BTreeMap<u64, Entry>> {
    p.lock().unwrap_or_else(|e| e.into_inner())
}

/// The writer thread: drains the queue, writes everything in one batch with one fsync, then
/// completes every operation. It holds only a weak database reference, so the database
/// closes as soon as the stores drop.
fn run_writer(db: Weak<DB>, sync: bool, pending: Pending, rx: Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while let Ok(more) = rx.try_recv() {
            ops.push(more);
        }
        // The strong reference lives only for the write: it must be gone before any waiter is
        // woken, or a caller that closes and reopens the store would find it still locked.
        let (result, written) = {
            let Some(db) = db.upgrade() else {
                fail_all(ops, "the store is closed");
                continue;
            };
            write_batch(&db, sync, &ops)
        };
        if result.is_ok() {
            // Durable now: drop from `pending` what this batch wrote, unless a later append
            // replaced it (same index, other log id) meanwhile.
            let mut p = lock(&pending);
            for (index, log_id) in written {
                if p.get(&index).is_some_and(|e| e.log_id == log_id) {
                    p.remove(&index);
                }
            }
        }
        complete_all(ops, &result);
    }
}

/// Writes every queued operation in one batch (synced when `sync`), in queue order. Returns
/// the result and the entries written.
fn write_batch(db: &DB, sync: bool, ops: &[Op]) -> (Result<(), String>, Vec<(u64, LogId)>) {
    let mut batch = WriteBatch::default();
    let log = cf(db, CF_LOG);
    let mut written = Vec::new();
    for op in ops {
        match op {
            Op::Append { entries, .. } => {
                for (index, log_id, bytes) in entries {
                    batch.put_cf(log, index_key(*index), bytes);
                    written.push((*index, *log_id));
                }
            }
            Op::Truncate { from, .. } => {
                batch.delete_range_cf(log, index_key(*from), index_key(u64::MAX));
                batch.delete_cf(log, index_key(u64::MAX));
            }
            Op::Purge { upto, record, .. } => {
                batch.put_cf(cf(db, CF_RAFT), KEY_PURGED, record);
                batch.delete_range_cf(log, index_key(0), index_key(upto.saturating_add(1)));
            }
        }
    }
    let mut w = WriteOptions::default();
    w.set_sync(sync);
    let started = std::time::Instant::now();
    let result = db.write_opt(batch, &w).map_err(|e| e.to_string());
    crate::record_stage("log_write", started.elapsed());
    if sync {
        metrics::counter!("flowctl_store_log_fsyncs_total").increment(1);
        metrics::histogram!("flowctl_store_log_fsync_batch_size").record(ops.len() as f64);
    }
    (result, written)
}

fn complete_all(ops: Vec<Op>, result: &Result<(), String>) {
    for op in ops {
        match op {
            Op::Append { done, .. } => match result {
                Ok(()) => done.log_io_completed(Ok(())),
                Err(e) => done.log_io_completed(Err(std::io::Error::other(e.clone()))),
            },
            Op::Truncate { done, .. } | Op::Purge { done, .. } => {
                let _ = done.send(result.clone());
            }
        }
    }
}

fn fail_all(ops: Vec<Op>, why: &str) {
    complete_all(ops, &Err(why.to_owned()));
}

impl LogStore {
    pub(crate) fn new(db: Arc<DB>, sync: bool) -> Self {
        let (tx, rx) = sync_channel(WRITE_QUEUE);
        let pending: Pending = Arc::default();
        {
            let db = Arc::downgrade(&db);
            let pending = pending.clone();
            std::thread::Builder::new()
                .name("flowctl-log-writer".into())
                .spawn(move || run_writer(db, sync, pending, rx))
                .expect("the OS can start the log writer thread");
        }
        LogStore {
            db,
            sync,
            committed: Arc::new(AtomicU64::new(0)),
            pending,
            writer: tx,
        }
    }

    /// The last commit index openraft reported to this store; shared with metrics and status.
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        db: &DB,
        key: &[u8],
    ) -> Result<Option<T>, StorageError<u64>> {
        match db.get_cf(cf(db, CF_RAFT), key).map_err(read_err)? {
            None => Ok(None),
            Some(v) => codec::decode("raft metadata", &v)
                .map(Some)
                .map_err(read_err),
        }
    }

    fn write_opts(&self) -> WriteOptions {
        let mut w = WriteOptions::default();
        w.set_sync(self.sync);
        w
    }

    /// Queues an operation for the writer and waits until it is durable.
    async fn through_writer(
        &self,
        make: impl FnOnce(tokio::sync::oneshot::Sender<Result<(), String>>) -> Op + Send + 'static,
    ) -> Result<(), StorageError<u64>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let writer = self.writer.clone();
        blocking(move || {
            writer
                .send(make(tx))
                .map_err(|_| write_err(std::io::Error::other("log writer stopped")))
        })
        .await?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(write_err(std::io::Error::other(e))),
            Err(_) => Err(write_err(std::io::Error::other("log writer stopped"))),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<u64>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Some(i.saturating_add(1)),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        // The newest entries may still be pending; they take precedence over the disk.
        let pending: Vec<Entry> = {
            let p = lock(&self.pending);
            let upper = end.map(Bound::Excluded).unwrap_or(Bound::Unbounded);
            p.range((Bound::Included(start), upper))
                .map(|(_, e)| e.clone())
                .collect()
        };
        let first_pending = pending.first().map(|e| e.log_id.index);
        if first_pending == Some(start) {
            // The common case on a leader: replicating entries that were just appended.
            return Ok(pending);
        }
        let db = self.db.clone();
        let mut out = blocking(move || {
            let mut out = Vec::new();
            let from = index_key(start);
            let stop = match (end, first_pending) {
                (Some(e), Some(p)) => Some(e.min(p)),
                (e, p) => e.or(p),
            };
            let iter = db.iterator_cf(
                cf(&db, CF_LOG),
                IteratorMode::From(&from, Direction::Forward),
            );
            for item in iter {
                let (k, v) = item.map_err(read_err)?;
                let idx = key_index(&k);
                if stop.is_some_and(|e| idx >= e) {
                    break;
                }
                out.push(codec::decode::<Entry>("log entry", &v).map_err(read_err)?);
            }
            Ok(out)
        })
        .await?;
        out.extend(pending);
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let last_pending = lock(&self.pending).last_key_value().map(|(_, e)| e.log_id);
        let db = self.db.clone();
        blocking(move || {
            let last_purged: Option<LogId> = Self::get_meta(&db, KEY_PURGED)?;
            let last_disk = match db.iterator_cf(cf(&db, CF_LOG), IteratorMode::End).next() {
                None => None,
                Some(item) => {
                    let (_, v) = item.map_err(read_err)?;
                    let e: Entry = codec::decode("log entry", &v).map_err(read_err)?;
                    Some(*e.get_log_id())
                }
            };
            let last = match (last_pending, last_disk) {
                (Some(p), Some(d)) => Some(if p.index >= d.index { p } else { d }),
                (p, d) => p.or(d),
            };
            Ok(LogState {
                last_purged_log_id: last_purged,
                last_log_id: last.or(last_purged),
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError<u64>> {
        let db = self.db.clone();
        let bytes =
            codec::encode("vote", vote).map_err(|e| StorageIOError::<u64>::write_vote(&e))?;
        let opts = self.write_opts();
        blocking(move || {
            db.put_cf_opt(cf(&db, CF_RAFT), KEY_VOTE, bytes, &opts)
                .map_err(|e| StorageIOError::<u64>::write_vote(&e).into())
        })
        .await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError<u64>> {
        let db = self.db.clone();
        blocking(move || Self::get_meta(&db, KEY_VOTE)).await
    }

    /// Kept in memory only (openraft's default is to not keep it at all): persisting it would
    /// cost a write per commit, and a restarted node re-learns the commit index from the
    /// leader within one heartbeat.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError<u64>> {
        if let Some(c) = committed {
            self.committed.store(c.index, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        {
            let mut p = lock(&self.pending);
            for e in entries {
                let bytes = codec::encode("log entry", &e).map_err(write_err)?;
                encoded.push((e.log_id.index, e.log_id, bytes));
                p.insert(e.log_id.index, e);
            }
        }
        let op = Op::Append {
            entries: encoded,
            done: callback,
        };
        // Sending only blocks when the queue is full; do that off the async runtime.
        match self.writer.try_send(op) {
            Ok(()) => Ok(()),
            Err(std::sync::mpsc::TrySendError::Full(op)) => {
                let writer = self.writer.clone();
                blocking(move || {
                    writer
                        .send(op)
                        .map_err(|_| write_err(std::io::Error::other("log writer stopped")))
                })
                .await
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                Err(write_err(std::io::Error::other("log writer stopped")))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        lock(&self.pending).retain(|&i, _| i < log_id.index);
        let from = log_id.index;
        self.through_writer(move |done| Op::Truncate { from, done })
            .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        lock(&self.pending).retain(|&i, _| i > log_id.index);
        let record = codec::encode("purged", &log_id).map_err(write_err)?;
        let upto = log_id.index;
        self.through_writer(move |done| Op::Purge { upto, record, done })
            .await
    }
}
