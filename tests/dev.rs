//! `flowctl dev up | status | down` end to end: one node, the embedded broker and the Stellar
//! example pipeline, with events flowing to the consumer; then `dev down` must leave no
//! process behind.
//!
//! Needs the example binaries next to `flowctl` (`cargo build --workspace --bins`).

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

use flowctl_testkit::{dev_base_port, flowctl_bin, wait_until};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const PIPELINE: &str = "stellar-token-pipeline";
/// The component ids of examples/stellar-pipeline.yaml.
const COMPONENTS: [&str; 3] = ["stellar-live-source", "ttp-processor", "consumer-app"];
/// The programs those components run.
const PROGRAMS: [&str; 3] = [
    "stellar-live-source-datalake",
    "ttp-processor",
    "consumer_app",
];
/// The consumer's running count of token transfer events, sent with its heartbeats.
const CONSUMER_EVENTS: &str = "flowctl_consumer_events_total";
const FLOW_TIMEOUT: Duration = Duration::from_secs(120);

/// The `dev up` child; on an early failure it is brought down so that nothing outlives the
/// test.
struct DevUp {
    child: Child,
    bin: PathBuf,
    state: PathBuf,
    log: PathBuf,
}

impl DevUp {
    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    fn flowctl(&self, args: &[&str]) -> Output {
        Command::new(&self.bin)
            .args(args)
            .env("FLOWCTL_DEV_STATE", &self.state)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

impl Drop for DevUp {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.flowctl(&["dev", "down"]);
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Every log under the environment's directory, last lines only, for failure messages.
fn logs_of(dir: &Path) -> String {
    let mut out = String::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "log") {
                out.push_str(&format!("\n== {}\n{}\n", p.display(), tail(&p, 15)));
            }
        }
    }
    out
}

/// Start time of a live, non-zombie process (`/proc/PID/stat` field 22).
fn started(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    if matches!(f.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    f.get(19)?.parse().ok()
}

/// The pipeline's instances that belong to the cluster at `endpoint`, found through /proc
/// (other clusters on this machine may run the same pipeline): pid and start time.
fn instances(endpoint: &str) -> Vec<(u32, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let env: HashMap<String, String> = environ
            .split(|b| *b == 0)
            .filter_map(|kv| {
                let s = String::from_utf8_lossy(kv);
                s.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect();
        let ours = env.get("FLOWCTL_PIPELINE").map(String::as_str) == Some(PIPELINE)
            && env
                .get("FLOWCTL_ENDPOINT")
                .is_some_and(|v| v.split(',').any(|e| e == endpoint));
        if let (true, Some(start)) = (ours, started(pid)) {
            out.push((pid, start));
        }
    }
    out
}

/// Whether `dev status -o json` shows every component healthy and the consumer counting
/// events.
fn flowing(status: &Value) -> bool {
    let Some(cs) = status["components"].as_array() else {
        return false;
    };
    let healthy = COMPONENTS.iter().all(|id| {
        cs.iter()
            .any(|c| c["id"] == *id && c["status"] == "healthy")
    });
    let events = cs
        .iter()
        .find(|c| c["id"] == "consumer-app")
        .and_then(|c| c["metrics"][CONSUMER_EVENTS].as_str())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    healthy && events > 0.0
}

#[test]
fn dev_up_runs_the_example_pipeline_and_dev_down_leaves_nothing_behind() {
    let bin = flowctl_bin().unwrap();
    let bin_dir = bin.parent().unwrap();
    let missing: Vec<&str> = PROGRAMS
        .into_iter()
        .filter(|p| !bin_dir.join(p).is_file())
        .collect();
    assert!(
        missing.is_empty(),
        "the example component binaries {missing:?} are not in {}; run `cargo build --workspace --bins` first",
        bin_dir.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let state_path = tmp.path().join("state.json");
    let log = tmp.path().join("dev-up.log");
    let base = dev_base_port();
    let endpoint = format!("127.0.0.1:{base}");
    let out = std::fs::File::create(&log).unwrap();
    // No --dir: the environment lives in a temporary directory that `dev up` removes.
    let child = Command::new(&bin)
        .args([
            "dev",
            "up",
            "--nodes",
            "1",
            "--base-port",
            &base.to_string(),
        ])
        .env("FLOWCTL_DEV_STATE", &state_path)
        .env_remove("FLOWCTL_ENDPOINTS")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut up = DevUp {
        child,
        bin: bin.clone(),
        state: state_path.clone(),
        log,
    };

    let mut last = Value::Null;
    let flowed = wait_until(FLOW_TIMEOUT, || {
        if !up.running() {
            return true;
        }
        let o = up.flowctl(&["dev", "status", "-o", "json"]);
        if !o.status.success() {
            return false;
        }
        last = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        flowing(&last)
    });
    let env_dir = PathBuf::from(last["state"]["dir"].as_str().unwrap_or_default());
    assert!(up.running(), "dev up exited early:\n{}", tail(&up.log, 40));
    assert!(
        flowed.is_ok() && flowing(&last),
        "within {FLOW_TIMEOUT:?}, dev status did not show {COMPONENTS:?} healthy with {CONSUMER_EVENTS} > 0; last status:\n{last:#}\ndev up:\n{}\n{}",
        tail(&up.log, 40),
        logs_of(&env_dir)
    );

    // Authentication is on: the banner's token works, and a call without one is refused.
    let printed = std::fs::read_to_string(&up.log).unwrap();
    let token = printed
        .lines()
        .find_map(|l| l.trim().strip_prefix("export FLOWCTL_TOKEN="))
        .unwrap_or_else(|| panic!("no export FLOWCTL_TOKEN= line:\n{printed}"))
        .to_owned();
    let call = |token: Option<&str>| {
        let mut cmd = Command::new(&up.bin);
        cmd.args(["get", "pipelines", "--endpoints", endpoint.as_str()])
            .env_remove("FLOWCTL_TOKEN")
            .env_remove("FLOWCTL_TOKEN_FILE")
            .stdin(Stdio::null());
        if let Some(t) = token {
            cmd.env("FLOWCTL_TOKEN", t);
        }
        cmd.output().unwrap()
    };
    let with = call(Some(&token));
    assert!(
        with.status.success(),
        "{}",
        String::from_utf8_lossy(&with.stderr)
    );
    let without = call(None);
    assert!(
        !without.status.success()
            && String::from_utf8_lossy(&without.stderr).contains("not authenticated"),
        "{}",
        String::from_utf8_lossy(&without.stderr)
    );

    // What `dev down` must stop: dev up, its node, and the three component instances.
    let state: Value = serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    assert_eq!(state["pid"], up.child.id());
    assert_eq!(state["endpoints"], endpoint.as_str());
    assert!(state["embedded_broker"].as_bool().unwrap());
    let mut recorded: Vec<(u32, u64)> = vec![(
        state["pid"].as_u64().unwrap() as u32,
        state["pid_start"].as_u64().unwrap(),
    )];
    for n in state["nodes"].as_array().unwrap() {
        recorded.push((
            n["pid"].as_u64().unwrap() as u32,
            n["pid_start"].as_u64().unwrap(),
        ));
    }
    assert_eq!(recorded.len(), 2, "{state:#}");
    let running = instances(&endpoint);
    assert_eq!(running.len(), COMPONENTS.len(), "instances: {running:?}");

    let down = up.flowctl(&["dev", "down"]);
    assert!(
        down.status.success(),
        "dev down failed: {}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(
        String::from_utf8_lossy(&down.stdout).contains("stopped"),
        "{}",
        String::from_utf8_lossy(&down.stdout)
    );
    let until = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(st) = up.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < until, "dev up still runs after dev down");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        exit.success(),
        "dev up exited with {exit}:\n{}",
        tail(&up.log, 40)
    );
    let left: Vec<&(u32, u64)> = recorded
        .iter()
        .chain(&running)
        .filter(|(pid, start)| started(*pid) == Some(*start))
        .collect();
    assert!(left.is_empty(), "still running after dev down: {left:?}");
    assert!(
        instances(&endpoint).is_empty(),
        "pipeline instances left: {:?}",
        instances(&endpoint)
    );
    assert!(!state_path.exists(), "dev up left its state file");
    assert!(
        !env_dir.as_os_str().is_empty() && !env_dir.exists(),
        "dev up left its temporary directory {}",
        env_dir.display()
    );

    // With nothing running, status fails and down is a no-op.
    let status = up.flowctl(&["dev", "status"]);
    assert!(!status.status.success());
    assert!(String::from_utf8_lossy(&status.stderr).contains("no development environment"));
    let again = up.flowctl(&["dev", "down"]);
    assert!(again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stdout).contains("no development environment is running")
    );
}

#[test]
fn dev_up_refuses_a_pipeline_of_another_driver_before_starting_anything() {
    let bin = flowctl_bin().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(&bin)
        .args(["dev", "up", "--driver", "docker", "--pipeline"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/stellar-pipeline.yaml"))
        .env("FLOWCTL_DEV_STATE", tmp.path().join("state.json"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(
            "stellar-pipeline.yaml: spec.driver is process, but dev up runs --driver docker"
        ),
        "{err}"
    );
    assert!(!tmp.path().join("state.json").exists());
}
