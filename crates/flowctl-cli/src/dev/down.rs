//! `dev down`: stops the environment that `dev up` started, through `dev up` while it is
//! alive, else by signalling the nodes it left, and cleans up after a `dev up` that was killed.

use super::processes::{alive, send_signal, POLL};
use super::state::{read_state, release_state, remove_if_exists, state_path, DevState};
use anyhow::bail;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// `dev down` waits this long for `dev up` to clean up before it SIGKILLs what is left.
const DOWN_TIMEOUT: Duration = Duration::from_secs(30);
const KILL_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn down() -> anyhow::Result<()> {
    let path = state_path()?;
    let Some(state) = read_state(&path)? else {
        println!("no development environment is running");
        return Ok(());
    };
    let running: Vec<(String, u32, bool)> = state.processes();
    if running.iter().all(|(_, _, a)| !a) {
        remove_if_exists(&path)?;
        remove_temp_dir(&state);
        println!(
            "no development environment is running (removed the stale state file of pid {})",
            state.pid
        );
        return Ok(());
    }
    // `dev up` stops its nodes in order; nodes whose `dev up` is gone are stopped here.
    if state.up_alive() {
        send_signal(state.pid, rustix::process::Signal::TERM);
    } else {
        for n in state.nodes.iter().filter(|n| alive(n.pid, n.pid_start)) {
            send_signal(n.pid, rustix::process::Signal::TERM);
        }
    }
    let starts: HashMap<u32, u64> = std::iter::once((state.pid, state.pid_start))
        .chain(state.nodes.iter().map(|n| (n.pid, n.pid_start)))
        .collect();
    let left = |pids: &HashMap<u32, u64>| -> Vec<u32> {
        let mut v: Vec<u32> = pids
            .iter()
            .filter(|(pid, start)| alive(**pid, **start))
            .map(|(pid, _)| *pid)
            .collect();
        v.sort_unstable();
        v
    };
    let until = Instant::now() + DOWN_TIMEOUT;
    while !left(&starts).is_empty() && Instant::now() < until {
        tokio::time::sleep(POLL).await;
    }
    let stuck = left(&starts);
    if !stuck.is_empty() {
        for pid in &stuck {
            send_signal(*pid, rustix::process::Signal::KILL);
        }
        let until = Instant::now() + KILL_TIMEOUT;
        while !left(&starts).is_empty() && Instant::now() < until {
            tokio::time::sleep(POLL).await;
        }
        let still = left(&starts);
        if !still.is_empty() {
            bail!("processes {still:?} did not exit after SIGKILL");
        }
        println!("killed pids {stuck:?}, which did not stop within {DOWN_TIMEOUT:?}");
    }
    release_state(&path, state.pid);
    remove_temp_dir(&state);
    println!(
        "development environment stopped (dev up pid {}, nodes {})",
        state.pid,
        state
            .nodes
            .iter()
            .map(|n| n.pid.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Removes the temporary directory of an environment whose `dev up` did not (it was killed),
/// but only one that `dev up` made: a state file must not be able to name any directory.
fn remove_temp_dir(state: &DevState) {
    let made_by_dev_up = state.dir_is_temp
        && state.dir.parent() == Some(std::env::temp_dir().as_path())
        && state
            .dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("flowctl-dev-"));
    if made_by_dev_up {
        let _ = std::fs::remove_dir_all(&state.dir);
    }
}
