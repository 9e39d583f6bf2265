//! Deployment with the `process` driver on a real 3-node cluster: the example components
//! (which register through flowctl-agent) run as supervised child processes.
//!
//! Needs the example binaries next to `flowctl` (`cargo build --workspace --bins`, which
//! `scripts/test.sh` runs).

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

use flowctl_testkit::{flowctl_bin, wait_until, Cluster, ClusterOptions};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

fn example_bin(name: &str) -> PathBuf {
    let p = flowctl_bin().unwrap().parent().unwrap().join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the examples first (cargo build --workspace --bins)",
        p.display()
    );
    p
}

/// A running instance of the pipeline, found through /proc.
#[derive(Debug, Clone)]
struct Proc {
    pid: u32,
    ppid: u32,
    env: HashMap<String, String>,
}

fn instances(pipeline: &str) -> Vec<Proc> {
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
        if env.get("FLOWCTL_PIPELINE").map(String::as_str) != Some(pipeline) {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Skip zombies: state is the first field after the command name.
        let after = stat
            .rsplit_once(')')
            .map(|(_, r)| r.trim().to_owned())
            .unwrap_or_default();
        let fields: Vec<&str> = after.split_whitespace().collect();
        if fields.first() == Some(&"Z") {
            continue;
        }
        let ppid = fields.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
        out.push(Proc { pid, ppid, env });
    }
    out
}

fn instance_of<'a>(procs: &'a [Proc], component: &str) -> Option<&'a Proc> {
    procs
        .iter()
        .find(|p| p.env.get("FLOWCTL_COMPONENT_ID").map(String::as_str) == Some(component))
}

fn pipeline_doc(name: &str, my_var: &str) -> String {
    let src = example_bin("source-registration");
    let proc_ = example_bin("processor-registration");
    let sink = example_bin("consumer-registration");
    format!(
        r#"apiVersion: flowctl/v1
kind: Pipeline
metadata:
  name: {name}
spec:
  sources:
    - id: src
      command: ["{src}"]
      output_event_types: [raw_ledger_service.RawLedgerChunk]
      restart_policy: always
  processors:
    - id: proc
      command: ["{proc_}"]
      inputs: [src]
      input_event_types: [raw_ledger_service.RawLedgerChunk]
      output_event_types: [token_transfer.TokenTransferEvent]
      env:
        MY_VAR: "{my_var}"
      restart_policy: always
  sinks:
    - id: sink
      command: ["{sink}"]
      inputs: [proc]
      input_event_types: [token_transfer.TokenTransferEvent]
      restart_policy: always
"#,
        src = src.display(),
        proc_ = proc_.display(),
        sink = sink.display()
    )
}

fn apply(c: &Cluster, node: usize, extra: &[&str], file: &std::path::Path) -> String {
    c.apply_file(node, extra, file).unwrap()
}

fn healthy(c: &Cluster, node: usize) -> Vec<String> {
    c.healthy(node)
}

#[test]
fn applied_pipeline_runs_supervised_processes_that_survive_crashes_node_loss_and_changes() {
    let mut c = Cluster::start(
        3,
        ClusterOptions {
            extra_args: vec![
                "--node-grace".into(),
                "3".into(),
                "--heartbeat-ttl".into(),
                "3".into(),
            ],
            // With authentication on: the instances register with their own tokens.
            secure: true,
            ..Default::default()
        },
    )
    .unwrap();
    let name = "deploy-test";
    let file = c.dir().join("p.yaml");
    std::fs::write(&file, pipeline_doc(name, "v1")).unwrap();
    let said = apply(&c, 1, &["--allow-unregistered-types"], &file);
    for id in ["src", "proc", "sink"] {
        assert!(said.contains(&format!("start {id}")), "{said}");
    }

    // They run, register through the agent, and become healthy.
    wait_until(Duration::from_secs(30), || {
        let h = healthy(&c, 2);
        ["src", "proc", "sink"]
            .iter()
            .all(|id| h.iter().any(|x| x == id))
    })
    .unwrap_or_else(|e| {
        panic!(
            "components did not become healthy: {e}\n{}",
            c.log_tail(0, 30)
        )
    });
    let procs = instances(name);
    assert_eq!(procs.len(), 3, "{procs:?}");
    let p = instance_of(&procs, "proc").unwrap();
    assert_eq!(p.env["MY_VAR"], "v1");
    assert_eq!(p.env["ENABLE_FLOWCTL"], "true");
    assert!(p.env["FLOWCTL_ENDPOINT"].split(',').count() == 3);
    assert_eq!(p.env["INPUT_TOPICS"], "flowctl.deploy-test.src");
    assert_eq!(p.env["OUTPUT_TOPIC"], "flowctl.deploy-test.proc");
    // Each instance carries its placement epoch (the log index of its placement).
    let epoch_of = |p: &Proc| -> u64 { p.env["FLOWCTL_EPOCH"].parse().unwrap() };
    assert!(epoch_of(p) > 0, "{:?}", p.env);

    // Their output is kept on the node that runs them.
    let node_of = |ppid: u32, c: &Cluster| c.nodes.iter().position(|n| n.pid() == Some(ppid));
    let runs_on = node_of(p.ppid, &c).expect("the processor is a child of a flowctl node");
    let log = c.nodes[runs_on]
        .data_dir
        .join("logs")
        .join(name)
        .join("proc-0.log");
    wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .map(|t| !t.is_empty())
            .unwrap_or(false)
    })
    .unwrap_or_else(|e| panic!("no output in {}: {e}", log.display()));

    // READY and STATUS once all instances are healthy; describe shows where they run.
    wait_until(Duration::from_secs(15), || {
        c.json(0, &["get", "pipeline", name])
            .map(|v| v["ready"] == 3 && v["desired"] == 3 && v["status"] == "Running")
            .unwrap_or(false)
    })
    .unwrap();
    let described = c.flowctl(0, &["describe", "pipeline", name]).unwrap();
    let described = String::from_utf8_lossy(&described.stdout).into_owned();
    assert!(
        described.contains("proc/0") && described.contains("Running (3/3 ready)"),
        "{described}"
    );

    // `flowctl logs` from a node that does not run the instance.
    let other = (runs_on + 1) % 3;
    let out = c
        .flowctl(other, &["logs", "proc", "--pipeline", name, "--tail", "5"])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        !text.is_empty() && text.lines().all(|l| l.starts_with("[deploy-test/proc/0] ")),
        "{text}"
    );
    // --since and --timestamps use each line's stored write time.
    let out = c
        .flowctl(
            other,
            &[
                "logs",
                "proc",
                "--since",
                "1h",
                "--timestamps",
                "--tail",
                "1",
            ],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.starts_with("[deploy-test/proc/0] 20") && text.contains('T'),
        "{text}"
    );

    // --follow keeps streaming until the client goes away.
    let mut follow = std::process::Command::new(flowctl_bin().unwrap())
        .args([
            "logs",
            "src",
            "--follow",
            "--endpoints",
            &c.nodes[other].addr,
        ])
        .env("FLOWCTL_TOKEN_FILE", c.admin_token_file())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        follow.try_wait().unwrap().is_none(),
        "logs --follow exited early"
    );
    follow.kill().unwrap();
    let followed = follow.wait_with_output().unwrap();
    assert!(String::from_utf8_lossy(&followed.stdout).contains("[deploy-test/src/0] "));

    // SIGKILL a child: it is restarted.
    let old = p.pid;
    std::process::Command::new("kill")
        .args(["-KILL", &old.to_string()])
        .status()
        .unwrap();
    wait_until(Duration::from_secs(15), || {
        instance_of(&instances(name), "proc").is_some_and(|p| p.pid != old)
    })
    .unwrap();
    // describe, from any node, shows the restart count, how the last process ended, and the
    // events that led there.
    wait_until(Duration::from_secs(10), || {
        c.json(2, &["describe", "pipeline", name]).is_ok_and(|v| {
            let proc_ = v["instances"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["key"] == "proc/0")
                .cloned()
                .unwrap_or_default();
            let events = v["events"].as_array().unwrap();
            proc_["restarts"].as_u64() >= Some(1)
                && proc_["state"] == "running"
                && proc_["last_exit"] == "killed by signal 9"
                && events.iter().any(|e| {
                    e["instance"] == "proc/0" && e["reason"] == "Exited" && e["type"] == "Warning"
                })
                && events
                    .iter()
                    .any(|e| e["instance"] == "proc/0" && e["reason"] == "Restarted")
        })
    })
    .unwrap_or_else(|e| {
        panic!(
            "describe does not show the restart: {e}\n{}",
            String::from_utf8_lossy(
                &c.flowctl(2, &["describe", "pipeline", name])
                    .unwrap()
                    .stdout
            )
        )
    });
    let described = c.flowctl(1, &["describe", "pipeline", name]).unwrap();
    let described = String::from_utf8_lossy(&described.stdout).into_owned();
    assert!(
        described.contains("Events:")
            && described.contains("Restarted")
            && described.contains("killed by signal 9"),
        "{described}"
    );

    // graph --pipeline colours components by live health (all healthy again by now).
    wait_until(Duration::from_secs(15), || {
        healthy(&c, 0)
            .iter()
            .filter(|id| ["src", "proc", "sink"].contains(&id.as_str()))
            .count()
            == 3
    })
    .unwrap();
    let out = c
        .flowctl(2, &["graph", "--pipeline", name, "--format", "svg"])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = String::from_utf8_lossy(&out.stdout).into_owned();
    for id in ["src", "proc", "sink"] {
        assert!(svg.contains(&format!("id=\"node-{id}\"")), "{svg}");
    }
    assert_eq!(svg.matches("healthy 1/1").count(), 3, "{svg}");

    let before: Vec<(String, u32)> = instances(name)
        .iter()
        .filter_map(|p| {
            p.env
                .get("FLOWCTL_COMPONENT_ID")
                .map(|id| (id.clone(), p.pid))
        })
        .filter(|(id, _)| id != "proc")
        .collect();
    // Re-apply with a changed env: a dry run shows the diff and stores nothing; the real
    // apply restarts only that component, whose new instance sees the new value.
    std::fs::write(&file, pipeline_doc(name, "v2")).unwrap();
    let dry = apply(&c, 0, &["--dry-run", "--allow-unregistered-types"], &file);
    assert!(
        dry.contains("restart proc")
            && dry.contains("-         MY_VAR: \"v1\"")
            && dry.contains("+         MY_VAR: \"v2\""),
        "{dry}"
    );
    assert_eq!(
        c.json(0, &["get", "pipeline", name]).unwrap()["generation"],
        1
    );
    let said = apply(&c, 0, &["--allow-unregistered-types"], &file);
    assert!(
        said.contains("restart proc") && !said.contains("restart src"),
        "{said}"
    );
    wait_until(Duration::from_secs(20), || {
        instance_of(&instances(name), "proc").is_some_and(|p| p.env["MY_VAR"] == "v2")
    })
    .unwrap();
    // Only the changed component was replaced: the others kept running.
    let procs = instances(name);
    for (id, pid) in &before {
        assert_eq!(
            instance_of(&procs, id).map(|p| p.pid),
            Some(*pid),
            "{id} was restarted"
        );
    }

    // SIGKILL the node that runs the sink: the sink runs on another node within the grace
    // period plus a few seconds, and the killed node's children died with it.
    let sink = instance_of(&instances(name), "sink").cloned().unwrap();
    let victim = node_of(sink.ppid, &c).unwrap();
    c.kill(victim);
    wait_until(Duration::from_secs(25), || {
        let procs = instances(name);
        let sinks: Vec<_> = procs
            .iter()
            .filter(|p| p.env.get("FLOWCTL_COMPONENT_ID").map(String::as_str) == Some("sink"))
            .collect();
        sinks.len() == 1 && sinks[0].pid != sink.pid && node_of(sinks[0].ppid, &c).is_some()
    })
    .unwrap_or_else(|e| panic!("sink was not moved: {e}: {:?}", instances(name)));
    // The moved copy has a newer epoch, so reports of the one left behind would be refused.
    let moved = instance_of(&instances(name), "sink").cloned().unwrap();
    assert!(
        epoch_of(&moved) > epoch_of(&sink),
        "{:?} then {:?}",
        sink.env.get("FLOWCTL_EPOCH"),
        moved.env.get("FLOWCTL_EPOCH")
    );
    let events = c
        .json((victim + 1) % 3, &["describe", "pipeline", name])
        .unwrap()["events"]
        .clone();
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["instance"] == "sink/0"
                && e["reason"] == "Scheduled"
                && e["message"]
                    .as_str()
                    .unwrap()
                    .starts_with("moved from node")),
        "{events}"
    );

    // The killed node restarts and converges: nothing runs twice.
    c.restart(victim).unwrap();
    c.wait_ready(victim, Duration::from_secs(30)).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let procs = instances(name);
    for id in ["src", "proc", "sink"] {
        let n = procs
            .iter()
            .filter(|p| p.env.get("FLOWCTL_COMPONENT_ID").map(String::as_str) == Some(id))
            .count();
        assert_eq!(n, 1, "{id} runs {n} times: {procs:?}");
    }

    // Delete: no process of the pipeline is left.
    let out = c.flowctl(2, &["delete", "pipeline", name]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(Duration::from_secs(15), || instances(name).is_empty())
        .unwrap_or_else(|e| panic!("processes left after delete: {e}: {:?}", instances(name)));
}

/// A changed component with several replicas is replaced one replica at a time, in replica
/// order, each only once the one before runs the new version and is healthy: at no moment
/// are two replicas down.
#[test]
fn rolling_change_replaces_one_replica_at_a_time_once_healthy() {
    let c = Cluster::start(3, ClusterOptions::default()).unwrap();
    let name = "rolling-test";
    let src = example_bin("source-registration");
    let sink = example_bin("consumer-registration");
    let doc = |v: &str| {
        format!(
            r#"apiVersion: flowctl/v1
kind: Pipeline
metadata:
  name: {name}
spec:
  sources:
    - id: src
      command: ["{src}"]
      replicas: 3
      env:
        MY_VAR: "{v}"
      restart_policy: always
  sinks:
    - id: sink
      command: ["{sink}"]
      inputs: [src]
"#,
            src = src.display(),
            sink = sink.display()
        )
    };
    let file = c.dir().join("p.yaml");
    std::fs::write(&file, doc("v1")).unwrap();
    apply(&c, 0, &[], &file);
    wait_until(Duration::from_secs(30), || {
        c.json(1, &["get", "pipeline", name])
            .is_ok_and(|v| v["ready"] == 4 && v["status"] == "Running")
    })
    .unwrap_or_else(|e| panic!("not running: {e}\n{}", c.log_tail(0, 30)));

    std::fs::write(&file, doc("v2")).unwrap();
    apply(&c, 1, &[], &file);
    // Watch the processes until every replica runs v2.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut fewest = usize::MAX;
    loop {
        let procs: Vec<Proc> = instances(name)
            .into_iter()
            .filter(|p| p.env.contains_key("MY_VAR"))
            .collect();
        fewest = fewest.min(procs.len());
        if procs.len() == 3 && procs.iter().all(|p| p.env["MY_VAR"] == "v2") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rollout did not finish: {procs:?}\n{}",
            String::from_utf8_lossy(
                &c.flowctl(0, &["describe", "pipeline", name])
                    .unwrap()
                    .stdout
            )
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        fewest >= 2,
        "{fewest} replicas were running at one moment of the rollout"
    );
    let v = c.json(2, &["describe", "pipeline", name]).unwrap();
    let replaced: Vec<String> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "Replaced")
        .map(|e| e["instance"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(replaced, ["src/0", "src/1", "src/2"], "{v}");
    let out = c.flowctl(0, &["delete", "pipeline", name]).unwrap();
    assert!(out.status.success());
    wait_until(Duration::from_secs(15), || instances(name).is_empty()).unwrap();
}

/// A pipeline document named `name` whose `spec:` is `spec` (indented by two spaces).
fn with_header(name: &str, spec: &str) -> String {
    format!("apiVersion: flowctl/v1\nkind: Pipeline\nmetadata:\n  name: {name}\nspec:\n{spec}")
}

/// The cell of the table `text` (columns padded as `flowctl` prints them) in the row whose
/// first cell is `row`, under the header `column`.
fn table_cell(text: &str, row: &str, column: &str) -> Option<String> {
    let mut lines = text.lines();
    let header = lines.next()?;
    let starts: Vec<usize> = header
        .match_indices(|c: char| c != ' ')
        .filter(|(i, _)| *i == 0 || header[..*i].ends_with("   "))
        .map(|(i, _)| i)
        .collect();
    let col = header.find(column)?;
    let k = starts.iter().position(|s| *s == col)?;
    let line = lines.find(|l| l.split_whitespace().next() == Some(row))?;
    let end = starts
        .get(k + 1)
        .copied()
        .unwrap_or(line.len())
        .min(line.len());
    Some(line.get(col..end)?.trim().to_owned())
}

#[test]
fn default_tables_show_ready_status_pipeline_and_endpoint_and_logs_are_plain_text() {
    let c = Cluster::start(1, ClusterOptions::default()).unwrap();
    let name = "newcomer";
    // Bare command names, as in examples/stellar-pipeline.yaml: the node finds them beside
    // its own binary (target/debug), with no PATH set up for them.
    let doc = with_header(
        name,
        r#"  sources:
    - id: src
      command: ["source-registration"]
      output_event_types: [raw_ledger_service.RawLedgerChunk]
  processors:
    - id: proc
      command: ["processor-registration"]
      inputs: [src]
      input_event_types: [raw_ledger_service.RawLedgerChunk]
      output_event_types: [token_transfer.TokenTransferEvent]
  sinks:
    - id: sink
      command: ["consumer-registration"]
      inputs: [proc]
      input_event_types: [token_transfer.TokenTransferEvent]
"#,
    );
    let file = c.dir().join("p.yaml");
    std::fs::write(&file, doc).unwrap();
    apply(&c, 0, &["--allow-unregistered-types"], &file);
    let table = |args: &[&str]| {
        let out = c.flowctl(0, args).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // `get pipelines`: READY and STATUS are filled in the default table, not only in -o wide.
    let mut last = String::new();
    wait_until(Duration::from_secs(30), || {
        last = table(&["get", "pipelines"]);
        table_cell(&last, name, "READY").as_deref() == Some("3/3")
            && table_cell(&last, name, "STATUS").as_deref() == Some("Running")
    })
    .unwrap_or_else(|e| panic!("get pipelines: {e}\n{last}\n{}", c.log_tail(0, 30)));
    assert!(table_cell(&last, name, "AGE").is_some_and(|a| !a.is_empty()));

    // `list`: the pipeline that deployed each component, its health endpoint, and a plain
    // status (not "healthy (healthy)").
    let list = table(&["list"]);
    for id in ["src", "proc", "sink"] {
        assert_eq!(
            table_cell(&list, id, "PIPELINE").as_deref(),
            Some(name),
            "{list}"
        );
        assert_eq!(
            table_cell(&list, id, "STATUS").as_deref(),
            Some("healthy"),
            "{list}"
        );
        let endpoint = table_cell(&list, id, "ENDPOINT").unwrap_or_default();
        assert!(
            endpoint.starts_with("http://") && endpoint.ends_with("/health"),
            "{list}"
        );
    }

    // `logs`: the components write to a pipe, so their lines carry no ANSI colour codes.
    let mut logs = String::new();
    wait_until(Duration::from_secs(10), || {
        logs = table(&["logs", "proc", "--pipeline", name, "--tail", "20"]);
        logs.contains("INFO")
    })
    .unwrap_or_else(|e| panic!("logs: {e}\n{logs}"));
    assert!(!logs.contains('\u{1b}'), "{logs:?}");
}

#[test]
fn unreachable_broker_is_reported_once_as_topics_failed_naming_it() {
    let closed = format!("127.0.0.1:{}", flowctl_testkit::free_port());
    let c = Cluster::start(
        1,
        ClusterOptions {
            extra_args: vec!["--kafka-brokers".into(), closed.clone()],
            ..Default::default()
        },
    )
    .unwrap();
    let name = "no-broker";
    let file = c.dir().join("p.yaml");
    std::fs::write(&file, pipeline_doc(name, "v1")).unwrap();
    apply(&c, 0, &["--allow-unregistered-types"], &file);
    let failed = || {
        c.json(0, &["describe", "pipeline", name])
            .map(|v| {
                v["events"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|e| e["reason"] == "TopicsFailed")
                    .map(|e| e["message"].as_str().unwrap().to_owned())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    // The topic creation gives up after 15 s; the event follows at once.
    wait_until(Duration::from_secs(60), || !failed().is_empty())
        .unwrap_or_else(|e| panic!("no TopicsFailed event: {e}\n{}", c.log_tail(0, 30)));
    // The scheduler keeps retrying, but says so once.
    std::thread::sleep(Duration::from_secs(20));
    let events = failed();
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(events[0].contains(&closed), "{events:?}");
    // Nothing is placed while the topics are missing.
    assert!(instances(name).is_empty());
}

#[test]
fn programs_outside_allowed_commands_fail_to_start_and_delete_stops_grandchildren() {
    let c = Cluster::start(
        1,
        ClusterOptions {
            extra_args: vec!["--allowed-commands".into(), "/usr/bin/*".into()],
            ..Default::default()
        },
    )
    .unwrap();
    let name = "allowlist";
    // The source starts a grandchild (sleep) and waits for it; the sink is a program outside
    // the node's --allowed-commands.
    let outside = example_bin("consumer-registration");
    let doc = with_header(
        name,
        &format!(
            r#"  sources:
    - id: src
      command: ["/bin/sh", "-c", "sleep 600 & echo started; wait"]
  sinks:
    - id: sink
      command: ["{outside}"]
      inputs: [src]
      restart_policy: never
"#,
            outside = outside.display()
        ),
    );
    let file = c.dir().join("p.yaml");
    std::fs::write(&file, doc).unwrap();
    apply(&c, 0, &[], &file);

    let events = || {
        c.json(0, &["describe", "pipeline", name])
            .map(|v| v["events"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default()
    };
    let mut seen = Vec::new();
    wait_until(Duration::from_secs(30), || {
        seen = events();
        seen.iter().any(|e| e["reason"] == "StartFailed") && instances(name).len() == 2
        // sh and its sleep
    })
    .unwrap_or_else(|e| panic!("{e}: {seen:#?}\n{:?}", instances(name)));
    let failed: Vec<&serde_json::Value> = seen
        .iter()
        .filter(|e| e["reason"] == "StartFailed")
        .collect();
    let msg = failed[0]["message"].as_str().unwrap();
    assert!(
        msg.contains("consumer-registration") && msg.contains("--allowed-commands (/usr/bin/*)"),
        "{msg}"
    );
    assert_eq!(failed[0]["instance"], "sink/0", "{failed:?}");

    // Deleting the pipeline stops the source's whole process group: no grandchild is left.
    let out = c.flowctl(0, &["delete", "pipeline", name]).unwrap();
    assert!(out.status.success());
    wait_until(Duration::from_secs(20), || instances(name).is_empty())
        .unwrap_or_else(|e| panic!("left running: {:?}: {e}", instances(name)));
}

/// Fencing: a node cut off from the others stops its instances once it has reached no quorum
/// for the node grace, and the leader moves them only after that, so at no moment do two
/// copies of an instance run. After the cut heals, the node does not start them again.
#[test]
fn a_node_cut_off_stops_its_instances_before_they_run_elsewhere() {
    use flowctl_testkit::proxy::Network;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _rt = rt.enter();
    let net = Network::loopback(3);
    let (c, _proxies) =
        Cluster::start_proxied(3, &rt, &net, &["--node-grace", "3"], |_, _| {}).unwrap();
    let name = "fenced";
    let file = c.dir().join("fenced.yaml");
    std::fs::write(&file, pipeline_doc(name, "x")).unwrap();
    apply(&c, 0, &["--allow-unregistered-types"], &file);
    let node_of = |ppid: u32| c.nodes.iter().position(|n| n.pid() == Some(ppid));
    let component = |p: &Proc| {
        p.env
            .get("FLOWCTL_COMPONENT_ID")
            .cloned()
            .unwrap_or_default()
    };
    wait_until(Duration::from_secs(30), || {
        let procs = instances(name);
        procs.len() == 3 && procs.iter().all(|p| node_of(p.ppid).is_some())
    })
    .unwrap_or_else(|e| panic!("the pipeline did not start: {e}: {:?}", instances(name)));
    // The victim: a follower that runs an instance.
    let v = c.json(0, &["cluster", "status"]).unwrap();
    let leader = c.index_of(&v, v["leader_id"].as_u64().unwrap()).unwrap();
    let procs = instances(name);
    let moved = procs
        .iter()
        .find(|p| node_of(p.ppid).is_some_and(|n| n != leader))
        .cloned()
        .expect("no follower runs an instance");
    let victim = node_of(moved.ppid).unwrap();
    let id = component(&moved);
    let others: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    net.partition(&[&[victim], &others]);
    // Sample every copy of the component until it runs elsewhere, and a while longer.
    let cut = std::time::Instant::now();
    let mut stopped_after = None;
    let mut elsewhere_after = None;
    while cut.elapsed() < Duration::from_secs(45) {
        let copies: Vec<Proc> = instances(name)
            .into_iter()
            .filter(|p| component(p) == id)
            .collect();
        assert!(
            copies.len() <= 1,
            "two copies of {id} run {:?} after the cut: {copies:?}",
            cut.elapsed()
        );
        if stopped_after.is_none() && !copies.iter().any(|p| p.pid == moved.pid) {
            stopped_after = Some(cut.elapsed());
        }
        if copies
            .iter()
            .any(|p| node_of(p.ppid).is_some_and(|n| n != victim))
        {
            elsewhere_after.get_or_insert(cut.elapsed());
            if cut.elapsed() > elsewhere_after.unwrap() + Duration::from_secs(3) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopped_after = stopped_after.expect("the cut-off node kept its instance");
    let elsewhere_after = elsewhere_after.expect("the instance never ran on another node");
    assert!(stopped_after < elsewhere_after);
    assert!(
        net.stats(others[0], victim).dropped_bytes > 0,
        "the cut blocked nothing"
    );
    let log = std::fs::read_to_string(&c.nodes[victim].log_path).unwrap();
    assert!(log.contains("fenced"), "the node did not say it was fenced");
    // Healed, the node catches up with the new placement and starts nothing again.
    net.heal();
    c.wait_for_voters(3, Duration::from_secs(60)).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let procs = instances(name);
    assert_eq!(procs.len(), 3, "{procs:?}");
    assert_eq!(
        procs.iter().filter(|p| component(p) == id).count(),
        1,
        "{procs:?}"
    );
    let events = c.json(leader, &["describe", "pipeline", name]).unwrap()["events"].clone();
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["reason"] == "Stopped"
                && e["message"].as_str().unwrap_or("").starts_with("fenced")),
        "no fenced event reached the cluster: {events}"
    );
    eprintln!("fencing: stopped after {stopped_after:?}, ran elsewhere after {elsewhere_after:?}");
}
