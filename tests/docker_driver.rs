//! The `docker` driver on a real node and a real Docker engine (`DOCKER_HOST`, which
//! `scripts/test.sh` sets from `scripts/docker.sh start`; it runs this file only where an
//! engine can run, and says so when it cannot).
//!
//! The image is made here from the example registration components (`cargo build --workspace
//! --bins`) and the libraries they load, imported under two tags: no registry is reached.
//! Containers use `--network host`, so they reach the node on 127.0.0.1.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

use flowctl_server::docker::{ContainerSpec, Engine, LABEL_INSTANCE, LABEL_PIPELINE};
use flowctl_testkit::{flowctl_bin, rootfs_tar, wait_until, Cluster, ClusterOptions};
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
    let files: Vec<(std::path::PathBuf, Option<String>)> = BINS
        .iter()
        .map(|bin| {
            let src = dir.join(bin);
            assert!(
                src.is_file(),
                "{} is missing: cargo build --workspace --bins",
                src.display()
            );
            (src, Some(format!("/usr/local/bin/{bin}")))
        })
        .collect();
    let files: Vec<(std::path::PathBuf, Option<&str>)> = files
        .iter()
        .map(|(f, to)| (f.clone(), to.as_deref()))
        .collect();
    rootfs_tar(&files).unwrap()
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
    c.apply_file(0, &["--allow-unregistered-types"], file)
        .unwrap()
}

fn describe(c: &Cluster, name: &str) -> serde_json::Value {
    describe_at(c, 0, name)
}

fn describe_at(c: &Cluster, n: usize, name: &str) -> serde_json::Value {
    c.json(n, &["describe", "pipeline", name])
        .unwrap_or_default()
}

fn events(c: &Cluster, name: &str) -> Vec<serde_json::Value> {
    events_at(c, 0, name)
}

fn events_at(c: &Cluster, n: usize, name: &str) -> Vec<serde_json::Value> {
    describe_at(c, n, name)["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Containers of `pipeline` (running or not): name → labels.
fn labelled(
    rt: &tokio::runtime::Runtime,
    e: &Engine,
    pipeline: &str,
) -> BTreeMap<String, BTreeMap<String, String>> {
    rt.block_on(e.list(&[(LABEL_PIPELINE.to_owned(), pipeline.to_owned())].into()))
        .unwrap()
}

#[test]
fn images_run_as_containers_roll_on_a_new_image_and_leave_no_orphans() {
    let rt = rt();
    let e = engine(&rt);
    let mut c = Cluster::start(
        3,
        ClusterOptions {
            extra_args: vec![
                "--allowed-images".into(),
                format!("{REPO}:*"),
                "--heartbeat-ttl".into(),
                "3".into(),
                "--node-grace".into(),
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
    let v1 = format!("{REPO}:v1");
    let v2 = format!("{REPO}:v2");
    std::fs::write(&file, doc(name, &v1, &v1, "Never")).unwrap();
    apply(&c, &file);

    // The containers start, register with their own tokens, and become healthy.
    let all = ["src", "proc-0", "proc-1", "sink"];
    let all_healthy = |c: &Cluster, n: usize| {
        let h = c.healthy(n);
        all.iter().all(|id| h.iter().any(|x| x == id))
    };
    wait_until(Duration::from_secs(60), || all_healthy(&c, 0)).unwrap_or_else(|err| {
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
    assert!(
        events(&c, name).iter().any(|e| e["reason"] == "Started"
            && e["message"].as_str().unwrap().starts_with("container ")),
        "{:?}",
        events(&c, name)
    );

    // Their output lands in the same log files, read by `flowctl logs` from any node.
    wait_until(Duration::from_secs(10), || {
        c.flowctl(2, &["logs", "proc", "--pipeline", name])
            .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
    })
    .unwrap_or_else(|err| panic!("no container output through flowctl logs: {err}"));

    // A container killed from outside is restarted by its restart policy.
    rt.block_on(e.stop(&first["sink/0"], Duration::ZERO))
        .unwrap();
    wait_until(Duration::from_secs(30), || {
        events(&c, name)
            .iter()
            .any(|e| e["instance"] == "sink/0" && e["reason"] == "Restarted")
            && rt
                .block_on(e.state(&containers(&rt, &e, name)["sink/0"]))
                .unwrap()
                .is_some_and(|s| s.running)
    })
    .unwrap_or_else(|err| panic!("not restarted: {err}\n{:#}", describe(&c, name)));

    // A new image for the processor, re-applied: a rolling update, one replica at a time,
    // each replaced once the one before it runs the new image and is healthy again.
    std::fs::write(&file, doc(name, &v2, &v1, "Never")).unwrap();
    let said = apply(&c, &file);
    assert!(
        said.contains(&format!("restart proc (image {v1} → {v2})"))
            && !said.contains("restart src"),
        "{said}"
    );
    wait_until(Duration::from_secs(90), || {
        let replaced = events(&c, name)
            .iter()
            .filter(|e| e["reason"] == "Replaced")
            .count();
        replaced >= 2 && all_healthy(&c, 0)
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
    // Unchanged components kept their containers.
    assert_eq!(containers(&rt, &e, name)["src/0"], first["src/0"]);

    // A missing image under `Never` is a StartFailed event that says so.
    std::fs::write(&file, doc(name, &v2, &format!("{REPO}:missing"), "Never")).unwrap();
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
    std::fs::write(&file, doc(name, &v2, &v1, "Never")).unwrap();
    apply(&c, &file);
    wait_until(Duration::from_secs(60), || {
        containers(&rt, &e, name).len() == 4 && all_healthy(&c, 0)
    })
    .unwrap_or_else(|err| panic!("sink not back: {err}\n{:#}", describe(&c, name)));

    // SIGKILL the node that runs proc/0: its containers die with it (its reaper removes
    // them), and the leader moves its instances to the other nodes.
    let placed = describe(&c, name)["placements"]["proc/0"]
        .as_str()
        .unwrap()
        .to_owned();
    let victim = c.nodes.iter().position(|n| n.addr == placed).unwrap();
    let other = (victim + 1) % 3;
    let node_label = |n: &str| -> Option<String> {
        labelled(&rt, &e, name)
            .get(n)
            .map(|l| l["io.flowctl.node"].clone())
    };
    let victim_node = node_label(&containers(&rt, &e, name)["proc/0"]).unwrap();
    let on_victim = || {
        labelled(&rt, &e, name)
            .values()
            .filter(|l| l["io.flowctl.node"] == victim_node)
            .count()
    };
    let mut orphan_labels = labelled(&rt, &e, name)
        .into_values()
        .find(|l| l["io.flowctl.node"] == victim_node)
        .unwrap();
    c.kill(victim);
    wait_until(Duration::from_secs(15), || on_victim() == 0).unwrap_or_else(|err| {
        panic!(
            "the killed node's containers still run: {err}: {:?}",
            labelled(&rt, &e, name)
        )
    });
    wait_until(Duration::from_secs(60), || {
        containers(&rt, &e, name).len() == 4 && all_healthy(&c, other)
    })
    .unwrap_or_else(|err| {
        panic!(
            "the instances did not come back elsewhere: {err}\n{:#}",
            describe_at(&c, other, name)
        )
    });
    assert_ne!(
        node_label(&containers(&rt, &e, name)["proc/0"]).unwrap(),
        victim_node
    );

    // A container of that node left by an earlier run whose reaper died too (the machine
    // crashed, say): the node removes it when it starts.
    orphan_labels.remove("io.flowctl.managed");
    orphan_labels.insert("io.flowctl.run".into(), "an-earlier-run".into());
    orphan_labels.insert(LABEL_PIPELINE.into(), "gone".into());
    orphan_labels.insert(LABEL_INSTANCE.into(), "src/0".into());
    rt.block_on(e.run(&ContainerSpec {
        name: format!("flowctl-test-orphan-{}", std::process::id()),
        image: v1.clone(),
        entrypoint: Some(vec!["/usr/local/bin/source-registration".into()]),
        cmd: vec![],
        env: BTreeMap::new(),
        labels: orphan_labels,
        network: "host".into(),
        cpu_millis: None,
        memory_bytes: None,
        user: None,
        read_only_mounts: vec![],
    }))
    .unwrap();
    assert_eq!(containers(&rt, &e, "gone").len(), 1);
    c.restart(victim).unwrap();
    c.wait_ready(victim, Duration::from_secs(30)).unwrap();
    wait_until(Duration::from_secs(30), || {
        containers(&rt, &e, "gone").is_empty()
    })
    .unwrap_or_else(|err| {
        panic!(
            "the orphan was not removed: {err}\n{}",
            c.log_tail(victim, 30)
        )
    });
    assert_eq!(containers(&rt, &e, name).len(), 4);

    // Deleting the pipeline stops and removes every container.
    let out = c.flowctl(other, &["delete", "pipeline", name]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(Duration::from_secs(30), || {
        labelled(&rt, &e, name).is_empty()
    })
    .unwrap_or_else(|err| {
        panic!(
            "containers left after delete: {err}: {:?}",
            labelled(&rt, &e, name)
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
