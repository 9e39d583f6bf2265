//! The status table: one look at the cluster, the pipeline and the components through the
//! API, the tables of nodes and components that `dev up` redraws and `dev status` prints,
//! and `dev status` itself (those tables, or the state and the snapshot as JSON or YAML).

use super::processes::alive;
use super::state::{read_state, state_path, DevState, NodeState};
use crate::commands::{client, now_ms, rfc3339, status_err, ts_ms};
use crate::output::{age, print_table};
use crate::{Format, Global};
use anyhow::bail;
use flowctl_client::proto::admin::v1 as pb;
use flowctl_client::proto::admin::v1::cluster_service_client::ClusterServiceClient;
use flowctl_client::proto::admin::v1::component_service_client::ComponentServiceClient;
use flowctl_client::proto::admin::v1::pipeline_service_client::PipelineServiceClient;
use flowctl_client::MAX_REPLY_BYTES;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};

/// The cluster as the API shows it.
pub(super) async fn cluster_status(
    c: &flowctl_client::Client,
) -> anyhow::Result<pb::ClusterStatusResponse> {
    Ok(c.call(|ch| async move {
        ClusterServiceClient::new(ch)
            .max_decoding_message_size(MAX_REPLY_BYTES)
            .status(pb::ClusterStatusRequest {})
            .await
    })
    .await
    .map_err(status_err)?
    .into_inner())
}

/// One look at the cluster, the pipeline and the components; each part fails on its own.
pub(super) struct Snapshot {
    cluster: anyhow::Result<pb::ClusterStatusResponse>,
    pipeline: anyhow::Result<pb::Pipeline>,
    components: anyhow::Result<Vec<pb::Component>>,
}

impl Snapshot {
    pub(super) async fn fetch(c: &flowctl_client::Client, pipeline: &str) -> Self {
        let consistency = pb::Consistency::Linearizable as i32;
        let pipeline_req = pb::GetPipelineRequest {
            name: pipeline.to_owned(),
            consistency,
        };
        let (cluster, pipeline, components) = tokio::join!(
            cluster_status(c),
            c.call(|ch| {
                let req = pipeline_req.clone();
                async move {
                    PipelineServiceClient::new(ch)
                        .max_decoding_message_size(MAX_REPLY_BYTES)
                        .get_pipeline(req)
                        .await
                }
            }),
            c.call(|ch| async move {
                ComponentServiceClient::new(ch)
                    .max_decoding_message_size(MAX_REPLY_BYTES)
                    .list_components(pb::ListComponentsRequest { consistency })
                    .await
            }),
        );
        Snapshot {
            cluster,
            pipeline: pipeline
                .map_err(status_err)
                .map(|r| r.into_inner().pipeline.unwrap_or_default()),
            components: components
                .map_err(status_err)
                .map(|r| r.into_inner().components),
        }
    }
}

/// One recorded process as the status shows it.
pub(super) struct ProcRow {
    pub(super) what: String,
    pub(super) pid: u32,
    pub(super) process: String,
    pub(super) node: Option<NodeState>,
}

fn role_name(r: i32) -> &'static str {
    match pb::MemberRole::try_from(r) {
        Ok(pb::MemberRole::Leader) => "leader",
        Ok(pb::MemberRole::Follower) => "follower",
        Ok(pb::MemberRole::Learner) => "learner",
        Ok(pb::MemberRole::Candidate) => "candidate",
        Ok(pb::MemberRole::Unreachable) => "unreachable",
        _ => "unknown",
    }
}

fn node_rows(procs: &[ProcRow], cluster: Option<&pb::ClusterStatusResponse>) -> Vec<Vec<String>> {
    let mut rows = vec![["NODE", "ADDRESS", "METRICS", "PID", "PROCESS", "ROLE"]
        .map(String::from)
        .to_vec()];
    for p in procs {
        let (index, addr, metrics) = match &p.node {
            Some(n) => (n.index.to_string(), n.addr.clone(), n.metrics_addr.clone()),
            None => (p.what.clone(), "-".into(), "-".into()),
        };
        let role = cluster
            .and_then(|c| c.members.iter().find(|m| m.addr == addr))
            .map_or("-", |m| role_name(m.role));
        rows.push(vec![
            index,
            addr,
            metrics,
            p.pid.to_string(),
            p.process.clone(),
            role.to_owned(),
        ]);
    }
    rows
}

/// A metric value without a needless `.0`.
fn number(v: &str) -> String {
    match v.parse::<f64>() {
        Ok(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
        _ => v.to_owned(),
    }
}

/// The few metrics that say whether events flow, from a component's heartbeat metrics:
/// `flowctl_<who>_{ledgers_total,ledgers_seen,events_total,dlq_total,undecodable_total,
/// last_ledger}`; other components get their first three metrics.
fn flow_summary(metrics: &HashMap<String, String>) -> String {
    const KNOWN: [(&str, &str); 6] = [
        ("ledgers_total", "ledgers"),
        ("ledgers_seen", "ledgers"),
        ("events_total", "events"),
        ("dlq_total", "dlq"),
        ("undecodable_total", "undecodable"),
        ("last_ledger", "last"),
    ];
    let sorted: BTreeMap<&str, &str> = metrics
        .iter()
        .filter(|(k, _)| !k.starts_with("flowctl_agent_"))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let short = |k: &str| {
        k.strip_prefix("flowctl_")
            .and_then(|r| r.split_once('_'))
            .map(|(_, rest)| rest.to_owned())
    };
    let mut parts = Vec::new();
    for (suffix, label) in KNOWN {
        if let Some((_, v)) = sorted
            .iter()
            .find(|(k, _)| short(k).as_deref() == Some(suffix))
        {
            parts.push(format!("{label}={}", number(v)));
        }
    }
    if parts.is_empty() {
        parts = sorted
            .iter()
            .take(3)
            .map(|(k, v)| format!("{k}={}", number(v)))
            .collect();
    }
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join(" ")
    }
}

/// One row per pipeline instance (sources, processors, sinks), joined with its registration,
/// then the other registered components. `nodes` names a node address by its `dev up` index.
fn component_rows(
    pipeline: Option<&pb::Pipeline>,
    components: &[pb::Component],
    nodes: &HashMap<String, u16>,
    now: u64,
) -> Vec<Vec<String>> {
    let mut rows = vec![[
        "COMPONENT",
        "TYPE",
        "STATE",
        "HEALTH",
        "NODE",
        "PID",
        "RESTARTS",
        "HEARTBEAT",
        "FLOW",
    ]
    .map(String::from)
    .to_vec()];
    let by_id: HashMap<&str, &pb::Component> =
        components.iter().map(|c| (c.id.as_str(), c)).collect();
    let registered = |c: Option<&&pb::Component>| -> [String; 4] {
        match c {
            Some(c) => [
                c.r#type.clone(),
                c.status.clone(),
                c.last_heartbeat.as_ref().map_or("-".into(), |_| {
                    format!("{} ago", age(ts_ms(&c.last_heartbeat), now))
                }),
                flow_summary(&c.metrics),
            ],
            None => ["-", "not registered", "-", "-"].map(String::from),
        }
    };
    let mut instances: Vec<&pb::Instance> =
        pipeline.map_or(vec![], |p| p.instances.iter().collect());
    let rank = |i: &pb::Instance| {
        let kind = by_id
            .get(i.component_id.as_str())
            .map(|c| c.r#type.as_str());
        match kind {
            Some("source") => 0,
            Some("processor") => 1,
            Some("sink") => 2,
            _ => 3,
        }
    };
    instances.sort_by(|a, b| (rank(a), &a.key).cmp(&(rank(b), &b.key)));
    for i in &instances {
        let [kind, health, heartbeat, flow] = registered(by_id.get(i.component_id.as_str()));
        rows.push(vec![
            i.component_id.clone(),
            kind,
            i.state.clone(),
            health,
            nodes
                .get(&i.node_addr)
                .map_or_else(|| i.node_id.to_string(), u16::to_string),
            if i.pid == 0 {
                "-".into()
            } else {
                i.pid.to_string()
            },
            i.restarts.to_string(),
            heartbeat,
            flow,
        ]);
    }
    let mut others: Vec<&pb::Component> = components
        .iter()
        .filter(|c| !instances.iter().any(|i| i.component_id == c.id))
        .collect();
    others.sort_by(|a, b| a.id.cmp(&b.id));
    for c in others {
        let [kind, health, heartbeat, flow] = registered(Some(&c));
        rows.push(vec![
            c.id.clone(),
            kind,
            "-".into(),
            health,
            "-".into(),
            "-".into(),
            "-".into(),
            heartbeat,
            flow,
        ]);
    }
    rows
}

pub(super) fn print_status(state: &DevState, procs: &[ProcRow], snap: &Snapshot) {
    match &snap.cluster {
        Ok(c) => println!(
            "cluster {}  leader {}  term {}",
            c.cluster_id, c.leader_id, c.term
        ),
        Err(e) => println!("cluster: {e:#}"),
    }
    print_table(&node_rows(procs, snap.cluster.as_ref().ok()));
    println!();
    match &snap.pipeline {
        Ok(p) => println!(
            "pipeline {}  {}  {}/{} ready  generation {}",
            p.name, p.status, p.ready, p.desired, p.generation
        ),
        Err(e) => println!("pipeline {}: {e:#}", state.pipeline),
    }
    match &snap.components {
        Ok(cs) => {
            let nodes: HashMap<String, u16> = procs
                .iter()
                .filter_map(|p| p.node.as_ref())
                .map(|n| (n.addr.clone(), n.index))
                .collect();
            print_table(&component_rows(
                snap.pipeline.as_ref().ok(),
                cs,
                &nodes,
                now_ms(),
            ));
        }
        Err(e) => println!("components: {e:#}"),
    }
}

pub(super) async fn status(g: &Global) -> anyhow::Result<()> {
    let path = state_path()?;
    let Some(state) = read_state(&path)? else {
        bail!(
            "no development environment is running (no state file at {})",
            path.display()
        );
    };
    if !state.up_alive() {
        bail!(
            "no development environment is running (the state file {} is from pid {}, which has exited; `flowctl dev down` cleans up)",
            path.display(),
            state.pid
        );
    }
    // The environment's own admin token, not the invocation's.
    let g = Global {
        endpoints: state.endpoints.clone(),
        token: None,
        token_file: state
            .admin_token_file
            .clone()
            .or_else(|| g.token_file.clone()),
        ..g.clone()
    };
    let c = client(&g)?;
    let snap = Snapshot::fetch(&c, &state.pipeline).await;
    let procs: Vec<(String, u32, bool)> = state.processes();
    match g.output {
        Format::Json | Format::Yaml => {
            let v = status_json(&state, &procs, &snap);
            crate::output::print(g.output, &v, |_| vec![])
        }
        _ => {
            println!("export FLOWCTL_ENDPOINTS={}", state.endpoints);
            if let Some(f) = &state.admin_token_file {
                println!("export FLOWCTL_TOKEN_FILE={}", f.display());
            }
            println!(
                "Kafka brokers: {}{}",
                state.kafka_brokers,
                if state.embedded_broker {
                    " (embedded in dev up)"
                } else {
                    ""
                }
            );
            println!(
                "dev up: pid {} ({}), since {}, {:?}",
                state.pid,
                if procs[0].2 { "alive" } else { "dead" },
                state.started_at,
                state.phase
            );
            println!("data and logs: {}", state.dir.display());
            println!();
            let rows: Vec<ProcRow> = state
                .nodes
                .iter()
                .map(|n| ProcRow {
                    what: format!("node {}", n.index),
                    pid: n.pid,
                    process: if alive(n.pid, n.pid_start) {
                        "alive"
                    } else {
                        "dead"
                    }
                    .to_owned(),
                    node: Some(n.clone()),
                })
                .collect();
            print_status(&state, &rows, &snap);
            Ok(())
        }
    }
}

fn status_json(state: &DevState, procs: &[(String, u32, bool)], snap: &Snapshot) -> Value {
    let mut errors = Vec::new();
    let mut err = |what: &str, e: &anyhow::Error| {
        errors.push(format!("{what}: {e:#}"));
        Value::Null
    };
    let cluster = match &snap.cluster {
        Ok(c) => json!({
            "cluster_id": c.cluster_id,
            "leader_id": c.leader_id,
            "term": c.term,
            "members": c.members.iter().map(|m| json!({
                "id": m.id,
                "addr": m.addr,
                "role": role_name(m.role),
                "voter": m.voter,
            })).collect::<Vec<_>>(),
        }),
        Err(e) => err("cluster", e),
    };
    let pipeline = match &snap.pipeline {
        Ok(p) => json!({
            "name": p.name,
            "status": p.status,
            "ready": p.ready,
            "desired": p.desired,
            "generation": p.generation,
            "instances": p.instances.iter().map(|i| json!({
                "key": i.key,
                "component_id": i.component_id,
                "node_id": i.node_id,
                "state": i.state,
                "healthy": i.healthy,
                "pid": i.pid,
                "restarts": i.restarts,
            })).collect::<Vec<_>>(),
        }),
        Err(e) => err("pipeline", e),
    };
    let components = match &snap.components {
        Ok(cs) => Value::Array(
            cs.iter()
                .map(|c| {
                    json!({
                        "id": c.id,
                        "type": c.r#type,
                        "pipeline": c.pipeline,
                        "status": c.status,
                        "reported_status": c.reported_status,
                        "last_heartbeat": c.last_heartbeat.as_ref().map(|_| rfc3339(ts_ms(&c.last_heartbeat))),
                        "metrics": c.metrics.iter().collect::<BTreeMap<_, _>>(),
                    })
                })
                .collect(),
        ),
        Err(e) => err("components", e),
    };
    json!({
        "state": state,
        "processes": procs.iter().map(|(what, pid, alive)| json!({
            "what": what, "pid": pid, "alive": alive,
        })).collect::<Vec<_>>(),
        "cluster": cluster,
        "pipeline": pipeline,
        "components": components,
        "errors": errors,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn flow_summary_picks_the_flow_metrics_in_a_fixed_order() {
        let m = |kv: &[(&str, &str)]| -> HashMap<String, String> {
            kv.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let consumer = m(&[
            ("flowctl_consumer_events_total", "1200"),
            ("flowctl_consumer_payment_events_total", "900"),
            ("flowctl_consumer_ledgers_seen", "40.0"),
            ("flowctl_consumer_last_ledger", "123495"),
            ("flowctl_agent_heartbeats_total", "7"),
        ]);
        assert_eq!(
            flow_summary(&consumer),
            "ledgers=40 events=1200 last=123495"
        );
        let other = m(&[("b", "2.5"), ("a", "1"), ("flowctl_agent_x", "3")]);
        assert_eq!(flow_summary(&other), "a=1 b=2.5");
        assert_eq!(flow_summary(&HashMap::new()), "-");
    }

    #[test]
    fn component_rows_join_instances_with_registrations() {
        let p = pb::Pipeline {
            instances: vec![pb::Instance {
                key: "sink/0".into(),
                component_id: "sink".into(),
                node_id: 7,
                node_addr: "127.0.0.1:9".into(),
                state: "running".into(),
                pid: 99,
                ..Default::default()
            }],
            ..Default::default()
        };
        let cs = vec![
            pb::Component {
                id: "sink".into(),
                r#type: "sink".into(),
                status: "healthy".into(),
                ..Default::default()
            },
            pb::Component {
                id: "manual".into(),
                r#type: "source".into(),
                status: "unhealthy".into(),
                ..Default::default()
            },
        ];
        let nodes = HashMap::from([("127.0.0.1:9".to_owned(), 2)]);
        let rows = component_rows(Some(&p), &cs, &nodes, 0);
        assert_eq!(rows.len(), 3);
        assert_eq!(
            rows[1][..6],
            ["sink", "sink", "running", "healthy", "2", "99"]
        );
        assert_eq!(rows[2][..4], ["manual", "source", "-", "unhealthy"]);
    }
}
