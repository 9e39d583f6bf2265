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

/// The engine at `DOCKER_HOST`; a test without one fails saying so.
fn connect(rt: &tokio::runtime::Runtime) -> Engine {
    rt.block_on(async {
        Engine::connect()
            .await
            .unwrap_or_else(|e| panic!("{e}: this test needs a Docker engine"))
    })
}

/// The engine, with `REPO:v1` and `REPO:v2` made (the same files under two references).
fn engine(rt: &tokio::runtime::Runtime) -> Engine {
    let e = connect(rt);
    rt.block_on(async {
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

/// `delete pipeline name` through node `n`; then no container of it is left, running or not.
fn delete_leaves_no_container(
    c: &Cluster,
    n: usize,
    rt: &tokio::runtime::Runtime,
    e: &Engine,
    name: &str,
) {
    let out = c.flowctl(n, &["delete", "pipeline", name]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(Duration::from_secs(30), || labelled(rt, e, name).is_empty()).unwrap_or_else(
        |err| {
            panic!(
                "containers left after delete: {err}: {:?}",
                labelled(rt, e, name)
            )
        },
    );
}

/// The instances of `name` replaced so far (`Replaced` events), in order.
fn replaced(c: &Cluster, name: &str) -> Vec<String> {
    events(c, name)
        .iter()
        .filter(|e| e["reason"] == "Replaced")
        .map(|e| e["instance"].as_str().unwrap().to_owned())
        .collect()
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
    assert_eq!(
        replaced(&c, name),
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
    delete_leaves_no_container(&c, other, &rt, &e, name);
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

/// The example images that `scripts/build-images.sh` builds (scripts/test.sh runs it first).
const EXAMPLE_IMAGES: [&str; 3] = [
    "flowctl/stellar-live-source-datalake:dev",
    "flowctl/ttp-processor:dev",
    "flowctl/consumer-app:dev",
];

/// The consumer's event total as its heartbeats report it, from node `n`.
fn consumer_events(c: &Cluster, n: usize) -> Option<f64> {
    let list = c.json(n, &["list", "--timeout", "5"]).ok()?;
    list.as_array()?
        .iter()
        .find(|x| x["id"] == "consumer-app")?["metrics"]["flowctl_consumer_events_total"]
        .as_str()?
        .parse()
        .ok()
}

/// Components that are healthy and whose own heartbeat said so, from node `n`. A replaced
/// instance deregisters as it stops, and its successor's registration carries no reported
/// status until its first heartbeat.
fn heartbeating(c: &Cluster, n: usize) -> Vec<String> {
    let list = c.json(n, &["list", "--timeout", "5"]).unwrap_or_default();
    list.as_array()
        .into_iter()
        .flatten()
        .filter(|x| x["status"] == "healthy" && x["reported_status"] == "HEALTHY")
        .filter_map(|x| Some(x["id"].as_str()?.to_owned()))
        .collect()
}

#[test]
fn the_stellar_example_runs_on_docker_and_a_new_image_rolls_with_a_healthy_copy_throughout() {
    let rt = rt();
    let e = connect(&rt);
    for image in EXAMPLE_IMAGES {
        assert!(
            rt.block_on(e.has_image(image)).unwrap(),
            "{image} is missing: build the example images first (scripts/build-images.sh)"
        );
    }
    // The new image: the same files under a second reference, as a retag is.
    let v1 = "flowctl/ttp-processor:dev";
    let v2 = "flowctl/ttp-processor:rollout-test".to_owned();
    rt.block_on(e.tag(v1, &v2)).unwrap();
    let broker = flowctl_bus::EmbeddedBroker::start(1).unwrap();
    let c = Cluster::start(
        3,
        ClusterOptions {
            extra_args: vec![
                "--kafka-brokers".into(),
                broker.bootstrap_servers().to_owned(),
                "--allowed-images".into(),
                "flowctl/*".into(),
                "--heartbeat-ttl".into(),
                "3".into(),
            ],
            secure: true,
            ..Default::default()
        },
    )
    .unwrap();
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/stellar-pipeline-docker.yaml");
    let text = std::fs::read_to_string(&example).unwrap();
    // Under its own name: the dev up test runs the example under its name, maybe at once.
    let example_name = "name: stellar-token-pipeline-docker";
    assert!(text.contains(example_name));
    let name = "stellar-docker-rollout";
    let text = text.replace(example_name, &format!("name: {name}"));
    let _cleanup = RemoveContainers {
        engine: &e,
        pipelines: vec![name.into()],
    };
    c.push_example_schemas(0).unwrap();
    let file = c.dir().join("stellar.yaml");
    std::fs::write(&file, &text).unwrap();
    c.apply_file(1, &[], &file).unwrap();

    // Every component healthy, and the consumer's totals growing.
    let all = [
        "stellar-live-source",
        "ttp-processor-0",
        "ttp-processor-1",
        "consumer-app",
    ];
    let all_healthy = |n: usize| {
        let h = c.healthy(n);
        all.iter().all(|id| h.iter().any(|x| x == id))
    };
    wait_until(Duration::from_secs(90), || all_healthy(0)).unwrap_or_else(|err| {
        panic!(
            "the example did not become healthy: {err}\n{:#}\n{}",
            describe(&c, name),
            c.log_tail(0, 40)
        )
    });
    let mut seen = 0.0;
    wait_until(Duration::from_secs(60), || {
        seen = consumer_events(&c, 2).unwrap_or(0.0);
        seen > 0.0
    })
    .unwrap_or_else(|err| panic!("the consumer counted no events: {err}"));
    wait_until(Duration::from_secs(60), || {
        consumer_events(&c, 1).is_some_and(|n| n > seen)
    })
    .unwrap_or_else(|err| panic!("the consumer's totals did not grow past {seen}: {err}"));

    // Change the processor's image and re-apply: its replicas are replaced one at a time, and
    // at every look during the rollout at least one processor runs and is healthy.
    // A replica serves when its container runs and the control plane has had a healthy
    // heartbeat from it.
    let serving = |looks: &mut u32| -> (usize, usize) {
        *looks += 1;
        let beating = heartbeating(&c, 0);
        eprintln!(
            "DEBUG look {looks}: {beating:?} {:?}",
            c.json(0, &["list", "--timeout", "5"])
                .unwrap_or_default()
                .as_array()
                .unwrap()
                .iter()
                .map(|x| (
                    x["id"].clone(),
                    x["status"].clone(),
                    x["reported_status"].clone(),
                    x["last_heartbeat"].clone()
                ))
                .collect::<Vec<_>>()
        );
        let now = containers(&rt, &e, name);
        let mut serving = 0;
        let mut on_v2 = 0;
        for r in 0..2 {
            let Some(s) = now
                .get(&format!("ttp-processor/{r}"))
                .and_then(|n| rt.block_on(e.state(n)).ok().flatten())
                .filter(|s| s.running)
            else {
                continue;
            };
            eprintln!("DEBUG r{r} image {}", s.image);
            if beating.contains(&format!("ttp-processor-{r}")) {
                serving += 1;
                on_v2 += usize::from(s.image == v2);
            }
        }
        (serving, on_v2)
    };
    let mut looks = 0u32;
    wait_until(Duration::from_secs(30), || serving(&mut looks) == (2, 0))
        .unwrap_or_else(|err| panic!("the two processors do not both serve: {err}"));
    looks = 0;
    let before = containers(&rt, &e, name);
    std::fs::write(&file, text.replace(v1, &v2)).unwrap();
    let said = c.apply_file(1, &[], &file).unwrap();
    assert!(
        said.contains(&format!("restart ttp-processor (image {v1} → {v2})"))
            && !said.contains("restart stellar-live-source")
            && !said.contains("restart consumer-app"),
        "{said}"
    );
    let rolled = |looks: &mut u32| {
        let (serving, on_v2) = serving(looks);
        assert!(
            serving >= 1,
            "no processor ran and was healthy at look {looks} of the rollout\n{:#}",
            describe(&c, name)
        );
        on_v2 == 2
    };
    wait_until(Duration::from_secs(120), || rolled(&mut looks)).unwrap_or_else(|err| {
        panic!(
            "the rollout did not finish: {err}\n{:#}",
            describe(&c, name)
        )
    });
    assert_eq!(
        replaced(&c, name),
        ["ttp-processor/0", "ttp-processor/1"],
        "one replica at a time, in order ({looks} looks)"
    );
    let after = containers(&rt, &e, name);
    for kept in ["stellar-live-source/0", "consumer-app/0"] {
        assert_eq!(after[kept], before[kept], "{kept} was not to be replaced");
    }
    // Each container is labelled with the generation it started under.
    let generations: BTreeMap<String, String> = labelled(&rt, &e, name)
        .into_values()
        .map(|l| {
            (
                l[LABEL_INSTANCE].clone(),
                l["io.flowctl.generation"].clone(),
            )
        })
        .collect();
    assert_eq!(
        generations,
        [
            ("consumer-app/0", "1"),
            ("stellar-live-source/0", "1"),
            ("ttp-processor/0", "2"),
            ("ttp-processor/1", "2"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into(),
    );
    // The consumer keeps counting on the new processors.
    let at_rollout = consumer_events(&c, 0).unwrap_or(0.0);
    wait_until(Duration::from_secs(60), || {
        consumer_events(&c, 2).is_some_and(|n| n > at_rollout)
    })
    .unwrap_or_else(|err| panic!("the totals stopped at {at_rollout} after the rollout: {err}"));
    eprintln!("consumer events: {seen} before the rollout, {at_rollout} after it ({looks} looks)");

    delete_leaves_no_container(&c, 0, &rt, &e, name);
}

/// A `dev up` child, stopped on a failure as `dev down` would stop it (SIGTERM, then it
/// stops its nodes, whose reapers remove their containers), so that no environment outlives
/// the test.
struct StopOnDrop(std::process::Child);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            if let Some(pid) = i32::try_from(self.0.id())
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let until = std::time::Instant::now() + Duration::from_secs(20);
            while matches!(self.0.try_wait(), Ok(None)) && std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn dev_up_with_the_docker_driver_runs_the_example_in_containers_and_dev_down_removes_them() {
    let rt = rt();
    let e = connect(&rt);
    let name = "stellar-token-pipeline-docker";
    let _cleanup = RemoveContainers {
        engine: &e,
        pipelines: vec![name.into()],
    };
    let bin = flowctl_bin().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state.json");
    let log = tmp.path().join("dev-up.log");
    let base = flowctl_testkit::dev_base_port();
    let out = std::fs::File::create(&log).unwrap();
    let child = std::process::Command::new(&bin)
        .args(["dev", "up", "--driver", "docker", "--nodes", "1"])
        .arg("--base-port")
        .arg(base.to_string())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("FLOWCTL_DEV_STATE", &state)
        .env_remove("FLOWCTL_ENDPOINTS")
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let mut child = StopOnDrop(child);
    let dev = |args: &[&str]| {
        std::process::Command::new(&bin)
            .args(args)
            .env("FLOWCTL_DEV_STATE", &state)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let log_tail = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    };
    let mut last = serde_json::Value::Null;
    let flowing = wait_until(Duration::from_secs(120), || {
        if !matches!(child.0.try_wait(), Ok(None)) {
            return true;
        }
        let o = dev(&["dev", "status", "-o", "json"]);
        last = serde_json::from_slice(&o.stdout).unwrap_or_default();
        let cs = last["components"].as_array().cloned().unwrap_or_default();
        let healthy = [
            "stellar-live-source",
            "ttp-processor-0",
            "ttp-processor-1",
            "consumer-app",
        ]
        .iter()
        .all(|id| {
            cs.iter()
                .any(|c| c["id"] == *id && c["status"] == "healthy")
        });
        let events = cs
            .iter()
            .find(|c| c["id"] == "consumer-app")
            .and_then(|c| c["metrics"]["flowctl_consumer_events_total"].as_str())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        healthy && events > 0.0
    });
    assert!(
        matches!(child.0.try_wait(), Ok(None)) && flowing.is_ok(),
        "dev up --driver docker did not get the example flowing: last status {last:#}\n{}",
        log_tail()
    );
    let running = containers(&rt, &e, name);
    assert_eq!(
        running.keys().cloned().collect::<Vec<_>>(),
        [
            "consumer-app/0",
            "stellar-live-source/0",
            "ttp-processor/0",
            "ttp-processor/1"
        ],
        "{running:?}"
    );
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("components run as Docker containers"));

    let down = dev(&["dev", "down"]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    let exited = wait_until(Duration::from_secs(30), || {
        matches!(child.0.try_wait(), Ok(Some(_)))
    });
    if exited.is_err() {
        panic!("dev up still runs after dev down:\n{}", log_tail());
    }
    wait_until(Duration::from_secs(30), || {
        labelled(&rt, &e, name).is_empty()
    })
    .unwrap_or_else(|err| {
        panic!(
            "containers left after dev down: {err}: {:?}",
            labelled(&rt, &e, name)
        )
    });
}
