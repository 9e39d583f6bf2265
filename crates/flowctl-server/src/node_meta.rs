//! `<data-dir>/node.json`: this node's id and the cluster it belongs to.
//!
//! The id is generated once, when the data dir is new, and never changes or gets reused
//! (64 random bits). The cluster id is set when the node initializes a cluster or joins one,
//! and lets a member refuse a node whose data dir belongs to another cluster.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

const FILE: &str = "node.json";
const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    pub version: u32,
    pub node_id: u64,
    /// Empty until the node has initialized or joined a cluster.
    pub cluster_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("data dir {dir} belongs to node {existing}, but --node-id {wanted} was given")]
    IdMismatch {
        dir: PathBuf,
        existing: u64,
        wanted: u64,
    },
}

impl NodeMeta {
    /// Loads the meta file, or creates it with a new id when the data dir is new.
    pub fn load_or_create(dir: &Path, wanted_id: Option<u64>) -> Result<Self, Error> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let meta: NodeMeta =
                    serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                if meta.version != VERSION {
                    return Err(Error::Corrupt {
                        path,
                        message: format!("unknown version {}", meta.version),
                    });
                }
                if let Some(w) = wanted_id {
                    if w != meta.node_id {
                        return Err(Error::IdMismatch {
                            dir: dir.to_owned(),
                            existing: meta.node_id,
                            wanted: w,
                        });
                    }
                }
                Ok(meta)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // 63 random bits, never 0: ids fit in a signed 64-bit integer for JSON users.
                let id = wanted_id.unwrap_or_else(|| (rand::random::<u64>() >> 1).max(1));
                let meta = NodeMeta {
                    version: VERSION,
                    node_id: id,
                    cluster_id: String::new(),
                };
                meta.save(dir)?;
                Ok(meta)
            }
            Err(source) => Err(Error::Io { path, source }),
        }
    }

    /// Writes the file atomically (temp file, fsync, rename).
    pub fn save(&self, dir: &Path) -> Result<(), Error> {
        let path = dir.join(FILE);
        let tmp = dir.join(format!("{FILE}.tmp"));
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_generated_once_and_persisted() {
        let d = tempfile::tempdir().unwrap();
        let a = NodeMeta::load_or_create(d.path(), None).unwrap();
        let b = NodeMeta::load_or_create(d.path(), None).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.node_id, 0);
    }

    #[test]
    fn a_different_node_id_for_an_existing_dir_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let a = NodeMeta::load_or_create(d.path(), Some(7)).unwrap();
        assert_eq!(a.node_id, 7);
        assert!(matches!(
            NodeMeta::load_or_create(d.path(), Some(8)),
            Err(Error::IdMismatch { .. })
        ));
    }
}
