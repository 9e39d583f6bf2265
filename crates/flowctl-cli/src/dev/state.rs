//! The state file: what `dev up` records about itself and the nodes it started, so that
//! `dev status` and `dev down` (other processes) can find them. It lives at
//! `$FLOWCTL_DEV_STATE`, else `~/.flowctl/dev/state.json`, is claimed exclusively and is
//! always replaced atomically.

use super::processes::alive;
use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// The state file's format version; bump it when a field changes meaning.
pub(super) const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Phase {
    Starting,
    Running,
    Stopping,
}

/// How the pipeline's components run: `--driver` of `dev up`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DevDriver {
    /// As child processes of the nodes (examples/stellar-pipeline.yaml).
    #[default]
    Process,
    /// As Docker containers, from the images scripts/build-images.sh builds
    /// (examples/stellar-pipeline-docker.yaml).
    Docker,
}

impl DevDriver {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Docker => "docker",
        }
    }
}

/// What `dev up` records about itself; `dev down` and `dev status` read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct DevState {
    pub(super) version: u32,
    /// The `dev up` process.
    pub(super) pid: u32,
    /// Its start time in clock ticks since boot (`/proc/PID/stat` field 22), against pid reuse.
    pub(super) pid_start: u64,
    pub(super) phase: Phase,
    pub(super) started_at: String,
    /// As `FLOWCTL_ENDPOINTS` takes them.
    pub(super) endpoints: String,
    pub(super) kafka_brokers: String,
    /// Whether the brokers are the embedded one inside `dev up`.
    pub(super) embedded_broker: bool,
    /// Node data and logs.
    pub(super) dir: PathBuf,
    /// Whether `dir` is a temporary directory that `dev up` removes on exit.
    pub(super) dir_is_temp: bool,
    pub(super) pipeline: String,
    pub(super) pipeline_file: PathBuf,
    pub(super) nodes: Vec<NodeState>,
    /// The admin token's file (node 0 creates the cluster with `--auth`).
    #[serde(default)]
    pub(super) admin_token_file: Option<PathBuf>,
    /// How the components run (absent in files of older releases: processes).
    #[serde(default)]
    pub(super) driver: DevDriver,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct NodeState {
    pub(super) index: u16,
    pub(super) pid: u32,
    pub(super) pid_start: u64,
    pub(super) addr: String,
    pub(super) metrics_addr: String,
    pub(super) data_dir: PathBuf,
    pub(super) log: PathBuf,
}

impl DevState {
    pub(super) fn up_alive(&self) -> bool {
        alive(self.pid, self.pid_start)
    }

    /// Every recorded process, `dev up` first, with whether it is still running.
    pub(super) fn processes(&self) -> Vec<(String, u32, bool)> {
        let mut out = vec![("dev up".to_owned(), self.pid, self.up_alive())];
        out.extend(self.nodes.iter().map(|n| {
            (
                format!("node {}", n.index),
                n.pid,
                alive(n.pid, n.pid_start),
            )
        }));
        out
    }
}

pub(super) fn state_path() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("FLOWCTL_DEV_STATE").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".flowctl/dev/state.json")),
        None => bail!("neither FLOWCTL_DEV_STATE nor HOME is set; set one to say where the dev state file lives"),
    }
}

pub(super) fn read_state(path: &Path) -> anyhow::Result<Option<DevState>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let v: Value = serde_json::from_str(&text)
        .with_context(|| format!("the dev state file {} is not valid JSON", path.display()))?;
    if v["version"].as_u64() != Some(u64::from(STATE_VERSION)) {
        bail!(
            "the dev state file {} has version {}; this flowctl understands version {STATE_VERSION}",
            path.display(),
            v["version"]
        );
    }
    let s = serde_json::from_value(v)
        .with_context(|| format!("the dev state file {} is malformed", path.display()))?;
    Ok(Some(s))
}

/// Replaces the state file atomically (write a sibling, then rename), so that readers never
/// see half a file.
pub(super) fn write_state(path: &Path, s: &DevState) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(s)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

/// Creates the state file exclusively, after making sure no other environment is alive.
pub(super) fn claim_state(path: &Path, s: &DevState) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    match read_state(path) {
        Ok(Some(old)) if old.up_alive() => bail!(
            "a development environment is already running (pid {}, endpoints {}); stop it with `flowctl dev down`",
            old.pid,
            old.endpoints
        ),
        Ok(Some(old)) => {
            let left: Vec<String> = old
                .processes()
                .into_iter()
                .filter(|(_, _, a)| *a)
                .map(|(what, pid, _)| format!("{what} pid {pid}"))
                .collect();
            if !left.is_empty() {
                bail!(
                    "a previous development environment left processes running ({}); stop them with `flowctl dev down`",
                    left.join(", ")
                );
            }
            remove_if_exists(path)?;
        }
        Ok(None) => {}
        Err(e) => {
            eprintln!("warning: ignoring the unreadable dev state file: {e:#}");
            remove_if_exists(path)?;
        }
    }
    let mut f = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "another `flowctl dev up` is starting (state file {})",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
    };
    f.write_all(&serde_json::to_vec_pretty(s)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

pub(super) fn remove_if_exists(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("cannot remove {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Removes the state file if it is still the one `pid` wrote.
pub(super) fn release_state(path: &Path, pid: u32) {
    if let Ok(Some(s)) = read_state(path) {
        if s.pid == pid {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::processes::proc_stat;
    use super::*;

    #[test]
    fn a_second_claim_is_refused_while_the_first_is_alive_and_a_stale_one_is_replaced() {
        let dir = std::env::temp_dir().join(format!("flowctl-dev-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("state.json");
        let pid = std::process::id();
        let mut s = DevState {
            version: STATE_VERSION,
            pid,
            pid_start: proc_stat(pid).unwrap().1,
            phase: Phase::Running,
            started_at: "2025-01-01T00:00:00Z".into(),
            endpoints: "127.0.0.1:1".into(),
            kafka_brokers: String::new(),
            embedded_broker: true,
            dir: dir.clone(),
            dir_is_temp: false,
            pipeline: "p".into(),
            pipeline_file: "p.yaml".into(),
            nodes: vec![],
            admin_token_file: None,
            driver: DevDriver::Process,
        };
        claim_state(&path, &s).unwrap();
        assert_eq!(read_state(&path).unwrap().unwrap(), s);
        let err = claim_state(&path, &s).unwrap_err().to_string();
        assert!(err.contains("already running"), "{err}");
        // The same pid with another start time is a different, dead process.
        s.pid_start += 1;
        write_state(&path, &s).unwrap();
        s.pid_start -= 1;
        claim_state(&path, &s).unwrap();
        release_state(&path, pid);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
