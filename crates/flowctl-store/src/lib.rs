//! The only crate that touches RocksDB: openraft log storage, state-machine storage and
//! snapshots, all in one RocksDB instance with one column family per concern.
//!
//! ```text
//!   cf "log"       index (u64 BE)          -> v1 Entry
//!   cf "raft"      "vote" | "committed" | "purged"
//!   cf "sm"        "p/<pipeline name>" | "r/<node id>"  -> v1 record
//!   cf "sm_meta"   "applied" | "membership" | "snapshot"
//!                  | "installing"            -> an install past its point of no return
//!                  | "staged/<sm key>"       -> a record of a snapshot being installed
//! ```
//!
//! Invariants:
//! - RocksDB calls never run on a tokio worker thread: every call goes through
//!   `spawn_blocking`.
//! - Log appends are one synced write batch per openraft `append` call, so concurrent
//!   proposals that openraft batches share one fsync (group commit).
//! - State-machine writes are one write batch per `apply` call, holding the records and the
//!   applied log id together, so a crash never leaves them out of step. They are not fsynced:
//!   the synced log replays them. Before a snapshot lets the log be purged, the WAL is synced.
//! - Every value carries a version byte (`flowctl_state::codec`).
//! - Snapshots are streamed record by record, both ways (format: `snapshot_file`): a build
//!   reads a RocksDB point-in-time view, an install stages the records and replaces `sm` with
//!   them only once they have all been checked (see `sm_store`).
//!
//! The in-memory [`flowctl_state::State`] mirrors the `sm` column family; reads are served from
//! it through [`StateReader`].

// openraft's storage traits fix the error type (`StorageError`, ~224 bytes); boxing it
// internally would only move the allocation.
#![allow(clippy::result_large_err)]

mod log_store;
mod sm_store;
mod snapshot_file;

pub use log_store::LogStore;
pub use sm_store::{AppliedState, StateMachineStore, StateReader};

use openraft::{StorageError, StorageIOError};
use rocksdb::{ColumnFamilyDescriptor, Options, DB};
use std::path::{Path, PathBuf};
use std::sync::Arc;

openraft::declare_raft_types!(
    /// flowctl's openraft type configuration.
    pub TypeConfig:
        D = flowctl_state::Command,
        R = flowctl_state::Outcome,
        NodeId = u64,
        Node = Member,
        SnapshotData = tokio::fs::File,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type Vote = openraft::Vote<u64>;
pub type SnapshotMeta = openraft::SnapshotMeta<u64, Member>;
pub type StoredMembership = openraft::StoredMembership<u64, Member>;

/// A member's addresses, as the membership records them.
///
/// Serialized as openraft's `BasicNode` was (`{"addr": …}`) plus `peer_addr`, so logs and
/// snapshots written before the peer port existed still decode: their members' peer address
/// is then the default, the public port + 1.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// The public API address (`host:port`) that clients and components use.
    pub addr: String,
    /// The address other nodes reach this one at: Raft, forwarding, membership.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub peer_addr: String,
}

impl Member {
    pub fn new(addr: impl Into<String>, peer_addr: impl Into<String>) -> Self {
        Member {
            addr: addr.into(),
            peer_addr: peer_addr.into(),
        }
    }

    /// Where other nodes reach this member.
    pub fn peer(&self) -> String {
        if self.peer_addr.is_empty() {
            default_peer_addr(&self.addr).unwrap_or_else(|| self.addr.clone())
        } else {
            self.peer_addr.clone()
        }
    }
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (peer {})", self.addr, self.peer())
    }
}

/// The default peer address of a node whose public address is `addr`: the same host, the
/// next port. `None` if `addr` has no port or its port is the last one.
pub fn default_peer_addr(addr: &str) -> Option<String> {
    let (host, port) = addr.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    Some(format!("{host}:{}", port.checked_add(1)?))
}

/// The largest snapshot a node accepts from a leader, in bytes. Every replicated collection is
/// bounded far below it; a larger snapshot is refused while it arrives, not after it has
/// filled the disk or the memory of the decoder.
pub const MAX_SNAPSHOT_BYTES: u64 = 2 << 30;

const CF_LOG: &str = "log";
const CF_RAFT: &str = "raft";
const CF_SM: &str = "sm";
const CF_SM_META: &str = "sm_meta";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open RocksDB at {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },
    #[error("cannot create {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load the state machine from {path}: {message}")]
    Load { path: PathBuf, message: String },
}

/// Tunables of the store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// fsync every log append. Only tests that do not care about durability turn it off.
    pub sync_log: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { sync_log: true }
    }
}

/// Opens (or creates) the store under `dir` and returns openraft's two storage halves.
pub fn open(dir: &Path, opts: StoreOptions) -> Result<(LogStore, StateMachineStore), Error> {
    let db_path = dir.join("rocksdb");
    let snap_dir = dir.join("snapshots");
    std::fs::create_dir_all(&snap_dir).map_err(|source| Error::Io {
        path: snap_dir.clone(),
        source,
    })?;
    let mut db_opts = Options::default();
    db_opts.create_if_missing(true);
    db_opts.create_missing_column_families(true);
    let cfs = [CF_LOG, CF_RAFT, CF_SM, CF_SM_META]
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    let db = DB::open_cf_descriptors(&db_opts, &db_path, cfs).map_err(|source| Error::Open {
        path: db_path.clone(),
        source,
    })?;
    let db = Arc::new(db);
    let log = LogStore::new(db.clone(), opts.sync_log);
    let sm = StateMachineStore::load(db, snap_dir).map_err(|e| Error::Load {
        path: db_path,
        message: e.to_string(),
    })?;
    Ok((log, sm))
}

/// The per-stage latency histogram of the write path, labelled `stage`:
/// - `validate`: parsing and validating a pipeline document on the node that received it;
/// - `forward`: a follower's whole forward (its queue, the RPC, the leader's work);
/// - `batch_wait`: a proposal waiting on the leader for its batch to start;
/// - `commit`: a batch from `client_write` to its outcome (append, replicate, commit, apply);
/// - `replicate`: the leader's AppendEntries RPC carrying entries, to its answer;
/// - `follower_append`: a follower's handling of it (append, flush, answer);
/// - `log_write`: one group commit of the log (one synced RocksDB write);
/// - `apply`: applying a run of committed entries to the state and encoding their records;
/// - `apply_write`: the state machine's RocksDB write of that run.
pub const WRITE_STAGE_SECONDS: &str = "flowctl_write_stage_seconds";

/// Records `elapsed` for `stage` in [`WRITE_STAGE_SECONDS`].
pub fn record_stage(stage: &'static str, elapsed: std::time::Duration) {
    metrics::histogram!(WRITE_STAGE_SECONDS, "stage" => stage).record(elapsed.as_secs_f64());
}

/// Runs a RocksDB closure off the async runtime.
async fn blocking<T, F>(f: F) -> Result<T, StorageError<u64>>
where
    F: FnOnce() -> Result<T, StorageError<u64>> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(join) => Err(StorageIOError::<u64>::write(&join).into()),
    }
}

fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name)
        .expect("column families are created when the store is opened")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_written_before_the_peer_port_decode_with_the_default_peer_address() {
        // openraft's BasicNode, as logs and snapshots before the peer port recorded members.
        let old: Member = serde_json::from_str(r#"{"addr":"10.0.0.1:8080"}"#).unwrap();
        assert_eq!(old, Member::new("10.0.0.1:8080", ""));
        assert_eq!(old.peer(), "10.0.0.1:8081");
        // An empty peer address is not written, so such a member's bytes stay as they were.
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            r#"{"addr":"10.0.0.1:8080"}"#
        );
        let new = Member::new("10.0.0.1:8080", "10.0.0.1:9000");
        let json = serde_json::to_string(&new).unwrap();
        assert_eq!(
            json,
            r#"{"addr":"10.0.0.1:8080","peer_addr":"10.0.0.1:9000"}"#
        );
        assert_eq!(
            serde_json::from_str::<Member>(&json).unwrap().peer(),
            "10.0.0.1:9000"
        );
        assert_eq!(default_peer_addr("h:65535"), None);
        assert_eq!(default_peer_addr("nohost"), None);
    }
}
