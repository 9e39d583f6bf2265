//! openraft log storage on the `log` and `raft` column families.

use crate::{blocking, cf, Entry, LogId, TypeConfig, Vote, CF_LOG, CF_RAFT};
use flowctl_state::codec;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogId, RaftLogReader, StorageError, StorageIOError};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";

/// The Raft log. Cheap to clone: clones share one RocksDB.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    sync: bool,
    committed: Arc<AtomicU64>,
    syncer: Option<std::sync::mpsc::SyncSender<LogFlushed<TypeConfig>>>,
}

/// Appends waiting for the next WAL fsync. When the queue is full, `append` waits (on a
/// blocking thread) for room: backpressure, not unbounded memory.
const SYNC_QUEUE: usize = 16 * 1024;

/// Group commit. `append` writes its batch to RocksDB at once without fsync, so the entries
/// are readable immediately, and hands its flush callback to this thread. The thread takes
/// every callback queued so far, syncs the WAL once, and completes them all: concurrent
/// proposals share one fsync, and openraft's core never waits for the disk.
///
/// The thread holds only a weak reference, so the database closes as soon as the stores drop.
fn run_syncer(db: std::sync::Weak<DB>, rx: std::sync::mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let result = match db.upgrade() {
            Some(db) => db.flush_wal(true).map_err(|e| e.to_string()),
            None => Err("the store is closed".to_owned()),
        };
        metrics::counter!("flowctl_store_log_fsyncs_total").increment(1);
        metrics::histogram!("flowctl_store_log_fsync_batch_size").record(waiting.len() as f64);
        for cb in waiting {
            match &result {
                Ok(()) => cb.log_io_completed(Ok(())),
                Err(e) => cb.log_io_completed(Err(std::io::Error::other(e.clone()))),
            }
        }
    }
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

impl LogStore {
    pub(crate) fn new(db: Arc<DB>, sync: bool) -> Self {
        let syncer = if sync {
            let (tx, rx) = std::sync::mpsc::sync_channel(SYNC_QUEUE);
            let db = Arc::downgrade(&db);
            std::thread::Builder::new()
                .name("flowctl-log-sync".into())
                .spawn(move || run_syncer(db, rx))
                .expect("the OS can start the log sync thread");
            Some(tx)
        } else {
            None
        };
        LogStore {
            db,
            sync,
            committed: Arc::new(AtomicU64::new(0)),
            syncer,
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
        let db = self.db.clone();
        blocking(move || {
            let mut out = Vec::new();
            let from = index_key(start);
            let iter = db.iterator_cf(
                cf(&db, CF_LOG),
                IteratorMode::From(&from, Direction::Forward),
            );
            for item in iter {
                let (k, v) = item.map_err(read_err)?;
                let idx = key_index(&k);
                if end.is_some_and(|e| idx >= e) {
                    break;
                }
                out.push(codec::decode::<Entry>("log entry", &v).map_err(read_err)?);
            }
            Ok(out)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let db = self.db.clone();
        blocking(move || {
            let last_purged: Option<LogId> = Self::get_meta(&db, KEY_PURGED)?;
            let last = match db.iterator_cf(cf(&db, CF_LOG), IteratorMode::End).next() {
                None => None,
                Some(item) => {
                    let (_, v) = item.map_err(read_err)?;
                    let e: Entry = codec::decode("log entry", &v).map_err(read_err)?;
                    Some(*e.get_log_id())
                }
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

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError<u64>> {
        if let Some(c) = committed {
            self.committed.store(c.index, Ordering::Relaxed);
        }
        let db = self.db.clone();
        let bytes = codec::encode("committed", &committed).map_err(write_err)?;
        // Not synced: losing it only makes a restarted node re-learn the commit index.
        blocking(move || {
            db.put_cf(cf(&db, CF_RAFT), KEY_COMMITTED, bytes)
                .map_err(write_err)
        })
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError<u64>> {
        let db = self.db.clone();
        blocking(move || Ok(Self::get_meta::<Option<LogId>>(&db, KEY_COMMITTED)?.flatten())).await
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
        let mut batch = WriteBatch::default();
        for e in entries {
            let bytes = codec::encode("log entry", &e).map_err(write_err)?;
            batch.put_cf(cf(&self.db, CF_LOG), index_key(e.get_log_id().index), bytes);
        }
        let db = self.db.clone();
        let syncer = self.syncer.clone();
        blocking(move || {
            // Unsynced write: visible to readers now, durable at the syncer's next fsync.
            if let Err(e) = db.write(batch) {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                return Err(write_err(e));
            }
            match syncer {
                Some(tx) => tx
                    .send(callback)
                    .map_err(|_| write_err(std::io::Error::other("log sync thread stopped"))),
                None => {
                    callback.log_io_completed(Ok(()));
                    Ok(())
                }
            }
        })
        .await
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        let db = self.db.clone();
        let opts = self.write_opts();
        blocking(move || {
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(
                cf(&db, CF_LOG),
                index_key(log_id.index),
                index_key(u64::MAX),
            );
            batch.delete_cf(cf(&db, CF_LOG), index_key(u64::MAX));
            db.write_opt(batch, &opts).map_err(write_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError<u64>> {
        let db = self.db.clone();
        let opts = self.write_opts();
        let purged = codec::encode("purged", &log_id).map_err(write_err)?;
        blocking(move || {
            let mut batch = WriteBatch::default();
            batch.put_cf(cf(&db, CF_RAFT), KEY_PURGED, purged);
            batch.delete_range_cf(
                cf(&db, CF_LOG),
                index_key(0),
                index_key(log_id.index.saturating_add(1)),
            );
            db.write_opt(batch, &opts).map_err(write_err)
        })
        .await
    }
}
