//! Multi-node tests against real `flowctl server` processes on 127.0.0.1.
//!
//! Every test checks the data, not only exit codes: after a fault heals, every acknowledged
//! write must be present on every node.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

use flowctl_client::proto::admin::v1 as pb;
use flowctl_client::proto::admin::v1::pipeline_service_client::PipelineServiceClient;
use flowctl_client::Client;
use flowctl_testkit::{http_get, wait_until, Cluster, ClusterOptions};
use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A small valid pipeline (source → sink); `note` changes its content.
fn doc(name: &str, note: &str) -> String {
    format!(
        "apiVersion: flowctl/v1\nkind: Pipeline\nmetadata:\n  name: {name}\n  labels:\n    note: \"{note}\"\nspec:\n  sources:\n    - id: src\n      command: [\"true\"]\n  sinks:\n    - id: sink\n      command: [\"true\"]\n      inputs: [src]\n"
    )
}

fn write_file(c: &Cluster, name: &str, text: &str) -> String {
    let p = c.dir().join(format!("{name}.yaml"));
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

fn apply(c: &Cluster, node: usize, name: &str, note: &str) -> Value {
    let f = write_file(c, name, &doc(name, note));
    c.json(node, &["apply", "-f", &f]).unwrap()
}

fn names(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

fn follower_of(c: &Cluster) -> usize {
    let l = c.leader_index().unwrap();
    (l + 1) % c.nodes.len()
}

#[test]
fn follower_write_is_forwarded_and_readable_from_every_node() {
    let c = Cluster::start(3, ClusterOptions::default()).unwrap();
    let f = follower_of(&c);
    let created = apply(&c, f, "from-follower", "a");
    assert_eq!(created["result"], "created");
    assert_eq!(created["generation"], 1);
    let id = created["id"].as_str().unwrap().to_owned();
    for i in 0..3 {
        let got = c.json(i, &["get", "pipeline", "from-follower"]).unwrap();
        assert_eq!(got["id"], id.as_str(), "node {i}");
        assert_eq!(got["generation"], 1, "node {i}");
    }
    // Identical re-apply changes nothing; a changed spec bumps only the generation.
    let again = apply(&c, (f + 1) % 3, "from-follower", "a");
    assert_eq!(again["result"], "unchanged");
    assert_eq!(again["generation"], 1);
    let changed = apply(&c, (f + 2) % 3, "from-follower", "b");
    assert_eq!(changed["result"], "configured");
    assert_eq!(changed["generation"], 2);
    assert_eq!(changed["id"], id.as_str());
    // Delete, from a follower too.
    let out = c
        .flowctl(f, &["delete", "pipeline", "from-follower"])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for i in 0..3 {
        let out = c.flowctl(i, &["get", "pipeline", "from-follower"]).unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not found"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

#[test]
fn linearizable_read_on_a_follower_sees_a_write_made_on_another_node() {
    let c = Cluster::start(3, ClusterOptions::default()).unwrap();
    let leader = c.leader_index().unwrap();
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    for round in 0..10 {
        // Write through one node, read at once through a different follower.
        let writer = if round % 2 == 0 { leader } else { followers[0] };
        let reader = followers[1];
        let note = format!("round-{round}");
        let w = apply(&c, writer, "lin", &note);
        let r = c.json(reader, &["get", "pipeline", "lin"]).unwrap();
        assert_eq!(r["revision"], w["revision"], "round {round}");
        assert!(
            r["spec_yaml"].as_str().unwrap().contains(&note),
            "round {round}"
        );
    }
    // Stale reads say which node served them and its applied index.
    let out = c
        .flowctl(
            followers[0],
            &["get", "pipelines", "--consistency", "stale"],
        )
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("applied index"));
}

/// Writes distinct documents from several client tasks until `stop`, recording every
/// acknowledged name and the time of each ack.
fn writer_threads(
    endpoints: String,
    prefix: String,
    clients: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, Instant)>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let eps = flowctl_client::parse_endpoints(&endpoints);
            let mut tasks = Vec::new();
            for w in 0..clients {
                let eps = eps.clone();
                let stop = stop.clone();
                let acked = acked.clone();
                let prefix = prefix.clone();
                // Each client starts at a different node, as independent clients would.
                let mut eps = eps;
                let shift = w % eps.len();
                eps.rotate_left(shift);
                tasks.push(tokio::spawn(async move {
                    let client = Client::new(&eps, Duration::from_secs(10)).unwrap();
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let name = format!("{prefix}-w{w}-{n}");
                        n += 1;
                        let req = pb::ApplyPipelineRequest {
                            yaml: doc(&name, "x"),
                            file_name: "t.yaml".into(),
                            dry_run: false,
                            allow_unregistered_types: false,
                            if_generation: None,
                        };
                        let r =
                            client
                                .call(|ch| {
                                    let req = req.clone();
                                    async move {
                                        PipelineServiceClient::new(ch).apply_pipeline(req).await
                                    }
                                })
                                .await;
                        if r.is_ok() {
                            acked.lock().unwrap().push((name, Instant::now()));
                        }
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        })
    })
}

#[test]
fn acknowledged_writes_survive_sigkill_of_the_leader_five_times() {
    let mut c = Cluster::start(3, ClusterOptions::default()).unwrap();
    let mut all_acked: BTreeSet<String> = BTreeSet::new();
    for round in 0..5 {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let h = writer_threads(
            c.endpoints(),
            format!("r{round}"),
            4,
            stop.clone(),
            acked.clone(),
        );
        wait_until(Duration::from_secs(20), || {
            acked.lock().unwrap().len() >= 20
        })
        .unwrap();
        let leader = c.leader_index().unwrap();
        c.kill(leader);
        let killed_at = Instant::now();
        // Writes resume on the new leader within a few seconds.
        wait_until(Duration::from_secs(15), || {
            acked
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, t)| *t > killed_at)
                .count()
                >= 10
        })
        .unwrap_or_else(|e| {
            panic!("round {round}: writes did not resume after the leader died: {e}")
        });
        let first_after = acked
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, t)| *t > killed_at)
            .map(|(_, t)| *t)
            .min()
            .unwrap();
        eprintln!(
            "round {round}: first write acknowledged {:?} after SIGKILL",
            first_after - killed_at
        );
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
        c.restart(leader).unwrap();
        c.wait_ready(leader, Duration::from_secs(30)).unwrap();
        all_acked.extend(acked.lock().unwrap().iter().map(|(n, _)| n.clone()));
        // Every acknowledged write is on every node, read linearizably from each.
        for i in 0..3 {
            let have = names(&c.json(i, &["get", "pipelines"]).unwrap());
            let missing: Vec<_> = all_acked.difference(&have).collect();
            assert!(
                missing.is_empty(),
                "round {round}: node {i} lacks acknowledged writes {missing:?}"
            );
        }
    }
    assert!(
        all_acked.len() >= 100,
        "only {} writes acknowledged",
        all_acked.len()
    );
}

/// An upgrade of the encoding: a cluster writing version 1 (as releases before the binary
/// codec did, with `--codec-version 1`) is restarted node by node on version 2 under writes,
/// and every node keeps everything, with the same ids.
#[test]
fn nodes_restarted_from_codec_version_1_to_2_one_by_one_keep_everything() {
    let mut c = Cluster::start(
        3,
        ClusterOptions {
            extra_args: vec!["--codec-version".into(), "1".into()],
            ..Default::default()
        },
    )
    .unwrap();
    for i in 0..10 {
        apply(&c, i % 3, &format!("v1-{i}"), "v");
    }
    let before = c.json(0, &["get", "pipelines"]).unwrap();
    c.set_extra_args(&[]);
    for i in 0..3 {
        c.kill(i);
        c.restart(i).unwrap();
        c.wait_for_voters(3, Duration::from_secs(60)).unwrap();
        apply(&c, i, &format!("v2-{i}"), "v");
    }
    let ids = |v: &serde_json::Value, prefix: &str| -> Vec<(String, String)> {
        v.as_array()
            .unwrap()
            .iter()
            .filter(|p| p["name"].as_str().unwrap().starts_with(prefix))
            .map(|p| (p["name"].to_string(), p["id"].to_string()))
            .collect()
    };
    for i in 0..3 {
        let after = c.json(i, &["get", "pipelines"]).unwrap();
        assert_eq!(ids(&after, "v1-"), ids(&before, "v1-"), "node {i}");
        assert_eq!(ids(&after, "v2-").len(), 3, "node {i}");
    }
    // The flag reaches the codec; a version this release does not write is refused.
    let run = |v: &str| {
        std::process::Command::new(flowctl_testkit::flowctl_bin().unwrap())
            .args(["server", "--codec-version", v, "--print-config"])
            .output()
            .unwrap()
    };
    let out = run("1");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("codec version written: 1"),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run("3");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--codec-version"), "{err}");
}

#[test]
fn full_restart_keeps_everything() {
    // With authentication on: membership changes and restarts go through the peer secret.
    let mut c = Cluster::start(
        3,
        ClusterOptions {
            secure: true,
            ..Default::default()
        },
    )
    .unwrap();
    for i in 0..20 {
        apply(&c, i % 3, &format!("keep-{i}"), "v");
    }
    let before = c.json(0, &["get", "pipelines"]).unwrap();
    // Two nodes die hard, one shuts down cleanly.
    c.kill(1);
    c.kill(2);
    c.terminate(0, Duration::from_secs(20)).unwrap();
    for i in 0..3 {
        c.restart(i).unwrap();
    }
    c.wait_for_voters(3, Duration::from_secs(60)).unwrap();
    for i in 0..3 {
        let after = c.json(i, &["get", "pipelines"]).unwrap();
        assert_eq!(names(&after), names(&before), "node {i}");
        let ids: Vec<_> = after
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].clone())
            .collect();
        let ids_before: Vec<_> = before
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].clone())
            .collect();
        assert_eq!(ids, ids_before, "node {i}: ids must be stable");
    }
    // Restarting with --join on an existing data dir did not add members.
    let st = c.json(0, &["cluster", "status"]).unwrap();
    assert_eq!(st["members"].as_array().unwrap().len(), 3);
}

fn metric(c: &Cluster, node: usize, name: &str) -> f64 {
    let (_, body) = http_get(&c.nodes[node].metrics_addr, "/metrics").unwrap();
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_node_that_missed_purged_log_catches_up_through_a_snapshot() {
    let opts = ClusterOptions {
        extra_args: vec![
            "--snapshot-threshold".into(),
            "40".into(),
            "--snapshot-keep-logs".into(),
            "5".into(),
        ],
        ..Default::default()
    };
    let mut c = Cluster::start(3, opts).unwrap();
    let down = follower_of(&c);
    c.kill(down);
    let up: Vec<usize> = (0..3).filter(|&i| i != down).collect();
    for i in 0..150 {
        apply(&c, up[i % 2], &format!("snap-{i}"), "payload");
    }
    let leader = c.leader_index().unwrap();
    assert!(metric(&c, leader, "flowctl_store_snapshots_built_total") >= 1.0);
    c.restart(down).unwrap();
    wait_until(Duration::from_secs(60), || {
        c.json(down, &["get", "pipelines", "--consistency", "stale"])
            .map(|v| v.as_array().map(Vec::len) == Some(150))
            .unwrap_or(false)
    })
    .unwrap_or_else(|e| {
        panic!(
            "restarted node did not catch up: {e}\n{}",
            c.log_tail(down, 30)
        )
    });
    assert!(
        metric(&c, down, "flowctl_store_snapshots_installed_total") >= 1.0,
        "the lagging node should have installed a snapshot"
    );
    assert_eq!(
        names(&c.json(down, &["get", "pipelines"]).unwrap()),
        names(&c.json(leader, &["get", "pipelines"]).unwrap())
    );
}

#[test]
fn sigterm_on_the_leader_hands_leadership_over_before_exit() {
    let mut c = Cluster::start(3, ClusterOptions::default()).unwrap();
    apply(&c, 0, "before-term", "x");
    let leader = c.leader_index().unwrap();
    let old_id = c.json(leader, &["cluster", "status"]).unwrap()["leader_id"]
        .as_u64()
        .unwrap();
    let code = c.terminate(leader, Duration::from_secs(20)).unwrap();
    assert_eq!(code, Some(0));
    // The handover happened before exit: a survivor already knows a new leader.
    let other = (leader + 1) % 3;
    let st = c
        .json(other, &["cluster", "status", "--timeout", "5"])
        .unwrap();
    let new_id = st["leader_id"].as_u64().unwrap();
    assert!(
        new_id != 0 && new_id != old_id,
        "leader after SIGTERM: {st}"
    );
    assert!(c.log_tail(leader, 50).contains("handed leadership over"));
    apply(&c, other, "after-term", "x");
}

#[test]
fn cluster_admin_transfers_leadership_and_removes_a_member() {
    // With authentication on: membership changes and restarts go through the peer secret.
    let mut c = Cluster::start(
        3,
        ClusterOptions {
            secure: true,
            ..Default::default()
        },
    )
    .unwrap();
    let st = c.json(0, &["cluster", "status"]).unwrap();
    let leader = st["leader_id"].as_u64().unwrap();
    let members = st["members"].as_array().unwrap();
    assert_eq!(members.len(), 3);
    for m in members {
        for f in [
            "id",
            "addr",
            "role",
            "applied_index",
            "term",
            "leader_id",
            "commit_index",
        ] {
            assert!(!m[f].is_null(), "member lacks {f}: {m}");
        }
    }
    let target = members
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .find(|&id| id != leader)
        .unwrap();
    let out = c
        .flowctl(2, &["cluster", "transfer-leader", &target.to_string()])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(Duration::from_secs(10), || {
        c.json(0, &["cluster", "status"])
            .map(|v| v["leader_id"].as_u64() == Some(target))
            .unwrap_or(false)
    })
    .unwrap();

    // Remove a follower; its id may never rejoin.
    // Node 0 has no --join flag, so pick the victim among the joiners.
    let victim_addr_idx = (1..3)
        .find(|&i| {
            let id = c.json(i, &["cluster", "status"]).unwrap()["served_by"]
                .as_u64()
                .unwrap();
            id != target
        })
        .unwrap();
    let victim_id = c.json(victim_addr_idx, &["cluster", "status"]).unwrap()["served_by"]
        .as_u64()
        .unwrap();
    let other = (0..3).find(|&i| i != victim_addr_idx).unwrap();
    let out = c
        .flowctl(other, &["cluster", "remove", &victim_id.to_string()])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ms = c.json(other, &["cluster", "members"]).unwrap();
    assert_eq!(ms.as_array().unwrap().len(), 2, "{ms}");
    apply(&c, other, "after-remove", "x");
    // The removed node, restarted on its data dir with --join, is refused.
    c.kill(victim_addr_idx);
    c.restart(victim_addr_idx).unwrap();
    wait_until(Duration::from_secs(30), || {
        !c.nodes[victim_addr_idx].is_running()
    })
    .unwrap_or_else(|_| {
        panic!(
            "a removed node must not rejoin; log:\n{}",
            c.log_tail(victim_addr_idx, 20)
        )
    });
    assert!(c.log_tail(victim_addr_idx, 20).contains("removed"));
}

#[test]
fn operations_endpoints_report_health_and_metrics() {
    let c = Cluster::start(
        3,
        ClusterOptions {
            extra_args: vec!["--enable-reflection".into()],
            ..Default::default()
        },
    )
    .unwrap();
    apply(&c, 1, "metrics", "x");
    for i in 0..3 {
        let m = &c.nodes[i].metrics_addr;
        assert_eq!(http_get(m, "/livez").unwrap().0, 200);
        assert_eq!(http_get(m, "/readyz").unwrap().0, 200);
        let (_, body) = http_get(m, "/metrics").unwrap();
        for name in [
            "flowctl_raft_term",
            "flowctl_raft_is_leader",
            "flowctl_raft_leader_changes_total",
            "flowctl_raft_commit_index",
            "flowctl_raft_applied_index",
            "flowctl_raft_proposals_committed_total",
            "flowctl_raft_proposals_failed_total",
            "flowctl_store_snapshots_built_total",
            "flowctl_grpc_requests_total",
        ] {
            assert!(body.contains(name), "node {i} /metrics lacks {name}");
        }
    }
    // The leader measured the propose-to-apply latency of the write.
    let leader = c.leader_index().unwrap();
    let (_, body) = http_get(&c.nodes[leader].metrics_addr, "/metrics").unwrap();
    assert!(
        body.contains("flowctl_raft_propose_to_apply_seconds_bucket"),
        "{body}"
    );
    // gRPC health on the gRPC port.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", c.nodes[0].addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
        let r = h
            .check(tonic_health::pb::HealthCheckRequest {
                service: "flowctl.admin.v1.PipelineService".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );

        // Server reflection (turned on here) lists the public and wire-compatible services,
        // in both protocol versions.
        for version in ["v1", "v1alpha"] {
            let names = reflected_services(&c.nodes[1].addr, version).await.unwrap();
            for want in [
                "flowctl.admin.v1.PipelineService",
                "flowctl.ControlPlane",
                "flowctl.v1.ControlPlaneService",
            ] {
                assert!(
                    names.iter().any(|n| n == want),
                    "{version}: {want} not in {names:?}"
                );
            }
        }
    });
}

/// The services a node's gRPC reflection (`v1` or `v1alpha`) lists.
async fn reflected_services(addr: &str, version: &str) -> Result<Vec<String>, tonic::Status> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // The two versions have the same messages in different packages.
    macro_rules! list {
        ($pb:ident) => {{
            use tonic_reflection::pb::$pb::{
                server_reflection_client::ServerReflectionClient,
                server_reflection_request::MessageRequest,
                server_reflection_response::MessageResponse, ServerReflectionRequest,
            };
            let req = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let mut stream = ServerReflectionClient::new(ch)
                .server_reflection_info(tokio_stream::iter(vec![req]))
                .await?
                .into_inner();
            let resp = stream.message().await?.unwrap();
            let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
                panic!("unexpected reflection reply: {resp:?}");
            };
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }};
    }
    match version {
        "v1" => list!(v1),
        _ => list!(v1alpha),
    }
}

#[test]
fn reflection_is_off_unless_enabled() {
    let c = Cluster::start(1, ClusterOptions::default()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for version in ["v1", "v1alpha"] {
        let got = rt.block_on(reflected_services(&c.nodes[0].addr, version));
        assert_eq!(
            got.as_ref().map_err(tonic::Status::code).err(),
            Some(tonic::Code::Unimplemented),
            "{version}: {got:?}"
        );
    }
}

#[test]
fn forwarded_leader_only_commands_are_refused_and_change_nothing() {
    use flowctl_client::proto::internal::v1::{
        raft_service_client::RaftServiceClient, ForwardRequest,
    };
    use flowctl_state::{codec, placements::SetPlacement, Command, NodeId};
    let c = Cluster::start(1, ClusterOptions::default()).unwrap();
    apply(&c, 0, "fwd", "x");
    let status = c.json(0, &["cluster", "status"]).unwrap();
    let me = status["leader_id"].as_u64().unwrap();
    let cluster = status["cluster_id"].as_str().unwrap().to_owned();
    let placement = Command::SetPlacement(SetPlacement {
        pipeline: "fwd".into(),
        generation: 1,
        instances: [("src/0".to_owned(), NodeId(999))].into(),
    });
    let cases = [
        (placement.clone(), tonic::Code::PermissionDenied),
        (
            Command::Batch(vec![Command::Batch(vec![placement.clone()])]),
            tonic::Code::InvalidArgument,
        ),
        (
            Command::RecordNodeRemoved {
                node_id: NodeId(me),
            },
            tonic::Code::FailedPrecondition,
        ),
    ];
    // A Forward request that names `from` and `cluster` as its sender.
    let forward = |cmd: &Command, from: Option<u64>, cluster: Option<&str>| {
        let mut req = tonic::Request::new(ForwardRequest {
            command: codec::encode_command(cmd).unwrap(),
            hops: 0,
        });
        if let Some(id) = from {
            req.metadata_mut()
                .insert("x-flowctl-node-id", id.to_string().parse().unwrap());
        }
        if let Some(c) = cluster {
            req.metadata_mut()
                .insert("x-flowctl-cluster-id", c.parse().unwrap());
        }
        req
    };
    let connect = |addr: String| async move {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        RaftServiceClient::new(ch)
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Not served on the public port at all.
        let mut public = connect(c.nodes[0].addr.clone()).await;
        let got = public
            .forward(forward(&placement, Some(me), Some(&cluster)))
            .await;
        assert_eq!(
            got.err().map(|s| s.code()),
            Some(tonic::Code::Unimplemented)
        );
        let mut raft = connect(c.nodes[0].peer_addr.clone()).await;
        // On the peer port, a sender must name itself, be a member, and be of this cluster.
        let delete = Command::DeletePipeline(flowctl_state::pipelines::DeletePipeline {
            name: "fwd".into(),
        });
        for (from, cl, code) in [
            (None, Some(cluster.as_str()), tonic::Code::Unauthenticated),
            (
                Some(999),
                Some(cluster.as_str()),
                tonic::Code::PermissionDenied,
            ),
            (
                Some(me),
                Some("0123456789abcdef"),
                tonic::Code::PermissionDenied,
            ),
            (Some(me), None, tonic::Code::PermissionDenied),
        ] {
            let got = raft.forward(forward(&delete, from, cl)).await;
            assert_eq!(
                got.as_ref().err().map(tonic::Status::code),
                Some(code),
                "{from:?} {cl:?}: {got:?}"
            );
        }
        // A member's forwarded leader-only decisions are refused too.
        for (cmd, code) in cases {
            let got = raft.forward(forward(&cmd, Some(me), Some(&cluster))).await;
            assert_eq!(
                got.as_ref().err().map(tonic::Status::code),
                Some(code),
                "{cmd:?}: {got:?}"
            );
        }
    });
    // Nothing was applied: the pipeline is there, no placement names node 999, and the node
    // is still a member.
    let described = c.json(0, &["describe", "pipeline", "fwd"]).unwrap();
    assert!(!described.to_string().contains("999"), "{described}");
    assert_eq!(
        c.json(0, &["cluster", "members"])
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// A call with `x-flowctl-request-id: id`, as a client's retry of one operation sends it.
fn with_id<T>(msg: T, id: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert(flowctl_client::proto::auth::REQUEST_ID, id.parse().unwrap());
    r
}

#[test]
fn a_retried_write_answers_what_its_first_copy_answered() {
    let c = Cluster::start(3, ClusterOptions::default()).unwrap();
    let f = follower_of(&c);
    apply(&c, f, "gone", "a");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", c.nodes[f].addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut p = PipelineServiceClient::new(ch);
        let del = || pb::DeletePipelineRequest {
            name: "gone".into(),
        };
        // Through a follower (forwarded), then again with the same id: success again, not
        // NOT_FOUND. (The retry's index is that of its own log entry, which the node has
        // applied too: reads at it see the delete.)
        let first = p.delete_pipeline(with_id(del(), "op-1")).await.unwrap();
        let again = p.delete_pipeline(with_id(del(), "op-1")).await.unwrap();
        assert!(again.get_ref().applied_index > first.get_ref().applied_index);
        // A new operation is a new write, which finds nothing.
        let other = p.delete_pipeline(with_id(del(), "op-2")).await.unwrap_err();
        assert_eq!(other.code(), tonic::Code::NotFound, "{other}");
        // An id that is not one is refused before anything happens.
        let bad = p
            .delete_pipeline(with_id(del(), "not/an-id"))
            .await
            .unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad}");
        assert!(bad.message().contains("x-flowctl-request-id"), "{bad}");
    });
    // Compare-and-set on the generation, through the CLI.
    let f2 = write_file(&c, "cas", &doc("cas", "one"));
    let out = c
        .flowctl(0, &["apply", "-f", &f2, "--if-generation", "1"])
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist, not 1"), "{err}");
    let v = c
        .json(0, &["apply", "-f", &f2, "--if-generation", "0"])
        .unwrap();
    assert_eq!(v["generation"], 1);
    std::fs::write(&f2, doc("cas", "two")).unwrap();
    let stale = c
        .flowctl(1, &["apply", "-f", &f2, "--if-generation", "0"])
        .unwrap();
    let err = String::from_utf8_lossy(&stale.stderr);
    assert!(err.contains("is at generation 1, not 0"), "{err}");
    let v = c
        .json(1, &["apply", "-f", &f2, "--if-generation", "1"])
        .unwrap();
    assert_eq!(v["generation"], 2);
    let got = c.json(2, &["get", "pipeline", "cas"]).unwrap();
    assert_eq!(got["generation"], 2);
}
