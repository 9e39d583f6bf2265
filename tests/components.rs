//! The component registry and liveness against real 3-node clusters, through clients
//! generated from our copies of the original control plane's `.proto` files.

#![allow(clippy::unwrap_used)] // Tests may unwrap: a panic is the failure report.

use flowctl_client::proto::legacy;
use flowctl_client::proto::legacy::control_plane_client::ControlPlaneClient;
use flowctl_client::proto::v1;
use flowctl_client::proto::v1::control_plane_service_client::ControlPlaneServiceClient;
use flowctl_client::Client;
use flowctl_testkit::{http_get, wait_until, Cluster, ClusterOptions};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

fn ttl_cluster(ttl_secs: &str) -> Cluster {
    Cluster::start(
        3,
        ClusterOptions {
            extra_args: vec!["--heartbeat-ttl".into(), ttl_secs.into()],
            ..Default::default()
        },
    )
    .unwrap()
}

async fn channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn info(id: &str) -> v1::ComponentInfo {
    v1::ComponentInfo {
        id: id.into(),
        name: "ttp-processor".into(),
        description: "token transfers".into(),
        version: "1.2.3".into(),
        r#type: v1::ComponentType::Processor as i32,
        input_event_types: vec!["stellar.ledger.v1.LedgerCloseMeta".into()],
        output_event_types: vec!["token_transfer.v1.TokenTransferEvent".into()],
        endpoint: "127.0.0.1:50051".into(),
        metadata: HashMap::from([("pipeline".into(), "stellar-token-pipeline".into())]),
    }
}

fn status_of(c: &Cluster, node: usize, id: &str) -> serde_json::Value {
    let list = c.json(node, &["list"]).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == id)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

#[test]
fn v1_api_registers_heartbeats_lists_and_tracks_liveness_across_nodes() {
    let c = ttl_cluster("2");
    let leader = c.leader_index().unwrap();
    let f1 = (leader + 1) % 3;
    let f2 = (leader + 2) % 3;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Register through a follower; FLOWCTL_COMPONENT_ID wins over component.id.
        let mut reg = ControlPlaneServiceClient::new(channel(&c.nodes[f1].addr).await);
        let resp = reg
            .register_component(v1::RegisterRequest {
                component: Some(info("ignored-id")),
                component_id: "ttp-processor".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(resp.service_id, "ttp-processor");
        let eps = resp.connection_info.get("control_plane_endpoints").unwrap();
        for n in &c.nodes {
            assert!(eps.contains(&n.addr), "{eps}");
        }
        // Re-registering is idempotent: still one record.
        reg.register_component(v1::RegisterRequest {
            component: Some(info("ttp-processor")),
            component_id: String::new(),
        })
        .await
        .unwrap();

        // Heartbeat to another node, with UNKNOWN status as the Go SDK sends.
        let mut hb = ControlPlaneServiceClient::new(channel(&c.nodes[leader].addr).await);
        hb.heartbeat(v1::HeartbeatRequest {
            service_id: "ttp-processor".into(),
            status: v1::HealthStatus::Unknown as i32,
            metrics: HashMap::from([("events_processed".into(), "42".into())]),
        })
        .await
        .unwrap();

        // List from the third node: healthy, a recent heartbeat, metrics present.
        let mut third = ControlPlaneServiceClient::new(channel(&c.nodes[f2].addr).await);
        let mut seen = None;
        for _ in 0..50 {
            let list = third
                .list_components(v1::ListComponentsRequest {
                    type_filter: 0,
                    include_unhealthy: true,
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(list.components.len(), 1);
            let s = list.components[0].clone();
            if s.metrics.contains_key("events_processed") {
                seen = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let s = seen.expect("the relayed heartbeat reached the leader's view");
        assert_eq!(s.status, v1::HealthStatus::Healthy as i32);
        assert!(s.last_heartbeat.is_some());
        assert!(s.registered_at.is_some());
        assert_eq!(s.component.unwrap().version, "1.2.3");

        // Heartbeat for an unknown id: NOT_FOUND.
        let err = hb
            .heartbeat(v1::HeartbeatRequest {
                service_id: "nobody".into(),
                status: 0,
                metrics: HashMap::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
    });

    // Stop heartbeating: unhealthy within TTL plus a sweep (checked with slack).
    wait_until(Duration::from_secs(10), || {
        status_of(&c, f2, "ttp-processor")["status"] == "unhealthy"
    })
    .unwrap();
    let row = status_of(&c, f1, "ttp-processor");
    assert_eq!(row["pipeline"], "stellar-token-pipeline");
    assert_eq!(row["metrics"]["events_processed"], "42");

    rt.block_on(async {
        let mut hb = ControlPlaneServiceClient::new(channel(&c.nodes[f1].addr).await);
        hb.heartbeat(v1::HeartbeatRequest {
            service_id: "ttp-processor".into(),
            status: v1::HealthStatus::Unknown as i32,
            metrics: HashMap::new(),
        })
        .await
        .unwrap();
    });
    // Resume: healthy again.
    wait_until(Duration::from_secs(10), || {
        status_of(&c, leader, "ttp-processor")["status"] == "healthy"
    })
    .unwrap();

    rt.block_on(async {
        let mut api = ControlPlaneServiceClient::new(channel(&c.nodes[f2].addr).await);
        api.unregister_component(v1::UnregisterRequest {
            service_id: "ttp-processor".into(),
        })
        .await
        .unwrap();
        let list = api
            .list_components(v1::ListComponentsRequest {
                type_filter: 0,
                include_unhealthy: true,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(list.components.is_empty());
    });
    let out = c
        .flowctl(0, &["describe", "component", "ttp-processor"])
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn legacy_api_fills_status_fields_and_lists_services() {
    let c = ttl_cluster("2");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut a = ControlPlaneClient::new(channel(&c.nodes[1].addr).await);
        let ack = a
            .register(legacy::ServiceInfo {
                service_id: "stellar-live-source".into(),
                service_type: legacy::ServiceType::Source as i32,
                input_event_types: vec![],
                output_event_types: vec!["stellar.ledger.v1.LedgerCloseMeta".into()],
                health_endpoint: "http://127.0.0.1:8088/health".into(),
                max_inflight: 10,
                metadata: HashMap::new(),
                component_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ack.service_id, "stellar-live-source");
        let mut b = ControlPlaneClient::new(channel(&c.nodes[2].addr).await);
        let mut z = ControlPlaneClient::new(channel(&c.nodes[0].addr).await);
        let mut ok = false;
        for _ in 0..50 {
            // A component heartbeats on a period: only the leader keeps heartbeats, in memory,
            // so an election during the test would forget a single one.
            b.heartbeat(legacy::ServiceHeartbeat {
                service_id: "stellar-live-source".into(),
                timestamp: None,
                metrics: HashMap::from([("ledgers".into(), 7.0)]),
            })
            .await
            .unwrap();
            let list = z.list_services(()).await.unwrap().into_inner();
            assert_eq!(list.services.len(), 1);
            let s = &list.services[0];
            if s.metrics.get("ledgers") == Some(&7.0) {
                assert!(s.is_healthy);
                assert!(s.last_heartbeat.is_some());
                assert_eq!(s.service_type, legacy::ServiceType::Source as i32);
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(ok, "ListServices never showed the heartbeat's metrics");
        let st = z
            .get_service_status(legacy::ServiceInfo {
                service_id: "stellar-live-source".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(st.is_healthy);
        let err = z
            .heartbeat(legacy::ServiceHeartbeat {
                service_id: "ghost".into(),
                timestamp: None,
                metrics: HashMap::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
    });
    let out = c.flowctl(0, &["list", "--type", "source"]).unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("stellar-live-source") && table.contains("LAST HEARTBEAT"),
        "{table}"
    );
}

/// Heartbeats `n` components every `every` through a failover client until `stop`.
fn heartbeaters(
    endpoints: Vec<String>,
    ids: Vec<String>,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = Arc::new(Client::new(&endpoints, Duration::from_secs(5)).unwrap());
            let mut tasks = Vec::new();
            for (i, id) in ids.into_iter().enumerate() {
                let client = client.clone();
                let stop = stop.clone();
                tasks.push(tokio::spawn(async move {
                    // Spread the components over the interval.
                    tokio::time::sleep(every.mul_f64((i % 100) as f64 / 100.0)).await;
                    while !stop.load(Ordering::Relaxed) {
                        let req = v1::HeartbeatRequest {
                            service_id: id.clone(),
                            status: 0,
                            metrics: HashMap::new(),
                        };
                        let _ =
                            client
                                .call(|ch| {
                                    let req = req.clone();
                                    async move {
                                        ControlPlaneServiceClient::new(ch).heartbeat(req).await
                                    }
                                })
                                .await;
                        tokio::time::sleep(every).await;
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        })
    })
}

fn register_many(c: &Cluster, ids: &[String]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut api = ControlPlaneServiceClient::new(channel(&c.nodes[0].addr).await);
        for id in ids {
            api.register_component(v1::RegisterRequest {
                component: Some(info(id)),
                component_id: id.clone(),
            })
            .await
            .unwrap();
        }
    });
}

/// Registers `ids` with `tasks` concurrent clients spread over the nodes; every registration
/// must succeed at its first attempt.
fn register_concurrently(c: &Cluster, ids: &[String], tasks: usize) {
    let all: Vec<usize> = (0..c.nodes.len()).collect();
    register_concurrently_on(c, &all, ids, tasks);
}

/// [`register_concurrently`] through the nodes `on` only.
fn register_concurrently_on(c: &Cluster, on: &[usize], ids: &[String], tasks: usize) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let eps: Vec<String> = on.iter().map(|&i| c.nodes[i].addr.clone()).collect();
    let ids = Arc::new(ids.to_vec());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    rt.block_on(async {
        let mut handles = Vec::new();
        for t in 0..tasks {
            let (ids, next) = (ids.clone(), next.clone());
            let ep = eps[t % eps.len()].clone();
            handles.push(tokio::spawn(async move {
                let mut api = ControlPlaneServiceClient::new(channel(&ep).await);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(id) = ids.get(i) else { return };
                    api.register_component(v1::RegisterRequest {
                        component: Some(info(id)),
                        component_id: id.clone(),
                    })
                    .await
                    .unwrap_or_else(|e| panic!("registering {id}: {e}"));
                }
            }));
        }
        for h in handles {
            h.await.unwrap();
        }
    });
}

fn liveness_transitions(c: &Cluster, node: usize) -> u64 {
    let (_, body) = http_get(&c.nodes[node].metrics_addr, "/metrics").unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix("flowctl_liveness_transitions_total "))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap_or(0.0) as u64)
}

/// Found by the 250,000-component benchmark: when thousands of components are due to go down
/// in one sweep, the leader proposed every transition at once, more than the proposal queue
/// holds, so some were refused as overloaded, and so were clients' writes made meanwhile. Here
/// the burst comes from a new leader: it gives every component one full TTL, then finds all of
/// them (registrations never heard from) due at once. Now at most `MAX_TRANSITIONS_IN_FLIGHT`
/// are proposed at a time: every component goes down, no transition fails, and clients'
/// writes all succeed meanwhile.
#[test]
fn thousands_of_components_due_at_once_neither_fail_nor_crowd_out_client_writes() {
    const SILENT: usize = 6_000;
    let mut c = ttl_cluster("10");
    let silent: Vec<String> = (0..SILENT).map(|i| format!("silent-{i}")).collect();
    register_concurrently(&c, &silent, 48);
    let old = c.leader_index().unwrap();
    c.kill(old);
    let mut leader = old;
    wait_until(Duration::from_secs(30), || {
        leader = c.leader_index().unwrap_or(old);
        leader != old
    })
    .unwrap();
    let alive: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    // While the new leader's grace runs out and they go down: clients keep writing.
    let mut rounds = 0;
    wait_until(Duration::from_secs(120), || {
        let ids: Vec<String> = (0..32).map(|i| format!("during-{rounds}-{i}")).collect();
        register_concurrently_on(&c, &alive, &ids, 32);
        rounds += 1;
        liveness_transitions(&c, leader) >= SILENT as u64
    })
    .unwrap_or_else(|e| {
        panic!(
            "{} of {SILENT} went down: {e}",
            liveness_transitions(&c, leader)
        )
    });
    assert!(rounds > 1, "client writes overlapped the transitions");
    let log = c.log_tail(leader, 1_000_000);
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("liveness transition not committed"))
        .collect();
    assert!(
        failed.is_empty(),
        "{} transitions failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
}

#[test]
fn leader_sigkill_while_components_heartbeat_raises_no_false_alarm() {
    let mut c = ttl_cluster("3");
    let ids: Vec<String> = (0..100).map(|i| format!("comp-{i}")).collect();
    register_many(&c, &ids);
    let stop = Arc::new(AtomicBool::new(false));
    let eps: Vec<String> = c.nodes.iter().map(|n| n.addr.clone()).collect();
    let h = heartbeaters(eps, ids.clone(), Duration::from_millis(500), stop.clone());
    std::thread::sleep(Duration::from_secs(2));
    let leader = c.leader_index().unwrap();
    c.kill(leader);
    let survivor = (leader + 1) % 3;
    // Over the next TTL and a half, nobody is ever reported unhealthy.
    let until = std::time::Instant::now() + Duration::from_secs(8);
    let mut checks = 0;
    while std::time::Instant::now() < until {
        if let Ok(list) = c.json(survivor, &["list", "--timeout", "5"]) {
            let bad: Vec<_> = list
                .as_array()
                .unwrap()
                .iter()
                .filter(|x| x["status"] != "healthy")
                .map(|x| x["id"].clone())
                .collect();
            assert!(bad.is_empty(), "reported unhealthy after failover: {bad:?}");
            checks += 1;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
    assert!(checks > 5, "too few successful checks: {checks}");
}

fn commit_index(c: &Cluster, node: usize) -> u64 {
    let (_, body) = http_get(&c.nodes[node].metrics_addr, "/metrics").unwrap();
    body.lines()
        .find(|l| l.starts_with("flowctl_raft_commit_index "))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap() as u64
}

#[test]
fn steady_heartbeats_do_not_grow_the_raft_log() {
    // A TTL well above the 1 s heartbeat interval, so that a loaded machine delaying some
    // heartbeats does not cause (real, logged) health transitions.
    let c = ttl_cluster("10");
    let ids: Vec<String> = (0..1000).map(|i| format!("steady-{i}")).collect();
    register_many(&c, &ids);
    let stop = Arc::new(AtomicBool::new(false));
    let eps: Vec<String> = c.nodes.iter().map(|n| n.addr.clone()).collect();
    let h = heartbeaters(eps, ids, Duration::from_secs(1), stop.clone());
    // Let the registrations settle: each one is confirmed once by the leader after its first
    // heartbeat (a one-time write, at the next liveness sweep, every TTL/4 = 2.5 s). Steady
    // state is when the log stays put across more than a sweep.
    let leader = c.leader_index().unwrap();
    let mut settled = commit_index(&c, leader);
    wait_until(Duration::from_secs(60), || {
        std::thread::sleep(Duration::from_secs(4));
        let now = commit_index(&c, leader);
        std::mem::replace(&mut settled, now) == now
    })
    .unwrap_or_else(|e| panic!("the log did not settle after the registrations: {e}"));
    let before = commit_index(&c, leader);
    std::thread::sleep(Duration::from_secs(30));
    let after = commit_index(&c, leader);
    stop.store(true, Ordering::Relaxed);
    h.join().unwrap();
    assert_eq!(before, after, "heartbeats must not be written to the log");
    let (_, body) = http_get(&c.nodes[leader].metrics_addr, "/metrics").unwrap();
    assert!(body.contains("flowctl_liveness_heartbeats_total"));
}

/// The real agent against a real cluster: its first endpoint is the leader, which dies; the
/// agent keeps heartbeating through another endpoint and is never reported unhealthy.
#[test]
fn agent_keeps_heartbeating_through_another_endpoint_when_its_node_dies() {
    let mut c = ttl_cluster("3");
    let leader = c.leader_index().unwrap();
    let mut endpoints = vec![c.nodes[leader].addr.clone()];
    endpoints.extend(
        (0..3)
            .filter(|&i| i != leader)
            .map(|i| c.nodes[i].addr.clone()),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let agent = rt.block_on(async {
        let vars: HashMap<&str, String> = HashMap::from([
            ("ENABLE_FLOWCTL", "true".to_owned()),
            ("FLOWCTL_ENDPOINT", endpoints.join(",")),
            ("FLOWCTL_HEARTBEAT_INTERVAL", "300ms".to_owned()),
            ("FLOWCTL_COMPONENT_ID", "agent-under-test".to_owned()),
        ]);
        let cfg = flowctl_agent::AgentConfig::from_vars(|k| vars.get(k).cloned()).unwrap();
        let agent = flowctl_agent::Agent::start(
            cfg,
            flowctl_agent::ComponentDescription::source("agent-under-test"),
            flowctl_agent::CancellationToken::new(),
        )
        .await
        .unwrap();
        agent
            .wait_registered(Duration::from_secs(15))
            .await
            .unwrap();
        agent.counter("ledgers").add(5);
        agent
    });
    let other = (leader + 1) % 3;
    wait_until(Duration::from_secs(10), || {
        status_of(&c, other, "agent-under-test")["metrics"]["ledgers"] == "5"
    })
    .unwrap();
    c.kill(leader);
    let first = status_of(&c, other, "agent-under-test")["last_heartbeat"].clone();
    // For two TTLs: always healthy, and the last heartbeat keeps moving.
    let until = std::time::Instant::now() + Duration::from_secs(6);
    let mut moved = false;
    while std::time::Instant::now() < until {
        if let Ok(list) = c.json(other, &["list", "--timeout", "5"]) {
            let row = list
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["id"] == "agent-under-test")
                .cloned()
                .unwrap();
            assert_eq!(row["status"], "healthy", "{row}");
            if !row["last_heartbeat"].is_null() && row["last_heartbeat"] != first {
                moved = true;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        moved,
        "heartbeats did not continue through another endpoint"
    );
    rt.block_on(agent.shutdown());
    // Graceful shutdown unregistered it.
    let list = c.json(other, &["list"]).unwrap();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .all(|x| x["id"] != "agent-under-test"),
        "{list}"
    );
}
