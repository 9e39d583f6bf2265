//! The `docker` driver on a real node and a real Docker engine (`DOCKER_HOST`, which
//! `scripts/test.sh` sets from `scripts/docker.sh start`; it runs this file only where an
//! engine can run, and says so when it cannot).
//!
//! The image is made here from the example registration components (`cargo build --workspace
//! --bins`) and the libraries they load, imported under two tags: no registry is reached.
//! Containers use `--network host`, so they reach the node on 127.0.0.1.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

use flowctl_server::docker::{ContainerSpec, Engine, LABEL_INSTANCE, LABEL_PIPELINE};
use flowctl_testkit::{flowctl_bin, wait_until, Cluster, ClusterOptions};
use std::collections::BTreeMap;
use std::time::Duration;

const REPO: &str = "flowctl-test/registration";
const BINS: [&str; 3] = [
    "source-registration",
    "processor-registration",
    "consumer-registration",
];

/// A tarball of the registration examples (in /usr/local/bin) and their libraries.
fn rootfs() -> Vec<u8> {
    let dir = flowctl_bin().unwrap().parent().unwrap().to_path_buf();
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("tmp")).unwrap();
    for bin in BINS {
        let src = dir.join(bin);
        assert!(
            src.is_file(),
            "{} is missing: cargo build --workspace --bins",
            src.display()
        );
        let to = root.path().join("usr/local/bin").join(bin);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&src, &to).unwrap();
        let ldd = std::process::Command::new("ldd")
            .arg(&src)
            .output()
            .unwrap();
        for word in String::from_utf8_lossy(&ldd.stdout).split_whitespace() {
            if word.starts_with('/') {
                let to = root.path().join(word.trim_start_matches('/'));
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                std::fs::copy(word, &to).unwrap();
            }
        }
    }
    let tar = std::process::Command::new("tar")
        .args(["-C", root.path().to_str().unwrap(), "-c", "."])
        .output()
        .unwrap();
    assert!(tar.status.success());
    tar.stdout
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The engine, with `REPO:v1` and `REPO:v2` made (the same files under two references).
fn engine(rt: &tokio::runtime::Runtime) -> Engine {
    rt.block_on(async {
        let e = Engine::connect()
            .await
            .unwrap_or_else(|e| panic!("{e}: this test needs a Docker engine"));
        let tar = rootfs();
        for tag in ["v1", "v2"] {
            e.import_rootfs(tar.clone(), &format!("{REPO}:{tag}"))
                .await
                .unwrap();
        }
        e
    })
}

/// Running containers of `pipeline`: instance key → (container name, image).
fn containers(
    rt: &tokio::runtime::Runtime,
    e: &Engine,
    pipeline: &str,
) -> BTreeMap<String, String> {
    let found = rt
        .block_on(e.list(&[(LABEL_PIPELINE.to_owned(), pipeline.to_owned())].into()))
        .unwrap();
    found
        .into_iter()
        .map(|(name, labels)| (labels[LABEL_INSTANCE].clone(), name))
        .collect()
}

/// Removes the containers of `pipelines` when dropped, so that a failed run (whose nodes were
/// SIGKILLed, leaving their containers) does not leave them behind.
struct RemoveContainers<'a> {
    engine: &'a Engine,
    pipelines: Vec<String>,
}

impl Drop for RemoveContainers<'_> {
    fn drop(&mut self) {
        let rt = rt();
        for p in &self.pipelines {
            let labels = [(LABEL_PIPELINE.to_owned(), p.clone())].into();
            if let Ok(found) = rt.block_on(self.engine.list(&labels)) {
                for name in found.keys() {
                    let _ = rt.block_on(self.engine.remove(name));
                }
            }
        }
    }
}

fn doc(name: &str, proc_image: &str, sink_image: &str, sink_pull: &str) -> String {
    format!(
        r#"apiVersion: flowctl/v1
kind: Pipeline
metadata:
  name: {name}
spec:
  driver: docker
  sources:
    - id: src
      image: {REPO}:v1
      command: ["/usr/local/bin/source-registration"]
      output_event_types: [raw_ledger_service.RawLedgerChunk]
      restart_policy: always
  processors:
    - id: proc
      image: {proc_image}
      command: ["/usr/local/bin/processor-registration"]
      replicas: 2
      inputs: [src]
      input_event_types: [raw_ledger_service.RawLedgerChunk]
      output_event_types: [token_transfer.TokenTransferEvent]
      resources:
        cpu: 500m
        memory: 64Mi
      restart_policy: always
  sinks:
    - id: sink
      image: {sink_image}
      image_pull_policy: {sink_pull}
      command: ["/usr/local/bin/consumer-registration"]
      inputs: [proc]
      input_event_types: [token_transfer.TokenTransferEvent]
      restart_policy: always
"#
    )
}

fn apply(c: &Cluster, file: &std::path::Path) -> String {
    let out = c
        .flowctl(
            0,
            &[
                "apply",
                "--allow-unregistered-types",
                "-f",
                file.to_str().unwrap(),
            ],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn healthy(c: &Cluster) -> Vec<String> {
    c.json(0, &["list", "--timeout", "5"])
        .map(|v| {
            v.as_array()
                .unwrap()
                .iter()
                .filter(|x| x["status"] == "healthy")
                .map(|x| x["id"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn describe(c: &Cluster, name: &str) -> serde_json::Value {
    c.json(0, &["describe", "pipeline", name]).unwrap()
}

fn events(c: &Cluster, name: &str) -> Vec<serde_json::Value> {
    describe(c, name)["events"].as_array().unwrap().clone()
}

#[test]
fn images_run_as_containers_roll_on_a_new_image_and_leave_no_orphans() {
    let rt = rt();
    let e = engine(&rt);
    let mut c = Cluster::start(
        1,
        ClusterOptions {
            extra_args: vec![
                "--allowed-images".into(),
                format!("{REPO}:*"),
                "--heartbeat-ttl".into(),
                "3".into(),
            ],
            secure: true,
            ..Default::default()
        },
    )
    .unwrap();
    let name = "docker-test";
    let _cleanup = RemoveContainers {
        engine: &e,
        pipelines: vec![name.into(), "gone".into()],
    };
    let file = c.dir().join("p.yaml");
    std::fs::write(
        &file,
        doc(name, &format!("{REPO}:v1"), &format!("{REPO}:v1"), "Never"),
    )
    .unwrap();
    apply(&c, &file);

    // The containers start, register with their own tokens, and become healthy.
    let all = ["src", "proc-0", "proc-1", "sink"];
    wait_until(Duration::from_secs(60), || {
        let h = healthy(&c);
        all.iter().all(|id| h.iter().any(|x| x == id))
    })
    .unwrap_or_else(|err| {
        panic!(
            "containers did not become healthy: {err}\n{:#}\n{}",
            describe(&c, name),
            c.log_tail(0, 40)
        )
    });
    let first = containers(&rt, &e, name);
    assert_eq!(
        first.keys().cloned().collect::<Vec<_>>(),
        ["proc/0", "proc/1", "sink/0", "src/0"],
        "{first:?}"
    );
    let st = describe(&c, name);
    assert_eq!(st["status"], "Running", "{st:#}");
    let started = events(&c, name);
    assert!(
        started.iter().any(|e| e["reason"] == "Started"
            && e["message"].as_str().unwrap().starts_with("container ")),
        "{started:?}"
    );

    // Their output lands in the same log files, read by `flowctl logs`.
    wait_until(Duration::from_secs(10), || {
        c.flowctl(0, &["logs", "proc", "--pipeline", name])
            .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
    })
    .unwrap_or_else(|err| {
        let o = c.flowctl(0, &["logs", "proc", "--pipeline", name]).unwrap();
        panic!(
            "no container output through flowctl logs: {err}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });

    // A new image for the processor, re-applied: a rolling update, one replica at a time,
    // each replaced once the one before it runs the new image and is healthy again.
    std::fs::write(
        &file,
        doc(name, &format!("{REPO}:v2"), &format!("{REPO}:v1"), "Never"),
    )
    .unwrap();
    let said = apply(&c, &file);
    assert!(
        said.contains(&format!("restart proc (image {REPO}:v1 → {REPO}:v2)"))
            && !said.contains("restart src"),
        "{said}"
    );
    wait_until(Duration::from_secs(90), || {
        let h = healthy(&c);
        let replaced = events(&c, name)
            .iter()
            .filter(|e| e["reason"] == "Replaced")
            .count();
        replaced >= 2 && all.iter().all(|id| h.iter().any(|x| x == id))
    })
    .unwrap_or_else(|err| {
        panic!(
            "the rollout did not finish: {err}\n{:#}",
            describe(&c, name)
        )
    });
    let replaced: Vec<String> = events(&c, name)
        .iter()
        .filter(|e| e["reason"] == "Replaced")
        .map(|e| e["instance"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        replaced,
        ["proc/0", "proc/1"],
        "one replica at a time, in order"
    );
    let after = containers(&rt, &e, name);
    for key in ["proc/0", "proc/1"] {
        let state = rt
            .block_on(async {
                let id = &after[key];
                e.state(id).await
            })
            .unwrap()
            .unwrap();
        assert!(state.running, "{key}: {state:?}");
    }
    // Unchanged components kept their containers.
    assert_eq!(after["src/0"], first["src/0"]);

    // A missing image under `Never` is a StartFailed event that says so.
    std::fs::write(
        &file,
        doc(
            name,
            &format!("{REPO}:v2"),
            &format!("{REPO}:missing"),
            "Never",
        ),
    )
    .unwrap();
    apply(&c, &file);
    wait_until(Duration::from_secs(60), || {
        events(&c, name).iter().any(|e| {
            e["reason"] == "StartFailed"
                && e["message"]
                    .as_str()
                    .unwrap()
                    .contains("is not present on this node and image_pull_policy is Never")
        })
    })
    .unwrap_or_else(|err| {
        panic!(
            "no StartFailed for the missing image: {err}\n{:#}",
            describe(&c, name)
        )
    });

    // SIGKILL the node: its containers outlive it. Started again, it removes them and
    // starts its instances afresh: no orphan is left next to the new copies.
    std::fs::write(
        &file,
        doc(name, &format!("{REPO}:v2"), &format!("{REPO}:v1"), "Never"),
    )
    .unwrap();
    apply(&c, &file);
    wait_until(Duration::from_secs(60), || {
        containers(&rt, &e, name).len() == 4
    })
    .unwrap_or_else(|err| panic!("sink not back: {err}\n{:#}", describe(&c, name)));
    let before_kill = containers(&rt, &e, name);
    let pid_of = |n: &String| rt.block_on(e.state(n)).unwrap().and_then(|s| s.pid);
    let pids_before: Vec<Option<u32>> = before_kill.values().map(pid_of).collect();
    c.kill(0);
    assert_eq!(
        containers(&rt, &e, name),
        before_kill,
        "the containers outlive the node"
    );
    // And a container of this node for an instance no longer placed anywhere (its pipeline
    // deleted while the node was down, say): the labels of one of its containers, another
    // pipeline's name.
    let mut labels = rt
        .block_on(e.list(&[(LABEL_PIPELINE.to_owned(), name.to_owned())].into()))
        .unwrap()
        .into_values()
        .next()
        .unwrap();
    labels.remove("io.flowctl.managed");
    labels.insert(LABEL_PIPELINE.into(), "gone".into());
    labels.insert(LABEL_INSTANCE.into(), "src/0".into());
    rt.block_on(e.run(&ContainerSpec {
        name: format!("flowctl-test-orphan-{}", std::process::id()),
        image: format!("{REPO}:v1"),
        entrypoint: Some(vec!["/usr/local/bin/source-registration".into()]),
        cmd: vec![],
        env: BTreeMap::new(),
        labels,
        network: "host".into(),
        cpu_millis: None,
        memory_bytes: None,
        user: None,
        read_only_mounts: vec![],
    }))
    .unwrap();
    assert_eq!(containers(&rt, &e, "gone").len(), 1);
    c.restart(0).unwrap();
    c.wait_ready(0, Duration::from_secs(30)).unwrap();
    // The orphan goes, and every instance runs in a new container (new pids), healthy.
    wait_until(Duration::from_secs(60), || {
        let now = containers(&rt, &e, name);
        let h = healthy(&c);
        containers(&rt, &e, "gone").is_empty()
            && now.len() == 4
            && now
                .values()
                .map(pid_of)
                .all(|pid| pid.is_some() && !pids_before.contains(&pid))
            && all.iter().all(|id| h.iter().any(|x| x == id))
    })
    .unwrap_or_else(|err| {
        panic!(
            "not back in new containers after the restart: {err}\norphan: {:?}\n{:#}\n{}",
            containers(&rt, &e, "gone"),
            describe(&c, name),
            c.log_tail(0, 30)
        )
    });

    // Deleting the pipeline stops and removes every container.
    let out = c.flowctl(0, &["delete", "pipeline", name]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(Duration::from_secs(30), || {
        containers(&rt, &e, name).is_empty()
    })
    .unwrap_or_else(|err| {
        panic!(
            "containers left after delete: {err}: {:?}",
            containers(&rt, &e, name)
        )
    });
}

#[test]
fn a_node_without_allowed_images_runs_no_container() {
    let rt = rt();
    let e = engine(&rt);
    let c = Cluster::start(1, ClusterOptions::default()).unwrap();
    let name = "docker-refused";
    let file = c.dir().join("p.yaml");
    std::fs::write(
        &file,
        doc(name, &format!("{REPO}:v1"), &format!("{REPO}:v1"), "Never"),
    )
    .unwrap();
    apply(&c, &file);
    wait_until(Duration::from_secs(30), || {
        events(&c, name).iter().any(|e| {
            e["reason"] == "StartFailed"
                && e["message"]
                    .as_str()
                    .unwrap()
                    .contains("this node runs no containers (start it with --allowed-images)")
        })
    })
    .unwrap_or_else(|err| panic!("no refusal: {err}\n{:#}", describe(&c, name)));
    assert!(containers(&rt, &e, name).is_empty());
}
