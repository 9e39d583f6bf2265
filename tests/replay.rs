//! Range replay jobs on a real 3-node cluster with the embedded broker: the example source
//! (two replicas, chunk commands only) emits the chunks the leader dispatches. The leader and a
//! source instance are killed along the way; retries, pause, resume and cancel are exercised.
//!
//! Needs the example binaries (`cargo build --workspace --bins`, which scripts/test.sh runs).

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

use flowctl_bus::EmbeddedBroker;
use flowctl_testkit::{flowctl_bin, wait_until, Cluster, ClusterOptions};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn bin(name: &str) -> PathBuf {
    let p = flowctl_bin().unwrap().parent().unwrap().join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the examples first (cargo build --workspace --bins)",
        p.display()
    );
    p
}

fn doc(name: &str, replicas: u32, extra_env: &str) -> String {
    format!(
        r#"apiVersion: flowctl/v1
kind: Pipeline
metadata:
  name: {name}
spec:
  bus:
    partitions: 4
  sources:
    - id: source
      command: ["{src}"]
      replicas: {replicas}
      restart_policy: always
      env:
        LIVE: "false"
        REPLAY_CONCURRENCY: "2"
{extra_env}
  sinks:
    - id: sink
      command: ["{sink}"]
      inputs: [source]
"#,
        src = bin("stellar-live-source-datalake").display(),
        sink = bin("consumer-registration").display(),
    )
}

fn cluster(broker: &EmbeddedBroker) -> Cluster {
    Cluster::start(
        3,
        ClusterOptions {
            extra_args: vec![
                "--kafka-brokers".into(),
                broker.bootstrap_servers().to_owned(),
                "--node-grace".into(),
                "3".into(),
                "--heartbeat-ttl".into(),
                "3".into(),
            ],
            ..Default::default()
        },
    )
    .unwrap()
}

fn apply(c: &Cluster, name: &str, text: &str) {
    let f = c.dir().join(format!("{name}.yaml"));
    std::fs::write(&f, text).unwrap();
    let out = c.flowctl(0, &["apply", "-f", f.to_str().unwrap()]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until every source replica is registered and healthy.
fn wait_sources(c: &Cluster, replicas: u32) {
    let ids: Vec<String> = if replicas == 1 {
        vec!["source".into()]
    } else {
        (0..replicas).map(|r| format!("source-{r}")).collect()
    };
    wait_until(Duration::from_secs(30), || {
        c.json(0, &["list", "--timeout", "5"]).is_ok_and(|v| {
            ids.iter().all(|id| {
                v.as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x["id"] == id.as_str() && x["status"] == "healthy")
            })
        })
    })
    .unwrap_or_else(|e| panic!("sources not healthy: {e}\n{}", c.log_tail(0, 30)));
}

fn start_job(c: &Cluster, node: usize, args: &[&str]) -> String {
    let mut a = vec!["replay", "--detach"];
    a.extend_from_slice(args);
    let out = c.flowctl(node, &a).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn status(c: &Cluster, node: usize, job: &str) -> Value {
    c.json(node, &["replay", "status", job, "--timeout", "5"])
        .unwrap_or(Value::Null)
}

fn status_any(c: &Cluster, job: &str) -> Value {
    for i in 0..c.nodes.len() {
        let v = status(c, i, job);
        if !v.is_null() {
            return v;
        }
    }
    Value::Null
}

fn done_chunks(v: &Value) -> u64 {
    v["chunks"]["done"].as_u64().unwrap_or(0)
}

/// The source instances' pids (processes whose environment names the pipeline and the source).
fn source_pids(pipeline: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let env = String::from_utf8_lossy(&env).into_owned();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
        if !zombie
            && env
                .split('\0')
                .any(|kv| kv == format!("FLOWCTL_PIPELINE={pipeline}"))
            && env
                .split('\0')
                .any(|kv| kv.starts_with("FLOWCTL_COMPONENT_ID=source"))
        {
            out.push(pid);
        }
    }
    out
}

/// Which of `wanted` are in the topic in records of `job` (reads until all are found or the
/// topic is quiet).
fn replayed_ledgers(brokers: &str, topic: &str, job: &str, wanted: &[u64]) -> BTreeSet<u64> {
    use flowctl_bus::{Consumer, ConsumerOptions};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cancel = flowctl_agent::CancellationToken::new();
        let c = Consumer::assign(
            ConsumerOptions::from_beginning(brokers, vec![topic.to_owned()]),
            &cancel,
        )
        .await
        .unwrap();
        let mut out = BTreeSet::new();
        while out.len() < wanted.len() {
            let Ok(r) = tokio::time::timeout(Duration::from_secs(30), c.recv()).await else {
                break;
            };
            let r = r.unwrap();
            let key = r.ledger_key().unwrap();
            if r.headers.get("flowctl-replay-job") == Some(job.as_bytes()) && wanted.contains(&key)
            {
                out.insert(key);
            }
        }
        out
    })
}

const FROM: u64 = 1_000_000;
const TO: u64 = 1_099_999;

#[test]
fn a_replay_covers_every_ledger_exactly_once_through_leader_and_source_kills() {
    let broker = EmbeddedBroker::start(1).unwrap();
    let mut c = cluster(&broker);
    apply(&c, "backfill", &doc("backfill", 2, ""));
    wait_sources(&c, 2);
    let started = Instant::now();
    let job = start_job(
        &c,
        1,
        &[
            "--pipeline",
            "backfill",
            "--from-ledger",
            &FROM.to_string(),
            "--to-ledger",
            &TO.to_string(),
        ],
    );
    assert!(job.starts_with("rj-"), "{job}");
    let total_chunks = (TO - FROM + 1).div_ceil(64);
    // Kill the leader at about 20% and 55%, and one source instance at about 35%.
    let mut kills = vec![(0.20, "leader"), (0.35, "source"), (0.55, "leader")];
    let mut last = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(900);
    while Instant::now() < deadline {
        let v = status_any(&c, &job);
        if !v.is_null() {
            last = v;
        }
        let done = done_chunks(&last) as f64 / total_chunks as f64;
        if last["state"] == "completed" {
            break;
        }
        if let Some(&(at, what)) = kills.first() {
            if done >= at {
                kills.remove(0);
                if what == "leader" {
                    let l = c.leader_index().unwrap();
                    eprintln!("{:.0}% done: SIGKILL leader node {l}", done * 100.0);
                    c.kill(l);
                    wait_until(Duration::from_secs(15), || c.leader_index().is_ok()).unwrap();
                    c.restart(l).unwrap();
                } else {
                    let pids = source_pids("backfill");
                    eprintln!(
                        "{:.0}% done: SIGKILL source instance {}",
                        done * 100.0,
                        pids[0]
                    );
                    std::process::Command::new("kill")
                        .args(["-KILL", &pids[0].to_string()])
                        .status()
                        .unwrap();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(last["state"], "completed", "{last}");
    assert!(
        kills.is_empty(),
        "the job finished before every kill: {kills:?}"
    );
    eprintln!(
        "{} ledgers in {:?}: {:.0} ledgers/s reported",
        TO - FROM + 1,
        started.elapsed(),
        last["ledgers_per_second"].as_f64().unwrap_or(0.0)
    );
    // Every ledger of the range is in exactly one chunk marked done.
    let chunks = c.json(0, &["replay", "chunks", &job]).unwrap();
    let chunks = chunks.as_array().unwrap();
    assert_eq!(chunks.len() as u64, total_chunks);
    let mut covered: BTreeMap<u64, u32> = BTreeMap::new();
    for ch in chunks {
        assert_eq!(ch["state"], "done", "{ch}");
        for l in ch["from_ledger"].as_u64().unwrap()..=ch["to_ledger"].as_u64().unwrap() {
            *covered.entry(l).or_default() += 1;
        }
    }
    assert_eq!(covered.len() as u64, TO - FROM + 1);
    assert!(covered.keys().all(|l| (FROM..=TO).contains(l)));
    assert!(covered.values().all(|n| *n == 1));
    // And the topic holds every ledger of the range, tagged with the job. A chunk re-run after
    // a crash may have written some twice; downstream deduplicates by the ledger key.
    // Counted by chunk: each done chunk reported one acknowledged record per ledger.
    for ch in chunks {
        let ledgers = ch["to_ledger"].as_u64().unwrap() - ch["from_ledger"].as_u64().unwrap() + 1;
        assert_eq!(ch["records"].as_u64(), Some(ledgers), "{ch}");
    }
    // And the records are in the topic, tagged with the job. librdkafka's mock broker keeps
    // only the newest few MB of each partition, so look for the chunk that finished last.
    let last_done = chunks
        .iter()
        .max_by_key(|ch| {
            (
                ch["updated_at"].as_str().unwrap().to_owned(),
                ch["index"].as_u64(),
            )
        })
        .unwrap();
    let sample: Vec<u64> = (last_done["from_ledger"].as_u64().unwrap()
        ..=last_done["to_ledger"].as_u64().unwrap())
        .collect();
    let emitted = replayed_ledgers(
        broker.bootstrap_servers(),
        "flowctl.backfill.source",
        &job,
        &sample,
    );
    assert_eq!(emitted, sample.into_iter().collect::<BTreeSet<u64>>());
}

#[test]
fn retryable_failures_are_retried_and_exhausted_or_fatal_chunks_fail_the_job() {
    let broker = EmbeddedBroker::start(1).unwrap();
    let c = cluster(&broker);
    apply(
        &c,
        "retries",
        &doc(
            "retries",
            1,
            "        REPLAY_FAIL_RETRYABLE: \"1:2,5:9\"\n        REPLAY_FAIL_FATAL: \"3\"",
        ),
    );
    wait_sources(&c, 1);
    // The blocking form waits for the end and exits non-zero when the job failed.
    let out = c
        .flowctl(
            2,
            &[
                "replay",
                "--pipeline",
                "retries",
                "--from-ledger",
                "5000",
                "--to-ledger",
                "5639",
                "--max-attempts",
                "3",
                "--timeout",
                "120",
            ],
        )
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{stdout}");
    assert!(stderr.contains("ended failed"), "{stderr}");
    let job = stdout
        .split_whitespace()
        .find(|w| w.starts_with("rj-"))
        .unwrap()
        .to_owned();
    let v = c.json(0, &["replay", "status", &job]).unwrap();
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(v["chunks"]["done"], 8, "{v}");
    assert_eq!(v["chunks"]["failed"], 2, "{v}");
    let failed: BTreeMap<u64, Value> = v["failed_chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ch| (ch["index"].as_u64().unwrap(), ch.clone()))
        .collect();
    // Chunk 3 failed at once (not retryable); chunk 5 failed every one of its 3 attempts.
    assert_eq!(failed.keys().copied().collect::<Vec<_>>(), [3, 5], "{v}");
    assert_eq!(failed[&3]["attempts"], 1, "{v}");
    assert_eq!(failed[&5]["attempts"], 3, "{v}");
    assert!(!failed[&3]["error"].as_str().unwrap().is_empty());
    // Chunk 1 failed twice and then succeeded.
    let chunks = c
        .json(1, &["replay", "chunks", &job, "--state", "done"])
        .unwrap();
    let one = chunks
        .as_array()
        .unwrap()
        .iter()
        .find(|ch| ch["index"] == 1)
        .unwrap();
    assert_eq!(one["attempts"], 3, "{one}");
    assert_eq!(one["records"], 64, "{one}");
}

#[test]
fn pause_stops_dispatching_resume_continues_through_lost_sources_and_cancel_keeps_done_chunks() {
    let broker = EmbeddedBroker::start(1).unwrap();
    let c = cluster(&broker);
    apply(&c, "ctl", &doc("ctl", 2, ""));
    wait_sources(&c, 2);
    let args = |from: &str, to: &str| -> Vec<String> {
        [
            "--pipeline",
            "ctl",
            "--from-ledger",
            from,
            "--to-ledger",
            to,
            "--chunk-size",
            "16",
            "--max-parallel",
            "1",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let a = args("10000", "13199");
    let job = start_job(&c, 0, &a.iter().map(String::as_str).collect::<Vec<_>>());
    let out = c.flowctl(1, &["replay", "pause", &job]).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("paused"));
    // Once what was in flight settles, nothing moves.
    wait_until(Duration::from_secs(20), || {
        let v = status(&c, 0, &job);
        v["chunks"]["assigned"] == 0 && v["chunks"]["running"] == 0
    })
    .unwrap();
    let before = done_chunks(&status(&c, 0, &job));
    std::thread::sleep(Duration::from_secs(2));
    let v = status(&c, 2, &job);
    assert_eq!(done_chunks(&v), before, "{v}");
    assert_eq!(v["state"], "paused");
    assert!(before < 200, "the job ran to the end before it was paused");

    // Resume; partway, SIGKILL every source instance: the job waits, and resumes when the
    // supervisor has them back.
    c.flowctl(2, &["replay", "resume", &job]).unwrap();
    wait_until(Duration::from_secs(30), || {
        done_chunks(&status(&c, 0, &job)) >= before + 20
    })
    .unwrap();
    for pid in source_pids("ctl") {
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
    }
    wait_until(Duration::from_secs(90), || {
        status(&c, 0, &job)["state"] == "completed"
    })
    .unwrap_or_else(|e| panic!("{e}: {}", status(&c, 0, &job)));
    let v = status(&c, 1, &job);
    assert_eq!(v["chunks"]["done"], 200, "{v}");

    // Cancel: the job stops, done chunks stay recorded, nothing is left in flight.
    let b = args("20000", "29999");
    let job = start_job(&c, 1, &b.iter().map(String::as_str).collect::<Vec<_>>());
    wait_until(Duration::from_secs(30), || {
        done_chunks(&status(&c, 0, &job)) >= 5
    })
    .unwrap();
    let out = c.flowctl(0, &["replay", "cancel", &job]).unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("cancelled"));
    let v = status(&c, 2, &job);
    let done = done_chunks(&v);
    assert!((5..625).contains(&done), "{v}");
    assert_eq!(v["chunks"]["assigned"], 0, "{v}");
    assert_eq!(v["chunks"]["running"], 0, "{v}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(done_chunks(&status(&c, 0, &job)), done);
    let out = c.flowctl(0, &["replay", "resume", &job]).unwrap();
    assert!(!out.status.success(), "a cancelled job resumed");
    let listed = c.json(1, &["replay", "ls"]).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
}
